"""Resumable, deterministic data order and the tensors methods train on.

``IndexStream`` yields sample indices: epoch ``e`` is a permutation seeded by ``(seed, e)``, so the order is a pure
function of the position, and resuming means restoring one integer. Under DDP each rank takes every
``world_size``-th index of the same global order.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from trainer.data.folder import VideoFolder
from trainer.data.synthetic import sample_clips


class IndexStream:
    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1):
        if n <= 0:
            raise ValueError("data: the dataset is empty")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.position = 0  # global samples consumed (all ranks)
        self._epoch, self._perm = -1, None

    def _index(self, global_pos: int) -> int:
        epoch, offset = divmod(global_pos, self.n)
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return int(self._perm[offset])

    def next(self, k: int) -> list[int]:
        out = [self._index(self.position + i * self.world_size + self.rank) for i in range(k)]
        self.position += k * self.world_size
        return out

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, d: dict) -> None:
        self.position = int(d["position"])


def load_clips(data_cfg, split: str = "train", num_frames: int | None = None):
    """The run's training clips as ``(uint8 [N, T, H, W, 3], captions)`` — synthetic or a user's folder."""
    nf = num_frames or data_cfg.num_frames
    if data_cfg.source == "synthetic":
        clips = sample_clips(
            data_cfg.num_videos,
            data_cfg.seed,
            frames=nf,
            height=data_cfg.height,
            width=data_cfg.width,
            families=data_cfg.families,
            split=split,
        )
        return np.stack([c[0] for c in clips]), [c[1] for c in clips]
    if data_cfg.source == "shards":
        raise ValueError(
            "config field 'data.source': 'shards' holds preprocessed latents and embeddings, not clips; "
            "this path needs 'synthetic' or 'folder'"
        )
    folder = _folder(data_cfg, nf)
    items = [folder[i] for i in range(len(folder))]
    return np.stack([v for v, _ in items]), [c for _, c in items]


def load_captions(data_cfg) -> list[str]:
    """The captions of ``load_clips``' clips without holding the clips (a folder's videos are checked, not kept)."""
    if data_cfg.source == "synthetic":
        return load_clips(data_cfg)[1]
    return [e.caption for e in _folder(data_cfg, data_cfg.num_frames).entries]


def _folder(data_cfg, num_frames: int):
    if not data_cfg.root:
        raise ValueError("config field 'data.root': required when data.source is 'folder'")
    return VideoFolder(data_cfg.root, num_frames=num_frames, height=data_cfg.height, width=data_cfg.width)


def data_key(data_cfg, *extra) -> str:
    blob = json.dumps([data_cfg.model_dump(), *extra], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@torch.no_grad()
def encode_clips(gen, clips: np.ndarray, batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """uint8 clips -> normalised latents (posterior mode), batched, on the generator's device, returned on CPU.

    Under DDP each rank encodes every ``world_size``-th clip and the ranks exchange them: the same tensor on every
    rank, in ``1 / world_size`` of the time.
    """
    from tqdm import tqdm

    rank, world = _rank_world()
    mine = np.arange(rank, len(clips), world)
    out = []
    it = range(0, len(mine), batch_size)
    for i in tqdm(it, desc="encoding latents", disable=not progress or rank != 0, leave=False):
        x = torch.from_numpy(clips[mine[i : i + batch_size]]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        out.append(gen.encode_video(x.to(gen.vae.device)).float().cpu())
    latents = torch.cat(out)
    if world == 1:
        return latents
    import torch.distributed as tdist

    parts: list = [None] * world
    tdist.all_gather_object(parts, latents)
    full = torch.empty((len(clips), *latents.shape[1:]), dtype=latents.dtype)
    for r, part in enumerate(parts):
        full[r::world] = part
    return full


def _rank_world() -> tuple[int, int]:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


@torch.no_grad()
def encode_captions(gen, captions: list[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique captions -> (embeddings ``[U, L, D]`` on CPU, index of each caption into them)."""
    uniq = sorted(set(captions))
    pos = {c: i for i, c in enumerate(uniq)}
    embs = torch.cat(
        [gen.encode_prompts(uniq[i : i + batch_size]).float().cpu() for i in range(0, len(uniq), batch_size)]
    )
    return embs, torch.tensor([pos[c] for c in captions])


def cached(path: Path, build):
    """``torch.load`` a cache file, or build it and save it atomically.

    Under DDP the ranks decide together (a cache only some ranks see would leave the others alone in a collective
    that ``build`` may run) and every rank builds; rank 0 writes the file.
    """
    rank, world = _rank_world()
    have = path.is_file()
    if world > 1:
        import torch.distributed as tdist

        flag = torch.tensor([int(have)])
        tdist.all_reduce(flag, op=tdist.ReduceOp.MIN)
        have = bool(flag.item())
    if have:
        return torch.load(path, weights_only=False)
    obj = build()
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(obj, tmp)
        tmp.replace(path)
    return obj
