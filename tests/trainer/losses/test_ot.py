"""Tests for trainer.losses.ot (VDOT's OTD loss). Run: python -m pytest tests/trainer/losses/test_ot.py -q"""

from __future__ import annotations

import itertools

import ot
import pytest
import torch

from trainer.losses import ot as otmod
from trainer.losses.ot import (
    latent_to_points,
    ot_gradient,
    ot_gradient_points,
    otd_loss,
    points_to_latent,
    sinkhorn_plan,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _uniform(n: int) -> torch.Tensor:
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


def _assignment_gap(cost: torch.Tensor) -> float:
    """Second-best minus best total cost over all permutations (brute force, n <= 7)."""
    n = cost.shape[0]
    totals = sorted(sum(cost[i, p[i]].item() for i in range(n)) for p in itertools.permutations(range(n)))
    return totals[1] - totals[0]


def _centred_rms(cost: torch.Tensor) -> torch.Tensor:
    """RMS of the doubly centred cost matrix (the normalization scale of sinkhorn_plan), computed directly."""
    centred = cost - cost.mean(1, keepdim=True) - cost.mean(0, keepdim=True) + cost.mean()
    return centred.pow(2).mean().sqrt()


def _entropic_value(a: torch.Tensor, b: torch.Tensor, reg_abs: float) -> torch.Tensor:
    """W_eps(a, b) = <T*, M> + reg_abs * sum T* log T* for one sample, unnormalized cost, float64."""
    plan = sinkhorn_plan(a[None], b[None], reg_abs, max_iter=20000, tol=1e-13, normalize_cost=False)[0]
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return (plan * cost).sum() + reg_abs * (plan * plan.log()).sum()


def test_sinkhorn_matches_exact_emd_as_reg_goes_to_zero():
    bsz, n, d = 4, 6, 3
    g = _gen(1)
    a = torch.randn(bsz, n, d, generator=g, dtype=torch.float64)
    b = torch.randn(bsz, n, d, generator=g, dtype=torch.float64) + 0.5
    plan = sinkhorn_plan(a, b, 1e-3, max_iter=5000, tol=1e-9)
    for k in range(bsz):
        cost = ot.dist(a[k], b[k])  # squared Euclidean
        # Precondition: a unique optimal assignment with a clear margin (in normalized cost units), so the
        # entropic plan at reg=1e-3 is within exp(-gap/reg) < 1e-15 of it and the comparison is meaningful.
        assert _assignment_gap(cost / _centred_rms(cost)) > 0.03
        exact = ot.emd(_uniform(n), _uniform(n), cost)
        assert torch.allclose(exact * n, (exact * n).round())  # a permutation matrix / n
        # Relative error per entry (plan entries are 0 or 1/n); Sinkhorn converges slowly at reg=1e-3.
        assert (plan[k] - exact).abs().max().item() * n < 1e-3


def test_sinkhorn_marginals_are_uniform_float32_non_square():
    g = _gen(2)
    a = torch.randn(3, 10, 5, generator=g)
    b = torch.randn(3, 7, 5, generator=g) * 2.0 + 1.0
    plan, info = sinkhorn_plan(a, b, 0.1, max_iter=2000, tol=1e-6, return_info=True)
    assert plan.shape == (3, 10, 7) and plan.dtype == torch.float32
    assert (plan >= 0).all()
    torch.testing.assert_close(plan.sum(2), torch.full((3, 10), 0.1), rtol=1e-5, atol=0)
    torch.testing.assert_close(plan.sum(1), torch.full((3, 7), 1 / 7), rtol=1e-5, atol=0)
    assert info["n_iters"] < 2000  # the tolerance stop was reached, not the cap
    assert info["cost_scale"].shape == (3,)


def test_plan_equals_pot_sinkhorn_on_the_full_squared_euclidean_cost():
    # sinkhorn_plan solves on the doubly centred cost; POT's plain solver on ||a_i - b_j||^2 must agree.
    g = _gen(3)
    a = torch.randn(2, 6, 4, generator=g, dtype=torch.float64) + 3.0
    b = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    plan = sinkhorn_plan(a, b, 0.7, normalize_cost=False, max_iter=5000, tol=1e-12)
    for k in range(2):
        ref = ot.sinkhorn(
            _uniform(6),
            _uniform(5),
            ot.dist(a[k], b[k]),
            0.7,
            method="sinkhorn_log",
            numItermax=5000,
            stopThr=1e-13,
        )
        torch.testing.assert_close(plan[k], ref, rtol=1e-8, atol=1e-12)


def test_normalized_cost_is_the_same_as_scaling_reg_by_the_centred_cost_rms():
    g = _gen(3)
    a = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    b = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    reg = 0.2
    plan_norm, info = sinkhorn_plan(a, b, reg, max_iter=5000, tol=1e-12, return_info=True)
    for k in range(2):
        rms = _centred_rms(ot.dist(a[k], b[k])).item()
        torch.testing.assert_close(info["cost_scale"][k].item(), rms)
        plan_abs = sinkhorn_plan(a[k : k + 1], b[k : k + 1], reg * rms, normalize_cost=False, max_iter=5000, tol=1e-12)
        torch.testing.assert_close(plan_norm[k], plan_abs[0], rtol=1e-9, atol=1e-12)
    # Scale-free: multiplying every point by 10 leaves the normalized plan unchanged ...
    plan_scaled = sinkhorn_plan(10 * a, 10 * b, reg, max_iter=5000, tol=1e-12)
    torch.testing.assert_close(plan_scaled, plan_norm, rtol=1e-9, atol=1e-12)
    # ... and so does a global offset between the clouds (it only adds f_i + g_j to the cost), which a
    # mean-of-cost normalization would not survive: mean(M) grows by |offset|^2.
    plan_offset = sinkhorn_plan(a + 5.0, b, reg, max_iter=5000, tol=1e-12)
    torch.testing.assert_close(plan_offset, plan_norm, rtol=1e-7, atol=1e-12)
    assert ot.dist(a[0] + 5.0, b[0]).mean() > 5 * ot.dist(a[0], b[0]).mean()
    # not vacuous: the plan does depend on the effective reg
    assert (sinkhorn_plan(a, b, 2 * reg, max_iter=5000, tol=1e-12) - plan_norm).abs().max() > 1e-3


def test_looped_fallback_solver_matches_batched_solver():
    g = _gen(4)
    log_kernel = -torch.rand(3, 8, 8, generator=g, dtype=torch.float64) * 5
    plan_b, _ = otmod._solve_batched(log_kernel, 3000, 1e-13)
    plan_l, _ = otmod._solve_looped(log_kernel, 3000, 1e-13)
    torch.testing.assert_close(plan_b, plan_l, rtol=1e-8, atol=1e-12)


def test_ot_gradient_matches_finite_difference_of_entropic_ot_value():
    # Envelope theorem: dW_eps/da_i = sum_j T*_ij dM_ij/da_i = 2 sum_j T*_ij (a_i - b_j) = 2 * grad_i
    # (literal, unrescaled form). Fixed absolute reg, float64, central differences.
    g = _gen(5)
    n, d, reg_abs, h = 5, 3, 0.5, 1e-5
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, d, generator=g, dtype=torch.float64)
    grad = ot_gradient_points(
        a[None], b[None], reg_abs, rescale=False, normalize_cost=False, max_iter=20000, tol=1e-13
    )[0]
    fd = torch.zeros_like(a)
    for i in range(n):
        for c in range(d):
            step = torch.zeros_like(a)
            step[i, c] = h
            fd[i, c] = (_entropic_value(a + step, b, reg_abs) - _entropic_value(a - step, b, reg_abs)) / (2 * h)
    assert grad.abs().max() > 1e-2  # not trivially zero
    torch.testing.assert_close(fd, 2 * grad, rtol=1e-6, atol=1e-8)
    # The default rescaled gradient is the literal one times I (rows of T* sum to 1/I).
    grad_rescaled = ot_gradient_points(a[None], b[None], reg_abs, normalize_cost=False, max_iter=20000, tol=1e-13)
    torch.testing.assert_close(grad_rescaled[0], n * grad, rtol=1e-9, atol=1e-12)


def test_rescaled_gradient_tends_to_dmd_like_displacement_for_a_permutation():
    # b is a permutation of a plus a small offset: as reg -> 0 the plan is that permutation and the
    # rescaled gradient is a_i - b_sigma(i) (same units as DMD's x0_fake - x0_real).
    g = _gen(6)
    n, d = 7, 4
    a = torch.randn(1, n, d, generator=g, dtype=torch.float64) * 3
    perm = torch.randperm(n, generator=g)
    b = a[:, perm] + 0.05 * torch.randn(1, n, d, generator=g, dtype=torch.float64)
    inv = torch.argsort(perm)  # a_i is matched to b_inv[i] since b[inv[i]] = a[i] + noise
    grad = ot_gradient_points(a, b, 1e-3, max_iter=5000, tol=1e-10)
    target = a - b[:, inv]  # entries ~0.05; the unmatched a - b is ~4 and the unrescaled grad target / 7
    # Sinkhorn's row marginals converge only like 0.5 / iterations at such a small reg, hence atol 1e-3.
    torch.testing.assert_close(grad, target, rtol=0, atol=1e-3)


def test_ot_gradient_on_latents_uses_spatial_points_and_keeps_shape_dtype():
    g = _gen(7)
    shape = (2, 3, 2, 2, 3)  # B, C, F, h, w -> I = 6 points of D = 6
    x_fake = torch.randn(shape, generator=g)
    x_real = torch.randn(shape, generator=g)
    pts = latent_to_points(x_fake)
    assert pts.shape == (2, 6, 6)
    # point (y, x) holds every (c, f) value at that location
    torch.testing.assert_close(pts[1, 1 * 3 + 2], x_fake[1, :, :, 1, 2].reshape(-1))
    torch.testing.assert_close(points_to_latent(pts, shape), x_fake)
    grad = ot_gradient(x_fake, x_real, 0.1)
    assert grad.shape == shape and grad.dtype == torch.float32 and not grad.requires_grad
    expected = points_to_latent(ot_gradient_points(pts, latent_to_points(x_real), 0.1), shape)
    torch.testing.assert_close(grad, expected)
    grad_bf16 = ot_gradient(x_fake.bfloat16(), x_real.bfloat16(), 0.1)
    assert grad_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(grad_bf16.float(), grad, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("normalize", [True, False])
def test_otd_loss_gradient_wrt_x0_hat_is_the_normalized_ot_gradient(normalize: bool):
    g = _gen(8)
    shape = (2, 4, 2, 3, 3)
    x0_hat = torch.randn(shape, generator=g, requires_grad=True)
    x0_fake = torch.randn(shape, generator=g, requires_grad=True)
    x0_real = torch.randn(shape, generator=g)
    loss = otd_loss(x0_hat, x0_fake, x0_real, 0.1, normalize=normalize)
    assert loss.ndim == 0
    loss.backward()
    g_ot = ot_gradient(x0_fake.detach(), x0_real, 0.1)
    if normalize:
        denom = (x0_hat.detach() - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
        g_ot = g_ot / denom
    numel = x0_hat.numel()
    # d/dx0_hat of 0.5 * mean (x0_hat - sg(x0_hat - g))^2 = g / numel: a descent step moves x0_hat along -g,
    # i.e. each fake point towards its OT target.
    torch.testing.assert_close(x0_hat.grad, g_ot / numel, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(loss.detach(), 0.5 * (g_ot**2).mean(), rtol=1e-5, atol=0)
    assert x0_fake.grad is None  # x0_fake only supplies a detached target


def test_sinkhorn_runs_without_autograd_on_inputs_requiring_grad():
    a = torch.randn(1, 4, 2, requires_grad=True)
    b = torch.randn(1, 4, 2)
    plan = sinkhorn_plan(a, b, 0.1)
    assert not plan.requires_grad and plan.device == a.device


def test_bad_inputs_raise_clear_errors():
    a = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="reg"):
        sinkhorn_plan(a, a, 0.0)
    with pytest.raises(ValueError, match=r"\[B, I, D\]"):
        sinkhorn_plan(a[0], a[0], 0.1)
    with pytest.raises(ValueError, match="dimension D"):
        sinkhorn_plan(a, torch.randn(2, 4, 5), 0.1)
    with pytest.raises(ValueError, match="max_iter"):
        sinkhorn_plan(a, a, 0.1, max_iter=0)
    with pytest.raises(ValueError, match=r"\[B, C, F, h, w\]"):
        ot_gradient(a, a, 0.1)
    with pytest.raises(ValueError, match="same"):
        otd_loss(torch.randn(1, 2, 1, 2, 2), torch.randn(1, 2, 1, 2, 2), torch.randn(1, 2, 1, 2, 3), 0.1)
