"""The same loop under torchrun: two CPU processes with DDP over gloo train, checkpoint, resume exactly, export."""

import json
import os
import subprocess

import pytest
import torch

from tests.trainer.ddp_helpers import torchrun_train
from trainer.models.generator import Generator

SETS = ["batch_size=4", "grad_accum=2", "checkpoint_every=2", "log_every=1", "data.num_videos=4"]


def _torchrun_sft(init, run, steps: int) -> None:
    cmd = torchrun_train("sft", run, steps, "--init", str(init), *[a for s in SETS for a in ("--set", s)])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]


# slow: three torchrun launches. The default suite has torchrun killed and restarted equal to an uninterrupted run, each
# rank resuming its own stream (tests/trainer/test_fsdp.py), and exact resume of a checkpoint in one process
@pytest.mark.slow
def test_torchrun_two_processes_gloo_resumes_exactly(tiny_pipeline_dir, tmp_path):
    _torchrun_sft(tiny_pipeline_dir, tmp_path / "straight", 4)
    run = tmp_path / "straight"
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3, 4]  # rank 0 logs once per step
    state = torch.load(run / "checkpoints" / "step-00000004" / "trainer_state.pt", weights_only=False)
    assert len(state["rng"]) == 2  # each rank's RNG is saved
    straight = Generator.from_pretrained(run / "export").transformer.state_dict()

    # stop after the checkpoint at step 2, then resume to 4: both ranks continue their own random streams
    _torchrun_sft(tiny_pipeline_dir, tmp_path / "resumed", 2)
    _torchrun_sft(tiny_pipeline_dir, tmp_path / "resumed", 4)
    resumed = Generator.from_pretrained(tmp_path / "resumed" / "export").transformer.state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_launch_local_averages_gradients_of_a_network_ddp_cannot_wrap(tmp_path):
    """The VAE's loss calls encode/decode, not forward, so it is not DDP-wrapped: the loop all-reduces its gradients.
    Each rank trains on its own clips; without the averaging the two ranks' weights would drift apart."""
    from tests.trainer.ddp_helpers import train_and_digest
    from trainer.config import load_train_config
    from trainer.distributed import launch_local

    cfg = load_train_config(
        "vae",
        {
            "steps": 2,
            "batch_size": 2,
            "checkpoint_every": 2,
            "log_every": 1,
            "data": {"num_videos": 4, "num_frames": 5, "height": 16, "width": 16},
            "method_cfg": {"clip_frames": 5},
        },
    )
    digests = launch_local(train_and_digest, cfg, tmp_path / "vae", nprocs=2)
    assert len(digests) == 2 and digests[0] == digests[1]
    logs = [json.loads(x) for x in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2] and (tmp_path / "vae" / "export" / "vae").is_dir()


def test_launch_local_reraises_a_rank_error_as_itself():
    import pytest

    from tests.trainer.ddp_helpers import fail_with_config_error
    from trainer.config import ConfigError
    from trainer.distributed import launch_local

    with pytest.raises(ConfigError, match="config field 'optim.lr'"):
        launch_local(fail_with_config_error, "optim.lr", nprocs=2)
