"""/v1/datasets: training-data directories registered by an admin, which API run configs name in ``data.root``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from backend.api.deps import (
    SessionReleasingRoute,
    allowed_roots,
    get_db,
    get_settings_dep,
    registration_error,
    require_scope,
)
from backend.api.schemas import DatasetList, DatasetOut, DatasetRegister
from backend.core.config import Settings
from backend.crud import datasets as crud
from backend.db.models import ApiKey
from backend.db.session import begin_write
from backend.security import has_scope

router = APIRouter(prefix="/datasets", tags=["datasets"], route_class=SessionReleasingRoute)


def _out(row: Any, key: ApiKey) -> dict[str, Any]:
    """The path only for admin keys: to everyone else a dataset is its name."""
    out = DatasetOut.model_validate(row).model_dump()
    if not has_scope(key.scopes, "admin"):
        out["path"] = None
    return out


@router.post(
    "",
    response_model=DatasetOut,
    status_code=201,
    summary="Register a training-data directory (admin; the path is on the server)",
)
def register_dataset(
    body: DatasetRegister,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    key: ApiKey = Depends(require_scope("admin")),
) -> dict[str, Any]:
    begin_write(db)
    try:
        row = crud.register_dataset(db, name=body.name, path=body.path, allowed_roots=allowed_roots(settings))
    except crud.DatasetError as exc:
        raise registration_error(exc, "invalid_dataset") from exc
    db.commit()
    return _out(row, key)


@router.get("", response_model=DatasetList, summary="List registered datasets (paths shown to admin keys only)")
def list_datasets(db: Session = Depends(get_db), key: ApiKey = Depends(require_scope("read"))) -> dict[str, Any]:
    return {"items": [_out(r, key) for r in crud.list_datasets(db)]}
