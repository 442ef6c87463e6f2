"""200 concurrent API requests of mixed kinds on loopback (bench/api_load.py), on both stacks: no 5xx, nothing lost.

python -m pytest tests/backend/test_backend_load.py -q -s      (-s shows the p50/p99 table)
"""

from __future__ import annotations

import importlib.util
import secrets
import sys

import pytest

from tests.backend.conftest import REDIS_URL, REPO, _reachable

pytestmark = pytest.mark.slow  # real worker and server processes


def _load_script():
    spec = importlib.util.spec_from_file_location("api_load", REPO / "bench" / "api_load.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["api_load"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


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
    summary = _load_script().main(args)
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
