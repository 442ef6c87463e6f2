"""Where the pretrained models of the ``vbench`` metric backend live, and their hashes.

All weight files are found under one configured weights directory (``weights_dir``): the explicit argument, else
``$MOTIONLAB_WEIGHTS_DIR``, else ``~/.cache/motionlab/weights``. The VBench models sit in ``<weights_dir>/vbench/``
with exactly VBench's own cache layout (``~/.cache/vbench``), so an existing VBench cache can simply be linked::

    ln -s ~/.cache/vbench "$MOTIONLAB_WEIGHTS_DIR/vbench"

Nothing is ever downloaded; what is missing is listed by name with the place it goes and where VBench gets it.

    missing_weights(["dynamic_degree"], weights_dir)   # -> [WeightFile(...)] (empty when all present)
    require_weights(["dynamic_degree"], weights_dir)   # raises MissingWeightsError with the message
    file_sha256(path)                                   # hex digest, cached by (path, size, mtime)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ENV_WEIGHTS_DIR = "MOTIONLAB_WEIGHTS_DIR"
VBENCH_SUBDIR = "vbench"


@dataclass(frozen=True)
class WeightFile:
    key: str
    relpath: str  # relative to weights_dir
    source: str  # where VBench downloads it from (for the user; we never download)
    description: str

    def path(self, weights_dir: str | os.PathLike | None = None) -> Path:
        return resolve_weights_dir(weights_dir) / self.relpath


# The VBench cache layout (vbench/utils.py, init_submodules), mirrored under <weights_dir>/vbench/.
WEIGHT_FILES: dict[str, WeightFile] = {
    w.key: w
    for w in [
        WeightFile(
            "raft_things",
            f"{VBENCH_SUBDIR}/raft_model/models/raft-things.pth",
            "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip (unzip; keep models/raft-things.pth)",
            "RAFT optical flow, 'things' checkpoint (dynamic_degree)",
        ),
        WeightFile(
            "amt_s",
            f"{VBENCH_SUBDIR}/amt_model/amt-s.pth",
            "https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth",
            "AMT-S frame interpolation (motion_smoothness)",
        ),
        WeightFile(
            "clip_vit_l14",
            f"{VBENCH_SUBDIR}/clip_model/ViT-L-14.pt",
            "https://openaipublic.azureedge.net/clip/models/"
            "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
            "OpenAI CLIP ViT-L/14 image encoder (aesthetic_quality)",
        ),
        WeightFile(
            "laion_aesthetic_head",
            f"{VBENCH_SUBDIR}/aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
            "https://github.com/LAION-AI/aesthetic-predictor/blob/main/sa_0_4_vit_l_14_linear.pth?raw=true",
            "LAION aesthetic linear head on CLIP ViT-L/14 embeddings (aesthetic_quality)",
        ),
        WeightFile(
            "musiq_spaq",
            f"{VBENCH_SUBDIR}/pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",
            "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/musiq_spaq_ckpt-358bb6af.pth",
            "MUSIQ trained on SPAQ (imaging_quality)",
        ),
    ]
}

# Which files each metric's vbench backend needs (temporal_flickering needs none).
METRIC_WEIGHTS: dict[str, tuple[str, ...]] = {
    "dynamic_degree": ("raft_things",),
    "motion_smoothness": ("amt_s",),
    "motion_score": ("amt_s", "raft_things"),
    "temporal_flickering": (),
    "aesthetic_quality": ("clip_vit_l14", "laion_aesthetic_head"),
    "imaging_quality": ("musiq_spaq",),
}


class MissingWeightsError(FileNotFoundError):
    """Weight files a metric needs are not in the weights directory; the message lists them and where they go."""

    def __init__(self, missing: list[WeightFile], weights_dir: Path, metrics: Iterable[str] = ()):
        self.missing = list(missing)
        self.weights_dir = Path(weights_dir)
        self.metrics = list(metrics)
        super().__init__(missing_weights_message(self.missing, self.weights_dir, self.metrics))


def default_weights_dir() -> Path:
    env = os.environ.get(ENV_WEIGHTS_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "motionlab" / "weights"


def resolve_weights_dir(weights_dir: str | os.PathLike | None = None) -> Path:
    return Path(weights_dir).expanduser() if weights_dir is not None else default_weights_dir()


def weight_path(key: str, weights_dir: str | os.PathLike | None = None) -> Path:
    if key not in WEIGHT_FILES:
        raise ValueError(f"unknown weight file key {key!r}; known: {sorted(WEIGHT_FILES)}")
    return WEIGHT_FILES[key].path(weights_dir)


def weights_for(metrics: Iterable[str]) -> list[WeightFile]:
    keys: list[str] = []
    for m in metrics:
        if m not in METRIC_WEIGHTS:
            raise ValueError(f"unknown metric {m!r}; known: {sorted(METRIC_WEIGHTS)}")
        keys += [k for k in METRIC_WEIGHTS[m] if k not in keys]
    return [WEIGHT_FILES[k] for k in keys]


def missing_weights(metrics: Iterable[str], weights_dir: str | os.PathLike | None = None) -> list[WeightFile]:
    """The weight files the vbench backend of ``metrics`` needs that are not present (not regular files)."""
    return [w for w in weights_for(metrics) if not w.path(weights_dir).is_file()]


def missing_weights_message(
    missing: list[WeightFile], weights_dir: str | os.PathLike | None, metrics: Iterable[str] = ()
) -> str:
    wd = resolve_weights_dir(weights_dir)
    metrics = list(metrics)
    head = f"missing weight files for the vbench backend{' of ' + ', '.join(metrics) if metrics else ''}"
    lines = [f"{head} (weights directory {wd}; set it with weights_dir= or ${ENV_WEIGHTS_DIR}):"]
    for w in missing:
        lines.append(f"  - {w.path(wd)}  [{w.description}]  from {w.source}")
    lines.append(
        f"These mirror VBench's cache layout under {wd / VBENCH_SUBDIR}; an existing VBench cache can be linked: "
        f"ln -s ~/.cache/vbench {wd / VBENCH_SUBDIR}. Nothing is downloaded automatically."
    )
    return "\n".join(lines)


def require_weights(metrics: Iterable[str], weights_dir: str | os.PathLike | None = None) -> None:
    metrics = list(metrics)
    missing = missing_weights(metrics, weights_dir)
    if missing:
        raise MissingWeightsError(missing, resolve_weights_dir(weights_dir), metrics)


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, cached by (resolved path, size, mtime) so that a 1.7 GB CLIP file is hashed once."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def combined_hash(paths: Iterable[str | os.PathLike]) -> str:
    """One hash for a model made of several files: the file's own SHA-256 when there is one, else the SHA-256
    of ``name:sha256`` lines in the given order."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return file_sha256(paths[0])
    text = "\n".join(f"{p.name}:{file_sha256(p)}" for p in paths)
    return hashlib.sha256(text.encode()).hexdigest()
