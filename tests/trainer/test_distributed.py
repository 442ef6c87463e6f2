"""The same loop under torchrun: two CPU processes with DDP over gloo train a few steps and export."""

import json
import subprocess
import sys

from trainer.models.generator import Generator


def test_torchrun_two_processes_gloo(tiny_pipeline_dir, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "backend.cli", "train", "sft", "--init", str(tiny_pipeline_dir), "--steps", "3",
           "--run-dir", str(run), "--set", "batch_size=1", "--set", "grad_accum=2", "--set", "checkpoint_every=2",
           "--set", "log_every=1", "--set", "data.num_videos=4"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**__import__("os").environ,
                                                                                "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3]  # rank 0 logs once per step
    assert (run / "checkpoints" / "step-00000003" / "trainer_state.pt").is_file()
    Generator.from_pretrained(run / "export")  # a loadable pipeline
