"""VDOT method: relativistic losses by hand, every ablation end to end, the even/odd alternation of updates,
and exact resume after SIGKILL. Tiny and CPU-only:

    python -m pytest tests/trainer/methods/test_vdot.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import ConfigError, load_train_config
from trainer.loop import train_run
from trainer.methods.vdot import relativistic_d_loss, relativistic_g_loss

# Tiny everything: 2 samples, 2 critic updates per generator update, a handful of prompts and real clips.
SMALL = {
    "batch_size": 2,
    "log_every": 1,
    "data": {"num_videos": 4},
    "method_cfg": {"num_prompts": 6, "num_real": 4, "critic_steps": 2, "ot_max_iter": 100},
}


def _cfg(teacher, steps, method_cfg=None, **over):
    o = json.loads(json.dumps(SMALL))
    o["method_cfg"].update(method_cfg or {})
    o.update(teacher=str(teacher), steps=steps, **over)
    return load_train_config("vdot", o)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _ckpt(run_dir: Path, step: int, net: str) -> dict[str, torch.Tensor]:
    d = run_dir / "checkpoints" / f"step-{step:08d}" / net
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ pure losses


def test_relativistic_losses_by_hand():
    d_fake = torch.tensor([1.0, 2.0])
    d_real = torch.tensor([0.5, 3.0])
    # gap = D_f - D_r = [0.5, -1.0]
    assert relativistic_g_loss(d_fake, d_real).item() == pytest.approx(-(0.5 - 1.0) / 2)  # 0.25
    assert relativistic_d_loss(d_fake, d_real).item() == pytest.approx((0.5 - 1.0) / 2)  # -0.25
    sp = lambda x: math.log1p(math.exp(x))
    assert relativistic_g_loss(d_fake, d_real, "softplus").item() == pytest.approx((sp(-0.5) + sp(1.0)) / 2)
    assert relativistic_d_loss(d_fake, d_real, "softplus").item() == pytest.approx((sp(0.5) + sp(-1.0)) / 2)
    with pytest.raises(ValueError, match="paired"):
        relativistic_g_loss(d_fake, torch.zeros(3))


# ------------------------------------------------------------------------------- full method: alternation


def test_full_vdot_alternates_generator_objectives_and_critics(tiny_pipeline_dir, tmp_path):
    run = tmp_path / "full"
    cfg = _cfg(tiny_pipeline_dir, 3, checkpoint_every=1, keep_checkpoints=5)
    train_run(cfg, run, progress_bar=False)

    recs = _records(run)
    assert [r["step"] for r in recs] == [1, 2, 3]
    # step index 0 (even): OTD + DMD and fake-score updates; index 1 (odd): GAN and discriminator updates.
    assert recs[0]["phase_gan"] == 0.0 and recs[1]["phase_gan"] == 1.0 and recs[2]["phase_gan"] == 0.0
    for key in ("generator/otd", "generator/dmd", "generator/loss", "fake_score/loss"):
        assert math.isfinite(recs[0][key]), key
    assert not any(k.startswith(("disc/", "generator_gan/")) for k in recs[0])
    for key in (
        "generator_gan/loss",
        "generator_gan/d_fake",
        "generator_gan/d_real",
        "disc/loss",
        "disc/acc",
    ):
        assert math.isfinite(recs[1][key]), key
    # L = L_OTD + lambda L_DMD with lambda = 1; the GAN loss is -(D_f - D_r) (linear form).
    r0 = recs[0]
    assert r0["generator/loss"] == pytest.approx(r0["generator/otd"] + r0["generator/dmd"], rel=1e-5)
    r1 = recs[1]
    assert r1["generator_gan/loss"] == pytest.approx(
        r1["generator_gan/d_real"] - r1["generator_gan/d_fake"], rel=1e-4, abs=1e-6
    )
    # every record carries the latest value of both phases' keys
    assert recs[2]["disc/loss"] == recs[1]["disc/loss"] and recs[2]["generator/loss"] != recs[0]["generator/loss"]

    # Which networks moved on which step (checkpoints after steps 1, 2, 3; the teacher is the init of both
    # nets).
    from trainer.models.generator import Generator

    teacher = {
        k: v.contiguous() for k, v in Generator.from_pretrained(tiny_pipeline_dir).transformer.state_dict().items()
    }
    w = {s: {n: _ckpt(run, s, n) for n in ("generator", "fake_score", "disc")} for s in (1, 2, 3)}
    assert not _same(w[1]["generator"], teacher) and not _same(w[1]["fake_score"], teacher)  # even step
    assert not _same(w[2]["generator"], w[1]["generator"])  # odd: generator (GAN) ...
    assert not _same(w[2]["disc"], w[1]["disc"])  # ... and discriminator
    assert _same(w[2]["fake_score"], w[1]["fake_score"])  # the D loss does not train the fake score
    assert not _same(w[3]["generator"], w[2]["generator"])  # even again: generator and fake score ...
    assert not _same(w[3]["fake_score"], w[2]["fake_score"])
    assert _same(w[3]["disc"], w[2]["disc"])  # ... but not D
    # the export is the few-step generator
    sampling = json.loads((run / "export" / "motionlab_sampling.json").read_text())
    assert sampling["kind"] == "few_step" and sampling["timesteps"] == cfg.method_cfg.timesteps


# ------------------------------------------------------------------------------------------------- ablations


@pytest.mark.parametrize(
    "switches, present, absent",
    [
        (
            {"use_otd": False, "use_gan": False},
            ["generator/dmd"],
            ["generator/otd", "disc/loss", "generator_gan/loss"],
        ),
        ({"use_gan": False}, ["generator/otd", "generator/dmd"], ["disc/loss", "generator_gan/loss"]),
        ({"use_otd": False}, ["generator/dmd", "disc/loss", "generator_gan/loss"], ["generator/otd"]),
        ({"gan_form": "softplus", "use_dmd": False}, ["generator/otd", "disc/loss"], ["generator/dmd"]),
    ],
    ids=["dmd-only", "no-gan", "no-otd", "softplus-no-dmd"],
)
def test_ablations_run_and_log_finite_losses(tiny_pipeline_dir, tmp_path, switches, present, absent):
    run = tmp_path / "run"
    train_run(_cfg(tiny_pipeline_dir, 2, switches, checkpoint_every=2), run, progress_bar=False)
    recs = _records(run)
    last = recs[-1]
    for key in present + ["generator/loss", "fake_score/loss"]:
        assert key in last and math.isfinite(last[key]), key
    for key in absent:
        assert key not in last, key
    nets = {p.name for p in (run / "checkpoints" / "step-00000002").iterdir() if p.is_dir()}
    assert nets == (
        {"generator", "fake_score", "disc"} if switches.get("use_gan", True) else {"generator", "fake_score"}
    )
    if not switches.get("use_gan", True):  # without GAN every step is a distribution-matching step
        assert [r["phase_gan"] for r in recs] == [0.0, 0.0]
        assert recs[0]["generator/loss"] != recs[1]["generator/loss"]


def test_bad_switches_and_blocks_are_refused(tiny_pipeline_dir):
    from trainer.methods.vdot import VDOT

    with pytest.raises(ConfigError, match="use_otd"):
        VDOT(
            _cfg(tiny_pipeline_dir, 1, {"use_otd": False, "use_dmd": False}),
            torch.device("cpu"),
            torch.float32,
        )
    with pytest.raises(ConfigError, match="disc_blocks"):
        VDOT(_cfg(tiny_pipeline_dir, 1, {"disc_blocks": [1, 3, 6]}), torch.device("cpu"), torch.float32)


# ---------------------------------------------------------------------------------------------------- resume


RESUME_SETS = [
    "batch_size=2",
    "checkpoint_every=2",
    "log_every=1",
    "ema_decay=0.9",
    "data.num_videos=4",
    "method_cfg.num_prompts=6",
    "method_cfg.num_real=4",
    "method_cfg.critic_steps=2",
    "method_cfg.ot_max_iter=100",
]


@pytest.mark.slow  # the same runs stopped and resumed in-process, in the default suite: test_stop_and_resume.py
def test_kill_and_resume_is_exact(tiny_pipeline_dir, kill_and_resume, differing_weights, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the training subprocesses inherit it
    # killed once step 2 is saved: one even and one odd iteration behind it, both kinds ahead of it
    ref, run = kill_and_resume("vdot", steps=6, kill_after=2, sets=RESUME_SETS, teacher=tiny_pipeline_dir)
    assert differing_weights(ref / "export", run / "export") == []  # the EMA generator
    # generator, fake score, discriminator and the EMA state, bit for bit
    final = Path("checkpoints") / "step-00000006"
    assert differing_weights(ref / final, run / final) == []
    la, lb = _records(ref), _records(run)
    assert [r["step"] for r in lb] == list(range(1, 7))
    for key in ("generator/loss", "fake_score/loss", "generator_gan/loss", "disc/loss"):
        assert [r.get(key) for r in la] == [r.get(key) for r in lb], key


def test_full_preset_names_missing_weights(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from backend.cli import app

    monkeypatch.setenv("MOTIONLAB_WEIGHTS_DIR", str(tmp_path))
    res = CliRunner().invoke(
        app,
        ["train", "vdot", "--preset", "full", "--init", str(tmp_path / "dmd-run"), "--run-dir", str(tmp_path / "run")],
    )
    assert res.exit_code == 2, res.output
    assert "Wan2.1-T2V-1.3B-Diffusers" in res.output
    assert not (tmp_path / "run" / "checkpoints").exists()
    cfg = load_train_config("vdot", preset="full")
    m = cfg.method_cfg
    assert m.disc_blocks == [13, 21, 29] and m.critic_steps == 5 and m.ot_reg == 0.2
    assert cfg.optim.lr == 2e-6 and m.fake_lr == 4e-7 and m.disc_lr == 4e-7 and cfg.optim.weight_decay == 0.0
