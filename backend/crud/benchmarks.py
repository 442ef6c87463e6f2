"""Benchmarks and their scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.db.models import CANCELLED, QUEUED, SUCCEEDED, TERMINAL, Benchmark, Score, utcnow


def create_benchmark(db: Session, *, name: str | None, config: dict[str, Any], api_key_id: str | None) -> Benchmark:
    row = Benchmark(name=name, config=config, api_key_id=api_key_id, status=QUEUED)
    db.add(row)
    db.flush()
    return row


def create_imported_benchmark(
    db: Session, *, bench_id: str, name: str, config: dict[str, Any], summary: dict[str, Any], report_key: str
) -> Benchmark:
    """A finished benchmark whose report was read from a file (never queued, no scores)."""
    now = utcnow()
    row = Benchmark(
        id=bench_id,
        name=name,
        config=config,
        summary=summary,
        report_key=report_key,
        status=SUCCEEDED,
        progress=1.0,
        api_key_id=None,
        created_at=now,
        started_at=now,
        finished_at=now,
    )
    db.add(row)
    db.flush()
    return row


def list_benchmarks(
    db: Session, *, status: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[Sequence[Benchmark], int]:
    q = select(Benchmark)
    if status:
        q = q.where(Benchmark.status == status)
    total = db.scalar(select(func.count()).select_from(q.subquery())) or 0
    return db.scalars(q.order_by(Benchmark.created_at.desc(), Benchmark.id).limit(limit).offset(offset)).all(), total


def request_cancel(db: Session, row: Benchmark) -> Benchmark:
    if row.status in TERMINAL:
        return row
    row.cancel_requested = True
    if row.status == QUEUED:
        row.status, row.finished_at = CANCELLED, utcnow()
    return row


def scores(db: Session, benchmark_id: str) -> Sequence[Score]:
    return db.scalars(select(Score).where(Score.benchmark_id == benchmark_id).order_by(Score.id)).all()
