"""Row leases: the one record of which process executes a run, job or benchmark, and of when abandoned work is
taken up again. Broker messages are only wake-up hints; this table decides.

A task that receives a message calls ``claim``; the outcome says what to do:

- ``claimed``: this process owns the row (first delivery, or a later one after the previous owner went away);
- ``done``: the row is already finished or cancelled, or a cancel was requested and nobody runs it any more (it is
  ended cancelled here, not started over): the message is a duplicate, ack it and do nothing;
- ``busy``: another live process holds the row: the message is a duplicate hint, ack it and do nothing (should
  that owner go away, the sweep in ``backend.worker.recovery`` hints the row again);
- ``missing``: no such row.

The owner (``worker_id`` = ``host:pid:start``) renews ``heartbeat_at`` while it runs (``LeaseKeeper``). It is gone
when it is dead by /proc (same host, seen at once) or its heartbeat is older than ``lease_timeout`` (any host).
A row waiting for a worker (``queued``, or ``running`` with no owner after ``release``) keeps in ``heartbeat_at``
when it was last hinted, so the sweep can tell a hint that has had a lease period to be taken from a fresh one.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from typing import Any, ClassVar, Self

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.core.config import Settings
from backend.db.models import CANCELLED, FAILED, RUNNING, TERMINAL, utcnow
from backend.db.session import session_scope
from backend.worker.liveness import owner_state

log = logging.getLogger("motionlab.leases")


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


def claim(
    db: Session, model: type, row_id: str, me: str, lease_timeout_s: float, max_attempts: int | None = None
) -> tuple[str, Any]:
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
    if (
        row.status == RUNNING
        and row.worker_id
        and row.worker_id != me
        and not owner_is_gone(row.worker_id, row.heartbeat_at, lease_timeout_s)
    ):
        db.commit()
        return "busy", row  # a cancel request is the live owner's to act on
    if getattr(row, "cancel_requested", False):
        # queued, or running when its worker died (e.g. SIGKILLed) after the cancel request: end it cancelled
        # rather than start the work over (a run keeps its last checkpoint; resume continues from it)
        row.status, row.finished_at, row.worker_id = CANCELLED, utcnow(), None
        db.commit()
        return "done", row
    if max_attempts and row.worker_id != me and (row.attempts or 0) >= max_attempts:
        row.status, row.finished_at, row.worker_id = FAILED, utcnow(), None
        row.error = (
            f"gave up after {row.attempts} attempts: the worker executing it stopped each time without "
            "finishing (killed, out of memory, or past its hard time limit)"
        )
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


def release(settings: Settings, model: type, row_id: str, me: str) -> bool:
    """Give the lease up without finishing the row (before a retry), so whichever process runs the retry can take
    the row at once; ``heartbeat_at`` becomes the time of that hint. False when ``me`` no longer held it."""
    with session_scope(settings) as db:
        return bool(
            db.execute(
                update(model)
                .where(model.id == row_id, model.worker_id == me)
                .values(worker_id=None, heartbeat_at=utcnow())
            ).rowcount
        )


class LeaseKeeper:
    """Renews ``heartbeat_at`` while a task runs (independent of step length), from one background thread per
    process that beats every lease held: entering and leaving costs a set insert, not a thread, which matters for a
    request-sized task such as a served generation.

    ``lost`` turns true if another process took the row over, so the task can stop instead of racing it.
    """

    _held: ClassVar[set[LeaseKeeper]] = set()
    _cond = threading.Condition()
    _thread: threading.Thread | None = None
    _wake_at = float("inf")  # when the beating thread next wakes by itself

    def __init__(self, settings: Settings, model: type, row_id: str, me: str):
        self.settings, self.model, self.row_id, self.me = settings, model, row_id, me
        self.lost = False
        self.due = float("inf")

    def beat(self) -> None:
        with session_scope(self.settings) as db:
            n = db.execute(
                update(self.model)
                .where(self.model.id == self.row_id, self.model.worker_id == self.me)
                .values(heartbeat_at=utcnow())
            ).rowcount
            if n == 0:
                self.lost = True

    def __enter__(self) -> Self:
        cls = LeaseKeeper
        with cls._cond:
            self.due = time.monotonic() + self.settings.heartbeat_interval_s
            cls._held.add(self)
            if cls._thread is None:
                cls._thread = threading.Thread(target=cls._loop, name="lease-heartbeats", daemon=True)
                cls._thread.start()
            elif self.due < cls._wake_at:
                cls._cond.notify()
        return self

    def __exit__(self, *exc: object) -> None:
        with LeaseKeeper._cond:
            LeaseKeeper._held.discard(self)

    @classmethod
    def _loop(cls) -> None:
        while True:
            with cls._cond:
                now = time.monotonic()
                due = [k for k in cls._held if k.due <= now]
                for k in due:
                    k.due = now + k.settings.heartbeat_interval_s
                if not due:
                    cls._wake_at = min((k.due for k in cls._held), default=float("inf"))
                    cls._cond.wait(None if cls._wake_at == float("inf") else cls._wake_at - now)
                    continue
            for k in due:  # outside the lock: a slow database must not hold up entering or leaving
                try:
                    k.beat()
                except Exception:
                    log.debug("lease heartbeat failed; the next beat retries", exc_info=True)

    @classmethod
    def _after_fork(cls) -> None:  # a forked worker child has none of the parent's leases, nor its thread
        cls._held, cls._cond, cls._thread, cls._wake_at = set(), threading.Condition(), None, float("inf")


os.register_at_fork(after_in_child=LeaseKeeper._after_fork)
