"""score_folder: per-video and aggregate scores of a folder of videos (files and frame folders).

Run: python -m pytest tests/evaluator/metrics/test_score_folder.py -q
"""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest

from evaluator.metrics.synthetic import moving_square, static_video
from evaluator.score_folder import score_folder
from trainer.data.video_io import write_video


@pytest.fixture()
def folder(tmp_path):
    write_video(tmp_path / "a_static.mp4", static_video(17, 64, 64), fps=16)
    write_video(tmp_path / "b_moving.mp4", moving_square(17, 64, 64, speed=2.0), fps=16)
    frames = tmp_path / "c_frames"
    frames.mkdir()
    for i, f in enumerate(moving_square(9, 64, 64, speed=1.0, seed=2)):
        iio.imwrite(frames / f"{i:03d}.png", f)
    (frames / "fps.txt").write_text("8")
    (tmp_path / "d_broken.mp4").write_bytes(b"not a video")
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_score_folder_lite(folder):
    seen = []
    out = score_folder(
        folder,
        "lite",
        ["dynamic_degree", "temporal_flickering", "imaging_quality"],
        progress=lambda i, n, p: seen.append((i, n, p.name)),
    )
    assert [v["name"] for v in out["videos"]] == ["a_static.mp4", "b_moving.mp4", "c_frames", "d_broken.mp4"]
    assert seen[0] == (0, 4, "a_static.mp4") and len(seen) == 4
    assert out["n_scored"] == 3 and out["n_errors"] == 1
    assert "d_broken.mp4" in out["videos"][3]["error"]
    by = {v["name"]: v for v in out["videos"]}
    assert by["a_static.mp4"]["scores"]["dynamic_degree"]["value"] == 0.0
    assert by["a_static.mp4"]["scores"]["temporal_flickering"]["value"] == 1.0
    assert by["b_moving.mp4"]["scores"]["dynamic_degree"]["value"] == 1.0
    assert by["c_frames"]["fps"] == 8.0 and by["c_frames"]["frames"] == 9
    # 1 px/frame at 8 fps = 1 px per pair < 1.5 px
    assert by["c_frames"]["scores"]["dynamic_degree"]["value"] == 0.0
    agg = out["aggregate"]
    assert agg["dynamic_degree"]["value"] == pytest.approx(1 / 3) and agg["dynamic_degree"]["n"] == 3
    assert agg["imaging_quality"]["value"] is None and agg["imaging_quality"]["n_unavailable"] == 3
    for v in out["videos"][:3]:
        s = v["scores"]["dynamic_degree"]
        assert s["backend"] == "lite" and s["evaluator_version"] and "model_hash" in s
    json.dumps(out)


def test_score_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no videos"):
        score_folder(tmp_path, "lite")
    with pytest.raises(ValueError, match="not a directory"):
        score_folder(tmp_path / "missing", "lite")
    write_video(tmp_path / "x.mp4", static_video(3, 32, 32), fps=8)
    with pytest.raises(ValueError, match="unknown metric"):
        score_folder(tmp_path, "lite", ["fvd"])
    with pytest.raises(ValueError, match="backend"):
        score_folder(tmp_path, "raft")
