"""The full-architecture rehearsal: Wan2.1-T2V-1.3B's widths at 2 blocks, every method under torchrun with FSDP2 on
2 CPU ranks, from preprocessed shards; one iteration, a resume for the second, and an export diffusers loads."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_every_method_rehearses_the_full_architecture_on_two_ranks(tmp_path):
    out = tmp_path / "rehearsal"
    proc = subprocess.run(
        [sys.executable, "bench/rehearsal.py", "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for method in ("sft", "dmd", "mogan", "vdot", "dfdpo"):
        run = out / "runs" / method
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2], (method, steps)  # the second launch resumed from the first's checkpoint
        ckpt = run / "checkpoints" / "step-00000002"
        assert (ckpt / "sharded").is_dir() and (ckpt / "trainer_state.pt").is_file(), method  # DCP, both ranks
        layout = (run / "config.yaml").read_text()
        assert "world_size: 2" in layout and "parallel: fsdp" in layout, method
        index = json.loads((run / "export" / "model_index.json").read_text())
        assert index["_class_name"] == "WanPipeline", (method, index)
    assert "planned GiB" in proc.stdout
    shutil.rmtree(out)  # tens of gigabytes of full-width checkpoints and exports
