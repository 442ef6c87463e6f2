"""The REST API suite; every test runs on both stacks (embedded SQLite + SQLite broker; PostgreSQL + Redis).

python -m pytest tests/backend/test_backend_api.py -q
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.db.models import ApiKey, Benchmark, Checkpoint, Job, Run
from backend.db.session import session_scope
from tests.backend.backend_helpers import auth, queue_depth

RUN_ID = "run_0123456789abcdef"
JOB_ID = "job_0123456789abcdef"
BENCH_ID = "bench_0123456789abcdef"
VIDEO_ID = "vid_0123456789abcdef"
KEY_ID = "key_0123456789abcdef"
TINY_RUN = {"method": "sft", "config": {"steps": 3}}

# every /v1 endpoint with the scope it needs ("a|b": either) and a valid body
ENDPOINTS: list[tuple[str, str, str, dict | None]] = [
    ("POST", "/v1/runs", "train", TINY_RUN),
    ("GET", "/v1/runs", "read", None),
    ("GET", f"/v1/runs/{RUN_ID}", "read", None),
    ("POST", f"/v1/runs/{RUN_ID}/cancel", "train", None),
    ("POST", f"/v1/runs/{RUN_ID}/resume", "train", None),
    ("GET", f"/v1/runs/{RUN_ID}/metrics", "read", None),
    ("GET", f"/v1/runs/{RUN_ID}/logs", "read", None),
    ("GET", "/v1/checkpoints", "read", None),
    ("GET", "/v1/checkpoints/some-name", "read", None),
    ("POST", "/v1/checkpoints", "admin", {"name": "x", "path": "/nonexistent"}),
    ("GET", "/v1/checkpoints/some-name/download", "read", None),
    ("POST", "/v1/datasets", "admin", {"name": "x", "path": "/nonexistent"}),
    ("GET", "/v1/datasets", "read", None),
    ("POST", "/v1/generations", "generate", {"checkpoint": "nope", "prompt": "a ball", "mode": "job"}),
    ("GET", "/v1/generations", "read|generate", None),
    ("GET", f"/v1/generations/{JOB_ID}", "read|generate", None),
    ("POST", f"/v1/generations/{JOB_ID}/cancel", "generate", None),
    ("GET", f"/v1/videos/{VIDEO_ID}", "read|generate", None),
    ("POST", "/v1/benchmarks", "train", {"checkpoints": ["nope"], "prompts": ["a ball"]}),
    ("GET", "/v1/benchmarks", "read", None),
    ("GET", "/v1/benchmarks/options", "read", None),
    ("GET", f"/v1/benchmarks/{BENCH_ID}", "read", None),
    ("POST", f"/v1/benchmarks/{BENCH_ID}/cancel", "train", None),
    ("GET", f"/v1/benchmarks/{BENCH_ID}/report", "read", None),
    ("POST", "/v1/keys", "admin", {"name": "k", "scopes": ["read"]}),
    ("GET", "/v1/keys", "admin", None),
    ("DELETE", f"/v1/keys/{KEY_ID}", "admin", None),
]
# a key that lacks the needed scope, per requirement
WRONG = {
    "read": ["generate", "train"],
    "read|generate": ["train"],
    "train": ["read", "generate"],
    "generate": ["read", "train"],
    "admin": ["all", "read"],
}


def snapshot(settings, store_root: Path) -> dict:
    """Everything a rejected request must leave alone: row counts, queue depths, files in storage."""
    with session_scope(settings) as db:
        counts = {
            m.__tablename__: db.scalar(select(func.count()).select_from(m))
            for m in (Run, Job, Benchmark, Checkpoint, ApiKey)
        }
        revoked = db.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_not(None)))
        cancelled = db.scalar(select(func.count()).select_from(Run).where(Run.cancel_requested.is_(True)))
    files = sorted(
        str(p.relative_to(store_root))
        for p in store_root.rglob("*")
        if p.is_file() and not p.name.startswith(("motionlab.db", "broker.sqlite"))
    )
    queues = {q: queue_depth(settings, q) for q in ("train", "eval", "infer")}
    return {"counts": counts, "revoked": revoked, "cancelled": cancelled, "files": files, "queues": queues}


def err(resp) -> dict:
    body = resp.json()
    assert "error" in body, body
    assert body["error"]["code"] and body["error"]["message"], body
    return body["error"]


# --- health and docs ----------------------------------------------------------------------------------------


def test_health_and_ready(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
    r = client.get("/readyz")
    assert r.status_code == 200, r.json()
    assert r.json()["checks"] == {"database": "ok", "schema": "ok", "broker": "ok", "storage": "ok"}


def test_openapi_documents_every_v1_endpoint(client):
    spec = client.get("/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    for method, path, _scope, _body in ENDPOINTS:
        template = (
            path.replace(RUN_ID, "{run_id}")
            .replace(JOB_ID, "{job_id}")
            .replace(BENCH_ID, "{benchmark_id}")
            .replace(VIDEO_ID, "{video_id}")
            .replace(KEY_ID, "{key_id}")
            .replace("some-name", "{ref}")
        )
        assert (method, template) in documented, (method, template)
    # and the table above covers every /v1 route of this module (studies has its own suite)
    v1 = {(m, p) for m, p in documented if p.startswith("/v1/") and not p.startswith("/v1/studies")}
    assert len(v1) == len(ENDPOINTS), sorted(v1)
    assert spec["info"]["title"] == "MotionLab API"


def test_unknown_endpoint_is_json_404(client):
    r = client.get("/v1/nope", headers=auth("x"))
    assert r.status_code == 404 and err(r)["code"] == "not_found"


# --- access control -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path,scope,body", ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_every_endpoint_rejects_missing_invalid_and_wrong_scope_keys(client, keys, stack, method, path, scope, body):
    before = snapshot(stack, stack.storage_root)
    r = client.request(method, path, json=body)
    assert r.status_code == 401 and err(r)["code"] == "missing_api_key"
    assert "Bearer" in r.headers.get("www-authenticate", "")
    r = client.request(method, path, json=body, headers=auth("ml_" + "x" * 43))
    assert r.status_code == 401 and err(r)["code"] == "invalid_api_key"
    r = client.request(method, path, json=body, headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert r.status_code == 401
    for wrong in WRONG[scope]:
        r = client.request(method, path, json=body, headers=auth(keys[wrong]))
        assert r.status_code == 403, (wrong, r.text)
        e = err(r)
        assert e["code"] == "insufficient_scope" and scope.split("|")[0] in e["message"]
    assert snapshot(stack, stack.storage_root) == before
    # and the right scope gets through auth (whatever the route then says about the dummy ids)
    r = client.request(method, path, json=body, headers=auth(keys[scope.split("|")[0]]))
    assert r.status_code not in (401, 403), r.text


WITH_BODY = [e for e in ENDPOINTS if e[3] is not None]


@pytest.mark.parametrize("method,path,scope,body", WITH_BODY, ids=[f"{m} {p}" for m, p, _, _ in WITH_BODY])
def test_a_body_that_is_not_json_is_answered_only_to_a_caller_with_the_right_key(
    client, keys, stack, method, path, scope, body
):
    before = snapshot(stack, stack.storage_root)
    json_type = {"Content-Type": "application/json"}
    r = client.request(method, path, content=b"{not json", headers=json_type)
    assert r.status_code == 401 and err(r)["code"] == "missing_api_key", r.text
    r = client.request(method, path, content=b"{not json", headers={**json_type, **auth(keys[WRONG[scope][0]])})
    assert r.status_code == 403 and err(r)["code"] == "insufficient_scope", r.text
    r = client.request(method, path, content=b"{not json", headers={**json_type, **auth(keys[scope.split("|")[0]])})
    assert r.status_code == 422 and "JSON" in err(r)["message"], r.text
    assert snapshot(stack, stack.storage_root) == before


def test_key_lifecycle_shown_once_hashed_revocable(client, keys, stack):
    r = client.post("/v1/keys", json={"name": "ci", "scopes": ["read", "generate"]}, headers=auth(keys["admin"]))
    assert r.status_code == 201
    created = r.json()
    plaintext = created["key"]
    assert plaintext.startswith("ml_") and created["scopes"] == ["read", "generate"]
    listing = client.get("/v1/keys", headers=auth(keys["admin"])).json()["items"]
    mine = [k for k in listing if k["id"] == created["id"]]
    assert mine and "key" not in mine[0] and plaintext not in json.dumps(listing)
    with session_scope(stack) as db:
        row = db.get(ApiKey, created["id"])
        assert plaintext not in row.key_hash and len(row.key_hash) == 64
    assert client.get("/v1/runs", headers=auth(plaintext)).status_code == 200
    assert client.post("/v1/runs", json=TINY_RUN, headers=auth(plaintext)).status_code == 403
    r = client.delete(f"/v1/keys/{created['id']}", headers=auth(keys["admin"]))
    assert r.status_code == 200 and r.json()["revoked_at"]
    r = client.get("/v1/runs", headers=auth(plaintext))
    assert r.status_code == 401 and err(r)["code"] == "invalid_api_key"


def test_annotator_tokens_reach_no_api_endpoint(client, stack):
    """A study's per-annotator token is not an API key, whatever endpoint it is sent to."""
    from backend.db.models import Annotator, Study
    from backend.security import hash_token, new_token

    token = new_token("ann_")
    with session_scope(stack) as db:
        study = Study(name="s", config={})
        db.add(study)
        db.flush()
        db.add(Annotator(study_id=study.id, token_hash=hash_token(token, stack.api_key_pepper)))
    for method, path, _scope, body in ENDPOINTS:
        r = client.request(method, path, json=body, headers=auth(token))
        assert r.status_code == 401, (method, path, r.text)
        r = client.request(method, path, json=body, headers={"X-API-Key": token})
        assert r.status_code == 401


def test_key_create_rejects_unknown_scope(client, keys):
    r = client.post("/v1/keys", json={"name": "k", "scopes": ["root"]}, headers=auth(keys["admin"]))
    assert r.status_code == 422 and err(r)["field"].startswith("scopes")


# --- runs ---------------------------------------------------------------------------------------------------


def test_run_create_list_get_cancel_resume(client, keys, stack):
    depth = queue_depth(stack, "train")
    r = client.post("/v1/runs", json={**TINY_RUN, "name": "t1"}, headers=auth(keys["train"]))
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["status"] == "queued" and run["method"] == "sft" and run["total_steps"] == 3
    assert run["resolved_config"]["steps"] == 3
    assert queue_depth(stack, "train") == depth + 1  # the message is on the broker
    got = client.get(f"/v1/runs/{run['id']}", headers=auth(keys["read"])).json()
    assert got["id"] == run["id"] and got["name"] == "t1"
    listing = client.get("/v1/runs", params={"status": "queued"}, headers=auth(keys["read"])).json()
    assert run["id"] in [x["id"] for x in listing["items"]] and listing["total"] >= 1
    r = client.post(f"/v1/runs/{run['id']}/cancel", headers=auth(keys["train"]))
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    r = client.post(f"/v1/runs/{run['id']}/resume", headers=auth(keys["train"]))
    assert r.status_code == 202 and r.json()["status"] == "queued"
    r = client.post(f"/v1/runs/{run['id']}/resume", headers=auth(keys["train"]))
    assert r.status_code == 409 and err(r)["field"] == "run_id"
    logs = client.get(f"/v1/runs/{run['id']}/logs", headers=auth(keys["read"])).json()["items"]
    assert [x["message"] for x in logs][-2:] == ["cancelled before it started", "resume requested"]
    assert client.get(f"/v1/runs/{run['id']}/metrics", headers=auth(keys["read"])).json()["items"] == []
    client.post(f"/v1/runs/{run['id']}/cancel", headers=auth(keys["train"]))


def test_run_idempotency_key_never_duplicates(client, keys, stack):
    body = {**TINY_RUN, "idempotency_key": f"idem-{stack.storage_root.name}"}
    a = client.post("/v1/runs", json=body, headers=auth(keys["train"]))
    depth = queue_depth(stack, "train")
    b = client.post("/v1/runs", json=body, headers=auth(keys["train"]))
    assert a.status_code == 201 and b.status_code == 200 and a.json()["id"] == b.json()["id"]
    assert queue_depth(stack, "train") == depth
    client.post(f"/v1/runs/{a.json()['id']}/cancel", headers=auth(keys["train"]))


@pytest.mark.parametrize(
    "body,field,needle",
    [
        ({"method": "sft", "config": {"nope": 1}}, "config.nope", "unknown key"),
        ({"method": "sft", "config": {"steps": -5}}, "config.steps", "out of range"),
        ({"method": "sft", "config": {"steps": 10**12}}, "config.steps", "out of range"),
        ({"method": "sft", "config": {"optim": {"lr": "fast"}}}, "config.optim.lr", "expected a number"),
        ({"method": "sft", "config": {"data": {"num_frames": 0}}}, "config.data.num_frames", "out of range"),
        ({"method": "sft", "config": "steps=3"}, "config", "dictionary"),
        ({"method": "sft", "config": {"optim": {"lr": float("nan")}}}, "config.optim.lr", "finite"),
        ({"method": "no-such-method"}, "method", "unknown method"),
        ({"method": "sft", "preset": "huge"}, "preset", "not one of"),
        ({"method": "sft", "bogus": 1}, "bogus", "unknown field"),
        ({"config": {}}, "method", "required"),
    ],
)
def test_malformed_run_config_is_422_and_changes_nothing(client, keys, stack, body, field, needle):
    before = snapshot(stack, stack.storage_root)
    content = json.dumps(body, allow_nan=True)
    r = client.post("/v1/runs", content=content, headers={**auth(keys["train"]), "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    e = err(r)
    assert e["field"] == field and field in e["message"] and needle in e["message"], e
    if "out of range" in needle:
        assert e["limit"] and e["limit"] in e["message"]
    assert snapshot(stack, stack.storage_root) == before


# --- ids and paths ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/runs/..%2F..%2Fetc%2Fpasswd",
        "/v1/runs/%2e%2e",
        "/v1/runs/run_..%2F..%2Fx/logs",
        "/v1/runs/RUN_0123456789ABCDEF",
        "/v1/videos/..%2Fmotionlab.db",
        "/v1/videos/%2e%2e",
        "/v1/generations/job_0123456789abcdef%00",
        "/v1/benchmarks/..%5C..%5Cwindows",
        "/v1/checkpoints/..%2F..%2Fetc/download",
        "/v1/checkpoints/%2e%2e/download",
        "/v1/checkpoints/.hidden/download",
    ],
)
def test_path_traversal_ids_are_4xx_and_change_nothing(client, keys, stack, path):
    before = snapshot(stack, stack.storage_root)
    r = client.get(path, headers=auth(keys["admin"]))
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
    e = err(r)
    if r.status_code == 422:
        assert e["code"] == "invalid_id" and e["field"] in e["message"]
    assert snapshot(stack, stack.storage_root) == before


def test_generation_checkpoint_with_a_path_is_rejected(client, keys, stack):
    before = snapshot(stack, stack.storage_root)
    for ref in ("../../etc", "/etc/passwd", "tiny/../../x"):
        r = client.post(
            "/v1/generations", json={"checkpoint": ref, "prompt": "x", "mode": "job"}, headers=auth(keys["generate"])
        )
        assert r.status_code == 422 and err(r)["field"] == "checkpoint", r.text
    assert snapshot(stack, stack.storage_root) == before


# --- request limits -----------------------------------------------------------------------------------------


def test_oversized_body_is_413_and_changes_nothing(client, keys, stack):
    before = snapshot(stack, stack.storage_root)
    big = {"method": "sft", "config": {"pad": "x" * (stack.limits.max_request_bytes + 10)}}
    r = client.post("/v1/runs", json=big, headers=auth(keys["train"]))
    assert r.status_code == 413
    e = err(r)
    assert e["field"] == "body" and e["limit"] == stack.limits.max_request_bytes
    assert str(stack.limits.max_request_bytes) in e["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(stack.limits.max_request_bytes // 65536 + 2):
            yield b" " * 65536

    r = client.post("/v1/runs", content=chunks(), headers={**auth(keys["train"]), "Content-Type": "application/json"})
    assert r.status_code == 413 and err(r)["code"] == "payload_too_large"
    assert snapshot(stack, stack.storage_root) == before


@pytest.mark.parametrize(
    "field,value,limit_attr",
    [
        ("num_frames", -1, None),
        ("num_frames", 0, None),
        ("num_frames", 10**6, "max_frames"),
        ("num_frames", 2**70, "max_frames"),
        ("steps", 0, None),
        ("steps", 10**5, "max_steps"),
        ("height", 10**5, "max_height"),
        ("width", 4, None),
        ("seed", -1, None),
        ("prompt", "y" * 100_000, "max_prompt_chars"),
        ("timeout_s", 10**6, "max_sync_timeout_s"),
        ("guidance", -1.0, None),
        ("num_frames", "many", None),
    ],
)
def test_generation_limits_are_422_and_change_nothing(client, keys, stack, field, value, limit_attr):
    before = snapshot(stack, stack.storage_root)
    body = {"checkpoint": "nope", "prompt": "a ball", "mode": "job", field: value}
    r = client.post("/v1/generations", json=body, headers=auth(keys["generate"]))
    assert r.status_code == 422, r.text
    e = err(r)
    assert e["field"] == field and e["message"].startswith(field), e
    if limit_attr:
        limit = getattr(stack.limits, limit_attr)
        assert e["limit"] == limit and str(limit) in e["message"], e
    assert snapshot(stack, stack.storage_root) == before


# --- checkpoints, generations, benchmarks -------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_pipeline_dir) -> Path:
    """An untrained tiny pipeline directory (diffusers format; tests/conftest.py), registered as external."""
    return tiny_pipeline_dir


def test_register_list_get_download_checkpoint(client, keys, stack, tiny_pipeline, tmp_path):
    name = f"tiny-ext-{stack.storage_root.name}"[:60]
    r = client.post("/v1/checkpoints", json={"name": name, "path": str(tiny_pipeline)}, headers=auth(keys["admin"]))
    assert r.status_code == 201, r.text
    ck = r.json()
    assert ck["source"] == "external" and ck["name"] == name and "path" not in ck
    r = client.post("/v1/checkpoints", json={"name": name, "path": str(tiny_pipeline)}, headers=auth(keys["admin"]))
    assert r.status_code == 409 and err(r)["field"] == "name"
    before = snapshot(stack, stack.storage_root)
    for bad, field in (
        (str(tmp_path), "path"),
        ("relative/dir", "path"),
        (str(tiny_pipeline / "nope"), "path"),
        ("/etc", "path"),
    ):
        r = client.post("/v1/checkpoints", json={"name": "other", "path": bad}, headers=auth(keys["admin"]))
        assert r.status_code == 422 and err(r)["field"] == field, (bad, r.text)
    r = client.post(
        "/v1/checkpoints", json={"name": "../evil", "path": str(tiny_pipeline)}, headers=auth(keys["admin"])
    )
    assert r.status_code == 422 and err(r)["field"] == "name"
    assert snapshot(stack, stack.storage_root) == before
    listing = client.get("/v1/checkpoints", headers=auth(keys["read"])).json()["items"]
    assert ck["id"] in [c["id"] for c in listing]
    assert client.get(f"/v1/checkpoints/{name}", headers=auth(keys["read"])).json()["id"] == ck["id"]
    r = client.get(f"/v1/checkpoints/{ck['id']}/download", headers=auth(keys["read"]))
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert f"{ck['id']}/model_index.json" in names and any(n.endswith(".safetensors") for n in names)
    # the archive is an artifact addressed by id; no temp files left behind
    assert (stack.storage_root / "archives" / f"{ck['id']}.zip").is_file()
    assert not list((stack.storage_root / "archives").glob(".tmp-*"))


def test_generation_job_mode_limits_and_cancel(client, keys, stack, tiny_pipeline):
    name = f"tiny-gen-{stack.storage_root.name}"[:60]
    client.post("/v1/checkpoints", json={"name": name, "path": str(tiny_pipeline)}, headers=auth(keys["admin"]))
    from backend.security import create_api_key

    with session_scope(stack) as db:
        _row, gen_key = create_api_key(db, "gen-only", ["generate"])
    depth = queue_depth(stack, "infer")
    body = {"checkpoint": name, "prompt": "a red ball", "seed": 3, "num_frames": 5, "mode": "job"}
    ids = []
    for _ in range(stack.limits.max_concurrent_generations_per_key):
        r = client.post("/v1/generations", json=body, headers=auth(gen_key))
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued" and r.json()["params"]["seed"] == 3
        ids.append(r.json()["id"])
    assert queue_depth(stack, "infer") == depth + len(ids)
    r = client.post("/v1/generations", json=body, headers=auth(gen_key))
    assert r.status_code == 429
    e = err(r)
    assert e["limit"] == stack.limits.max_concurrent_generations_per_key and "concurrent" in e["message"]
    got = client.get(f"/v1/generations/{ids[0]}", headers=auth(gen_key)).json()
    assert got["id"] == ids[0] and got["video"] is None
    r = client.post(f"/v1/generations/{ids[0]}/cancel", headers=auth(gen_key))
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    # a freed slot: one more is accepted
    r = client.post("/v1/generations", json=body, headers=auth(gen_key))
    assert r.status_code == 202 and r.json()["status"] == "queued"
    ids.append(r.json()["id"])
    listing = client.get("/v1/generations", headers=auth(keys["read"])).json()
    assert set(ids) <= {g["id"] for g in listing["items"]} | set(ids[:0]) or listing["total"] >= len(ids)
    for j in ids:
        client.post(f"/v1/generations/{j}/cancel", headers=auth(gen_key))
    r = client.post("/v1/generations", json={**body, "checkpoint": "no-such-ckpt"}, headers=auth(gen_key))
    assert r.status_code == 422 and err(r)["code"] == "unknown_checkpoint"


def test_benchmark_create_status_report_cancel(client, keys, stack, tiny_pipeline):
    name = f"tiny-bench-{stack.storage_root.name}"[:60]
    client.post("/v1/checkpoints", json={"name": name, "path": str(tiny_pipeline)}, headers=auth(keys["admin"]))
    depth = queue_depth(stack, "eval")
    r = client.post(
        "/v1/benchmarks",
        json={"name": "b1", "checkpoints": [name], "prompts": ["a ball", "a cube"]},
        headers=auth(keys["train"]),
    )
    assert r.status_code == 201, r.text
    b = r.json()
    assert b["status"] == "queued" and b["config"]["checkpoints"] == [name]
    assert queue_depth(stack, "eval") == depth + 1
    assert client.get(f"/v1/benchmarks/{b['id']}", headers=auth(keys["read"])).json()["status"] == "queued"
    r = client.get(f"/v1/benchmarks/{b['id']}/report", headers=auth(keys["read"]))
    assert r.status_code == 409 and err(r)["code"] == "not_ready"
    r = client.post(f"/v1/benchmarks/{b['id']}/cancel", headers=auth(keys["train"]))
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    before = snapshot(stack, stack.storage_root)
    for bad, field in (
        ({"checkpoints": [], "prompts": ["a"]}, "checkpoints"),
        ({"checkpoints": ["missing-ckpt"], "prompts": ["a"]}, "checkpoints[0]"),
        ({"checkpoints": [name]}, "prompts"),
        ({"checkpoints": [name], "prompts": ["a"], "num_frames": -4}, "num_frames"),
        ({"checkpoints": [name], "prompts": ["a"], "seeds": [-1]}, "seeds[0]"),
        ({"checkpoints": [name], "prompts": ["a"], "metrics": ["nope"]}, "metrics[0]"),
        ({"checkpoints": [name], "suite": "/etc/passwd"}, "suite"),
        ({"checkpoints": [name], "suite": "motion", "options": {"x": 1}}, "options.x"),
        ({"checkpoints": [name], "suite": "motion", "options": {"backend": "gpt"}}, "options.backend"),
        ({"checkpoints": [name], "suite": "motion", "options": {"batch_size": 0}}, "options.batch_size"),
    ):
        r = client.post("/v1/benchmarks", json=bad, headers=auth(keys["train"]))
        assert r.status_code == 422 and err(r)["field"] == field, (bad, r.text)
    assert snapshot(stack, stack.storage_root) == before


@pytest.mark.parametrize("path", ["/v1/runs", "/v1/benchmarks", "/v1/checkpoints", "/v1/generations", "/v1/studies"])
def test_list_routes_bound_limit_and_offset_by_name(client, keys, stack, path):
    h = auth(keys["admin"])
    top = stack.limits.max_page_size
    assert client.get(path, params={"limit": top, "offset": 0}, headers=h).status_code == 200
    for params, field, limit in (
        ({"limit": top + 1}, "limit", top),
        ({"limit": 0}, "limit", 1),
        ({"offset": -1}, "offset", 0),
    ):
        r = client.get(path, params=params, headers=h)
        assert r.status_code == 422, (path, params, r.text)
        e = err(r)
        assert e["field"] == field and str(limit) in str(e["limit"]) and str(limit) in e["message"], (path, e)
