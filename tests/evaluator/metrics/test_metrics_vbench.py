"""Parity of the vbench backend with VBench's own functions, on the same video files, with random stand-in weights
of the right architectures written to a temporary weights directory (the real checkpoints are not needed to prove
the wiring; the numbers themselves are meaningless).

VBench's side is called through its public entry points ``compute_<dimension>(json, device, submodules)`` on a
VBench "full info" JSON that lists the mp4 files; ours reads the same files with ``read_video`` and calls
``METRICS[name](frames, fps, backend="vbench", weights_dir=...)``. Frames are 128 x 128: smaller frames make VBench's
RAFT and AMT produce NaN (see ``test_small_frames_...``).

Skipped when vbench (installed with --no-deps) or the packages its modules import are missing.
Run: python -m pytest tests/evaluator/metrics/test_metrics_vbench.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("vbench.dynamic_degree", reason="vbench (pip install --no-deps vbench) + easydict, decord")
pytest.importorskip("vbench.motion_smoothness", reason="vbench + omegaconf")

from evaluator.metrics import METRICS
from evaluator.metrics import weights as W
from evaluator.metrics.synthetic import moving_square
from trainer.data.video_io import read_video, write_video

SIZE = 128


@pytest.fixture(scope="module")
def wdir(tmp_path_factory, vbench_standin) -> Path:
    d = tmp_path_factory.mktemp("weights")
    vbench_standin.write_raft(d)
    vbench_standin.write_amt_s(d)
    return d


@pytest.fixture(scope="module")
def video_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("videos") / "square.mp4"
    write_video(path, moving_square(5, SIZE, SIZE, speed=3.0), fps=16)
    return path


@pytest.fixture(scope="module")
def short_file(tmp_path_factory) -> Path:
    # 3 frames at 16 fps: dynamic degree samples frames 0 and 2 (VBench's fps-based interval is exercised) and
    # runs RAFT once; RAFT at 20 iterations is the slow part of these tests on CPU.
    path = tmp_path_factory.mktemp("videos") / "short.mp4"
    write_video(path, moving_square(3, SIZE, SIZE, speed=3.0), fps=16)
    return path


def _full_info(path: Path, dimension: str, tmp: Path) -> str:
    info = tmp / f"{dimension}_full_info.json"
    info.write_text(json.dumps([{"prompt_en": "a square", "dimension": [dimension], "video_list": [str(path)]}]))
    return str(info)


def _ours(metric: str, path: Path, wdir: Path, **opts):
    frames, fps = read_video(path)
    r = METRICS[metric](frames, fps, backend="vbench", weights_dir=wdir, device="cpu", **opts)
    assert r.available, r.unavailable_reason
    assert r.backend == "vbench" and r.metric == metric
    return r


def test_dynamic_degree_parity(wdir, short_file):
    from easydict import EasyDict
    from vbench.dynamic_degree import DynamicDegree, dynamic_degree

    ours = _ours("dynamic_degree", short_file, wdir)

    raft = W.weight_path("raft_things", wdir)
    theirs = DynamicDegree(
        EasyDict({"model": str(raft), "small": False, "mixed_precision": False, "alternate_corr": False}),
        "cpu",
    )
    scores: list[float] = []
    original = theirs.get_score
    theirs.get_score = lambda img, flo: scores.append(original(img, flo)) or scores[-1]  # record per-pair scores
    avg, per_video = dynamic_degree(theirs, [str(short_file)])  # VBench's own per-list function

    assert ours.value == float(avg)
    assert ours.details["dynamic"] == per_video[0]["video_results"]
    assert len(scores) == 1 and ours.details["pair_scores"] == scores  # bit-identical flows
    assert ours.details["interval"] == 2 and ours.details["n_sampled"] == 2
    assert all(math.isfinite(s) for s in scores)
    assert ours.details["thres"] == theirs.params["thres"] and ours.details["count_num"] == theirs.params["count_num"]
    assert ours.model_hash == W.file_sha256(raft)


def test_motion_smoothness_parity(wdir, video_file, tmp_path):
    import vbench
    from vbench.motion_smoothness import compute_motion_smoothness

    ours = _ours("motion_smoothness", video_file, wdir)
    cfg = Path(vbench.__file__).parent / "third_party" / "amt" / "cfgs" / "AMT-S.yaml"
    amt = W.weight_path("amt_s", wdir)
    avg, per_video = compute_motion_smoothness(
        _full_info(video_file, "motion_smoothness", tmp_path), "cpu", {"config": str(cfg), "ckpt": str(amt)}
    )
    assert ours.value == float(avg) == float(per_video[0]["video_results"])
    assert 0.0 < ours.value < 1.0
    assert ours.model_hash == W.file_sha256(amt)


def test_temporal_flickering_parity(video_file, tmp_path):
    from vbench.temporal_flickering import compute_temporal_flickering

    frames, fps = read_video(video_file)
    avg, _ = compute_temporal_flickering(_full_info(video_file, "temporal_flickering", tmp_path), "cpu", {})
    assert METRICS["temporal_flickering"](frames, fps, backend="vbench").value == avg
    assert METRICS["temporal_flickering"](frames, fps, backend="lite").value == avg


def test_motion_score_vbench(wdir, short_file):
    ms = _ours("motion_score", short_file, wdir)
    parts = ms.details
    assert ms.value == pytest.approx(0.5 * (parts["motion_smoothness"] + parts["dynamic_degree"]))
    assert ms.model_hash not in (None, W.file_sha256(W.weight_path("amt_s", wdir)))


def test_small_frames_are_unavailable_because_vbench_gives_nan(wdir, tmp_path):
    """At 64 x 64 VBench's RAFT returns NaN flow (its correlation pyramid reaches 1 pixel), so VBench itself would
    call every such video static; we report unavailable instead of that number."""
    from easydict import EasyDict
    from vbench.dynamic_degree import DynamicDegree

    small = moving_square(3, 64, 64, speed=3.0)
    path = tmp_path / "small.mp4"
    write_video(path, small, fps=8)
    theirs = DynamicDegree(
        EasyDict(
            {
                "model": str(W.weight_path("raft_things", wdir)),
                "small": False,
                "mixed_precision": False,
                "alternate_corr": False,
            }
        ),
        "cpu",
    )
    scores: list[float] = []
    original = theirs.get_score
    theirs.get_score = lambda img, flo: scores.append(original(img, flo)) or scores[-1]
    assert theirs.infer(str(path)) is False
    assert scores and all(math.isnan(s) for s in scores)

    for metric in ("dynamic_degree", "motion_smoothness"):
        r = METRICS[metric](small, 8, backend="vbench", weights_dir=wdir)
        assert r.value is None and "NaN" in r.unavailable_reason and "128" in r.unavailable_reason


def test_aesthetic_quality_parity(tmp_path_factory, video_file, tmp_path, vbench_standin):
    pytest.importorskip("clip", reason="openai-clip (needs setuptools<81)")
    from vbench.aesthetic_quality import compute_aesthetic_quality

    wd = tmp_path_factory.mktemp("aesthetic_weights")
    clip_path, head_path = vbench_standin.write_aesthetic(wd)
    ours = _ours("aesthetic_quality", video_file, wd)
    avg, _ = compute_aesthetic_quality(
        _full_info(video_file, "aesthetic_quality", tmp_path), "cpu", [str(clip_path), str(head_path.parent)]
    )
    assert ours.value == avg
    assert len(ours.details["per_frame"]) == 5
    assert ours.model_hash == W.combined_hash([clip_path, head_path])


@pytest.mark.slow
def test_imaging_quality_parity(tmp_path_factory, tmp_path, vbench_standin):
    """MUSIQ (27 M parameters, random weights) on two 128 x 128 frames against VBench's own call."""
    pytest.importorskip("pyiqa.archs.musiq_arch", reason="pip install --no-deps pyiqa")
    from vbench.imaging_quality import compute_imaging_quality

    wd = tmp_path_factory.mktemp("musiq_weights")
    musiq = vbench_standin.write_musiq(wd)
    path = tmp_path / "two.mp4"
    write_video(path, moving_square(2, SIZE, SIZE, speed=3.0), fps=8)
    ours = _ours("imaging_quality", path, wd)
    avg, per_video = compute_imaging_quality(
        _full_info(path, "imaging_quality", tmp_path), "cpu", {"model_path": str(musiq)}
    )
    assert ours.value == pytest.approx(avg, rel=1e-12, abs=1e-12)
    assert np.mean(ours.details["per_frame_musiq"]) == pytest.approx(per_video[0]["video_results"], rel=1e-12)
    assert ours.model_hash == W.file_sha256(musiq)
