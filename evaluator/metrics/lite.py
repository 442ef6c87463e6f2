"""The weight-free ``lite`` backend of the motion metrics (always available, always labelled "lite").

It keeps VBench's protocol (frame sampling, thresholds, score formulas; see ``vbench/dynamic_degree.py``,
``motion_smoothness.py``, ``temporal_flickering.py``) and replaces only the learned models by classical ones:

- ``dynamic_degree_lite``: RAFT -> OpenCV DIS optical flow (or Farneback) on grayscale frames.
- ``motion_smoothness_lite``: AMT-S -> flow-based midpoint interpolation (bidirectional DIS flow, the linear-motion
  approximation of the intermediate flows, backward warping of both neighbours, average).
- ``temporal_flickering_lite``: VBench's formula itself (it has no model), computed with the same dtypes in the same
  order so that it equals VBench's number bit for bit.

Values of the two flow-based metrics are *not* VBench numbers; they are comparable only with other lite scores.
All functions are pure: ``uint8 [T, H, W, 3]`` (+ fps) in, ``MetricResult`` out.

    r = dynamic_degree_lite(frames, fps=16)
    r.value, r.details["pair_scores"], r.details["thres"]
"""

from __future__ import annotations

import itertools
from typing import Any

import cv2
import numpy as np

from evaluator.metrics.base import MetricResult, check_fps, check_video

BACKEND = "lite"
FLOW_METHODS = ("dis", "farneback")
MIN_FLOW_SIDE = 16  # OpenCV's DIS refuses frames under 12 px; a round limit for both flow methods
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


# ----------------------------------------------------------------------------------------------------------------
# VBench's protocol constants (vbench/dynamic_degree.py), shared with the vbench backend's size checks and tests.


def dd_interval(fps: float) -> int:
    """VBench samples about 8 frames per second: every ``max(1, round(fps / 8))``-th frame (Python's round, i.e.
    half to even: 12 fps -> 2, 20 fps -> 2, 24 fps -> 3)."""
    return max(1, round(float(fps) / 8))


def dd_params(height: int, width: int, n_sampled: int) -> dict[str, float | int]:
    """VBench's thresholds: a pair of sampled frames 'moves' when the mean of its top-5% flow magnitudes exceeds
    ``thres = 6 * min(H, W) / 256`` pixels; a video is dynamic when at least ``count_num = round(4 * n / 16)`` pairs
    move, ``n`` being the number of *sampled* frames (Python's round, half to even)."""
    return {"thres": 6.0 * (min(height, width) / 256.0), "count_num": round(4 * (n_sampled / 16.0))}


def dd_check_move(pair_scores: list[float], thres: float, count_num: int) -> bool:
    """VBench's ``check_move``: count pairs strictly above ``thres``; dynamic once the count reaches ``count_num``.

    Kept literally, including its corner: with ``count_num == 0`` (two or fewer sampled frames) any video with at
    least one pair is dynamic, and a video with no pair is not.
    """
    count = 0
    for s in pair_scores:
        if s > thres:
            count += 1
        if count >= count_num:
            return True
    return False


def top5_mean_magnitude(flow: np.ndarray) -> float:
    """Mean of the largest 5% flow magnitudes (``int(h * w * 0.05)`` of them), VBench's per-pair motion score."""
    h, w = flow.shape[:2]
    cut = int(h * w * 0.05)
    if cut < 1:
        raise ValueError(f"frames of {h}x{w} pixels are too small for the top-5% flow statistic (need h*w >= 20)")
    rad = np.sqrt(np.square(flow[..., 0], dtype=np.float64) + np.square(flow[..., 1], dtype=np.float64)).ravel()
    top = np.partition(rad, rad.size - cut)[rad.size - cut :]
    return float(top.mean())


# ----------------------------------------------------------------------------------------------------------------
# Classical optical flow.


def _dis(preset: str):
    """A fresh DIS object per call: one keeps working buffers whose history shifts later results (after other image
    sizes), and sharing one between threads (the server scores concurrent generations) crashes the process inside
    cv2. Creating one costs microseconds next to the flow itself."""
    if preset not in DIS_PRESETS:
        raise ValueError(f"flow preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}")
    return cv2.DISOpticalFlow_create(DIS_PRESETS[preset])


def to_gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def optical_flow(a_gray: np.ndarray, b_gray: np.ndarray, method: str = "dis", preset: str = "medium") -> np.ndarray:
    """Dense flow from frame a to frame b (``a(x) ~ b(x + flow(x))``), float32 ``[H, W, 2]`` in pixels (dx, dy)."""
    if method == "dis":
        return _dis(preset).calc(a_gray, b_gray, None)
    if method == "farneback":
        # Farneback's usual settings (pyramid 0.5 x 3 levels, 15 px window): robust to a few pixels of motion.
        return cv2.calcOpticalFlowFarneback(a_gray, b_gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    raise ValueError(f"flow method must be one of {FLOW_METHODS}, got {method!r}")


class FlowCache:
    """Flows of one video keyed by frame-index pairs, so that dynamic degree and motion smoothness share the
    flows they both need (at 16 fps both use frames 0->2, 2->4, ...). One cache per video and flow setting."""

    def __init__(self, video: np.ndarray, method: str = "dis", preset: str = "medium"):
        self.video, self.method, self.preset = video, method, preset
        self._gray: dict[int, np.ndarray] = {}
        self._flow: dict[tuple[int, int], np.ndarray] = {}

    def gray(self, i: int) -> np.ndarray:
        if i not in self._gray:
            self._gray[i] = to_gray(self.video[i])
        return self._gray[i]

    def flow(self, i: int, j: int) -> np.ndarray:
        if (i, j) not in self._flow:
            self._flow[(i, j)] = optical_flow(self.gray(i), self.gray(j), self.method, self.preset)
        return self._flow[(i, j)]

    def matches(self, video: np.ndarray, method: str, preset: str) -> bool:
        return self.video is video and self.method == method and self.preset == preset


def _cache_for(video: np.ndarray, method: str, preset: str, flow_cache: FlowCache | None) -> FlowCache:
    if method not in FLOW_METHODS:
        raise ValueError(f"flow method must be one of {FLOW_METHODS}, got {method!r}")
    if min(video.shape[1], video.shape[2]) < MIN_FLOW_SIDE:
        raise ValueError(
            f"frames of {video.shape[1]}x{video.shape[2]} are too small for the lite flow metrics "
            f"(both sides must be at least {MIN_FLOW_SIDE} px)"
        )
    if flow_cache is not None and flow_cache.matches(video, method, preset):
        return flow_cache
    return FlowCache(video, method, preset)


def _flow_label(method: str, preset: str) -> str:
    return f"opencv-dis-{preset}" if method == "dis" else "opencv-farneback"


# ----------------------------------------------------------------------------------------------------------------
# Metrics.


def dynamic_degree_lite(
    video: np.ndarray,
    fps: float,
    flow: str = "dis",
    preset: str = "medium",
    flow_cache: FlowCache | None = None,
    **_: Any,
) -> MetricResult:
    """1.0 if the video is dynamic by VBench's rule, else 0.0 (the set-level dynamic degree is the mean)."""
    video = check_video(video, min_frames=2)
    fps = check_fps(fps)
    cache = _cache_for(video, flow, preset, flow_cache)
    interval = dd_interval(fps)
    idx = list(range(0, video.shape[0], interval))
    params = dd_params(video.shape[1], video.shape[2], len(idx))
    # VBench runs RAFT on frames padded to a multiple of 8 (a RAFT requirement) and takes the top 5% over the padded
    # frame; the classical flow needs no padding, so the top 5% is over the frame itself.
    scores = [top5_mean_magnitude(cache.flow(a, b)) for a, b in itertools.pairwise(idx)]
    moving = dd_check_move(scores, params["thres"], params["count_num"])
    return MetricResult(
        value=1.0 if moving else 0.0,
        metric="dynamic_degree",
        backend=BACKEND,
        model_hash=None,
        details={
            "dynamic": moving,
            "interval": interval,
            "n_sampled": len(idx),
            "thres": params["thres"],
            "count_num": params["count_num"],
            "n_pairs_over": int(sum(s > params["thres"] for s in scores)),
            "pair_scores": scores,
            "flow": _flow_label(flow, preset),
        },
    )


def interpolate_midpoint(f0: np.ndarray, f2: np.ndarray, flow_02: np.ndarray, flow_20: np.ndarray) -> np.ndarray:
    """The frame halfway between ``f0`` and ``f2`` (uint8 RGB) from their bidirectional flows.

    Intermediate flows by the linear-motion approximation at t = 1/2 (Jiang et al., Super SloMo):
    ``F_t0 = -t(1-t) F_02 + t^2 F_20`` and ``F_t2 = (1-t)^2 F_02 - t(1-t) F_20``, i.e. ``+-(F_20 - F_02) / 4``;
    both neighbours are backward-warped to t and averaged. Rounded to uint8 (AMT's output is quantised too; VBench
    truncates, we round to avoid a systematic -0.5 bias).
    """
    h, w = f0.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    f_t0 = 0.25 * (flow_20 - flow_02)
    f_t2 = -f_t0
    w0 = cv2.remap(f0, gx + f_t0[..., 0], gy + f_t0[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    w2 = cv2.remap(f2, gx + f_t2[..., 0], gy + f_t2[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mid = 0.5 * (w0.astype(np.float32) + w2.astype(np.float32))
    return np.clip(np.rint(mid), 0, 255).astype(np.uint8)


def motion_smoothness_lite(
    video: np.ndarray,
    fps: float = 0.0,
    flow: str = "dis",
    preset: str = "medium",
    flow_cache: FlowCache | None = None,
    **_: Any,
) -> MetricResult:
    """VBench's motion smoothness with a flow interpolator: keep frames 0, 2, 4, ...; predict each odd frame
    ``2i+1`` from frames ``2i`` and ``2i+2``; score ``(255 - mean |pred - real|) / 255`` (1 = perfectly predictable).
    ``fps`` is unused (VBench's smoothness ignores it) and accepted for the common metric signature."""
    video = check_video(video, min_frames=3)
    cache = _cache_for(video, flow, preset, flow_cache)
    n_mid = (video.shape[0] + 1) // 2 - 1  # VBench: one midpoint per pair of kept frames (a trailing odd frame unused)
    diffs = []
    for i in range(n_mid):
        a, b = 2 * i, 2 * i + 2
        pred = interpolate_midpoint(video[a], video[b], cache.flow(a, b), cache.flow(b, a))
        diffs.append(float(np.mean(cv2.absdiff(video[a + 1], pred))))
    vfi = float(np.mean(diffs))
    return MetricResult(
        value=(255.0 - vfi) / 255.0,
        metric="motion_smoothness",
        backend=BACKEND,
        model_hash=None,
        details={"mean_abs_error": vfi, "per_midpoint_error": diffs, "flow": _flow_label(flow, preset)},
    )


def flicker_pair_mae(video: np.ndarray) -> np.ndarray:
    """Per consecutive pair, the mean absolute difference, computed as VBench does: BGR frames (its cv2 reader),
    float32 absolute difference, float32 mean. Same dtypes and order give the same float32 numbers."""
    bgr = video[..., ::-1]
    out = []
    for i in range(video.shape[0] - 1):
        a = np.asarray(bgr[i], dtype=np.float32)
        b = np.asarray(bgr[i + 1], dtype=np.float32)
        out.append(np.mean(cv2.absdiff(a, b)))
    return np.array(out)


def temporal_flickering_lite(video: np.ndarray, fps: float = 0.0, **_: Any) -> MetricResult:
    """``(255 - mean over consecutive pairs of mean |f_t - f_{t+1}|) / 255``: 1 for a static video."""
    video = check_video(video, min_frames=2)
    seq = flicker_pair_mae(video)
    mae = np.mean(seq).item()
    return MetricResult(
        value=(255.0 - mae) / 255.0,
        metric="temporal_flickering",
        backend=BACKEND,
        model_hash=None,
        details={"mean_abs_diff": mae, "n_pairs": int(seq.size), "exact_vbench_formula": True},
    )
