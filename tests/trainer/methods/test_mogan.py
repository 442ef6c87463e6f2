"""MoGAN's discriminator update: balanced real/generated batches, R1/R2 noise in D's input units and float32,
ablation switches that leave every random draw they do not own unchanged, and a real-motion set weighted apart from
the generator's prompts. Tiny random models, 1-2 steps each."""

from __future__ import annotations

import hashlib

import pytest
import torch

from trainer.config import ConfigError, load_train_config
from trainer.loop import train_run
from trainer.methods import METHODS
from trainer.methods.mogan import MoGAN

BASE = {
    "batch_size": 1,
    "checkpoint_every": 100,
    "log_every": 1,
    "method_cfg": {"num_prompts": 8, "critic_steps": 1, "num_real": 4, "window_chunks": 2},
}


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _run(tmp_path, pipeline_dir, monkeypatch, cls, steps: int, top: dict | None = None, **method_cfg):
    over = {
        **BASE,
        **(top or {}),
        "teacher": str(pipeline_dir),
        "steps": steps,
        "method_cfg": {**BASE["method_cfg"], **method_cfg},
    }
    monkeypatch.setitem(METHODS, "mogan", cls)
    train_run(load_train_config("mogan", over), tmp_path, progress_bar=False)


# -- the random streams under the ablation switches ------------------------------------------------------------------


def _recording_class(record: list, weights: list):
    """MoGAN that logs every draw it makes: stream calls (purpose, call index), windows, and for each generator sample
    its prompts and the state of its generator before and after (which fixes its noise and step index)."""

    class Recording(MoGAN):
        def random_stream(self, purpose):
            g = super().random_stream(purpose)
            self._purpose = purpose
            record.append(("stream", purpose, self.streams.counts[purpose]))
            return g

        def window(self, draws=None):
            start = super().window(draws)
            record.append(("window", self._purpose, start))
            return start

        def generator_sample(self, generator, cond, grad, rng=None):
            before = _digest(rng.get_state())
            out = super().generator_sample(generator, cond, grad, rng=rng)
            record.append(("sample", self._purpose, _digest(cond), before, _digest(rng.get_state())))
            return out

        def train_step(self, step, ctx):
            logs = super().train_step(step, ctx)
            weights.append(
                {
                    "generator": _digest(*self.generator.state_dict().values()),
                    "disc": _digest(*self.disc.state_dict().values()),
                }
            )
            return logs

    return Recording


def _recorded_run(tmp_path, pipeline_dir, monkeypatch, **switch):
    record, weights = [], []
    _run(tmp_path, pipeline_dir, monkeypatch, _recording_class(record, weights), steps=2, **switch)
    return record, weights


@pytest.fixture(scope="module")
def full_method_run(tiny_pipeline_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        return _recorded_run(tmp_path_factory.mktemp("mogan-full"), tiny_pipeline_dir, mp)


def _without(record, purposes):
    return [r for r in record if r[1] not in purposes]


def test_disabling_r1r2_changes_d_and_no_other_draw(full_method_run, tiny_pipeline_dir, tmp_path, monkeypatch):
    on, on_weights = full_method_run
    off, off_weights = _recorded_run(tmp_path, tiny_pipeline_dir, monkeypatch, use_r1r2=False)
    assert any(r[1] == "r1r2" for r in on) and not any(r[1] == "r1r2" for r in off)
    kinds = {r[0] for r in on}
    assert kinds == {"stream", "window", "sample"}
    # every draw but the R1/R2 noise: the same purposes in the same order, windows, prompts, generator noise
    assert _without(on, {"r1r2"}) == off
    # after step 1 the generator (phases 1-3 ran before any D update) is the same; D is not
    assert on_weights[0]["generator"] == off_weights[0]["generator"]
    assert on_weights[0]["disc"] != off_weights[0]["disc"]
    # and the trajectories part: step 2's generator GAN update reads the two different discriminators
    assert on_weights[1]["generator"] != off_weights[1]["generator"]


@pytest.mark.parametrize(
    "switch, kept",
    [
        ({"use_dmd": False}, {"generator_gan", "disc", "r1r2"}),  # phases 3-4; DMD's own draws are the switch's
        ({"disc_space": "video"}, None),  # every draw: the R1/R2 noise's seeds too (its shape is the switch's)
    ],
)
def test_ablation_switches_keep_the_draws_they_do_not_own(
    full_method_run, tiny_pipeline_dir, tmp_path, monkeypatch, switch, kept
):
    full, _ = full_method_run
    ablated, _ = _recorded_run(tmp_path, tiny_pipeline_dir, monkeypatch, **switch)
    if kept is not None:
        full = [r for r in full if r[1] in kept]
        assert {r[1] for r in ablated} == kept
    assert len(full) > 10 and full == ablated


# -- the discriminator update's batch and R1/R2 noise ----------------------------------------------------------------


def _disc_update_probe(seen: dict):
    """MoGAN recording, inside its discriminator updates only: D's input batch sizes, the generator samples' batch
    sizes, and what D hands its VAE encoder (the normalised flow), with the autocast state there."""

    class Probe(MoGAN):
        _in_disc = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.disc.register_forward_pre_hook(
                lambda _m, args: seen["disc"].append(int(args[0].shape[0])) if self._in_disc else None
            )

        def encode_for_disc(self, x):
            if self._in_disc:
                seen["encoded"].append(x.detach().clone())
                seen["autocast"].append(torch.is_autocast_enabled("cpu"))
            return super().encode_for_disc(x)

        def generator_sample(self, generator, cond, grad, rng=None):
            if self._in_disc:
                seen["generated"].append(int(cond.shape[0]))
            return super().generator_sample(generator, cond, grad, rng=rng)

        def disc_update(self, ctx):
            self._in_disc = True
            try:
                return super().disc_update(ctx)
            finally:
                self._in_disc = False

    return Probe


@pytest.mark.parametrize("batch, disc_batch, precision", [(1, 2, "bf16"), (2, 3, "no")])
def test_disc_sees_as_many_generated_as_real_with_noise_in_normalised_units(
    tiny_pipeline_dir, tmp_path, monkeypatch, batch, disc_batch, precision
):
    seen = {"disc": [], "generated": [], "encoded": [], "autocast": []}
    _run(
        tmp_path,
        tiny_pipeline_dir,
        monkeypatch,
        _disc_update_probe(seen),
        steps=1,
        top={"batch_size": batch, "mixed_precision": precision},
        use_dmd=False,
        disc_batch_size=disc_batch,
    )
    # real, generated, real + noise, generated + noise: all disc_batch samples
    assert seen["disc"] == [disc_batch] * 4
    # the generated ones come in generator micro-batches of prompts, the last cut to what is missing
    assert seen["generated"] == [batch] * (disc_batch // batch) + ([disc_batch % batch] if disc_batch % batch else [])
    real, gen, real_noisy, gen_noisy = seen["encoded"]
    assert not torch.equal(gen[0], gen[-1])  # distinct samples, not one repeated
    # D runs in float32 with autocast off, even where the run autocasts to bf16
    assert all(x.dtype == torch.float32 for x in seen["encoded"]) and not any(seen["autocast"])
    # the R1/R2 noise has std sigma_n in the units D encodes: the normalised flow, not pixels (1.6 px per unit here)
    for clean, noisy in ((real, real_noisy), (gen, gen_noisy)):
        assert float((noisy - clean).std()) == pytest.approx(0.01, rel=0.05)


# -- the real-motion set ---------------------------------------------------------------------------------------------


def test_real_families_weight_the_real_set_and_leave_the_prompts(tiny_pipeline_dir, tmp_path, monkeypatch):
    seen = []

    class Probe(MoGAN):
        def setup_data(self, rank, world_size):
            super().setup_data(rank, world_size)
            seen.append(self)

    def run(name, **method_cfg):
        _run(tmp_path / name, tiny_pipeline_dir, monkeypatch, Probe, steps=1, num_real=6, **method_cfg)
        return seen[-1]

    plain, still = run("plain"), run("still", real_families={"static": 1.0})
    # the generator's prompts are data.families' in both runs, moving ones among them
    assert plain._captions() == still._captions()
    assert any("static" not in caption.split() for caption in still._captions())

    # the discriminator's real clips: a still clip has no frame-to-frame change
    def moving(real):
        return [bool((clip[:, 1:].int() - clip[:, :-1].int()).abs().max() > 0) for clip in real]

    assert all(not m for m in moving(still.real))
    assert any(moving(plain.real))
    with pytest.raises(ConfigError, match="method_cfg.real_families"):
        load_train_config("mogan", {"method_cfg": {"real_families": {"spin": 1.0}}})
    with pytest.raises(ConfigError, match="method_cfg.real_families"):
        load_train_config("mogan", {"method_cfg": {"real_families": {"static": 0.0}}})
    with pytest.raises(ConfigError, match="method_cfg.real_families.*'folder'"):
        load_train_config(
            "mogan", {"data": {"source": "folder", "root": "x"}, "method_cfg": {"real_families": {"static": 1.0}}}
        )
