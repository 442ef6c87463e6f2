"""parallel=fsdp: FSDP2 on two CPU ranks over gloo, against DDP; sharded checkpoints survive SIGKILL; global batch.

One module fixture trains SFT six steps three ways and the tests read the results: FSDP and DDP in spawned ranks
(``launch_local``, the same code path as torchrun), and FSDP under ``torchrun`` via the CLI, SIGKILLed once its
step-2 checkpoint exists and started again.
"""

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer.ddp_helpers import torchrun_train
from trainer.config import ConfigError, batch_layout, load_train_config, load_yaml

STEPS = 6  # checkpoints at 2, 4, 6: the kill after 2 leaves a margin before the last one
OVERRIDES = {
    "batch_size": 8,
    "grad_accum": 2,
    "checkpoint_every": 2,
    "log_every": 1,
    "ema_decay": 0.5,
    "optim": {"lr": 1e-3, "warmup_steps": 0},
    "data": {"num_videos": 8},
}
# the same config as ``--set`` options of the command line
SETS = [f"{k}={v}" for k, v in OVERRIDES.items() if not isinstance(v, dict)]
SETS += [f"{k}.{sk}={sv}" for k, v in OVERRIDES.items() if isinstance(v, dict) for sk, sv in v.items()]
SETS += ["parallel=fsdp"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _weights(pipeline_dir) -> dict:
    (path,) = (pipeline_dir / "transformer").glob("*.safetensors")
    return load_file(str(path))


@pytest.fixture(scope="module")
def runs(tiny_pipeline_dir, tiny_student_dir, tmp_path_factory):
    from tests.trainer.fsdp_helpers import train_and_record
    from trainer.distributed import launch_local

    root = tmp_path_factory.mktemp("fsdp")
    cfgs = [
        (
            load_train_config("sft", {**OVERRIDES, "init": str(tiny_pipeline_dir), "steps": STEPS, "parallel": par}),
            root / par,
        )
        for par in ("fsdp", "ddp")
    ]  # fsdp first: its process is as fresh as torchrun's below
    ranks = launch_local(train_and_record, cfgs, (str(tiny_pipeline_dir), str(tiny_student_dir)), nprocs=2)
    out = {"root": root, "fsdp": [r[0] for r in ranks], "ddp": [r[1] for r in ranks], "mogan": [r[2] for r in ranks]}

    # torchrun, killed (the whole process group: agent and both ranks) once checkpoint 2 is complete; then again
    killed = root / "killed"
    cmd = torchrun_train(
        "sft", killed, STEPS, "--init", str(tiny_pipeline_dir), *[a for s in SETS for a in ("--set", s)]
    )
    proc = subprocess.Popen(cmd, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "step-00000002").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared in time"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out["killed_too_late"] = (killed / "checkpoints" / f"step-{STEPS:08d}").exists()
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_fsdp_matches_ddp_with_the_same_seed_and_global_batch(runs, tiny_pipeline_dir):
    fsdp, ddp = _weights(runs["root"] / "fsdp" / "export"), _weights(runs["root"] / "ddp" / "export")
    init = _weights(tiny_pipeline_dir)
    moved = max(float((fsdp[k] - init[k]).abs().max()) for k in fsdp)
    assert moved > 1e-3  # the EMA weights moved well beyond the tolerance below
    # the same arithmetic but for the order of the gradient reductions (all-reduce vs reduce-scatter)
    worst = max(float((fsdp[k] - ddp[k]).abs().max()) for k in fsdp)
    assert worst < 1e-5, worst
    la, lb = (
        (json.loads(x) for x in (runs["root"] / "fsdp" / "metrics.jsonl").read_text().splitlines()),
        (json.loads(x) for x in (runs["root"] / "ddp" / "metrics.jsonl").read_text().splitlines()),
    )
    for a, b in zip(la, lb, strict=True):
        assert a["transformer/loss"] == pytest.approx(b["transformer/loss"], rel=1e-4)
        assert a["transformer/grad_norm"] == pytest.approx(b["transformer/grad_norm"], rel=1e-4)


def test_micro_batches_split_the_global_batch_over_ranks_and_accumulation(runs):
    # global 8 = 2 ranks x 2 accumulation micro-steps x micro-batch 2, every step, on each rank, for both
    for par in ("fsdp", "ddp"):
        for rank in runs[par]:
            assert rank["micro_batch"] == 2
            assert rank["batches"] == [2] * (STEPS * 2)
    layout = load_yaml(runs["root"] / "fsdp" / "config.yaml")["layout"]
    assert layout == {"world_size": 2, "per_rank_batch_size": 4, "micro_batch_size": 2}
    # a saved config loads back as a config (the layout is a record, not an input)
    cfg = load_train_config("sft", load_yaml(runs["root"] / "fsdp" / "config.yaml"))
    assert cfg.batch_size == 8 and cfg.parallel == "fsdp"


def test_an_uneven_global_batch_is_refused_naming_the_split(tmp_path):
    from trainer.loop import train_run

    cfg = load_train_config("sft", {"batch_size": 6, "grad_accum": 2})
    with pytest.raises(ConfigError, match=r"'batch_size'.*batch_size=6.*world size 2 x grad_accum 2.*multiple of 4"):
        batch_layout(cfg, 2)
    assert batch_layout(cfg, 1) == {"world_size": 1, "per_rank_batch_size": 6, "micro_batch_size": 3}
    with pytest.raises(ConfigError, match="batch_size=3 .*world size 1 x grad_accum 2"):
        train_run(load_train_config("sft", {"batch_size": 3, "grad_accum": 2}), tmp_path / "r", progress_bar=False)
    assert not (tmp_path / "r").exists()


def test_trained_and_frozen_networks_are_sharded_per_block(runs):
    for report in runs["mogan"]:
        assert set(report) == {"generator", "fake_score", "disc", "teacher"}
        for name, r in report.items():
            assert all(r["units"]), (name, r["units"])  # root, every block, patch and condition embeddings
            assert 0.4 < r["share"] < 0.6, (name, r["share"])  # each rank holds about half
        assert not report["teacher"]["requires_grad"] and report["generator"]["requires_grad"]


def test_sigkill_under_torchrun_then_restart_equals_an_uninterrupted_run(runs):
    assert not runs["killed_too_late"], "killed after the last checkpoint: nothing left to resume"
    straight, resumed = _weights(runs["root"] / "fsdp" / "export"), _weights(runs["root"] / "killed" / "export")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    logs = [json.loads(x) for x in (runs["root"] / "killed" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (runs["root"] / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(1, STEPS + 1))
    assert [r["transformer/loss"] for r in logs] == [r["transformer/loss"] for r in ref]
    ckpt = runs["root"] / "killed" / "checkpoints" / f"step-{STEPS:08d}"
    assert (ckpt / "sharded" / ".metadata").is_file() and not list(ckpt.glob("transformer"))


def test_a_sharded_checkpoint_is_not_resumed_on_one_rank(runs, tiny_pipeline_dir, tmp_path):
    import shutil

    from trainer.loop import train_run

    run = tmp_path / "copy"
    shutil.copytree(runs["root"] / "fsdp", run, ignore=shutil.ignore_patterns("export"))
    before = (run / "config.yaml").read_text()
    cfg = load_train_config("sft", {**OVERRIDES, "init": str(tiny_pipeline_dir), "steps": 6, "parallel": "fsdp"})
    with pytest.raises(ConfigError, match="'parallel'.*is sharded.*more than one rank"):
        train_run(cfg, run, progress_bar=False)  # this process is one rank
    assert (run / "config.yaml").read_text() == before


def test_each_rank_resumes_its_own_random_stream(runs):
    def rng(run):
        return torch.load(
            runs["root"] / run / "checkpoints" / f"step-{STEPS:08d}" / "trainer_state.pt", weights_only=False
        )["rng"]

    straight, resumed = rng("fsdp"), rng("killed")
    assert len(straight) == len(resumed) == 2
    assert not torch.equal(straight[0]["torch"], straight[1]["torch"])  # the ranks draw different noise
    for a, b in zip(straight, resumed, strict=True):  # and each rank continued its own stream after the restart
        assert torch.equal(a["torch"], b["torch"]) and a["python"] == b["python"]
        assert (a["numpy"][1] == b["numpy"][1]).all()


SLOW_SETS = {
    "sft": ["--init", "tiny-teacher", "--set", "data.num_videos=8"],
    "dmd": ["--teacher", "tiny-teacher", "--set", "method_cfg.num_prompts=8"],
    "mogan": [
        "--teacher",
        "tiny-teacher",
        "--init",
        "tiny-dmd",
        "--set",
        "method_cfg.num_prompts=8",
        "--set",
        "method_cfg.num_real=8",
    ],
    "vdot": ["--teacher", "tiny-teacher", "--set", "method_cfg.num_prompts=8", "--set", "method_cfg.num_real=8"],
    "dfdpo": ["--init", "tiny-teacher", "--set", "data.num_videos=8"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SLOW_SETS))
def test_every_method_trains_and_resumes_under_torchrun_fsdp(method, tmp_path):
    """``torchrun --nproc-per-node 2 -m backend.cli train <m> --preset tiny --set parallel=fsdp --steps 3``, then
    ``--steps 4`` on the same run directory resumes from the sharded checkpoint of step 3."""
    run = tmp_path / method
    for steps in (3, 4):
        cmd = torchrun_train(method, run, steps, "--set", "parallel=fsdp", *SLOW_SETS[method])
        res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900, check=False)
        assert res.returncode == 0, res.stderr[-3000:]
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert logs[-1]["step"] == 4
    assert (run / "checkpoints" / "step-00000004" / "sharded" / ".metadata").is_file()
    assert (run / "export" / "model_index.json").is_file()
