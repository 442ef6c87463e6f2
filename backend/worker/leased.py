"""``leased_task``: how every worker task runs its row. The helper claims the row, keeps its lease while the work
runs, maps what the work raises onto the row and gives the row back, so that a task body holds only its own work.

    @leased_task(celery_app, Job, name=PING, label="ping", soft_time_limit=900, time_limit=1200)
    def ping(lease: Lease) -> dict[str, Any]:
        ...  # lease.row: the row as claimed; lease.lost: another process has taken it over

A message is only a wake-up hint (``backend.worker.celery_app``); the row's lease decides what a delivery does:

- this worker is shutting down: the message goes back to the queue (``Reject``), the row is untouched;
- the row is finished, cancelled or missing, or a live process holds it (this one too: a thread pool may be
  handed a duplicate while the first copy runs): nothing, ``{"outcome": "done" | "missing" | "busy"}``;
- otherwise the row is claimed, its lease renewed while the body runs, and what the body raises decides:

  =====================================  ===========================================================================
  Celery's ``Reject``, ``Retry``, ...    passed on to Celery
  anything, once the lease is lost       nothing is written: the row is its new owner's (``lease-lost``)
  ``WorkCancelled``, or ``cancelled``    ``cancel`` ends the row (by default: cancelled)
  a transient error (``TRANSIENT``)      the lease is released, and Celery retries the task with backoff
  ``SoftTimeLimitExceeded``              ``fail`` with ``time_limit_error``
  ``WorkFailed(message, detail)``        ``fail`` with the message (the detail, e.g. a traceback, for the row's log)
  anything else                          ``fail`` with ``Type: message`` and the traceback as the detail
  =====================================  ===========================================================================

A body that returns has ended its row itself (or handed it back to the queue and raised ``Reject``).
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from celery import Celery, Task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TaskPredicate
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import OperationalError

from backend.core.config import Settings, get_settings
from backend.crud.leases import LeaseKeeper, claim, release
from backend.db.models import CANCELLED, FAILED, TERMINAL, utcnow
from backend.db.session import session_scope
from backend.worker import shutdown
from backend.worker.liveness import owner_token

log = logging.getLogger("motionlab.worker")


# infrastructure errors (database, broker, network): retried with backoff
TRANSIENT: tuple[type[BaseException], ...] = (
    OperationalError,
    ConnectionError,
    TimeoutError,
    KombuOperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


class LeaseLost(Exception):
    """Another process took the row over: stop without writing to it."""


class WorkCancelled(Exception):
    """The row's cancel request stopped the work."""


class WorkFailed(Exception):
    """The work failed: ``message`` is the row's error, ``detail`` (a traceback, where the logs are) for its log."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.message, self.detail = message, detail


@dataclass
class Lease:
    """A claimed row while its task's body runs."""

    task: Task
    settings: Settings
    model: type
    row_id: str
    me: str  # this process's owner token (``host:pid:start``)
    row: Any  # the row as claimed (detached: its columns, no lazy relationships)
    keeper: LeaseKeeper

    @property
    def lost(self) -> bool:
        return self.keeper.lost


def end_row(model: type, row_id: str, status: str, error: str | None = None, **columns: Any) -> None:
    """The row's final status (and other ``columns``), its lease given up: how a row ends failed or cancelled unless
    its task says more."""
    with session_scope() as db:
        row = db.get(model, row_id)
        if row is None:
            return
        row.status, row.finished_at, row.worker_id = status, utcnow(), None
        if error:
            row.error = error[:4000]
        for name, value in columns.items():
            setattr(row, name, value)


class LeasedTask(Task):
    """Marks the task's row failed when the task fails for good (e.g. transient errors past max_retries)."""

    model: type | None = None

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        if self.model is None or not args:
            return
        try:
            with session_scope() as db:
                row = db.get(self.model, args[0])
                if row is not None and row.status not in TERMINAL:
                    row.status, row.finished_at = FAILED, utcnow()
                    row.error = f"{type(exc).__name__}: {exc}"[:4000]
                    row.worker_id = None
        except Exception:  # the database itself may be what failed
            log.exception("could not mark %s %s failed", self.model.__name__, args[0])


# rows a task of this process works on: a thread pool may be handed a duplicate of a running row, and the lease
# alone cannot tell the two apart (they share the process's owner token)
_here_lock = threading.Lock()
_here: set[tuple[str, str]] = set()


def _forget_after_fork() -> None:
    global _here_lock
    _here_lock = threading.Lock()
    _here.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


@dataclass(frozen=True)
class _Spec:
    model: type
    label: str
    fail: Callable[[str, str, str | None], None]
    cancel: Callable[[str], None]
    cancelled: tuple[type[BaseException], ...]
    time_limit_error: Callable[[Lease], str]


def _run_leased(task: Task, row_id: str, work: Callable[[Lease], dict[str, Any]], spec: _Spec) -> dict[str, Any]:
    if shutdown.STOP.is_set():  # this worker is shutting down: leave the row to the next one
        raise Reject("worker shutting down", requeue=True)
    settings, me, here = get_settings(), owner_token(), (spec.model.__tablename__, row_id)
    with _here_lock:
        if here in _here:
            return {"outcome": "busy"}
        _here.add(here)
    try:
        with session_scope(settings) as db:
            outcome, row = claim(db, spec.model, row_id, me, settings.lease_timeout_s, settings.max_attempts)
        if outcome != "claimed":
            return {"outcome": outcome}
        with LeaseKeeper(settings, spec.model, row_id, me) as keeper:
            lease = Lease(task, settings, spec.model, row_id, me, row, keeper)
            try:
                return work(lease)
            except TaskPredicate:  # Celery's own flow: Reject (a hand-back), Retry, Ignore
                raise
            except Exception as exc:
                if isinstance(exc, TRANSIENT) and not keeper.lost:
                    _release_quietly(spec, lease)
                    raise  # Celery's autoretry takes it
                return _ended(spec, lease, exc)
    finally:
        with _here_lock:
            _here.discard(here)


def _release_quietly(spec: _Spec, lease: Lease) -> None:
    """Give the row up before a retry, so whichever process runs the retry can take it at once."""
    try:
        release(lease.settings, spec.model, lease.row_id, lease.me)
    except Exception as err:  # noqa: BLE001 - best effort: the sweep frees a silent row anyway
        log.warning("could not release the lease on %s %s: %s", spec.label, lease.row_id, err)


def _ended(spec: _Spec, lease: Lease, exc: Exception) -> dict[str, Any]:
    """What the body raised (other than a transient error), applied to the row; the task's result."""
    what = f"{spec.label} {lease.row_id}"
    if isinstance(exc, LeaseLost) or lease.lost:  # checked first: nothing below may write over the new owner's work
        log.warning("%s: lease lost to another worker; stopped without touching the row", what)
        return {"outcome": "lease-lost"}
    if isinstance(exc, spec.cancelled):
        spec.cancel(lease.row_id)
        return {"outcome": "cancelled"}
    if isinstance(exc, SoftTimeLimitExceeded):
        log.warning("%s: soft time limit exceeded", what)
        error, detail = spec.time_limit_error(lease), None
    elif isinstance(exc, WorkFailed):
        log.error("%s failed: %s", what, exc.message)
        error, detail = exc.message, exc.detail
    else:
        log.exception("%s failed", what)
        error, detail = f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=20)
    spec.fail(lease.row_id, error, detail)
    return {"outcome": "failed"}


def leased_task(
    app: Celery,
    model: type,
    *,
    name: str,
    label: str,
    fail: Callable[[str, str, str | None], None] | None = None,
    cancel: Callable[[str], None] | None = None,
    cancelled: tuple[type[BaseException], ...] = (),
    time_limit_error: Callable[[Lease], str] | None = None,
    **options: Any,
) -> Callable[[Callable[[Lease], dict[str, Any]]], Task]:
    """Register ``work(lease) -> result`` as the Celery task ``name(row_id)`` on ``app`` (see the module docstring).

    ``label`` names the row in log lines; ``fail(row_id, error, detail)`` and ``cancel(row_id)`` end the row
    (default: ``end_row``); ``cancelled``: the work's own exceptions that mean it was cancelled;
    ``time_limit_error(lease)``: the row's error after a soft time limit; ``options``: Celery task options.
    """
    spec = _Spec(
        model=model,
        label=label,
        fail=fail or (lambda row_id, error, _detail: end_row(model, row_id, FAILED, error)),
        cancel=cancel or (lambda row_id: end_row(model, row_id, CANCELLED)),
        cancelled=(WorkCancelled, *cancelled),
        time_limit_error=time_limit_error or (lambda lease: f"time limit of {lease.task.soft_time_limit} s exceeded"),
    )
    retry = {
        "autoretry_for": TRANSIENT,
        "retry_backoff": 2,
        "retry_backoff_max": 300,
        "retry_jitter": True,
        "max_retries": get_settings().task_max_retries,
    }

    def register(work: Callable[[Lease], dict[str, Any]]) -> Task:
        def run(self: Task, row_id: str) -> dict[str, Any]:
            return _run_leased(self, row_id, work, spec)

        # Celery names and documents the task from the function it is given
        run.__name__, run.__qualname__, run.__module__, run.__doc__ = (
            work.__name__,
            work.__qualname__,
            work.__module__,
            work.__doc__,
        )
        return app.task(bind=True, base=LeasedTask, model=model, name=name, **{**retry, **options})(run)

    return register
