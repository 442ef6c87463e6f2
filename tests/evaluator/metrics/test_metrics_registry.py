"""The metric registry, score_video / score_videos, motion score and the unavailable results.

Run: python -m pytest tests/evaluator/metrics/test_metrics_registry.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluator.metrics import (
    EVALUATOR_VERSION,
    METRICS,
    MetricResult,
    aggregate_results,
    score_video,
    score_videos,
)
from evaluator.metrics.synthetic import moving_square, static_video


def test_registry_names_and_backends():
    assert set(METRICS) == {
        "motion_smoothness",
        "dynamic_degree",
        "motion_score",
        "temporal_flickering",
        "aesthetic_quality",
        "imaging_quality",
    }
    assert METRICS["aesthetic_quality"].backends == ("vbench",)
    assert set(METRICS["dynamic_degree"].backends) == {"lite", "vbench"}


def test_every_result_records_metric_backend_hash_and_version():
    v = moving_square(9, 64, 64, speed=2.0)
    for name, r in score_video(v, 16).items():
        assert isinstance(r, MetricResult)
        assert r.metric == name and r.backend == "lite" and r.evaluator_version == EVALUATOR_VERSION
        assert r.model_hash is None  # weight-free
        json.dumps(r.to_dict())


def test_motion_score_is_mean_of_smoothness_and_dynamic_degree():
    v = moving_square(17, 64, 64, speed=2.0)
    rs = score_video(v, 16, ["motion_score", "motion_smoothness", "dynamic_degree"])
    assert rs["motion_score"].value == pytest.approx(0.5 * (rs["motion_smoothness"].value + rs["dynamic_degree"].value))
    # called on its own it computes the same parts
    alone = METRICS["motion_score"](v, 16)
    assert alone.value == rs["motion_score"].value
    assert list(rs) == ["motion_score", "motion_smoothness", "dynamic_degree"]  # requested order


def test_static_video_motion_score():
    rs = score_video(static_video(17, 64, 64), 16, ["motion_score"])
    assert rs["motion_score"].value == 0.5  # smoothness 1, dynamic 0


@pytest.mark.parametrize(
    "metric, files",
    [
        ("aesthetic_quality", ["ViT-L-14.pt", "sa_0_4_vit_l_14_linear.pth"]),
        ("imaging_quality", ["musiq_spaq_ckpt-358bb6af.pth"]),
    ],
)
def test_no_lite_backend_reports_unavailable_with_files(metric, files, tmp_path):
    r = METRICS[metric](static_video(3, 32, 32), 8, backend="lite", weights_dir=tmp_path)
    assert r.value is None and not r.available
    assert "no weight-free" in r.unavailable_reason
    for f in files:
        assert f in r.unavailable_reason
    assert str(tmp_path) in r.unavailable_reason


def test_score_videos_aggregate_fraction_of_dynamic():
    vids = [
        (static_video(17, 64, 64), 16.0),
        (moving_square(17, 64, 64, speed=2.0), 16.0),
        (static_video(17, 64, 64, seed=1), 16.0),
        (moving_square(17, 64, 64, speed=3.0), 16.0),
    ]
    out = score_videos(vids, ["dynamic_degree", "temporal_flickering", "aesthetic_quality"])
    agg = out["aggregate"]
    assert agg["dynamic_degree"]["value"] == 0.5 and agg["dynamic_degree"]["n_dynamic"] == 2
    assert [pv["dynamic_degree"].value for pv in out["per_video"]] == [0.0, 1.0, 0.0, 1.0]
    flick = [pv["temporal_flickering"].value for pv in out["per_video"]]
    assert agg["temporal_flickering"]["value"] == pytest.approx(np.mean(flick))
    assert agg["temporal_flickering"]["std"] == pytest.approx(np.std(flick, ddof=1))
    assert agg["aesthetic_quality"]["value"] is None and agg["aesthetic_quality"]["n_unavailable"] == 4
    assert "no weight-free" in agg["aesthetic_quality"]["unavailable_reason"]


def test_aggregate_refuses_mixed_backends():
    a = MetricResult(1.0, "dynamic_degree", "lite", None)
    b = MetricResult(0.0, "dynamic_degree", "vbench", "abc")
    with pytest.raises(ValueError, match="different"):
        aggregate_results([a, b])


def test_bad_arguments():
    v = static_video(5, 32, 32)
    with pytest.raises(ValueError, match="unknown metric"):
        score_video(v, 8, ["fvd"])
    with pytest.raises(ValueError, match="backend"):
        score_video(v, 8, backend="raft")
    with pytest.raises(ValueError, match="fps"):
        score_video(v, -1)
    with pytest.raises(ValueError, match="pair"):
        score_videos([v])
