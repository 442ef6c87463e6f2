"""Each distillation and preference method, stopped at a checkpoint and started again, ends where the same run without
the stop ends, bit for bit: weights, final checkpoint (fake score, discriminator, EMA, optimizers) and logged losses.
In-process through ``train_run`` and its ``should_stop``, with the configs of the methods' SIGKILL drills
(``test_kill_and_resume_is_exact``: ``motionlab train`` in subprocesses, killed and restarted; in the slow suite).
``tests/trainer/test_loop_resume.py`` kills a run in the default suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.config import load_train_config
from trainer.loop import train_run

STEPS = 6
STOP_AT = 2
_DMD = {"batch_size": 1, "checkpoint_every": 2, "log_every": 1, "method_cfg": {"num_prompts": 8, "critic_steps": 1}}
_SMALL = {"batch_size": 2, "checkpoint_every": 2, "log_every": 1, "ema_decay": 0.9, "data": {"num_videos": 4}}
# method -> (the tiny pipeline's role, overrides, logged losses that must repeat)
CASES = {
    "dmd": ("teacher", _DMD, ["generator/loss"]),
    "mogan": (
        "teacher",
        {**_DMD, "method_cfg": {**_DMD["method_cfg"], "num_real": 4, "window_chunks": 2}},
        ["generator/loss"],
    ),
    "vdot": (
        "teacher",
        {**_SMALL, "method_cfg": {"num_prompts": 6, "num_real": 4, "critic_steps": 2, "ot_max_iter": 100}},
        ["generator/loss", "fake_score/loss", "generator_gan/loss", "disc/loss"],
    ),
    "dfdpo": (
        "init",
        {**_SMALL, "method_cfg": {"mode": "hybrid"}, "optim": {"warmup_steps": 2}},
        ["policy/loss", "policy/dpo", "policy/lose_gap"],
    ),
}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", list(CASES))
def test_a_run_stopped_at_a_checkpoint_resumes_exactly(method, tiny_pipeline_dir, tmp_path, differing_weights):
    role, overrides, losses = CASES[method]
    cfg = load_train_config(method, {**overrides, role: str(tiny_pipeline_dir), "steps": STEPS})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_run(cfg, straight, progress_bar=False)
    asked = []
    part = train_run(cfg, resumed, progress_bar=False, should_stop=lambda: asked.append(1) or len(asked) >= STOP_AT)
    assert part["stopped"] and part["step"] == STOP_AT and not (resumed / "export").exists()
    assert train_run(cfg, resumed, progress_bar=False)["resumed_from"] == STOP_AT
    assert differing_weights(straight / "export", resumed / "export") == []
    final = Path("checkpoints") / f"step-{STEPS:08d}"
    assert differing_weights(straight / final, resumed / final) == []
    a, b = _records(straight), _records(resumed)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    for key in losses:
        assert [r.get(key) for r in a] == [r.get(key) for r in b], key
