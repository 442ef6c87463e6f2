"""FlowMo guidance (trainer.flowmo) in the teacher and few-step samplers: what its signal measures, that its
update lowers that signal, that it changes the sample at an extra cost of gradient passes, and its bounds."""

from dataclasses import replace

import pytest
import torch

from trainer.flowmo import (
    ETA_MAX,
    ITERATIONS_MAX,
    FlowMoConfig,
    FlowMoError,
    PassCounter,
    coherence_signal,
    flowmo_from_options,
    flowmo_update,
)
from trainer.models.generator import Generator
from trainer.sampling import (
    SeededNoise,
    generate_latents,
    network_evaluations,
    predict_velocity,
    teacher_sigmas,
    x0_from_v,
)

SHAPE = {"num_frames": 9, "height": 16, "width": 16}  # 3 latent frames of 4 x 4


@pytest.fixture(scope="module")
def gen(tiny_pipeline_dir):
    return Generator.from_pretrained(tiny_pipeline_dir)


def test_signal_is_the_patchwise_temporal_variance_of_frame_differences():
    torch.manual_seed(0)
    appearance, velocity = torch.randn(2, 4, 1, 3, 3), torch.randn(2, 4, 1, 3, 3)
    steady = appearance + velocity * torch.arange(5.0).view(1, 1, 5, 1, 1)  # constant motion: constant differences
    assert torch.allclose(coherence_signal(steady), torch.zeros(2), atol=1e-5)
    jerky = torch.randn(2, 4, 5, 3, 3)
    # the appearance (constant over time) cancels in the frame differences
    assert torch.allclose(coherence_signal(jerky + appearance), coherence_signal(jerky), atol=1e-5)
    d = (jerky[:, :, 1:] - jerky[:, :, :-1]).abs()
    patch = ((d - d.mean(2, keepdim=True)) ** 2).mean(2).mean(1)  # [B, H, W]
    assert torch.allclose(coherence_signal(jerky), patch.flatten(1).max(1).values, atol=1e-5)
    assert torch.allclose(coherence_signal(jerky, "mean"), patch.flatten(1).mean(1), atol=1e-5)
    assert (coherence_signal(jerky) > 0).all()


def test_guidance_lowers_the_signal_at_the_guided_step(gen):
    s = gen.sampling
    noise = SeededNoise([0, 1])(gen.latent_shape(**SHAPE)[1:], gen.device)
    cond = gen.encode_prompts(["a red square moves left", "a blue circle moves up"])
    uncond = gen.encode_prompts([s.negative_prompt] * 2)
    sigma = teacher_sigmas(4, s.shift)[0].expand(2)

    def predict_x0(z):
        return x0_from_v(z, sigma, predict_velocity(gen.transformer, z, sigma, cond, uncond, s.guidance_scale))

    with torch.no_grad():
        before = coherence_signal(predict_x0(noise))
        after = coherence_signal(predict_x0(flowmo_update(noise, predict_x0, eta=0.01)))
        mean_before = coherence_signal(predict_x0(noise), "mean")
        mean_after = coherence_signal(predict_x0(flowmo_update(noise, predict_x0, 0.01, 2, "mean")), "mean")
    assert (after < before).all(), (before, after)
    assert (mean_after < mean_before).all(), (mean_before, mean_after)


@pytest.mark.parametrize("kind", ["teacher", "few_step"])
def test_flowmo_changes_the_sample_and_costs_gradient_passes(gen, kind):
    s = replace(gen.sampling, num_steps=4) if kind == "teacher" else gen.sampling.few_step()
    assert s.kind == kind and (kind == "few_step" or s.guidance_scale != 1.0)  # the teacher runs CFG
    steps = 4 if kind == "teacher" else len(s.timesteps)
    fm = FlowMoConfig(eta=0.05, start=0, stop=2, iterations=2)
    prompts, seeds = ["a red square moves left", "a blue circle moves up"], [3, 4]
    counter = PassCounter(gen.transformer)
    try:
        plain = generate_latents(gen, prompts, seeds, sampling=s, **SHAPE)
        plain_calls = (counter.forward, counter.backward)
        counter.forward = counter.backward = 0
        guided = generate_latents(gen, prompts, seeds, sampling=s, flowmo=fm, **SHAPE)
        guided_calls = (counter.forward, counter.backward)
    finally:
        counter.close()
    assert plain_calls == (steps, 0)  # one call per step (CFG's cond + uncond batched into one)
    assert guided_calls == (steps + 2 * 2, 2 * 2)  # 2 guided steps x 2 iterations: a forward and a backward each
    pairs = 2 if kind == "teacher" else 1
    assert network_evaluations(s, fm) == network_evaluations(s) + 2 * 2 * pairs
    assert torch.isfinite(guided).all()
    assert (guided - plain).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-4  # every sample changed
    again = generate_latents(gen, prompts[1:], seeds[1:], sampling=s, flowmo=fm, **SHAPE)
    assert torch.allclose(again[0], guided[1], atol=1e-5)  # per-sample guidance: batch-independent, deterministic


def test_default_range_is_the_first_quarter_of_the_steps():
    assert list(FlowMoConfig().guided_steps(50)) == list(range(13))
    assert list(FlowMoConfig().guided_steps(3)) == [0]
    assert list(FlowMoConfig(start=2).guided_steps(4)) == [2]
    assert list(FlowMoConfig(start=1, stop=3).guided_steps(8)) == [1, 2]


@pytest.mark.parametrize(
    "cfg, steps, field, limit",
    [
        (FlowMoConfig(eta=0.0), None, "flowmo_eta", 0),
        (FlowMoConfig(eta=-1.0), None, "flowmo_eta", 0),
        (FlowMoConfig(eta=ETA_MAX * 2), None, "flowmo_eta", ETA_MAX),
        (FlowMoConfig(eta=float("nan")), None, "flowmo_eta", ETA_MAX),
        (FlowMoConfig(iterations=0), None, "flowmo_iterations", 1),
        (FlowMoConfig(iterations=ITERATIONS_MAX + 1), None, "flowmo_iterations", ITERATIONS_MAX),
        (FlowMoConfig(start=-1), None, "flowmo_start", 0),
        (FlowMoConfig(start=2, stop=2), None, "flowmo_stop", 3),
        (FlowMoConfig(start=3), 3, "flowmo_start", 2),
        (FlowMoConfig(stop=51), 50, "flowmo_stop", 50),
    ],
)
def test_bad_settings_are_refused_naming_the_field_and_limit(cfg, steps, field, limit):
    with pytest.raises(FlowMoError) as err:
        cfg.check(steps)
    assert err.value.field == field and err.value.limit == limit
    assert str(err.value).startswith(f"{field}: must be")


def test_options_need_the_flowmo_sampler(gen):
    assert flowmo_from_options(None) is None and flowmo_from_options("default") is None
    assert flowmo_from_options("flowmo", eta=0.5, stop=3) == FlowMoConfig(eta=0.5, stop=3)
    with pytest.raises(FlowMoError, match="flowmo_eta: is a FlowMo setting"):
        flowmo_from_options("default", eta=0.5)
    with pytest.raises(FlowMoError, match="sampler: must be one of default, flowmo"):
        flowmo_from_options("dpm")
    with pytest.raises(FlowMoError, match="flowmo_stop: must be <= 3"):  # the student has 3 steps
        generate_latents(gen, ["a ball"], [0], sampling=gen.sampling.few_step(), flowmo=FlowMoConfig(stop=4), **SHAPE)
