"""Preprocessed training data on disk (written by ``trainer/data/preprocess.py``) and the streaming reader.

A preprocessed directory holds::

    index.json                  what is there: sample counts, fields (per-sample shape, dtype), shard files with
                                their sample ranges and byte sizes, the model and source config, a config hash.
                                Written last: a directory without it is not (yet) complete.
    special.safetensors         named prompt embeddings (the negative prompt of CFG, MoGAN's discriminator prompt,
                                the validation prompts, any extra ones): a generator loaded without its text encoder
                                looks them up by text (``Generator.use_prompt_table``).
    prompts-00000.safetensors   generation prompts (DMD, MoGAN, VDOT): ``text`` embeddings.
    clips-00000.safetensors     real clips: ``latents`` (VAE posterior mode, normalised as ``Generator.encode_video``),
                                ``text`` (caption embeddings), optionally ``flow`` (optical flow of every consecutive
                                frame pair) and ``pixels`` (uint8 frames, for DF-DPO's edits).

Why safetensors shards: a shard is loaded without unpickling anything (a shared or downloaded dataset cannot run
code), rows are read through a memory map (a rank reads only its own samples of a shard), its header is plain JSON
that can be checked without reading data, it holds bf16, and the project already depends on it. One shard holds up
to ``shard_size`` samples of every field, so a sample is one file read and a shard is one unit of resumable,
atomic (temp file + rename) preprocessing work.

Text embeddings are stored trimmed to each prompt's token count (``Generator.encode_prompts`` zeroes the positions
past it, and the Wan transformer reads no mask): ``text`` is the rows of all samples concatenated, ``text_len``
their lengths. ``pad_texts`` restores ``[B, max_text_len, D]`` with zeros, the very tensor ``encode_prompts``
returns (up to the stored dtype).

Reading: ``ShardReader`` streams one kind of sample in a deterministic order that is a pure function of one integer,
``position`` (global samples consumed by all ranks), as ``IndexStream`` does: epoch ``e`` visits the shards in a
permutation seeded by ``(seed, e)`` and each shard's samples in a permutation seeded by ``(seed, e, shard)``; rank
``r`` of ``W`` takes global positions ``position + r, position + r + W, ...``, so ranks see disjoint samples and a
resumed run restores ``position`` alone. One background thread loads the next shard's rows while the current one is
consumed; at most ``prefetch`` shards are resident, so memory does not grow with the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
import weakref
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trainer.config import ConfigError

FORMAT = "motionlab-shards"
VERSION = 1
INDEX_FILE = "index.json"
SPECIAL_FILE = "special.safetensors"
KINDS = ("clips", "prompts")
RAGGED = "text"  # the one variable-length field: rows concatenated, lengths in ``text_len``

_ST_DTYPES = {
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
    torch.uint8: "U8",
    torch.int32: "I32",
    torch.int64: "I64",
}
_TORCH_DTYPES = {v: k for k, v in _ST_DTYPES.items()}


class ShardError(ValueError):
    """A preprocessed directory or shard that is missing, incomplete, corrupt or made for another config."""


def shard_file(kind: str, i: int) -> str:
    return f"{kind}-{i:05d}.safetensors"


def st_dtype(dtype: torch.dtype) -> str:
    return _ST_DTYPES[dtype]


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------


def write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Save a safetensors file under a temp name in the same folder, then rename it into place; returns its size.

    A reader or a resumed preprocessing run never sees a half-written file under the final name.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    _readable(tmp)
    os.replace(tmp, path)
    return path.stat().st_size


def _readable(path: Path) -> None:
    """The permissions the umask gives a new file (safetensors creates its files owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    _readable(tmp)
    os.replace(tmp, path)


def pack_texts(embs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trimmed embeddings ``[len_i, D]`` -> ``{"text": [sum len_i, D], "text_len": [N] int32}``."""
    return {"text": torch.cat(embs), "text_len": torch.tensor([e.shape[0] for e in embs], dtype=torch.int32)}


def trim_texts(padded: torch.Tensor, lengths) -> list[torch.Tensor]:
    """``[B, L, D]`` embeddings and token counts -> the rows ``[len_i, D]`` that carry information."""
    return [padded[i, : int(n)] for i, n in enumerate(lengths)]


def pad_texts(rows: list[torch.Tensor], max_len: int, dtype=torch.float32) -> torch.Tensor:
    """Trimmed rows ``[len_i, D]`` -> ``[B, max_len, D]``, zeros past each row's length (``encode_prompts``' form)."""
    d = rows[0].shape[-1]
    out = torch.zeros(len(rows), max_len, d, dtype=dtype)
    for i, r in enumerate(rows):
        if r.shape[0] > max_len:
            raise ShardError(f"a stored text embedding has {r.shape[0]} tokens, more than max_text_len={max_len}")
        out[i, : r.shape[0]] = r.to(dtype)
    return out


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """sha256 of the VAE's config and exact weights (device independent): latents from another VAE are refused."""
    h = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, t in sorted(vae.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


# ----------------------------------------------------------------------------------------------------------------
# checking
# ----------------------------------------------------------------------------------------------------------------


def read_header(path: Path) -> tuple[dict, dict]:
    """``(metadata, {tensor: {"dtype", "shape", "data_offsets"}})`` of a safetensors file, checking that the file
    holds every byte the header promises (a truncated copy fails here, naming the file)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ShardError(f"shard {path}: {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ShardError(f"shard {path}: truncated ({size} bytes; the header alone needs {8 + n})")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise ShardError(f"shard {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"shard {path}: unreadable safetensors header ({exc})") from None
    meta = header.pop("__metadata__", {}) or {}
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if size < 8 + n + end:
        raise ShardError(f"shard {path}: truncated ({size} bytes, its header describes {8 + n + end})")
    return meta, header


class ShardSet:
    """An opened, checked preprocessed directory; ``reader`` streams one kind of its samples.

    Opening reads ``index.json`` and every shard's header: a missing or truncated shard, a shard written by another
    preprocessing run, and a field of the wrong shape or dtype fail here, before training starts.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        index_path = self.root / INDEX_FILE
        if not index_path.is_file():
            done = len(list(self.root.glob("*-?????.safetensors"))) if self.root.is_dir() else 0
            raise ShardError(
                f"{index_path} not found: {self.root} is not a complete preprocessed directory "
                f"({done} shard file(s) there; 'motionlab data preprocess' writes the index when every shard is done)"
            )
        try:
            self.index = json.loads(index_path.read_text())
        except json.JSONDecodeError as exc:
            raise ShardError(f"{index_path}: not valid JSON ({exc})") from None
        if self.index.get("format") != FORMAT or self.index.get("version") != VERSION:
            raise ShardError(
                f"{index_path}: expected format {FORMAT!r} version {VERSION}, got "
                f"{self.index.get('format')!r} version {self.index.get('version')!r}"
            )
        self.index_path = index_path
        self._vae_checked: set[int] = set()  # VAEs (by id) whose weights matched the index's fingerprint
        try:
            self.config_hash = self.index["config_hash"]
            self.max_text_len = int(self.index["model"]["max_text_len"])
            for kind in KINDS:
                if kind in self.index:
                    self._check_kind(kind)
            self._check_special()
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ShardError):
                raise
            raise ShardError(f"{index_path}: malformed index ({type(exc).__name__}: {exc})") from None

    # -- structure ---------------------------------------------------------------------------------------------
    def has(self, kind: str) -> bool:
        return kind in self.index and self.index[kind]["count"] > 0

    def count(self, kind: str) -> int:
        return int(self.index[kind]["count"]) if kind in self.index else 0

    def fields(self, kind: str) -> dict:
        return self.index[kind]["fields"] if kind in self.index else {}

    def require(self, kind: str, fields: tuple[str, ...], why: str) -> None:
        """Raise a ``ShardError`` naming the index when ``kind`` or one of its ``fields`` was not preprocessed."""
        if not self.has(kind):
            raise ShardError(f"{self.index_path}: holds no {kind}; {why}")
        missing = [f for f in fields if f not in self.fields(kind)]
        if missing:
            raise ShardError(
                f"{self.index_path}: the {kind} have no {', '.join(repr(m) for m in missing)} "
                f"(they have {', '.join(sorted(self.fields(kind)))}); {why}"
            )

    def _check_kind(self, kind: str) -> None:
        spec = self.index[kind]
        fields = spec["fields"]
        total, expect_first = 0, 0
        for entry in spec["shards"]:
            path = self.root / entry["file"]
            if not path.is_file():
                raise ShardError(f"shard {path} is missing (listed in {self.index_path} with {entry['count']} {kind})")
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise ShardError(
                    f"shard {path}: {size} bytes, {self.index_path} expects {entry['bytes']} (truncated or rewritten)"
                )
            meta, header = read_header(path)
            if meta.get("config_hash") != self.config_hash:
                raise ShardError(
                    f"shard {path} was written by another preprocessing config (hash "
                    f"{meta.get('config_hash')!r}, the index's is {self.config_hash!r})"
                )
            if entry["first"] != expect_first:
                raise ShardError(
                    f"{self.index_path}: shard {entry['file']} starts at sample {entry['first']}, "
                    f"expected {expect_first} (an index entry is missing)"
                )
            n = int(entry["count"])
            for name, f in fields.items():
                want_dtype, want_shape = f["dtype"], list(f["shape"])
                got = header.get(name)
                if got is None:
                    raise ShardError(f"shard {path}: no tensor {name!r} (the index lists fields {sorted(fields)})")
                shape = got["shape"]
                ok = got["dtype"] == want_dtype and (
                    shape[1:] == want_shape if name == RAGGED else shape == [n, *want_shape]
                )
                if not ok:
                    want = f"[*, {', '.join(map(str, want_shape))}]" if name == RAGGED else str([n, *want_shape])
                    raise ShardError(
                        f"shard {path}: tensor {name!r} is {got['dtype']} {shape}, expected {want_dtype} {want}"
                    )
            if RAGGED in fields:
                lens = header.get("text_len")
                if lens is None or lens["shape"] != [n] or lens["dtype"] != "I32":
                    raise ShardError(
                        f"shard {path}: 'text_len' is {lens and (lens['dtype'], lens['shape'])}, expected I32 [{n}]"
                    )
            total += n
            expect_first += n
        if total != spec["count"]:
            raise ShardError(
                f"{self.index_path}: the {kind} shards hold {total} samples, the index says {spec['count']}"
            )

    def _check_special(self) -> None:
        entry = self.index["special"]
        path = self.root / entry["file"]
        if not path.is_file():
            raise ShardError(f"{path} is missing (listed in {self.index_path})")
        if path.stat().st_size != entry["bytes"]:
            raise ShardError(f"{path}: {path.stat().st_size} bytes, {self.index_path} expects {entry['bytes']}")
        meta, _ = read_header(path)
        if meta.get("config_hash") != self.config_hash:
            raise ShardError(f"{path} was written by another preprocessing config")

    # -- what training needs -----------------------------------------------------------------------------------
    def prompt_table(self) -> dict[str, torch.Tensor]:
        """Named prompt embeddings, text -> trimmed float32 ``[len, D]``."""
        path = self.root / self.index["special"]["file"]
        with safe_open(str(path), framework="pt") as f:
            texts = json.loads(f.metadata()["texts"])
            packed, lens = f.get_tensor("text"), f.get_tensor("text_len")
        offsets = np.concatenate([[0], np.cumsum(lens.numpy())])
        return {t: packed[offsets[i] : offsets[i + 1]].float() for i, t in enumerate(texts)}

    def check_against(self, gen, data_cfg, *, latents: bool = False) -> None:
        """Refuse shards made for another model or clip shape: names the config field or the index and both values.

        ``latents``: the run reads stored latents, so the VAE that encoded them must be this run's.
        """
        model = self.index["model"]
        if model["max_text_len"] != gen.sampling.max_text_len:
            raise ShardError(
                f"{self.index_path}: embeddings padded to max_text_len={model['max_text_len']}, the "
                f"model uses {gen.sampling.max_text_len}"
            )
        text_dim = gen.transformer.config.text_dim
        if model["text_dim"] != text_dim:
            raise ShardError(
                f"{self.index_path}: text embeddings of width {model['text_dim']}, the model's "
                f"transformer reads text_dim={text_dim}"
            )
        if not self.has("clips"):
            return
        src = self.index["source"]
        for key in ("num_frames", "height", "width"):
            if src[key] != getattr(data_cfg, key):
                raise ConfigError(
                    f"data.{key}",
                    f"{getattr(data_cfg, key)}, but the clips in {self.index_path} "
                    f"were preprocessed with {key}={src[key]}",
                )
        if latents:
            want = list(gen.latent_shape(data_cfg.num_frames, data_cfg.height, data_cfg.width)[1:])
            have = self.fields("clips")["latents"]["shape"]
            if have != want:
                raise ShardError(f"{self.index_path}: latents of shape {have}, the model's VAE makes {want}")
            if id(gen.vae) in self._vae_checked:
                return
            fp = vae_fingerprint(gen.vae)
            if model["vae_fingerprint"] != fp:
                raise ShardError(
                    f"{self.index_path}: latents were encoded by another VAE (fingerprint "
                    f"{model['vae_fingerprint']} from {model['path']}) than this run's ({fp})"
                )
            self._vae_checked.add(id(gen.vae))

    def reader(
        self,
        kind: str,
        fields: tuple[str, ...],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        shuffle: bool = True,
    ) -> ShardReader:
        self.require(kind, fields, "preprocess them first")
        return ShardReader(self, kind, fields, seed, rank, world_size, prefetch=prefetch, shuffle=shuffle)


def attach_shards(gen, cfg, *, latents: bool = False) -> ShardSet:
    """Open ``cfg.data.root``, check it against the generator and the data config, and give the generator (loaded
    without its text encoder) the stored special prompt embeddings."""
    if not cfg.data.root:
        raise ConfigError(
            "data.root", "required when data.source is 'shards' (a 'motionlab data preprocess' output directory)"
        )
    shards = ShardSet(cfg.data.root)
    shards.check_against(gen, cfg.data, latents=latents)
    table = shards.prompt_table()
    missing = [p for p in getattr(cfg, "validation_prompts", None) or [] if p not in table]
    if getattr(cfg, "validation_every", 0) and missing:
        raise ConfigError(
            "validation_prompts",
            f"{missing} have no embedding in {shards.root / SPECIAL_FILE} "
            f"(training from shards loads no text encoder); preprocess with "
            f"--extra-prompts naming them",
        )
    gen.use_prompt_table(table, source=str(shards.index_path))
    return shards


# ----------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------


class ShardOrder:
    """The sample order of a sharded stream as a pure function of the global position (see the module docstring)."""

    def __init__(self, counts: list[int], seed: int, shuffle: bool = True):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.n = int(self.counts.sum())
        self.seed, self.shuffle = seed, shuffle
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard visiting order of epoch ``e`` and the cumulative sample counts along it."""
        cache = self._cache
        if cache is None or cache[0] != e:
            n_shards = len(self.counts)
            perm = np.random.default_rng([self.seed, e]).permutation(n_shards) if self.shuffle else np.arange(n_shards)
            cache = (e, perm, np.concatenate([[0], np.cumsum(self.counts[perm])]))
            self._cache = cache
        return cache[1], cache[2]

    def visit(self, g: int) -> tuple[int, int, int, np.ndarray]:
        """The shard visit holding global position ``g``: ``(shard, its first and end global position, the order of
        the shard's rows in it)``."""
        e, o = divmod(g, self.n)
        perm, cum = self._epoch(e)
        j = int(np.searchsorted(cum, o, side="right")) - 1
        shard = int(perm[j])
        rows = (
            np.random.default_rng([self.seed, e, shard]).permutation(int(self.counts[shard]))
            if self.shuffle
            else np.arange(int(self.counts[shard]))
        )
        return shard, e * self.n + int(cum[j]), e * self.n + int(cum[j + 1]), rows

    def locate(self, g: int) -> tuple[int, int]:
        """Global position -> ``(shard, row in that shard)``."""
        shard, start, _, rows = self.visit(g)
        return shard, int(rows[g - start])


def _load_rows(path: Path, kind: str, fields: tuple[str, ...], rows: list[int]) -> dict:
    """``rows`` of one shard, each requested field (``text`` as a list of trimmed rows), plus their captions."""
    out: dict = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            texts = json.loads(f.metadata().get("texts", "[]"))
            out["caption"] = [texts[r] for r in rows] if texts else [""] * len(rows)
            for name in fields:
                sl = f.get_slice(name)
                if name == RAGGED:
                    offsets = np.concatenate([[0], np.cumsum(f.get_tensor("text_len").numpy().astype(np.int64))])
                    out[name] = [sl[int(offsets[r]) : int(offsets[r + 1])] for r in rows]
                else:
                    out[name] = torch.cat([sl[r : r + 1] for r in rows])
    except Exception as exc:
        raise ShardError(f"shard {path}: cannot read {kind} rows ({type(exc).__name__}: {exc})") from exc
    return out


class _Prefetcher:
    """One background thread loading this rank's rows of the coming shard visits, at most ``prefetch`` resident
    (a slot is taken before a shard is loaded and given back when the consumer has used it up)."""

    def __init__(
        self,
        shards: ShardSet,
        kind: str,
        fields: tuple[str, ...],
        order: ShardOrder,
        start: int,
        world_size: int,
        prefetch: int,
    ):
        self.entries = shards.index[kind]["shards"]
        self.root, self.kind, self.fields, self.order = shards.root, kind, fields, order
        self.world_size = world_size
        self.stop = threading.Event()
        self.slots = threading.Semaphore(prefetch)
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True, name=f"shards-{kind}")
        self.thread.start()

    def _run(self, g: int) -> None:
        try:
            while not self.stop.is_set():
                shard, start, end, order = self.order.visit(g)
                positions = list(range(g, end, self.world_size))
                while not self.slots.acquire(timeout=0.1):
                    if self.stop.is_set():
                        return
                entry = self.entries[shard]
                rows = [int(order[p - start]) for p in positions]
                item = _load_rows(self.root / entry["file"], self.kind, self.fields, rows)
                item["position"] = torch.tensor(positions, dtype=torch.int64)
                item["sample"] = torch.tensor([entry["first"] + r for r in rows], dtype=torch.int64)
                self.queue.put(("ok", item))
                g = positions[-1] + self.world_size
        except BaseException as exc:  # noqa: BLE001 -- handed to the consumer, which raises it
            self.queue.put(("error", exc))

    def close(self) -> None:
        self.stop.set()
        if threading.current_thread() is not self.thread:
            self.thread.join()


class ShardReader:
    """Deterministic, resumable stream of one kind of sample from a ``ShardSet`` (order: ``ShardOrder``).

    ``next(k)`` returns this rank's next ``k`` samples as a dict: each requested field stacked (``text`` padded to
    ``[k, max_text_len, D]`` float32), ``position`` (their global positions), ``sample`` (their indices in
    preprocessing order) and ``caption`` (their texts). ``state_dict`` is ``{"position": int}``.
    """

    def __init__(
        self,
        shards: ShardSet,
        kind: str,
        fields: tuple[str, ...],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        prefetch: int = 2,
        shuffle: bool = True,
    ):
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1 shard, got {prefetch}")
        self.shards, self.kind, self.fields = shards, kind, tuple(fields)
        self.rank, self.world_size, self.prefetch = rank, world_size, prefetch
        self.order = ShardOrder([e["count"] for e in shards.index[kind]["shards"]], seed, shuffle)
        if self.order.n <= 0:
            raise ShardError(f"{shards.index_path}: no {kind} to read")
        self.position = 0  # global samples consumed (all ranks)
        self._prefetcher: _Prefetcher | None = None
        self._finalizer = None
        self._cur: dict | None = None
        self._cur_i = 0

    def close(self) -> None:
        if self._prefetcher is not None:
            self._finalizer.detach()
            self._prefetcher.close()
            self._prefetcher = None
        self._cur, self._cur_i = None, 0

    def next(self, k: int) -> dict:
        if self._prefetcher is None:
            self._prefetcher = _Prefetcher(
                self.shards,
                self.kind,
                self.fields,
                self.order,
                self.position + self.rank,
                self.world_size,
                self.prefetch,
            )
            # the thread ends with the reader; joined, also at interpreter exit: a daemon thread still inside a
            # torch call while the interpreter shuts down aborts the process after a finished run
            self._finalizer = weakref.finalize(self, self._prefetcher.close)
        parts: list[tuple[dict, int, int]] = []
        need = k
        while need:
            if self._cur is None:
                status, item = self._prefetcher.queue.get()
                if status == "error":
                    self.close()
                    raise item
                self._cur, self._cur_i = item, 0
            take = min(need, len(self._cur["position"]) - self._cur_i)
            parts.append((self._cur, self._cur_i, self._cur_i + take))
            self._cur_i += take
            need -= take
            if self._cur_i == len(self._cur["position"]):
                self._cur = None
                self._prefetcher.slots.release()  # the thread may load the next shard
        self.position += k * self.world_size
        return self._collate(parts)

    def resident(self) -> int:
        """Shards loaded and not yet used up (the one being consumed included)."""
        if self._prefetcher is None:
            return 0
        return self._prefetcher.queue.qsize() + (self._cur is not None)

    def _collate(self, parts: list[tuple[dict, int, int]]) -> dict:
        batch: dict = {}
        for key in ("position", "sample", *[f for f in self.fields if f != RAGGED]):
            batch[key] = torch.cat([p[key][a:b] for p, a, b in parts])
        batch["caption"] = [c for p, a, b in parts for c in p["caption"][a:b]]
        if RAGGED in self.fields:
            rows = [r for p, a, b in parts for r in p[RAGGED][a:b]]
            batch[RAGGED] = pad_texts(rows, self.shards.max_text_len)
        return batch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, d: dict) -> None:
        self.close()
        self.position = int(d["position"])
