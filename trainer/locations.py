"""Where checkpoints and weights live, and checkpoint names -> directories (no model code).

    resolve_checkpoint("tiny-teacher")   # -> <repo>/checkpoints/tiny-teacher
    list_checkpoints()                    # the zoo's checkpoints: name, path, kind (and an adapter's base)
    weights_dir() / FULL_MODEL_SUBDIR     # the full-scale Wan directory

``trainer.models.generator`` (an adapter checkpoint names its base) and ``trainer.zoo`` (loading by name) both resolve
names through this module, which imports neither of them; both re-export its names for their callers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainer.models.adapter import adapter_summary, is_adapter_dir

SAMPLING_FILE = "motionlab_sampling.json"


class WeightsNotFoundError(FileNotFoundError):
    """A model directory (or a part of it) that is missing; the message names what is missing and where."""


# Where the full preset looks, relative to the configured weights directory.
FULL_MODEL_SUBDIR = "Wan2.1-T2V-1.3B-Diffusers"


def weights_dir() -> Path:
    return Path(os.environ.get("MOTIONLAB_WEIGHTS_DIR", Path.home() / ".cache" / "motionlab" / "weights"))


FULL_NAME = "wan2.1-t2v-1.3b"
RUN_CONFIG = "config.yaml"  # what marks a run directory (trainer/loop.py)


def zoo_dir() -> Path:
    return Path(os.environ.get("MOTIONLAB_ZOO_DIR", Path(__file__).resolve().parent.parent / "checkpoints"))


def is_checkpoint_dir(d: Path) -> bool:
    """A pipeline directory (``model_index.json``) or an adapter checkpoint."""
    return (d / "model_index.json").is_file() or is_adapter_dir(d)


def list_checkpoints() -> list[dict]:
    out = []
    root = zoo_dir()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / "model_index.json").is_file():
                out.append({"name": d.name, "path": str(d), "kind": _kind(d)})
            elif is_adapter_dir(d):
                try:
                    adapter = adapter_summary(d)
                except FileNotFoundError:  # a broken adapter directory is not a checkpoint
                    continue
                out.append(
                    {"name": d.name, "path": str(d), "kind": _kind(d), "base": adapter["base"], "adapter": adapter}
                )
    full = weights_dir() / FULL_MODEL_SUBDIR
    if (full / "model_index.json").is_file():
        out.append({"name": FULL_NAME, "path": str(full), "kind": _kind(full)})
    return out


def _kind(d: Path) -> str:
    f = d / SAMPLING_FILE
    return json.loads(f.read_text()).get("kind", "teacher") if f.is_file() else "teacher"


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A zoo name, a directory or a run directory (its ``export/``) -> the pipeline directory. Unknown names list
    what is available."""
    s = str(name_or_path)
    if s == FULL_NAME:
        return weights_dir() / FULL_MODEL_SUBDIR
    named = zoo_dir() / s
    if "/" not in s and os.sep not in s and is_checkpoint_dir(named):
        return named
    p = Path(s).expanduser()
    if p.is_dir():
        if (p / RUN_CONFIG).is_file() and not is_checkpoint_dir(p):
            if is_checkpoint_dir(p / "export"):
                return p / "export"
            raise WeightsNotFoundError(
                f"run directory {p} has no export/ yet: the run has not finished (re-run its command to finish it)"
            )
        return p
    names = [c["name"] for c in list_checkpoints()]
    raise WeightsNotFoundError(
        f"checkpoint {s!r} is neither a known name ({', '.join(names) or 'none yet: run `motionlab recipe tiny`'})"
        f" nor an existing directory"
    )


__all__ = [
    "FULL_MODEL_SUBDIR",
    "FULL_NAME",
    "RUN_CONFIG",
    "SAMPLING_FILE",
    "WeightsNotFoundError",
    "is_checkpoint_dir",
    "list_checkpoints",
    "resolve_checkpoint",
    "weights_dir",
    "zoo_dir",
]
