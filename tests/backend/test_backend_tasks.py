"""Task bodies called in-process (no broker): time-limit stop, idempotent redelivery, generation artifacts.

python -m pytest tests/backend/test_backend_tasks.py -q
"""

from __future__ import annotations

import pytest

from backend.core.config import get_settings
from backend.db.migrate import upgrade_to_head
from backend.db.models import Job, Run, RunMetric, Video, utcnow
from backend.db.session import session_scope
from backend.worker.liveness import hostname


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Tasks read their settings from MOTIONLAB_* (as in a worker process)."""
    for k in list(__import__("os").environ):
        if k.startswith("MOTIONLAB_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("MOTIONLAB_STORAGE_ROOT", str(tmp_path / "storage"))
    get_settings.cache_clear()
    settings = get_settings()
    upgrade_to_head(settings)
    yield settings
    get_settings.cache_clear()


def test_training_stops_cleanly_at_its_time_limit_keeping_a_checkpoint(env, monkeypatch):
    from backend.crud.runs import create_run
    from backend.worker import tasks

    monkeypatch.setenv("MOTIONLAB_TRAIN_SOFT_TIME_LIMIT_S", "1")  # the deadline passes after a few dozen steps
    get_settings.cache_clear()
    # far more steps than fit in the limit, so the run cannot finish in time
    total = 2000
    cfg = {
        "steps": total,
        "checkpoint_every": 10 * total,
        "log_every": 1,
        "batch_size": 1,
        "data": {"num_videos": 4, "num_frames": 5, "height": 16, "width": 16},
    }
    with session_scope(env) as db:
        run, _ = create_run(
            db,
            method="sft",
            config=cfg,
            preset="tiny",
            name=None,
            resolved_config=None,
            total_steps=total,
            api_key_id=None,
        )
    assert tasks.train_run(run.id) == {"outcome": "failed"}
    with session_scope(env) as db:
        row = db.get(Run, run.id)
        steps = [m.step for m in db.query(RunMetric).filter_by(run_id=run.id).order_by(RunMetric.step)]
        assert row.status == "failed" and "time limit" in row.error and "resume" in row.error
        assert 1 <= row.step < total and row.worker_id is None
        assert steps == list(range(1, row.step + 1))
    ckpts = sorted(p.name for p in (env.storage_root / "runs" / run.id / "checkpoints").glob("step-*"))
    assert ckpts == [f"step-{row.step:08d}"]
    # a duplicate delivery of the finished row does nothing
    assert tasks.train_run(run.id) == {"outcome": "done"}


def test_a_cancelled_run_whose_worker_died_ends_cancelled_on_redelivery(env, monkeypatch):
    """The worker was SIGKILLed after the cancel request: the redelivered message must not train again."""
    import trainer.loop
    from backend.crud.runs import create_run, request_cancel
    from backend.worker import tasks

    def must_not_train(*_args, **_kwargs):
        raise AssertionError("a cancelled run was trained again")

    monkeypatch.setattr(trainer.loop, "train_run", must_not_train)
    with session_scope(env) as db:
        run, _ = create_run(
            db,
            method="sft",
            config={"steps": 5},
            preset="tiny",
            name=None,
            resolved_config=None,
            total_steps=5,
            api_key_id=None,
        )
        run.status, run.worker_id, run.heartbeat_at, run.attempts = "running", f"{hostname()}:999999999:1", utcnow(), 1
        request_cancel(db, run)
    assert tasks.train_run(run.id) == {"outcome": "done"}
    with session_scope(env) as db:
        row = db.get(Run, run.id)
        assert row.status == "cancelled" and row.worker_id is None and row.finished_at is not None
        assert row.attempts == 1  # not delivered to training again
    assert tasks.train_run(run.id) == {"outcome": "done"}


def test_redelivered_finished_jobs_are_no_ops(env):
    from backend.crud.jobs import create_job
    from backend.worker import tasks

    with session_scope(env) as db:
        job = create_job(db, kind="ping", params={}, api_key_id=None)
    assert tasks.ping(job.id) == {"outcome": "succeeded"}
    assert tasks.ping(job.id) == {"outcome": "done"}
    assert tasks.ping("job_0000000000000000") == {"outcome": "missing"}
    with session_scope(env) as db:
        assert db.get(Job, job.id).attempts == 1


def test_generation_writes_one_video_artifact_and_row(env, tiny_pipeline_dir):
    from backend.crud.checkpoints import register_external
    from backend.crud.jobs import create_job
    from backend.worker import tasks

    with session_scope(env) as db:
        register_external(db, name="tiny", path=str(tiny_pipeline_dir))
        job = create_job(
            db,
            kind="generate",
            api_key_id=None,
            params={"checkpoint": "tiny", "prompt": "a ball", "seed": 1, "num_frames": 5, "height": 32, "width": 32},
        )
    out = tasks.generate(job.id)
    assert out["outcome"] == "succeeded"
    assert tasks.generate(job.id) == {"outcome": "done"}
    with session_scope(env) as db:
        videos = db.query(Video).filter_by(job_id=job.id).all()
        assert len(videos) == 1 and videos[0].id == out["video_id"] and videos[0].num_frames == 5
        assert db.get(Job, job.id).result["video_id"] == out["video_id"]
    files = list((env.storage_root / "videos").iterdir())
    assert [f.name for f in files] == [f"{out['video_id']}.mp4"]
    # a checkpoint reference that is a path is refused by the worker too, not resolved
    with session_scope(env) as db:
        bad = create_job(
            db, kind="generate", api_key_id=None, params={"checkpoint": str(tiny_pipeline_dir), "prompt": "x"}
        )
    assert tasks.generate(bad.id) == {"outcome": "failed"}
    with session_scope(env) as db:
        assert "no checkpoint or zoo entry" in db.get(Job, bad.id).error
