"""Real worker processes: delivery, recovery after a SIGKILL on every broker, training resume, cancel, generation.

python -m pytest tests/backend/test_backend_worker.py -q        (a few minutes on 2 CPU cores)
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.core.config import Settings
from backend.db.models import Job, Run, RunMetric
from backend.db.session import session_scope
from backend.worker.celery_app import make_celery
from backend.worker.dispatch import PING, enqueue
from tests.backend.backend_helpers import auth, children_of, wait_for
from tests.backend.conftest import AMQP_URL, REDIS_URL, SESSION_TAG, _reachable
from tests.conftest import pid_alive

pytestmark = pytest.mark.slow  # real worker and server processes

# a tiny run: a checkpoint every 2 steps, every step logged
# long enough that a test polling every 0.25 s sees it mid-run, even on a fast machine
TINY_TRAIN = {
    "steps": 16,
    "checkpoint_every": 2,
    "log_every": 1,
    "batch_size": 1,
    "data": {"num_videos": 8, "num_frames": 5, "height": 16, "width": 16},
}


def _job(settings: Settings, job_id: str) -> dict:
    with session_scope(settings) as db:
        j = db.get(Job, job_id)
        return {"status": j.status, "attempts": j.attempts, "result": j.result, "worker_id": j.worker_id}


def _run(settings: Settings, run_id: str) -> Run:
    with session_scope(settings) as db:
        return db.get(Run, run_id)


def _new_ping(settings: Settings, sleep: float = 0.0) -> str:
    from backend.crud.jobs import create_job

    with session_scope(settings) as db:
        return create_job(db, kind="ping", params={"sleep": sleep}, api_key_id=None).id


def _cancel_queued(settings: Settings) -> None:
    """Rows other tests left queued would be picked up first by a new worker: cancel them (their messages then
    become no-ops, which is itself the idempotency the tasks promise)."""
    from sqlalchemy import update

    from backend.db.models import Benchmark, utcnow

    with session_scope(settings) as db:
        for model in (Run, Job, Benchmark):
            db.execute(
                update(model)
                .where(model.status.in_(("queued", "running")))
                .values(status="cancelled", finished_at=utcnow())
            )


@pytest.fixture(params=["embedded", "postgres-redis", "postgres-rabbitmq"])
def any_broker(request, tmp_path):
    """Fresh settings per broker: embedded; PostgreSQL + Redis; PostgreSQL + RabbitMQ (unique queue prefixes)."""
    from backend.db.migrate import upgrade_to_head

    root = tmp_path / "storage"
    prefix = f"motionlab-test-{SESSION_TAG}-{secrets.token_hex(3)}."
    if request.param == "embedded":
        settings = Settings(storage_root=root)
    else:
        url = REDIS_URL if request.param == "postgres-redis" else AMQP_URL
        why = _reachable(url, 6379 if url.startswith("redis") else 5672)
        if why:
            pytest.skip(why)
        db_url = request.getfixturevalue("pg_database")
        # Redis's own redelivery (visibility_timeout) stays at its default hour: a killed worker's work must come
        # back through its row's lease, which is what these tests check
        options = {"global_keyprefix": prefix} if url.startswith("redis") else {}
        settings = Settings(
            storage_root=root,
            database_url=db_url,
            broker_url=url,
            queue_prefix=prefix,
            broker_transport_options=options,
        )
    upgrade_to_head(settings)
    yield settings
    if not settings.embedded_broker:
        with make_celery(settings).connection_for_write() as conn:
            for q in ("train", "eval", "infer"):
                with contextlib.suppress(Exception):  # a queue this test never declared: nothing to clean up
                    conn.default_channel.queue_delete(settings.queue_prefix + q)


@pytest.fixture
def embedded(tmp_path, keys_factory):
    """A fresh embedded deployment (what `motionlab serve` runs): settings, a test client and API keys."""
    from backend.api.main import create_app

    settings = Settings(storage_root=tmp_path / "storage")
    client = TestClient(create_app(settings))
    return settings, client, keys_factory(settings)


@pytest.fixture(params=["embedded", "postgres-redis"])
def deployment(request, tmp_path, keys_factory):
    """A fresh deployment per stack: embedded, or PostgreSQL + Redis (own queue prefix and storage root)."""
    from backend.api.main import create_app

    root = tmp_path / "storage"
    if request.param == "embedded":
        settings = Settings(storage_root=root)
    else:
        why = _reachable(REDIS_URL, 6379)
        if why:
            pytest.skip(why)
        prefix = f"motionlab-test-{SESSION_TAG}-{secrets.token_hex(3)}."
        settings = Settings(
            storage_root=root,
            database_url=request.getfixturevalue("pg_database"),
            broker_url=REDIS_URL,
            queue_prefix=prefix,
            broker_transport_options={"global_keyprefix": prefix},  # no broker redelivery within a test
        )
    client = TestClient(create_app(settings))
    return settings, client, keys_factory(settings)


def test_ping_roundtrip_and_sigkill_redelivery(any_broker, start_worker):
    """A worker SIGKILLed mid-task: the next worker finds the row's owner dead, queues it again and completes it (a
    message RabbitMQ redelivers as well is a duplicate the lease turns away)."""
    settings = any_broker
    celery = make_celery(settings)
    quick, slow = _new_ping(settings), _new_ping(settings, sleep=6.0)
    enqueue(celery, PING, quick)
    enqueue(celery, PING, slow)
    w1 = start_worker(settings, "infer")
    wait_for(lambda: _job(settings, quick)["status"] == "succeeded", 90, "the quick ping", on_timeout=w1.tail)
    wait_for(lambda: _job(settings, slow)["status"] == "running", 60, "the slow ping to start", on_timeout=w1.tail)
    children = w1.children()
    assert children, "prefork pool process expected"
    w1.sigkill()
    # the pool process dies with its parent (no orphan keeps working on the task)
    wait_for(lambda: not any(pid_alive(c) for c in children), 10, "pool processes to die with the worker")
    assert _job(settings, slow)["status"] == "running"  # nobody finished or failed it
    w2 = start_worker(settings, "infer")
    wait_for(
        lambda: _job(settings, slow)["status"] == "succeeded",
        120,
        "redelivery to the second worker",
        on_timeout=w2.tail,
    )
    job = _job(settings, slow)
    assert job["attempts"] == 2 and job["result"]["pid"] != children[0] and job["worker_id"] is None
    # the quick one ran exactly once; a re-run of a finished row would be a no-op anyway
    assert _job(settings, quick)["attempts"] == 1


@pytest.mark.parametrize("nproc", [1, 2])
def test_training_worker_sigkill_resumes_from_last_checkpoint(deployment, start_worker, nproc):
    """With nproc=2 the pool process launches two rank processes (trainer.launch): they die with the worker too."""
    settings, client, keys = deployment
    r = client.post(
        "/v1/runs",
        json={
            "method": "sft",
            "name": "kill-me",
            "nproc": nproc,
            "config": {**TINY_TRAIN, "batch_size": nproc},
        },  # the batch is global
        headers=auth(keys["train"]),
    )
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    run_dir = settings.storage_root / "runs" / run_id
    w1 = start_worker(settings, "train")

    def mid_run() -> bool:
        run = _run(settings, run_id)
        ckpts = list((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else []
        return run.status == "running" and run.step >= 3 and bool(ckpts)

    wait_for(mid_run, 300, "the run to pass its first checkpoint", on_timeout=w1.tail)
    killed_at = _run(settings, run_id).step
    assert killed_at < TINY_TRAIN["steps"], "the run finished before the kill; make it longer"
    children = w1.children()
    ranks = [pid for c in children for pid in children_of(c)]
    assert len(ranks) == (nproc if nproc > 1 else 0), ranks
    w1.sigkill()
    wait_for(
        lambda: not any(pid_alive(c) for c in children + ranks),
        15,
        "the pool process (and its ranks) to die with the worker",
    )
    from trainer.loop import latest_checkpoint

    # the newest complete checkpoint once nothing runs any more (the run may have passed killed_at before the kill)
    last_ckpt = int(latest_checkpoint(run_dir).name.split("-")[1])
    time.sleep(1.0)
    assert _run(settings, run_id).status == "running"

    w2 = start_worker(settings, "train")
    wait_for(
        lambda: _run(settings, run_id).status in ("succeeded", "failed"),
        420,
        "the resumed run to finish",
        on_timeout=lambda: w2.tail() + "\n--- first worker ---\n" + w1.tail(),
    )
    run = _run(settings, run_id)
    assert run.status == "succeeded", (run.error, w2.tail())
    assert run.attempts == 2 and run.step == TINY_TRAIN["steps"] and run.progress == 1.0

    # every step accounted for, each once: in the database and in the trainer's metrics.jsonl
    with session_scope(settings) as db:
        steps = [m.step for m in db.query(RunMetric).filter_by(run_id=run_id).order_by(RunMetric.step)]
    assert steps == list(range(1, TINY_TRAIN["steps"] + 1))
    file_steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert file_steps == list(range(1, TINY_TRAIN["steps"] + 1))

    # it resumed from the last checkpoint before the kill, not from scratch
    logs = client.get(f"/v1/runs/{run_id}/logs", headers=auth(keys["read"])).json()["items"]
    messages = [x["message"] for x in logs]
    resumed = [int(m.group(1)) for x in messages if (m := re.search(r"resumed from the checkpoint at step (\d+)", x))]
    assert resumed == [last_ckpt] and 2 <= last_ckpt < TINY_TRAIN["steps"]
    assert sum("attempt" in x and "started" in x for x in messages) == 2

    # the product is a registered checkpoint; no half-written checkpoint directories remain
    ckpts = client.get("/v1/checkpoints", params={"run_id": run_id}, headers=auth(keys["read"])).json()["items"]
    assert len(ckpts) == 1 and ckpts[0]["source"] == "run" and ckpts[0]["step"] == TINY_TRAIN["steps"]
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    if settings.embedded_broker:  # every message was taken: nothing left waiting on the broker
        from backend.worker.sqlite_broker import queued_counts

        counts = queued_counts(settings.storage_root / "broker.sqlite")
        assert all(n == 0 for n in counts.values()), counts


def test_training_cancel_stops_at_next_step_keeps_checkpoint_and_resumes(embedded, start_worker):
    settings, client, keys = embedded
    cfg = {**TINY_TRAIN, "steps": 60, "checkpoint_every": 100}  # the cancel (checked every 0.25 s) lands mid-run
    run_id = client.post("/v1/runs", json={"method": "sft", "config": cfg}, headers=auth(keys["train"])).json()["id"]
    run_dir = settings.storage_root / "runs" / run_id
    w = start_worker(settings, "train")
    wait_for(lambda: _run(settings, run_id).step >= 1, 300, "the first step", on_timeout=w.tail)
    r = client.post(f"/v1/runs/{run_id}/cancel", headers=auth(keys["train"]))
    assert r.status_code == 202 and r.json()["cancel_requested"]
    wait_for(lambda: _run(settings, run_id).status == "cancelled", 120, "the run to stop", on_timeout=w.tail)
    run = _run(settings, run_id)
    assert 1 <= run.step < cfg["steps"]
    # the loop saved a checkpoint at the step it stopped at (checkpoint_every alone would never have)
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert ckpts == [f"step-{run.step:08d}"]
    r = client.post(f"/v1/runs/{run_id}/resume", headers=auth(keys["train"]))
    assert r.status_code == 202
    wait_for(lambda: _run(settings, run_id).status == "succeeded", 300, "the resumed run", on_timeout=w.tail)
    logs = [x["message"] for x in client.get(f"/v1/runs/{run_id}/logs", headers=auth(keys["read"])).json()["items"]]
    assert f"resumed from the checkpoint at step {run.step}" in logs


def test_sync_generation_through_a_worker(stack, keys, start_worker, tiny_pipeline_dir):
    from backend.api.main import create_app

    client = TestClient(create_app(stack.model_copy(update={"sync_generation": "worker"})))
    name = f"gen-worker-{stack.storage_root.name}"[:60]
    r = client.post("/v1/checkpoints", json={"name": name, "path": str(tiny_pipeline_dir)}, headers=auth(keys["admin"]))
    assert r.status_code == 201, r.text
    _cancel_queued(stack)
    start_worker(stack, "infer")
    body = {
        "checkpoint": name,
        "prompt": "a red square moves right",
        "seed": 7,
        "num_frames": 5,
        "height": 32,
        "width": 32,
        "timeout_s": 240,
    }
    r = client.post("/v1/generations", json=body, headers=auth(keys["generate"]))
    assert r.status_code == 201, r.text
    gen = r.json()
    assert gen["status"] == "succeeded" and gen["video"]["num_frames"] == 5
    assert (gen["video"]["height"], gen["video"]["width"]) == (32, 32)
    v = client.get(gen["video"]["url"], headers=auth(keys["read"]))
    assert v.status_code == 200 and v.headers["content-type"] == "video/mp4" and v.content[4:8] == b"ftyp"
    import hashlib

    assert hashlib.sha256(v.content).hexdigest() == gen["video"]["sha256"]
    from trainer.data.video_io import read_video

    path = Path(stack.storage_root) / "videos" / f"{gen['video']['id']}.mp4"
    frames, _fps = read_video(path)
    assert frames.shape[0] == 5 and frames.shape[1:3] == (32, 32)


def test_concurrent_generations_through_the_threaded_infer_worker(deployment, start_worker, tiny_pipeline_dir):
    """The infer worker as `motionlab serve` runs it (thread pool): overlapping requests are batched in the worker,
    and each request still gets a video made from its own seed."""
    settings, client, keys = deployment
    r = client.post(
        "/v1/checkpoints", json={"name": "tiny-threads", "path": str(tiny_pipeline_dir)}, headers=auth(keys["admin"])
    )
    assert r.status_code == 201, r.text
    _cancel_queued(settings)
    w = start_worker(settings, "infer", pool="threads", concurrency=8)
    seeds = list(range(100, 108))
    ids = []
    for i, seed in enumerate(seeds):  # job mode: all queued at once; each key may have 4 in flight
        body = {
            "checkpoint": "tiny-threads",
            "prompt": f"a red square moves {['left', 'right'][i % 2]}",
            "seed": seed,
            "num_frames": 5,
            "height": 32,
            "width": 32,
            "mode": "job",
        }
        r = client.post("/v1/generations", json=body, headers=auth(keys["generate" if i < 4 else "admin"]))
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])

    def finished():
        out = [client.get(f"/v1/generations/{i}", headers=auth(keys["read"])).json() for i in ids]
        return out if all(g["status"] in ("succeeded", "failed") for g in out) else None

    gens = wait_for(finished, 240, "8 generations", on_timeout=w.tail)
    assert [g["status"] for g in gens] == ["succeeded"] * 8, [g.get("error") for g in gens]
    from backend.db.models import Video

    with session_scope(settings, write=False) as db:
        samplers = [db.get(Video, g["video"]["id"]).params["sampler"] for g in gens]
    assert [s["seed"] for s in samplers] == seeds  # each answered with its own request's video
    assert len({g["video"]["sha256"] for g in gens}) == 8
    assert max(s["batch_size"] for s in samplers) > 1, [s["batch_size"] for s in samplers]


def test_benchmark_through_a_worker(embedded, start_worker, tiny_pipeline_dir):
    settings, client, keys = embedded
    r = client.post(
        "/v1/checkpoints", json={"name": "tiny-b", "path": str(tiny_pipeline_dir)}, headers=auth(keys["admin"])
    )
    assert r.status_code == 201, r.text
    body = {
        "name": "b",
        "checkpoints": ["tiny-b"],
        "prompts": ["a red square moves right"],
        "seeds": [0],
        "metrics": ["temporal_flickering", "dynamic_degree"],
        "num_frames": 5,
        "height": 32,
        "width": 32,
    }
    r = client.post("/v1/benchmarks", json=body, headers=auth(keys["train"]))
    assert r.status_code == 201, r.text
    bid = r.json()["id"]
    w = start_worker(settings, "eval")
    wait_for(
        lambda: (
            client.get(f"/v1/benchmarks/{bid}", headers=auth(keys["read"])).json()["status"] in ("succeeded", "failed")
        ),
        300,
        "the benchmark",
        on_timeout=w.tail,
    )
    b = client.get(f"/v1/benchmarks/{bid}", headers=auth(keys["read"])).json()
    assert b["status"] == "succeeded", (b["error"], w.tail())
    assert b["progress"] == 1.0
    rep = client.get(f"/v1/benchmarks/{bid}/report", headers=auth(keys["read"])).json()
    scores = {s["metric"]: s for s in rep["scores"]}
    assert set(scores) == {"temporal_flickering", "dynamic_degree"}
    assert all(s["checkpoint"] == "tiny-b" and s["backend"] == "lite" and s["seed"] == 0 for s in scores.values())
    assert 0.0 <= scores["temporal_flickering"]["value"] <= 1.0 and scores["dynamic_degree"]["value"] in (0.0, 1.0)
    assert rep["report"]["records"] == 2 and rep["report"]["table"]
    assert (settings.storage_root / "reports" / f"{bid}.md").is_file()


def test_benchmark_of_a_flowmo_row_through_a_worker(embedded, start_worker, tiny_pipeline_dir):
    """``NAME@flowmo`` in a benchmark is its own row: the same checkpoint sampled with FlowMo guidance."""
    settings, client, keys = embedded
    r = client.post(
        "/v1/checkpoints", json={"name": "tiny-f", "path": str(tiny_pipeline_dir)}, headers=auth(keys["admin"])
    )
    assert r.status_code == 201, r.text
    body = {
        "name": "f",
        "checkpoints": ["tiny-f", "tiny-f@flowmo"],
        "prompts": ["a red square moves right"],
        "seeds": [0],
        "metrics": ["temporal_flickering"],
        "num_frames": 9,
        "height": 32,
        "width": 32,
    }
    bad = client.post("/v1/benchmarks", json={**body, "checkpoints": ["tiny-nope@flowmo"]}, headers=auth(keys["train"]))
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "checkpoints[0]", bad.text
    r = client.post("/v1/benchmarks", json=body, headers=auth(keys["train"]))
    assert r.status_code == 201, r.text
    bid = r.json()["id"]
    w = start_worker(settings, "eval")
    wait_for(
        lambda: (
            client.get(f"/v1/benchmarks/{bid}", headers=auth(keys["read"])).json()["status"] in ("succeeded", "failed")
        ),
        300,
        "the benchmark",
        on_timeout=w.tail,
    )
    b = client.get(f"/v1/benchmarks/{bid}", headers=auth(keys["read"])).json()
    assert b["status"] == "succeeded", (b["error"], w.tail())
    rep = client.get(f"/v1/benchmarks/{bid}/report", headers=auth(keys["read"])).json()
    values = {s["checkpoint"]: s["value"] for s in rep["scores"]}
    assert set(values) == {"tiny-f", "tiny-f@flowmo"}, rep["scores"]
    assert values["tiny-f"] != values["tiny-f@flowmo"]  # the guided row is another video
