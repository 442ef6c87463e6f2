"""The leased-task helper (``backend.worker.leased``): each way a task body can end, applied to its row, through a
real Celery worker (in this process, a thread pool) on a real broker and database: the embedded defaults, and
PostgreSQL + Redis.

    OMP_NUM_THREADS=1 python -m pytest tests/backend/test_backend_leased.py -q
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections import Counter
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_prerun, task_retry

from backend.core.config import get_settings
from backend.crud.jobs import create_job
from backend.db.migrate import upgrade_to_head
from backend.db.models import SUCCEEDED, Job, utcnow
from backend.db.session import session_scope
from backend.worker.celery_app import make_celery
from backend.worker.leased import Lease, WorkCancelled, WorkFailed, end_row, leased_task
from tests.backend.backend_helpers import wait_for
from tests.backend.conftest import REDIS_URL, SESSION_TAG, _reachable

SOFT_LIMIT_S = 77
TAKEN_OVER_BY = "elsewhere:4242:1"


@pytest.fixture(params=["embedded", "postgres-redis"])
def settings(request, tmp_path, monkeypatch):
    """Tasks read their settings from MOTIONLAB_* (as in a worker process); heartbeats every 0.2 s, so that a
    lease lost to another process is noticed at once."""
    for k in list(os.environ):
        if k.startswith("MOTIONLAB_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("MOTIONLAB_STORAGE_ROOT", str(tmp_path / "storage"))
    monkeypatch.setenv("MOTIONLAB_HEARTBEAT_INTERVAL_S", "0.2")
    if request.param == "postgres-redis":
        why = _reachable(REDIS_URL, 6379)
        if why:
            pytest.skip(why)
        prefix = f"motionlab-test-{SESSION_TAG}-{secrets.token_hex(3)}."
        monkeypatch.setenv("MOTIONLAB_DATABASE_URL", request.getfixturevalue("pg_database"))
        monkeypatch.setenv("MOTIONLAB_BROKER_URL", REDIS_URL)
        monkeypatch.setenv("MOTIONLAB_QUEUE_PREFIX", prefix)
        monkeypatch.setenv("MOTIONLAB_BROKER_TRANSPORT_OPTIONS", json.dumps({"global_keyprefix": prefix}))
    get_settings.cache_clear()
    s = get_settings()
    upgrade_to_head(s)
    yield s
    get_settings.cache_clear()
    if not s.embedded_broker:
        with make_celery(s).connection_for_write() as conn:
            for q in ("train", "eval", "infer"):
                with contextlib.suppress(Exception):  # a queue this test never declared
                    conn.default_channel.queue_delete(s.queue_prefix + q)


def _job(settings, **values: Any) -> str:
    with session_scope(settings) as db:
        job = create_job(db, kind="ping", params={}, api_key_id=None)
        for k, v in values.items():
            setattr(job, k, v)
        return job.id


def _row(settings, job_id: str) -> dict[str, Any]:
    with session_scope(settings, write=False) as db:
        j = db.get(Job, job_id)
        return {"status": j.status, "worker_id": j.worker_id, "attempts": j.attempts, "error": j.error}


def test_every_way_a_task_body_ends_is_applied_to_its_row(settings):
    app = make_celery(settings)
    prefix = f"test.leased.{secrets.token_hex(3)}."  # Celery shares task names across apps: one set per test
    calls: Counter[str] = Counter()  # bodies run, per case
    delivered: Counter[str] = Counter()  # messages that reached a task, per case
    at_retry: list[dict[str, Any]] = []  # the transient case's row when Celery schedules its retry

    def on_prerun(sender=None, **_kw) -> None:
        if sender.name.startswith(prefix):
            delivered[sender.name[len(prefix) :]] += 1

    def on_retry(sender=None, **_kw) -> None:
        at_retry.append(_row(settings, rows["transient-once"]))

    def succeed(lease: Lease) -> dict[str, Any]:
        end_row(Job, lease.row_id, SUCCEEDED)
        return {"outcome": "succeeded"}

    def body(case: str):
        def work(lease: Lease) -> dict[str, Any]:
            calls[case] += 1
            if case == "error":
                raise ValueError("bad input")
            if case == "work-failed":
                raise WorkFailed("rank 1 failed: ConfigError: steps", detail="Traceback (most recent call last): ...")
            if case == "cancelled":
                raise WorkCancelled()
            if case == "time-limit":
                raise SoftTimeLimitExceeded()  # what the prefork pool raises in the body at the soft limit
            if case == "transient-once" and lease.row.attempts == 1:
                raise ConnectionError("the broker went away for a moment")
            if case == "taken-over":
                with session_scope(settings) as db:
                    db.get(Job, lease.row_id).worker_id = TAKEN_OVER_BY  # another worker took the row over
                wait_for(lambda: lease.lost, 20, "the lease keeper to notice the takeover")
                raise RuntimeError("failing after the takeover must not fail the new owner's row")
            if case == "slow":  # runs until its duplicate has been delivered to another thread
                wait_for(lambda: delivered["slow"] == 2, 30, "the duplicate to be delivered")
            return succeed(lease)

        return work

    cases = ["ok", "error", "work-failed", "cancelled", "time-limit", "transient-once", "taken-over", "slow"]
    for case in cases:
        leased_task(app, Job, name=prefix + case, label=case, soft_time_limit=SOFT_LIMIT_S)(body(case))
    rows = {case: _job(settings) for case in cases}
    rows["held-elsewhere"] = _job(
        settings, status="running", worker_id=TAKEN_OVER_BY, heartbeat_at=utcnow(), attempts=1
    )
    rows["finished"] = _job(settings, status="succeeded", finished_at=utcnow())
    for case in ("held-elsewhere", "finished"):
        leased_task(app, Job, name=prefix + case, label=case)(body(case))

    task_prerun.connect(on_prerun, weak=False)
    task_retry.connect(on_retry, weak=False)
    try:
        got = _run_all(app, settings, prefix, rows)
    finally:
        task_prerun.disconnect(on_prerun)
        task_retry.disconnect(on_retry)

    assert got["ok"] == {"status": "succeeded", "worker_id": None, "attempts": 1, "error": None}
    assert got["error"] == {"status": "failed", "worker_id": None, "attempts": 1, "error": "ValueError: bad input"}
    assert got["work-failed"]["status"] == "failed"
    assert got["work-failed"]["error"] == "rank 1 failed: ConfigError: steps"
    assert got["cancelled"]["status"] == "cancelled" and got["cancelled"]["worker_id"] is None
    assert got["time-limit"]["status"] == "failed"
    assert got["time-limit"]["error"] == f"time limit of {SOFT_LIMIT_S} s exceeded"
    # a transient error: the lease is given up before the retry, which claims the row again and finishes it
    assert at_retry[:1] == [{"status": "running", "worker_id": None, "attempts": 1, "error": None}]
    assert got["transient-once"]["status"] == "succeeded" and got["transient-once"]["attempts"] == 2
    assert calls["transient-once"] == 2
    # the row went to another process: nothing written over it
    assert got["taken-over"] == {"status": "running", "worker_id": TAKEN_OVER_BY, "attempts": 1, "error": None}
    # deliveries the lease turns away never reach the body
    assert delivered["held-elsewhere"] == 1 and calls["held-elsewhere"] == 0
    assert got["held-elsewhere"]["worker_id"] == TAKEN_OVER_BY
    assert delivered["finished"] == 1 and calls["finished"] == 0 and got["finished"]["status"] == "succeeded"
    # a duplicate handed to another thread of this process while the first copy ran: turned away as well
    assert delivered["slow"] == 2 and calls["slow"] == 1
    assert got["slow"]["status"] == "succeeded" and got["slow"]["attempts"] == 1


def _run_all(app, settings, prefix: str, rows: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Send every case's message (and a duplicate of the slow one) to a worker; the rows once all have ended."""
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=30):
        for case, job_id in rows.items():
            app.send_task(prefix + case, args=[job_id])
        app.send_task(prefix + "slow", args=[rows["slow"]])  # a duplicate while the first copy runs here

        def settled() -> bool:
            ended = [_row(settings, rows[c])["status"] in ("succeeded", "failed", "cancelled") for c in rows]
            return all(ended[i] for i, c in enumerate(rows) if c not in ("taken-over", "held-elsewhere"))

        wait_for(settled, 60, "every row to end")
        time.sleep(1.0)  # a late duplicate would have run by now
    # the worker has stopped: every task it started has returned
    return {case: _row(settings, job_id) for case, job_id in rows.items()}
