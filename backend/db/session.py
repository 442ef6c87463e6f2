"""Engines and sessions for the MotionLab database (SQLite by default, PostgreSQL via MOTIONLAB_DATABASE_URL).

    from backend.db.session import get_engine, session_scope
    with session_scope(settings) as db:
        db.get(Run, run_id)

SQLite is opened in WAL mode with a busy timeout, so the API and local workers can use it at the same time.
Transactions that write must take SQLite's write lock up front (``BEGIN IMMEDIATE``): a deferred transaction that
reads and then writes fails at once with "database is locked" when another writer committed in between (the
busy timeout cannot help it). Reads stay deferred, so a read transaction never blocks anyone. So:

    with session_scope(settings) as db: ...               # write=True by default (workers, CLI)
    begin_write(db)                                        # in an API route, before it reads what it will change

On PostgreSQL both are ordinary transactions.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from backend.core.config import Settings, get_settings
from backend.storage import private_file

WRITE_OPTION = "motionlab_write"
_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def make_engine(url: str, *, pool_size: int = 20, max_overflow: int = 40, pool_timeout: float = 60) -> Engine:
    """An engine for ``url``; the pool arguments are SQLAlchemy's (tests shrink the pool to provoke contention)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            private_file(path)  # 0600 before SQLite creates it world-readable (its -wal/-shm files follow it)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        # pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINT; let SQLAlchemy emit it.
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn, _record):
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")

        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout
    )


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
