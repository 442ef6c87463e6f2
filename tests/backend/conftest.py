"""Fixtures for the backend tests: the same suite runs on two stacks.

- ``embedded``: SQLite + the embedded SQLite broker in a temp storage root (what ``motionlab serve`` uses);
- ``postgres-redis``: the real PostgreSQL (a fresh database per test session) and Redis (a unique key prefix
  per session) on this machine, skipped with the reason when either is unreachable.

Override the services with MOTIONLAB_TEST_PG_ADMIN_URL (a database to connect to for CREATE DATABASE),
MOTIONLAB_TEST_REDIS_URL and MOTIONLAB_TEST_AMQP_URL.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import pytest

from backend.core.config import Settings
from tests.backend.backend_helpers import WorkerProc

PG_ADMIN_URL = os.environ.get("MOTIONLAB_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MOTIONLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("MOTIONLAB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
SESSION_TAG = f"{os.getpid()}_{secrets.token_hex(3)}"


def _reachable(url: str, default_port: int) -> str | None:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or default_port), timeout=2):
            return None
    except OSError as exc:
        return f"{u.scheme} at {u.hostname}:{u.port or default_port} unreachable ({exc})"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (dropped at the end)."""
    why = _reachable(PG_ADMIN_URL, 5432)
    if why:
        pytest.skip(why)
    import psycopg

    name = f"motionlab_test_{SESSION_TAG}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    u = urlparse(PG_ADMIN_URL)
    url = u._replace(path=f"/{name}").geturl()
    yield url
    from backend.db.session import dispose_engines

    dispose_engines()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _redis_cleanup(prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    for key in r.scan_iter(match=f"{prefix}*", count=500):
        r.delete(key)


@pytest.fixture(scope="session", params=["embedded", "postgres-redis"])
def stack(request, tmp_path_factory) -> Iterator[Settings]:
    """Settings for one stack; the API test suite runs once per stack."""
    root = tmp_path_factory.mktemp(f"storage-{request.param}")
    if request.param == "embedded":
        yield Settings(storage_root=root)
        return
    why = _reachable(REDIS_URL, 6379)
    if why:
        pytest.skip(why)
    db_url = request.getfixturevalue("pg_database")
    prefix = f"motionlab-test-{SESSION_TAG}:"
    settings = Settings(
        storage_root=root,
        database_url=db_url,
        broker_url=REDIS_URL,
        queue_prefix=prefix,
        broker_transport_options={"global_keyprefix": prefix, "visibility_timeout": 6, "unacked_restore_throttle": 1},
    )
    yield settings
    _redis_cleanup(prefix)


@pytest.fixture(scope="session")
def app(stack):
    from backend.api.main import create_app

    return create_app(stack)


@pytest.fixture(scope="session")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


def make_keys(settings: Settings) -> dict[str, str]:
    """One plaintext key per scope (and ``all`` = read+generate+train)."""
    from backend.db.session import session_scope
    from backend.security import create_api_key

    out = {}
    with session_scope(settings) as db:
        for scope in ("read", "generate", "train", "admin"):
            _row, out[scope] = create_api_key(db, f"test-{scope}", [scope], pepper=settings.api_key_pepper)
        _row, out["all"] = create_api_key(db, "test-all", ["read", "generate", "train"], pepper=settings.api_key_pepper)
    return out


@pytest.fixture(scope="session")
def keys(stack, app) -> dict[str, str]:
    return make_keys(stack)


@pytest.fixture
def keys_factory():
    return make_keys


@pytest.fixture
def start_worker(tmp_path) -> Iterator[Callable[..., WorkerProc]]:
    procs: list[WorkerProc] = []

    def start(settings: Settings, queues: str = "train,eval,infer", **kw) -> WorkerProc:
        w = WorkerProc(settings, queues, tmp_path / f"worker-{len(procs)}.log", **kw)
        procs.append(w)
        return w

    yield start
    for w in procs:
        w.stop()
