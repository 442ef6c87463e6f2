"""The embedded broker (a plain FIFO queue on SQLite): ack, reject/requeue, the release of unacked messages on a clean
close; and the work of a SIGKILLed consumer, which comes back through its row's lease, not through the broker.

    python -m pytest tests/backend/test_backend_broker.py -q
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from kombu import Connection

from backend.worker import sqlite_broker
from backend.worker.liveness import owner_state, owner_token

sqlite_broker.register()


@pytest.fixture
def url(tmp_path) -> str:
    return f"motionlab+sqlite:///{tmp_path / 'broker.sqlite'}"


def test_fifo_ack_and_reject(url):
    with Connection(url) as c:
        q = c.SimpleQueue("q")
        for i in range(3):
            q.put({"i": i})
        m = q.get(timeout=2)
        assert m.payload == {"i": 0}
        m.reject(requeue=True)  # back at its place in line
        m = q.get(timeout=2)
        assert m.payload == {"i": 0}
        m.ack()
        m = q.get(timeout=2)
        assert m.payload == {"i": 1}
        m.reject(requeue=False)  # dropped
        m = q.get(timeout=2)
        assert m.payload == {"i": 2}
        m.ack()
        with pytest.raises(q.Empty):
            q.get(timeout=0.5)
        q.close()
    path = url.split("///", 1)[1]
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


def test_unacked_message_is_released_on_clean_close(url):
    with Connection(url) as c:
        q = c.SimpleQueue("q")
        q.put({"x": 1})
        assert q.get(timeout=2).payload == {"x": 1}  # not acked
        q.close()
    with Connection(url) as c:
        q = c.SimpleQueue("q")
        m = q.get(timeout=2)
        assert m.payload == {"x": 1} and m.delivery_info.get("redelivered") in (None, True)
        m.ack()
        q.close()
    path = url.split("///", 1)[1]
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0  # no duplicate


def test_a_messages_table_with_more_columns_works(url):
    """A broker file whose table has more columns (each nullable or defaulted) keeps working, messages included."""
    path = url.split("///", 1)[1]
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, payload TEXT NOT NULL, "
        "delivery_tag TEXT, created_at REAL NOT NULL, owner TEXT, heartbeat_at REAL, "
        "deliveries INTEGER NOT NULL DEFAULT 0)"
    )
    with Connection(url) as c:
        q = c.SimpleQueue("q")
        q.put({"n": 1})
        db.execute("UPDATE messages SET owner = 'somebody:1:1'")  # what such a file may hold: still a ready message
        q.put({"n": 2})
        assert [q.get(timeout=2).payload for _ in range(2)] == [{"n": 1}, {"n": 2}]
        q.close()


CLAIM_AND_DIE = """
import os, signal, sys
from kombu import Connection
from backend.core.config import Settings
from backend.crud.leases import claim
from backend.db.models import Job
from backend.db.session import session_scope
from backend.worker import sqlite_broker  # registers motionlab+sqlite://
from backend.worker.liveness import owner_token
settings = Settings(storage_root=sys.argv[1])
with Connection(settings.broker_url) as c:
    m = c.SimpleQueue("infer").get(timeout=10)
    job_id = m.payload["job"]
    with session_scope(settings) as db:
        print(claim(db, Job, job_id, owner_token(), 120.0)[0], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_work_of_a_sigkilled_consumer_comes_back_through_its_row_lease(tmp_path):
    """The consumer takes the message, claims the row and is SIGKILLed: the queue keeps nothing of it (a message is
    only a hint), and the sweep finds the row's owner dead and queues it again; the next claim takes it over."""
    from backend.core.config import Settings
    from backend.crud.jobs import create_job
    from backend.crud.leases import claim
    from backend.db.migrate import upgrade_to_head
    from backend.db.models import Job
    from backend.db.session import session_scope
    from backend.worker.celery_app import make_celery
    from backend.worker.recovery import requeue_stale

    settings = Settings(storage_root=tmp_path)
    upgrade_to_head(settings)
    with session_scope(settings) as db:
        job_id = create_job(db, kind="ping", params={}, api_key_id=None).id
    with Connection(settings.broker_url) as c:
        c.SimpleQueue("infer").put({"job": job_id})
    r = subprocess.run(
        [sys.executable, "-c", CLAIM_AND_DIE, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=60,
    )
    assert r.returncode < 0 and r.stdout.strip() == "claimed", r.stderr
    assert sqlite_broker.queued_counts(tmp_path / "broker.sqlite").get("infer", 0) == 0
    with session_scope(settings, write=False) as db:
        row = db.get(Job, job_id)
        assert row.status == "running" and owner_state(row.worker_id) == "dead"
    assert requeue_stale(settings, make_celery(settings)) == [job_id]
    assert sqlite_broker.queued_counts(tmp_path / "broker.sqlite") == {"infer": 1}
    with session_scope(settings) as db:
        outcome, row = claim(db, Job, job_id, owner_token(), 120.0)
        assert outcome == "claimed" and row.attempts == 2


def test_liveness_tokens():
    me = owner_token()
    assert owner_state(me) == "alive"
    host, pid, start = me.rsplit(":", 2)
    assert owner_state(f"{host}:{pid}:{int(start) + 1}") == "dead"  # same pid, other start time: reused pid
    assert owner_state(f"{host}:999999999:1") == "dead"
    assert owner_state(f"elsewhere:{pid}:{start}") == "unknown"
    assert json.dumps(me)


def test_celery_delivery_settings(tmp_path):
    """acks_late, reject-on-worker-lost, prefetch 1, time limits and transient-error retries with backoff."""
    from backend.core.config import Settings
    from backend.worker import tasks
    from backend.worker.celery_app import TASK_QUEUES, make_celery

    app = make_celery(Settings(storage_root=tmp_path, queue_prefix="p."))
    c = app.conf
    assert c.task_acks_late and c.task_reject_on_worker_lost and c.worker_prefetch_multiplier == 1
    assert {q.name for q in c.task_queues} == {"p.train", "p.eval", "p.infer"}
    assert c.task_routes["motionlab.train_run"]["queue"] == "p.train"
    assert TASK_QUEUES == {
        "motionlab.train_run": "train",
        "motionlab.evaluate": "eval",
        "motionlab.generate": "infer",
        "motionlab.ping": "infer",
    }
    from sqlalchemy.exc import OperationalError

    for task in (tasks.train_run, tasks.generate, tasks.evaluate):
        assert task.soft_time_limit and task.time_limit > task.soft_time_limit
        assert OperationalError in task.autoretry_for and ConnectionError in task.autoretry_for
        assert task.retry_backoff and task.max_retries >= 1
    assert tasks.train_run.soft_time_limit > tasks.generate.soft_time_limit
