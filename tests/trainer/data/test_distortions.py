"""Tests for trainer.data.distortions (DF-DPO lose-sample edits).

Run: python -m pytest tests/trainer/data/test_distortions.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.distortions import (
    BlockShuffle,
    ColorShift,
    Compose,
    Curriculum,
    GaussianBlur,
    OneOf,
    PixelNoise,
    Reverse,
    build_distortion,
    main,
)
from trainer.data.video_io import read_video, write_video


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _indexed_video(t: int = 20, h: int = 4, w: int = 6) -> np.ndarray:
    """Frame t is filled with the value t (so frame identity can be read back from pixel values)."""
    return np.broadcast_to(np.arange(t, dtype=np.uint8)[:, None, None, None], (t, h, w, 3)).copy()


def _random_video(t: int = 4, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return _rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def _grey(t: int = 4, h: int = 64, w: int = 64, value: int = 128) -> np.ndarray:
    return np.full((t, h, w, 3), value, dtype=np.uint8)


def test_reverse_reverses_exactly_and_does_not_mutate():
    video = _random_video(t=5)
    before = video.copy()
    out = Reverse()(video, _rng())
    assert np.array_equal(video, before)
    for t in range(5):
        assert np.array_equal(out[t], video[4 - t])
    assert not np.shares_memory(out, video)


@pytest.mark.parametrize("seed", range(25))
def test_block_shuffle_moves_one_block_of_allowed_size(seed: int):
    n = 23  # floor(0.2 * 23) = 4 -> block of 2..4 frames
    video = _indexed_video(t=n)
    out = BlockShuffle(0.2)(video, _rng(seed))
    order = out[:, 0, 0, 0].astype(int)  # which source frame sits at each position
    moved = np.flatnonzero(order != np.arange(n))
    assert moved.size >= 2  # the order actually changed
    lo, hi = moved.min(), moved.max()
    assert hi - lo + 1 <= 4  # the changed span fits in one allowed block
    # frames outside the block are untouched; the block holds a permutation of its own frames
    assert np.array_equal(np.sort(order[lo : hi + 1]), np.arange(lo, hi + 1))
    assert np.array_equal(out, video[order])
    assert np.array_equal(video, _indexed_video(t=n))


def test_block_shuffle_block_length_spans_2_to_max():
    shuffle = BlockShuffle(0.2)
    lengths = {len(shuffle.block(30, _rng(s))[1]) for s in range(200)}
    assert lengths == {2, 3, 4, 5, 6}  # floor(0.2 * 30) = 6


def test_block_shuffle_rejects_too_short_video():
    with pytest.raises(ValueError, match="at least 10 frames"):
        BlockShuffle(0.2)(_indexed_video(t=9), _rng())
    BlockShuffle(0.2)(_indexed_video(t=10), _rng())  # floor(2.0) = 2 is enough


def test_pixel_noise_has_requested_sigma_on_mid_grey():
    video = _grey(t=4, h=64, w=64)
    out = PixelNoise(8.0)(video, _rng(1)).astype(np.float64)
    # rounding adds 1/12 variance: sqrt(64 + 1/12) = 8.005, well inside 5%
    assert abs(out.std() - 8.0) / 8.0 < 0.05
    assert abs(out.mean() - 128.0) < 0.2
    assert np.array_equal(video, _grey(t=4, h=64, w=64))


def test_pixel_noise_clips_to_uint8_range():
    out = PixelNoise(50.0)(_grey(value=250), _rng(2))
    assert out.dtype == np.uint8 and out.max() == 255 and (out == 255).mean() > 0.3


def _high_freq_energy(video: np.ndarray) -> float:
    x = video.astype(np.float64)
    spec = np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2
    fy = np.abs(np.fft.fftfreq(x.shape[1]))[:, None]
    fx = np.abs(np.fft.fftfreq(x.shape[2]))[None, :]
    mask = (np.maximum(fy, fx) > 0.25)[None, :, :, None]  # upper half of the band
    return float((spec * mask).sum())


def test_blur_lowers_high_frequency_energy_and_keeps_mean():
    video = _random_video(t=3, h=32, w=32)
    out = GaussianBlur(1.5)(video, _rng())
    assert out.shape == video.shape and out.dtype == np.uint8
    assert _high_freq_energy(out) < 0.05 * _high_freq_energy(video)
    assert abs(out.astype(float).mean() - video.astype(float).mean()) < 1.0
    # frames are blurred independently (no temporal mixing): frame 1 only depends on frame 1
    video2 = video.copy()
    video2[0] = 0
    assert np.array_equal(GaussianBlur(1.5)(video2, _rng())[1:], out[1:])


def test_color_shift_fixed_offsets_shift_channel_means():
    video = _grey(value=100)
    out = ColorShift(offsets=(12, -7, 30))(video, _rng())
    shift = out.astype(float).mean(axis=(0, 1, 2)) - 100.0
    np.testing.assert_allclose(shift, [12, -7, 30])


def test_color_shift_random_offsets_are_the_drawn_ones():
    video = _grey(value=128)
    op = ColorShift(max_shift=25.0)
    offsets = op.draw_offsets(_rng(5))
    assert np.all(np.abs(offsets) <= 25.0) and np.any(np.abs(offsets) > 1.0)
    out = op(video, _rng(5))
    shift = out.astype(float).mean(axis=(0, 1, 2)) - 128.0
    np.testing.assert_allclose(shift, offsets, atol=0.5)  # rounded to integer pixel values
    # same shift on every frame and pixel
    assert np.all(out == out[0, 0, 0])


def test_presets_and_determinism_by_seed():
    video = _random_video(t=12, h=16, w=16)
    for name in ("temporal", "spatial", "hybrid"):
        op = build_distortion(name)
        a = op(video, _rng(7))
        b = op(video, _rng(7))
        assert np.array_equal(a, b), name
        assert a.shape == video.shape and a.dtype == np.uint8
        assert not np.array_equal(a, video), name
    hybrid = build_distortion("hybrid")
    assert not np.array_equal(hybrid(video, _rng(1)), hybrid(video, _rng(2)))


def test_temporal_preset_chooses_reverse_or_shuffle_by_rng():
    video = _indexed_video(t=20)
    op = build_distortion("temporal")
    kinds = set()
    for s in range(40):
        order = op(video, _rng(s))[:, 0, 0, 0].astype(int)
        if np.array_equal(order, np.arange(20)[::-1]):
            kinds.add("reverse")
        else:
            moved = np.flatnonzero(order != np.arange(20))
            assert 2 <= moved.size and moved.max() - moved.min() + 1 <= 4
            kinds.add("shuffle")
    assert kinds == {"reverse", "shuffle"}


def test_spatial_preset_is_blur_color_noise_in_order():
    video = _random_video(t=2, h=16, w=16)
    manual = Compose([GaussianBlur(1.5), ColorShift(20.0), PixelNoise(8.0)])(video, _rng(3))
    assert np.array_equal(build_distortion("spatial")(video, _rng(3)), manual)


def test_parse_specs_and_round_trip():
    assert build_distortion("reverse") == Reverse()
    assert build_distortion("shuffle:max_frac=0.1") == BlockShuffle(0.1)
    assert build_distortion("blur:sigma=1.5+noise:sigma=8") == Compose([GaussianBlur(1.5), PixelNoise(8)])
    assert build_distortion("Colour:max_shift=5") == ColorShift(5.0)
    assert build_distortion("color:r=1,g=-2,b=3") == ColorShift(offsets=(1, -2, 3))
    assert build_distortion("reverse|shuffle+noise:sigma=2") == Compose(
        [OneOf([Reverse(), BlockShuffle()]), PixelNoise(2)]
    )
    assert build_distortion({"name": "blur", "sigma": 2}) == GaussianBlur(2.0)
    assert build_distortion({"compose": ["reverse", {"name": "noise", "sigma": 3}]}) == Compose(
        [Reverse(), PixelNoise(3)]
    )
    for spec in (
        "hybrid",
        "temporal+blur:sigma=2",
        "reverse|shuffle:max_frac=0.3+color:r=1,g=2,b=3",
        "spatial",
    ):
        op = build_distortion(spec)
        assert build_distortion(op.spec) == op
        assert build_distortion(op) is op


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("wobble", "unknown distortion 'wobble'"),
        ("blur:radius=2", r"blur: unknown parameter\(s\) \['radius'\]; allowed: sigma"),
        ("blur:sigma=0", r"blur: sigma must be in \(0, 20\], got 0"),
        ("blur:sigma=25", r"blur: sigma must be in \(0, 20\]"),
        ("noise:sigma=-1", r"noise: sigma must be in \(0, 128\]"),
        ("shuffle:max_frac=1.5", r"shuffle: max_frac must be in \(0, 1\]"),
        ("color:max_shift=300", r"color: max_shift must be in \(0, 255\]"),
        ("color:r=1,g=2", "all three fixed offsets"),
        ("blur:sigma", "malformed parameter 'sigma'"),
        ("blur:sigma=abc", "blur: sigma must be a number, got 'abc'"),
        ("blur:", "expected parameters"),
        ("", "empty"),
        ("reverse+", "empty distortion name"),
        ("hybrid:sigma=1", "takes no parameters"),
        ("reverse:x=1", "allowed: none"),
    ],
)
def test_parse_errors_name_field_and_range(spec: str, match: str):
    with pytest.raises(ValueError, match=match):
        build_distortion(spec)


def test_bad_dict_specs_and_bad_videos():
    with pytest.raises(ValueError, match="needs a 'name'"):
        build_distortion({"sigma": 1})
    with pytest.raises(ValueError, match="unknown distortion"):
        build_distortion({"name": "nope"})
    with pytest.raises(ValueError, match="string or a dict"):
        build_distortion(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"uint8 numpy array \[T, H, W, 3\]"):
        Reverse()(np.zeros((2, 4, 4, 3), dtype=np.float32), _rng())
    with pytest.raises(ValueError, match=r"uint8 numpy array \[T, H, W, 3\]"):
        Reverse()(np.zeros((2, 4, 4), dtype=np.uint8), _rng())


def test_curriculum_returns_stage_in_force():
    cur = Curriculum([(0, "reverse"), (100, "shuffle:max_frac=0.2"), (250, "hybrid")])
    assert cur.at(0) == Reverse() and cur.at(99) == Reverse()
    assert cur.at(100) == BlockShuffle(0.2) and cur.at(249) == BlockShuffle(0.2)
    assert cur.at(250).spec == "hybrid" and cur.at(10**6).spec == "hybrid"
    assert cur.spec == [(0, "reverse"), (100, "shuffle:max_frac=0.2"), (250, "hybrid")]
    every = Curriculum.every(50, ["spatial", "temporal", "hybrid"])
    assert [every.at(s).spec for s in (0, 49, 50, 100, 500)] == [
        "spatial",
        "spatial",
        "temporal",
        "hybrid",
        "hybrid",
    ]


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ([], "must not be empty"),
        ([(10, "reverse")], "first stage must start at step 0"),
        ([(0, "reverse"), (0, "hybrid")], "strictly increasing"),
        ([(0, "reverse"), (50, "hybrid"), (20, "spatial")], "strictly increasing"),
        ([(0, "reverse"), (-5, "hybrid")], "int >= 0, got -5"),
        ([(0.5, "reverse")], "start_step must be an int"),
        ([(0, "bogus")], "unknown distortion"),
    ],
)
def test_curriculum_errors(stages, match):
    with pytest.raises(ValueError, match=match):
        Curriculum(stages)


def test_curriculum_negative_step():
    with pytest.raises(ValueError, match="step must be >= 0"):
        Curriculum([(0, "reverse")]).at(-1)


def test_cli_writes_an_edited_copy(tmp_path, capsys):
    # flat frames of distinct colours survive H.264 well enough to read their order back
    n = 12
    colours = np.stack([np.array([20 * t, 255 - 20 * t, 128], dtype=np.uint8) for t in range(n)])
    video = np.broadcast_to(colours[:, None, None, :], (n, 32, 48, 3)).copy()
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_video(src, video, fps=8, quality="web")
    assert main([str(src), str(dst), "--spec", "reverse", "--seed", "0"]) == 0
    assert "wrote" in capsys.readouterr().out
    out, fps = read_video(dst)
    assert out.shape == video.shape and fps == pytest.approx(8.0)
    means_out = out.astype(float).mean(axis=(1, 2))
    np.testing.assert_allclose(means_out, colours[::-1].astype(float), atol=6)
    with pytest.raises(SystemExit):
        main([str(src), str(dst), "--spec", "wobble"])
