"""Limits on what one client can make the server do: compute budgets of generations and benchmarks, queued work per
key, cancelling a running generation, run configs without server paths (registered datasets), errors without server
paths for non-admin keys, NUL characters in query strings, no Gradio uploads, and request rates.

    python -m pytest tests/backend/test_abuse_limits.py -q
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

from backend.api.deps import require_scope
from backend.api.errors import ApiError
from backend.api.main import create_app
from backend.core.config import Limits, RateLimits, Settings
from backend.crud.runs import append_log, create_run
from backend.db.models import Benchmark, Job, Run
from backend.db.session import session_scope
from backend.generation import CancelWatch, sampling_defaults, serving_options, video_cost
from backend.run_refs import redact_paths, to_server_paths
from backend.security import create_api_key
from backend.storage import ArtifactStore
from tests.backend.backend_helpers import auth

TOKEN = "ann_" + "B" * 43


def err(resp) -> dict:
    assert resp.headers["content-type"].startswith("application/json"), resp.text
    return resp.json()["error"]


def count(settings: Settings, model) -> int:
    with session_scope(settings, write=False) as db:
        return db.scalar(select(func.count()).select_from(model))


def new_key(settings: Settings, *scopes: str) -> str:
    with session_scope(settings) as db:
        return create_api_key(db, f"test-{'-'.join(scopes)}", list(scopes), pepper=settings.api_key_pepper)[1]


@pytest.fixture(scope="module")
def ckpt(client, keys, stack, tiny_pipeline_dir) -> str:
    """The tiny random pipeline, registered (17 x 32 x 32 frames, 50 teacher steps by default)."""
    name = f"abuse-{stack.storage_root.name}"[:60]
    r = client.post("/v1/checkpoints", json={"name": name, "path": str(tiny_pipeline_dir)}, headers=auth(keys["admin"]))
    assert r.status_code == 201, r.text
    return name


# --- compute budget ---------------------------------------------------------------------------------------------


def test_the_default_budget_admits_the_documented_defaults_not_the_largest_request(tiny_pipeline_dir):
    from trainer.models.generator import FULL_SAMPLING

    budget = Limits().max_generation_cost
    tiny = sampling_defaults(tiny_pipeline_dir)
    assert video_cost(tiny) == 17 * 32 * 32 * 50 <= budget
    full = {
        "num_frames": FULL_SAMPLING.num_frames,
        "height": FULL_SAMPLING.height,
        "width": FULL_SAMPLING.width,
        "num_steps": FULL_SAMPLING.num_steps,
    }
    assert video_cost(full) == 81 * 480 * 832 * 50 <= budget
    lim = Limits()
    assert (
        video_cost(tiny, num_frames=lim.max_frames, height=lim.max_height, width=lim.max_width, steps=lim.max_steps)
        > budget
    )


def test_a_generation_over_the_compute_budget_is_422_naming_it_before_any_job_exists(client, keys, stack, ckpt):
    before = count(stack, Job)
    lim = stack.limits
    body = {
        "checkpoint": ckpt,
        "prompt": "a ball",
        "num_frames": lim.max_frames,
        "height": lim.max_height,
        "width": lim.max_width,
        "steps": lim.max_steps,
    }
    for mode in ("sync", "job"):
        r = client.post("/v1/generations", json={**body, "mode": mode}, headers=auth(keys["generate"]))
        assert r.status_code == 422, r.text
        e = err(r)
        assert e["field"] == "max_generation_cost" and e["limit"] == lim.max_generation_cost, e
        assert "max_generation_cost" in e["message"] and str(lim.max_generation_cost) in e["message"], e
    # the checkpoint's own defaults fill what a request leaves out (50 steps here)
    r = client.post(
        "/v1/generations",
        json={
            "checkpoint": ckpt,
            "prompt": "a ball",
            "num_frames": lim.max_frames,
            "height": lim.max_height,
            "width": lim.max_width,
            "mode": "job",
        },
        headers=auth(keys["generate"]),
    )
    assert r.status_code == 422 and str(lim.max_frames * lim.max_height * lim.max_width * 50) in err(r)["message"]
    assert "x 50 steps" in err(r)["message"], r.text
    assert count(stack, Job) == before


def test_flowmo_passes_count_toward_the_generation_budget(client, keys, stack, ckpt):
    lim = stack.limits
    body = {"checkpoint": ckpt, "prompt": "a ball", "num_frames": 121, "height": 720, "width": 400, "mode": "job"}
    per_step = 121 * 720 * 400
    # FlowMo guides the first quarter of the steps by default, each iteration counted as 3 steps: the plain video
    # fits the budget, the guided one does not
    assert per_step * 50 <= lim.max_generation_cost < per_step * (50 + 3 * 13)
    before = count(stack, Job)
    r = client.post("/v1/generations", json={**body, "sampler": "flowmo"}, headers=auth(keys["generate"]))
    assert r.status_code == 422 and err(r)["field"] == "max_generation_cost", r.text
    assert "x 89 steps, FlowMo's passes included" in err(r)["message"], r.text
    assert count(stack, Job) == before


def test_a_benchmark_over_its_budget_is_422_naming_it_before_any_row_exists(client, keys, stack, ckpt):
    before = count(stack, Benchmark)
    lim = stack.limits
    body = {
        "checkpoints": [ckpt] * lim.max_benchmark_checkpoints,
        "prompts": ["a ball"] * lim.max_benchmark_prompts,
        "seeds": list(range(16)),
    }
    r = client.post(
        "/v1/benchmarks",
        json={**body, "num_frames": 81, "height": 480, "width": 832, "steps": 50},
        headers=auth(keys["train"]),
    )
    assert r.status_code == 422, r.text
    e = err(r)
    assert e["field"] == "max_benchmark_cost" and e["limit"] == lim.max_benchmark_cost, e
    assert "max_benchmark_cost" in e["message"] and "16 checkpoints x 1000 prompts x 16 seeds" in e["message"], e
    r = client.post(
        "/v1/benchmarks",
        json={
            "checkpoints": [ckpt],
            "prompts": ["a ball"],
            "num_frames": lim.max_frames,
            "height": lim.max_height,
            "width": lim.max_width,
            "steps": lim.max_steps,
        },
        headers=auth(keys["train"]),
    )
    assert r.status_code == 422 and err(r)["field"] == "max_generation_cost", r.text
    assert count(stack, Benchmark) == before


def test_queued_benchmarks_per_key_are_capped_with_429(client, stack, ckpt):
    key = new_key(stack, "train")
    limit = stack.limits.max_active_benchmarks_per_key
    body = {"checkpoints": [ckpt], "prompts": ["a ball"], "num_frames": 5, "height": 16, "width": 16}
    ids = []
    for _ in range(limit):
        r = client.post("/v1/benchmarks", json=body, headers=auth(key))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    before = count(stack, Benchmark)
    r = client.post("/v1/benchmarks", json=body, headers=auth(key))
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0, r.text
    e = err(r)
    assert e["limit"] == limit and "max_active_benchmarks_per_key" in e["message"], e
    assert count(stack, Benchmark) == before
    assert client.post(f"/v1/benchmarks/{ids[0]}/cancel", headers=auth(key)).status_code == 202
    r = client.post("/v1/benchmarks", json=body, headers=auth(key))
    assert r.status_code == 201, r.text
    for bid in ids[1:] + [r.json()["id"]]:
        client.post(f"/v1/benchmarks/{bid}/cancel", headers=auth(key))


# --- cancelling a running generation ------------------------------------------------------------------------------


def test_a_running_generation_is_cancelled_at_its_next_sampling_step(client, keys, stack, ckpt, tiny_pipeline_dir):
    from trainer.serving import shared_service

    gen = shared_service(stack.device, **serving_options(stack.serving, stack.device)).generator(
        str(Path(tiny_pipeline_dir).resolve())
    )
    steps: list[float] = []

    def slow(_module, _args):  # a sampling step that takes a while, so the generation is still running
        steps.append(time.monotonic())
        time.sleep(0.05)

    hook = gen.transformer.register_forward_pre_hook(slow)
    try:
        body = {
            "checkpoint": ckpt,
            "prompt": "a ball",
            "num_frames": 5,
            "height": 16,
            "width": 16,
            "steps": 100,
            "seed": 5,
            "timeout_s": 0.2,
        }
        r = client.post("/v1/generations", json=body, headers=auth(keys["generate"]))
        assert r.status_code == 202 and r.json()["status"] == "running", r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while len(steps) < 3:
            assert time.monotonic() < deadline, "the generation never started sampling"
            time.sleep(0.02)
        r = client.post(f"/v1/generations/{job_id}/cancel", headers=auth(keys["generate"]))
        assert r.status_code == 202 and r.json()["cancel_requested"] is True, r.text
        cancelled_at = time.monotonic()
        while (g := client.get(f"/v1/generations/{job_id}", headers=auth(keys["read"])).json())["status"] == "running":
            assert time.monotonic() < cancelled_at + 30, "the generation was not stopped"
            time.sleep(0.05)
        after = [t for t in steps if t > cancelled_at]
    finally:
        hook.remove()
    assert g["status"] == "cancelled" and g["video"] is None and "cancelled" in g["error"], g
    assert len(after) <= 2, f"{len(after)} sampling steps ran after the cancel"
    assert len(steps) < 100  # far from all of them
    with session_scope(stack, write=False) as db:
        job = db.get(Job, job_id)
        assert job.worker_id is None and job.finished_at is not None
    # the key's slot is free again, and a finished generation is not changed by a late cancel
    r = client.post(f"/v1/generations/{job_id}/cancel", headers=auth(keys["generate"]))
    assert r.status_code == 202 and r.json()["status"] == "cancelled"


def test_a_generation_running_elsewhere_sees_its_cancel_request_through_the_database(stack):
    with session_scope(stack) as db:
        job = Job(kind="generate", params={}, status="running")
        db.add(job)
        db.flush()
        job_id = job.id
    with CancelWatch.running(job_id, stack) as stopped:
        CancelWatch._polled_at = 0.0
        assert not CancelWatch.all_cancelled() and not stopped.is_set()
        with session_scope(stack) as db:
            db.get(Job, job_id).cancel_requested = True
        CancelWatch._polled_at = 0.0
        assert CancelWatch.all_cancelled() and stopped.is_set()
    assert not CancelWatch.all_cancelled()  # nothing runs: nothing to stop


# --- server paths in run configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config,field",
    [
        ({"init": "/etc"}, "config.init"),
        ({"init": "../../etc"}, "config.init"),
        ({"init": "no-such-checkpoint"}, "config.init"),
        ({"teacher": "/srv/models/wan"}, "config.teacher"),
        ({"data": {"source": "folder", "root": "/etc/ssl"}}, "config.data.root"),
        ({"data": {"source": "folder", "root": "unregistered"}}, "config.data.root"),
        ({"method_cfg": {"flow_weights": "raft.pth"}}, "config.method_cfg.flow_weights"),
        ({"device": "/dev/null"}, "config.device"),
    ],
)
def test_run_configs_over_the_api_take_no_server_paths(client, keys, stack, config, field):
    before = count(stack, Run)
    r = client.post("/v1/runs", json={"method": "sft", "config": config}, headers=auth(keys["train"]))
    assert r.status_code == 422, r.text
    e = err(r)
    assert e["field"] == field and e["message"].startswith(field), e
    assert count(stack, Run) == before


def test_run_configs_name_zoo_and_registered_checkpoints_and_registered_datasets(client, keys, stack, ckpt, tmp_path):
    data = tmp_path / "clips"
    data.mkdir()
    name = f"clips-{stack.storage_root.name}"[:60]
    r = client.post("/v1/datasets", json={"name": name, "path": str(data)}, headers=auth(keys["train"]))
    assert r.status_code == 403, r.text  # registering is an admin's
    r = client.post("/v1/datasets", json={"name": name, "path": "relative/dir"}, headers=auth(keys["admin"]))
    assert r.status_code == 422 and err(r)["field"] == "path", r.text
    r = client.post("/v1/datasets", json={"name": name, "path": str(data)}, headers=auth(keys["admin"]))
    assert r.status_code == 201 and r.json()["path"] == str(data.resolve()), r.text
    r = client.post("/v1/datasets", json={"name": name, "path": str(data)}, headers=auth(keys["admin"]))
    assert r.status_code == 409, r.text
    listed = {d["name"]: d for d in client.get("/v1/datasets", headers=auth(keys["read"])).json()["items"]}
    assert listed[name]["path"] is None  # to a non-admin key a dataset is its name
    listed = {d["name"]: d for d in client.get("/v1/datasets", headers=auth(keys["admin"])).json()["items"]}
    assert listed[name]["path"] == str(data.resolve())

    config = {"init": ckpt, "steps": 3, "data": {"source": "folder", "root": name}}
    r = client.post("/v1/runs", json={"method": "sft", "config": config}, headers=auth(keys["train"]))
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["resolved_config"]["init"] == ckpt and run["resolved_config"]["data"]["root"] == name
    assert str(data) not in r.text and str(stack.storage_root) not in r.text
    client.post(f"/v1/runs/{run['id']}/cancel", headers=auth(keys["train"]))
    with session_scope(stack, write=False) as db:  # what the worker hands the trainer
        server = to_server_paths(db, ArtifactStore(stack.storage_root), config)
    assert server["data"]["root"] == str(data.resolve()) and Path(server["init"]).is_dir()
    assert server["steps"] == 3 and config["init"] == ckpt  # a copy
    r = client.post(
        "/v1/runs",
        json={"method": "dmd", "config": {"teacher": "tiny-teacher", "steps": 3}},
        headers=auth(keys["train"]),
    )
    assert r.status_code == 201 and r.json()["resolved_config"]["teacher"] == "tiny-teacher", r.text
    client.post(f"/v1/runs/{r.json()['id']}/cancel", headers=auth(keys["train"]))


def test_errors_and_logs_show_server_paths_to_admin_keys_only(client, keys, stack):
    secret = "/srv/motionlab-secret/data"
    with session_scope(stack) as db:
        run, _ = create_run(
            db,
            method="sft",
            config={},
            preset="tiny",
            name="paths",
            resolved_config=None,
            total_steps=None,
            api_key_id=None,
        )
        run.status, run.error = "failed", f"FileNotFoundError: [Errno 2] No such file: '{secret}/x.mp4'"
        append_log(db, run.id, f'Traceback:\n  File "{secret}/loop.py", line 3, in run\nValueError: bad')
        run_id = run.id
    for key in ("read", "all"):
        h = auth(keys[key])
        shown = [
            client.get(f"/v1/runs/{run_id}", headers=h),
            client.get(f"/v1/runs/{run_id}/logs", headers=h),
            client.get("/v1/runs", params={"limit": 500}, headers=h),
        ]
        for r in shown:
            assert r.status_code == 200 and "motionlab-secret" not in r.text, (key, r.text[:300])
        assert "<path>" in shown[0].json()["error"] and "No such file" in shown[0].json()["error"]
        assert 'File "<path>", line 3' in shown[1].json()["items"][-1]["message"]
    admin = client.get(f"/v1/runs/{run_id}", headers=auth(keys["admin"])).json()
    assert secret in admin["error"]


def test_error_messages_lose_server_paths_for_non_admin_keys(stack, keys, tmp_path):
    app = create_app(stack, migrate=False)

    @app.get("/v1/test-boom")
    def boom(_key=Depends(require_scope("read"))):
        raise ApiError(500, "boom", "could not read /srv/data/clip.mp4 (see POST /v1/runs/run_x/resume)")

    with TestClient(app) as c:
        r = c.get("/v1/test-boom", headers=auth(keys["read"]))
        assert err(r)["message"] == "could not read <path> (see POST /v1/runs/run_x/resume)", r.text
        r = c.get("/v1/test-boom", headers=auth(keys["admin"]))
        assert "/srv/data/clip.mp4" in err(r)["message"]


def test_redact_paths_keeps_the_apis_own_paths_and_urls():
    assert redact_paths("open '/etc/ssl/x' and ~/secret and C:/x") == "open '<path>' and <path> and C:/x"
    assert (
        redact_paths("see /v1/runs/run_1/logs, /docs and http://host/v1")
        == "see /v1/runs/run_1/logs, /docs and http://host/v1"
    )
    assert redact_paths("1/2 and a/b/c relative") == "1/2 and a/b/c relative"
    assert redact_paths(None) is None and redact_paths("") == ""


# --- NUL characters in query strings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/v1/runs?status=%00",
        "/v1/runs?method=a%00b",
        "/v1/generations?status=%00",
        "/v1/benchmarks?status=x%00",
        "/v1/checkpoints?run_id=%00",
        f"/a/{TOKEN}/api/state?x=%00",
    ],
)
def test_nul_characters_in_query_parameters_are_422(client, keys, url):
    r = client.get(url, headers=auth(keys["admin"]))
    assert r.status_code == 422, r.text
    e = err(r)
    assert e["field"] == url.split("?")[1].split("=")[0] and "NUL" in e["message"], e


# --- Gradio uploads -----------------------------------------------------------------------------------------------


def test_the_web_uis_upload_endpoint_is_refused(tmp_path):
    app = create_app(Settings(storage_root=tmp_path / "storage"), mount_ui=True)
    demo = app.state.webui
    with TestClient(app) as c:
        for url in ("/ui/gradio_api/upload", "/ui/gradio_api/upload?upload_id=abc"):
            r = c.post(url, files={"files": ("x.mp4", b"\x00" * 2_000_000, "video/mp4")})
            assert r.status_code == 403 and err(r)["code"] == "uploads_disabled", r.text
        assert c.get("/ui/gradio_api/upload_progress?upload_id=abc").status_code == 403
        assert c.get("/ui/", follow_redirects=True).status_code == 200  # the UI itself still loads
    assert not demo.upload_file_set


# --- rate limits ----------------------------------------------------------------------------------------------------


def test_request_rates_are_limited_per_key_per_token_and_per_address_with_retry_after(tmp_path):
    settings = Settings(
        storage_root=tmp_path / "storage",
        rate_limits=RateLimits(api_per_key="3/minute", annotator_per_token="2/minute", annotator_per_ip="3/minute"),
    )
    app = create_app(settings)
    read, other = new_key(settings, "read"), new_key(settings, "read")
    with TestClient(app) as c:
        for _ in range(3):
            assert c.get("/v1/runs", headers=auth(read)).status_code == 200
        r = c.get("/v1/runs", headers=auth(read))
        assert r.status_code == 429, r.text
        e = err(r)
        assert e["field"] == "rate_limits.api_per_key" and e["limit"] == "3 per 1 minute", e
        assert "rate_limits.api_per_key" in e["message"] and "3 per 1 minute" in e["message"], e
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert c.get("/v1/runs", headers=auth(other)).status_code == 200  # another key has its own budget
        for _ in range(3):  # no key: counted per client address
            assert c.get("/v1/runs").status_code == 401
        assert c.get("/v1/runs").status_code == 429
        assert c.get("/healthz").status_code == 200  # outside the limited paths

        t1, t2 = "ann_" + "C" * 43, "ann_" + "D" * 43
        for _ in range(2):
            assert c.get(f"/a/{t1}/api/state").status_code == 401
        r = c.get(f"/a/{t1}/api/state")
        assert r.status_code == 429 and err(r)["field"] == "rate_limits.annotator_per_token", r.text
        assert int(r.headers["retry-after"]) >= 1
        assert c.get(f"/a/{t2}/api/state").status_code == 401  # the 3rd counted from this address
        r = c.get(f"/a/{'ann_' + 'E' * 43}/api/state")
        assert r.status_code == 429 and err(r)["field"] == "rate_limits.annotator_per_ip", r.text


def test_rate_settings_are_validated_and_read_from_the_environment(monkeypatch, tmp_path):
    with pytest.raises(ValidationError):
        RateLimits(api_per_key="lots")
    monkeypatch.setenv("MOTIONLAB_RATE_API_PER_KEY", "10/second;100/minute")
    monkeypatch.setenv("MOTIONLAB_LIMIT_MAX_GENERATION_COST", "1000")
    s = Settings(storage_root=tmp_path)
    assert s.rate_limits.api_per_key == "10/second;100/minute" and s.limits.max_generation_cost == 1000
    assert RateLimits(api_per_key="").api_per_key == ""  # empty: no limit
