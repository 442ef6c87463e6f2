"""Build or upgrade the database schema with Alembic (``upgrade head``); every process calls it on startup.

    from backend.db.migrate import upgrade_to_head, current_revision, head_revision
    upgrade_to_head(settings)

Several processes (API, local worker, remote workers) may start at once, so the upgrade runs under a lock:
a PostgreSQL advisory lock, or a file lock next to the SQLite database.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from backend.core.config import Settings, get_settings
from backend.db.session import get_engine

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"
_PG_LOCK_KEY = 0x6D6C6162  # "mlab": any constant shared by every MotionLab process


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    path = url.split("///", 1)[-1]
    if not path or path == ":memory:":
        yield
        return
    lock_path = Path(path).with_suffix(".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: single-process use only
            pass
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def upgrade_to_head(settings: Settings | None = None) -> str | None:
    """Apply every pending migration; returns the revision the database is at afterwards."""
    settings = settings or get_settings()
    engine = get_engine(settings)
    cfg = alembic_config(settings.sqlalchemy_url)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            conn.commit()
            try:
                if current_revision(conn) != head_revision():
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                    conn.commit()
                return current_revision(conn)
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
    with _sqlite_file_lock(settings.sqlalchemy_url), engine.connect() as conn:
        if current_revision(conn) != head_revision():
            conn.rollback()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        return current_revision(conn)
