"""/v1/runs: training runs (create with a method and config, list, get, cancel, resume, metrics, logs).

A config names checkpoints (``init``, ``teacher``) and datasets (``data.root``) by their registered or zoo names,
never by server paths (``backend.run_refs``). Errors and log lines are shown to non-admin keys without server paths.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from backend.api.deps import (
    MAX_INT32,
    MAX_INT64,
    Page,
    SessionReleasingRoute,
    check_id,
    get_celery,
    get_db,
    get_row,
    get_settings_dep,
    get_store,
    pagination,
    redacted,
    require_scope,
    shown,
)
from backend.api.errors import ApiError, check_range
from backend.api.run_config import validate_config
from backend.api.schemas import LogList, LogOut, MetricList, RunCreate, RunDetail, RunList, RunOut
from backend.core.config import Settings
from backend.crud import runs as crud
from backend.db.models import CANCELLED, FAILED, ApiKey, Run
from backend.db.session import begin_write
from backend.storage import ArtifactStore
from backend.worker.dispatch import TRAIN, BrokerUnavailable, enqueue

router = APIRouter(prefix="/runs", tags=["runs"], route_class=SessionReleasingRoute)
MAX_PAGE = 10_000  # metric rows or log lines per request


def _show(run: Run, key: ApiKey, model: type = RunOut) -> dict[str, Any]:
    """The run as ``model`` shows it; its error without server paths unless the key is an admin's."""
    return shown(model, run, key)


def _get(db: Session, run_id: str) -> Run:
    return get_row(db, Run, run_id, "run", "run_id")


def _dispatch(db: Session, celery: Celery, run: Run) -> None:
    """Publish after the row is committed (a worker must find it); record the task id, or the failure."""
    try:
        task_id = enqueue(celery, TRAIN, run.id)
    except BrokerUnavailable as exc:
        # the row must not look queued with no message behind it: record the failure and tell the client
        begin_write(db)
        crud.finish(db, run, FAILED, error=f"could not queue the run: {exc}; resume with POST /v1/runs/{run.id}/resume")
        db.commit()
        raise ApiError(503, "broker_unavailable", str(exc)) from exc
    begin_write(db)
    db.execute(update(Run).where(Run.id == run.id).values(task_id=task_id))
    db.commit()
    set_committed_value(run, "task_id", task_id)


@router.post("", response_model=RunDetail, status_code=201, summary="Create (and queue) a training run")
def create_run(
    body: RunCreate,
    response: Response,
    db: Session = Depends(get_db),
    celery: Celery = Depends(get_celery),
    store: ArtifactStore = Depends(get_store),
    settings: Settings = Depends(get_settings_dep),
    key: ApiKey = Depends(require_scope("train")),
) -> dict[str, Any]:
    check_range("nproc", body.nproc, 1, settings.limits.max_nproc)
    resolved, total = validate_config(body.method, body.config, body.preset, db=db, store=store)
    db.commit()  # end the read of the registered names
    begin_write(db)

    def create():
        return crud.create_run(
            db,
            method=body.method,
            config=body.config,
            preset=body.preset,
            name=body.name,
            resolved_config=resolved,
            total_steps=total,
            api_key_id=key.id,
            idempotency_key=body.idempotency_key,
            nproc=body.nproc,
        )

    try:
        run, created = create()
        db.commit()
    except IntegrityError:  # a concurrent request with the same idempotency key won the insert
        db.rollback()
        begin_write(db)
        run, created = create()
        if created:
            raise
    if not created:
        response.status_code = 200
        return _show(run, key, RunDetail)
    _dispatch(db, celery, run)
    return _show(run, key, RunDetail)


@router.get("", response_model=RunList, summary="List runs (newest first)")
def list_runs(
    status: str | None = Query(None, max_length=20),
    method: str | None = Query(None, max_length=40),
    page: Page = Depends(pagination()),
    db: Session = Depends(get_db),
    key: ApiKey = Depends(require_scope("read")),
) -> dict:
    rows, total = crud.list_runs(db, status=status, method=method, limit=page.limit, offset=page.offset)
    return {"items": [_show(r, key) for r in rows], "total": total, "limit": page.limit, "offset": page.offset}


@router.get("/{run_id}", response_model=RunDetail, summary="Get a run")
def get_run(run_id: str, db: Session = Depends(get_db), key: ApiKey = Depends(require_scope("read"))) -> dict:
    return _show(_get(db, run_id), key, RunDetail)


@router.post(
    "/{run_id}/cancel",
    response_model=RunOut,
    status_code=202,
    summary="Cancel: a queued run at once, a running one at its next step (its last checkpoint is kept)",
)
def cancel_run(run_id: str, db: Session = Depends(get_db), key: ApiKey = Depends(require_scope("train"))) -> dict:
    check_id(run_id, "run_id")
    begin_write(db)
    run = _get(db, run_id)
    crud.request_cancel(db, run)
    db.commit()
    return _show(run, key)


@router.post(
    "/{run_id}/resume",
    response_model=RunOut,
    status_code=202,
    summary="Queue a failed or cancelled run again; it resumes from its last checkpoint",
)
def resume_run(
    run_id: str,
    db: Session = Depends(get_db),
    celery: Celery = Depends(get_celery),
    key: ApiKey = Depends(require_scope("train")),
) -> dict:
    check_id(run_id, "run_id")
    begin_write(db)
    run = _get(db, run_id)
    if run.status not in (FAILED, CANCELLED):
        raise ApiError(
            409,
            "conflict",
            f"run_id: run {run_id} is {run.status}; only failed or cancelled runs can be resumed",
            field="run_id",
        )
    crud.reopen_for_resume(db, run)
    db.commit()
    _dispatch(db, celery, run)
    return _show(run, key)


@router.get("/{run_id}/metrics", response_model=MetricList, summary="Per-step metrics (losses, ...)")
def run_metrics(
    run_id: str,
    after_step: int = Query(-1, ge=-1, le=MAX_INT32),
    limit: int = Query(1000, ge=1, le=MAX_PAGE),
    db: Session = Depends(get_db),
    _key: ApiKey = Depends(require_scope("read")),
) -> dict:
    _get(db, run_id)
    return {"run_id": run_id, "items": crud.metrics(db, run_id, after_step=after_step, limit=limit)}


@router.get("/{run_id}/logs", response_model=LogList, summary="Log lines (poll with after_id)")
def run_logs(
    run_id: str,
    after_id: int = Query(0, ge=0, le=MAX_INT64),
    limit: int = Query(1000, ge=1, le=MAX_PAGE),
    db: Session = Depends(get_db),
    key: ApiKey = Depends(require_scope("read")),
) -> dict:
    _get(db, run_id)
    items = [
        {**LogOut.model_validate(r).model_dump(), "message": redacted(key, r.message)}
        for r in crud.logs(db, run_id, after_id=after_id, limit=limit)
    ]
    return {"run_id": run_id, "items": items}


__all__ = ["router"]
