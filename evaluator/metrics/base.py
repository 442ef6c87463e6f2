"""The result type every metric returns, the evaluator version, and input validation.

Kept apart from ``evaluator.metrics.__init__`` so that the backends (``lite``, ``vbench_backend``) can build results
without importing the registry (which imports them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Bumped whenever a metric's algorithm or its defaults change, so that stored scores from different algorithm
# revisions are never averaged together silently. Stored with every score.
EVALUATOR_VERSION = "motionlab-metrics/1.0"

BACKENDS = ("lite", "vbench")


@dataclass(frozen=True)
class MetricResult:
    """One metric on one video.

    ``value`` is ``None`` exactly when the metric could not be computed; ``unavailable_reason`` then says why
    (missing weight files by name and where they go, no weight-free backend, a video too small for the model...).
    A stand-in number is never reported.
    """

    value: float | None
    metric: str
    backend: str
    model_hash: str | None
    evaluator_version: str = EVALUATOR_VERSION
    details: dict[str, Any] = field(default_factory=dict)
    unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (numpy scalars converted)."""
        return _jsonable(asdict(self))


def unavailable(metric: str, backend: str, reason: str, **details: Any) -> MetricResult:
    return MetricResult(
        value=None,
        metric=metric,
        backend=backend,
        model_hash=None,
        details=dict(details),
        unavailable_reason=reason,
    )


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_video(video: Any, min_frames: int = 1, name: str = "video") -> np.ndarray:
    """Validate the MotionLab video convention (uint8 ``[T, H, W, 3]``) and a minimum frame count."""
    if not isinstance(video, np.ndarray):
        # ValueError, not TypeError: the project's one error type for bad input
        raise ValueError(f"{name} must be a numpy array uint8 [T, H, W, 3], got {type(video).__name__}")
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{name} must be uint8 [T, H, W, 3], got {video.dtype} {tuple(video.shape)}")
    if video.shape[0] < min_frames:
        raise ValueError(f"{name} has {video.shape[0]} frames; this metric needs at least {min_frames}")
    if video.shape[1] < 1 or video.shape[2] < 1:
        raise ValueError(f"{name} has an empty frame size {tuple(video.shape[1:3])}")
    return video


def check_fps(fps: Any) -> float:
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a positive number, got {fps!r}") from None
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return fps


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
