"""The embedded broker: a kombu transport that keeps its queues in one SQLite file, a plain FIFO queue.

URL: ``motionlab+sqlite:///<abs path>/broker.sqlite`` (the default ``broker_url``; no server to run).

A message is removed from the file when a consumer takes it; kombu keeps it in the consumer's memory until it is
acked. A rejected-and-requeued message, and every unacked one when the consumer closes its channel (warm
shutdown), is put back at the head of its queue. A consumer that dies (SIGKILL) loses the messages it held, and
that is by design: a message is only a wake-up hint for a row in the database, and the row's lease decides who
runs it and when abandoned work is taken up again (``backend.crud.leases``, ``backend.worker.recovery``). So this
transport keeps no owners, heartbeats or timeouts of its own. (kombu's ``sqla+sqlite://`` transport is not used: a
message taken by a consumer that dies stays in its table for good, marked invisible.)

Only direct/topic exchanges are supported (no fanout: Celery then runs without remote control, gossip and
mingle, which MotionLab does not use: cancellation goes through the database).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from queue import Empty

from kombu.transport import TRANSPORT_ALIASES, virtual

from backend.storage import private_file

# A messages table with more columns than these (each nullable or with a default) works too: every row in it is a
# ready message.
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_messages_queue ON messages (queue, id);
"""


def db_path_from_hostname(hostname: str) -> Path:
    """``sqlite:////abs/path.sqlite`` (what kombu passes as hostname after ``motionlab+``) -> the file path."""
    if not hostname.startswith("sqlite:///"):
        raise ValueError(f"broker_url: the embedded broker needs 'motionlab+sqlite:///<path>', got {hostname!r}")
    path = hostname[len("sqlite:///") :]
    if not path:
        raise ValueError("broker_url: 'motionlab+sqlite:///' needs a file path")
    return Path(path)


def connect(path: Path) -> sqlite3.Connection:
    private_file(path)  # 0600 (and its -wal/-shm files with it): messages name the work and its ids
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


class Channel(virtual.Channel):
    """One SQLite connection per channel; a lock because acks and requeues may come from another thread."""

    _conn: sqlite3.Connection | None = None

    def __init__(self, connection, **kwargs):
        self._db_path = db_path_from_hostname(connection.client.hostname)
        self._lock = threading.RLock()
        super().__init__(connection, **kwargs)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self._db_path)
        return self._conn

    def _tx(self, fn):
        """Run fn(conn) in an IMMEDIATE transaction (the write lock up front: no upgrade deadlocks)."""
        with self._lock:
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                out = fn(c)
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
            return out

    # --- kombu virtual channel API ---------------------------------------------------------------------

    def _new_queue(self, queue, **kwargs):
        pass

    def _has_queue(self, queue, **kwargs):
        return True

    def _put(self, queue, message, **kwargs):
        payload = json.dumps(message)
        self._tx(
            lambda c: c.execute(
                "INSERT INTO messages (queue, payload, created_at) VALUES (?, ?, ?)", (queue, payload, time.time())
            )
        )

    def _put_first(self, queue, message) -> None:
        """Put a message back ahead of everything queued (ids only grow, so one below the smallest)."""
        payload = json.dumps(message)
        self._tx(
            lambda c: c.execute(
                "INSERT INTO messages (id, queue, payload, created_at) "
                "VALUES ((SELECT COALESCE(MIN(id), 1) - 1 FROM messages), ?, ?, ?)",
                (queue, payload, time.time()),
            )
        )

    def _get(self, queue, timeout=None):
        def take(c: sqlite3.Connection):
            row = c.execute("SELECT id, payload FROM messages WHERE queue = ? ORDER BY id LIMIT 1", (queue,)).fetchone()
            if row is not None:
                c.execute("DELETE FROM messages WHERE id = ?", (row[0],))
            return row

        row = self._tx(take)
        if row is None:
            raise Empty()
        return json.loads(row[1])

    def _restore(self, message):
        """A requeued or unacked message goes back where it was taken from: the head of its queue."""
        delivery_info = message.delivery_info
        payload = message.serializable()
        payload["redelivered"] = True
        for queue in self._lookup(delivery_info["exchange"], delivery_info["routing_key"]):
            self._put_first(queue, payload)

    def _size(self, queue):
        with self._lock:
            return self.conn.execute("SELECT COUNT(*) FROM messages WHERE queue = ?", (queue,)).fetchone()[0]

    def _purge(self, queue):
        return self._tx(lambda c: c.execute("DELETE FROM messages WHERE queue = ?", (queue,)).rowcount)

    def _delete(self, queue, *args, **kwargs):
        self._purge(queue)

    def close(self):
        super().close()  # puts unacked messages back first
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class Transport(virtual.Transport):
    Channel = Channel
    can_parse_url = True
    polling_interval = 0.05  # an idle poll is one indexed SQLite read; serving latency wants a short pickup
    default_port = 0
    driver_type = "sqlite"
    driver_name = "motionlab-sqlite"
    connection_errors = virtual.Transport.connection_errors + (sqlite3.OperationalError,)
    implements = virtual.Transport.implements.extend(
        asynchronous=False, exchange_type=frozenset(["direct", "topic"]), heartbeats=False
    )

    def driver_version(self) -> str:
        return sqlite3.sqlite_version


def register() -> None:
    """Make ``motionlab+sqlite:///...`` URLs resolve to this transport (idempotent)."""
    TRANSPORT_ALIASES.setdefault("motionlab", "backend.worker.sqlite_broker:Transport")


def queued_counts(path: str | Path) -> dict[str, int]:
    """{queue: messages waiting in it}: for health checks and tests."""
    conn = connect(Path(path))
    try:
        return {queue: int(n) for queue, n in conn.execute("SELECT queue, COUNT(*) FROM messages GROUP BY queue")}
    finally:
        conn.close()


register()
