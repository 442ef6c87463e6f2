"""The schema comes from the Alembic migrations (not create_all) and matches the models, on SQLite and PostgreSQL.

python -m pytest tests/backend/test_backend_db.py -q
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from backend.core.config import Settings
from backend.db.migrate import alembic_config, head_revision, upgrade_to_head
from backend.db.models import Base
from backend.db.session import get_engine

TABLES = {
    "api_keys",
    "runs",
    "run_metrics",
    "run_logs",
    "checkpoints",
    "jobs",
    "videos",
    "benchmarks",
    "scores",
    "studies",
    "study_items",
    "annotators",
    "assignments",
    "responses",
    "playback_events",
}


@pytest.fixture(params=["sqlite", "postgres"])
def fresh(request, tmp_path) -> Settings:
    if request.param == "sqlite":
        yield Settings(storage_root=tmp_path)
        return
    import psycopg

    base = request.getfixturevalue("pg_database")
    name = f"{base.rsplit('/', 1)[1]}_mig_{tmp_path.name[-8:]}".replace("-", "_")[:60]
    admin = base.rsplit("/", 1)[0] + "/test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield Settings(storage_root=tmp_path, database_url=base.rsplit("/", 1)[0] + f"/{name}")
    get_engine(Settings(storage_root=tmp_path, database_url=base.rsplit("/", 1)[0] + f"/{name}")).dispose()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrations_build_the_schema_the_models_describe(fresh):
    engine = get_engine(fresh)
    assert not inspect(engine).get_table_names()
    assert upgrade_to_head(fresh) == head_revision()
    assert TABLES | {"alembic_version"} <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert upgrade_to_head(fresh) == head_revision()  # idempotent


def test_downgrade_to_base_and_back(fresh):
    upgrade_to_head(fresh)
    cfg = alembic_config(fresh.sqlalchemy_url)
    command.downgrade(cfg, "base")
    engine = get_engine(fresh)
    assert not (TABLES & set(inspect(engine).get_table_names()))
    assert upgrade_to_head(fresh) == head_revision()
    assert TABLES <= set(inspect(engine).get_table_names())


def test_concurrent_startups_migrate_once(fresh):
    """API and workers start at once: the lock lets exactly one of them build the schema."""
    errors: list[BaseException] = []

    def start() -> None:
        try:
            upgrade_to_head(fresh)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert TABLES <= set(inspect(get_engine(fresh)).get_table_names())


def test_backend_code_never_calls_create_all():
    root = Path(__file__).resolve().parents[2] / "backend"
    offenders = [p for p in root.rglob("*.py") if "create_all(" in p.read_text()]
    assert offenders == []


def test_default_urls_live_under_the_storage_root(tmp_path, monkeypatch):
    for var in ("MOTIONLAB_DATABASE_URL", "MOTIONLAB_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(storage_root=tmp_path / "x")
    assert s.database_url == f"sqlite:///{tmp_path / 'x' / 'motionlab.db'}"
    assert s.broker_url == f"motionlab+sqlite:///{tmp_path / 'x' / 'broker.sqlite'}" and s.embedded_broker
    monkeypatch.setenv("MOTIONLAB_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("MOTIONLAB_BROKER_URL", "redis://h:6379/0")
    s = Settings(storage_root=tmp_path)
    assert s.sqlalchemy_url == "postgresql+psycopg://u@h/db" and not s.embedded_broker
