"""Tests of MoGAN's GAN losses and flow-tensor preparation against hand-computed values.

Run: `python -m pytest tests/trainer/losses/test_gan.py -q`.
"""

from __future__ import annotations

import pytest
import torch

from trainer.losses.gan import d_loss, flow_tensor, g_loss, noise_consistency_penalty

# softplus(x) = log(1 + e^x), by hand:
SP_0 = 0.6931471805599453  # log 2
SP_M2 = 0.1269280110429725  # log(1 + e^-2)
SP_M1 = 0.3132616875182228  # log(1 + e^-1)
SP_P1 = 1.3132616875182228  # log(1 + e)  = 1 + log(1 + e^-1)


def test_d_loss_by_hand() -> None:
    real = torch.tensor([0.0, 2.0])  # softplus(-0), softplus(-2)
    fake = torch.tensor([-1.0, 1.0])  # softplus(-1), softplus(1)
    expected = (SP_0 + SP_M2) / 2 + (SP_M1 + SP_P1) / 2  # = 1.2232993...
    assert d_loss(real, fake).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1.2232992833, abs=1e-8)


def test_d_loss_batches_of_different_size() -> None:
    real = torch.tensor([[0.0]])  # [B=1, 1]
    fake = torch.tensor([[1.0], [1.0], [-1.0]])
    assert d_loss(real, fake).item() == pytest.approx(SP_0 + (2 * SP_P1 + SP_M1) / 3, abs=1e-6)


def test_g_loss_by_hand() -> None:
    fake = torch.tensor([-1.0, 1.0])  # softplus(1), softplus(-1)
    assert g_loss(fake).item() == pytest.approx((SP_P1 + SP_M1) / 2, abs=1e-6)
    assert g_loss(torch.tensor([0.0])).item() == pytest.approx(SP_0, abs=1e-7)


def test_g_loss_gradient_pushes_fake_logits_up() -> None:
    fake = torch.tensor([0.0], requires_grad=True)
    g_loss(fake).backward()
    assert fake.grad.item() == pytest.approx(-0.5)  # d/dx softplus(-x) = -sigmoid(-x) = -0.5 at 0


def test_noise_penalty_zero_for_constant_discriminator() -> None:
    x = torch.randn(3, 2, 3, 4, 4)
    const = torch.nn.Parameter(torch.tensor(1.7))

    def disc(inp: torch.Tensor) -> torch.Tensor:
        return const.expand(inp.shape[0])

    assert noise_consistency_penalty(disc, x).item() == 0.0


def test_noise_penalty_linear_discriminator_fixed_noise() -> None:
    # D(x) = sum(w * x) per sample => D(x) - D(x + s n) = -s sum(w * n); penalty = mean_b (s sum(w n_b))^2.
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [1.0, 1.0]]])  # [B=2, 2, 2]

    def disc(inp: torch.Tensor) -> torch.Tensor:
        return (inp * w).sum(dim=(1, 2))

    sigma = 0.5
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    d = sigma * (n * w).sum(dim=(1, 2))
    expected = ((d[0] ** 2 + d[1] ** 2) / 2).item()
    got = noise_consistency_penalty(disc, x, sigma_n=sigma, generator=torch.Generator().manual_seed(7))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected > 0


def test_noise_penalty_expectation_is_sigma2_grad_norm2() -> None:
    # For a linear D with weight w, E[(s w.n)^2] = s^2 ||w||^2: w = (3, 4), s = 0.01 -> 0.0025.
    w = torch.tensor([3.0, 4.0])
    x = torch.zeros(40000, 2)

    def disc(inp: torch.Tensor) -> torch.Tensor:
        return inp @ w

    got = noise_consistency_penalty(disc, x, sigma_n=0.01, generator=torch.Generator().manual_seed(0))
    assert got.item() == pytest.approx(0.0025, rel=0.03)


def test_noise_penalty_grads_reach_disc_not_input_and_reuse_logits() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    x = torch.tensor([[1.0, -1.0], [2.0, 0.5]], requires_grad=True)

    def disc(inp: torch.Tensor) -> torch.Tensor:
        return torch.tanh(inp @ w)  # nonlinear so the penalty depends on x

    p1 = noise_consistency_penalty(disc, x, generator=torch.Generator().manual_seed(3))
    p2 = noise_consistency_penalty(
        disc, x, generator=torch.Generator().manual_seed(3), logits_x=disc(x.detach())
    )
    assert p1.item() == pytest.approx(p2.item(), rel=1e-6)
    p1.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert x.grad is None  # R1/R2 train the discriminator only


def test_flow_tensor_by_hand() -> None:
    # B=1, T-1=2 flows of 1x2 pixels.
    flow = torch.tensor(
        [
            [
                [[[3.0, 0.0]], [[4.0, -1.0]]],  # flow 0: u = (3, 0), v = (4, -1)
                [[[-6.0, 1.0]], [[8.0, 0.0]]],  # flow 1: u = (-6, 1), v = (8, 0)
            ]
        ]
    )
    assert flow.shape == (1, 2, 2, 1, 2)
    out = flow_tensor(flow)
    assert out.shape == (1, 3, 3, 1, 2)
    assert torch.equal(out[:, :2, :2], flow)
    assert torch.equal(out[:, 2, :2], flow[:, 1])  # last flow duplicated
    assert out[0, 0, 2].tolist() == [[5.0, 1.0]]  # |(3,4)| = 5, |(0,-1)| = 1
    assert out[0, 1, 2].tolist() == [[10.0, 1.0]]  # |(-6,8)| = 10, |(1,0)| = 1
    assert out[0, 2, 2].tolist() == [[10.0, 1.0]]


def test_flow_tensor_gradient_finite_at_zero_flow() -> None:
    flow = torch.zeros(1, 1, 2, 2, 2, requires_grad=True)
    flow_tensor(flow).sum().backward()
    assert torch.isfinite(flow.grad).all()
    assert flow.grad.abs().max().item() == 2.0  # u, v each appear in two frames (the duplicate)


def test_flow_tensor_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"\[B, T-1, 2, H, W\]"):
        flow_tensor(torch.zeros(1, 2, 3, 4, 4))
