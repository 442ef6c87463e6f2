"""Distribution Matching Distillation losses (DMD / DMD2), pure functions.

Used as the regularizer of MoGAN and VDOT. Notation (flow matching):
`x_sigma = (1 - sigma) x0 + sigma eps`, `v = eps - x0`, so `x0 = x_sigma - sigma v`.
  * generator: with the generator sample `x0_hat` re-noised to `x_sigma`, the teacher's (CFG) and the
    fake score's x0 predictions `x0_real`, `x0_fake`:
        grad  = (x0_fake - x0_real) / mean_per_sample(|x0_hat - x0_real|)          (`dmd_gradient`)
        L_DMD = 0.5 * || x0_hat - stopgrad(x0_hat - grad) ||^2                       (`dmd_loss`)
    so that d L_DMD / d x0_hat = grad / numel: the KL gradient direction of DMD, normalized per sample;
  * fake score: flow-matching loss of `v_fake` on detached generator samples (`denoising_loss`).

Run its tests: `python -m pytest tests/trainer/losses/test_dmd.py -q`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DMD_EPS = 1e-6


def _check_same_shape(min_dim: int, **tensors: Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"tensors must have the same shape; got {shapes}")
    if next(iter(tensors.values())).dim() < min_dim:
        raise ValueError(f"tensors must have at least {min_dim} dims ([B, ...]); got shapes {shapes}")


@torch.no_grad()
def dmd_gradient(x0_hat: Tensor, x0_real: Tensor, x0_fake: Tensor, eps: float = DMD_EPS) -> Tensor:
    """DMD2's normalized gradient `(x0_fake - x0_real) / mean(|x0_hat - x0_real|)`, detached.

    The normalizer is the mean over all non-batch dims of each sample (keepdim, broadcast back), floored
    at `eps` so a sample that already matches the teacher does not divide by zero. Computed in float32
    and returned in `x0_hat`'s dtype. Non-finite entries are zeroed (as DMD2 does with `nan_to_num`),
    so one bad teacher prediction cannot poison the generator update.
    """
    return _dmd_gradient_f32(x0_hat, x0_real, x0_fake, eps).to(x0_hat.dtype)


@torch.no_grad()
def _dmd_gradient_f32(x0_hat: Tensor, x0_real: Tensor, x0_fake: Tensor, eps: float) -> Tensor:
    # [B, ...] with at least one non-batch dim: a 1-D tensor would be ambiguous (B samples of one value?).
    _check_same_shape(2, x0_hat=x0_hat, x0_real=x0_real, x0_fake=x0_fake)
    x0_hat, x0_real, x0_fake = x0_hat.float(), x0_real.float(), x0_fake.float()
    dims = tuple(range(1, x0_hat.dim()))
    normalizer = (x0_hat - x0_real).abs().mean(dim=dims, keepdim=True)
    grad = (x0_fake - x0_real) / normalizer.clamp_min(eps)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def dmd_loss(x0_hat: Tensor, x0_real: Tensor, x0_fake: Tensor, eps: float = DMD_EPS) -> Tensor:
    """`0.5 * mean((x0_hat - stopgrad(x0_hat - grad))^2)`, a float32 scalar with grad only to `x0_hat`.

    Reduction: the mean over all elements, as DMD2 (`0.5 * F.mse_loss(..., reduction="mean")`). Its value
    is 0.5 * mean(grad^2) and its gradient w.r.t. x0_hat is grad / numel. A sum would make the step size
    scale with the video size (frames x latent pixels); the mean keeps one learning rate valid across
    the tiny and full scales and matches the reference implementation the paper builds on.
    `x0_real` and `x0_fake` carry no gradient (they are detached here).
    """
    grad = _dmd_gradient_f32(x0_hat, x0_real, x0_fake, eps)
    target = (x0_hat.detach().float() - grad).detach()
    return 0.5 * F.mse_loss(x0_hat.float(), target, reduction="mean")


def denoising_loss(v_pred: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """Flow-matching loss of the fake score (paper eq. 3): mean((v_pred - (eps - x0))^2), float32 scalar.

    The target is detached: in the fake-score step `x0` is a detached generator sample and only the
    fake score `v_pred` is trained.
    """
    _check_same_shape(1, v_pred=v_pred, x0=x0, eps=eps)
    target = (eps.float() - x0.float()).detach()
    return F.mse_loss(v_pred.float(), target, reduction="mean")
