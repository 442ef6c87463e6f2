"""The sweep that takes abandoned work up again. With the row leases (``backend.crud.leases``) it is the one
mechanism that decides when a row runs again: broker messages are only wake-up hints, so nothing here waits for,
or depends on, a broker redelivering a message.

Every worker runs ``requeue_stale`` in its main process at start and then every ``heartbeat_interval_s`` (at least
a second):

- a ``running`` row whose owner is gone is released and hinted again at once: dead by /proc on this host (a
  SIGKILLed worker, a pool process killed at its hard time limit, an API process that died mid-generation: seen at
  the next sweep), or silent for ``lease_timeout_s`` (an owner on any host);
- a waiting row (``queued``, or released and not yet claimed) whose last hint is older than ``lease_timeout_s``
  while its queue holds no message is hinted again: its message was lost (taken by a consumer that died before it
  claimed the row, or dropped by a broker). Only an empty queue counts, so a backlog never grows by these hints.

A hint that turns out to be a duplicate is harmless: the lease decides (a held or finished row makes it a no-op),
and ``max_attempts`` ends the loop for work that kills its worker every time. Each release or re-hint is a
compare-and-set on the row, so workers sweeping at the same moment send one hint, not one each.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError
from kombu.transport import virtual
from sqlalchemy import and_, or_, select, update

from backend.core.config import Settings
from backend.crud.leases import owner_is_gone
from backend.db.models import QUEUED, RUNNING, Benchmark, Job, Run, utcnow
from backend.db.session import session_scope
from backend.worker.dispatch import EVALUATE, GENERATE, PING, TRAIN, BrokerUnavailable, enqueue, queue_name
from backend.worker.liveness import owner_state

log = logging.getLogger("motionlab.worker.recovery")

WORK_QUEUES: tuple[tuple[type, str], ...] = ((Run, "train"), (Benchmark, "eval"), (Job, "infer"))


def _task_name(model: type, kind: str | None) -> str:
    if model is Run:
        return TRAIN
    if model is Benchmark:
        return EVALUATE
    return PING if kind == "ping" else GENERATE


def _rows(db: Any, model: type, *where: Any) -> list[tuple[str, str | None, dt.datetime | None, str | None]]:
    """(id, worker_id, heartbeat_at, job kind or None) of the matching rows."""
    cols = (model.id, model.worker_id, model.heartbeat_at) + ((Job.kind,) if model is Job else ())
    return [(r[0], r[1], r[2], r[3] if model is Job else None) for r in db.execute(select(*cols).where(*where))]


def release_abandoned(settings: Settings) -> list[tuple[str, str]]:
    """Release every ``running`` row whose owner is gone; (task name, row id) of each."""
    cutoff = utcnow() - dt.timedelta(seconds=settings.lease_timeout_s)
    gone = []
    with session_scope(settings, write=False) as db:  # a read: live owners' heartbeats are never held up
        for model, _queue in WORK_QUEUES:
            for row_id, owner, beat, kind in _rows(db, model, model.status == RUNNING, model.worker_id.is_not(None)):
                if owner_is_gone(owner, beat, settings.lease_timeout_s):
                    gone.append((model, row_id, owner, kind))
    released = []
    if gone:
        with session_scope(settings) as db:
            for model, row_id, owner, kind in gone:
                unchanged = [model.id == row_id, model.status == RUNNING, model.worker_id == owner]
                if owner_state(owner) != "dead":  # gone by silence: unless it beat since the read
                    unchanged.append(or_(model.heartbeat_at.is_(None), model.heartbeat_at < cutoff))
                # released, and the time of this hint recorded, so that other sweeps leave it alone for a lease
                if db.execute(update(model).where(*unchanged).values(worker_id=None, heartbeat_at=utcnow())).rowcount:
                    released.append((_task_name(model, kind), row_id))
    return released


def ready_messages(celery: Celery, queue: str) -> int | None:
    """Messages waiting in a logical queue (0 where the broker has no such queue); None when it cannot tell."""
    name = queue_name(celery, queue)
    try:
        with celery.connection_for_write() as conn:  # its own connection: a failed passive declare closes a channel
            channel = conn.default_channel
            if isinstance(channel, virtual.Channel):
                # the embedded broker, Redis: the transport's own count (kombu's passive declare on Redis looks
                # the key up without its global_keyprefix, so it finds no queue there)
                return int(channel._size(name))
            try:
                return channel.queue_declare(queue=name, passive=True).message_count
            except ChannelError as exc:
                if str(getattr(exc, "reply_code", "")) == "404":  # NOT_FOUND: never declared, so nothing waits
                    return 0
                raise
    except Exception:  # kombu/redis/amqp/sqlite each raise their own errors: skip this sweep's re-hints
        log.warning("could not count the messages in queue %s", name, exc_info=True)
        return None


def rehint_lost(settings: Settings, celery: Celery) -> list[tuple[str, str]]:
    """Hint again the waiting rows of empty queues whose last hint is older than a lease; (task name, row id)."""
    cutoff = utcnow() - dt.timedelta(seconds=settings.lease_timeout_s)

    def waiting(model: type) -> list[Any]:
        return [
            or_(model.status == QUEUED, and_(model.status == RUNNING, model.worker_id.is_(None))),
            or_(model.heartbeat_at < cutoff, and_(model.heartbeat_at.is_(None), model.created_at < cutoff)),
        ]

    with session_scope(settings, write=False) as db:
        found = {model: _rows(db, model, *waiting(model)) for model, _queue in WORK_QUEUES}
    lost = [
        (model, row_id, kind)
        for model, queue in WORK_QUEUES
        if found[model] and ready_messages(celery, queue) == 0
        for row_id, _owner, _beat, kind in found[model]
    ]
    hinted = []
    if lost:
        with session_scope(settings) as db:
            for model, row_id, kind in lost:
                if db.execute(
                    update(model).where(model.id == row_id, *waiting(model)).values(heartbeat_at=utcnow())
                ).rowcount:
                    hinted.append((_task_name(model, kind), row_id))
    return hinted


def requeue_stale(settings: Settings, celery: Celery) -> list[str]:
    """One sweep: release and hint rows whose owner is gone, hint rows whose hint was lost; returns their ids."""
    found = release_abandoned(settings) + rehint_lost(settings, celery)
    for task, row_id in found:
        try:
            enqueue(celery, task, row_id)
            log.warning("queued %s again: its worker is gone, or its message was lost", row_id)
        except BrokerUnavailable:  # the next sweep after a lease period tries again (the row stays waiting)
            log.exception("could not queue %s again", row_id)
    return [row_id for _, row_id in found]


def sweep_interval_s(settings: Settings) -> float:
    return max(1.0, settings.heartbeat_interval_s)


class StaleSweeper:
    """A daemon thread in the worker's main process that runs requeue_stale every ``sweep_interval_s``."""

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
            if self._stop.wait(sweep_interval_s(self.settings)):
                return

    def start(self) -> StaleSweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
