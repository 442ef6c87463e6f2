"""Tests for trainer.losses.dpo (DF-DPO's Diffusion-DPO loss).

Run: python -m pytest tests/trainer/losses/test_dpo.py -q
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from trainer.losses.dpo import diffusion_dpo_loss, flow_matching_error


def test_flow_matching_error_hand_values():
    v_pred = torch.zeros(2, 3, 1, 2, 2)
    x0 = torch.ones(2, 3, 1, 2, 2)
    eps = torch.full((2, 3, 1, 2, 2), 3.0)
    eps[1] = 1.0  # target eps - x0 = 2 for sample 0, 0 for sample 1
    v_pred[1, 0, 0, 0, 0] = 6.0  # one element off by 6 out of 12 -> mean 36 / 12 = 3
    err = flow_matching_error(v_pred, x0, eps)
    assert err.shape == (2,)
    torch.testing.assert_close(err, torch.tensor([4.0, 3.0]))


def test_flow_matching_error_bf16_inputs_give_float32():
    err = flow_matching_error(torch.ones(1, 4, dtype=torch.bfloat16), torch.zeros(1, 4), torch.zeros(1, 4))
    assert err.dtype == torch.float32 and err.item() == 1.0


def test_dpo_loss_hand_computed_scalars():
    # diff = (1.0 - 1.5) - (2.0 - 1.0) = -1.5; logit = -beta/2 * diff = 1.5 for beta = 2
    # loss = -log sigmoid(1.5) = log(1 + e^-1.5) = 0.2014132779827524
    loss, stats = diffusion_dpo_loss(
        torch.tensor([1.0]), torch.tensor([1.5]), torch.tensor([2.0]), torch.tensor([1.0]), beta=2.0
    )
    assert loss.item() == pytest.approx(0.2014132779827524, rel=1e-6)
    assert stats["reward_margin"] == pytest.approx(1.5)
    assert stats["implicit_acc"] == 1.0
    assert stats["win_gap"] == pytest.approx(-0.5) and stats["lose_gap"] == pytest.approx(1.0)


def test_dpo_loss_batch_mean_ties_and_stability():
    # pair 0: logit 0 (tie, loss log 2, acc 1/2); pair 1: logit -5000 (loss 5000, must not overflow to inf)
    e_tw = torch.tensor([1.0, 2.0], dtype=torch.float64)
    e_rw = torch.tensor([1.0, 1.0], dtype=torch.float64)
    e_tl = torch.tensor([1.0, 1.0], dtype=torch.float64)
    e_rl = torch.tensor([1.0, 1.0], dtype=torch.float64)
    loss, stats = diffusion_dpo_loss(e_tw, e_rw, e_tl, e_rl, beta=10000.0)
    assert loss.item() == pytest.approx((math.log(2) + 5000.0) / 2, rel=1e-12)
    assert stats["implicit_acc"] == pytest.approx(0.25)
    assert stats["reward_margin"] == pytest.approx(-2500.0)


def test_dpo_gradient_flows_only_through_the_trained_model_errors():
    e_tw = torch.tensor([0.3, 0.2], requires_grad=True)
    e_rw = torch.tensor([0.4, 0.1], requires_grad=True)
    e_tl = torch.tensor([0.5, 0.6], requires_grad=True)
    e_rl = torch.tensor([0.5, 0.5], requires_grad=True)
    beta = 4.0
    loss, _ = diffusion_dpo_loss(e_tw, e_rw, e_tl, e_rl, beta)
    loss.backward()
    assert e_rw.grad is None and e_rl.grad is None
    # dL/de_tw = (1 - sigmoid(logit)) * beta/2 / B, and the opposite for e_tl
    logits = -beta / 2 * ((e_tw - e_rw) - (e_tl - e_rl)).detach()
    expected = (1 - torch.sigmoid(logits)) * beta / 2 / 2
    torch.testing.assert_close(e_tw.grad, expected)
    torch.testing.assert_close(e_tl.grad, -expected)


def test_sgd_on_dpo_loss_lowers_win_error_relative_to_lose_error():
    torch.manual_seed(0)
    dim = 8
    model = torch.nn.Linear(dim, dim)
    ref = copy.deepcopy(model).requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    shape = (1, 2, 1, 2, 2)  # one latent "video" [B, C, F, h, w] with C*F*h*w = 8
    x_w = torch.randn(shape, generator=g)
    x_l = x_w.flip(2) + 0.5 * torch.randn(shape, generator=g)  # an "edit" of the win sample
    eps = torch.randn(shape, generator=g)  # shared (sigma, eps) for the pair
    sigma = 0.6

    def velocity(net: torch.nn.Module, x0: torch.Tensor) -> torch.Tensor:
        x_sigma = (1 - sigma) * x0 + sigma * eps
        return net(x_sigma.flatten(1)).view(shape)

    def errors() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            e_rw = flow_matching_error(velocity(ref, x_w), x_w, eps)
            e_rl = flow_matching_error(velocity(ref, x_l), x_l, eps)
        return (
            flow_matching_error(velocity(model, x_w), x_w, eps),
            e_rw,
            flow_matching_error(velocity(model, x_l), x_l, eps),
            e_rl,
        )

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss0, stats0 = diffusion_dpo_loss(*errors(), beta=20.0)
    assert loss0.item() == pytest.approx(math.log(2), rel=1e-6)  # model == ref at the start
    assert stats0["implicit_acc"] == 0.5
    for _ in range(10):
        opt.zero_grad()
        loss, _ = diffusion_dpo_loss(*errors(), beta=20.0)
        loss.backward()
        opt.step()
    e_tw, e_rw, e_tl, e_rl = (e.detach() for e in errors())
    loss_end, stats = diffusion_dpo_loss(e_tw, e_rw, e_tl, e_rl, beta=20.0)
    assert ((e_tw - e_rw) - (e_tl - e_rl)).item() < -0.01  # win error fell relative to lose error
    assert loss_end.item() < loss0.item() - 0.1
    assert stats["implicit_acc"] == 1.0 and stats["reward_margin"] > 0


def test_bad_inputs_raise_clear_errors():
    v = torch.ones(2, 3)
    with pytest.raises(ValueError, match="same shape"):
        flow_matching_error(v, torch.ones(2, 4), torch.ones(2, 3))
    e = torch.ones(2)
    with pytest.raises(ValueError, match="beta"):
        diffusion_dpo_loss(e, e, e, e, beta=0.0)
    with pytest.raises(ValueError, match="err_ref_l"):
        diffusion_dpo_loss(e, e, e, torch.ones(3), beta=1.0)
    with pytest.raises(ValueError, match=r"\[B\]"):
        diffusion_dpo_loss(torch.ones(2, 1), e, e, e, beta=1.0)
