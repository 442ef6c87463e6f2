"""Automatic video metrics (VBench parity) with a backend per model.

Every metric is ``METRICS[name](video uint8 [T, H, W, 3], fps, backend="lite", **opts) -> MetricResult``:

=====================  ==============================================  ===========================================
metric                 ``vbench`` backend (weights in weights_dir)     ``lite`` backend (weight-free)
=====================  ==============================================  ===========================================
dynamic_degree         RAFT-things, VBench's code                      OpenCV DIS flow, VBench's sampling/thresholds
motion_smoothness      AMT-S, VBench's code                            flow-based midpoint interpolation
motion_score           mean of the two above (MoGAN Table 1)           mean of the two above
temporal_flickering    VBench's formula                                the same formula (identical numbers)
aesthetic_quality      CLIP ViT-L/14 + LAION head, VBench's code       unavailable (never a stand-in number)
imaging_quality        MUSIQ-SPAQ (pyiqa), VBench's code               unavailable
=====================  ==============================================  ===========================================

Per video, dynamic degree is 0 or 1; over a set of videos it is the fraction of dynamic videos (the mean).
Every result records metric, backend, model file hash and evaluator version. Options: ``weights_dir`` and ``device``
(vbench), ``flow`` ("dis" | "farneback") and ``preset`` (lite).

    from evaluator.metrics import METRICS, score_video, score_videos
    r = METRICS["dynamic_degree"](frames, fps=16)                # lite
    rs = score_video(frames, 16, backend="vbench", weights_dir="/models", device="cuda")
    summary = score_videos([(frames_a, 16), (frames_b, 16)])     # per video + aggregate
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluator.metrics import lite, vbench_backend, weights
from evaluator.metrics.base import (
    BACKENDS,
    EVALUATOR_VERSION,
    MetricResult,
    check_backend,
    check_fps,
    check_video,
    unavailable,
)
from evaluator.metrics.weights import MissingWeightsError, missing_weights, require_weights

__all__ = [
    "BACKENDS",
    "DEFAULT_METRICS",
    "EVALUATOR_VERSION",
    "METRICS",
    "Metric",
    "MetricResult",
    "MissingWeightsError",
    "aggregate_results",
    "missing_weights",
    "require_weights",
    "score_video",
    "score_videos",
]


@dataclass(frozen=True)
class Metric:
    """A named metric with one implementation per backend; calling it runs the chosen backend."""

    name: str
    description: str
    impls: dict[str, Callable[..., MetricResult]] = field(default_factory=dict)
    higher_is_better: bool = True

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(self.impls)

    def __call__(self, video: np.ndarray, fps: float, backend: str = "lite", **opts: Any) -> MetricResult:
        check_backend(backend)
        impl = self.impls.get(backend)
        if impl is None:
            return unavailable(self.name, backend, _no_backend_reason(self.name, backend, opts.get("weights_dir")))
        return impl(video, fps, **opts)


def _no_backend_reason(metric: str, backend: str, weights_dir: Any) -> str:
    files = weights.weights_for([metric])
    wd = weights.resolve_weights_dir(weights_dir)
    listing = "; ".join(f"{w.path(wd)} ({'present' if w.path(wd).is_file() else 'missing'})" for w in files)
    return (
        f"{metric} has no weight-free '{backend}' backend (it needs a learned model); use backend='vbench' "
        f"with the files {listing}"
    )


def _combine_hashes(parts: dict[str, str | None]) -> str | None:
    if all(h is None for h in parts.values()):
        return None
    text = "\n".join(f"{k}:{v}" for k, v in sorted(parts.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def motion_score_from(smooth: MetricResult, dynamic: MetricResult) -> MetricResult:
    """Motion score = mean of motion smoothness and dynamic degree (VideoJAM-bench / MoGAN Table 1). Per video it
    uses the 0/1 dynamic flag; averaging over videos gives the mean of the two set-level numbers (it is linear)."""
    if smooth.backend != dynamic.backend:
        raise ValueError(f"motion_score parts come from different backends: {smooth.backend} vs {dynamic.backend}")
    backend = smooth.backend
    reasons = [f"{r.metric}: {r.unavailable_reason}" for r in (smooth, dynamic) if not r.available]
    if reasons:
        return unavailable("motion_score", backend, "; ".join(reasons))
    return MetricResult(
        value=0.5 * (smooth.value + dynamic.value),
        metric="motion_score",
        backend=backend,
        model_hash=_combine_hashes({"motion_smoothness": smooth.model_hash, "dynamic_degree": dynamic.model_hash}),
        details={"motion_smoothness": smooth.value, "dynamic_degree": dynamic.value},
    )


def _motion_score(backend: str) -> Callable[..., MetricResult]:
    def fn(video: np.ndarray, fps: float, **opts: Any) -> MetricResult:
        if backend == "lite" and "flow_cache" not in opts:
            video = check_video(video, min_frames=3)
            opts["flow_cache"] = lite.FlowCache(video, opts.get("flow", "dis"), opts.get("preset", "medium"))
        smooth = METRICS["motion_smoothness"](video, fps, backend=backend, **opts)
        dynamic = METRICS["dynamic_degree"](video, fps, backend=backend, **opts)
        return motion_score_from(smooth, dynamic)

    return fn


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric(
            "motion_smoothness",
            "how well each odd frame is predicted by interpolating its neighbours, (255 - MAE) / 255",
            {"lite": lite.motion_smoothness_lite, "vbench": vbench_backend.motion_smoothness_vbench},
        ),
        Metric(
            "dynamic_degree",
            "1 if the video moves by VBench's flow rule (top-5% flow > 6*min(H,W)/256 in enough sampled pairs)",
            {"lite": lite.dynamic_degree_lite, "vbench": vbench_backend.dynamic_degree_vbench},
        ),
        Metric(
            "motion_score",
            "mean of motion_smoothness and dynamic_degree",
            {"lite": _motion_score("lite"), "vbench": _motion_score("vbench")},
        ),
        Metric(
            "temporal_flickering",
            "(255 - mean |f_t - f_t+1|) / 255; 1 for a static video",
            {"lite": lite.temporal_flickering_lite, "vbench": vbench_backend.temporal_flickering_vbench},
        ),
        Metric(
            "aesthetic_quality",
            "LAION aesthetic head on CLIP ViT-L/14 frame embeddings / 10, mean over frames",
            {"vbench": vbench_backend.aesthetic_quality_vbench},
        ),
        Metric(
            "imaging_quality",
            "MUSIQ (SPAQ) per frame / 100, mean over frames",
            {"vbench": vbench_backend.imaging_quality_vbench},
        ),
    ]
}

DEFAULT_METRICS: tuple[str, ...] = tuple(METRICS)


def check_metrics(metrics: Iterable[str] | None) -> list[str]:
    names = list(DEFAULT_METRICS if metrics is None else metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRICS)}")
    if not names:
        raise ValueError("metrics must name at least one metric")
    return list(dict.fromkeys(names))


def score_video(
    video: np.ndarray, fps: float, metrics: Iterable[str] | None = None, backend: str = "lite", **opts: Any
) -> dict[str, MetricResult]:
    """All requested metrics of one video with one backend; shared work (lite flows, the motion-score parts) is
    computed once. Bad input raises ``ValueError``; missing weights give unavailable results with the reason."""
    names = check_metrics(metrics)
    check_backend(backend)
    video = check_video(video)
    fps = check_fps(fps)
    if backend == "lite":
        opts.setdefault("flow_cache", lite.FlowCache(video, opts.get("flow", "dis"), opts.get("preset", "medium")))
    out: dict[str, MetricResult] = {}
    for name in names:
        if name == "motion_score":
            continue
        out[name] = METRICS[name](video, fps, backend=backend, **opts)
    if "motion_score" in names:
        parts = {}
        for part in ("motion_smoothness", "dynamic_degree"):
            parts[part] = out.get(part) or METRICS[part](video, fps, backend=backend, **opts)
        out["motion_score"] = motion_score_from(parts["motion_smoothness"], parts["dynamic_degree"])
    return {name: out[name] for name in names}


def aggregate_results(results: Sequence[MetricResult]) -> dict[str, Any]:
    """Mean and spread of one metric over videos (dynamic degree's mean is the fraction of dynamic videos).
    Unavailable results are counted, not averaged; the value is None when none is available."""
    if not results:
        raise ValueError("aggregate_results needs at least one result")
    metric = {r.metric for r in results}
    backend = {r.backend for r in results}
    if len(metric) != 1 or len(backend) != 1:
        raise ValueError(f"cannot aggregate results of different metrics/backends: {sorted(metric)} {sorted(backend)}")
    vals = np.array([r.value for r in results if r.available], dtype=np.float64)
    hashes = sorted({r.model_hash for r in results if r.model_hash})
    reasons = sorted({r.unavailable_reason for r in results if r.unavailable_reason})
    agg: dict[str, Any] = {
        "metric": metric.pop(),
        "backend": backend.pop(),
        "value": float(vals.mean()) if vals.size else None,
        "std": float(vals.std(ddof=1)) if vals.size > 1 else None,
        "n": int(vals.size),
        "n_unavailable": len(results) - int(vals.size),
        "model_hash": hashes[0] if len(hashes) == 1 else (hashes or None),
        "evaluator_version": EVALUATOR_VERSION,
        "unavailable_reason": reasons[0] if (not vals.size and reasons) else None,
    }
    if agg["metric"] == "dynamic_degree":
        agg["n_dynamic"] = int(vals.sum())
    return agg


def score_videos(
    videos: Sequence[tuple[np.ndarray, float]],
    metrics: Iterable[str] | None = None,
    backend: str = "lite",
    **opts: Any,
) -> dict[str, Any]:
    """Score ``[(video, fps), ...]``: ``{"per_video": [{metric: MetricResult}], "aggregate": {metric: dict}}``."""
    names = check_metrics(metrics)
    if not videos:
        raise ValueError("videos must contain at least one (video, fps) pair")
    per_video = []
    for i, item in enumerate(videos):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"videos[{i}] must be a (video, fps) pair")
        per_video.append(score_video(item[0], item[1], names, backend, **opts))
    aggregate = {name: aggregate_results([pv[name] for pv in per_video]) for name in names}
    return {"backend": backend, "metrics": names, "per_video": per_video, "aggregate": aggregate}
