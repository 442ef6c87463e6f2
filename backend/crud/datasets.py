"""Registered training-data directories: an admin names a server directory once; API run configs use the name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from backend.crud.checkpoints import NAME_RE, CheckpointError
from backend.db.models import Dataset


class DatasetError(CheckpointError):
    """A registration refused: ``field``, the message and the HTTP status."""


def get_dataset(db: Session, ref: str) -> Dataset | None:
    """By id or name."""
    return db.scalar(select(Dataset).where(or_(Dataset.id == ref, Dataset.name == ref)))


def list_datasets(db: Session) -> Sequence[Dataset]:
    return db.scalars(select(Dataset).order_by(Dataset.name)).all()


def register_dataset(db: Session, *, name: str, path: str, allowed_roots: Sequence[Path] | None = None) -> Dataset:
    """A new row for an existing absolute directory (inside ``allowed_roots`` when given); flushes."""
    if not NAME_RE.fullmatch(name or ""):
        raise DatasetError("name", "name: must be 1-128 characters of letters, digits, '.', '_' or '-'")
    p = Path(path).expanduser()
    if not p.is_absolute():
        raise DatasetError("path", "path: must be absolute (the directory on the API and worker machines)")
    p = p.resolve()
    if allowed_roots and not any(p == r or r in p.parents for r in allowed_roots):
        raise DatasetError("path", f"path: must be inside one of {[str(r) for r in allowed_roots]}", 403)
    if not p.is_dir():
        raise DatasetError("path", f"path: {p} is not a directory")
    if get_dataset(db, name) is not None:
        raise DatasetError("name", f"name: a dataset named {name!r} already exists", 409)
    row = Dataset(name=name, path=str(p))
    db.add(row)
    db.flush()
    return row
