"""Registered training-data directories: an admin names a server directory once; API run configs use the name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from backend.crud.checkpoints import CheckpointError, registered_dir
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
    p = registered_dir(name, path, allowed_roots, DatasetError)
    if get_dataset(db, name) is not None:
        raise DatasetError("name", f"name: a dataset named {name!r} already exists", 409)
    row = Dataset(name=name, path=str(p))
    db.add(row)
    db.flush()
    return row
