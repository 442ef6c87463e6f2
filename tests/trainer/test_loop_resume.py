"""Kill training mid-run with SIGKILL, start it again: it resumes from the last checkpoint and ends with exactly
the weights of an uninterrupted run with the same seed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file


def _cmd(init, run_dir, steps=16):
    sets = ["batch_size=2", "checkpoint_every=4", "log_every=1", "data.num_videos=6", "ema_decay=0.9",
            "optim.warmup_steps=2"]
    cmd = [sys.executable, "-m", "backend.cli", "train", "sft", "--init", str(init), "--steps", str(steps),
           "--run-dir", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _run(cmd):
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)


def _weights(run_dir):
    return load_file(str(run_dir / "export" / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted(tiny_pipeline_dir, tmp_path):
    ref = tmp_path / "ref"
    _run(_cmd(tiny_pipeline_dir, ref))

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(tiny_pipeline_dir, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    target = run / "checkpoints" / "step-00000008"
    while not target.exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "export").exists()

    _run(_cmd(tiny_pipeline_dir, run))
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    # every step logged exactly once, with the same losses as the uninterrupted run
    la = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == list(range(1, 17))
    assert [r["transformer/loss"] for r in la] == [r["transformer/loss"] for r in lb]


def test_finished_run_is_a_noop_and_config_mismatch_is_refused(tiny_pipeline_dir, tmp_path):
    from trainer.config import ConfigError, load_train_config
    from trainer.loop import train_run

    over = {"init": str(tiny_pipeline_dir), "steps": 2, "batch_size": 1, "checkpoint_every": 1,
            "data": {"num_videos": 2}}
    first = train_run(load_train_config("sft", over), tmp_path / "r", progress_bar=False)
    again = train_run(load_train_config("sft", over), tmp_path / "r", progress_bar=False)
    assert again["resumed_from"] == 2 and again["export_dir"] == first["export_dir"]
    with pytest.raises(ConfigError, match="batch_size"):
        train_run(load_train_config("sft", {**over, "batch_size": 2}), tmp_path / "r", progress_bar=False)
