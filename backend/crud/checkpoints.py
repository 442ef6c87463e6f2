"""Checkpoints: rows for run outputs and admin-registered external diffusers directories; zoo lookups.

An adapter checkpoint (LoRA weights + the name of its base, ``trainer/models/adapter.py``) registers like a pipeline
directory; its base must be available (a zoo name, or a directory inside the allowed roots) and is recorded in
``info.adapter``."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from backend.db.models import Checkpoint
from backend.storage import ArtifactStore

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CheckpointError(ValueError):
    def __init__(self, field: str, message: str, status: int = 422):
        self.field, self.status = field, status
        super().__init__(message)


def looks_like_diffusers_dir(path: Path) -> bool:
    """A diffusers pipeline (model_index.json), an adapter checkpoint, or a single model (config.json + weights)
    directory."""
    from trainer.models.adapter import is_adapter_dir  # heavy: torch; the API registers few checkpoints

    if (path / "model_index.json").is_file() or is_adapter_dir(path):
        return True
    if (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))):
        return True
    return (path / "transformer" / "config.json").is_file()


def sampling_info(path: Path) -> dict[str, Any] | None:
    """The small JSON of how to sample a checkpoint, when the directory has one."""
    from trainer.models.generator import SAMPLING_FILE  # heavy: torch; the API starts without the model code

    f = path / SAMPLING_FILE
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            return None
    return None


def adapter_info(path: Path, allowed_roots: Sequence[Path] | None = None) -> dict[str, Any] | None:
    """An adapter checkpoint's base and LoRA settings (None for other directories); raises ``CheckpointError`` when
    the base is not available or, as a directory, outside ``allowed_roots``."""
    # heavy: torch; the API starts without the model code
    from trainer.models.adapter import adapter_summary, is_adapter_dir
    from trainer.models.generator import adapter_base, check_pipeline_dir

    if not is_adapter_dir(path):
        return None
    try:
        summary = adapter_summary(path)
        base = adapter_base(path).resolve()
        check_pipeline_dir(base)
    except FileNotFoundError as exc:
        raise CheckpointError("path", f"path: {exc}") from None
    if allowed_roots and "/" in summary["base"] and not any(base == r or r in base.parents for r in allowed_roots):
        raise CheckpointError(
            "path", f"path: the adapter's base {base} must be inside one of {[str(r) for r in allowed_roots]}", 403
        )
    return summary


def zoo_entries() -> list[dict[str, Any]]:
    """The zoo's checkpoints as the API lists them (name, ``source="zoo"``, their JSON-safe info); [] without one."""
    try:
        from trainer.zoo import list_checkpoints as zoo_list  # heavy: torch; only when the zoo is asked for
    except ImportError:
        return []
    try:
        entries = zoo_list()
    except Exception:  # noqa: BLE001 - a broken zoo must not take the listing down
        return []
    out = []
    for e in entries:
        name = str(e.get("name", ""))
        if NAME_RE.fullmatch(name):
            info = {
                k: v
                for k, v in e.items()
                if k not in ("name", "path") and isinstance(v, (str, int, float, bool, type(None), dict, list))
            }
            out.append({"id": name, "name": name, "source": "zoo", "info": info or None})
    return out


def zoo_path(name: str) -> Path | None:
    """The directory of zoo checkpoint ``name``; None when the zoo does not list it."""
    if not NAME_RE.fullmatch(name):
        return None
    try:
        from trainer.zoo import resolve_checkpoint  # heavy: torch; only when the zoo is asked for
    except ImportError:
        return None
    if name not in {e["name"] for e in zoo_entries()}:
        return None  # only names the zoo lists: never hand a client-supplied string to a path resolver
    try:
        return Path(resolve_checkpoint(name))
    except Exception:  # noqa: BLE001 - a name that does not resolve is simply not a zoo entry
        return None


def list_checkpoints(
    db: Session, *, run_id: str | None = None, limit: int = 100, offset: int = 0
) -> Sequence[Checkpoint]:
    q = select(Checkpoint)
    if run_id:
        q = q.where(Checkpoint.run_id == run_id)
    return db.scalars(q.order_by(Checkpoint.created_at.desc(), Checkpoint.id).limit(limit).offset(offset)).all()


def get_checkpoint(db: Session, ref: str) -> Checkpoint | None:
    return db.scalar(select(Checkpoint).where(or_(Checkpoint.id == ref, Checkpoint.name == ref)))


def location_path(row: Checkpoint, store: ArtifactStore) -> Path:
    if row.source == "external":
        return Path(row.location)
    p = (store.root / row.location).resolve()
    if store.root not in p.parents:  # stored locations are written by us, but check anyway
        raise CheckpointError("location", f"checkpoint {row.id} points outside the storage root", 500)
    return p


def registered_dir(
    name: str, path: str, allowed_roots: Sequence[Path] | None, error: type[CheckpointError] = CheckpointError
) -> Path:
    """The resolved directory an admin registers under ``name``: the checks every registration shares (a valid name,
    an absolute path to an existing directory, inside ``allowed_roots`` when given), failing with ``error``."""
    if not NAME_RE.fullmatch(name or ""):
        raise error("name", "name: must be 1-128 characters of letters, digits, '.', '_' or '-'")
    if not path or len(path) > 4096:
        raise error("path", "path: must be a server-side directory path of at most 4096 characters")
    p = Path(path).expanduser()
    if not p.is_absolute():
        raise error("path", "path: must be absolute (the directory on the API and worker machines)")
    p = p.resolve()
    if allowed_roots and not any(p == r or r in p.parents for r in allowed_roots):
        raise error("path", f"path: must be inside one of {[str(r) for r in allowed_roots]}", 403)
    if not p.is_dir():
        raise error("path", f"path: {p} is not a directory")
    return p


def register_external(
    db: Session,
    *,
    name: str,
    path: str,
    allowed_roots: Sequence[Path] | None = None,
    info: dict[str, Any] | None = None,
) -> Checkpoint:
    p = registered_dir(name, path, allowed_roots)
    if not looks_like_diffusers_dir(p):
        raise CheckpointError(
            "path",
            f"path: {p} is not a diffusers directory (no model_index.json, "
            "motionlab_adapter.json, config.json with weights, or transformer/config.json)",
        )
    adapter = adapter_info(p, allowed_roots)
    if get_checkpoint(db, name) is not None:
        raise CheckpointError("name", f"name: a checkpoint named {name!r} already exists", 409)
    row = Checkpoint(
        name=name,
        source="external",
        location=str(p),
        info={
            **(info or {}),
            **({"sampling": s} if (s := sampling_info(p)) else {}),
            **({"adapter": adapter} if adapter else {}),
        },
    )
    db.add(row)
    db.flush()
    return row


def register_run_checkpoint(
    db: Session,
    *,
    run_id: str,
    run_name: str | None,
    rel_location: str,
    step: int | None,
    info: dict[str, Any] | None = None,
) -> Checkpoint:
    """Idempotent: the same run directory path maps to the same row."""
    row = db.scalar(select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.location == rel_location))
    if row is not None:
        if info:
            row.info = {**(row.info or {}), **info}
        return row
    base = f"{run_name or run_id}-step{step}" if step is not None else f"{run_name or run_id}-{Path(rel_location).name}"
    name, n = base, 1
    while get_checkpoint(db, name) is not None:
        n += 1
        name = f"{base}-{n}"
    row = Checkpoint(name=name[:200], source="run", run_id=run_id, step=step, location=rel_location, info=info)
    db.add(row)
    db.flush()
    return row
