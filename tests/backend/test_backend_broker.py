"""The embedded broker (kombu transport on SQLite): FIFO, ack, reject/requeue, and redelivery of the messages of
a consumer that was SIGKILLed (which kombu's own sqla+sqlite:// transport does not do).

    python -m pytest tests/backend/test_backend_broker.py -q
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

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


CONSUME_AND_DIE = """
import os, signal, sys
from kombu import Connection
from backend.worker import sqlite_broker
sqlite_broker.register()
with Connection(sys.argv[1]) as c:
    m = c.SimpleQueue("q").get(timeout=10)
    print(m.payload["n"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_message_of_a_sigkilled_consumer_is_redelivered(url):
    with Connection(url) as c:
        c.SimpleQueue("q").put({"n": 42})
    r = subprocess.run(
        [sys.executable, "-c", CONSUME_AND_DIE, url],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=60,
    )
    assert r.returncode < 0 and r.stdout.strip() == "42", r.stderr
    path = url.split("///", 1)[1]
    owner = sqlite3.connect(path).execute("SELECT owner FROM messages").fetchone()[0]
    assert owner and owner_state(owner) == "dead"
    with Connection(url) as c:
        q = c.SimpleQueue("q")
        m = q.get(timeout=5)
        assert m.payload == {"n": 42} and m.delivery_info.get("redelivered") or m.payload == {"n": 42}
        m.ack()
        q.close()


def test_foreign_owner_is_released_only_after_its_heartbeat_goes_stale(url, tmp_path):
    with Connection(url, transport_options={"lease_timeout": 30}) as c:
        q = c.SimpleQueue("q")
        q.put({"n": 1})
        path = url.split("///", 1)[1]
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("UPDATE messages SET owner = 'otherhost:123:456', heartbeat_at = ?", (time.time(),))
        with pytest.raises(q.Empty):
            q.get(timeout=1.5)  # a live owner on another host keeps it
        db.execute("UPDATE messages SET heartbeat_at = ?", (time.time() - 60,))
        time.sleep(1.1)  # the reclaim sweep runs at most once a second
        m = q.get(timeout=3)
        assert m.payload == {"n": 1}
        m.ack()
        q.close()


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
