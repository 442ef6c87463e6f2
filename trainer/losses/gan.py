"""MoGAN's motion-GAN losses and flow-tensor preparation (pure functions).

From the MoGAN paper (sections 4.1, 4.3 and appendix A):
  * flow tensor: RAFT-style flow `[T-1, 2, H, W]` -> duplicate the last flow so there are T ->
    append the per-pixel magnitude ||o||_2 as a third channel -> `[T, 3, H, W]` (`flow_tensor`);
  * logistic GAN (eq. 4-5), g(x) = softplus(x) = log(1 + e^x):
      L_D = g(-D(o_real)) + g(D(o_gen))   (`d_loss`),   L_G = g(-D(o_gen))   (`g_loss`);
  * R1 / R2 (eq. 6-7), the noise-consistency approximation of gradient penalties:
      R = || D(o) - D(N(o, sigma I)) ||_2^2 with sigma = 0.01, R1 on real flows, R2 on generated ones
    (`noise_consistency_penalty`). sigma is a standard deviation in the units D computes with: a discriminator
    that first divides its input by a scale (MoGAN's flow normalisation, `trainer/models/discriminators.py`)
    passes that scale as `input_scale`, and the noise added to its raw input is `sigma * input_scale * n`.
    Both D passes of a penalty run in float32 with autocast off (`float32=True`): a perturbation of 0.01 is
    about one bf16 rounding step of an input of order 1, so under bf16 the difference would mostly be rounding.
  * the whole discriminator objective `lambda_2 L_D + lambda_R1 R1 + lambda_R2 R2` (`discriminator_objective`),
    optionally with the gradient norm each part puts on D's parameters (`loss_with_part_gradient_norms`).
Weights (lambda_1 = lambda_2 = 0.5, lambda_R1 = lambda_R2 = 0.3) are passed in by the method.

Run its tests: `python -m pytest tests/trainer/losses/test_gan.py -q`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def flow_tensor(flow: Tensor) -> Tensor:
    """`[B, T-1, 2, H, W]` flow -> `[B, T, 3, H, W]`: last flow duplicated, magnitude appended.

    Channels of the result: (u, v, sqrt(u^2 + v^2)). The magnitude's gradient at zero flow is taken as
    0 (torch's `vector_norm` subgradient), so static regions do not produce NaN gradients.
    """
    if flow.dim() != 5 or flow.shape[2] != 2:
        raise ValueError(f"flow must be [B, T-1, 2, H, W]; got shape {tuple(flow.shape)}")
    if flow.shape[1] < 1:
        raise ValueError(f"flow must hold at least one frame pair (T-1 >= 1); got shape {tuple(flow.shape)}")
    full = torch.cat((flow, flow[:, -1:]), dim=1)
    mag = torch.linalg.vector_norm(full, ord=2, dim=2, keepdim=True)
    return torch.cat((full, mag), dim=2)


def d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Logistic discriminator loss (eq. 4): mean softplus(-D(real)) + mean softplus(D(fake)).

    Each term is averaged over its own batch, so real and fake batches may differ in size.
    """
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


def g_loss(logits_fake: Tensor) -> Tensor:
    """Non-saturating logistic generator loss (eq. 5): mean softplus(-D(fake))."""
    return F.softplus(-logits_fake).mean()


def _full_precision(device: torch.device, on: bool):
    """Autocast off for ``device``'s type (float32 compute of float32 weights), or no change."""
    return torch.autocast(device.type, enabled=False) if on else contextlib.nullcontext()


def noise_consistency_penalty(
    disc: Callable[[Tensor], Tensor],
    x: Tensor,
    sigma_n: float = 0.01,
    generator: torch.Generator | None = None,
    *,
    logits_x: Tensor | None = None,
    input_scale: float = 1.0,
    float32: bool = True,
) -> Tensor:
    """R1 / R2 of MoGAN (eq. 6-7): mean over the batch of || D(x) - D(x + sigma_n * input_scale * n) ||_2^2.

    This is the finite-difference approximation of the R1 / R2 gradient penalties that the paper takes
    from APT (its ref. [31]): for small sigma it approaches sigma^2 ||grad_u D||^2 in expectation, u being D's
    input in the units D computes with, with no double backward (which a DiT discriminator with fused attention
    does not support cheaply).
    Choices:
      * `input_scale`: D divides its raw input by this before anything else (MoGAN's flow discriminator:
        `flow_norm * min(H, W)`; 1 for one that reads its input as is, e.g. video latents). The noise added to
        the raw input is `sigma_n * input_scale * n`, i.e. `sigma_n * n` after D's division: sigma_n is stated
        in the units D is fed, whatever the raw input's units.
      * `float32`: `x` is cast to float32 and both D passes run with autocast off, and the difference is taken
        in float32, so the penalty measures D and not bf16 rounding. False keeps the caller's autocast (for a D
        whose weights are themselves low precision, e.g. gathered in bf16 by FSDP).
      * `x` is detached: the penalty regularizes the discriminator only (eq. 6-7 are discriminator terms);
        R1 passes real flow tensors, R2 generated ones.
      * Gradients flow through both D(x) and D(x + noise), as the formula is written (no stop-gradient).
      * The squared norm is summed over a sample's logit entries (one logit per sample: just the squared
        difference) and averaged over the batch (the paper's expectation).
      * `logits_x` may pass D(x) already computed for the GAN loss, saving one forward pass; it must be
        D applied to this same `x` with gradients kept, at the same precision (`float32`).
      * `generator` makes the noise reproducible; it must live on x's device (the noise is drawn there).
    """
    if sigma_n < 0:
        raise ValueError(f"sigma_n must be >= 0, got {sigma_n}")
    if input_scale <= 0:
        raise ValueError(f"input_scale must be > 0, got {input_scale}")
    x = x.detach()
    if float32:
        x = x.float()
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    with _full_precision(x.device, float32):
        d_x = disc(x) if logits_x is None else logits_x
        d_noisy = disc(x + (sigma_n * input_scale) * noise)
    if d_x.shape != d_noisy.shape:
        raise ValueError(f"logits_x shape {tuple(d_x.shape)} != D(x + noise) shape {tuple(d_noisy.shape)}")
    diff = d_x.float() - d_noisy.float()
    if diff.dim() == 0:
        return diff.square()
    return diff.square().reshape(diff.shape[0], -1).sum(dim=1).mean()


def loss_with_part_gradient_norms(parts: Sequence[Tensor], params: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """`(loss, norms)`: `loss` equals `sum(parts)` in value and in the gradient its backward gives `params`;
    `norms[i]` is the L2 norm of the gradient of `parts[i]` with respect to `params` (float32, detached).

    Each part is differentiated once with `torch.autograd.grad` (the shared graph is kept until the last part);
    `loss` then carries the summed gradients as constants (`sum_p <p, g_p>`, whose backward is one multiply per
    parameter), so separating k parts costs k backward passes over their graphs instead of one pass for the sum,
    and up to two gradient-sized buffers besides the parameters' own `.grad`. The backward of `loss` accumulates into
    `.grad` like any loss, so a DDP wrapper's gradient hooks still fire on it. A parameter no part reaches
    gets no gradient, as with a plain backward.
    """
    params = [p for p in params if p.requires_grad]
    total: list[Tensor | None] = [None] * len(params)
    norms = []
    live = [i for i, part in enumerate(parts) if part.requires_grad]
    for i, part in enumerate(parts):
        if i not in live:
            norms.append(torch.zeros((), device=part.device))
            continue
        grads = torch.autograd.grad(part, params, retain_graph=i != live[-1], allow_unused=True)
        found = [g for g in grads if g is not None]
        norms.append(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in found]))
            if found
            else torch.zeros((), device=part.device)
        )
        for j, g in enumerate(grads):
            if g is not None:
                total[j] = g if total[j] is None else total[j].add_(g)
        del grads, found
    value = sum(part.detach() for part in parts)
    carriers = [(p * g).sum() for p, g in zip(params, total) if g is not None]
    if not carriers:
        return value, norms
    carrier = torch.stack([c.float() for c in carriers]).sum()
    return value + (carrier - carrier.detach()), norms


def discriminator_objective(
    disc: Callable[[Tensor], Tensor],
    o_real: Tensor,
    o_gen: Tensor,
    *,
    lambda_d: float = 0.5,
    lambda_r1: float = 0.3,
    lambda_r2: float = 0.3,
    sigma_n: float = 0.01,
    r1r2: bool = True,
    input_scale: float = 1.0,
    generator: torch.Generator | None = None,
    float32: bool = True,
    params: Sequence[Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """MoGAN's discriminator loss `lambda_d L_D + lambda_r1 R1 + lambda_r2 R2` (R1/R2 only with `r1r2`).

    `o_real`, `o_gen`: D's inputs (no gradient needed). With `float32` every D pass runs in float32 with autocast
    off (with or without R1/R2, so the two arms of the R1/R2 ablation train D at the same precision); the clean
    logits serve both L_D and the penalties. `input_scale`, `generator`: see `noise_consistency_penalty` (R1 draws
    its noise first, then R2). With `params` (D's trainable parameters) and `r1r2`, also the ratio of the gradient
    norms the two parts put on them (`loss_with_part_gradient_norms`).

    Returns `(loss, logs)`; logs (detached): `d_real`, `d_gen` (mean logits), `l_d` (L_D unweighted) and, with
    `r1r2`, `r1`, `r2` and, with `params`, `r1r2_grad_ratio` = ||grad(lambda_r1 R1 + lambda_r2 R2)|| /
    ||grad(lambda_d L_D)||.
    """
    if float32:
        o_real, o_gen = o_real.float(), o_gen.float()
    with _full_precision(o_real.device, float32):
        real_logits, gen_logits = disc(o_real), disc(o_gen)
        l_d = d_loss(real_logits, gen_logits)
        logs = {"d_real": real_logits.mean().detach(), "d_gen": gen_logits.mean().detach(), "l_d": l_d.detach()}
        gan = lambda_d * l_d
        if not r1r2:
            return gan, logs
        r1 = noise_consistency_penalty(
            disc, o_real, sigma_n, generator, logits_x=real_logits, input_scale=input_scale, float32=float32
        )
        r2 = noise_consistency_penalty(
            disc, o_gen, sigma_n, generator, logits_x=gen_logits, input_scale=input_scale, float32=float32
        )
    reg = lambda_r1 * r1 + lambda_r2 * r2
    logs.update(r1=r1.detach(), r2=r2.detach())
    if params is None:
        return gan + reg, logs
    loss, (norm_gan, norm_reg) = loss_with_part_gradient_norms((gan, reg), params)
    logs["r1r2_grad_ratio"] = norm_reg / norm_gan.clamp_min(torch.finfo(torch.float32).tiny)
    return loss, logs
