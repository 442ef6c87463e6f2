"""DF-DPO method: the lose sample is exactly the win edited by the distortion in force, every mode runs end to
end with finite losses, the export keeps the init's sampling config, and resume after SIGKILL is exact.
Tiny, CPU only:

    python -m pytest tests/trainer/methods/test_dfdpo.py -q
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trainer.config import ConfigError, load_train_config
from trainer.data.distortions import BlockShuffle, build_distortion
from trainer.loop import train_run
from trainer.methods.dfdpo import DFDPO


def _cfg(init, steps, method_cfg=None, **over):
    o = {
        "init": str(init),
        "steps": steps,
        "batch_size": 2,
        "log_every": 1,
        "checkpoint_every": steps,
        "data": {"num_videos": 4},
        "method_cfg": method_cfg or {},
    }
    o.update(over)
    return load_train_config("dfdpo", o)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _method(init, run_dir, method_cfg=None) -> DFDPO:
    m = DFDPO(_cfg(init, 1, method_cfg), torch.device("cpu"), torch.float32)
    m.run_dir = run_dir
    m.setup_data(0, 1)
    return m


# ------------------------------------------------------------------------------------------------ the pairs


def test_lose_is_the_win_edited_by_the_distortion(tiny_pipeline_dir, tmp_path):
    m = _method(tiny_pipeline_dir, tmp_path)
    idx = [0, 1]
    wins = [m.data.clip(i) for i in idx]
    assert all(w.shape == (17, 32, 32, 3) and w.dtype == np.uint8 for w in wins)
    # the cached win latents are the VAE latents of the win clips
    torch.testing.assert_close(m.data.latents[idx], m.data.encode(wins), rtol=1e-4, atol=1e-5)

    pos = [10, 11]  # global data positions: they seed the edits
    m.distortion = build_distortion("reverse")
    x_w, x_l, lose = m.make_pair(idx, pos)
    for w, l in zip(wins, lose):
        assert np.array_equal(l, w[::-1])
    assert torch.equal(x_w, m.data.latents[idx])
    torch.testing.assert_close(x_l, m.data.encode([w[::-1] for w in wins]))
    moving = [k for k, w in enumerate(wins) if not np.array_equal(w, w[::-1])]
    # reversal changes the causal VAE's latents
    assert moving and not torch.allclose(x_l[moving], x_w[moving])

    m.distortion = build_distortion("color:r=10,g=-20,b=0")
    _, _, lose = m.make_pair(idx, pos)
    for w, l in zip(wins, lose):
        want = np.clip(w.astype(np.int16) + np.array([10, -20, 0], np.int16), 0, 255).astype(np.uint8)
        assert np.array_equal(l, want)

    m.distortion = build_distortion("shuffle:max_frac=0.2")
    _, _, lose = m.make_pair(idx, pos)
    for w, l, p in zip(wins, lose, pos):
        start, perm = BlockShuffle(0.2).block(17, m.edit_rng(p))  # the draw make_pair made, replayed
        assert 2 <= len(perm) <= 3  # one block of at most floor(0.2 * 17) frames
        want = w.copy()
        want[start : start + len(perm)] = w[start + perm]
        assert np.array_equal(l, want)

    # random edits are a function of the data position: the same positions give the same edits (what makes
    # resume exact), other positions (the next epoch's visit of the same clips) give new ones
    m.distortion = build_distortion("hybrid")
    _, a_l, a = m.make_pair(idx, pos)
    _, _, b = m.make_pair(idx, [12, 13])
    assert not any(np.array_equal(x, y) for x, y in zip(a, b))
    _, c_l, c = m.make_pair(idx, pos)
    assert all(np.array_equal(x, y) for x, y in zip(a, c)) and torch.equal(a_l, c_l)
    # next_batch hands out consecutive positions and the stream's clip indices
    m.data.stream.position = 4
    got_idx, got_pos = m.next_batch(3)
    assert got_pos == [4, 5, 6] and m.data.stream.position == 7 and len(got_idx) == 3


def test_mode_and_curriculum_choose_the_distortion(tiny_pipeline_dir, tmp_path):
    assert _method(tiny_pipeline_dir, tmp_path, {"mode": "temporal"}).curriculum.spec == [(0, "temporal")]
    cur = _method(tiny_pipeline_dir, tmp_path, {"distortions": [[0, "reverse"], [3, "blur:sigma=2"]]}).curriculum
    assert [cur.at(s).spec for s in (0, 2, 3, 9)] == ["reverse", "reverse", "blur:sigma=2", "blur:sigma=2"]
    with pytest.raises(ConfigError, match="distortions"):
        DFDPO(_cfg(tiny_pipeline_dir, 1, {"distortions": [[1, "reverse"]]}), torch.device("cpu"), torch.float32)
    with pytest.raises(ConfigError, match="distortions"):
        DFDPO(_cfg(tiny_pipeline_dir, 1, {"distortions": "wobble"}), torch.device("cpu"), torch.float32)
    with pytest.raises(ConfigError, match="init"):
        DFDPO(load_train_config("dfdpo", {}), torch.device("cpu"), torch.float32)


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    "method_cfg",
    [
        {"mode": "temporal"},
        {"mode": "spatial"},
        {"mode": "hybrid"},
        {"distortions": [[0, "reverse"], [1, "noise:sigma=20"]], "lambda_sft": 0.0},
    ],
    ids=["temporal", "spatial", "hybrid", "curriculum-no-sft"],
)
def test_modes_run_and_log_finite_losses(tiny_pipeline_dir, tmp_path, method_cfg):
    run = tmp_path / "run"
    cfg = _cfg(tiny_pipeline_dir, 2, method_cfg)
    train_run(cfg, run, progress_bar=False)
    recs = _records(run)
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        for key in (
            "policy/loss",
            "policy/dpo",
            "policy/sft",
            "policy/implicit_acc",
            "policy/reward_margin",
            "policy/win_gap",
            "policy/lose_gap",
            "policy/grad_norm",
        ):
            assert math.isfinite(r[key]), key
        lam = cfg.method_cfg.lambda_sft  # the tiny preset's 10 unless overridden
        assert r["policy/loss"] == pytest.approx(r["policy/dpo"] + lam * r["policy/sft"], rel=1e-5)
    # step 1's loss is evaluated before any update: policy == reference, so every DPO logit is 0 -> log 2
    assert recs[0]["policy/dpo"] == pytest.approx(math.log(2), abs=1e-6)
    assert recs[0]["policy/reward_margin"] == 0.0
    # after one update the policy has moved away from the frozen reference
    assert recs[1]["policy/win_gap"] != 0.0


def test_export_keeps_the_init_sampling_config(tiny_pipeline_dir, tmp_path):
    # a few-step init (as a DMD/VDOT export would be) stays a few-step pipeline
    init = tmp_path / "few_step_init"
    shutil.copytree(tiny_pipeline_dir, init)
    s = json.loads((init / "motionlab_sampling.json").read_text())
    s.update(kind="few_step", num_steps=2, guidance_scale=1.0, timesteps=[1000.0, 600.0])
    (init / "motionlab_sampling.json").write_text(json.dumps(s))
    run = tmp_path / "run"
    out = Path(train_run(_cfg(init, 1), run, progress_bar=False)["export_dir"])
    assert json.loads((out / "motionlab_sampling.json").read_text()) == s
    w = "transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(init / w)), load_file(str(out / w))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # the policy was trained
    # the teacher-kind init used elsewhere stays a teacher
    assert json.loads((Path(tiny_pipeline_dir) / "motionlab_sampling.json").read_text())["kind"] == "teacher"


# ---------------------------------------------------------------------------------------------------- resume


RESUME_SETS = [
    "batch_size=2",
    "checkpoint_every=2",
    "log_every=1",
    "ema_decay=0.9",
    "data.num_videos=4",
    "method_cfg.mode=hybrid",
    "optim.warmup_steps=2",
]


@pytest.mark.slow  # the same runs stopped and resumed in-process, in the default suite: test_stop_and_resume.py
def test_kill_and_resume_is_exact(tiny_pipeline_dir, kill_and_resume, differing_weights, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the training subprocesses inherit it
    ref, run = kill_and_resume("dfdpo", steps=6, kill_after=2, sets=RESUME_SETS, init=tiny_pipeline_dir)
    assert differing_weights(ref / "export", run / "export") == []
    final = Path("checkpoints") / "step-00000006"
    assert differing_weights(ref / final, run / final) == []  # policy and its EMA
    la, lb = _records(ref), _records(run)
    assert [r["step"] for r in lb] == list(range(1, 7))
    for key in ("policy/loss", "policy/dpo", "policy/lose_gap"):  # lose_gap depends on the random edits
        assert [r[key] for r in la] == [r[key] for r in lb], key


def test_full_preset_names_missing_weights_and_matches_the_paper(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from backend.cli import app

    monkeypatch.setenv("MOTIONLAB_WEIGHTS_DIR", str(tmp_path))
    res = CliRunner().invoke(app, ["train", "dfdpo", "--preset", "full", "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert "Wan2.1-T2V-1.3B-Diffusers" in res.output
    assert not (tmp_path / "run" / "checkpoints").exists()
    cfg = load_train_config("dfdpo", preset="full")
    assert cfg.optim.lr == 1e-8 and cfg.method_cfg.beta == 5000.0
    assert cfg.batch_size == 16 and cfg.grad_accum == 16  # global: one GPU's batch 1 x 16 accumulation steps
