"""Samplers: the multi-step teacher (Euler + CFG) and the few-step student (x0-predict, re-noise).

One implementation, used by serving, evaluation and training (DMD's backward simulation). Notation (Wan /
diffusers): ``x_sigma = (1 - sigma) x0 + sigma eps``, the network predicts ``v = eps - x0`` from
``(x_sigma, 1000 * sigma, text)``, so ``x0_hat = x_sigma - sigma v``.

Noise is drawn per sample from its own seed (``SeededNoise``), so a request's video does not depend on what else
shares its batch.

``flowmo`` (a ``trainer.flowmo.FlowMoConfig``, None: off) adds FlowMo's training-free motion-coherence guidance to
either sampler: gradient steps on the latent at the guided steps, before the sampler's own step.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from trainer.data.video_io import from_model_pixels
from trainer.flowmo import FlowMoConfig, flowmo_passes, flowmo_update
from trainer.zoo import load_generator


def shift_sigmas(s: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's resolution shift: ``sigma' = shift s / (1 + (shift - 1) s)`` (more steps at high noise)."""
    return shift * s / (1 + (shift - 1) * s)


def teacher_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """``num_steps + 1`` decreasing sigmas from 1 to 0, shifted."""
    return shift_sigmas(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift).float()


def few_step_sigmas(timesteps: list[float]) -> torch.Tensor:
    """Distilled timesteps (e.g. 1000, 757, 522, as FastWan uses) are already in shifted sigma space."""
    return torch.tensor([t / 1000.0 for t in timesteps], dtype=torch.float32)


class SeededNoise:
    """Per-sample Gaussian noise streams: sample ``i`` draws from ``torch.Generator().manual_seed(seeds[i])``.

    Drawn on the CPU and moved, so the same seed gives the same video on any device and in any batch.
    """

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, shape_per_sample, device, dtype=torch.float32) -> torch.Tensor:
        return torch.stack([torch.randn(shape_per_sample, generator=g) for g in self.generators]).to(device, dtype)


def predict_velocity(
    transformer,
    x: torch.Tensor,
    sigma: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None = None,
    guidance: float = 1.0,
    cfg_form: str = "standard",
) -> torch.Tensor:
    """``v(x_sigma)`` with optional classifier-free guidance (one batched call for cond + uncond)."""
    b = x.shape[0]
    sigma = sigma.to(x.device, torch.float32).expand(b) if sigma.ndim <= 1 else sigma
    t = sigma * 1000.0
    if uncond is None or guidance == 1.0 and cfg_form == "standard":
        return transformer(x, t, cond.to(x.dtype), return_dict=False)[0]
    both = transformer(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond]).to(x.dtype), return_dict=False)[
        0
    ]
    v_c, v_u = both[:b], both[b:]
    w = guidance if cfg_form == "standard" else guidance + 1.0  # "plus_one": v_c + w (v_c - v_u)
    return v_u + w * (v_c - v_u)


def x0_from_v(x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x - _bcast(sigma, x) * v


def renoise(x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    s = _bcast(sigma, x0)
    return (1 - s) * x0 + s * eps


def _bcast(sigma, x):
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    return sigma.view(-1, *([1] * (x.ndim - 1))) if sigma.ndim == 1 else sigma


@torch.no_grad()
def sample_teacher(
    transformer,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    num_steps: int = 50,
    shift: float = 3.0,
    guidance: float = 5.0,
    cfg_form: str = "standard",
    progress=None,
    flowmo: FlowMoConfig | None = None,
) -> torch.Tensor:
    """Euler flow-matching sampler from pure noise; returns ``x0`` latents (``flowmo``: guided, see above)."""
    sigmas = teacher_sigmas(num_steps, shift)
    guided = flowmo.check(num_steps).guided_steps(num_steps) if flowmo is not None else range(0)
    x = noise
    for i in range(num_steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        sb = s.expand(x.shape[0])
        if i in guided:
            x = flowmo_update(
                x,
                lambda z, sb=sb: x0_from_v(
                    z, sb, predict_velocity(transformer, z, sb, cond, uncond, guidance, cfg_form)
                ),
                flowmo.eta,
                flowmo.iterations,
                flowmo.aggregate,
            )
        v = predict_velocity(transformer, x, sb, cond, uncond, guidance, cfg_form)
        x = x + (s_next - s).to(x.dtype) * v
        if progress is not None:
            progress(i + 1, num_steps)
    return x


def few_step_unroll(
    transformer,
    noise: torch.Tensor,
    cond: torch.Tensor,
    sigmas: torch.Tensor,
    next_noise,
    stop_at: int | None = None,
    grad_last: bool = False,
    flowmo: FlowMoConfig | None = None,
) -> torch.Tensor:
    """Run the few-step student from ``x_{s_1} = noise``; return ``x0_hat`` after step ``stop_at`` (default: all).

    ``next_noise(shape, device, dtype)`` supplies the fresh noise for each re-noising. With ``grad_last`` the steps
    before ``stop_at`` run without gradient and the last with it — DMD2's backward simulation. ``flowmo``: FlowMo's
    guidance on ``x`` at its guided steps, before the step's x0 prediction (sampling only, not with ``grad_last``).
    """
    k = len(sigmas) if stop_at is None else stop_at
    if flowmo is not None and grad_last:
        raise ValueError("flowmo guides sampling only; it cannot be combined with grad_last")
    guided = flowmo.check(len(sigmas)).guided_steps(len(sigmas)) if flowmo is not None else range(0)
    x = noise
    x0 = None
    for i in range(k):
        s = sigmas[i].expand(x.shape[0])
        if i in guided:
            x = flowmo_update(
                x,
                lambda z, s=s: x0_from_v(z, s, predict_velocity(transformer, z, s, cond)),
                flowmo.eta,
                flowmo.iterations,
                flowmo.aggregate,
            )
        track = grad_last and i == k - 1
        with torch.set_grad_enabled(track and torch.is_grad_enabled()):
            v = predict_velocity(transformer, x, s, cond)
            x0 = x0_from_v(x, s, v)
        if i < k - 1:
            eps = next_noise(x.shape[1:], x.device, x.dtype)
            x = renoise(x0.detach(), sigmas[i + 1].expand(x.shape[0]), eps)
    return x0


@torch.no_grad()
def sample_few_step(
    transformer,
    noise: torch.Tensor,
    cond: torch.Tensor,
    timesteps: list[float],
    next_noise,
    flowmo: FlowMoConfig | None = None,
) -> torch.Tensor:
    return few_step_unroll(transformer, noise, cond, few_step_sigmas(timesteps), next_noise, flowmo=flowmo)


@torch.no_grad()
def generate_latents(
    gen,
    prompts: list[str],
    seeds: list[int],
    *,
    sampling=None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    progress=None,
    transformer=None,
    flowmo: FlowMoConfig | None = None,
) -> torch.Tensor:
    """Text -> latents with the checkpoint's own sampler (teacher or few-step), batched, per-sample seeds.

    ``transformer`` replaces ``gen.transformer`` (training samples the network it is updating, or its wrapper).
    ``flowmo``: FlowMo's guidance on top of that sampler.
    """
    s = sampling or gen.sampling
    net = gen.transformer if transformer is None else transformer
    shape = gen.latent_shape(num_frames or s.num_frames, height or s.height, width or s.width)[1:]
    device, dtype = gen.device, gen.transformer.dtype  # skips the modules kept in float32
    noise_src = SeededNoise(seeds)
    noise = noise_src(shape, device, dtype)
    cond = gen.encode_prompts(prompts, device)
    if s.kind == "few_step":
        return sample_few_step(net, noise, cond, s.timesteps, noise_src, flowmo=flowmo)
    uncond = gen.encode_prompts([s.negative_prompt] * len(prompts), device)
    return sample_teacher(
        net, noise, cond, uncond, s.num_steps, s.shift, s.guidance_scale, s.cfg_form, progress=progress, flowmo=flowmo
    )


def sampling_steps(sampling) -> int:
    """The sampler's number of steps (a few-step student's: its timesteps)."""
    return len(sampling.timesteps) if sampling.kind == "few_step" else sampling.num_steps


def _cfg_pairs(sampling) -> bool:
    return sampling.kind == "teacher" and (sampling.guidance_scale != 1.0 or sampling.cfg_form != "standard")


def network_evaluations(sampling, flowmo: FlowMoConfig | None = None) -> int:
    """Transformer forward passes per video (a CFG step counts as two), FlowMo's gradient passes included."""
    extra = flowmo_passes(sampling_steps(sampling), flowmo, _cfg_pairs(sampling))["forward_evaluations"]
    return sampling_steps(sampling) * (2 if _cfg_pairs(sampling) else 1) + extra


def flowmo_info(sampling, flowmo: FlowMoConfig | None) -> dict:
    """What a video's info records of FlowMo: ``sampler`` and, with FlowMo, its settings and extra passes."""
    if flowmo is None:
        return {"sampler": "default"}
    n = sampling_steps(sampling)
    return {"sampler": "flowmo", "flowmo": {**flowmo.as_dict(n), **flowmo_passes(n, flowmo, _cfg_pairs(sampling))}}


@torch.no_grad()
def generate_videos(gen, prompts: list[str], seeds: list[int], **kw):
    """Text -> uint8 videos ``[B, T, H, W, 3]`` (numpy)."""
    latents = generate_latents(gen, prompts, seeds, **kw)
    pixels = gen.decode_latents(latents)
    return [from_model_pixels(p) for p in pixels]


def load_sampler(checkpoint, *, steps: int | None = None, guidance: float | None = None, device: str = "cpu"):
    """Load a checkpoint (zoo name or directory) once -> ``(generator, sampling settings with the overrides)``.

    Split from ``generate_video`` so that a caller making many videos loads the model once.
    """
    gen = load_generator(checkpoint, device=device)
    s = gen.sampling
    if steps is not None:
        s = replace(s, num_steps=steps) if s.kind == "teacher" else _respace_few_step(s, steps)
    if guidance is not None:
        s = replace(s, guidance_scale=guidance)
    return gen, s


def sample_videos(
    gen,
    sampling,
    prompts: list[str],
    seeds: list[int],
    *,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    flowmo: FlowMoConfig | None = None,
):
    """Videos for paired ``prompts[i]``/``seeds[i]`` with a loaded generator -> (list of uint8 frames, info)."""
    s = sampling
    if flowmo is not None:
        flowmo.check(sampling_steps(s))  # before any work
    t0 = time.perf_counter()
    videos = generate_videos(
        gen, prompts, seeds, sampling=sampling, num_frames=num_frames, height=height, width=width, flowmo=flowmo
    )
    info = {
        "seconds": time.perf_counter() - t0,
        "network_evaluations": network_evaluations(s, flowmo),
        "kind": s.kind,
        "steps": sampling_steps(s),
        "fps": s.fps,
        **flowmo_info(s, flowmo),
    }
    return videos, info


def generate_video(
    checkpoint,
    prompt: str,
    seed: int,
    *,
    steps: int | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    guidance: float | None = None,
    device: str = "cpu",
    flowmo: FlowMoConfig | None = None,
):
    """One video from a checkpoint (zoo name or directory) -> (uint8 ``[T, H, W, 3]``, info)."""
    gen, s = load_sampler(checkpoint, steps=steps, guidance=guidance, device=device)
    videos, info = sample_videos(
        gen, s, [prompt], [seed], num_frames=num_frames, height=height, width=width, flowmo=flowmo
    )
    return videos[0], info


def _respace_few_step(s, steps: int):
    """A few-step checkpoint asked for a different step count: evenly respaced sigmas between its first and last."""
    first, last = s.timesteps[0], s.timesteps[-1]
    ts = [first + (last - first) * i / max(steps - 1, 1) for i in range(steps)]
    return replace(s, timesteps=ts, num_steps=steps)
