"""Does a model move things the way its prompt says? Prompt-following accuracy for "moves <direction>" prompts.

For each video, the mean optical flow (OpenCV DIS, the lite backend's estimator) over all pixels and frame pairs
is taken; the video is correct when the sign of its component along the stated axis matches the direction
(left: dx < 0, right: dx > 0, up: dy < 0, down: dy > 0; image y grows downward).
"""

from __future__ import annotations

import itertools

import numpy as np

from evaluator.metrics.lite import optical_flow, to_gray

AXES = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}


def mean_flow(video: np.ndarray) -> np.ndarray:
    """Mean (dx, dy) in pixels per frame over all pixels and consecutive frame pairs of uint8 ``[T, H, W, 3]``."""
    gray = [to_gray(f) for f in video]
    flows = [optical_flow(a, b) for a, b in itertools.pairwise(gray)]
    return np.mean([f.reshape(-1, 2).mean(axis=0) for f in flows], axis=0)


def direction_correct(video: np.ndarray, direction: str) -> bool:
    if direction not in AXES:
        raise ValueError(f"direction must be one of {list(AXES)}, got {direction!r}")
    axis, sign = AXES[direction]
    return bool(np.sign(mean_flow(video)[axis]) == sign)


def direction_accuracy(videos, directions) -> float:
    hits = [direction_correct(v, d) for v, d in zip(videos, directions, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")
