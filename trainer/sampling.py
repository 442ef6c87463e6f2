"""Samplers and the one generation path: text -> latents -> frames, and a request's sampling settings.

* The samplers: the multi-step teacher (Euler + CFG) and the few-step student (x0-predict, re-noise); one
  implementation, used by serving, evaluation and training (DMD's backward simulation). Notation (Wan /
  diffusers): ``x_sigma = (1 - sigma) x0 + sigma eps``, the network predicts ``v = eps - x0`` from
  ``(x_sigma, 1000 * sigma, text)``, so ``x0_hat = x_sigma - sigma v``.
* ``resolve_sampling``: the one place where a request's ``SamplingOptions`` (steps, guidance, shape, FlowMo) are
  merged with a checkpoint's sampling settings and checked, for the CLI, the API, the worker and the web UI alike.
* ``encode_text`` -> ``denoise`` -> ``to_uint8_frames``: the one way prompts and seeds become videos.
  ``generate_batch`` (timed, with the video's info) is what ``trainer.serving.generate_video`` (one video),
  ``GenerationService``'s batches and ``motionlab generate`` run; ``generate_latents`` / ``generate_videos`` are
  the same steps for training and evaluation, which sample a network they pass in.

Noise is drawn per sample from its own seed (``SeededNoise``), so a request's video does not depend on what else
shares its batch.

``flowmo`` (a ``trainer.flowmo.FlowMoConfig``, None: off) adds FlowMo's training-free motion-coherence guidance to
either sampler: gradient steps on the latent at the guided steps, before the sampler's own step.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from trainer.flowmo import FlowMoConfig, flowmo_from_options, flowmo_passes, flowmo_update
from trainer.models.generator import SamplingConfig


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
    first_step: int = 0,
) -> torch.Tensor:
    """Euler flow-matching sampler from pure noise; returns ``x0`` latents (``flowmo``: guided, see above).

    ``first_step`` > 0 starts part-way: ``noise`` is then the latent at ``teacher_sigmas(num_steps, shift)
    [first_step]`` (e.g. a real clip's latent re-noised to that level), and only the remaining steps run.
    """
    if not 0 <= first_step <= num_steps:
        raise ValueError(f"first_step must be in [0, num_steps={num_steps}], got {first_step}")
    sigmas = teacher_sigmas(num_steps, shift)
    guided = flowmo.check(num_steps).guided_steps(num_steps) if flowmo is not None else range(0)
    x = noise
    for i in range(first_step, num_steps):
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


# --- a request's sampling settings ----------------------------------------------------------------------------

STEPS_MAX = 1000  # the most sampling steps a ``SamplingConfig`` takes


class SamplingOptionError(ValueError):
    """A sampling option outside its bounds: ``field`` (``steps``, ``guidance``, ...), ``detail`` and the ``limit``
    (as ``FlowMoError`` names FlowMo's), so each caller can word it as its own (a CLI flag, an API field)."""

    def __init__(self, field: str, detail: str, limit=None):
        self.field, self.detail, self.limit = field, detail, limit
        super().__init__(f"{field}: {detail}")


@dataclass(frozen=True)
class SamplingOptions:
    """What one generation request sets over its checkpoint's sampling settings (None: the checkpoint's own).

    ``flowmo``: FlowMo's guidance on the checkpoint's sampler (None: the plain sampler).
    """

    steps: int | None = None
    guidance: float | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    flowmo: FlowMoConfig | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SamplingOptions:
        """From a generation request's fields, as the API takes them and a job stores them: ``steps``,
        ``guidance``, ``num_frames``, ``height``, ``width``, ``sampler`` and ``flowmo_*`` (others are ignored).
        Raises ``FlowMoError`` for FlowMo settings out of bounds or given without ``sampler="flowmo"``."""
        flowmo = flowmo_from_options(
            params.get("sampler"),
            params.get("flowmo_eta"),
            params.get("flowmo_start"),
            params.get("flowmo_stop"),
            params.get("flowmo_iterations"),
        )
        return cls(
            steps=params.get("steps"),
            guidance=params.get("guidance"),
            num_frames=params.get("num_frames"),
            height=params.get("height"),
            width=params.get("width"),
            flowmo=flowmo,
        )


def _whole_number(field: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SamplingOptionError(field, f"must be a whole number (got {value!r})")
    if value < lo:
        raise SamplingOptionError(field, f"must be >= {lo} (got {value})", lo)
    if hi is not None and value > hi:
        raise SamplingOptionError(field, f"must be <= {hi} (got {value})", hi)
    return int(value)


def resolve_sampling(defaults: SamplingConfig, options: SamplingOptions | None = None) -> SamplingConfig:
    """The settings one generation samples with: a checkpoint's ``defaults`` with a request's ``options`` over them.

    ``steps`` sets a teacher's number of Euler steps, or respaces a few-step student's timesteps evenly between its
    first and last; ``guidance`` sets the CFG scale (a few-step student samples without CFG, so it changes nothing
    there); ``num_frames``, ``height`` and ``width`` set the video's shape (whether the VAE takes it is the
    generator's check, ``Generator.latent_shape``). FlowMo's step range is checked against the resulting number of
    steps. Raises ``SamplingOptionError`` (or ``FlowMoError``) naming the field and its limit. Pure: ``defaults`` is
    not changed.
    """
    o = options or SamplingOptions()
    s = defaults
    if o.steps is not None:
        steps = _whole_number("steps", o.steps, 1, STEPS_MAX)
        s = replace(s, num_steps=steps) if s.kind == "teacher" else _respace_few_step(s, steps)
    if o.guidance is not None:
        g = o.guidance
        if isinstance(g, bool) or not isinstance(g, numbers.Real) or not math.isfinite(g):
            raise SamplingOptionError("guidance", f"must be a finite number >= 0 (got {g!r})")
        if g < 0:
            raise SamplingOptionError("guidance", f"must be >= 0 (got {g:g})", 0)
        s = replace(s, guidance_scale=float(g))
    shape = {
        name: _whole_number(name, getattr(o, name), 1)
        for name in ("num_frames", "height", "width")
        if getattr(o, name) is not None
    }
    if shape:
        s = replace(s, **shape)
    if o.flowmo is not None:
        o.flowmo.check(sampling_steps(s))
    return s


def _respace_few_step(s: SamplingConfig, steps: int) -> SamplingConfig:
    """A few-step checkpoint asked for a different step count: evenly respaced sigmas between its first and last."""
    first, last = s.timesteps[0], s.timesteps[-1]
    ts = [first + (last - first) * i / max(steps - 1, 1) for i in range(steps)]
    return replace(s, timesteps=ts, num_steps=steps)


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


def video_info(sampling, flowmo: FlowMoConfig | None = None) -> dict[str, Any]:
    """How a video was sampled, as its info records it: kind, steps, fps, network evaluations and FlowMo's part."""
    return {
        "network_evaluations": network_evaluations(sampling, flowmo),
        "kind": sampling.kind,
        "steps": sampling_steps(sampling),
        "fps": sampling.fps,
        **flowmo_info(sampling, flowmo),
    }


# --- text -> latents -> frames --------------------------------------------------------------------------------


def encode_text(gen, sampling, prompts: list[str], encode=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompts' embeddings and, for a teacher (CFG), the negative prompt's, one per sample.

    ``encode(prompts, device)`` replaces ``gen.encode_prompts`` (a server's cache of prompt embeddings).
    """
    encode = encode or gen.encode_prompts
    cond = encode(prompts, gen.device)
    uncond = encode([sampling.negative_prompt] * len(prompts), gen.device) if sampling.kind == "teacher" else None
    return cond, uncond


def denoise(
    gen,
    sampling,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    seeds: list[int],
    *,
    transformer=None,
    progress=None,
    flowmo: FlowMoConfig | None = None,
) -> torch.Tensor:
    """Per-sample seeded noise of ``sampling``'s shape -> ``x0`` latents with the checkpoint's sampler."""
    s = sampling
    net = gen.transformer if transformer is None else transformer
    shape = gen.latent_shape(s.num_frames, s.height, s.width)[1:]
    device, dtype = gen.device, gen.transformer.dtype  # skips the modules kept in float32
    noise_src = SeededNoise(seeds)
    noise = noise_src(shape, device, dtype)
    if s.kind == "few_step":
        return sample_few_step(net, noise, cond, s.timesteps, noise_src, flowmo=flowmo)
    return sample_teacher(
        net, noise, cond, uncond, s.num_steps, s.shift, s.guidance_scale, s.cfg_form, progress=progress, flowmo=flowmo
    )


def to_uint8_frames(pixels: torch.Tensor) -> list[np.ndarray]:
    """``[B, 3, T, H, W]`` in [-1, 1] -> list of uint8 ``[T, H, W, 3]`` (one device->host copy for the batch)."""
    x = ((pixels.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu()
    return list(x.permute(0, 2, 3, 4, 1).contiguous().numpy())


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

    ``sampling`` (default ``gen.sampling``) with the shape arguments that are given over it. ``transformer``
    replaces ``gen.transformer`` (training samples the network it is updating, or its wrapper). ``flowmo``:
    FlowMo's guidance on top of that sampler.
    """
    s = sampling or gen.sampling
    shape = {k: v for k, v in (("num_frames", num_frames), ("height", height), ("width", width)) if v}
    if shape:
        s = replace(s, **shape)
    cond, uncond = encode_text(gen, s, prompts)
    return denoise(gen, s, cond, uncond, seeds, transformer=transformer, progress=progress, flowmo=flowmo)


@torch.no_grad()
def generate_videos(gen, prompts: list[str], seeds: list[int], **kw) -> list[np.ndarray]:
    """Text -> uint8 videos ``[T, H, W, 3]``, one per prompt (``generate_latents``'s arguments)."""
    return to_uint8_frames(gen.decode_latents(generate_latents(gen, prompts, seeds, **kw)))


@dataclass
class GeneratedBatch:
    latents: torch.Tensor  # [B, C, F, h, w] on the generator's device
    frames: list[np.ndarray]  # uint8 [T, H, W, 3] each
    info: dict[str, Any]  # ``video_info``: how they were sampled
    timings: dict[str, float]  # seconds of the batch: text_encoding, denoising, vae_decoding


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a stage's time is its own (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_batch(
    gen,
    sampling,
    prompts: list[str],
    seeds: list[int],
    *,
    flowmo: FlowMoConfig | None = None,
    encode=None,
    decode=None,
) -> GeneratedBatch:
    """Paired ``prompts[i]``/``seeds[i]`` -> latents -> uint8 frames with resolved settings (``resolve_sampling``),
    timed by stage: the one generation path under every caller (``trainer.serving.generate_video`` for one video,
    ``GenerationService``'s batches, ``motionlab generate``'s batches).

    ``encode(prompts, device)`` replaces ``gen.encode_prompts`` and ``decode(latents)`` ``gen.decode_latents``
    (a server's prompt cache and decoding fast paths).
    """
    device = torch.device(gen.device)
    t = time.perf_counter()
    cond, uncond = encode_text(gen, sampling, prompts, encode)
    _sync(device)
    t_text = time.perf_counter() - t

    t = time.perf_counter()
    latents = denoise(gen, sampling, cond, uncond, seeds, flowmo=flowmo)
    _sync(device)
    t_denoise = time.perf_counter() - t

    t = time.perf_counter()
    frames = to_uint8_frames((decode or gen.decode_latents)(latents))
    t_decode = time.perf_counter() - t
    timings = {"text_encoding": t_text, "denoising": t_denoise, "vae_decoding": t_decode}
    return GeneratedBatch(latents, frames, video_info(sampling, flowmo), timings)
