"""Concurrent API requests: 200 of mixed kinds on loopback (bench/api_load.py, slow), on both stacks: no 5xx, nothing
lost; and, in process, more requests than database connections and threadpool threads together: none waits for a
connection that a request waiting for a thread holds.

python -m pytest tests/backend/test_backend_load.py -q -s -m ""      (-s shows the p50/p99 table)
"""

from __future__ import annotations

import asyncio
import inspect
import secrets

import anyio.to_thread
import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy.orm import sessionmaker

from backend.api.main import create_app
from backend.core.config import Settings
from backend.db.session import make_engine
from tests.backend.conftest import REDIS_URL, _reachable, make_keys
from tests.conftest import load_bench


@pytest.mark.slow  # a server process, 200 requests
@pytest.mark.parametrize("kind", ["embedded", "postgres-redis"])
def test_200_concurrent_mixed_requests_no_5xx_nothing_lost(kind, request, capsys):
    args = ["--requests", "200", "--concurrency", "200"]
    if kind == "postgres-redis":
        why = _reachable(REDIS_URL, 6379)
        if why:
            pytest.skip(why)
        db_url = request.getfixturevalue("pg_database")
        args += [
            "--database-url",
            db_url,
            "--broker-url",
            REDIS_URL,
            "--queue-prefix",
            f"motionlab-load-test-{secrets.token_hex(4)}.",
        ]
    summary = load_bench("api_load").main(args)
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n[{kind}] " + out)
    assert summary["requests"] == 200
    assert summary["server_errors"] == 0, summary["server_error_samples"]
    assert summary["lost"] == 0, summary["lost_items"]
    assert "p50" in out and "p99" in out
    kinds = summary["kinds"]
    for k in ("create_run", "create_generation", "create_benchmark"):
        assert set(kinds[k]["status"]) <= {201, 202}, (k, kinds[k])
    for k in ("bad_frames", "bad_config"):
        assert set(kinds[k]["status"]) == {422}, (k, kinds[k])
    # every accepted job is on the broker, one message each
    assert summary["queued"]["train"] == kinds["create_run"]["n"]
    assert summary["queued"]["infer"] == kinds["create_generation"]["n"]
    assert summary["queued"]["eval"] == kinds["create_benchmark"]["n"]


def test_requests_beyond_pool_and_threads_all_answer(tmp_path):
    """2 pooled connections, 3 threadpool threads, 30 concurrent reads (each a sync route whose response FastAPI
    validates on a second thread): a request holding a connection while it waits for a thread would leave the three
    threads waiting for connections until the pool times out (500s)."""
    settings = Settings(storage_root=tmp_path / "s")
    app = create_app(settings)
    app.state.sessionmaker = sessionmaker(
        bind=make_engine(settings.sqlalchemy_url, pool_size=2, max_overflow=0, pool_timeout=5),
        expire_on_commit=False,
    )
    key = make_keys(settings)["read"]
    paths = ["/v1/runs?limit=5", "/v1/checkpoints", "/v1/generations?limit=5", "/v1/runs/run_0123456789abcdef"]

    async def fire() -> list[int]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 3  # this event loop's threadpool
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers={"Authorization": f"Bearer {key}"}
        ) as client:
            replies = await asyncio.wait_for(
                asyncio.gather(*(client.get(paths[i % len(paths)]) for i in range(30))), timeout=60
            )
        return [r.status_code for r in replies]

    statuses = asyncio.run(fire())
    assert sorted(set(statuses)) == [200, 404], statuses  # the run id is well-formed but unknown: 404


def test_every_sync_route_releases_its_session(tmp_path):
    """Each sync route of the app closes its session as it returns (``SessionReleasingRoute``): a router created
    without that route class fails here, not only under load."""
    app = create_app(Settings(storage_root=tmp_path / "s"))
    routes = [c.original_route for c in iter_route_contexts(app.routes)]  # included routers' routes too
    sync = [r for r in routes if isinstance(r, APIRoute) and not inspect.iscoroutinefunction(r.endpoint)]
    assert len(sync) > 20
    assert [r.path for r in sync if not getattr(r.endpoint, "releases_sessions", False)] == []
