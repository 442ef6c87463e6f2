"""Engines and sessions for the MotionLab database (SQLite by default, PostgreSQL via MOTIONLAB_DATABASE_URL).

    from backend.db.session import get_engine, session_scope
    with session_scope(settings) as db:
        db.get(Run, run_id)

SQLite is opened in WAL mode with a busy timeout, so the API and local workers can use it at the same time.
Transactions that write must take SQLite's write lock up front (``BEGIN IMMEDIATE``): a deferred transaction that
reads and then writes fails at once with "database is locked" when another writer committed in between (the
busy timeout cannot help it). Reads stay deferred, so a read transaction never blocks anyone. Writers of one process
also queue on a lock of their own before ``BEGIN IMMEDIATE`` (``_SQLiteConnection``), so they take turns instead of
polling SQLite's lock. So:

    with session_scope(settings) as db: ...               # write=True by default (workers, CLI)
    begin_write(db)                                        # in an API route, before it reads what it will change

On PostgreSQL both are ordinary transactions.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from backend.core.config import Settings, get_settings

WRITE_OPTION = "motionlab_write"
_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


SQLITE_BUSY_TIMEOUT_S = 30.0


class _SQLiteConnection(sqlite3.Connection):
    """A pooled SQLite connection whose write transactions hold its engine's ``write_lock`` until they end.

    Why: a writer that finds SQLite's write lock taken waits in SQLite's busy handler, which sleeps 1, 2, 5, 10, ...
    up to 100 ms between tries, however soon the holder is done. With 16 clients of sync generations through the API
    (``bench/serving.py --http``), recording a finished video waited p90 182 ms for a lock held ~1-3 ms at a time,
    and the stragglers missed their batch. Queued here, the next writer starts as soon as the last one ends: p90
    88-124 ms (the holders themselves compete for the GIL), batches of 14.1 instead of 11.8-12.9 on average, 16.7-17.8
    instead of 16.4-16.9 videos/s. Other processes (workers) still meet at SQLite's own lock, as before.
    """

    write_lock: threading.Lock  # one per engine: set on the subclass ``make_engine`` creates
    holds_write_lock = False

    def take_write_lock(self) -> None:
        if not self.write_lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_S):
            locked = sqlite3.OperationalError(f"database is locked: another thread of this process held the write "
                                              f"lock for over {SQLITE_BUSY_TIMEOUT_S:.0f} s")
            raise OperationalError("BEGIN IMMEDIATE", None, locked)  # what SQLite's own busy timeout raises
        self.holds_write_lock = True

    def release_write_lock(self) -> None:
        if self.holds_write_lock:
            self.holds_write_lock = False
            self.write_lock.release()

    # the transaction ends in one of these (SQLAlchemy commits and rolls back through the DBAPI connection; the pool
    # rolls back a connection it gets back, and closes one it drops); the lock is let go once SQLite's is
    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_write_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_write_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_write_lock()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        factory = type("SQLiteConnection", (_SQLiteConnection,), {"write_lock": threading.Lock()})
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False,
                                                  "factory": factory}, pool_size=20, max_overflow=40, pool_timeout=60)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        # pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINT; let SQLAlchemy emit it.
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn, _record):
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn):
            if not conn.get_execution_options().get(WRITE_OPTION):
                conn.exec_driver_sql("BEGIN")
                return
            dbapi_conn = conn.connection.dbapi_connection
            dbapi_conn.take_write_lock()
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                dbapi_conn.release_write_lock()
                raise

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=40, pool_timeout=60)


def get_engine(settings: Settings | None = None) -> Engine:
    """One engine per database URL per process."""
    url = (settings or get_settings()).sqlalchemy_url
    with _lock:
        if url not in _engines:
            _engines[url] = make_engine(url)
            _factories[url] = sessionmaker(bind=_engines[url], expire_on_commit=False)
        return _engines[url]


def get_sessionmaker(settings: Settings | None = None) -> sessionmaker[Session]:
    get_engine(settings)
    return _factories[(settings or get_settings()).sqlalchemy_url]


def begin_write(db: Session) -> Session:
    """Start a write transaction (SQLite: BEGIN IMMEDIATE). A read transaction in progress is committed first, so
    call this before reading the rows you are going to change."""
    if db.in_transaction():
        db.commit()
    db.connection(execution_options={WRITE_OPTION: True})
    return db


@contextlib.contextmanager
def session_scope(settings: Settings | None = None, *, write: bool = True) -> Iterator[Session]:
    """A session that commits on success and rolls back on error; ``write`` takes the write lock up front."""
    db = get_sessionmaker(settings)()
    if write:
        begin_write(db)
    try:
        yield db
        db.commit()
    except BaseException:
        db.rollback()
        raise
    finally:
        db.close()


def dispose_engines() -> None:
    """Close every pooled connection (after fork, and at the end of tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _factories.clear()
