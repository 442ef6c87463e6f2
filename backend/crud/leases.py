"""Leases on work rows (runs, jobs, benchmarks): which worker process executes a row right now.

A task that receives a message calls ``claim``; the outcome says what to do:

- ``claimed``: this process owns the row (first delivery, or a redelivery after the previous owner died);
- ``done``: the row is already finished or cancelled: the message is a duplicate, ack it and do nothing;
- ``busy``: another live process holds the row (a broker redelivered a message whose task still runs):
  defer and look again later;
- ``missing``: no such row.

Owner gone: dead by /proc (same host, immediate), or its heartbeat is older than ``lease_timeout`` (any host).
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.core.config import Settings
from backend.db.models import CANCELLED, FAILED, QUEUED, RUNNING, TERMINAL, utcnow
from backend.worker.liveness import owner_state


def aware(t: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; everything here is UTC."""
    if t is not None and t.tzinfo is None:
        return t.replace(tzinfo=dt.UTC)
    return t


def owner_is_gone(worker_id: str | None, heartbeat_at: dt.datetime | None, lease_timeout_s: float) -> bool:
    """Dead (same host, by /proc) or silent: a task beats every few seconds while it runs, so a heartbeat older
    than the lease means nobody is executing the row, even if the process that last held it is still alive."""
    if owner_state(worker_id) == "dead":
        return True
    hb = aware(heartbeat_at)
    return hb is None or (utcnow() - hb).total_seconds() > lease_timeout_s


def claim(db: Session, model: type, row_id: str, me: str, lease_timeout_s: float,
          max_attempts: int | None = None) -> tuple[str, Any]:
    """Try to take the row for ``me``; returns (outcome, row). Commits.

    ``max_attempts`` stops a poison message (one that kills its worker every time, e.g. out of memory) from
    being redelivered forever: the row fails instead, with the reason.
    """
    row = db.scalar(select(model).where(model.id == row_id).with_for_update())
    if row is None:
        db.commit()
        return "missing", None
    if row.status in TERMINAL:
        db.commit()
        return "done", row
    if getattr(row, "cancel_requested", False) and row.status == QUEUED:
        row.status, row.finished_at = CANCELLED, utcnow()
        db.commit()
        return "done", row
    if (row.status == RUNNING and row.worker_id and row.worker_id != me
            and not owner_is_gone(row.worker_id, row.heartbeat_at, lease_timeout_s)):
        db.commit()
        return "busy", row
    if max_attempts and row.worker_id != me and (row.attempts or 0) >= max_attempts:
        row.status, row.finished_at, row.worker_id = FAILED, utcnow(), None
        row.error = (f"gave up after {row.attempts} attempts: the worker executing it stopped each time without "
                     "finishing (killed, out of memory, or past its hard time limit)")
        db.commit()
        return "done", row
    row.worker_id = me
    row.heartbeat_at = utcnow()
    row.status = RUNNING
    row.attempts = (row.attempts or 0) + 1
    if row.started_at is None:
        row.started_at = utcnow()
    db.commit()
    return "claimed", row


class LeaseKeeper:
    """Renews ``heartbeat_at`` from a background thread while a task runs (independent of step length).

    ``lost`` turns true if another process took the row over, so the task can stop instead of racing it.
    """

    def __init__(self, settings: Settings, model: type, row_id: str, me: str):
        self.settings, self.model, self.row_id, self.me = settings, model, row_id, me
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{row_id}", daemon=True)

    def beat(self) -> None:
        from backend.db.session import session_scope

        with session_scope(self.settings) as db:
            n = db.execute(update(self.model).where(self.model.id == self.row_id, self.model.worker_id == self.me)
                           .values(heartbeat_at=utcnow())).rowcount
            if n == 0:
                self.lost = True

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                self.beat()
            except Exception:  # a transient DB error: the next beat retries; the lease is long enough
                pass

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
