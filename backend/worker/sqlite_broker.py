"""The embedded broker: a kombu transport on one SQLite file that redelivers the messages of a killed worker.

URL: ``motionlab+sqlite:///<abs path>/broker.sqlite`` (the default ``broker_url``; no server to run).

Why not kombu's own ``sqla+sqlite://`` transport: it marks a message invisible when a worker takes it and only
makes it visible again when that worker's channel closes normally. After a SIGKILL the message stays invisible
forever, so an ``acks_late`` task is never delivered again. The filesystem transport deletes the file when a
message is taken, with the same result.

This transport records who holds each unacked message (``owner`` = ``host:pid:start`` of the consuming worker
process, see ``liveness``) and a heartbeat the owner refreshes while it polls. A message goes back to its queue
when the owner releases it (reject/requeue, warm shutdown), when the owner process is gone (same host: checked
through /proc, so redelivery is immediate once a new worker polls), or when the owner's heartbeat is older than
``lease_timeout`` (an owner on another host; the embedded broker is meant for one machine). Ack deletes the row.

Only direct/topic exchanges are supported (no fanout: Celery then runs without remote control, gossip and
mingle, which MotionLab does not use: cancellation goes through the database).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from queue import Empty

from kombu.transport import TRANSPORT_ALIASES, virtual

from backend.storage import private_file
from backend.worker.liveness import owner_state, owner_token

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    delivery_tag TEXT,
    created_at REAL NOT NULL,
    owner TEXT,
    heartbeat_at REAL,
    deliveries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ix_messages_ready ON messages (queue, owner, id);
CREATE INDEX IF NOT EXISTS ix_messages_tag ON messages (delivery_tag);
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
    """One SQLite connection per channel; a lock because acks may come from another thread."""

    _conn: sqlite3.Connection | None = None

    def __init__(self, connection, **kwargs):
        opts = connection.client.transport_options
        self.lease_timeout = float(opts.get("lease_timeout", 120.0))
        self.heartbeat_interval = float(opts.get("heartbeat_interval", 5.0))
        self.reclaim_interval = float(opts.get("reclaim_interval", 1.0))
        self._db_path = db_path_from_hostname(connection.client.hostname)
        self._lock = threading.RLock()
        self._last_heartbeat = 0.0
        self._last_reclaim = 0.0
        self._owner_pid = -1
        self._owner = ""
        super().__init__(connection, **kwargs)

    # --- plumbing --------------------------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self._db_path)
        return self._conn

    @property
    def owner(self) -> str:
        if self._owner_pid != os.getpid():  # recompute after a fork
            self._owner_pid, self._owner = os.getpid(), owner_token()
        return self._owner

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
        tag = message.get("properties", {}).get("delivery_tag")
        payload = json.dumps(message)
        self._tx(
            lambda c: c.execute(
                "INSERT INTO messages (queue, payload, delivery_tag, created_at) VALUES (?, ?, ?, ?)",
                (queue, payload, tag, time.time()),
            )
        )

    def _reclaim(self, c: sqlite3.Connection) -> None:
        """Release the messages of owners that are gone (same host) or silent for lease_timeout (others)."""
        now = time.time()
        if now - self._last_reclaim < self.reclaim_interval:
            return
        self._last_reclaim = now
        me = self.owner
        owners = [
            r[0] for r in c.execute("SELECT DISTINCT owner FROM messages WHERE owner IS NOT NULL AND owner != ?", (me,))
        ]
        for owner in owners:
            state = owner_state(owner)
            if state == "dead":
                c.execute("UPDATE messages SET owner = NULL WHERE owner = ?", (owner,))
            elif state == "unknown":
                c.execute(
                    "UPDATE messages SET owner = NULL WHERE owner = ? AND heartbeat_at < ?",
                    (owner, now - self.lease_timeout),
                )

    def _get(self, queue, timeout=None):
        def take(c: sqlite3.Connection):
            self._reclaim(c)
            row = c.execute(
                "SELECT id, payload, deliveries FROM messages WHERE queue = ? AND owner IS NULL ORDER BY id LIMIT 1",
                (queue,),
            ).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE messages SET owner = ?, heartbeat_at = ?, deliveries = deliveries + 1 WHERE id = ?",
                (self.owner, time.time(), row[0]),
            )
            return row

        row = self._tx(take)
        if row is None:
            raise Empty()
        message = json.loads(row[1])
        if row[2] > 0:
            message["redelivered"] = True
        return message

    def _size(self, queue):
        with self._lock:
            return self.conn.execute(
                "SELECT COUNT(*) FROM messages WHERE queue = ? AND owner IS NULL", (queue,)
            ).fetchone()[0]

    def _purge(self, queue):
        return self._tx(
            lambda c: c.execute("DELETE FROM messages WHERE queue = ? AND owner IS NULL", (queue,)).rowcount
        )

    def _delete(self, queue, *args, **kwargs):
        self._tx(lambda c: c.execute("DELETE FROM messages WHERE queue = ?", (queue,)))

    def basic_ack(self, delivery_tag, multiple=False):
        super().basic_ack(delivery_tag, multiple=multiple)
        self._tx(lambda c: c.execute("DELETE FROM messages WHERE delivery_tag = ?", (delivery_tag,)))

    def basic_reject(self, delivery_tag, requeue=False):
        # drop it from the in-memory unacked set without kombu's re-publish: the row itself is released
        self.qos.reject(delivery_tag, requeue=False)
        if requeue:
            self._release(delivery_tag)
        else:
            self._tx(lambda c: c.execute("DELETE FROM messages WHERE delivery_tag = ?", (delivery_tag,)))

    def _release(self, delivery_tag: str) -> None:
        self._tx(
            lambda c: c.execute(
                "UPDATE messages SET owner = NULL WHERE delivery_tag = ? AND owner = ?", (delivery_tag, self.owner)
            )
        )

    def _restore(self, message):
        """Called for unacked messages at channel close: give the row back rather than insert a copy."""
        self._release(message.delivery_tag)

    def drain_events(self, timeout=None, callback=None):
        # the worker's main loop calls this every polling interval, also while its prefetch is full and a
        # task runs in a pool process: the place to renew the lease on the messages it holds.
        now = time.time()
        if now - self._last_heartbeat >= self.heartbeat_interval and self.qos._delivered:
            self._last_heartbeat = now
            self._tx(lambda c: c.execute("UPDATE messages SET heartbeat_at = ? WHERE owner = ?", (now, self.owner)))
        return super().drain_events(timeout=timeout, callback=callback)

    def close(self):
        super().close()
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


def pending_counts(path: str | Path) -> dict[str, dict[str, int]]:
    """{queue: {"ready": n, "unacked": m}}: for health checks and tests."""
    conn = connect(Path(path))
    try:
        out: dict[str, dict[str, int]] = {}
        for queue, ready, held in conn.execute(
            "SELECT queue, SUM(owner IS NULL), SUM(owner IS NOT NULL) FROM messages GROUP BY queue"
        ):
            out[queue] = {"ready": int(ready or 0), "unacked": int(held or 0)}
        return out
    finally:
        conn.close()


register()
