"""Hardening of the API against hostile input and leaks: integer query parameters in range, timeout_s checked before
use, NUL characters refused, results' bootstrap capped, health endpoints without internals, security headers,
annotator tokens redacted from the access log, CSV exports safe to open in a spreadsheet, private storage files,
and the hard cap on an annotator's lease.

    python -m pytest tests/backend/test_hardening.py -q
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import logging
import re
import stat
import threading

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from backend.api.deps import MAX_INT32, MAX_INT64
from backend.api.main import RedactAnnotatorTokens, create_app
from backend.api.routes.studies import annotator_router
from backend.api.schemas import RunCreate
from backend.core.config import Settings
from backend.crud.runs import create_run
from backend.db.session import session_scope
from evaluator.study import assignment as policy
from evaluator.study import export
from tests.backend.backend_helpers import auth

BIG = 10**23
TOKEN = "ann_" + "A" * 43


def err(resp) -> dict:
    assert resp.headers["content-type"].startswith("application/json"), resp.text
    return resp.json()["error"]


# --- integer query parameters -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_id(stack, app) -> str:
    """A real run, so that a route gets past its lookup to the query (an unknown id is a 404 first)."""
    with session_scope(stack) as db:
        run, _ = create_run(
            db,
            method="sft",
            config={},
            preset="tiny",
            name="hardening",
            resolved_config=None,
            total_steps=None,
            api_key_id=None,
        )
        return run.id


def _is_int(schema: dict) -> bool:
    return schema.get("type") == "integer" or any(_is_int(s) for s in schema.get("anyOf", ()))


def _int_query_params(app) -> list[tuple[str, str, str]]:
    """(method, path, parameter) of every integer query parameter: the documented routes from the OpenAPI schema,
    the annotator API (not documented) from its router."""
    out = [
        (method.upper(), path, p["name"])
        for path, ops in app.openapi()["paths"].items()
        for method, op in ops.items()
        for p in op.get("parameters", ())
        if p["in"] == "query" and _is_int(p.get("schema", {}))
    ]
    for route in annotator_router.routes:
        pending = [route.dependant]
        while pending:
            dep = pending.pop()
            out += [
                (m, route.path, p.name)
                for p in dep.query_params
                for m in route.methods
                if p.field_info.annotation in (int, int | None)
            ]
            pending.extend(dep.dependencies)
    return sorted(set(out))


def test_every_integer_query_parameter_is_range_checked(client, keys, app, run_id):
    params = _int_query_params(app)
    assert {
        ("GET", "/v1/runs/{run_id}/metrics", "after_step"),
        ("GET", "/v1/runs/{run_id}/logs", "after_id"),
        ("GET", "/v1/studies/{study_id}/results", "n_boot"),
        ("GET", "/v1/runs", "offset"),
    } <= set(params)
    ids = {"run_id": run_id, "study_id": "study_0123456789abcdef"}
    for method, path, name in params:
        url = path.replace("{run_id}", ids["run_id"]).replace("{study_id}", ids["study_id"])
        assert "{" not in url, url  # a new path parameter: give it an id above
        for value in (BIG, -BIG):
            r = client.request(method, url, params={name: value}, headers=auth(keys["admin"]))
            assert r.status_code == 422, (method, url, name, value, r.status_code, r.text)
            assert err(r)["field"] == name and name in err(r)["message"], r.text


@pytest.mark.parametrize(
    "path,name,value,limit",
    [
        ("/v1/runs/{run}/metrics", "after_step", BIG, MAX_INT32),
        ("/v1/runs/{run}/metrics", "after_step", MAX_INT32 + 1, MAX_INT32),
        ("/v1/runs/{run}/metrics", "after_step", -2, -1),
        ("/v1/runs/{run}/logs", "after_id", BIG, MAX_INT64),
        ("/v1/runs/{run}/logs", "after_id", -1, 0),
        ("/v1/runs/{run}/logs", "limit", 10_001, 10_000),
        ("/v1/runs", "offset", BIG, 10**9),
        ("/v1/studies/study_0123456789abcdef/results", "n_boot", 10_001, 10_000),
        ("/v1/studies/study_0123456789abcdef/results.csv", "n_boot", 20_000, 10_000),
    ],
)
def test_out_of_range_query_parameters_are_422_naming_the_limit(client, keys, run_id, path, name, value, limit):
    r = client.get(path.replace("{run}", run_id), params={name: value}, headers=auth(keys["read"]))
    assert r.status_code == 422, r.text
    e = err(r)
    assert e["field"] == name and e["limit"] == limit and str(limit) in e["message"], e


def test_in_range_cursors_and_the_largest_n_boot_are_accepted(client, keys, run_id):
    r = client.get(f"/v1/runs/{run_id}/metrics", params={"after_step": MAX_INT32}, headers=auth(keys["read"]))
    assert r.status_code == 200 and r.json()["items"] == [], r.text
    r = client.get(f"/v1/runs/{run_id}/logs", params={"after_id": 0}, headers=auth(keys["read"]))
    assert r.status_code == 200 and r.json()["items"], r.text
    r = client.get(f"/v1/runs/{run_id}/logs", params={"after_id": MAX_INT64}, headers=auth(keys["read"]))
    assert r.status_code == 200 and r.json()["items"] == [], r.text
    r = client.get("/v1/studies/study_0123456789abcdef/results", params={"n_boot": 10_000}, headers=auth(keys["read"]))
    assert r.status_code == 404, r.text  # past the query check, to the lookup
    r = client.get(f"/v1/runs/{run_id}/metrics", params={"after_step": BIG})
    assert r.status_code == 401, r.text  # the key is still checked first


# --- timeout_s ------------------------------------------------------------------------------------------------------


def test_timeout_s_is_validated_before_it_is_used(stack, keys):
    one_thread = stack.model_copy(update={"sync_generation_threads": 1})
    release = threading.Event()
    body = {"checkpoint": "tiny", "prompt": "a ball", "num_frames": 5, "height": 16, "width": 16}
    with TestClient(create_app(one_thread, migrate=False)) as c:
        c.app.state.generation_pool.submit(release.wait, 60)  # busy: a timeout used before the check shows as 503
        try:
            for value, limit in (
                (5e-324, 0.1),
                (0.0, 0.1),
                (-1, 0.1),
                (one_thread.limits.max_sync_timeout_s + 1, one_thread.limits.max_sync_timeout_s),
            ):
                r = c.post("/v1/generations", json={**body, "timeout_s": value}, headers=auth(keys["generate"]))
                assert r.status_code == 422, (value, r.text)
                assert err(r)["field"] == "timeout_s" and err(r)["limit"] == limit, (value, r.text)
                assert str(limit) in err(r)["message"], r.text
                r = c.post("/v1/generations", json={**body, "timeout_s": value})
                assert r.status_code == 401, (value, r.text)  # the key first, as for any malformed body
        finally:
            release.set()
        c.app.state.generation_pool.shutdown(wait=True)


# --- NUL characters -------------------------------------------------------------------------------------------------


def test_nul_characters_in_request_bodies_are_422_naming_the_field(client, keys):
    r = client.post("/v1/keys", json={"name": "a\x00b", "scopes": ["read"]}, headers=auth(keys["admin"]))
    assert r.status_code == 422 and err(r)["field"] == "name" and "NUL" in err(r)["message"], r.text
    r = client.post(
        "/v1/generations", json={"checkpoint": "tiny", "prompt": "a \x00 ball"}, headers=auth(keys["generate"])
    )
    assert r.status_code == 422 and err(r)["field"] == "prompt" and "NUL" in err(r)["message"], r.text
    r = client.post("/v1/generations", json={"checkpoint": "tiny", "prompt": "a \x00 ball"})
    assert r.status_code == 401, r.text
    r = client.post(
        "/v1/benchmarks",
        json={"checkpoints": ["tiny"], "prompts": ["fine", "not\x00fine"]},
        headers=auth(keys["train"]),
    )
    assert r.status_code == 422 and err(r)["field"] == "prompts" and "prompts[1]" in err(r)["message"], r.text
    r = client.post(
        "/v1/studies/study_0123456789abcdef/annotators", json={"names": ["ann\x00"]}, headers=auth(keys["train"])
    )
    assert r.status_code == 422 and err(r)["field"] == "names", r.text
    assert "a\x00b" not in {k["name"] for k in client.get("/v1/keys", headers=auth(keys["admin"])).json()["items"]}


def test_nul_characters_are_found_in_nested_configs_and_keys():
    for config, where in (
        ({"data": {"root": "x\x00"}}, "config.data.root"),
        ({"a\x00": 1}, "config"),
        ({"list": [1, "ok", "\x00"]}, "config.list[2]"),
    ):
        with pytest.raises(Exception) as exc:
            RunCreate.model_validate({"method": "sft", "config": config})
        assert where in str(exc.value) and "NUL" in str(exc.value)
    assert RunCreate.model_validate({"method": "sft", "config": {"data": {"root": "fine"}}}).config


# --- health ---------------------------------------------------------------------------------------------------------


def test_health_endpoints_report_states_not_internals(tmp_path):
    root = tmp_path / "storage"
    settings = Settings(
        storage_root=root, broker_url="redis://127.0.0.1:1/0", broker_transport_options={"max_retries": 1}
    )
    app = create_app(settings)
    app.state.store.root = tmp_path / "gone"
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json() == {
            "status": "unavailable",
            "checks": {"database": "ok", "schema": "ok", "broker": "unavailable", "storage": "unavailable"},
        }
        assert str(tmp_path) not in r.text and "127.0.0.1" not in r.text and "Error" not in r.text
        app.state.engine = create_engine(f"sqlite:///{tmp_path}/no/such/dir/x.db")
        for path in ("/healthz", "/readyz"):
            r = c.get(path)
            assert r.status_code == 503 and set(r.json()["checks"].values()) == {"unavailable"}, r.text
            assert str(tmp_path) not in r.text and "sqlite" not in r.text.lower(), r.text


# --- security headers -----------------------------------------------------------------------------------------------


def _has_security_headers(r) -> bool:
    return (
        r.headers.get("x-content-type-options") == "nosniff"
        and r.headers.get("referrer-policy") == "no-referrer"
        and "frame-ancestors" in r.headers.get("content-security-policy", "")
    )


def test_responses_carry_security_headers(client, keys):
    for r in (
        client.get("/healthz"),
        client.get("/v1/runs", headers=auth(keys["read"])),
        client.get("/v1/runs"),
        client.get("/v1/nope"),
        client.get("/docs"),
    ):
        assert _has_security_headers(r), (r.request.url, dict(r.headers))
    page = client.get(f"/a/{TOKEN}")  # the annotator page keeps its own, stricter policy
    assert page.status_code == 200 and _has_security_headers(page)
    assert page.headers["content-security-policy"].count("frame-ancestors") == 1
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_the_web_ui_still_loads_with_the_security_headers(tmp_path):
    app = create_app(Settings(storage_root=tmp_path / "storage"), mount_ui=True)

    async def get(*paths):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return [await c.get(p, follow_redirects=True) for p in paths]

    (page,) = asyncio.run(get("/ui/"))
    assert page.status_code == 200 and "<html" in page.text.lower() and _has_security_headers(page)
    csp = page.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src" not in csp  # Gradio's scripts are not restricted
    scripts = [s for s in re.findall(r'<script[^>]+src="([^"]+)"', page.text) if not s.startswith("http")]
    assert scripts, page.text[:500]
    for r in asyncio.run(get(*[s if s.startswith("/") else f"/ui/{s}" for s in scripts])):
        assert r.status_code == 200 and "javascript" in r.headers["content-type"], (r.request.url, r.headers)


# --- annotator tokens in the access log -----------------------------------------------------------------------------


def _access_record(path: str) -> logging.LogRecord:
    """A record shaped like uvicorn's access log line."""
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:51234", "POST", path, "1.1", 200),
        None,
    )


def test_the_access_log_filter_redacts_annotator_tokens():
    f = RedactAnnotatorTokens()
    for path, shown in (
        (f"/a/{TOKEN}/api/next", "/a/<redacted>/api/next"),
        (f"/a/{TOKEN}", "/a/<redacted>"),
        (
            f"/a/{TOKEN}/api/assignments/asg_0123456789abcdef/video/left?x=1",
            "/a/<redacted>/api/assignments/asg_0123456789abcdef/video/left?x=1",
        ),
        ("/v1/runs?limit=5", "/v1/runs?limit=5"),
    ):
        rec = _access_record(path)
        assert f.filter(rec) is True
        assert rec.getMessage() == f'127.0.0.1:51234 - "POST {shown} HTTP/1.1" 200'
        assert TOKEN not in rec.getMessage()


def test_the_filter_is_on_uvicorns_access_logger_after_uvicorn_configures_logging(tmp_path):
    import uvicorn

    app = create_app(Settings(storage_root=tmp_path / "storage"))
    uvicorn.Config(app, log_level="info")  # what uvicorn.run does first: its dictConfig logging setup
    access = logging.getLogger("uvicorn.access")
    assert any(isinstance(f, RedactAnnotatorTokens) for f in access.filters)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    access.addHandler(handler)
    try:
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "POST", f"/a/{TOKEN}/api/next", "1.1", 200)
    finally:
        access.removeHandler(handler)
    assert seen and TOKEN not in seen[0] and "/a/<redacted>/api/next" in seen[0]


# --- CSV exports ----------------------------------------------------------------------------------------------------


def test_csv_cells_that_look_like_formulas_are_escaped():
    nasty = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tlead", "\rlead"]
    rows = [
        {"response_id": f"r{i}", "prompt": p, "model_left": "=cmd|' /C calc'!A0", "seed": -3, "duration_ms": 5}
        for i, p in enumerate(nasty)
    ]
    table = list(csv.DictReader(io.StringIO(export.responses_csv(rows), newline="")))
    assert [r["prompt"] for r in table] == ["'" + p for p in nasty]
    # a CR or LF inside a cell is quoted: it cannot start a new row (with a formula) mid-cell
    lines = list(csv.reader(io.StringIO(export.responses_csv([{"prompt": "cat\r=1+1\n@x"}]), newline="")))
    assert len(lines) == 2 and lines[1][export.RESPONSE_COLUMNS.index("prompt")] == "cat\r=1+1\n@x"
    assert all(r["model_left"].startswith("'=") for r in table)
    assert table[0]["seed"] == "-3"  # numbers are numbers, not text
    assert export.csv_cell("a = b") == "a = b" and export.csv_cell(None) == "" and export.csv_cell(-1.5) == -1.5


# --- storage permissions --------------------------------------------------------------------------------------------


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_embedded_database_broker_and_storage_are_private(tmp_path):
    root = tmp_path / "fresh" / "storage"
    app = create_app(Settings(storage_root=root))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200  # touches the broker file
    assert _mode(root) == 0o700
    for name in ("motionlab.db", "broker.sqlite"):
        assert _mode(root / name) == 0o600, name
    for extra in list(root.glob("*.db-wal")) + list(root.glob("*.sqlite-wal")) + list(root.glob("*-shm")):
        assert _mode(extra) == 0o600, extra
    assert _mode(app.state.store.kind_dir("videos")) == 0o700
    written = app.state.store.write_bytes("videos", "vid_0123456789abcdef", b"x", ".mp4")
    assert _mode(written) == 0o600


# --- the annotator's lease ------------------------------------------------------------------------------------------


def test_activity_extends_a_lease_only_up_to_the_hard_cap():
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    later = t0 + dt.timedelta(minutes=50)
    assert policy.expiry(later, t0, 600, None) == later + dt.timedelta(seconds=600)  # no cap: pushed back forever
    assert policy.expiry(later, t0, 600, None, max_hold_s=3600) == t0 + dt.timedelta(seconds=3600)
    assert policy.expiry(t0, t0, 600, None, max_hold_s=3600) == t0 + dt.timedelta(seconds=600)
    # the study's own timeout is never cut short by a smaller cap
    assert policy.expiry(t0, t0, 7200, None, max_hold_s=3600) == t0 + dt.timedelta(seconds=7200)
    assert policy.expiry(t0 + dt.timedelta(days=1), t0, 7200, None, max_hold_s=3600) == t0 + dt.timedelta(seconds=7200)
