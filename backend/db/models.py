"""SQLAlchemy 2 models of every MotionLab table.

The schema itself is built by the Alembic migrations in ``backend/alembic/versions`` (never ``create_all``);
``tests/backend/test_backend_db.py`` checks that these models and the migrations agree.

Rows that a worker executes (runs, jobs, benchmarks) carry a lease: ``worker_id`` (``host:pid:start``) and
``heartbeat_at``. A delivered task (messages are only hints: ``backend.worker.recovery``) takes the row over only
when that owner is gone, so a message delivered twice never runs the same work twice at once.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")

# Status values shared by runs, jobs and benchmarks.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)
# Where a benchmark's numbers come from: measured by this server's workers, or imported from a shipped file
# (``backend.imported_results``; kept in its config, which no client can set).
MEASURED, IMPORTED = "measured", "imported"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id(prefix: str) -> str:
    """``<prefix>_<16 hex>``: unguessable, URL-safe, and valid as a storage id."""
    return f"{prefix}_{secrets.token_hex(8)}"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType}  # noqa: RUF012 - SQLAlchemy reads it


def _ts(nullable: bool = True, default: bool = False) -> Any:
    if default:
        return mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    return mapped_column(DateTime(timezone=True), nullable=nullable)


class LeaseMixin:
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[dt.datetime | None] = _ts()
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


# --- access -----------------------------------------------------------------------------------------


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    prefix: Mapped[str] = mapped_column(String(20), nullable=False)  # first chars of the token, to recognise it
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    scopes: Mapped[list[Any]] = mapped_column(nullable=False)
    created_at: Mapped[dt.datetime] = _ts(default=True)
    last_used_at: Mapped[dt.datetime | None] = _ts()
    revoked_at: Mapped[dt.datetime | None] = _ts()


# --- training ----------------------------------------------------------------------------------------------


class Run(LeaseMixin, Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("run"))
    name: Mapped[str | None] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(40), nullable=False)
    preset: Mapped[str] = mapped_column(String(40), nullable=False, default="tiny")
    config: Mapped[dict[str, Any]] = mapped_column(nullable=False)  # the user's overrides, as submitted
    resolved_config: Mapped[dict[str, Any] | None] = mapped_column()  # the full validated config
    status: Mapped[str] = mapped_column(String(20), nullable=False, default=QUEUED, index=True)
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    step: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    # ranks the run trains on (one process, one GPU each); None until a worker picks its default
    nproc: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None] = mapped_column()  # the latest values
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    task_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = _ts(default=True)
    started_at: Mapped[dt.datetime | None] = _ts()
    finished_at: Mapped[dt.datetime | None] = _ts()


class RunMetric(Base):
    __tablename__ = "run_metrics"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_run_metrics_run_step"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    values: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    created_at: Mapped[dt.datetime] = _ts(default=True)


class RunLog(Base):
    __tablename__ = "run_logs"
    __table_args__ = (Index("ix_run_logs_run_id_id", "run_id", "id"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)
    level: Mapped[str] = mapped_column(String(10), nullable=False, default="INFO")
    message: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[dt.datetime] = _ts(default=True)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ckpt"))
    name: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    source: Mapped[str] = mapped_column(String(20), nullable=False)  # run | external | zoo
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    step: Mapped[int | None] = mapped_column(Integer)
    # run checkpoints: a path relative to the storage root; external: the absolute directory an admin registered
    location: Mapped[str] = mapped_column(Text, nullable=False)
    info: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[dt.datetime] = _ts(default=True)


class Dataset(Base):
    """A training-data directory an admin registered: API run configs name it (``data.root``), never a path."""

    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    name: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    path: Mapped[str] = mapped_column(Text, nullable=False)  # absolute, on the API and worker machines
    created_at: Mapped[dt.datetime] = _ts(default=True)


# --- generation --------------------------------------------------------------------------------------------


class Job(LeaseMixin, Base):
    """A queued unit of non-training work (a generation; ``ping`` for worker checks)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_key_status", "api_key_id", "status"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default=QUEUED, index=True)
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    params: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    result: Mapped[dict[str, Any] | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    # a running generation stops at its next sampling step once this is set (migration 0003)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    task_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = _ts(default=True)
    started_at: Mapped[dt.datetime | None] = _ts()
    finished_at: Mapped[dt.datetime | None] = _ts()


class Video(Base):
    __tablename__ = "videos"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("vid"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    benchmark_id: Mapped[str | None] = mapped_column(ForeignKey("benchmarks.id", ondelete="SET NULL"), index=True)
    checkpoint: Mapped[str] = mapped_column(String(200), nullable=False)  # checkpoint id or zoo name
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    params: Mapped[dict[str, Any] | None] = mapped_column()  # steps, frames, size, guidance, sampler info
    num_frames: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    fps: Mapped[float] = mapped_column(Float, nullable=False)
    storage_key: Mapped[str] = mapped_column(String(200), nullable=False)  # "<kind>/<id>.mp4" in the store
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[dt.datetime] = _ts(default=True)


# --- evaluation --------------------------------------------------------------------------------------------


class Benchmark(LeaseMixin, Base):
    __tablename__ = "benchmarks"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("bench"))
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), nullable=False, default=QUEUED, index=True)
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    config: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    summary: Mapped[dict[str, Any] | None] = mapped_column()
    report_key: Mapped[str | None] = mapped_column(String(200))  # report artifact in the store
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    task_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = _ts(default=True)
    started_at: Mapped[dt.datetime | None] = _ts()
    finished_at: Mapped[dt.datetime | None] = _ts()

    @property
    def source(self) -> str:
        """``imported`` (a table read from a shipped file) or ``measured`` (scored here)."""
        return IMPORTED if (self.config or {}).get("source") == IMPORTED else MEASURED


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (Index("ix_scores_benchmark_metric", "benchmark_id", "metric"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    benchmark_id: Mapped[str | None] = mapped_column(ForeignKey("benchmarks.id", ondelete="CASCADE"))
    checkpoint: Mapped[str] = mapped_column(String(200), nullable=False)
    video_id: Mapped[str | None] = mapped_column(ForeignKey("videos.id", ondelete="SET NULL"))
    metric: Mapped[str] = mapped_column(String(100), nullable=False)
    value: Mapped[float | None] = mapped_column(Float)
    backend: Mapped[str] = mapped_column(String(100), nullable=False)  # which model/implementation scored it
    prompt: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    extra: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[dt.datetime] = _ts(default=True)


# --- human preference studies (routes live in the study module) --------------------------------------------


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("study"))
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default="draft")  # draft|open|closed
    config: Mapped[dict[str, Any]] = mapped_column(nullable=False)  # questions, design, items per annotator
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = _ts(default=True)
    opened_at: Mapped[dt.datetime | None] = _ts()
    closed_at: Mapped[dt.datetime | None] = _ts()


class StudyItem(Base):
    __tablename__ = "study_items"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("item"))
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True)
    position: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    prompt: Mapped[str | None] = mapped_column(Text)
    video_a_id: Mapped[str | None] = mapped_column(ForeignKey("videos.id", ondelete="SET NULL"))
    video_b_id: Mapped[str | None] = mapped_column(ForeignKey("videos.id", ondelete="SET NULL"))
    system_a: Mapped[str | None] = mapped_column(String(200))
    system_b: Mapped[str | None] = mapped_column(String(200))
    is_attention_check: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    meta: Mapped[dict[str, Any] | None] = mapped_column()


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ann"))
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[dt.datetime] = _ts(default=True)
    last_seen_at: Mapped[dt.datetime | None] = _ts()
    revoked_at: Mapped[dt.datetime | None] = _ts()


class Assignment(Base):
    __tablename__ = "assignments"
    # (item_id, slot) unique: an item's k annotation slots are 0..k-1, an expired assignment gives its slot back
    # (slot NULL), so no race can hand out more than k live-or-done assignments of an item (migration 0002)
    __table_args__ = (
        UniqueConstraint("annotator_id", "item_id", name="uq_assignments_annotator_item"),
        UniqueConstraint("item_id", "slot", name="uq_assignments_item_slot"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("asg"))
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True)
    annotator_id: Mapped[str] = mapped_column(
        ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False, index=True
    )
    item_id: Mapped[str] = mapped_column(ForeignKey("study_items.id", ondelete="CASCADE"), nullable=False)
    order_index: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    swap_sides: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)  # A shown on the right
    status: Mapped[str] = mapped_column(String(20), nullable=False, default="pending")  # pending|done|expired
    assigned_at: Mapped[dt.datetime] = _ts(default=True)
    completed_at: Mapped[dt.datetime | None] = _ts()
    slot: Mapped[int | None] = mapped_column(Integer)  # NULL for gold items (no cap) and expired assignments
    expires_at: Mapped[dt.datetime | None] = _ts()  # a pending assignment is released after this
    # side -> {"bytes": bytes of the video the server sent to this assignment, "at": ISO time they reached the whole
    # file}: the server's own record that the videos were fetched, for the full-watch check (migration 0003)
    served: Mapped[dict[str, Any] | None] = mapped_column()


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("assignment_id", "question", name="uq_responses_assignment_question"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("resp"))
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True)
    assignment_id: Mapped[str] = mapped_column(
        ForeignKey("assignments.id", ondelete="CASCADE"), nullable=False, index=True
    )
    annotator_id: Mapped[str] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False)
    item_id: Mapped[str] = mapped_column(ForeignKey("study_items.id", ondelete="CASCADE"), nullable=False)
    question: Mapped[str] = mapped_column(String(100), nullable=False, default="overall")
    choice: Mapped[str] = mapped_column(String(20), nullable=False)  # in terms of systems: a | b | tie
    rationale: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[dt.datetime] = _ts(default=True)


class PlaybackEvent(Base):
    __tablename__ = "playback_events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), nullable=False)
    assignment_id: Mapped[str] = mapped_column(
        ForeignKey("assignments.id", ondelete="CASCADE"), nullable=False, index=True
    )
    annotator_id: Mapped[str] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False)
    event: Mapped[str] = mapped_column(String(20), nullable=False)  # play | pause | seek | ended | ...
    side: Mapped[str | None] = mapped_column(String(10))  # left | right | a | b
    video_time_s: Mapped[float | None] = mapped_column(Float)
    client_time_ms: Mapped[int | None] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[dt.datetime] = _ts(default=True)
