"""Weight-file location, the missing-weights message, and hashing.

Run: python -m pytest tests/evaluator/metrics/test_metrics_weights.py -q
"""

from __future__ import annotations

import hashlib

import pytest

from evaluator.metrics import METRICS
from evaluator.metrics import weights as W
from evaluator.metrics.synthetic import static_video

ALL_FILES = [
    "raft_model/models/raft-things.pth",
    "amt_model/amt-s.pth",
    "clip_model/ViT-L-14.pt",
    "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
    "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",
]


def test_layout_mirrors_vbench_cache(tmp_path):
    paths = {w.path(tmp_path) for w in W.WEIGHT_FILES.values()}
    assert paths == {tmp_path / "vbench" / f for f in ALL_FILES}


def test_weights_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(tmp_path))
    assert W.resolve_weights_dir() == tmp_path
    assert W.weight_path("amt_s") == tmp_path / "vbench" / "amt_model" / "amt-s.pth"
    assert W.resolve_weights_dir(tmp_path / "x") == tmp_path / "x"  # explicit wins


def test_missing_weights_error_lists_files_and_directory(tmp_path):
    metrics = ["dynamic_degree", "motion_smoothness", "aesthetic_quality", "imaging_quality"]
    with pytest.raises(W.MissingWeightsError) as e:
        W.require_weights(metrics, tmp_path)
    msg = str(e.value)
    for f in ALL_FILES:
        assert str(tmp_path / "vbench" / f) in msg
    assert "ln -s ~/.cache/vbench" in msg and W.ENV_WEIGHTS_DIR in msg
    assert len(e.value.missing) == 5


def test_present_files_are_not_listed(tmp_path):
    p = W.weight_path("raft_things", tmp_path)
    p.parent.mkdir(parents=True)
    p.write_bytes(b"x")
    assert W.missing_weights(["dynamic_degree"], tmp_path) == []
    assert [w.key for w in W.missing_weights(["motion_score"], tmp_path)] == ["amt_s"]
    W.require_weights(["dynamic_degree", "temporal_flickering"], tmp_path)  # no error


def test_vbench_backend_without_weights_is_unavailable_with_message(tmp_path):
    pytest.importorskip("vbench.dynamic_degree")
    pytest.importorskip("vbench.motion_smoothness")
    v = static_video(5, 128, 128)
    for metric, f in [("dynamic_degree", "raft-things.pth"), ("motion_smoothness", "amt-s.pth")]:
        r = METRICS[metric](v, 16, backend="vbench", weights_dir=tmp_path)
        assert r.value is None and r.backend == "vbench"
        assert f in r.unavailable_reason and str(tmp_path / "vbench") in r.unavailable_reason
        assert r.details["missing_files"]
    ms = METRICS["motion_score"](v, 16, backend="vbench", weights_dir=tmp_path)
    assert ms.value is None and "raft-things.pth" in ms.unavailable_reason and "amt-s.pth" in ms.unavailable_reason


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown metric"):
        W.weights_for(["fvd"])
    with pytest.raises(ValueError, match="unknown weight"):
        W.weight_path("raft_small")


def test_hashes(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"hello")
    b.write_bytes(b"world")
    assert W.file_sha256(a) == hashlib.sha256(b"hello").hexdigest()
    assert W.combined_hash([a]) == W.file_sha256(a)
    both = W.combined_hash([a, b])
    assert (
        both
        == hashlib.sha256(
            f"a.bin:{hashlib.sha256(b'hello').hexdigest()}\nb.bin:{hashlib.sha256(b'world').hexdigest()}".encode()
        ).hexdigest()
    )
    assert both != W.combined_hash([b, a])
