"""Tests of MoGAN's GAN losses and flow-tensor preparation against hand-computed values.

Run: `python -m pytest tests/trainer/losses/test_gan.py -q`.
"""

from __future__ import annotations

import pytest
import torch

from trainer.losses.gan import (
    d_loss,
    discriminator_objective,
    flow_tensor,
    g_loss,
    loss_with_part_gradient_norms,
    noise_consistency_penalty,
)

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
    p2 = noise_consistency_penalty(disc, x, generator=torch.Generator().manual_seed(3), logits_x=disc(x.detach()))
    assert p1.item() == pytest.approx(p2.item(), rel=1e-6)
    p1.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert x.grad is None  # R1/R2 train the discriminator only


def test_noise_penalty_sigma_is_in_the_units_d_is_fed() -> None:
    # D divides its input by s, then D(u) = sum(w * u): with input_scale=s the noise is sigma_n * n in u's units,
    # so the penalty is mean_b (sigma_n sum(w n_b))^2 whatever s is; noise in raw units shrinks it by s^2.
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    x = torch.tensor([[[10.0, 20.0], [30.0, 40.0]], [[0.0, 0.0], [10.0, 10.0]]])
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    expected = ((0.01 * (n * w).sum(dim=(1, 2))) ** 2).mean().item()
    for s in (1.0, 24.0):

        def disc(inp: torch.Tensor, s: float = s) -> torch.Tensor:
            return (inp / s * w).sum(dim=(1, 2))

        got = noise_consistency_penalty(disc, x, 0.01, torch.Generator().manual_seed(5), input_scale=s)
        assert got.item() == pytest.approx(expected, rel=1e-4)
    raw = noise_consistency_penalty(disc, x, 0.01, torch.Generator().manual_seed(5))  # the s = 24 D, raw units
    assert raw.item() == pytest.approx(expected / 24.0**2, rel=1e-4)


def test_noise_penalty_runs_d_in_float32_under_autocast() -> None:
    # A logit of about 100: bf16 keeps 8 bits of it (steps of 0.5), far coarser than what 0.01 of noise moves it.
    lin = torch.nn.Linear(64, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.linspace(-1.0, 1.0, 64))
        lin.bias.fill_(100.0)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))

    def disc(inp: torch.Tensor) -> torch.Tensor:
        return lin(inp)[:, 0]

    plain = noise_consistency_penalty(disc, x, 0.01, torch.Generator().manual_seed(1))
    expected = 0.01**2 * lin.weight.square().sum().item()  # sigma^2 ||w||^2 in expectation
    assert plain.item() == pytest.approx(expected, rel=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        exact = noise_consistency_penalty(disc, x, 0.01, torch.Generator().manual_seed(1))
        rounded = noise_consistency_penalty(disc, x, 0.01, torch.Generator().manual_seed(1), float32=False)
    assert exact.item() == pytest.approx(plain.item(), rel=1e-6)
    assert abs(rounded.item() - plain.item()) > plain.item()  # bf16 rounding dominates what it measures


def test_part_gradient_norms_keep_the_gradient_of_the_sum() -> None:
    a, b, unused = (torch.nn.Parameter(torch.tensor(v)) for v in ([1.0, 2.0], [3.0], [5.0]))

    def parts() -> tuple[torch.Tensor, torch.Tensor]:
        return a.square().sum() * b.sum(), 4.0 * a.sum()

    p1, p2 = parts()
    ga1, gb1 = torch.autograd.grad(p1, (a, b))
    (ga2,) = torch.autograd.grad(p2, (a,))
    want_norms = [torch.cat([ga1, gb1]).norm().item(), ga2.norm().item()]  # [||(6, 12, 5)||, ||(4, 4)||]
    loss, norms = loss_with_part_gradient_norms(parts(), [a, b, unused])
    assert loss.item() == pytest.approx(15.0 + 12.0)
    assert [n.item() for n in norms] == pytest.approx(want_norms)
    assert want_norms == pytest.approx([205**0.5, 32**0.5])
    (loss / 2).backward()
    assert a.grad.tolist() == pytest.approx([(6 + 4) / 2, (12 + 4) / 2])
    assert b.grad.tolist() == pytest.approx([5 / 2])
    assert unused.grad is None


def test_discriminator_objective_logs_and_gradient_ratio() -> None:
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0]))

    def disc(inp: torch.Tensor) -> torch.Tensor:
        return torch.tanh(inp @ w) * 3.0

    real, gen = torch.tensor([[1.0, -1.0], [2.0, 0.5]]), torch.tensor([[0.0, 1.0]])
    kw = {"lambda_d": 0.5, "lambda_r1": 0.3, "lambda_r2": 0.3, "sigma_n": 0.1}
    loss, logs = discriminator_objective(disc, real, gen, **kw, generator=torch.Generator().manual_seed(2), params=[w])
    # by hand: the same noise (R1 first, then R2), each part differentiated on its own
    g = torch.Generator().manual_seed(2)
    gan = 0.5 * d_loss(disc(real), disc(gen))
    reg = 0.3 * noise_consistency_penalty(disc, real, 0.1, g) + 0.3 * noise_consistency_penalty(disc, gen, 0.1, g)
    ratio = torch.autograd.grad(reg, w)[0].norm() / torch.autograd.grad(gan, w)[0].norm()
    assert loss.item() == pytest.approx((gan + reg).item(), rel=1e-6)
    assert logs["l_d"].item() == pytest.approx(2 * gan.item(), rel=1e-6)
    assert logs["r1r2_grad_ratio"].item() == pytest.approx(ratio.item(), rel=1e-5)
    assert 0 < logs["r1"].item() and 0 < logs["r2"].item()
    _, no_reg = discriminator_objective(disc, real, gen, **kw, r1r2=False, params=[w])
    assert set(no_reg) == {"d_real", "d_gen", "l_d"}


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
