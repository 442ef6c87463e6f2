"""When the broker is down: /readyz says so (503), and a submission is refused with 503 instead of leaving a row
that looks queued with no message behind it.

    python -m pytest tests/backend/test_backend_unavailable.py -q
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from backend.core.config import Settings
from tests.backend.backend_helpers import auth
from tests.backend.conftest import make_keys


def test_broker_down_gives_503_and_no_orphan_rows(tmp_path):
    from backend.api.main import create_app

    settings = Settings(
        storage_root=tmp_path, broker_url="redis://127.0.0.1:1/0", broker_transport_options={"max_retries": 1}
    )
    client = TestClient(create_app(settings))
    keys = make_keys(settings)
    r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable" and body["checks"]["database"] == "ok"
    assert body["checks"]["broker"] == "unavailable" and "127.0.0.1" not in r.text  # a state, not the error
    r = client.post("/v1/runs", json={"method": "sft", "config": {"steps": 3}}, headers=auth(keys["train"]))
    assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable"
    runs = client.get("/v1/runs", headers=auth(keys["read"])).json()["items"]
    assert len(runs) == 1 and runs[0]["status"] == "failed" and "resume" in runs[0]["error"]
