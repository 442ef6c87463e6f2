"""Checkpoints by short name: the shipped tiny models, the full-scale Wan directory, and any pipeline directory.

    resolve_checkpoint("tiny-teacher")   # -> <repo>/checkpoints/tiny-teacher
    load_generator("tiny-mogan")          # -> Generator, kept warm in an LRU cache with a memory budget

The zoo directory is ``$MOTIONLAB_ZOO_DIR`` or the repository's ``checkpoints/`` folder, where ``motionlab recipe
tiny`` writes the tiny models it trains (they are small enough to ship, so the demo works out of the box).

A run directory stands for its ``export/``. The export of a DMD-family run (DMD, MoGAN, VDOT) also holds the fake
score it was trained with, in ``fake_score/`` next to the pipeline parts (``find_fake_score``); ``model_index.json``
does not list it, so diffusers' ``WanPipeline`` and ``Generator.from_pretrained`` load the directory as a plain
pipeline, and ``register_checkpoint`` copies it into the zoo with the rest.

An adapter checkpoint (a LoRA run's export: LoRA weights + the name of its base, ``trainer/models/adapter.py``) is a
checkpoint like any other here: listed (with its ``base``), resolved, loaded (the base with the LoRA merged) and
registered (the small adapter directory is copied; its base stays where it is).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from trainer.locations import FULL_NAME, is_checkpoint_dir, list_checkpoints, resolve_checkpoint, zoo_dir
from trainer.models.generator import Generator, check_pipeline_dir

FAKE_SCORE_DIR = "fake_score"  # a DMD-family export's fake score (diffusers format), not a pipeline component


def find_fake_score(name_or_path: str | os.PathLike) -> Path | None:
    """The ``fake_score/`` directory the checkpoint (zoo name, export or run directory) kept, or None."""
    d = resolve_checkpoint(name_or_path) / FAKE_SCORE_DIR
    return d if (d / "config.json").is_file() and any(d.glob("*.safetensors")) else None


_CACHE: OrderedDict[tuple, Generator] = OrderedDict()
_CACHE_BYTES: dict[tuple, int] = {}
_CACHE_LOCK = threading.Lock()
_LOAD_LOCK = threading.Lock()
LOADS = {"count": 0}  # checkpoints actually read from disk (not cache hits): lets tests and benchmarks see reloads
DEFAULT_CACHE_MB = 16384


def cache_budget_bytes() -> int:
    """The warm-model budget: ``$MOTIONLAB_MODEL_CACHE_MB`` megabytes of parameters + buffers (read at each load)."""
    raw = os.environ.get("MOTIONLAB_MODEL_CACHE_MB", str(DEFAULT_CACHE_MB))
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"MOTIONLAB_MODEL_CACHE_MB must be a number of megabytes, got {raw!r}") from None
    if mb < 0:
        raise ValueError(f"MOTIONLAB_MODEL_CACHE_MB must be >= 0, got {mb}")
    return int(mb * 2**20)


def generator_bytes(gen: Generator) -> int:
    """Bytes held by a generator's parameters and buffers (transformer, VAE, text encoder)."""
    total = 0
    for m in (gen.transformer, gen.vae, gen.text_encoder):
        for t in list(m.parameters()) + list(m.buffers()):
            total += t.numel() * t.element_size()
    return total


def cache_info() -> dict:
    """What the warm cache holds now: entries, bytes, budget, and how many loads have hit the disk."""
    with _CACHE_LOCK:
        return {
            "entries": len(_CACHE),
            "bytes": sum(_CACHE_BYTES.values()),
            "budget_bytes": cache_budget_bytes(),
            "loads": LOADS["count"],
            "keys": [k[0] for k in _CACHE],
        }


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
        _CACHE_BYTES.clear()


def load_generator(name_or_path, device: str = "cpu", cached: bool = True, dtype=None, vae_dtype=None) -> Generator:
    """Load (or fetch from the process-wide cache) a generator, frozen, in eval mode.

    ``dtype`` and ``vae_dtype`` (uncached loads only: the cache holds float32 models) load the transformer and text
    encoder, and the VAE, in that dtype, e.g. a serving fast path's bfloat16 copy read without a float32 copy first.

    The cache is an LRU bounded by memory, not by count: after a load, least-recently used generators are dropped
    until the parameter + buffer bytes of those kept fit ``$MOTIONLAB_MODEL_CACHE_MB``. The one just loaded always
    stays (a model larger than the budget still serves; it is simply the only one kept).
    """
    if (dtype is not None or vae_dtype is not None) and cached:
        raise ValueError(
            "load_generator: dtype and vae_dtype are for uncached loads (cached=False); the cache holds float32 models"
        )
    path = resolve_checkpoint(name_or_path).resolve()
    key = (str(path), str(device), path.stat().st_mtime_ns if path.exists() else 0)
    if cached:
        with _CACHE_LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
    # One load at a time: concurrent first requests for the same checkpoint must not each read it from disk.
    with _LOAD_LOCK:
        if cached:
            with _CACHE_LOCK:
                if key in _CACHE:
                    _CACHE.move_to_end(key)
                    return _CACHE[key]
        gen = Generator.from_pretrained(
            path, device=device, dtype=dtype or torch.float32, vae_dtype=vae_dtype or torch.float32
        )
        LOADS["count"] += 1
        if cached:
            size = generator_bytes(gen)
            with _CACHE_LOCK:
                _CACHE[key] = gen
                _CACHE_BYTES[key] = size
                budget = cache_budget_bytes()
                while len(_CACHE) > 1 and sum(_CACHE_BYTES.values()) > budget:
                    old, _ = _CACHE.popitem(last=False)
                    _CACHE_BYTES.pop(old, None)
    return gen


def register_checkpoint(src: str | os.PathLike, name: str) -> Path:
    """Copy a pipeline directory into the zoo as ``name`` (atomically: copy to a temp dir, then rename)."""
    import re
    import shutil

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ValueError(f"checkpoint name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    src = check_pipeline_dir(src)
    dst = zoo_dir() / name
    tmp = zoo_dir() / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst


# names -> directories live in trainer.locations (no model code); they stay importable from here
__all__ = [
    "FAKE_SCORE_DIR",
    "FULL_NAME",
    "LOADS",
    "cache_budget_bytes",
    "cache_info",
    "clear_cache",
    "find_fake_score",
    "generator_bytes",
    "is_checkpoint_dir",
    "list_checkpoints",
    "load_generator",
    "register_checkpoint",
    "resolve_checkpoint",
    "zoo_dir",
]
