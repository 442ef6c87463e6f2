"""Video work of the web UI: decode the API's mp4s, optical flow of a clip and its colour-wheel video, motion
metrics, side-by-side composites with labels, and per-request scratch directories.

Flow: OpenCV DIS between consecutive frames (``evaluator.metrics.lite.optical_flow``, the estimator the lite
metrics use), coloured by ``webui.flow_viz``. Metrics: ``evaluator.metrics.score_video`` with the weight-free
``lite`` backend (its numbers are labelled as such; they are not VBench numbers).

    frames, fps = read_clip(path)
    flow = clip_flow(frames)                # FlowClip(frames uint8 [T-1, H, W, 3], max/mean magnitude) or a reason
    scores = motion_metrics(frames, fps)    # {metric: {"value", "backend", "reason"}}
    grid = side_by_side([("teacher", a, fa), ("mogan", b, fb)])
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluator.metrics import score_video
from evaluator.metrics.lite import MIN_FLOW_SIDE, optical_flow, to_gray
from trainer.data.video_io import read_video, write_video
from webui.flow_viz import flows_to_video

MOTION_METRICS = ("motion_smoothness", "dynamic_degree", "motion_score", "temporal_flickering")
SCRATCH_ROOT = Path(tempfile.gettempdir()) / "motionlab-webui"
SCRATCH_MAX_AGE_S = 24 * 3600


def scratch_dir() -> Path:
    """A fresh directory for one request's files (Gradio copies what it serves into its own cache). Directories
    older than a day are removed on the way."""
    SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for d in SCRATCH_ROOT.iterdir():
        try:
            if d.is_dir() and now - d.stat().st_mtime > SCRATCH_MAX_AGE_S:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass
    d = SCRATCH_ROOT / uuid.uuid4().hex
    d.mkdir()
    return d


def read_clip(path: str | Path) -> tuple[np.ndarray, float]:
    """An mp4 -> (uint8 ``[T, H, W, 3]``, fps)."""
    return read_video(path)


def write_clip(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """uint8 ``[T, H, W, 3]`` -> a browser-playable mp4 (H.264, yuv420p)."""
    return write_video(path, frames, fps=fps, quality="web")


@dataclass
class FlowClip:
    frames: np.ndarray | None  # uint8 [T-1, H, W, 3] colour-wheel frames, None when not computable
    max_magnitude: float | None = None  # pixels per frame, the clip's largest motion (fully saturated colour)
    mean_magnitude: float | None = None
    reason: str | None = None  # why there is no flow


def clip_flows(frames: np.ndarray, method: str = "dis") -> np.ndarray:
    """Dense flow between consecutive frames, float32 ``[T-1, H, W, 2]`` (dx, dy in pixels)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[0] < 2:
        raise ValueError(f"optical flow needs at least 2 frames, got {frames.shape[0]}")
    if min(frames.shape[1:3]) < MIN_FLOW_SIDE:
        raise ValueError(
            f"optical flow needs frames of at least {MIN_FLOW_SIDE} px on each side, got "
            f"{frames.shape[1]}x{frames.shape[2]}"
        )
    gray = [to_gray(f) for f in frames]
    return np.stack([optical_flow(gray[t], gray[t + 1], method) for t in range(len(gray) - 1)]).astype(np.float32)


def clip_flow(frames: np.ndarray) -> FlowClip:
    """The colour-wheel video of a clip's motion, or the reason it cannot be computed."""
    try:
        flows = clip_flows(frames)
    except ValueError as exc:
        return FlowClip(None, reason=str(exc))
    mag = np.sqrt((flows.astype(np.float64) ** 2).sum(-1))
    return FlowClip(flows_to_video(flows), float(mag.max()), float(mag.mean()))


def motion_metrics(frames: np.ndarray, fps: float, metrics: tuple[str, ...] = MOTION_METRICS) -> dict[str, dict]:
    """Weight-free motion metrics of one clip: ``{metric: {"value": float | None, "backend", "reason"}}``."""
    try:
        results = score_video(frames, fps, metrics=list(metrics), backend="lite")
    except ValueError as exc:  # e.g. a clip too short or too small for the metric
        return {m: {"value": None, "backend": "lite", "reason": str(exc)} for m in metrics}
    return {
        name: {"value": r.value, "backend": r.backend, "reason": r.unavailable_reason} for name, r in results.items()
    }


def metric_label(name: str) -> str:
    return {
        "motion_smoothness": "Motion smoothness",
        "dynamic_degree": "Dynamic degree",
        "motion_score": "Motion score",
        "temporal_flickering": "Temporal flickering",
    }.get(name, name)


def format_metric(entry: dict[str, Any]) -> str:
    v = entry.get("value")
    return "n/a" if v is None else f"{v:.3f}"


# --- composites -------------------------------------------------------------------------------------------------


def upscale(frames: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour upscaling by the smallest integer factor that makes both sides >= ``min_side``."""
    h, w = frames.shape[1:3]
    k = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if k == 1:
        return frames
    return frames.repeat(k, axis=1).repeat(k, axis=2)


def downscale(frames: np.ndarray, max_side: int) -> np.ndarray:
    """Area-downscaled copy whose longer side is at most ``max_side`` (flow for display need not be full size)."""
    import cv2

    h, w = frames.shape[1:3]
    if max(h, w) <= max_side:
        return frames
    k = max_side / max(h, w)
    nh, nw = max(16, round(h * k)), max(16, round(w * k))
    return np.stack([cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA) for f in frames])


def _fit(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    if frames.shape[1:3] == (h, w):
        return frames
    interp = cv2.INTER_NEAREST if frames.shape[1] < h else cv2.INTER_AREA
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in frames])


def _label_strip(text: str, width: int, height: int) -> np.ndarray:
    import cv2

    strip = np.full((height, width, 3), 255, np.uint8)
    scale = 0.45
    while scale > 0.25 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width - 6:
        scale -= 0.05
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if tw > width - 6:  # still too long: cut it
        while text and cv2.getTextSize(text + "...", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width - 6:
            text = text[:-1]
        text += "..."
    cv2.putText(strip, text, (3, (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 1, cv2.LINE_AA)
    return strip


def _pad_time(frames: np.ndarray, t: int) -> np.ndarray:
    if len(frames) >= t:
        return frames[:t]
    return np.concatenate([frames, np.repeat(frames[-1:], t - len(frames), axis=0)])


def side_by_side(
    columns: list[tuple[str, np.ndarray, np.ndarray | None]], min_side: int = 128, gap: int = 4, label_h: int = 18
) -> np.ndarray:
    """Frame-locked grid: one column per clip with its label on top, the clip, and under it its flow video (when
    given). Flow frame ``t`` (motion from frame t to t+1) is shown with frame ``t``; the last one is held."""
    if not columns:
        raise ValueError("side_by_side needs at least one clip")
    t = max(len(v) for _, v, _ in columns)
    h = max(upscale(v[:1], min_side).shape[1] for _, v, _ in columns)
    w = max(upscale(v[:1], min_side).shape[2] for _, v, _ in columns)
    any_flow = any(f is not None for _, _, f in columns)
    cols = []
    for label, video, flow in columns:
        parts = [np.repeat(_label_strip(label, w, label_h)[None], t, axis=0), _pad_time(_fit(video, h, w), t)]
        if any_flow:
            parts.append(np.full((t, gap, w, 3), 255, np.uint8))
            parts.append(_pad_time(_fit(flow, h, w), t) if flow is not None else np.full((t, h, w, 3), 235, np.uint8))
        cols.append(np.concatenate(parts, axis=1))
    sep = np.full((t, cols[0].shape[1], gap, 3), 255, np.uint8)
    out = [cols[0]]
    for c in cols[1:]:
        out += [sep, c]
    return np.ascontiguousarray(np.concatenate(out, axis=2))


__all__ = [
    "MOTION_METRICS",
    "FlowClip",
    "clip_flow",
    "clip_flows",
    "downscale",
    "format_metric",
    "metric_label",
    "motion_metrics",
    "read_clip",
    "scratch_dir",
    "side_by_side",
    "upscale",
    "write_clip",
]
