"""Diffusion-DPO loss on flow-matching errors, as used by DF-DPO.

Pure tensor functions:

- :func:`flow_matching_error` -- per-sample ``mean (v_pred - (eps - x0))^2``, the DPO error ``e(m, x)``.
- :func:`diffusion_dpo_loss` -- ``-log sigmoid(-beta/2 * [(e_theta_w - e_ref_w) - (e_theta_l - e_ref_l)])``.

The caller evaluates the trained and the frozen reference model on the win and the lose latent with the
same ``(sigma, eps)`` for both members of a pair. Tests:
``python -m pytest tests/trainer/losses/test_dpo.py -q``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["diffusion_dpo_loss", "flow_matching_error"]


def flow_matching_error(v_pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error of ``v_pred`` vs the flow-matching target ``eps - x0``; shape ``[B]``.

    Mean (not sum) over the non-batch dimensions, as Diffusion-DPO does: ``beta = 5000`` (the paper's value,
    taken from Diffusion-DPO) was tuned for per-element mean errors. Computed in float32 (or float64).
    """
    if not (v_pred.shape == x0.shape == eps.shape):
        raise ValueError(
            f"v_pred, x0 and eps must have the same shape; got {tuple(v_pred.shape)}, {tuple(x0.shape)}, "
            f"{tuple(eps.shape)}"
        )
    if v_pred.ndim < 2:
        raise ValueError(f"inputs must be batched [B, ...] with at least 2 dims; got shape {tuple(v_pred.shape)}")
    dtype = torch.float64 if v_pred.dtype == torch.float64 else torch.float32
    target = eps.to(dtype) - x0.to(dtype)
    return (v_pred.to(dtype) - target).pow(2).flatten(1).mean(dim=1)


def diffusion_dpo_loss(
    err_theta_w: torch.Tensor,
    err_ref_w: torch.Tensor,
    err_theta_l: torch.Tensor,
    err_ref_l: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-DPO loss (mean over the batch) and logging stats.

    ``logits = -beta/2 * [(e_theta_w - e_ref_w) - (e_theta_l - e_ref_l)]``;
    ``loss = mean(-logsigmoid(logits))``.
    A positive logit means the model has lowered its error on the win sample more (relative to the reference)
    than on the lose sample. The reference errors are detached (the reference model is frozen).

    Stats (python floats): ``implicit_acc`` -- fraction of pairs with logit > 0 (ties count 1/2, as in
    Diffusion-DPO); ``reward_margin`` -- mean logit (the implicit reward of the win minus that of the lose);
    ``win_gap`` / ``lose_gap`` -- mean ``e_theta - e_ref`` on the win / lose samples (win_gap < 0: the model
    fits the win better than the reference does); ``loss``.
    """
    errs = (err_theta_w, err_ref_w, err_theta_l, err_ref_l)
    names = ("err_theta_w", "err_ref_w", "err_theta_l", "err_ref_l")
    for name, e in zip(names, errs):
        if e.ndim != 1:
            raise ValueError(f"{name} must be a per-sample vector [B]; got shape {tuple(e.shape)}")
        if e.shape != err_theta_w.shape:
            raise ValueError(f"{name} has shape {tuple(e.shape)}, expected {tuple(err_theta_w.shape)}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0; got {beta!r}")

    win_gap = err_theta_w - err_ref_w.detach()
    lose_gap = err_theta_l - err_ref_l.detach()
    logits = -0.5 * beta * (win_gap - lose_gap)
    # logsigmoid is the stable form: -log(sigmoid(x)) overflows for large negative x with beta = 5000.
    loss = -F.logsigmoid(logits).mean()

    with torch.no_grad():
        acc = (logits > 0).float().mean() + 0.5 * (logits == 0).float().mean()
        stats = {
            "loss": float(loss.detach()),
            "implicit_acc": float(acc),
            "reward_margin": float(logits.mean()),
            "win_gap": float(win_gap.mean()),
            "lose_gap": float(lose_gap.mean()),
        }
    return loss, stats
