"""Synthetic videos with known motion, for the metrics' known-answer tests and the throughput benchmark.

All return uint8 ``[T, H, W, 3]`` and are deterministic by ``seed``.

    moving_square(17, 64, 64, speed=4.0)      # a textured square sliding right on a flat background
    panning_texture(81, 480, 832, velocity=(3, 1))  # a smooth random texture translating (camera pan)
"""

from __future__ import annotations

import cv2
import numpy as np


def smooth_texture(height: int, width: int, seed: int = 0, blur: float = 2.0) -> np.ndarray:
    """A smooth random RGB texture (uint8), rich enough for optical flow to lock on."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    tex = cv2.GaussianBlur(noise, (0, 0), blur)
    return cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def static_video(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.repeat(smooth_texture(height, width, seed)[None], frames, axis=0)


def moving_square(
    frames: int,
    height: int,
    width: int,
    speed: float = 4.0,
    size: int | None = None,
    seed: int = 0,
    background: int = 90,
) -> np.ndarray:
    """A textured square moving right by ``speed`` px per frame (sub-pixel positions by bilinear warping).
    The square starts at the left and its path is clipped to stay inside the frame."""
    size = size or max(8, min(height, width) * 3 // 8)
    tex = smooth_texture(size, size, seed, blur=1.5)
    y0 = (height - size) // 2
    out = np.empty((frames, height, width, 3), np.uint8)
    canvas = np.full((height, width, 3), background, np.uint8)
    canvas[y0 : y0 + size, 2 : 2 + size] = tex
    max_shift = width - size - 4
    for t in range(frames):
        dx = min(speed * t, max_shift)
        m = np.float32([[1, 0, dx], [0, 1, 0]])
        out[t] = cv2.warpAffine(
            canvas,
            m,
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(background, background, background),
        )
    return out


def panning_texture(
    frames: int, height: int, width: int, velocity: tuple[float, float] = (3.0, 1.0), seed: int = 0
) -> np.ndarray:
    """A large smooth texture seen through a window moving by ``velocity`` (dx, dy) px per frame: every pixel moves
    the same way (constant, perfectly interpolable motion)."""
    vx, vy = velocity
    margin_x = int(np.ceil(abs(vx) * frames)) + 2
    margin_y = int(np.ceil(abs(vy) * frames)) + 2
    big = smooth_texture(height + 2 * margin_y, width + 2 * margin_x, seed)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        # window origin moves by -velocity so that content moves by +velocity
        m = np.float32([[1, 0, -(margin_x - vx * t)], [0, 1, -(margin_y - vy * t)]])
        out[t] = cv2.warpAffine(big, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out
