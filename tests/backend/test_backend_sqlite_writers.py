"""Write transactions on the embedded SQLite database: writers of one process take turns on the engine's own lock.

    python -m pytest tests/backend/test_backend_sqlite_writers.py -q
"""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from backend.db import session as db_session
from backend.db.session import begin_write, make_engine


@pytest.fixture
def traced(tmp_path):
    """A fresh SQLite engine, its sessionmaker, and every statement its connections run as (thread name, SQL)."""
    path = tmp_path / "db.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    statements: list[tuple[str, str]] = []

    @event.listens_for(engine, "connect")
    def _trace(dbapi_conn, _record):
        dbapi_conn.set_trace_callback(lambda sql: statements.append((threading.current_thread().name, sql)))

    make = sessionmaker(bind=engine)
    with make() as db:
        begin_write(db)
        db.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        db.execute(text("INSERT INTO counter VALUES (0)"))
        db.commit()
    yield make, statements, path
    engine.dispose()


def write_lock(db) -> threading.Lock:
    return type(db.connection().connection.dbapi_connection).write_lock


def test_a_second_writer_waits_on_the_engine_lock_and_starts_only_after_the_first_commits(traced):
    make, statements, _ = traced

    def second_writer():
        with make() as db:
            begin_write(db)
            db.execute(text("UPDATE counter SET n = n + 10"))
            db.commit()

    with make() as first:
        begin_write(first)
        first.execute(text("UPDATE counter SET n = n + 1"))
        other = threading.Thread(target=second_writer, name="second-writer")
        other.start()
        other.join(0.5)
        assert other.is_alive()  # it waits for the first writer, whichever way it waits
        # SQLite's busy handler would have it run BEGIN IMMEDIATE and retry it, sleeping in between; it has not
        # reached SQLite at all
        assert not [sql for who, sql in statements if who == "second-writer" and "BEGIN IMMEDIATE" in sql]
        first.commit()
    other.join(10)
    assert not other.is_alive()
    ends = [(who, sql) for who, sql in statements if sql in ("BEGIN IMMEDIATE", "COMMIT")]
    mine = threading.current_thread().name
    assert ends[-4:] == [(mine, "BEGIN IMMEDIATE"), (mine, "COMMIT"), ("second-writer", "BEGIN IMMEDIATE"),
                         ("second-writer", "COMMIT")]
    with make() as db:
        assert db.execute(text("SELECT n FROM counter")).scalar_one() == 11


@pytest.mark.parametrize("end", ["commit", "rollback", "close"])
def test_the_write_lock_is_let_go_however_the_transaction_ends(traced, end):
    make, _, _ = traced
    db = make()
    begin_write(db)
    lock = write_lock(db)
    db.execute(text("UPDATE counter SET n = n + 1"))
    assert lock.locked()
    getattr(db, end)()  # close: the pool rolls the connection back as it takes it back
    assert not lock.locked()
    with make() as again:  # and the next writer gets it
        begin_write(again)
        again.commit()
    with make() as db:
        assert db.execute(text("SELECT n FROM counter")).scalar_one() == (1 if end == "commit" else 0)


def test_a_begin_that_sqlite_refuses_lets_the_lock_go(traced, monkeypatch):
    make, _, path = traced
    monkeypatch.setattr(db_session, "SQLITE_BUSY_TIMEOUT_S", 0.05)
    make.kw["bind"].dispose()  # new connections give up on SQLite's lock after 50 ms
    other_process = sqlite3.connect(path, isolation_level=None)  # as a worker would hold SQLite's write lock
    db = make()
    lock = write_lock(db)
    db.commit()
    other_process.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            begin_write(db)
        assert not lock.locked()
    finally:
        other_process.execute("ROLLBACK")
        other_process.close()
    db.rollback()
    begin_write(db)  # SQLite's lock is free again, and so is ours
    db.execute(text("UPDATE counter SET n = n + 1"))
    db.commit()
    db.close()
    assert not lock.locked()


def test_a_writer_that_waits_past_the_busy_timeout_gets_database_is_locked(traced, monkeypatch):
    make, _, _ = traced
    monkeypatch.setattr(db_session, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    with make() as first, make() as second:
        begin_write(first)
        first.execute(text("UPDATE counter SET n = n + 1"))
        with pytest.raises(OperationalError, match="database is locked: another thread of this process"):
            begin_write(second)  # the same thread: it could never get it
        first.commit()  # the first writer is unharmed
    with make() as db:
        assert db.execute(text("SELECT n FROM counter")).scalar_one() == 1


def test_concurrent_read_modify_write_transactions_lose_no_update(traced):
    make, _, _ = traced
    errors: list[BaseException] = []

    def bump(times: int):
        try:
            for _ in range(times):
                with make() as db:
                    begin_write(db)  # read what it will change inside the write transaction
                    n = db.execute(text("SELECT n FROM counter")).scalar_one()
                    db.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
                    db.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(10,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with make() as db:
        assert db.execute(text("SELECT n FROM counter")).scalar_one() == 80
