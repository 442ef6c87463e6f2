"""Optical flow as colour: the Middlebury colour wheel (Baker et al., "A Database and Evaluation Methodology for
Optical Flow", 2011), the coding used by RAFT's figures and MoGAN's Figure 3. Pure numpy.

Hue is the direction of motion, saturation its magnitude: white is no motion, a fully saturated colour is motion
of ``max_magnitude`` pixels (by default the largest motion in the field or clip), and motion beyond
``max_magnitude`` keeps its hue but is darkened (value x 0.75). In image coordinates (y points down):
right = red, down = yellow, left = cyan-blue, up = violet.

    rgb = flow_to_color(flow)                  # flow float [H, W, 2] (dx, dy) -> uint8 [H, W, 3]
    clip = flows_to_video(flows)               # [T, H, W, 2] -> uint8 [T, H, W, 3], one scale for the clip
    key = color_wheel_legend(64)               # the wheel itself, to print next to a figure

Tests: ``python -m pytest tests/webui/test_flow_viz.py -q``.
"""

from __future__ import annotations

import numpy as np

# Hue segments of the wheel and how many steps each has (red->yellow, yellow->green, green->cyan, cyan->blue,
# blue->magenta, magenta->red): finer steps where the eye separates hues better.
SEGMENTS: tuple[tuple[str, int], ...] = (("RY", 15), ("YG", 6), ("GC", 4), ("CB", 11), ("BM", 13), ("MR", 6))
BEYOND_MAX_DIM = 0.75  # value factor for magnitudes larger than the normalisation radius


def color_wheel() -> np.ndarray:
    """The wheel's colours, float ``[55, 3]`` in [0, 255]: one row per hue step, in the order of ``SEGMENTS``."""
    rows: list[np.ndarray] = []
    for name, n in SEGMENTS:
        ramp = np.floor(255.0 * np.arange(n) / n)  # 0 .. just under 255: rising channel
        seg = np.zeros((n, 3))
        if name == "RY":
            seg[:, 0], seg[:, 1] = 255, ramp
        elif name == "YG":
            seg[:, 0], seg[:, 1] = 255 - ramp, 255
        elif name == "GC":
            seg[:, 1], seg[:, 2] = 255, ramp
        elif name == "CB":
            seg[:, 1], seg[:, 2] = 255 - ramp, 255
        elif name == "BM":
            seg[:, 2], seg[:, 0] = 255, ramp
        else:  # MR
            seg[:, 0], seg[:, 2] = 255, 255 - ramp
        rows.append(seg)
    return np.concatenate(rows, axis=0)


_WHEEL = color_wheel()


def _check_flow(flow: np.ndarray, name: str = "flow") -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim < 3 or flow.shape[-1] != 2:
        raise ValueError(f"{name} must be shaped [..., H, W, 2] (dx, dy), got {tuple(flow.shape)}")
    if not np.issubdtype(flow.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {flow.dtype}")
    return flow.astype(np.float64)


def _colorize(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Normalised flow (radius 1 = full saturation) -> uint8 colours."""
    n = _WHEEL.shape[0]
    rad = np.sqrt(u * u + v * v)
    # angle in (-1, 1] (units of pi), measured so that rightward motion lands on red; the wheel is traversed as a
    # closed loop (n steps over the full turn), so there is no seam at +-pi
    a = np.arctan2(-v, -u) / np.pi
    fk = np.mod((a + 1.0) / 2.0 * n, n)
    k0 = np.floor(fk).astype(np.int64) % n
    k1 = (k0 + 1) % n
    f = (fk - np.floor(fk))[..., None]
    col = ((1.0 - f) * _WHEEL[k0] + f * _WHEEL[k1]) / 255.0
    r = rad[..., None]
    inside = r <= 1.0
    col = np.where(inside, 1.0 - r * (1.0 - col), col * BEYOND_MAX_DIM)  # desaturate toward white near zero
    return np.floor(255.0 * np.clip(col, 0.0, 1.0)).astype(np.uint8)


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None, eps: float = 1e-5) -> np.ndarray:
    """One flow field ``[H, W, 2]`` (dx, dy in pixels) -> uint8 ``[H, W, 3]``.

    ``max_magnitude``: the motion (pixels) shown fully saturated; default the field's own largest magnitude.
    NaN/inf flow is shown as no motion.
    """
    flow = _check_flow(flow)
    if flow.ndim != 3:
        raise ValueError(f"flow must be one field [H, W, 2], got {tuple(flow.shape)}; use flows_to_video for a clip")
    return flows_to_video(flow[None], max_magnitude, eps)[0]


def flows_to_video(flows: np.ndarray, max_magnitude: float | None = None, eps: float = 1e-5) -> np.ndarray:
    """A clip of flow fields ``[T, H, W, 2]`` -> uint8 ``[T, H, W, 3]``, normalised by one magnitude for the whole
    clip (default its largest), so that colours are comparable from frame to frame."""
    flows = _check_flow(flows, "flows")
    if flows.ndim != 4:
        raise ValueError(f"flows must be shaped [T, H, W, 2], got {tuple(flows.shape)}")
    flows = np.where(np.isfinite(flows), flows, 0.0)
    if max_magnitude is None:
        max_magnitude = float(np.sqrt((flows**2).sum(-1)).max()) if flows.size else 0.0
    elif not np.isfinite(max_magnitude) or max_magnitude < 0:
        raise ValueError(f"max_magnitude must be a finite number >= 0, got {max_magnitude}")
    scale = max(float(max_magnitude), eps)
    return _colorize(flows[..., 0] / scale, flows[..., 1] / scale)


def color_wheel_legend(size: int = 64) -> np.ndarray:
    """The colour key: a disc where each pixel is coloured as the flow from the centre to that pixel; white
    outside the disc. uint8 ``[size, size, 3]``."""
    if not 4 <= int(size) <= 4096:
        raise ValueError(f"size must be in [4, 4096], got {size}")
    size = int(size)
    c = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = (x - c) / c, (y - c) / c
    out = _colorize(u, v)
    out[np.sqrt(u * u + v * v) > 1.0] = 255
    return out


def magnitude(flows: np.ndarray) -> np.ndarray:
    """Per-pixel motion magnitude in pixels, ``[..., H, W]``."""
    flows = _check_flow(flows, "flows")
    return np.sqrt((flows**2).sum(-1))


__all__ = ["SEGMENTS", "color_wheel", "color_wheel_legend", "flow_to_color", "flows_to_video", "magnitude"]
