"""Tests of the weight-free pyramid Horn–Schunck estimator: known translations, static video, gradients.

Run: `python -m pytest tests/trainer/flow -q`.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainer.flow.horn_schunck import HornSchunckFlow, num_pyramid_levels, resize_flow, warp


def textured_frame(h: int, w: int, dx: float, dy: float, seed: int = 0) -> torch.Tensor:
    """A smooth colour texture f(x - dx, y - dy) in [-1, 1], `[3, H, W]`, evaluated analytically so a shift
    by (dx, dy) is exact: frame(dx, dy)(p + (dx, dy)) = frame(0, 0)(p)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    xs, ys = xs - dx, ys - dy
    img = torch.zeros(3, h, w, dtype=torch.float64)
    for c in range(3):
        for _ in range(4):
            fx, fy = ((torch.rand(2, generator=g) * 2 - 1) * 2 * math.pi / 10).tolist()
            phase = float(torch.rand(1, generator=g)) * 2 * math.pi
            img[c] += 0.25 * torch.sin(fx * xs + fy * ys + phase)
    return img.clamp(-1, 1).float()


def shifted_video(size: int, dx: float, dy: float, frames: int = 3) -> torch.Tensor:
    return torch.stack([textured_frame(size, size, k * dx, k * dy) for k in range(frames)])[None]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("shift", [(2.0, 0.0), (0.0, 2.0), (-1.5, 1.0)])
def test_recovers_translation(size: int, shift: tuple[float, float]) -> None:
    dx, dy = shift
    video = shifted_video(size, dx, dy)
    flow = HornSchunckFlow()(video)
    assert flow.shape == (1, 2, 2, size, size)
    assert torch.isfinite(flow).all()
    inner = flow[..., 4:-4, 4:-4]  # borders see content entering the frame; judge the interior
    mean_u = inner[:, :, 0].mean().item()
    mean_v = inner[:, :, 1].mean().item()
    assert mean_u == pytest.approx(dx, abs=0.25)
    assert mean_v == pytest.approx(dy, abs=0.25)


def test_static_video_has_zero_flow() -> None:
    frame = textured_frame(32, 32, 0.0, 0.0)
    video = frame.expand(2, 3, 3, 32, 32).contiguous()
    flow = HornSchunckFlow()(video)
    assert flow.shape == (2, 2, 2, 32, 32)
    assert flow.abs().max().item() < 1e-5


def test_pyramid_levels_from_size() -> None:
    assert num_pyramid_levels(32, 32) == 3  # 32, 16, 8
    assert num_pyramid_levels(64, 64) == 4
    assert num_pyramid_levels(8, 8) == 1
    assert num_pyramid_levels(480, 832) == 6  # capped
    assert num_pyramid_levels(480, 832, max_levels=10) == 6  # 480 / 2**5 = 15 >= 8, 7.5 < 8


def test_warp_samples_at_p_plus_flow() -> None:
    img = torch.arange(20, dtype=torch.float64).reshape(1, 1, 4, 5)
    flow = torch.zeros(1, 2, 4, 5, dtype=torch.float64)
    flow[:, 0] = 1.0  # I(p + (1, 0)) = value one column to the right
    out = warp(img, flow)
    assert torch.allclose(out[0, 0, :, :4], img[0, 0, :, 1:])
    assert torch.allclose(out[0, 0, :, 4], img[0, 0, :, 4])  # border padding


def test_resize_flow_rescales_vectors() -> None:
    flow = torch.empty(1, 2, 8, 16)
    flow[:, 0], flow[:, 1] = 3.0, -2.0
    out = resize_flow(flow, (4, 4))
    assert out.shape == (1, 2, 4, 4)
    assert torch.allclose(out[:, 0], torch.full((1, 4, 4), 0.75))  # 3 * 4/16
    assert torch.allclose(out[:, 1], torch.full((1, 4, 4), -1.0))  # -2 * 4/8


# fast_mode compares random vector-Jacobian projections of the analytical and numerical Jacobians (the
# same check, far fewer forward passes on the shared 2-core CI machine); it fails on a wrong gradient.
def test_gradcheck_single_level() -> None:
    torch.manual_seed(0)
    est = HornSchunckFlow(num_levels=1, num_iters=3)
    x = (torch.rand(1, 2, 3, 8, 8, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(est, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradcheck_two_levels_with_warp() -> None:
    # The second level warps with a flow that depends on the input: checks grid_sample's grid gradient.
    torch.manual_seed(1)
    est = HornSchunckFlow(num_levels=2, num_iters=2)
    x = (torch.rand(1, 2, 3, 8, 8, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(est, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradient_reaches_input_and_pushes_flow() -> None:
    video = shifted_video(32, 2.0, 0.0, frames=2).requires_grad_()
    flow = HornSchunckFlow()(video)
    flow[:, :, 0].mean().backward()
    assert video.grad is not None
    assert video.grad.abs().sum().item() > 0


def test_half_precision_input_keeps_dtype() -> None:
    video = shifted_video(32, 2.0, 0.0, frames=2).to(torch.bfloat16)
    flow = HornSchunckFlow()(video)
    assert flow.dtype == torch.bfloat16
    assert flow[..., 4:-4, 4:-4][:, :, 0].float().mean().item() == pytest.approx(2.0, abs=0.3)


def test_bad_input_raises() -> None:
    est = HornSchunckFlow()
    with pytest.raises(ValueError, match="T >= 2"):
        est(torch.zeros(1, 1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        est(torch.zeros(1, 2, 1, 8, 8))
    with pytest.raises(ValueError, match="flow.alpha"):
        HornSchunckFlow(alpha=0.0)
