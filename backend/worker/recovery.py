"""Requeue work whose worker is gone and whose message will not come back.

A SIGKILLed worker's unacked message is redelivered by the broker (see ``celery_app``). But a message can be
acked without its row finishing: a pool process killed at the hard time limit is acked as failed by Celery; a
broker can lose a message. Such a row stays ``running`` with a silent lease. Every worker runs ``requeue_stale``
at start and then every ``lease_timeout_s``: a ``running`` row whose owner is gone (dead, or no heartbeat for a
lease period) is released and queued again. A duplicate message is harmless (the lease decides who runs it; a
finished row is a no-op), and ``max_attempts`` ends the loop for work that kills its worker every time.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from celery import Celery
from sqlalchemy import select

from backend.core.config import Settings
from backend.crud.leases import owner_is_gone
from backend.db.models import RUNNING, Benchmark, Job, Run, utcnow
from backend.db.session import session_scope
from backend.worker.dispatch import EVALUATE, GENERATE, PING, TRAIN, BrokerUnavailable, enqueue

log = logging.getLogger("motionlab.worker.recovery")


def requeue_stale(settings: Settings, celery: Celery) -> list[str]:
    """Release and requeue stale ``running`` rows; returns their ids."""
    cutoff = utcnow() - dt.timedelta(seconds=settings.lease_timeout_s)
    found: list[tuple[str, str]] = []
    with session_scope(settings) as db:
        for model in (Run, Job, Benchmark):
            rows = db.scalars(
                select(model).where(model.status == RUNNING, model.heartbeat_at < cutoff).with_for_update()
            ).all()
            for row in rows:
                if not owner_is_gone(row.worker_id, row.heartbeat_at, settings.lease_timeout_s):
                    continue
                task = {Run: TRAIN, Benchmark: EVALUATE}.get(model) or (PING if row.kind == "ping" else GENERATE)
                # released, and fresh, so that other workers' sweeps leave it alone for a lease period
                row.worker_id, row.heartbeat_at = None, utcnow()
                found.append((task, row.id))
    for task, row_id in found:
        try:
            enqueue(celery, task, row_id)
            log.warning("requeued %s: its worker is gone and its message was consumed", row_id)
        except BrokerUnavailable:
            log.exception("could not requeue %s", row_id)
    return [r for _, r in found]


class StaleSweeper:
    """A daemon thread in the worker's main process that runs requeue_stale periodically."""

    def __init__(self, settings: Settings, celery: Celery):
        self.settings, self.celery = settings, celery
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stale-sweeper", daemon=True)

    def _loop(self) -> None:
        while True:
            try:
                requeue_stale(self.settings, self.celery)
            except Exception:  # the database may be briefly unavailable: try again next period
                log.exception("stale sweep failed")
            if self._stop.wait(max(5.0, self.settings.lease_timeout_s)):
                return

    def start(self) -> StaleSweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
