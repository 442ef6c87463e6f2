"""Kill training mid-run with SIGKILL, start it again: it resumes from the last checkpoint and ends with exactly
the weights of an uninterrupted run with the same seed."""

import json

import pytest

SETS = [
    "batch_size=2",
    "checkpoint_every=4",
    "log_every=1",
    "data.num_videos=6",
    "ema_decay=0.9",
    "optim.warmup_steps=2",
]


def test_sigkill_then_resume_matches_uninterrupted(tiny_pipeline_dir, kill_and_resume, differing_weights):
    ref, run = kill_and_resume("sft", steps=16, kill_after=8, sets=SETS, init=tiny_pipeline_dir)
    assert differing_weights(ref / "export", run / "export") == []
    # every step logged exactly once, with the same losses as the uninterrupted run
    la = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == list(range(1, 17))
    assert [r["transformer/loss"] for r in la] == [r["transformer/loss"] for r in lb]


def test_finished_run_is_a_noop_and_config_mismatch_is_refused(tiny_pipeline_dir, tmp_path):
    from trainer.config import ConfigError, load_train_config
    from trainer.loop import train_run

    over = {
        "init": str(tiny_pipeline_dir),
        "steps": 2,
        "batch_size": 1,
        "checkpoint_every": 1,
        "data": {"num_videos": 2},
    }
    first = train_run(load_train_config("sft", over), tmp_path / "r", progress_bar=False)
    again = train_run(load_train_config("sft", over), tmp_path / "r", progress_bar=False)
    assert again["resumed_from"] == 2 and again["export_dir"] == first["export_dir"]
    with pytest.raises(ConfigError, match="batch_size"):
        train_run(load_train_config("sft", {**over, "batch_size": 2}), tmp_path / "r", progress_bar=False)


def test_a_restarted_run_removes_the_checkpoint_a_killed_writer_left_half_written(tiny_pipeline_dir, tmp_path):
    from trainer.config import load_train_config
    from trainer.loop import latest_checkpoint, train_run

    over = {
        "init": str(tiny_pipeline_dir),
        "steps": 3,
        "batch_size": 1,
        "checkpoint_every": 2,
        "data": {"num_videos": 2},
    }
    run = tmp_path / "r"
    # as a worker killed while writing step 2's checkpoint leaves it: a temp directory, never renamed into place
    partial = run / "checkpoints" / ".tmp-step-00000002-4242"
    (partial / "transformer").mkdir(parents=True)
    (partial / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"cut short")
    out = train_run(load_train_config("sft", over), run, progress_bar=False)
    assert out["step"] == 3 and not partial.exists()
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ["step-00000002", "step-00000003"] and latest_checkpoint(run).name == left[-1]
