"""MoGAN's motion-GAN losses and flow-tensor preparation (pure functions).

From the MoGAN paper (`shared/papers/mogan-motion-gan-post-training.md`, sections 4.1, 4.3 and A):
  * flow tensor: RAFT-style flow `[T-1, 2, H, W]` -> duplicate the last flow so there are T ->
    append the per-pixel magnitude ||o||_2 as a third channel -> `[T, 3, H, W]` (`flow_tensor`);
  * logistic GAN (eq. 4-5), g(x) = softplus(x) = log(1 + e^x):
      L_D = g(-D(o_real)) + g(D(o_gen))   (`d_loss`),   L_G = g(-D(o_gen))   (`g_loss`);
  * R1 / R2 (eq. 6-7), the noise-consistency approximation of gradient penalties:
      R = || D(o) - D(N(o, sigma I)) ||_2^2 with sigma = 0.01, R1 on real flows, R2 on generated ones
    (`noise_consistency_penalty`).
Weights (lambda_1 = lambda_2 = 0.5, lambda_R1 = lambda_R2 = 0.3) are applied by the method, and the flow's
scale normalization by the discriminator (`trainer/models/discriminators.py`), not here.

Run its tests: `python -m pytest tests/trainer/losses/test_gan.py -q`.
"""

from __future__ import annotations

from collections.abc import Callable

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


def noise_consistency_penalty(
    disc: Callable[[Tensor], Tensor],
    x: Tensor,
    sigma_n: float = 0.01,
    generator: torch.Generator | None = None,
    *,
    logits_x: Tensor | None = None,
) -> Tensor:
    """R1 / R2 of MoGAN (eq. 6-7): mean over the batch of || D(x) - D(x + sigma_n * n) ||_2^2, n ~ N(0, I).

    This is the finite-difference approximation of the R1 / R2 gradient penalties that the paper takes
    from APT (its ref. [31]): for small sigma it approaches sigma^2 ||grad_x D(x)||^2 in expectation, with no
    double backward (which a DiT discriminator with fused attention does not support cheaply).
    Choices:
      * `x` is detached: the penalty regularizes the discriminator only (eq. 6-7 are discriminator terms);
        R1 passes real flow tensors, R2 generated ones.
      * Gradients flow through both D(x) and D(x + noise), as the formula is written (no stop-gradient).
      * The squared norm is summed over a sample's logit entries (one logit per sample: just the squared
        difference) and averaged over the batch (the paper's expectation).
      * `logits_x` may pass D(x) already computed for the GAN loss, saving one forward pass; it must be
        D applied to this same `x` with gradients kept.
      * `generator` makes the noise reproducible (the noise is drawn on x's device and dtype).
    """
    if sigma_n < 0:
        raise ValueError(f"sigma_n must be >= 0, got {sigma_n}")
    x = x.detach()
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    d_x = disc(x) if logits_x is None else logits_x
    d_noisy = disc(x + sigma_n * noise)
    if d_x.shape != d_noisy.shape:
        raise ValueError(f"logits_x shape {tuple(d_x.shape)} != D(x + noise) shape {tuple(d_noisy.shape)}")
    diff = (d_x - d_noisy).float()
    if diff.dim() == 0:
        return diff.square()
    return diff.square().reshape(diff.shape[0], -1).sum(dim=1).mean()
