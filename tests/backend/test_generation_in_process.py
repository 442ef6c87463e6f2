"""Sync generations run in the API process (``settings.sync_generation == "api"``, the default) on both stacks.

The real app, database and tiny model; no worker is running, so a finished video proves the API made it. Concurrent
requests meet in the one serving batcher and still each get their own seed's video; a failure, a timeout and the
worker path (``"worker"``) are covered too.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from backend.db.models import Job, Video
from backend.db.session import session_scope
from tests.backend.backend_helpers import auth, queue_depth


@pytest.fixture(scope="module")
def checkpoint(client, keys, stack, tiny_pipeline_dir) -> str:
    name = f"inproc-{stack.storage_root.name}"[:60]
    r = client.post("/v1/checkpoints", json={"name": name, "path": str(tiny_pipeline_dir)}, headers=auth(keys["admin"]))
    assert r.status_code == 201, r.text
    return name


BODY = {"prompt": "a red square moves right", "num_frames": 5, "height": 16, "width": 16, "timeout_s": 120}


def test_sync_generation_runs_in_the_api_process(client, keys, stack, checkpoint):
    depth = queue_depth(stack, "infer")
    r = client.post(
        "/v1/generations", json={**BODY, "checkpoint": checkpoint, "seed": 11}, headers=auth(keys["generate"])
    )
    assert r.status_code == 201, r.text
    gen = r.json()
    assert gen["status"] == "succeeded" and gen["video"]["num_frames"] == 5
    assert queue_depth(stack, "infer") == depth  # nothing went through the queue
    v = client.get(gen["video"]["url"], headers=auth(keys["read"]))
    assert v.status_code == 200 and hashlib.sha256(v.content).hexdigest() == gen["video"]["sha256"]
    with session_scope(stack, write=False) as db:
        job, video = db.get(Job, gen["id"]), db.get(Video, gen["video"]["id"])
        assert job.worker_id is None and job.attempts == 1 and job.started_at is not None
        sampler = video.params["sampler"]
    assert sampler["seed"] == 11 and sampler["network_evaluations"] >= 1
    assert set(sampler["timings"]) >= {"text_encoding", "denoising", "vae_decoding", "video_encoding"}


def test_concurrent_sync_generations_are_batched_and_each_gets_its_own_video(client, keys, stack, checkpoint):
    seeds = list(range(200, 206))

    def one(seed: int) -> dict:  # two keys: each may have 4 generations in flight
        r = client.post(
            "/v1/generations",
            json={**BODY, "checkpoint": checkpoint, "seed": seed},
            headers=auth(keys["admin" if seed % 2 else "all"]),
        )
        assert r.status_code == 201, r.text
        return r.json()

    with ThreadPoolExecutor(len(seeds)) as ex:
        gens = list(ex.map(one, seeds))
    with session_scope(stack, write=False) as db:
        samplers = [db.get(Video, g["video"]["id"]).params["sampler"] for g in gens]
    assert [s["seed"] for s in samplers] == seeds
    assert len({g["video"]["sha256"] for g in gens}) == len(seeds)
    assert max(s["batch_size"] for s in samplers) > 1, [s["batch_size"] for s in samplers]
    # batching changes nothing: the same seed alone gives the same video bytes
    alone = one(seeds[2])
    assert alone["video"]["sha256"] == gens[2]["video"]["sha256"]


def test_a_failed_in_process_generation_fails_its_job_with_the_reason(client, keys, stack, checkpoint):
    # a frame count that is not 1 + 4k does not fit the VAE: the generation itself raises, after the request
    # was accepted
    r = client.post(
        "/v1/generations", json={**BODY, "checkpoint": checkpoint, "num_frames": 6}, headers=auth(keys["generate"])
    )
    assert r.status_code == 422 and "1 + 4k" in r.json()["error"]["message"], r.text
    job_id = r.json()["error"]["message"].split()[1]
    with session_scope(stack, write=False) as db:
        job = db.get(Job, job_id)
        assert job.status == "failed" and job.worker_id is None and "num_frames" in job.error


def test_a_sync_generation_past_its_timeout_answers_202_and_still_finishes(client, keys, stack, checkpoint):
    r = client.post(
        "/v1/generations",
        json={
            **BODY,
            "checkpoint": checkpoint,
            "seed": 3,
            "num_frames": 33,
            "height": 64,
            "width": 64,
            "timeout_s": 0.1,
        },
        headers=auth(keys["generate"]),
    )
    assert r.status_code == 202 and r.json()["status"] == "running", r.text
    job_id = r.json()["id"]
    import time

    deadline = time.monotonic() + 120
    while (g := client.get(f"/v1/generations/{job_id}", headers=auth(keys["read"])).json())["status"] == "running":
        assert time.monotonic() < deadline, "the generation never finished"
        time.sleep(0.1)
    assert g["status"] == "succeeded" and g["video"]["num_frames"] == 33


def test_worker_mode_queues_sync_generations(stack, keys, checkpoint):
    from backend.api.main import create_app

    worker_mode = stack.model_copy(update={"sync_generation": "worker"})
    with TestClient(create_app(worker_mode, migrate=False)) as c:
        depth = queue_depth(stack, "infer")
        r = c.post(
            "/v1/generations", json={**BODY, "checkpoint": checkpoint, "timeout_s": 0.3}, headers=auth(keys["generate"])
        )
        assert r.status_code == 202 and r.json()["status"] == "queued", r.text  # no worker runs here
        assert queue_depth(stack, "infer") == depth + 1
        c.post(f"/v1/generations/{r.json()['id']}/cancel", headers=auth(keys["generate"]))


def _job_count(stack) -> int:
    from sqlalchemy import func, select

    with session_scope(stack, write=False) as db:
        return db.scalar(select(func.count()).select_from(Job))


def test_a_sync_generation_checks_the_key_before_it_inserts_anything(client, keys, stack, checkpoint):
    before = _job_count(stack)
    body = {**BODY, "checkpoint": checkpoint}
    r = client.post("/v1/generations", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key", r.text
    r = client.post("/v1/generations", json=body, headers=auth(keys["read"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", r.text
    # an out-of-range field from a caller without a valid key is still a 401: the key is checked first
    r = client.post("/v1/generations", json={**body, "seed": -1}, headers=auth("ml_" + "x" * 43))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
    assert _job_count(stack) == before


@pytest.mark.parametrize("mode", ["sync", "job"])
def test_a_malformed_generation_body_is_answered_only_to_a_caller_with_a_generate_key(
    client, keys, stack, checkpoint, mode
):
    good = {**BODY, "checkpoint": checkpoint, "mode": mode}
    bad = {
        "seed": {**good, "seed": "three"},
        "prompt": {k: v for k, v in good.items() if k != "prompt"},
        "colour": {**good, "colour": "red"},
    }
    before = _job_count(stack)
    for field, body in bad.items():
        r = client.post("/v1/generations", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key", (field, r.text)
        r = client.post("/v1/generations", json=body, headers=auth("ml_" + "x" * 43))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (field, r.text)
        r = client.post("/v1/generations", json=body, headers=auth(keys["read"]))
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", (field, r.text)
        r = client.post("/v1/generations", json=body, headers=auth(keys["generate"]))
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (field, r.text)
    r = client.post("/v1/generations", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 401, r.text
    r = client.post(
        "/v1/generations", content=b"{not json", headers={"Content-Type": "application/json", **auth(keys["generate"])}
    )
    assert r.status_code == 422 and "invalid JSON" in r.json()["error"]["message"], r.text
    assert _job_count(stack) == before


def test_the_generation_body_schema_is_documented(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v1/generations"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    assert op["requestBody"]["required"] is True
    assert set(schema["required"]) == {"checkpoint", "prompt"}
    assert schema["properties"]["mode"]["enum"] == ["sync", "job"]


def test_a_sync_generation_answers_503_when_no_generation_thread_frees_up(stack, keys, checkpoint):
    import threading

    from backend.api.main import create_app

    one_thread = stack.model_copy(update={"sync_generation_threads": 1})
    release = threading.Event()
    with TestClient(create_app(one_thread, migrate=False)) as c:
        c.app.state.generation_pool.submit(release.wait, 60)  # the only generation thread is busy
        try:
            before = _job_count(stack)
            r = c.post(
                "/v1/generations",
                json={**BODY, "checkpoint": checkpoint, "timeout_s": 0.3},
                headers=auth(keys["generate"]),
            )
            assert r.status_code == 503 and r.json()["error"]["code"] == "generation_threads_busy", r.text
            assert "timeout_s=0.3" in r.json()["error"]["message"] and r.headers["retry-after"] == "5"
            assert _job_count(stack) == before  # nothing was inserted, nothing will be
        finally:
            release.set()
        c.app.state.generation_pool.shutdown(wait=True)
        assert _job_count(stack) == before


def test_a_video_file_cut_short_is_answered_410(client, keys, stack, checkpoint):
    from backend.storage import ArtifactStore

    r = client.post(
        "/v1/generations", json={**BODY, "checkpoint": checkpoint, "seed": 21}, headers=auth(keys["generate"])
    )
    assert r.status_code == 201, r.text
    video = r.json()["video"]
    path = ArtifactStore(stack.storage_root).path("videos", video["id"], ".mp4")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # what a power cut before writeback can leave
    r = client.get(video["url"], headers=auth(keys["read"]))
    assert r.status_code == 410 and f"{len(data) // 2} bytes" in r.json()["error"]["message"], r.text
    path.unlink()
    r = client.get(video["url"], headers=auth(keys["read"]))
    assert r.status_code == 410 and "missing" in r.json()["error"]["message"], r.text


def test_serving_settings_choose_the_fast_paths_and_batch_size_and_each_video_records_them(
    tmp_path, tiny_pipeline_dir, keys_factory
):
    from backend.api.main import create_app
    from backend.core.config import Serving, Settings

    settings = Settings(
        storage_root=tmp_path / "storage",
        serving=Serving(dtype="bfloat16", vae_dtype="bfloat16", max_batch=2, batch_window_ms=200),
    )
    app = create_app(settings)  # migrates the new database
    keys = keys_factory(settings)
    with TestClient(app) as c:
        r = c.post(
            "/v1/checkpoints", json={"name": "bf16-served", "path": str(tiny_pipeline_dir)}, headers=auth(keys["admin"])
        )
        assert r.status_code == 201, r.text

        def one(seed: int) -> dict:
            r = c.post(
                "/v1/generations",
                json={**BODY, "checkpoint": "bf16-served", "seed": seed},
                headers=auth(keys["generate"]),
            )
            assert r.status_code == 201, r.text
            return r.json()

        with ThreadPoolExecutor(4) as ex:
            gens = list(ex.map(one, range(300, 304)))
    with session_scope(settings, write=False) as db:
        samplers = [db.get(Video, g["video"]["id"]).params["sampler"] for g in gens]
    assert [s["seed"] for s in samplers] == list(range(300, 304))
    assert all(
        s["fast_paths"]
        == {
            "dtype": "bfloat16",
            "vae_dtype": "bfloat16",
            "compile": False,
            "channels_last_vae": True,
            "sliced_decode": None,
        }
        for s in samplers
    ), samplers[0]["fast_paths"]
    assert max(s["batch_size"] for s in samplers) <= 2  # four at once, at most two per batch


def test_a_flowmo_generation_records_its_settings_and_extra_passes(client, keys, stack, checkpoint):
    body = {**BODY, "checkpoint": checkpoint, "seed": 31, "num_frames": 9, "steps": 4}
    plain = client.post("/v1/generations", json=body, headers=auth(keys["generate"]))
    guided = client.post(
        "/v1/generations",
        json={**body, "sampler": "flowmo", "flowmo_eta": 0.5, "flowmo_stop": 2},
        headers=auth(keys["generate"]),
    )
    assert plain.status_code == 201 and guided.status_code == 201, plain.text + guided.text
    assert guided.json()["params"]["sampler"] == "flowmo" and guided.json()["params"]["flowmo_eta"] == 0.5
    with session_scope(stack, write=False) as db:
        p, g = (db.get(Video, r.json()["video"]["id"]).params["sampler"] for r in (plain, guided))
    assert p["sampler"] == "default" and g["sampler"] == "flowmo"
    assert g["flowmo"]["guided_steps"] == 2 and g["flowmo"]["eta"] == 0.5 and g["flowmo"]["iterations"] == 1
    assert g["network_evaluations"] == p["network_evaluations"] + 2 * 2  # each guided step adds a CFG pair
    assert g["flowmo"]["backward_evaluations"] == 4
    assert guided.json()["video"]["sha256"] != plain.json()["video"]["sha256"]


@pytest.mark.parametrize(
    "extra, field, limit",
    [
        ({"sampler": "flowmo", "flowmo_eta": 0}, "flowmo_eta", 0),
        ({"sampler": "flowmo", "flowmo_eta": 500}, "flowmo_eta", 100),
        ({"sampler": "flowmo", "flowmo_iterations": 11}, "flowmo_iterations", 10),
        ({"sampler": "flowmo", "flowmo_start": -1}, "flowmo_start", 0),
        ({"sampler": "flowmo", "steps": 4, "flowmo_stop": 5}, "flowmo_stop", 4),  # past the sampler's steps
        ({"flowmo_eta": 0.5}, "flowmo_eta", None),  # a FlowMo setting without sampler "flowmo"
        ({"sampler": "dpm"}, "sampler", None),
    ],
)
def test_bad_flowmo_settings_are_answered_422_naming_the_field_and_limit(
    client, keys, stack, checkpoint, extra, field, limit
):
    before = _job_count(stack)
    r = client.post("/v1/generations", json={**BODY, "checkpoint": checkpoint, **extra}, headers=auth(keys["generate"]))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field and err.get("limit") == limit, err
    assert _job_count(stack) == before
