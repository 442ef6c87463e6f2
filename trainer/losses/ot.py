"""Optimal Transport Distillation (OTD) loss of VDOT.

Pure tensor functions, no model code:

- :func:`sinkhorn_plan` -- batched entropic OT plan between two point clouds (log-domain Sinkhorn,
  POT with its torch backend, run on the tensors' own device, no autograd).
- :func:`ot_gradient_points` / :func:`ot_gradient` -- ``grad_i = sum_j T*_ij (a_i - b_j)`` on point clouds /
  on latents ``[B, C, F, h, w]`` (flattened to ``I = h*w`` points of dimension ``D = C*F``, as in the paper).
- :func:`otd_loss` -- ``L_OTD = 0.5 * mean || x0_hat - sg(x0_hat - grad_OT) ||^2``, the same form as DMD.

Tests: ``python -m pytest tests/trainer/losses/test_ot.py -q``;
cost benchmark: ``python bench/otd_cost.py --device cpu``.
"""

from __future__ import annotations

import math
from typing import Any

import ot
import torch
import torch.nn.functional as F

try:  # POT >= 0.9.6 ships a batched (B, n, m) Sinkhorn; older versions only the per-problem solver.
    from ot.batch import bregman_log_projection_batch as _pot_log_projection_batch
except ImportError:  # pragma: no cover - depends on the installed POT version
    _pot_log_projection_batch = None

__all__ = [
    "latent_to_points",
    "ot_gradient",
    "ot_gradient_points",
    "otd_loss",
    "points_to_latent",
    "sinkhorn_plan",
]

# Floor for the cost scale and for DMD-style denominators: keeps identical inputs (zero cost, zero
# distance) from dividing by zero; far below any real latent's scale.
_TINY = 1e-12


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    # Sinkhorn in bf16/fp16 is meaningless: -M/reg reaches -1e3..-1e4 and logsumexp of such values
    # loses every significant digit in a 8/11-bit mantissa. float64 is kept when the caller asks for it
    # (the tests' finite-difference checks).
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_points(a_pts: torch.Tensor, b_pts: torch.Tensor) -> None:
    if a_pts.ndim != 3 or b_pts.ndim != 3:
        raise ValueError(
            f"a_pts and b_pts must be [B, I, D]; got a_pts {tuple(a_pts.shape)}, b_pts {tuple(b_pts.shape)}"
        )
    if a_pts.shape[0] != b_pts.shape[0] or a_pts.shape[2] != b_pts.shape[2]:
        raise ValueError(
            "a_pts and b_pts must share batch size B and point dimension D; "
            f"got a_pts {tuple(a_pts.shape)}, b_pts {tuple(b_pts.shape)}"
        )
    if a_pts.shape[1] < 1 or b_pts.shape[1] < 1:
        raise ValueError(f"point clouds must hold at least 1 point; got I={a_pts.shape[1]}, J={b_pts.shape[1]}")
    if a_pts.device != b_pts.device:
        raise ValueError(f"a_pts is on {a_pts.device} but b_pts is on {b_pts.device}")


def _check_solver_args(reg: float, max_iter: int, tol: float) -> None:
    if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
        raise ValueError(f"reg must be a finite number > 0; got {reg!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be an int >= 1; got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol must be >= 0 (0 = always run max_iter iterations); got {tol!r}")


def _centred_cost(a_pts: torch.Tensor, b_pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Doubly centred squared-Euclidean cost and its per-sample RMS.

    ``M^c_ij = M_ij - mean_j M_ij - mean_i M_ij + mean_ij M = -2 <a_i - mean(a), b_j - mean(b)>`` for
    ``M_ij = ||a_i - b_j||^2``. Adding any ``f_i + g_j`` to the cost leaves the entropic plan unchanged (the
    marginals are fixed, so it only adds a constant to the objective), hence M^c gives exactly the plan of M.
    Returns ``(M^c [B, I, J], rms [B])``; the RMS comes from D x D Gram matrices, with no extra [B, I, J]
    temporary: ``||A_c B_c^T||_F^2 = sum((A_c^T A_c) * (B_c^T B_c))``.
    """
    a_c = a_pts - a_pts.mean(dim=1, keepdim=True)
    b_c = b_pts - b_pts.mean(dim=1, keepdim=True)
    cost = torch.bmm(a_c, b_c.transpose(1, 2)).mul_(-2.0)
    gram_a = torch.bmm(a_c.transpose(1, 2), a_c)  # [B, D, D]
    gram_b = torch.bmm(b_c.transpose(1, 2), b_c)
    sq_frob = 4.0 * (gram_a * gram_b).sum(dim=(1, 2)).clamp_min(0.0)
    rms = (sq_frob / (a_pts.shape[1] * b_pts.shape[1])).sqrt()
    return cost, rms


def _solve_batched(log_kernel: torch.Tensor, max_iter: int, tol_abs: float) -> tuple[torch.Tensor, int]:
    """POT's batched log-domain Sinkhorn on ``log_kernel = -M / reg`` with uniform marginals."""
    bsz, n, m = log_kernel.shape
    a = torch.full((bsz, n), 1.0 / n, dtype=log_kernel.dtype, device=log_kernel.device)
    b = torch.full((bsz, m), 1.0 / m, dtype=log_kernel.dtype, device=log_kernel.device)
    out = _pot_log_projection_batch(log_kernel, a, b, max_iter=max_iter, tol=tol_abs, grad="detach")
    return out["T"], int(out["n_iters"]) + 1


def _solve_looped(log_kernel: torch.Tensor, max_iter: int, tol_abs: float) -> tuple[torch.Tensor, int]:
    """Fallback for POT without ``ot.batch``: one ``ot.bregman.sinkhorn_log`` call per sample."""
    bsz, n, m = log_kernel.shape
    a = torch.full((n,), 1.0 / n, dtype=log_kernel.dtype, device=log_kernel.device)
    b = torch.full((m,), 1.0 / m, dtype=log_kernel.dtype, device=log_kernel.device)
    plans, iters = [], 0
    for k in range(bsz):
        # sinkhorn_log takes (M, reg) and forms -M/reg itself; reg = 1 on the pre-divided kernel.
        plan, log = ot.bregman.sinkhorn_log(
            a, b, -log_kernel[k], 1.0, numItermax=max_iter, stopThr=tol_abs, warn=False, log=True
        )
        plans.append(plan)
        iters = max(iters, int(log["niter"]) + 1)
    return torch.stack(plans), iters


def sinkhorn_plan(
    a_pts: torch.Tensor,
    b_pts: torch.Tensor,
    reg: float,
    *,
    max_iter: int = 1000,
    tol: float = 1e-4,
    normalize_cost: bool = True,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """Entropic OT plan between point clouds ``a_pts [B, I, D]`` and ``b_pts [B, J, D]``, per sample.

    Solves ``min_T <T, M> + reg_abs * sum_ij T_ij log T_ij`` with ``T 1 = 1/I``, ``T^T 1 = 1/J`` and
    ``M_ij = ||a_i - b_j||^2`` by log-domain Sinkhorn (POT, torch backend; POT's batched solver when the
    installed POT has ``ot.batch``, else a loop over the batch). It is solved on the doubly centred cost
    ``M^c``, which has exactly the same plan and no large separable terms to cancel in float32. Runs under
    ``torch.no_grad`` on the inputs' device; the plan is a constant (by the envelope theorem its derivative
    is not needed).

    Args:
        reg: entropic regularization. With ``normalize_cost=True`` it is relative to the cost scale:
            ``reg_abs = reg * RMS(M^c)`` per sample, ``M^c`` the doubly centred cost (the body says why).
            A smaller reg spreads each fake point over fewer real points and needs more iterations
            (``bench/otd_cost.py``).
        max_iter: Sinkhorn iteration cap (one iteration = one row and one column update).
        tol: stop when the row marginal's relative RMS error ``sqrt(mean_i(((r_i - 1/I) * I)^2))`` falls below
            ``tol`` (checked every 10 iterations, as POT does); 0 runs exactly ``max_iter`` iterations.
        normalize_cost: divide the cost by its per-sample centred RMS so ``reg`` is scale-free; False: ``reg``
            is absolute, in the units of ``||a_i - b_j||^2``.
        return_info: also return ``{"n_iters": int, "cost_scale": Tensor[B]}``.

    Returns:
        plan ``[B, I, J]`` in float32 (float64 if an input is float64), on the inputs' device.
    """
    _check_points(a_pts, b_pts)
    _check_solver_args(reg, max_iter, tol)
    dtype = _compute_dtype(a_pts, b_pts)
    with torch.no_grad():
        cost, rms = _centred_cost(a_pts.detach().to(dtype), b_pts.detach().to(dtype))
        if normalize_cost:
            # Scale = RMS of the doubly centred cost M^c, not mean/max of M. mean(M) is dominated by the part
            # of M that cannot affect the plan (|a_i|^2 + |b_j|^2 ~ 2D for unit-variance latents, plus
            # |mean(a) - mean(b)|^2, which grows when fake and real are globally offset), and the
            # plan-relevant contrast shrinks like 1/sqrt(D) relative to it: with mean(M) the same reg spreads
            # each fake point over far more real points at Wan scale (D = 336) than at tiny scale (D = 40).
            # max(M) has the same flaw plus outlier sensitivity. RMS(M^c) is invariant to translating either
            # cloud and to rescaling both, so reg is a temperature in units of the typical cost contrast. The
            # plan of (M^c / s, reg) equals that of (M, reg * s).
            scale = rms.clamp_min(_TINY)
        else:
            scale = torch.ones(cost.shape[0], dtype=dtype, device=cost.device)
        log_kernel = cost.div_(-(reg * scale).view(-1, 1, 1))  # -M^c / reg_abs, in place: no second [B,I,J]
        n_points = log_kernel.shape[1]
        # POT's stop test is the L2 norm of (row marginal - 1/I). A relative per-row error delta gives an
        # L2 norm of delta / sqrt(I), so this makes `tol` mean the same thing at every I.
        tol_abs = tol / math.sqrt(n_points)
        solver = _solve_batched if _pot_log_projection_batch is not None else _solve_looped
        plan, n_iters = solver(log_kernel, max_iter, tol_abs)
    if return_info:
        return plan, {"n_iters": n_iters, "cost_scale": scale}
    return plan


def ot_gradient_points(
    a_pts: torch.Tensor,
    b_pts: torch.Tensor,
    reg: float,
    *,
    rescale: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-4,
    normalize_cost: bool = True,
) -> torch.Tensor:
    """``grad_i = sum_j T*_ij (a_i - b_j)`` for point clouds ``[B, I, D]`` (T* detached), shape of ``a_pts``.

    ``rescale=True`` (default) divides row i by its mass ``sum_j T*_ij`` (= 1/I at convergence), giving
    ``grad_i = a_i - sum_j (T*_ij / sum_k T*_ik) b_j``: fake point minus its barycentric OT target.
    Why: with uniform marginals every row of T* sums to 1/I, so the literal formula is the displacement
    divided by I. For I = h*w = 6240 (Wan 480x832) that is ~6000x smaller than DMD's ``x0_fake - x0_real``
    and ~100x smaller than at tiny scale (I = 64), so one loss weight could not serve both scales, nor
    ``L_OTD + lambda * L_DMD`` be balanced with lambda ~ 1. Rescaled, as reg -> 0 with a permutation plan
    ``grad_i = a_i - b_sigma(i)``: the same units as DMD's gradient, independent of I. Dividing by the
    actual row mass rather than the nominal 1/I keeps this exact when Sinkhorn stops before convergence.
    The factor 2 of ``d/da_i ||a_i - b_j||^2`` is dropped, as in the paper (it is a constant step size).
    ``rescale=False`` returns the paper's literal ``sum_j T*_ij (a_i - b_j)`` (= 0.5 * dW_eps/da_i).
    Output dtype is ``a_pts.dtype``; no autograd graph.
    """
    plan = sinkhorn_plan(a_pts, b_pts, reg, max_iter=max_iter, tol=tol, normalize_cost=normalize_cost)
    with torch.no_grad():
        a = a_pts.detach().to(plan.dtype)
        b = b_pts.detach().to(plan.dtype)
        row_mass = plan.sum(dim=2, keepdim=True)  # [B, I, 1]
        transported = torch.bmm(plan, b)  # sum_j T_ij b_j, [B, I, D]
        if rescale:
            grad = a - transported / row_mass.clamp_min(torch.finfo(plan.dtype).tiny)
        else:
            grad = row_mass * a - transported
    return grad.to(a_pts.dtype)


def latent_to_points(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, h, w]`` -> ``[B, h*w, C*F]``: one point per spatial location, its C*F values as coords."""
    if x.ndim != 5:
        raise ValueError(f"latent must be [B, C, F, h, w]; got shape {tuple(x.shape)}")
    bsz, c, f, h, w = x.shape
    return x.reshape(bsz, c * f, h * w).transpose(1, 2)


def points_to_latent(p: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`latent_to_points` for a latent of ``shape`` ``[B, C, F, h, w]``."""
    bsz, c, f, h, w = shape
    return p.transpose(1, 2).reshape(bsz, c, f, h, w)


def ot_gradient(
    x0_fake: torch.Tensor,
    x0_real: torch.Tensor,
    reg: float,
    *,
    rescale: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-4,
    normalize_cost: bool = True,
) -> torch.Tensor:
    """OT gradient on latents ``[B, C, F, h, w]`` (VDOT's ``grad_OT``), same shape/dtype as ``x0_fake``.

    Points a_i (rows of x0_fake) and b_j (rows of x0_real) are the ``I = h*w`` spatial locations with
    ``D = C*F`` coordinates each; see :func:`ot_gradient_points` for the formula and the ``rescale`` choice.
    """
    if x0_fake.shape != x0_real.shape:
        raise ValueError(f"x0_fake {tuple(x0_fake.shape)} and x0_real {tuple(x0_real.shape)} must have the same shape")
    grad = ot_gradient_points(
        latent_to_points(x0_fake),
        latent_to_points(x0_real),
        reg,
        rescale=rescale,
        max_iter=max_iter,
        tol=tol,
        normalize_cost=normalize_cost,
    )
    return points_to_latent(grad, x0_fake.shape)


def otd_loss(
    x0_hat: torch.Tensor,
    x0_fake: torch.Tensor,
    x0_real: torch.Tensor,
    reg: float,
    normalize: bool = True,
    *,
    rescale: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-4,
    normalize_cost: bool = True,
) -> torch.Tensor:
    """VDOT's OTD loss, a scalar: ``0.5 * mean_{b,elements} (x0_hat - sg(x0_hat - g))^2``.

    ``g = ot_gradient(x0_fake, x0_real)``, divided per sample by ``mean |x0_hat - x0_real|`` (detached) when
    ``normalize`` -- DMD's per-sample normalization, so the two gradients share units.
    Reduction: 0.5 * mean over every element (= mean over the batch of the per-sample mean), the form the
    DMD2 / Self-Forcing code uses for L_DMD; then ``dL/dx0_hat = g / numel`` exactly like L_DMD, so
    ``L_OTD + lambda * L_DMD`` weighs like with like. (Without the 0.5, L_OTD would only rescale lambda / the
    learning rate.) Only ``x0_hat`` receives gradient; x0_fake/x0_real are detached.
    """
    if not (x0_hat.shape == x0_fake.shape == x0_real.shape):
        raise ValueError(
            "x0_hat, x0_fake and x0_real must have the same [B, C, F, h, w] shape; got "
            f"{tuple(x0_hat.shape)}, {tuple(x0_fake.shape)}, {tuple(x0_real.shape)}"
        )
    grad = ot_gradient(
        x0_fake, x0_real, reg, rescale=rescale, max_iter=max_iter, tol=tol, normalize_cost=normalize_cost
    ).float()
    with torch.no_grad():
        if normalize:
            dims = tuple(range(1, x0_hat.ndim))
            denom = (x0_hat.detach().float() - x0_real.detach().float()).abs().mean(dim=dims, keepdim=True)
            grad = grad / denom.clamp_min(_TINY)
        target = x0_hat.detach().float() - grad
    return 0.5 * F.mse_loss(x0_hat.float(), target, reduction="mean")
