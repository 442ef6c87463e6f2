"""/v1/checkpoints: list (database + zoo), get, register an external diffusers directory (admin), download (zip)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from backend.api.deps import (
    Page,
    SessionReleasingRoute,
    allowed_roots,
    check_id,
    get_db,
    get_settings_dep,
    get_store,
    pagination,
    registration_error,
    require_scope,
)
from backend.api.errors import ApiError, not_found
from backend.api.schemas import CheckpointList, CheckpointOut, CheckpointRegister
from backend.core.config import Settings
from backend.crud import checkpoints as crud
from backend.crud.checkpoints import zoo_entries, zoo_path
from backend.db.models import ApiKey, Checkpoint
from backend.db.session import begin_write
from backend.storage import ArtifactStore

router = APIRouter(prefix="/checkpoints", tags=["checkpoints"], route_class=SessionReleasingRoute)


def _check_ref(ref: str) -> str:
    if not crud.NAME_RE.fullmatch(ref or ""):
        raise ApiError(
            422,
            "invalid_id",
            f"checkpoint: must be a checkpoint id or name (letters, digits, '.', '_', '-'; no '/'); got {ref[:60]!r}",
            field="checkpoint",
        )
    return ref


@router.get("", response_model=CheckpointList, summary="List checkpoints: trained, registered and zoo")
def list_checkpoints(
    run_id: str | None = Query(None),
    page: Page = Depends(pagination(100)),
    db: Session = Depends(get_db),
    _key: ApiKey = Depends(require_scope("read")),
) -> dict:
    if run_id is not None:
        check_id(run_id, "run_id")
    rows: list[Any] = list(crud.list_checkpoints(db, run_id=run_id, limit=page.limit, offset=page.offset))
    if run_id is None and page.offset == 0:
        rows += zoo_entries()
    return {"items": rows}


@router.get("/{ref}", response_model=CheckpointOut, summary="Get a checkpoint by id or name")
def get_checkpoint(ref: str, db: Session = Depends(get_db), _key: ApiKey = Depends(require_scope("read"))) -> Any:
    _check_ref(ref)
    row = crud.get_checkpoint(db, ref)
    if row is not None:
        return row
    for e in zoo_entries():
        if e["name"] == ref:
            return e
    raise not_found("checkpoint", ref, "checkpoint")


@router.post(
    "",
    response_model=CheckpointOut,
    status_code=201,
    summary="Register an external diffusers directory (admin; the path is on the server)",
)
def register_checkpoint(
    body: CheckpointRegister,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    _key: ApiKey = Depends(require_scope("admin")),
) -> Checkpoint:
    if body.name in {e["name"] for e in zoo_entries()}:
        raise ApiError(409, "conflict", f"name: {body.name!r} is a zoo checkpoint's name", field="name")
    begin_write(db)
    try:
        row = crud.register_external(db, name=body.name, path=body.path, allowed_roots=allowed_roots(settings))
    except crud.CheckpointError as exc:
        raise registration_error(exc, "invalid_checkpoint") from exc
    db.commit()
    return row


def _zip_dir(src: Path, store: ArtifactStore, archive_id: str) -> Path:
    """An atomic zip of a checkpoint directory, rebuilt when the directory changed since the last one."""
    target = store.path("archives", archive_id, ".zip")
    newest = max((p.stat().st_mtime for p in src.rglob("*") if p.is_file()), default=0.0)
    if target.exists() and target.stat().st_mtime >= newest:
        return target
    with (
        store.atomic_file("archives", archive_id, ".zip") as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf,
    ):
        for p in sorted(src.rglob("*")):
            if p.is_file() and not p.name.startswith(".tmp-"):
                zf.write(p, arcname=str(Path(archive_id) / p.relative_to(src)))
    return target


@router.get(
    "/{ref}/download",
    summary="Download a checkpoint directory as a zip",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def download_checkpoint(
    ref: str,
    db: Session = Depends(get_db),
    store: ArtifactStore = Depends(get_store),
    _key: ApiKey = Depends(require_scope("read")),
) -> FileResponse:
    _check_ref(ref)
    row = crud.get_checkpoint(db, ref)
    if row is not None:
        src, archive_id = crud.location_path(row, store), row.id
    else:
        src = zoo_path(ref)
        if src is None:
            raise not_found("checkpoint", ref, "checkpoint")
        archive_id = "zoo-" + ref.replace(".", "_")
    if not src.is_dir():
        raise ApiError(
            410, "gone", f"checkpoint: the files of {ref!r} are no longer at their location", field="checkpoint"
        )
    path = _zip_dir(src, store, archive_id)
    return FileResponse(path, media_type="application/zip", filename=f"{os.path.basename(archive_id)}.zip")
