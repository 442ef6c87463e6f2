"""Differentiable coarse-to-fine Horn–Schunck optical flow in pure torch (weight-free).

This is the default flow estimator of the tiny scale: it needs no weights, runs on a
2-core CPU, and is differentiable with respect to the input video, so MoGAN's motion discriminator can
push gradients through it into the generator. The full scale uses RAFT (`trainer/flow/raft.py`).

Algorithm (per pair of consecutive frames, on grayscale):
  * build a Gaussian pyramid; the number of levels is chosen from the frame size so that the coarsest
    level is still at least `min_level_size` pixels on its short side;
  * from coarse to fine: upsample the flow of the previous level (vectors scaled by the size ratio),
    warp the second frame back onto the first with `grid_sample`, linearize brightness constancy
    around the current flow, and run a fixed number of Jacobi iterations of Horn–Schunck on the total
    flow (the smoothness term acts on the total flow, the data term on the increment).
Everything is a fixed-length sequence of differentiable torch ops, so `torch.autograd` works through it.

Convention: `flow[:, t]` goes from frame t to frame t+1 in pixels, x (width) then y (height), i.e.
I_{t+1}(p + flow(p)) ~ I_t(p).

Run its tests: `python -m pytest tests/trainer/flow -q`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.flow.base import FlowEstimator

# ITU-R BT.601 luma weights: the usual grayscale conversion (also what OpenCV uses).
_LUMA = (0.299, 0.587, 0.114)


def to_gray(video: Tensor) -> Tensor:
    """`[..., 3, H, W]` in [-1, 1] -> `[..., 1, H, W]` luma in [0, 1]."""
    if video.shape[-3] != 3:
        raise ValueError(f"video must have 3 colour channels in dim -3, got shape {tuple(video.shape)}")
    w = torch.tensor(_LUMA, device=video.device, dtype=video.dtype).view(3, 1, 1)
    gray = (video * w).sum(dim=-3, keepdim=True)
    return (gray + 1.0) * 0.5


def _conv_same(x: Tensor, kernel: Tensor) -> Tensor:
    """Depthwise 'same' convolution of `[N, C, H, W]` with a 2-D kernel, replicate padding.

    Replicate padding (rather than zeros) so that image borders do not look like strong edges, which
    would create spurious flow there.
    """
    kh, kw = kernel.shape
    c = x.shape[1]
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    k = kernel.to(device=x.device, dtype=x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(x, k, groups=c)


def _blur(x: Tensor) -> Tensor:
    """5-tap binomial (≈ Gaussian, sigma ≈ 1) low-pass before downsampling, against aliasing."""
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16.0
    return _conv_same(x, torch.outer(k1, k1))


def _downsample(x: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    size = (max(1, math.ceil(h / 2)), max(1, math.ceil(w / 2)))
    return F.interpolate(_blur(x), size=size, mode="bilinear", align_corners=False)


def resize_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize a flow field `[N, 2, h, w]` to `size` and rescale its vectors.

    x components are multiplied by W_new / w and y components by H_new / h, so the field still
    measures displacements in pixels of the new grid.
    """
    h, w = flow.shape[-2:]
    H, W = size
    if (h, w) == (H, W):
        return flow
    out = F.interpolate(flow, size=(H, W), mode="bilinear", align_corners=False)
    scale = torch.tensor([W / w, H / h], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return out * scale


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Sample `image` `[N, C, H, W]` at `p + flow(p)` (bilinear, border padding): returns I(p + flow)."""
    h, w = image.shape[-2:]
    ys = torch.arange(h, device=image.device, dtype=image.dtype)
    xs = torch.arange(w, device=image.device, dtype=image.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    x = gx.unsqueeze(0) + flow[:, 0]
    y = gy.unsqueeze(0) + flow[:, 1]
    # align_corners=True maps -1/+1 to the centres of the corner pixels, i.e. pixel index 0 and w-1.
    # A 1-pixel-wide axis has no extent; map it to 0 to avoid dividing by zero.
    xn = 2.0 * x / (w - 1) - 1.0 if w > 1 else torch.zeros_like(x)
    yn = 2.0 * y / (h - 1) - 1.0 if h > 1 else torch.zeros_like(y)
    grid = torch.stack((xn, yn), dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


# Central differences for the spatial derivatives.
_DX = torch.tensor([[-0.5, 0.0, 0.5]], dtype=torch.float64)
_DY = _DX.t().contiguous()
# Horn & Schunck's weighted neighbourhood average (1/6 for the 4-neighbours, 1/12 for the diagonals).
_AVG = torch.tensor([[1.0, 2.0, 1.0], [2.0, 0.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64) / 12.0


def horn_schunck_level(
    i1: Tensor, i2: Tensor, flow: Tensor, *, alpha: float, num_iters: int, num_warps: int = 1
) -> Tensor:
    """Refine `flow` `[N, 2, H, W]` between grayscale images `i1`, `i2` `[N, 1, H, W]` at one level."""
    alpha2 = alpha * alpha
    for _ in range(num_warps):
        i2w = warp(i2, flow)
        # Derivatives averaged over both (aligned) images, as in the original method: more symmetric
        # and more accurate than taking them from one frame only.
        ix = 0.5 * (_conv_same(i1, _DX) + _conv_same(i2w, _DX))
        iy = 0.5 * (_conv_same(i1, _DY) + _conv_same(i2w, _DY))
        it = i2w - i1
        u0, v0 = flow[:, :1], flow[:, 1:]
        denom = alpha2 + ix * ix + iy * iy
        u, v = u0, v0
        for _ in range(num_iters):
            ubar = _conv_same(u, _AVG)
            vbar = _conv_same(v, _AVG)
            # Linearized data term around the warp point: Ix (u - u0) + Iy (v - v0) + It = 0.
            r = (ix * (ubar - u0) + iy * (vbar - v0) + it) / denom
            u = ubar - ix * r
            v = vbar - iy * r
        flow = torch.cat((u, v), dim=1)
    return flow


def num_pyramid_levels(height: int, width: int, *, min_level_size: int = 8, max_levels: int = 6) -> int:
    """Levels such that the coarsest level's short side stays >= `min_level_size` (at least 1).

    32x32 -> 3 levels (32, 16, 8); 64x64 -> 4; 480x832 -> 6 (capped by `max_levels`).
    """
    short = min(height, width)
    if short <= min_level_size:
        return 1
    return max(1, min(max_levels, math.floor(math.log2(short / min_level_size)) + 1))


def horn_schunck_flow(
    i1: Tensor,
    i2: Tensor,
    *,
    alpha: float = 0.03,
    num_iters: int = 20,
    num_levels: int | None = None,
    min_level_size: int = 8,
    max_levels: int = 6,
    num_warps: int = 1,
) -> Tensor:
    """Coarse-to-fine Horn–Schunck flow from `i1` to `i2` (grayscale `[N, 1, H, W]`, values ~[0, 1]).

    Returns `[N, 2, H, W]` in pixels (x, y) with i2(p + flow) ~ i1(p).
    `alpha` is the smoothness weight in intensity units of [0, 1] images (classic HS uses alpha ~ 1-10
    on 0-255 images; 0.03 * 255 ≈ 8). Defaults were tuned on 32x32 and 64x64 translations and
    moving blobs: smaller alpha overshoots at motion boundaries, larger alpha under-estimates small movers.
    """
    if i1.shape != i2.shape or i1.dim() != 4 or i1.shape[1] != 1:
        raise ValueError(f"i1 and i2 must both be [N, 1, H, W]; got {tuple(i1.shape)} and {tuple(i2.shape)}")
    if num_iters < 1 or num_warps < 1:
        raise ValueError(f"num_iters and num_warps must be >= 1, got {num_iters} and {num_warps}")
    h, w = i1.shape[-2:]
    levels = num_levels or num_pyramid_levels(h, w, min_level_size=min_level_size, max_levels=max_levels)
    if levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {levels}")
    pyr1, pyr2 = [i1], [i2]
    for _ in range(levels - 1):
        pyr1.append(_downsample(pyr1[-1]))
        pyr2.append(_downsample(pyr2[-1]))
    flow = torch.zeros((i1.shape[0], 2, *pyr1[-1].shape[-2:]), device=i1.device, dtype=i1.dtype)
    for a, b in zip(reversed(pyr1), reversed(pyr2)):
        flow = resize_flow(flow, tuple(a.shape[-2:]))
        flow = horn_schunck_level(a, b, flow, alpha=alpha, num_iters=num_iters, num_warps=num_warps)
    return flow


class HornSchunckFlow(FlowEstimator):
    """Weight-free differentiable pyramid Horn–Schunck estimator (see module docstring).

    Args:
        alpha: smoothness weight for [0, 1] grayscale intensities.
        num_iters: Jacobi iterations per pyramid level (fixed, so cost and graph size are fixed).
        num_levels: pyramid levels; None chooses from the frame size (`num_pyramid_levels`).
        min_level_size: smallest short side allowed at the coarsest level when choosing automatically.
        max_levels: cap on the automatically chosen number of levels.
        num_warps: warping + HS rounds per level.
        compute_dtype: dtype of the internal computation when the input is half precision (HS divides by
            small gradient magnitudes; bf16 is too coarse for that). The result is cast back.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.03,
        num_iters: int = 20,
        num_levels: int | None = None,
        min_level_size: int = 8,
        max_levels: int = 6,
        num_warps: int = 1,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"flow.alpha must be > 0, got {alpha}")
        if num_iters < 1:
            raise ValueError(f"flow.num_iters must be >= 1, got {num_iters}")
        if num_levels is not None and num_levels < 1:
            raise ValueError(f"flow.num_levels must be >= 1 or None, got {num_levels}")
        if min_level_size < 2:
            raise ValueError(f"flow.min_level_size must be >= 2, got {min_level_size}")
        if num_warps < 1:
            raise ValueError(f"flow.num_warps must be >= 1, got {num_warps}")
        self.alpha = alpha
        self.num_iters = num_iters
        self.num_levels = num_levels
        self.min_level_size = min_level_size
        self.max_levels = max_levels
        self.num_warps = num_warps
        self.compute_dtype = compute_dtype

    def forward(self, video: Tensor) -> Tensor:
        b, t, _, h, w = self._check_video(video)
        x = video
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.compute_dtype)
        gray = to_gray(x)  # [B, T, 1, H, W]
        i1 = gray[:, :-1].reshape(b * (t - 1), 1, h, w)
        i2 = gray[:, 1:].reshape(b * (t - 1), 1, h, w)
        flow = horn_schunck_flow(
            i1,
            i2,
            alpha=self.alpha,
            num_iters=self.num_iters,
            num_levels=self.num_levels,
            min_level_size=self.min_level_size,
            max_levels=self.max_levels,
            num_warps=self.num_warps,
        )
        return flow.reshape(b, t - 1, 2, h, w).to(video.dtype)
