"""Leases on work rows: a redelivered task no-ops on finished rows, defers to a live owner, takes over a dead one.

python -m pytest tests/backend/test_backend_leases.py -q
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from backend.core.config import Settings
from backend.crud.jobs import create_job
from backend.crud.leases import claim
from backend.db.migrate import upgrade_to_head
from backend.db.models import Job, utcnow
from backend.db.session import session_scope
from backend.worker.liveness import hostname, owner_token


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(storage_root=tmp_path)
    upgrade_to_head(s)
    return s


def _job(settings, **values) -> str:
    with session_scope(settings) as db:
        job = create_job(db, kind="ping", params={}, api_key_id=None)
        for k, v in values.items():
            setattr(job, k, v)
        return job.id


def _claim(settings, job_id, me="me:1:1", lease=60.0):
    with session_scope(settings) as db:
        outcome, row = claim(db, Job, job_id, me, lease)
        return outcome, (row.status, row.worker_id, row.attempts) if row is not None else None


def test_claim_outcomes(settings):
    assert _claim(settings, "job_0000000000000000")[0] == "missing"
    j = _job(settings)
    assert _claim(settings, j) == ("claimed", ("running", "me:1:1", 1))
    assert _claim(settings, j)[0] == "claimed"  # the same owner again (a retry in the same process)
    assert _claim(settings, _job(settings, status="succeeded"))[0] == "done"
    assert _claim(settings, _job(settings, status="cancelled"))[0] == "done"


def test_live_owner_makes_a_duplicate_defer(settings):
    j = _job(settings, status="running", worker_id=owner_token(), heartbeat_at=utcnow(), attempts=1)
    assert _claim(settings, j)[0] == "busy"


def test_dead_owner_is_taken_over_at_once(settings):
    dead = f"{hostname()}:999999999:1"
    j = _job(settings, status="running", worker_id=dead, heartbeat_at=utcnow(), attempts=1)
    assert _claim(settings, j) == ("claimed", ("running", "me:1:1", 2))


def test_silent_owner_is_taken_over_after_the_lease(settings):
    other = "elsewhere:1234:1"
    fresh = _job(settings, status="running", worker_id=other, heartbeat_at=utcnow(), attempts=1)
    assert _claim(settings, fresh)[0] == "busy"
    stale = _job(
        settings, status="running", worker_id=other, heartbeat_at=utcnow() - dt.timedelta(seconds=120), attempts=1
    )
    assert _claim(settings, stale, lease=60.0)[0] == "claimed"
    # even a live process on this host loses the row when it stopped beating (it is not executing it)
    idle = _job(settings, status="running", worker_id=owner_token(), heartbeat_at=utcnow() - dt.timedelta(hours=1))
    assert _claim(settings, idle)[0] == "claimed"


def test_a_row_whose_worker_keeps_dying_fails_after_max_attempts(settings):
    dead = f"{hostname()}:999999999:1"
    j = _job(settings, status="running", worker_id=dead, heartbeat_at=utcnow(), attempts=3)
    with session_scope(settings) as db:
        outcome, row = claim(db, Job, j, "me:1:1", 60.0, max_attempts=3)
        assert outcome == "done" and row.status == "failed" and "gave up after 3 attempts" in row.error
    j = _job(settings, status="running", worker_id=dead, heartbeat_at=utcnow(), attempts=2)
    with session_scope(settings) as db:
        assert claim(db, Job, j, "me:1:1", 60.0, max_attempts=3)[0] == "claimed"


def test_abandoned_running_rows_are_released_and_hinted_once(settings):
    """The sweep: a running row whose owner is dead (at once) or silent for a lease (any host) is released and gets
    a new message; a live owner's row is left alone; a second sweep sends nothing more."""
    from backend.worker.celery_app import make_celery
    from backend.worker.recovery import requeue_stale
    from tests.backend.backend_helpers import queue_depth

    dead = f"{hostname()}:999999999:1"
    old = utcnow() - dt.timedelta(seconds=settings.lease_timeout_s + 60)
    dead_silent = _job(settings, status="running", worker_id=dead, heartbeat_at=old, attempts=1)
    dead_fresh = _job(settings, status="running", worker_id=dead, heartbeat_at=utcnow(), attempts=1)
    remote_silent = _job(settings, status="running", worker_id="elsewhere:1:1", heartbeat_at=old, attempts=1)
    remote_beating = _job(settings, status="running", worker_id="elsewhere:1:1", heartbeat_at=utcnow(), attempts=1)
    alive = _job(settings, status="running", worker_id=owner_token(), heartbeat_at=utcnow(), attempts=1)
    celery = make_celery(settings)
    before = queue_depth(settings, "infer")
    assert sorted(requeue_stale(settings, celery)) == sorted([dead_silent, dead_fresh, remote_silent])
    assert queue_depth(settings, "infer") == before + 3
    assert requeue_stale(settings, celery) == []  # released with a fresh hint time: other sweeps leave them alone
    with session_scope(settings, write=False) as db:
        released = db.get(Job, dead_fresh)
        assert (released.status, released.worker_id, released.attempts) == ("running", None, 1)
    for job_id in (dead_silent, dead_fresh, remote_silent):
        assert _claim(settings, job_id) == ("claimed", ("running", "me:1:1", 2))
    assert _claim(settings, remote_beating)[0] == "busy" and _claim(settings, alive, me="x:1:1")[0] == "busy"


def test_a_waiting_row_whose_message_was_lost_is_hinted_again_once_its_queue_is_empty(settings):
    """A queued row (or a released one) whose hint is older than a lease gets a new message, but only while its
    queue is empty: a message still waiting there may be its own, and a backlog must not grow."""
    from backend.worker.celery_app import make_celery
    from backend.worker.dispatch import PING, enqueue
    from backend.worker.recovery import requeue_stale
    from tests.backend.backend_helpers import queue_depth

    old = utcnow() - dt.timedelta(seconds=settings.lease_timeout_s + 60)
    lost = _job(settings, created_at=old)  # never hinted since it was created
    released = _job(settings, status="running", heartbeat_at=old, attempts=1)  # released for a retry, long ago
    _job(settings)  # queued just now: its message may still be on its way
    _job(settings, status="cancelled", created_at=old)
    celery = make_celery(settings)
    enqueue(celery, PING, "job_0000000000000000")  # some other message waits in the queue
    assert requeue_stale(settings, celery) == []
    with celery.connection_for_write() as conn:
        conn.default_channel.queue_purge(settings.queue_prefix + "infer")
    assert sorted(requeue_stale(settings, celery)) == sorted([lost, released])
    assert queue_depth(settings, "infer") == 2
    assert requeue_stale(settings, celery) == []  # hinted just now, and the queue holds their messages
    assert _claim(settings, lost)[0] == "claimed" and _claim(settings, released) == (
        "claimed",
        ("running", "me:1:1", 2),
    )


@pytest.mark.parametrize("broker", ["embedded", "redis", "rabbitmq"])
def test_ready_messages_counts_a_queue_on_every_broker(broker, tmp_path):
    """What the sweep asks before it hints a waiting row again: 0 for an empty or never declared queue."""
    import contextlib
    import secrets

    from backend.worker.celery_app import make_celery
    from backend.worker.dispatch import PING, enqueue
    from backend.worker.recovery import ready_messages
    from tests.backend.conftest import AMQP_URL, REDIS_URL, _reachable

    prefix = f"motionlab-test-ready-{secrets.token_hex(4)}."
    if broker == "embedded":
        s = Settings(storage_root=tmp_path)
    else:
        url = REDIS_URL if broker == "redis" else AMQP_URL
        why = _reachable(url, 6379 if broker == "redis" else 5672)
        if why:
            pytest.skip(why)
        options = {"global_keyprefix": prefix} if broker == "redis" else {}
        s = Settings(storage_root=tmp_path, broker_url=url, queue_prefix=prefix, broker_transport_options=options)
    celery = make_celery(s)
    try:
        assert ready_messages(celery, "infer") == 0
        enqueue(celery, PING, "job_0000000000000000")
        enqueue(celery, PING, "job_0000000000000001")
        # an AMQP publish is not confirmed, so another connection may count it a moment later
        deadline = time.monotonic() + 10
        while ready_messages(celery, "infer") != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready_messages(celery, "infer") == 2
        assert ready_messages(celery, "train") == 0
    finally:
        with celery.connection_for_write() as conn:
            for q in ("train", "eval", "infer"):
                with contextlib.suppress(Exception):  # a queue this test never declared
                    conn.default_channel.queue_delete(s.queue_prefix + q)
            if broker == "rabbitmq":
                conn.default_channel.exchange_delete(prefix + "motionlab")


def test_one_thread_beats_every_lease_held_and_notices_a_lost_one(settings):
    import threading
    import time

    from backend.crud.leases import LeaseKeeper, aware

    fast = settings.model_copy(update={"heartbeat_interval_s": 0.05})
    me, old = owner_token(), utcnow() - dt.timedelta(minutes=5)
    a, b = (_job(settings, status="running", worker_id=me, heartbeat_at=old, attempts=1) for _ in range(2))

    def heartbeat(job_id):
        with session_scope(settings, write=False) as db:
            return aware(db.get(Job, job_id).heartbeat_at)

    with LeaseKeeper(fast, Job, a, me) as ka, LeaseKeeper(fast, Job, b, me) as kb:
        assert sum(t.name == "lease-heartbeats" for t in threading.enumerate()) == 1  # not a thread per lease
        deadline = time.monotonic() + 10
        while heartbeat(a) <= old or heartbeat(b) <= old:
            assert time.monotonic() < deadline, "the leases were never renewed"
            time.sleep(0.02)
        with session_scope(settings) as db:
            db.get(Job, b).worker_id = "otherhost:1:1"  # taken over by another worker
        while not kb.lost:
            assert time.monotonic() < deadline, "the lost lease went unnoticed"
            time.sleep(0.02)
        assert not ka.lost
    after = heartbeat(a)
    time.sleep(0.3)
    assert heartbeat(a) == after  # released: no more beats
