"""Preprocess once, stream in training: clips and prompts -> the sharded directory of ``trainer/data/shards.py``.

    from trainer.data.preprocess import PreprocessConfig, preprocess
    preprocess(PreprocessConfig(model="tiny-teacher", source="synthetic", num_videos=256, flow="horn_schunck"),
               "data/tiny-shards")

or ``motionlab data preprocess data/tiny-shards --model tiny-teacher --flow horn_schunck``. Training then sets
``data.source=shards`` and ``data.root=data/tiny-shards``.

What is computed, in this order, so that the text encoder is gone before the VAE and the flow estimator work:

1. text (the model's text encoder): the special prompts (the sampling config's negative prompt, MoGAN's
   discriminator prompt, the default validation prompts, ``extra_prompts_file``), the generation prompts (a prompt
   file; else, for the synthetic source, ``num_prompts`` synthetic captions of stream ``seed + 1`` as DMD draws them;
   else the clips' captions) and the clips' captions, each trimmed to its token count. The caption embeddings of a
   clip shard wait in a hidden partial file until phase 2 completes the shard. Then the encoder is freed.
2. clips (the VAE, the flow estimator): latents (posterior mode, normalised: ``Generator.encode_video``, as
   ``encode_clips``); with ``flow``, the optical flow of every consecutive frame pair of the whole clip at the clip's
   size, ``[T-1, 2, H, W]``. MoGAN's discriminator reads the flow of a window of frames whose start is random per
   step; flow of a pair depends on that pair alone (RAFT and Horn-Schunck), so any window is a slice
   ``flow[f0:f0 + n - 1]`` of the stored clip, the same tensor the estimator gives on the window's frames. With
   ``pixels``, the uint8 frames: DF-DPO's "lose" clips are fresh random edits at every data position (the edit's RNG is
   seeded by the position, new every epoch), so they cannot be encoded ahead; training edits the stored frames and
   VAE-encodes the edit, as the in-memory path does.

Precision ``half`` stores latents and embeddings in bf16 (what a bf16 training step consumes) and flow in float16 (flow
is in pixels: float16 keeps 11 bits of mantissa where bf16 keeps 8); ``full`` stores float32.

Work is split into shards of ``shard_size`` samples; process ``rank`` of ``world`` takes shards ``i % world == rank``
(``--rank/--world``, or ``RANK``/``WORLD_SIZE`` under torchrun). A shard is written atomically (temp file + rename)
and skipped when a later run finds it complete for the same config, so an interrupted run resumes where it stopped.
Whichever process finds every shard complete writes ``index.json``; until then the directory is not usable.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from tqdm import tqdm

import trainer.config as train_config
from trainer.data.folder import VideoFolder
from trainer.data.shards import (
    FORMAT,
    INDEX_FILE,
    SPECIAL_FILE,
    VERSION,
    ShardError,
    pack_texts,
    read_header,
    shard_file,
    st_dtype,
    trim_texts,
    vae_fingerprint,
    write_atomic,
    write_json_atomic,
)
from trainer.data.synthetic import make_clip
from trainer.flow import build_flow_estimator
from trainer.methods.mogan import DISC_PROMPT
from trainer.models.generator import Generator
from trainer.zoo import resolve_checkpoint

SOURCES = ("synthetic", "folder", "none")
PRECISIONS = ("half", "full")


@dataclass
class PreprocessConfig:
    model: str  # zoo name or pipeline directory whose text encoder and VAE encode (the run's teacher / init)
    source: str = "synthetic"  # clips: "synthetic" (tiny scale), "folder" (VideoFolder format), "none" (prompts only)
    root: str | None = None  # the video folder (source "folder")
    num_videos: int = 1200  # synthetic clips
    seed: int = 0  # synthetic stream (clips: seed; synthetic prompts: seed + 1)
    num_frames: int = 17
    height: int = 32
    width: int = 32
    families: dict[str, float] | None = None  # synthetic family weights
    prompts_file: str | None = None  # generation prompts, one a line (blank and # lines skipped)
    num_prompts: int = 0  # synthetic generation prompts when there is no prompts file (0: the clips' captions)
    extra_prompts_file: str | None = None  # more special prompts (e.g. custom validation prompts)
    flow: str | None = None  # flow estimator name for MoGAN's real flow (None: no flow)
    flow_weights: str | None = None  # RAFT state dict
    pixels: bool = False  # store uint8 frames (DF-DPO)
    shard_size: int = 64
    precision: str = "half"
    batch_size: int = 8  # clips / prompts per encoder call
    device: str = "cpu"

    def validate(self) -> None:
        def bad(name, msg):
            raise ValueError(f"preprocess option '{name}': {msg}")

        if self.source not in SOURCES:
            bad("source", f"{self.source!r} is not one of {list(SOURCES)}")
        if self.precision not in PRECISIONS:
            bad("precision", f"{self.precision!r} is not one of {list(PRECISIONS)}")
        if self.source == "folder" and not self.root:
            bad("root", "required when source is 'folder'")
        for name in ("num_videos", "shard_size", "batch_size", "num_frames", "height", "width"):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.num_prompts < 0:
            bad("num_prompts", f"must be >= 0, got {self.num_prompts}")
        if self.source == "none" and not self.prompts_file:
            bad("prompts_file", "required when source is 'none' (nothing else to preprocess)")
        if self.source == "none" and (self.flow or self.pixels):
            bad("flow" if self.flow else "pixels", "needs clips (source 'synthetic' or 'folder')")
        for name in ("prompts_file", "extra_prompts_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                bad(name, f"{path} is not a file")


def read_prompt_file(path) -> list[str]:
    """One prompt a line; blank lines and lines starting with ``#`` are skipped."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


class _Clips:
    """The clip source: captions and names up front, frames on demand (one batch at a time)."""

    def __init__(self, cfg: PreprocessConfig, progress: bool):
        self.cfg = cfg
        if cfg.source == "synthetic":
            self._make = lambda i: make_clip(
                i,
                cfg.seed,
                frames=cfg.num_frames,
                height=cfg.height,
                width=cfg.width,
                families=cfg.families,
                split="train",
            )
            self.captions = [self._make(i)[1] for i in range(cfg.num_videos)]
            self.names = [f"synthetic:{cfg.seed}:{i}" for i in range(cfg.num_videos)]
        elif cfg.source == "folder":
            self._folder = VideoFolder(
                cfg.root, num_frames=cfg.num_frames, height=cfg.height, width=cfg.width, progress=progress
            )
            self.captions = [e.caption for e in self._folder.entries]
            self.names = [e.name for e in self._folder.entries]
        else:
            self.captions, self.names = [], []

    def __len__(self) -> int:
        return len(self.captions)

    def frames(self, i: int) -> np.ndarray:
        return self._make(i)[0] if self.cfg.source == "synthetic" else self._folder[i][0]


def _prompt_lengths(gen: Generator, prompts: list[str]) -> list[int]:
    """Token counts as ``encode_prompts`` tokenizes (its mask zeroes the positions past them)."""
    tok = gen.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=gen.sampling.max_text_len,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
    )
    return [int(sum(m)) for m in tok["attention_mask"]]


@torch.no_grad()
def encode_texts(gen: Generator, prompts: list[str], dtype: torch.dtype, batch_size: int) -> list[torch.Tensor]:
    """Prompts -> embeddings trimmed to each prompt's token count, ``[len_i, D]`` in ``dtype`` on CPU."""
    out = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        emb = gen.encode_prompts(chunk).float().cpu()
        lengths = _prompt_lengths(gen, chunk)
        for i, n in enumerate(lengths):
            if emb[i, n:].count_nonzero():
                raise RuntimeError(
                    f"the text encoder's output is not zero past the {n} tokens of {chunk[i]!r}: "
                    f"trimming would change what training sees"
                )
        out += [t.to(dtype).clone() for t in trim_texts(emb, lengths)]
    return out


@torch.no_grad()
def clip_flow(estimator, video: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Flow of every consecutive pair of ``video [B, T, 3, H, W]`` in [-1, 1] -> ``[B, T-1, 2, H, W]``, ``chunk``
    pairs per estimator call (pairs are independent, so the result is the whole-clip call's)."""
    t = video.shape[1]
    parts = [estimator(video[:, a : min(a + chunk, t - 1) + 1]) for a in range(0, t - 1, chunk)]
    return torch.cat(parts, dim=1)


def _shard_complete(path: Path, config_hash: str, count: int, texts: list[str] | None = None) -> bool:
    """A shard file that holds every byte its header promises, written for this config (and these texts)."""
    try:
        meta, _ = read_header(path)
    except ShardError:
        return False
    return (
        meta.get("config_hash") == config_hash
        and meta.get("count") == str(count)
        and (texts is None or meta.get("texts") == json.dumps(texts))
    )


def _partial(out: Path, i: int) -> Path:
    return out / f".{shard_file('clips', i)}.text"


class _Plan:
    """Who writes what: shard ``i`` of a kind covers samples ``[i * S, min((i + 1) * S, N))``."""

    def __init__(self, n_clips: int, n_prompts: int, shard_size: int):
        self.size = shard_size
        self.n = {"clips": n_clips, "prompts": n_prompts}

    def shards(self, kind: str) -> int:
        return math.ceil(self.n[kind] / self.size)

    def range(self, kind: str, i: int) -> tuple[int, int]:
        return i * self.size, min((i + 1) * self.size, self.n[kind])

    def count(self, kind: str, i: int) -> int:
        a, b = self.range(kind, i)
        return b - a


def _special_prompts(gen: Generator, cfg: PreprocessConfig) -> list[str]:
    texts = [gen.sampling.negative_prompt, DISC_PROMPT, *getattr(train_config, "VALIDATION_PROMPTS", ())]
    if cfg.extra_prompts_file:
        texts += read_prompt_file(cfg.extra_prompts_file)
    return list(dict.fromkeys(texts))  # unique, in order


def _config_hash(cfg: PreprocessConfig, model: dict, captions: list[str], names: list[str], prompts: list[str]) -> str:
    """What the shards' content depends on (the special prompts are checked by their texts: adding one re-encodes
    only ``special.safetensors``)."""
    spec = {k: v for k, v in asdict(cfg).items() if k not in ("device", "batch_size", "model", "extra_prompts_file")}
    blob = json.dumps([FORMAT, VERSION, spec, model, names, captions, prompts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def preprocess(
    cfg: PreprocessConfig,
    out_dir: str | os.PathLike,
    *,
    rank: int | None = None,
    world: int | None = None,
    progress: bool = True,
) -> dict:
    """Write (this process's share of) the shards of ``cfg`` into ``out_dir``; the index once all are done.

    Returns ``{"written": [...], "skipped": [...], "index": path or None, "pending": [...]}``: files this call wrote,
    shards it found complete, and shards still missing (other ranks' work) when no index could be written yet.
    """
    cfg.validate()
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"preprocess option 'rank': {rank} is not in [0, world={world})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count()))))
    half = cfg.precision == "half"
    emb_dtype = lat_dtype = torch.bfloat16 if half else torch.float32
    flow_dtype = torch.float16 if half else torch.float32

    model_path = resolve_checkpoint(cfg.model)
    gen = Generator.from_pretrained(model_path, device=device)
    clips = _Clips(cfg, progress and rank == 0)
    if cfg.prompts_file:
        prompts = read_prompt_file(cfg.prompts_file)
    elif cfg.source == "synthetic" and cfg.num_prompts:
        prompts = [
            make_clip(
                i, cfg.seed + 1, frames=2, height=cfg.height, width=cfg.width, families=cfg.families, split="train"
            )[1]
            for i in range(cfg.num_prompts)
        ]
    else:
        prompts = list(clips.captions)
    if not prompts:
        raise ValueError("preprocess option 'prompts_file': no prompts in it")
    special = _special_prompts(gen, cfg)
    text_dim = int(gen.transformer.config.text_dim)
    model = {
        "path": str(model_path),
        "vae_fingerprint": vae_fingerprint(gen.vae),
        "text_dim": text_dim,
        "max_text_len": gen.sampling.max_text_len,
        "negative_prompt": gen.sampling.negative_prompt,
        "text_encoder": {
            "class": type(gen.text_encoder).__name__,
            "config": gen.text_encoder.config.to_dict() if hasattr(gen.text_encoder, "config") else {},
        },
    }
    for key in ("_name_or_path", "transformers_version"):
        model["text_encoder"]["config"].pop(key, None)
    config_hash = _config_hash(cfg, model, clips.captions, clips.names, prompts)
    plan = _Plan(len(clips), len(prompts), cfg.shard_size)
    base_meta = {"format": FORMAT, "config_hash": config_hash}
    written, skipped = [], []
    special_path = out / SPECIAL_FILE

    def mine(kind):
        return [i for i in range(plan.shards(kind)) if i % world == rank]

    def done(kind, i):
        return _shard_complete(out / shard_file(kind, i), config_hash, plan.count(kind, i))

    def special_done():
        return _shard_complete(special_path, config_hash, len(special), texts=special)

    # -- phase 1: text ---------------------------------------------------------------------------------------------
    todo_special = rank == 0 and not special_done()
    todo_prompts = [i for i in mine("prompts") if not done("prompts", i)]
    todo_clips = [i for i in mine("clips") if not done("clips", i)]
    skipped += [shard_file("prompts", i) for i in mine("prompts") if i not in todo_prompts]
    skipped += [shard_file("clips", i) for i in mine("clips") if i not in todo_clips]
    todo_captions = [
        i for i in todo_clips if not _shard_complete(_partial(out, i), config_hash, plan.count("clips", i))
    ]
    n_text = (
        (len(special) if todo_special else 0)
        + sum(plan.count("prompts", i) for i in todo_prompts)
        + sum(plan.count("clips", i) for i in todo_captions)
    )
    bar = tqdm(total=n_text, desc="text embeddings", unit="prompt", disable=not progress or not n_text)

    def write_texts(path, texts, kind, i=None, first=0, names=None):
        embs = encode_texts(gen, texts, emb_dtype, cfg.batch_size)
        meta = {**base_meta, "kind": kind, "count": str(len(texts)), "first": str(first), "texts": json.dumps(texts)}
        if i is not None:
            meta["shard"] = str(i)
        if names is not None:
            meta["names"] = json.dumps(names)
        write_atomic(path, pack_texts(embs), meta)
        bar.update(len(texts))

    if todo_special:
        write_texts(special_path, special, "special")
        written.append(SPECIAL_FILE)
    for i in todo_prompts:
        a, b = plan.range("prompts", i)
        write_texts(out / shard_file("prompts", i), prompts[a:b], "prompts", i, a)
        written.append(shard_file("prompts", i))
    for i in todo_captions:
        a, b = plan.range("clips", i)
        write_texts(_partial(out, i), clips.captions[a:b], "captions", i, a)
    bar.close()
    gen.text_encoder = None  # the text encoder's work is done: free it before the VAE and the flow estimator run
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # -- phase 2: clips --------------------------------------------------------------------------------------------
    fields = _clip_fields(gen, cfg, text_dim, emb_dtype, lat_dtype, flow_dtype)
    if todo_clips:
        estimator = None
        if cfg.flow:
            estimator = build_flow_estimator(cfg.flow, weights_path=cfg.flow_weights, device=device)
        bar = tqdm(
            total=sum(plan.count("clips", i) for i in todo_clips),
            desc="clips (latents" + (", flow" if cfg.flow else "") + ")",
            unit="clip",
            disable=not progress,
        )
        for i in todo_clips:
            written.append(
                _write_clip_shard(
                    gen, clips, plan, i, out, estimator, cfg, base_meta, lat_dtype, flow_dtype, device, bar
                )
            )
        bar.close()

    # -- the index, once every shard (of every rank) is complete --------------------------------------------------
    pending = [shard_file(k, i) for k in ("clips", "prompts") for i in range(plan.shards(k)) if not done(k, i)]
    if not special_done():
        pending.append(SPECIAL_FILE)
    index_path = None
    if not pending:
        index = {
            "format": FORMAT,
            "version": VERSION,
            "config_hash": config_hash,
            "config": asdict(cfg),
            "model": model,
            "precision": cfg.precision,
            "source": {
                "kind": cfg.source,
                "root": cfg.root,
                "num_frames": cfg.num_frames,
                "height": cfg.height,
                "width": cfg.width,
                "num_videos": len(clips),
                "seed": cfg.seed,
            },
            "flow": {"estimator": cfg.flow, "weights": cfg.flow_weights} if cfg.flow else None,
            "special": {"file": SPECIAL_FILE, "bytes": special_path.stat().st_size, "texts": special},
            "prompts": _kind_index(out, plan, "prompts", {"text": {"dtype": st_dtype(emb_dtype), "shape": [text_dim]}}),
        }
        if len(clips):
            index["clips"] = _kind_index(out, plan, "clips", fields)
        index_path = out / INDEX_FILE
        write_json_atomic(index_path, index)
    elif (out / INDEX_FILE).is_file():
        (out / INDEX_FILE).unlink()  # an index of an earlier config no longer describes the directory
    return {
        "written": written,
        "skipped": skipped,
        "index": str(index_path) if index_path else None,
        "pending": pending,
        "config_hash": config_hash,
    }


def _clip_fields(gen, cfg, text_dim, emb_dtype, lat_dtype, flow_dtype) -> dict:
    fields = {
        "latents": {
            "dtype": st_dtype(lat_dtype),
            "shape": list(gen.latent_shape(cfg.num_frames, cfg.height, cfg.width)[1:]),
        },
        "text": {"dtype": st_dtype(emb_dtype), "shape": [text_dim]},
    }
    if cfg.flow:
        fields["flow"] = {"dtype": st_dtype(flow_dtype), "shape": [cfg.num_frames - 1, 2, cfg.height, cfg.width]}
    if cfg.pixels:
        fields["pixels"] = {"dtype": "U8", "shape": [cfg.num_frames, cfg.height, cfg.width, 3]}
    return fields


def _kind_index(out: Path, plan: _Plan, kind: str, fields: dict) -> dict:
    shards = []
    for i in range(plan.shards(kind)):
        a, b = plan.range(kind, i)
        shards.append(
            {
                "file": shard_file(kind, i),
                "first": a,
                "count": b - a,
                "bytes": (out / shard_file(kind, i)).stat().st_size,
            }
        )
    return {"count": plan.n[kind], "shard_size": plan.size, "fields": fields, "shards": shards}


@torch.no_grad()
def _write_clip_shard(
    gen,
    clips: _Clips,
    plan: _Plan,
    i: int,
    out: Path,
    estimator,
    cfg: PreprocessConfig,
    base_meta: dict,
    lat_dtype,
    flow_dtype,
    device,
    bar,
) -> str:
    a, b = plan.range("clips", i)
    partial = _partial(out, i)
    with safe_open(str(partial), framework="pt") as f:
        text = {"text": f.get_tensor("text"), "text_len": f.get_tensor("text_len")}
    latents, flows, pixels = [], [], []
    for s in range(a, b, cfg.batch_size):
        frames = np.stack([clips.frames(j) for j in range(s, min(s + cfg.batch_size, b))])  # uint8 [n, T, H, W, 3]
        x = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # [n, 3, T, H, W], as encode_clips
        latents.append(gen.encode_video(x.to(gen.vae.device)).float().cpu().to(lat_dtype))
        if estimator is not None:  # one clip at a time, a few pairs per call: RAFT at full size is memory-hungry
            video = x.permute(0, 2, 1, 3, 4)
            flows += [
                clip_flow(estimator, video[j : j + 1].to(device)).float().cpu().to(flow_dtype)
                for j in range(len(video))
            ]
        if cfg.pixels:
            pixels.append(torch.from_numpy(frames))
        bar.update(len(frames))
    tensors = {"latents": torch.cat(latents), **text}
    if flows:
        tensors["flow"] = torch.cat(flows)
    if pixels:
        tensors["pixels"] = torch.cat(pixels)
    meta = {
        **base_meta,
        "kind": "clips",
        "shard": str(i),
        "count": str(b - a),
        "first": str(a),
        "texts": json.dumps(clips.captions[a:b]),
        "names": json.dumps(clips.names[a:b]),
    }
    name = shard_file("clips", i)
    write_atomic(out / name, tensors, meta)
    partial.unlink()
    return name
