"""Alembic environment for MotionLab.

Used two ways: programmatically by ``backend.db.migrate.upgrade_to_head`` (which passes an open connection in
``config.attributes["connection"]``), and from the command line:

    alembic -c backend/alembic.ini upgrade head          # uses MOTIONLAB_DATABASE_URL / the default SQLite
    alembic -c backend/alembic.ini revision --autogenerate -m "add x"
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from backend.core.config import get_settings
from backend.db.models import Base
from backend.db.session import make_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    return get_settings().sqlalchemy_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs table rebuilds for ALTERs
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, dialect_opts={"paramstyle": "named"}
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
