"""DMD and MoGAN run end to end at tiny scale (every ablation switch), export 3-step students, and resume exactly."""

import json

import pytest
import torch

from trainer.config import load_train_config
from trainer.loop import train_run
from trainer.models.generator import Generator

SMALL = {"batch_size": 1, "checkpoint_every": 1, "log_every": 1, "method_cfg": {"num_prompts": 8, "critic_steps": 1}}


def _last_log(run_dir):
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def test_dmd_exports_a_three_step_student(tiny_pipeline_dir, tmp_path):
    cfg = load_train_config("dmd", {**SMALL, "teacher": str(tiny_pipeline_dir), "steps": 2})
    out = train_run(cfg, tmp_path / "dmd", progress_bar=False)
    log = _last_log(tmp_path / "dmd")
    assert {"generator/loss", "fake_score/loss"} <= log.keys()
    assert all(torch.isfinite(torch.tensor(v)) for k, v in log.items() if k.endswith("/loss"))
    student = Generator.from_pretrained(out["export_dir"])
    assert student.sampling.kind == "few_step" and student.sampling.timesteps == [1000.0, 757.0, 522.0]
    teacher = Generator.from_pretrained(tiny_pipeline_dir)
    changed = any(
        not torch.equal(a, b) for a, b in zip(student.transformer.parameters(), teacher.transformer.parameters())
    )
    assert changed, "the generator was not updated"


def test_dmd_needs_a_teacher():
    from trainer.methods.dmd import DMD

    cfg = load_train_config("dmd", {})
    with pytest.raises(ValueError, match="'teacher'"):
        DMD(cfg, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(
    "switch, present, absent",
    [
        (
            {},
            {
                "generator/loss",
                "fake_score/loss",
                "generator_gan/loss",
                "disc/loss",
                "disc/l_d",
                "disc/r1",
                "disc/r2",
                "disc/r1r2_grad_ratio",
            },
            set(),
        ),
        ({"use_dmd": False}, {"generator_gan/loss", "disc/loss"}, {"generator/loss", "fake_score/loss"}),
        ({"use_r1r2": False}, {"disc/loss", "disc/l_d"}, {"disc/r1", "disc/r2", "disc/r1r2_grad_ratio"}),
        ({"disc_space": "video"}, {"generator_gan/loss", "disc/r1", "disc/r1r2_grad_ratio"}, set()),
    ],
)
def test_mogan_phases_and_ablations(tiny_pipeline_dir, tmp_path, switch, present, absent):
    over = {
        **SMALL,
        "teacher": str(tiny_pipeline_dir),
        "steps": 1,
        "method_cfg": {**SMALL["method_cfg"], "num_real": 2, "window_chunks": 2, **switch},
    }
    train_run(load_train_config("mogan", over), tmp_path / "m", progress_bar=False)
    log = _last_log(tmp_path / "m")
    assert present <= log.keys() and not (absent & log.keys())
    assert (tmp_path / "m" / "checkpoints" / "step-00000001" / "disc" / "model.safetensors").is_file()


def test_mogan_window_longer_than_video_is_refused(tiny_pipeline_dir):
    from trainer.methods.mogan import MoGAN

    cfg = load_train_config("mogan", {"teacher": str(tiny_pipeline_dir), "method_cfg": {"window_chunks": 9}})
    with pytest.raises(ValueError, match="window_chunks"):
        MoGAN(cfg, torch.device("cpu"), torch.float32)


@pytest.mark.slow  # the same runs stopped and resumed in-process, in the default suite: test_stop_and_resume.py
@pytest.mark.parametrize("method", ["dmd", "mogan"])
def test_kill_and_resume_is_exact(method, tiny_pipeline_dir, kill_and_resume, differing_weights):
    sets = [
        "batch_size=1",
        "checkpoint_every=2",
        "log_every=1",
        "method_cfg.num_prompts=8",
        "method_cfg.critic_steps=1",
    ]
    if method == "mogan":
        sets += ["method_cfg.num_real=4", "method_cfg.window_chunks=2"]
    ref, run = kill_and_resume(method, steps=6, kill_after=2, sets=sets, teacher=tiny_pipeline_dir)
    assert differing_weights(ref / "export", run / "export") == []
    la = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == list(range(1, 7))
    assert [r["generator/loss"] for r in la] == [r["generator/loss"] for r in lb]
