"""Runs: create, read, cancel, resume; progress, metrics and log lines written by the training task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.db.models import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    TERMINAL,
    Run,
    RunLog,
    RunMetric,
    utcnow,
)

MAX_LOG_LINE = 4000


def create_run(
    db: Session,
    *,
    method: str,
    config: dict[str, Any],
    preset: str,
    name: str | None,
    resolved_config: dict[str, Any] | None,
    total_steps: int | None,
    api_key_id: str | None,
    idempotency_key: str | None = None,
    nproc: int | None = None,
) -> tuple[Run, bool]:
    """Returns (run, created). With an idempotency key already used, the existing run and False.

    ``nproc``: ranks to train on; None lets the worker that starts the run pick (``default_nproc``)."""
    if idempotency_key:
        existing = db.scalar(select(Run).where(Run.idempotency_key == idempotency_key))
        if existing is not None:
            return existing, False
    run = Run(
        method=method,
        config=config,
        preset=preset,
        name=name,
        resolved_config=resolved_config,
        total_steps=total_steps,
        api_key_id=api_key_id,
        idempotency_key=idempotency_key,
        status=QUEUED,
        nproc=nproc,
    )
    db.add(run)
    db.flush()
    append_log(db, run.id, f"created: method={method} preset={preset}" + (f" nproc={nproc}" if nproc else ""))
    return run, True


def list_runs(
    db: Session, *, status: str | None = None, method: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[Sequence[Run], int]:
    q = select(Run)
    if status:
        q = q.where(Run.status == status)
    if method:
        q = q.where(Run.method == method)
    total = db.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = db.scalars(q.order_by(Run.created_at.desc(), Run.id).limit(limit).offset(offset)).all()
    return rows, total


def request_cancel(db: Session, run: Run) -> Run:
    """Queued runs are cancelled at once; running ones stop at their next step (after a checkpoint)."""
    if run.status in TERMINAL:
        return run
    run.cancel_requested = True
    if run.status == QUEUED:
        run.status, run.finished_at = CANCELLED, utcnow()
        append_log(db, run.id, "cancelled before it started")
    else:
        append_log(db, run.id, "cancel requested; stopping at the next step")
    return run


def reopen_for_resume(db: Session, run: Run) -> Run:
    """A failed or cancelled run goes back to the queue; training resumes from its last checkpoint."""
    run.status, run.cancel_requested, run.error, run.finished_at = QUEUED, False, None, None
    run.worker_id, run.attempts = None, 0  # max_attempts counts deliveries since the last (re)submission
    append_log(db, run.id, "resume requested")
    return run


def append_log(db: Session, run_id: str, message: str, level: str = "INFO") -> None:
    db.add(RunLog(run_id=run_id, level=level[:10], message=message[:MAX_LOG_LINE]))


def record_progress(db: Session, run_id: str, *, step: int, total_steps: int | None, values: dict[str, Any]) -> None:
    """One training step's numbers: the run row's latest state plus an upserted metrics row for the step."""
    run = db.get(Run, run_id)
    if run is None:
        return
    run.step = step
    if total_steps:
        run.total_steps = total_steps
        run.progress = min(1.0, step / total_steps)
    run.metrics = values
    run.heartbeat_at = utcnow()
    upsert_metric(db, run_id, step, values)


def upsert_metric(db: Session, run_id: str, step: int, values: dict[str, Any]) -> None:
    row = db.scalar(select(RunMetric).where(RunMetric.run_id == run_id, RunMetric.step == step))
    if row is None:
        db.add(RunMetric(run_id=run_id, step=step, values=values))
    else:  # the step ran again after a resume from an earlier checkpoint: keep the latest numbers
        row.values = values


def metrics(db: Session, run_id: str, *, after_step: int = -1, limit: int = 1000) -> Sequence[RunMetric]:
    return db.scalars(
        select(RunMetric)
        .where(RunMetric.run_id == run_id, RunMetric.step > after_step)
        .order_by(RunMetric.step)
        .limit(limit)
    ).all()


def logs(db: Session, run_id: str, *, after_id: int = 0, limit: int = 1000) -> Sequence[RunLog]:
    return db.scalars(
        select(RunLog).where(RunLog.run_id == run_id, RunLog.id > after_id).order_by(RunLog.id).limit(limit)
    ).all()


def finish(db: Session, run: Run, status: str, *, error: str | None = None) -> None:
    run.status, run.finished_at = status, utcnow()
    if error is not None:
        run.error = error[:MAX_LOG_LINE]
    if status == FAILED and error:
        append_log(db, run.id, error, "ERROR")


__all__ = [
    "RUNNING",
    "append_log",
    "create_run",
    "finish",
    "list_runs",
    "logs",
    "metrics",
    "record_progress",
    "reopen_for_resume",
    "request_cancel",
]
