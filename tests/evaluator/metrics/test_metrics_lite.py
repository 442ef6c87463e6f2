"""Known-answer tests of the weight-free (lite) motion metrics on videos made here.

Run: python -m pytest tests/evaluator/metrics/test_metrics_lite.py -q
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from evaluator.metrics import lite
from evaluator.metrics.lite import (
    dd_check_move,
    dd_interval,
    dd_params,
    dynamic_degree_lite,
    interpolate_midpoint,
    motion_smoothness_lite,
    temporal_flickering_lite,
)
from evaluator.metrics.synthetic import moving_square, panning_texture, smooth_texture, static_video

# ---------------------------------------------------------------------------------------------- dynamic degree


def test_static_video_has_dynamic_degree_zero():
    r = dynamic_degree_lite(static_video(17, 64, 64), fps=16)
    assert r.value == 0.0
    assert r.details["pair_scores"] == [0.0] * 8  # 17 frames at 16 fps -> every 2nd frame -> 9 sampled, 8 pairs
    assert r.backend == "lite" and r.model_hash is None and r.metric == "dynamic_degree"


def test_square_moving_above_threshold_is_dynamic():
    # 2 px/frame at 16 fps: 4 px between sampled frames, threshold at 64 px is 6 * 64 / 256 = 1.5 px
    r = dynamic_degree_lite(moving_square(17, 64, 64, speed=2.0), fps=16)
    assert r.value == 1.0
    assert r.details["thres"] == pytest.approx(1.5)
    assert r.details["n_pairs_over"] == 8
    assert np.median(r.details["pair_scores"]) == pytest.approx(4.0, abs=0.5)


def test_square_moving_below_threshold_is_static():
    # 0.5 px/frame -> 1 px per sampled pair < 1.5 px
    r = dynamic_degree_lite(moving_square(17, 64, 64, speed=0.5), fps=16)
    assert r.value == 0.0
    assert max(r.details["pair_scores"]) < 1.5


def test_farneback_flow_gives_same_decision():
    assert dynamic_degree_lite(moving_square(17, 64, 64, speed=2.0), fps=16, flow="farneback").value == 1.0
    assert dynamic_degree_lite(static_video(17, 64, 64), fps=16, flow="farneback").value == 0.0


def test_interval_follows_vbench_rounding():
    # max(1, round(fps / 8)) with Python's half-to-even rounding
    assert [dd_interval(f) for f in (4, 8, 12, 16, 20, 24, 30, 60)] == [1, 1, 2, 2, 2, 3, 4, 8]


def test_thresholds_scale_with_resolution_and_frame_count():
    assert dd_params(64, 64, 9) == {"thres": 1.5, "count_num": 2}
    assert dd_params(480, 832, 41) == {"thres": 6.0 * 480 / 256, "count_num": 10}  # Wan 81 frames @ 16 fps
    assert dd_params(832, 480, 41)["thres"] == pytest.approx(11.25)  # min side, either orientation
    assert dd_params(256, 512, 16) == {"thres": 6.0, "count_num": 4}
    assert dd_params(64, 64, 2)["count_num"] == 0  # round(0.5) == 0


def test_same_pixel_motion_is_dynamic_at_low_resolution_only():
    # 1 px/frame at 16 fps = 2 px per sampled pair: above 1.5 (64 px) but below 6.0 (256 px)
    small = dynamic_degree_lite(panning_texture(17, 64, 64, velocity=(1.0, 0.0)), fps=16)
    large = dynamic_degree_lite(panning_texture(17, 256, 256, velocity=(1.0, 0.0)), fps=16)
    assert small.value == 1.0 and large.value == 0.0
    assert np.median(small.details["pair_scores"]) == pytest.approx(2.0, abs=0.3)
    assert np.median(large.details["pair_scores"]) == pytest.approx(2.0, abs=0.3)


def _bursty(n_frames: int, moving_pairs: int) -> np.ndarray:
    """Static except for ``moving_pairs`` jumps of 6 px (at 8 fps every frame is sampled)."""
    tex = panning_texture(n_frames, 64, 64, velocity=(0.0, 0.0))
    out = tex.copy()
    big = smooth_texture(64, 200, seed=3)
    for t in range(n_frames):
        shift = 6 * min(t, moving_pairs)
        out[t] = big[:, shift : shift + 64]
    return out


def test_required_number_of_moving_pairs_scales_with_frame_count():
    # 17 frames at 8 fps: 17 sampled, count_num = round(17 / 4) = 4
    assert dynamic_degree_lite(_bursty(17, 3), fps=8).value == 0.0
    assert dynamic_degree_lite(_bursty(17, 4), fps=8).value == 1.0
    # 9 frames at 8 fps: count_num = round(9 / 4) = 2, so 3 moving pairs are enough
    r = dynamic_degree_lite(_bursty(9, 3), fps=8)
    assert r.details["count_num"] == 2 and r.value == 1.0


def test_sampling_interval_from_fps():
    v = moving_square(17, 64, 64, speed=0.5)  # 0.5 px/frame
    slow = dynamic_degree_lite(v, fps=8)  # every frame sampled: 0.5 px per pair -> static
    fast = dynamic_degree_lite(v, fps=48)  # every 6th frame: 3 px per pair, 2 pairs, count_num = round(3/4) = 1
    assert slow.details["interval"] == 1 and slow.value == 0.0
    assert fast.details["interval"] == 6 and fast.details["n_sampled"] == 3
    assert fast.details["count_num"] == 1 and fast.value == 1.0


def test_check_move_matches_vbench_rule():
    assert dd_check_move([2.0, 0.0, 2.0], thres=1.5, count_num=2) is True
    assert dd_check_move([2.0, 0.0, 1.5], thres=1.5, count_num=2) is False  # strictly above
    assert dd_check_move([], thres=1.5, count_num=0) is False
    assert dd_check_move([0.0], thres=1.5, count_num=0) is True  # VBench's corner, kept


def test_top5_mean_magnitude_by_hand():
    flow = np.zeros((10, 10, 2), np.float32)  # 100 px -> top 5 = 5 values
    flow[0, :5, 0] = [3, 4, 5, 6, 7]
    flow[1, 0, 1] = 1
    assert lite.top5_mean_magnitude(flow) == pytest.approx(5.0)
    flow[0, 0] = [3, 4]  # magnitude 5 replaces 3
    assert lite.top5_mean_magnitude(flow) == pytest.approx((5 + 4 + 5 + 6 + 7) / 5)


# ---------------------------------------------------------------------------------------------- motion smoothness


def test_static_video_is_perfectly_smooth():
    assert motion_smoothness_lite(static_video(9, 64, 64), 16).value == 1.0


def test_smoothness_by_hand_for_flat_frames():
    # even frames 100, odd frames 110, flat -> zero flow -> prediction 100 -> error 10
    v = np.where((np.arange(9) % 2 == 0)[:, None, None, None], 100, 110).astype(np.uint8) * np.ones(
        (9, 32, 32, 3), np.uint8
    )
    r = motion_smoothness_lite(v, 16)
    assert r.value == pytest.approx((255 - 10) / 255)
    assert r.details["per_midpoint_error"] == [10.0] * 4


def test_midpoint_interpolation_of_a_translation():
    v = panning_texture(3, 64, 64, velocity=(2.0, 1.0))
    f = lite.FlowCache(v)
    mid = interpolate_midpoint(v[0], v[2], f.flow(0, 2), f.flow(2, 0))
    err = np.abs(mid.astype(float) - v[1])[4:-4, 4:-4].mean()
    assert err < 1.5
    assert np.abs(v[0].astype(float) - v[1])[4:-4, 4:-4].mean() > 5 * err  # much better than holding a frame


def test_dropping_or_shuffling_frames_lowers_smoothness():
    v = panning_texture(17, 64, 64, velocity=(2.0, 0.5))
    smooth = motion_smoothness_lite(v, 16).value
    dropped = motion_smoothness_lite(v[[0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 16]], 16).value
    shuffled = motion_smoothness_lite(v[np.random.default_rng(0).permutation(17)], 16).value
    assert smooth > 0.99
    assert dropped < smooth - 0.01
    assert shuffled < dropped


def test_even_frame_count_ignores_last_odd_frame_as_vbench():
    v = panning_texture(8, 64, 64, velocity=(1.0, 0.0))  # kept 0,2,4,6 -> 3 midpoints (frame 7 unused)
    r = motion_smoothness_lite(v, 16)
    assert len(r.details["per_midpoint_error"]) == 3


# ---------------------------------------------------------------------------------------------- flickering


def test_static_video_has_flickering_one():
    assert temporal_flickering_lite(static_video(5, 32, 32)).value == 1.0


def test_flickering_by_hand():
    v = np.where((np.arange(6) % 2 == 0)[:, None, None, None], 100, 140).astype(np.uint8) * np.ones(
        (6, 16, 16, 3), np.uint8
    )
    r = temporal_flickering_lite(v)
    assert r.value == pytest.approx((255 - 40) / 255, abs=1e-12)
    assert r.details["n_pairs"] == 5


def test_flickering_equals_vbench_function():
    tf = pytest.importorskip("vbench.temporal_flickering")
    v = np.random.default_rng(1).integers(0, 256, (6, 24, 40, 3), dtype=np.uint8)
    seq = tf.mae_seq([np.ascontiguousarray(f[..., ::-1]) for f in v])  # VBench's BGR frames
    assert temporal_flickering_lite(v).value == (255.0 - np.mean(seq).item()) / 255.0


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "fn, video, match",
    [
        (motion_smoothness_lite, static_video(2, 16, 16), "at least 3"),
        (dynamic_degree_lite, static_video(1, 16, 16), "at least 2"),
        (temporal_flickering_lite, static_video(1, 16, 16), "at least 2"),
        (temporal_flickering_lite, np.zeros((3, 8, 8, 3), np.float32), "uint8"),
        (temporal_flickering_lite, np.zeros((3, 8, 8), np.uint8), r"\[T, H, W, 3\]"),
    ],
)
def test_bad_input_raises(fn, video, match):
    with pytest.raises(ValueError, match=match):
        fn(video, 16)


def test_bad_fps_and_flow_raise():
    with pytest.raises(ValueError, match="fps"):
        dynamic_degree_lite(static_video(3, 16, 16), fps=0)
    with pytest.raises(ValueError, match="flow method"):
        dynamic_degree_lite(static_video(3, 16, 16), fps=8, flow="raft")
    with pytest.raises(ValueError, match="too small"):
        dynamic_degree_lite(static_video(3, 4, 4), fps=8)


def test_dis_flow_from_many_threads_equals_the_sequential_flow():
    """The server scores concurrent generations on several threads; a DIS object shared between them crashed the
    process inside OpenCV, and a reused one's results depended on what it had computed before."""
    from concurrent.futures import ThreadPoolExecutor

    frames = [lite.to_gray(f) for f in panning_texture(24, 96, 96)]
    pairs = list(itertools.pairwise(frames))
    expected = [lite.optical_flow(a, b) for a, b in pairs]
    with ThreadPoolExecutor(8) as ex:
        for _ in range(3):
            got = list(ex.map(lambda ab: lite.optical_flow(*ab), pairs))
            assert all(np.array_equal(g, e) for g, e in zip(got, expected))
