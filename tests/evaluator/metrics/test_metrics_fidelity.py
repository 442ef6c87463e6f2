"""Weight-free fidelity distances: identical sets give 0, shifted sets more, deterministic by seed.

Run: python -m pytest tests/evaluator/metrics/test_metrics_fidelity.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from evaluator.metrics.fidelity import (
    FLOW_STAT_NAMES,
    extract_patches,
    flow_statistics,
    flow_statistics_distance,
    sliced_wasserstein_patches,
)
from evaluator.metrics.synthetic import panning_texture, static_video


@pytest.fixture(scope="module")
def real():
    return [panning_texture(9, 48, 48, velocity=(2.0, 1.0), seed=s) for s in range(3)]


def _brighter(videos, delta):
    return [np.clip(v.astype(np.int16) + delta, 0, 255).astype(np.uint8) for v in videos]


def test_patch_swd_zero_for_identical_and_grows_with_shift(real):
    same = [v.copy() for v in real]
    assert sliced_wasserstein_patches(same, real, patch=8, n_proj=64) == pytest.approx(0.0, abs=1e-12)
    d10 = sliced_wasserstein_patches(_brighter(real, 10), real, patch=8, n_proj=64)
    d40 = sliced_wasserstein_patches(_brighter(real, 40), real, patch=8, n_proj=64)
    assert 0 < d10 < d40


def test_patch_swd_deterministic_by_seed(real):
    other = [panning_texture(9, 48, 48, velocity=(2.0, 1.0), seed=s + 10) for s in range(3)]
    a = sliced_wasserstein_patches(other, real, n_proj=32, seed=1, max_patches=200)
    assert a == sliced_wasserstein_patches(other, real, n_proj=32, seed=1, max_patches=200)
    assert a != sliced_wasserstein_patches(other, real, n_proj=32, seed=2, max_patches=200)


def test_extract_patches_by_hand():
    v = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    x = extract_patches([v], patch=2, max_patches=100, rng=np.random.default_rng(0))
    assert x.shape == (2 * 2 * 2, 12)  # 2 frames x 2 x 2 patches
    np.testing.assert_allclose(x[0], v[0, :2, :2].reshape(-1) / 255.0)
    assert extract_patches([v], 2, 3, np.random.default_rng(0)).shape == (3, 12)


def test_flow_statistics_of_a_translation():
    s = dict(zip(FLOW_STAT_NAMES, flow_statistics(panning_texture(5, 64, 64, velocity=(2.0, 0.0)))))
    unit = 64 / 256  # magnitudes in units of min(H, W) / 256 px
    assert s["mag_p50"] == pytest.approx(2.0 / unit, rel=0.1)
    hist = np.array([s[f"dir_hist_{i}"] for i in range(8)])
    assert hist.sum() == pytest.approx(1.0)
    assert hist.argmax() in (3, 4)  # rightward motion: angle ~0, the bins either side of 0 rad
    zero = flow_statistics(static_video(5, 32, 32))
    assert zero[:7].tolist() == [0.0] * 7


def test_flow_statistics_distance(real):
    assert flow_statistics_distance([v.copy() for v in real], real, n_proj=32) == pytest.approx(0.0, abs=1e-12)
    faster = [panning_texture(9, 48, 48, velocity=(5.0, 2.0), seed=s) for s in range(3)]
    slightly = [panning_texture(9, 48, 48, velocity=(2.5, 1.0), seed=s) for s in range(3)]
    d_fast = flow_statistics_distance(faster, real, n_proj=32)
    d_slight = flow_statistics_distance(slightly, real, n_proj=32)
    assert 0 < d_slight < d_fast


def test_bad_input():
    v = static_video(3, 8, 8)
    with pytest.raises(ValueError, match="at least one"):
        sliced_wasserstein_patches([], [v])
    with pytest.raises(ValueError, match="smaller than patch"):
        sliced_wasserstein_patches([v], [v], patch=16)
    with pytest.raises(ValueError, match="uint8"):
        flow_statistics_distance([v.astype(np.float32)], [v])
