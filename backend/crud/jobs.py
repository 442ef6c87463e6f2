"""Jobs (generations and worker pings) and the videos they produce."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.db.models import ACTIVE, CANCELLED, QUEUED, RUNNING, Job, Video, utcnow


def create_job(
    db: Session, *, kind: str, params: dict[str, Any], api_key_id: str | None, owner: str | None = None
) -> Job:
    """A queued job; with ``owner``, one the creating process runs itself: inserted already running and leased to
    ``owner`` (see ``backend.crud.leases``), so no worker can take it."""
    job = Job(kind=kind, params=params, api_key_id=api_key_id, status=QUEUED)
    if owner is not None:
        now = utcnow()
        job.status, job.worker_id, job.heartbeat_at, job.started_at, job.attempts = RUNNING, owner, now, now, 1
    db.add(job)
    db.flush()
    return job


def count_active(db: Session, *, kind: str, api_key_id: str | None) -> int:
    return (
        db.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.kind == kind, Job.api_key_id == api_key_id, Job.status.in_(ACTIVE))
        )
        or 0
    )


def list_jobs(
    db: Session, *, kind: str, status: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[Sequence[Job], int]:
    q = select(Job).where(Job.kind == kind)
    if status:
        q = q.where(Job.status == status)
    total = db.scalar(select(func.count()).select_from(q.subquery())) or 0
    return db.scalars(q.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all(), total


def cancel_job(db: Session, job: Job) -> None:
    """A queued job ends cancelled at once; a running one is asked to stop (its runner ends it cancelled)."""
    if job.status == QUEUED:
        job.status, job.finished_at = CANCELLED, utcnow()
    elif job.status == RUNNING:
        job.cancel_requested = True


def video_for_job(db: Session, job_id: str) -> Video | None:
    return db.scalar(select(Video).where(Video.job_id == job_id).order_by(Video.created_at.desc()))
