"""Ablation switches move only their own random draws: VDOT and DF-DPO draw noise, sigmas and step indices from
per-purpose streams (``trainer/random_streams.py``), so a switch that skips a term leaves every other term's draws,
and the data indices, exactly where they were. Each test runs the method with one switch flipped and compares the
draws recorded inside ``train_step`` (and, where a phase is untouched by the switch, the trained weights) with the
run of the default config. Tiny, CPU only:

    python -m pytest tests/trainer/methods/test_random_streams.py -q
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import load_train_config
from trainer.data.streams import IndexStream
from trainer.loop import train_run
from trainer.methods.dfdpo import DFDPO
from trainer.methods.vdot import VDOT
from trainer.random_streams import RandomStreams

DRAW_FUNCTIONS = ("randn", "rand", "randint", "randn_like", "rand_like", "randperm", "normal", "multinomial")


@dataclass
class DrawLog:
    """What ``train_step`` drew: ``draws[purpose]`` (the stream's purpose, or "global" for the global RNG) and
    ``indices[seed]`` (the data indices drawn from the ``IndexStream`` of that seed), each in order."""

    draws: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    indices: dict[int, list[list[int]]] = field(default_factory=dict)
    active: bool = False


def recorded_run(method: str, cls, overrides: dict, run_dir: Path) -> DrawLog:
    """Train with ``overrides`` and record every random draw made inside ``cls.train_step``."""
    log = DrawLog()
    purposes: dict[int, str] = {}
    alive: list[torch.Generator] = []  # keeps the ids in ``purposes`` unique
    make_generator, next_indices, train_step = RandomStreams.generator, IndexStream.next, cls.train_step

    def generator(self, purpose):
        g = make_generator(self, purpose)
        purposes[id(g)] = purpose
        alive.append(g)
        return g

    def draw(fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            if log.active:
                g = kwargs.get("generator")
                key = "global" if g is None else purposes.get(id(g), "unknown generator")
                log.draws.setdefault(key, []).append(out.detach().clone())
            return out

        return wrapped

    def next_(self, k):
        out = next_indices(self, k)
        if log.active:
            log.indices.setdefault(self.seed, []).append(list(out))
        return out

    def step(self, *args, **kwargs):
        log.active = True
        try:
            return train_step(self, *args, **kwargs)
        finally:
            log.active = False

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RandomStreams, "generator", generator)
        mp.setattr(IndexStream, "next", next_)
        mp.setattr(cls, "train_step", step)
        for name in DRAW_FUNCTIONS:
            mp.setattr(torch, name, draw(getattr(torch, name)))
        train_run(load_train_config(method, overrides), run_dir, progress_bar=False)
    return log


def same_draws(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def weights(run_dir: Path, step: int, net: str) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((run_dir / "checkpoints" / f"step-{step:08d}" / net).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def same_weights(a: dict, b: dict) -> bool:
    return bool(a) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def with_method_cfg(base: dict, **method_cfg) -> dict:
    o = json.loads(json.dumps(base))
    o["method_cfg"].update(method_cfg)
    return o


# ------------------------------------------------------------------------------------------------- the streams


def test_streams_are_independent_per_purpose_and_resume_from_their_counters():
    a, b = RandomStreams(seed=3, rank=0), RandomStreams(seed=3, rank=0)
    noise_a = [torch.randn(4, generator=a.generator("noise"))]
    for _ in range(3):  # another purpose drawing in between ...
        torch.rand(2, generator=a.generator("sigma"))
    noise_a.append(torch.randn(4, generator=a.generator("noise")))
    noise_b = [torch.randn(4, generator=b.generator("noise")) for _ in range(2)]
    # ... does not move this one's draws; successive draws differ
    assert all(torch.equal(x, y) for x, y in zip(noise_a, noise_b))
    assert not torch.equal(noise_a[0], noise_a[1])
    # other ranks and other seeds get other streams
    assert not torch.equal(noise_a[0], torch.randn(4, generator=RandomStreams(seed=3, rank=1).generator("noise")))
    assert not torch.equal(noise_a[0], torch.randn(4, generator=RandomStreams(seed=4, rank=0).generator("noise")))
    # the counters are the whole state: a copy loaded from it continues the same draws
    resumed = RandomStreams(seed=3, rank=0)
    resumed.load_state_dict(a.state_dict())
    assert torch.equal(
        torch.randn(4, generator=resumed.generator("noise")), torch.randn(4, generator=a.generator("noise"))
    )
    assert torch.equal(
        torch.rand(2, generator=resumed.generator("sigma")), torch.rand(2, generator=a.generator("sigma"))
    )


# ------------------------------------------------------------------------------------------------------- VDOT

VDOT_SMALL = {
    "batch_size": 2,
    "log_every": 1,
    "checkpoint_every": 1,
    "keep_checkpoints": 3,
    "data": {"num_videos": 4},
    "method_cfg": {"num_prompts": 6, "num_real": 4, "critic_steps": 2, "ot_max_iter": 50},
}
VDOT_PURPOSES = {"generator_dm", "fake_score", "generator_gan", "disc"}
PROMPTS, REAL = 0, 2  # the seeds of VDOT's prompt and real-clip index streams (data.seed, data.seed + 2)


@pytest.fixture(scope="module")
def vdot_default(tiny_pipeline_dir, tmp_path_factory):
    """The full method, 3 iterations: distribution matching, GAN, distribution matching."""
    run = tmp_path_factory.mktemp("vdot") / "default"
    log = recorded_run("vdot", VDOT, {**VDOT_SMALL, "teacher": str(tiny_pipeline_dir), "steps": 3}, run)
    assert set(log.draws) == VDOT_PURPOSES  # nothing from the global RNG
    assert set(log.indices) == {PROMPTS, REAL}
    return log, run


@pytest.mark.parametrize("switch", ["use_otd", "use_dmd"])
def test_vdot_loss_switches_move_no_draw(switch, vdot_default, tiny_pipeline_dir, tmp_path):
    default, _ = vdot_default
    over = {**with_method_cfg(VDOT_SMALL, **{switch: False}), "teacher": str(tiny_pipeline_dir), "steps": 3}
    log = recorded_run("vdot", VDOT, over, tmp_path / "run")
    # the switch owns no draw: every purpose and every data index is the same
    assert set(log.draws) == VDOT_PURPOSES
    for purpose in VDOT_PURPOSES:
        assert same_draws(log.draws[purpose], default.draws[purpose]), purpose
    assert log.indices == default.indices


def test_vdot_gan_switch_moves_only_the_gan_draws(vdot_default, tiny_pipeline_dir, tmp_path):
    default, default_run = vdot_default
    run = tmp_path / "run"
    # without GAN every iteration is distribution matching: 2 iterations = the default run's steps 0 and 2
    over = {**with_method_cfg(VDOT_SMALL, use_gan=False), "teacher": str(tiny_pipeline_dir), "steps": 2}
    log = recorded_run("vdot", VDOT, over, run)
    assert set(log.draws) == {"generator_dm", "fake_score"} and set(log.indices) == {PROMPTS}
    for purpose in ("generator_dm", "fake_score"):
        assert default.draws[purpose] and same_draws(log.draws[purpose], default.draws[purpose]), purpose
    assert log.indices[PROMPTS] == default.indices[PROMPTS]
    # the first iteration (distribution matching in both) trains the generator and the fake score identically,
    # although the full method also built a discriminator
    for net in ("generator", "fake_score"):
        assert same_weights(weights(run, 1, net), weights(default_run, 1, net)), net


# ----------------------------------------------------------------------------------------------------- DF-DPO

DFDPO_SMALL = {"batch_size": 2, "log_every": 1, "checkpoint_every": 2, "data": {"num_videos": 4}, "method_cfg": {}}
DFDPO_PURPOSES = {"sigma", "noise"}


@pytest.fixture(scope="module")
def dfdpo_default(tiny_pipeline_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("dfdpo") / "default"
    log = recorded_run("dfdpo", DFDPO, {**DFDPO_SMALL, "init": str(tiny_pipeline_dir), "steps": 2}, run)
    assert set(log.draws) == DFDPO_PURPOSES and all(len(v) == 2 for v in log.draws.values())
    assert len(log.indices[0]) == 2
    return log


@pytest.mark.parametrize(
    "switch, owned",
    [
        ({"mode": "temporal"}, set()),
        ({"distortions": [[0, "reverse"], [1, "blur:sigma=2"]]}, set()),
        ({"beta": 50.0}, set()),
        ({"lambda_sft": 0.0}, set()),
        ({"timestep_sampling": "uniform"}, {"sigma"}),
    ],
    ids=["mode", "distortions", "beta", "lambda_sft", "timestep_sampling"],
)
def test_dfdpo_switches_move_only_their_own_draws(switch, owned, dfdpo_default, tiny_pipeline_dir, tmp_path):
    over = {**with_method_cfg(DFDPO_SMALL, **switch), "init": str(tiny_pipeline_dir), "steps": 2}
    log = recorded_run("dfdpo", DFDPO, over, tmp_path / "run")
    assert set(log.draws) == DFDPO_PURPOSES
    for purpose in DFDPO_PURPOSES - owned:
        assert same_draws(log.draws[purpose], dfdpo_default.draws[purpose]), purpose
    for purpose in owned:  # the switch does change what it owns
        assert not same_draws(log.draws[purpose], dfdpo_default.draws[purpose]), purpose
    assert log.indices == dfdpo_default.indices  # the same clips, hence the same edit seeds (their positions)
