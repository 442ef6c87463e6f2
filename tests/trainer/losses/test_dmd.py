"""Tests of the DMD losses against hand-computed values.

Run: `python -m pytest tests/trainer/losses/test_dmd.py -q`.
"""

from __future__ import annotations

import pytest
import torch

from trainer.losses.dmd import denoising_loss, dmd_gradient, dmd_loss


def test_dmd_gradient_toy_case() -> None:
    x0_hat = torch.tensor([[1.0, 2.0]])
    real = torch.tensor([[0.0, 0.0]])
    fake = torch.tensor([[1.0, 1.0]])
    # mean |x0_hat - real| = (1 + 2) / 2 = 1.5; grad = (1 - 0) / 1.5 = 2/3 each.
    grad = dmd_gradient(x0_hat, real, fake)
    assert torch.allclose(grad, torch.tensor([[2 / 3, 2 / 3]]))


def test_dmd_gradient_normalizes_per_sample() -> None:
    x0_hat = torch.tensor([[[1.0, 2.0]], [[4.0, -4.0]]])  # [B=2, 1, 2]
    real = torch.zeros(2, 1, 2)
    fake = torch.tensor([[[1.0, 1.0]], [[2.0, 0.0]]])
    # sample 0: normalizer 1.5 -> (2/3, 2/3); sample 1: normalizer (4 + 4) / 2 = 4 -> (0.5, 0).
    grad = dmd_gradient(x0_hat, real, fake)
    assert torch.allclose(grad, torch.tensor([[[2 / 3, 2 / 3]], [[0.5, 0.0]]]))


def test_dmd_gradient_epsilon_floor() -> None:
    x0_hat = torch.zeros(1, 3)
    real = torch.zeros(1, 3)  # the generator already matches the teacher: normalizer 0 -> eps
    fake = torch.full((1, 3), 1e-6)
    grad = dmd_gradient(x0_hat, real, fake, eps=1e-6)
    assert torch.isfinite(grad).all()
    assert torch.allclose(grad, torch.ones(1, 3))


def test_dmd_loss_value_and_autograd_gradient() -> None:
    x0_hat = torch.tensor([[1.0, 2.0]], requires_grad=True)
    real = torch.tensor([[0.0, 0.0]], requires_grad=True)
    fake = torch.tensor([[1.0, 1.0]], requires_grad=True)
    loss = dmd_loss(x0_hat, real, fake)
    # 0.5 * mean(grad^2) = 0.5 * (4/9 + 4/9) / 2 = 2/9
    assert loss.item() == pytest.approx(2 / 9, rel=1e-6)
    loss.backward()
    # d loss / d x0_hat = grad / numel = (2/3) / 2 = 1/3 each.
    assert torch.allclose(x0_hat.grad, torch.tensor([[1 / 3, 1 / 3]]))
    assert real.grad is None and fake.grad is None


def test_dmd_loss_gradient_equals_grad_over_numel_random() -> None:
    g = torch.Generator().manual_seed(0)
    x0_hat = torch.randn(2, 4, 3, 2, 2, generator=g, requires_grad=True)
    real = torch.randn(2, 4, 3, 2, 2, generator=g)
    fake = torch.randn(2, 4, 3, 2, 2, generator=g)
    dmd_loss(x0_hat, real, fake).backward()
    expected = dmd_gradient(x0_hat, real, fake) / x0_hat.numel()
    assert torch.allclose(x0_hat.grad, expected, atol=1e-7)


def test_dmd_bf16_inputs() -> None:
    x0_hat = torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16, requires_grad=True)
    real = torch.zeros(1, 2, dtype=torch.bfloat16)
    fake = torch.ones(1, 2, dtype=torch.bfloat16)
    loss = dmd_loss(x0_hat, real, fake)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(2 / 9, rel=1e-6)
    assert dmd_gradient(x0_hat, real, fake).dtype == torch.bfloat16


def test_dmd_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        dmd_loss(torch.zeros(1, 2), torch.zeros(1, 3), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="at least 2 dims"):
        dmd_gradient(torch.zeros(2), torch.zeros(2), torch.zeros(2))


def test_denoising_loss_by_hand() -> None:
    v_pred = torch.tensor([[1.0, 0.0]], requires_grad=True)
    x0 = torch.tensor([[1.0, 1.0]], requires_grad=True)
    eps = torch.tensor([[0.0, 2.0]])
    # target v = eps - x0 = (-1, 1); error (2, -1); mean of squares (4 + 1) / 2 = 2.5
    loss = denoising_loss(v_pred, x0, eps)
    assert loss.item() == pytest.approx(2.5)
    loss.backward()
    assert torch.allclose(v_pred.grad, torch.tensor([[2.0, -1.0]]))  # 2 * error / numel
    assert x0.grad is None  # the generator sample is a fixed target here
