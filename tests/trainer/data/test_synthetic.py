"""Tests for trainer.data.synthetic: determinism, captions that agree with the measured motion, sizes,
held-out split, dataset files. Motion is measured from the pixels (object masks, moments, shifts), not read
from meta."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trainer.data import synthetic as S


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _alpha(video: np.ndarray, rgb) -> np.ndarray:
    """Per-pixel object coverage for a plain background: projection of (pixel - bg) onto (rgb - bg)."""
    v = video.astype(np.float64)
    bg = np.median(v[0].reshape(-1, 3), axis=0)  # the object covers well under half the frame
    d = np.asarray(rgb, dtype=np.float64) - bg
    return np.clip(((v - bg) @ d) / (d @ d), 0, 1)


def _centroids(alpha: np.ndarray) -> np.ndarray:
    """[T, 2] (x, y) centroids of [T, H, W] coverage maps."""
    _, h, w = alpha.shape
    ys, xs = np.mgrid[0:h, 0:w]
    m = alpha.sum(axis=(1, 2))
    return np.stack([(alpha * xs).sum(axis=(1, 2)) / m, (alpha * ys).sum(axis=(1, 2)) / m], axis=1)


def _colour_centroids(video: np.ndarray, rgb, others=()) -> np.ndarray:
    """Centroids of the pixels nearest to ``rgb`` (within 45) among ``rgb`` and ``others`` (textured bgs)."""
    v = video.astype(np.float64)
    dist = np.linalg.norm(v - np.asarray(rgb), axis=-1)
    mask = dist < 45
    for o in others:
        mask &= dist < np.linalg.norm(v - np.asarray(o), axis=-1)
    return _centroids(mask.astype(np.float64))


# --- determinism --------------------------------------------------------------------------------------------


def test_same_seed_same_clips_different_seed_differs():
    a = S.sample_clips(5, seed=3)
    b = S.sample_clips(5, seed=3)
    c = S.sample_clips(5, seed=4)
    for (va, ca, ma), (vb, cb, mb) in zip(a, b):
        assert np.array_equal(va, vb) and ca == cb and ma == mb
    assert any(not np.array_equal(va, vc) for (va, _, _), (vc, _, _) in zip(a, c))
    # clip i depends only on (seed, i): a shorter run is a prefix of a longer one
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(S.sample_clips(2, seed=3), a))


# --- captions agree with measured motion --------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["left", "right", "up", "down", "down left"])
def test_translate_caption_matches_centroid_motion(direction):
    video, caption, meta = S.translate(_rng(1), direction=direction, background="plain")
    assert caption.endswith(f"moves {direction}")
    assert (
        caption == f"{'an' if meta['colour'] == 'orange' else 'a'} {meta['colour']} {meta['shape']} moves {direction}"
    )
    c = _centroids(_alpha(video, meta["rgb"]))
    moved = c[-1] - c[0]
    ux, uy = S.DIRECTIONS[direction]
    # sign of the motion along each axis is the caption's, and the distance is the stated speed
    assert np.sign(np.round(moved, 1)).tolist() == [np.sign(ux), np.sign(uy)]
    assert 0.6 * 16 * 0.99 <= np.hypot(*moved) <= 1.2 * 16 * 1.01
    np.testing.assert_allclose(moved, [meta["dx"] * 16, meta["dy"] * 16], atol=0.3)
    # antialiased: the centroid advances by the same sub-pixel step every frame
    steps = np.diff(c, axis=0)
    np.testing.assert_allclose(steps, np.broadcast_to([meta["dx"], meta["dy"]], steps.shape), atol=0.06)


def test_translate_on_textured_background_moves_as_captioned():
    for seed, direction in [(2, "left"), (3, "down")]:
        video, caption, meta = S.translate(_rng(seed), direction=direction, background="textured")
        assert f"moves {direction}" in caption
        c = _colour_centroids(video, meta["rgb"])
        moved = c[-1] - c[0]
        if direction == "left":
            assert moved[0] < -8 and abs(moved[1]) < 1
        else:
            assert moved[1] > 8 and abs(moved[0]) < 1


def test_bounce_height_is_a_parabola_then_rebounds():
    video, caption, meta = S.bounce(_rng(5), background="plain")
    assert caption.endswith("ball bounces")
    alpha = _alpha(video, meta["rgb"])
    alpha[:, 30:] = 0  # the lighter floor strip (2 px at 32 px); the ball stays above it
    y = _centroids(alpha)[:, 1]
    first_impact = meta["impact_times"][0]
    falling = np.arange(math.floor(first_impact) + 1)
    coef = np.polyfit(falling, y[falling], 2)
    resid = y[falling] - np.polyval(coef, falling)
    assert np.abs(resid).max() < 0.15
    assert coef[0] == pytest.approx(meta["gravity"] / 2, rel=0.1)  # constant downward acceleration
    # falls (y grows) to the floor, then rises again after the impact
    fi = math.floor(first_impact)
    assert np.all(np.diff(y[: fi + 1]) > 0) and y[fi] - y[0] > 8
    assert max(y[fi], y[fi + 1]) - y[fi + 2] > 1


@pytest.mark.parametrize("direction", ["clockwise", "counterclockwise"])
def test_rotate_bar_turns_the_stated_way(direction):
    video, caption, meta = S.rotate(_rng(7), shape="bar", direction=direction, background="plain")
    assert caption.endswith(f"bar rotates {direction}")
    a = _alpha(video, meta["rgb"])
    ys, xs = np.mgrid[0 : video.shape[1], 0 : video.shape[2]]
    angles = []
    for f in a:
        m = f.sum()
        cx, cy = (f * xs).sum() / m, (f * ys).sum() / m
        mxx, myy, mxy = (
            (f * (xs - cx) ** 2).sum(),
            (f * (ys - cy) ** 2).sum(),
            (f * (xs - cx) * (ys - cy)).sum(),
        )
        angles.append(0.5 * math.atan2(2 * mxy, mxx - myy))  # orientation, image coords (y down)
    steps = np.degrees(np.diff(np.unwrap(np.array(angles) * 2) / 2))
    # y down: a clockwise turn on screen increases the angle
    sign = 1 if direction == "clockwise" else -1
    assert np.all(sign * steps > 3)
    assert np.median(steps) == pytest.approx(meta["angular_speed"], abs=1.0)


@pytest.mark.parametrize("direction", ["right", "up"])
def test_pan_content_moves_opposite_to_the_camera(direction):
    video, caption, meta = S.pan(_rng(11), direction=direction)
    assert caption == f"the camera pans {direction} over a textured wall"
    g = video.astype(np.float64).mean(-1)
    k = 8
    best, best_err = None, np.inf
    for sy in range(-12, 13):
        for sx in range(-12, 13):  # content at (x, y) in frame 0 is at (x + sx, y + sy) in frame k
            a = g[0][max(0, -sy) : 32 - max(0, sy), max(0, -sx) : 32 - max(0, sx)]
            b = g[k][max(0, sy) : 32 - max(0, -sy), max(0, sx) : 32 - max(0, -sx)]
            err = np.mean((a - b) ** 2)
            if err < best_err:
                best, best_err = (sx, sy), err
    expected = (meta["dx"] * k, meta["dy"] * k)
    assert abs(best[0] - expected[0]) <= 1 and abs(best[1] - expected[1]) <= 1
    if direction == "right":
        assert best[0] < 0 and meta["camera_dx"] > 0
    else:
        assert best[1] > 0 and meta["camera_dy"] < 0


@pytest.mark.parametrize("direction", ["grows", "shrinks"])
def test_scale_area_changes_as_captioned(direction):
    video, caption, meta = S.scale(_rng(13), shape="circle", direction=direction, background="plain")
    assert caption.endswith(f"circle {direction}")
    area = _alpha(video, meta["rgb"]).sum(axis=(1, 2))
    diffs = np.diff(area)
    assert np.all(diffs > 0) if direction == "grows" else np.all(diffs < 0)
    assert area[-1] / area[0] == pytest.approx((meta["size_end"] / meta["size_start"]) ** 2, rel=0.08)


def test_two_objects_each_moves_its_stated_way():
    video, caption, meta = S.two_objects(_rng(17), directions=S.CARDINAL_DIRECTIONS)
    o1, o2 = meta["objects"]
    assert caption.split(" and ")[0].endswith(f"{o1['colour']} {o1['shape']} moves {o1['direction']}")
    assert caption.split(" and ")[1].endswith(f"{o2['colour']} {o2['shape']} moves {o2['direction']}")
    assert o1["direction"] != o2["direction"] and o1["colour"] != o2["colour"]
    for me, other in ((o1, o2), (o2, o1)):
        c = _colour_centroids(video, me["rgb"], others=[other["rgb"]])
        moved = c[-1] - c[0]
        ux, uy = S.DIRECTIONS[me["direction"]]
        assert moved[0] * ux + moved[1] * uy > 6  # travelled along its own direction
        assert abs(moved[0] * uy - moved[1] * ux) < 1.5  # and not sideways


def test_static_has_no_frame_differences():
    video, caption, meta = S.static(_rng(19))
    assert caption == f"a static {meta['colour']} {meta['shape']}"
    assert np.abs(np.diff(video.astype(np.int16), axis=0)).max() == 0
    assert video.std() > 5  # but something is drawn


# --- sizes, vocabulary, validation --------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(64, 64), (48, 80)])
def test_every_family_honours_frames_and_resolution(height, width):
    for name, fn in S.FAMILIES.items():
        video, caption, meta = fn(_rng(23), frames=9, height=height, width=width)
        assert video.shape == (9, height, width, 3) and video.dtype == np.uint8, name
        assert set(caption.split()) <= set(S.VOCABULARY), caption
    # speeds scale with resolution: at 64 px a translate moves 1.2-2.4 px/frame
    _, _, meta = S.translate(_rng(29), frames=9, height=64, width=64, direction="right", background="plain")
    assert 1.2 <= meta["speed"] <= 2.4
    _, _, meta = S.make_clip(0, 0, frames=9, height=64, width=64, fps=12)
    assert meta["fps"] == 12.0


def test_captions_use_only_the_vocabulary():
    for _, caption, _ in S.sample_clips(30, seed=0, frames=2, height=16, width=16):
        words = caption.split()
        assert set(words) <= set(S.VOCABULARY), caption
        assert len(words) <= S.MAX_CAPTION_WORDS
    assert caption == caption.lower() and "  " not in caption


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="frames"):
        S.sample_clips(1, frames=1)
    with pytest.raises(ValueError, match="height"):
        S.translate(_rng(), height=8)
    with pytest.raises(ValueError, match="unknown family 'wobble'"):
        S.sample_clips(1, families={"wobble": 1.0})
    with pytest.raises(ValueError, match="pan"):
        S.sample_clips(1, families={"pan": 1.0}, split="heldout")
    with pytest.raises(ValueError, match="split"):
        S.sample_clips(1, split="test")
    with pytest.raises(ValueError, match="held-out"):
        S.translate(_rng(), colour="red", shape="triangle", split="train")  # red triangle is held out


# --- held-out split -----------------------------------------------------------------------------------------


def _pairs(meta: dict) -> list[tuple[str, str]]:
    if meta["family"] == "two_objects":
        return [(o["colour"], o["shape"]) for o in meta["objects"]]
    return [] if meta["colour"] is None else [(meta["colour"], meta["shape"])]


def test_heldout_split_and_train_split_are_disjoint():
    heldout = set(S.allowed_combos("heldout"))
    assert heldout == {
        ("red", "triangle"),
        ("green", "circle"),
        ("blue", "square"),
        ("yellow", "triangle"),
        ("purple", "circle"),
        ("orange", "square"),
    }
    assert heldout.isdisjoint(S.allowed_combos("train"))
    seen = {"train": set(), "heldout": set()}
    for split, pairs in seen.items():
        for _, _, meta in S.sample_clips(40, seed=1, frames=2, height=16, width=16, split=split):
            for colour, noun in _pairs(meta):
                assert S.is_heldout(colour, noun) == (split == "heldout"), (split, colour, noun)
                pairs.add((colour, noun))
    assert seen["heldout"] and seen["train"] and seen["heldout"].isdisjoint(seen["train"])


def test_direction_prompts_are_heldout_balanced_and_distinct():
    prompts = S.direction_prompts(24, seed=0)
    assert [p["direction"] for p in prompts].count("left") == 6
    assert all([p["direction"] for p in prompts].count(d) == 6 for d in S.CARDINAL_DIRECTIONS)
    assert len({p["prompt"] for p in prompts}) == 24
    signs = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for p in prompts:
        assert S.is_heldout(p["colour"], p["shape"])
        assert p["prompt"].endswith(f"{p['colour']} {p['shape']} moves {p['direction']}")
        assert (p["dx_sign"], p["dy_sign"]) == signs[p["direction"]]
    assert S.direction_prompts(24, seed=0) == prompts and S.direction_prompts(24, seed=1) != prompts
    train = S.direction_prompts(8, seed=0, split="train")
    assert not any(S.is_heldout(p["colour"], p["shape"]) for p in train)


# --- files --------------------------------------------------------------------------------------------------


def test_generate_dataset_is_deterministic_and_readable_by_video_folder(tmp_path):
    from trainer.data.folder import VideoFolder
    from trainer.data.video_io import read_video

    out = S.generate_dataset(tmp_path / "a", n=3, seed=7, frames=9, height=32, width=48, fps=10, progress=False)
    S.generate_dataset(tmp_path / "b", n=3, seed=7, frames=9, height=32, width=48, fps=10, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "captions.jsonl",
        "clip_000000.mp4",
        "clip_000001.mp4",
        "clip_000002.mp4",
        "dataset.json",
    ]
    lines = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
    assert (tmp_path / "b" / "captions.jsonl").read_text() == (out / "captions.jsonl").read_text()
    params = json.loads((out / "dataset.json").read_text())
    assert (
        params["n"],
        params["seed"],
        params["frames"],
        params["height"],
        params["width"],
        params["fps"],
    ) == (3, 7, 9, 32, 48, 10.0)
    ref = S.sample_clips(3, seed=7, frames=9, height=32, width=48, fps=10)
    for line, (video, caption, meta) in zip(lines, ref):
        assert line["caption"] == caption and line["family"] == meta["family"]
        frames, fps = read_video(out / line["file"])
        assert frames.shape == (9, 32, 48, 3) and fps == 10.0
        assert np.abs(frames.astype(int) - video).max() <= 3  # lossless H.264 444: only colour-conversion rounding
        again, _ = read_video(tmp_path / "b" / line["file"])
        assert np.array_equal(frames, again)
    ds = VideoFolder(out, num_frames=9, height=32, width=48)
    assert len(ds) == 3 and [ds[i][1] for i in range(3)] == [c for _, c, _ in ref]
    with pytest.raises(FileExistsError):
        S.generate_dataset(out, n=1, seed=0, progress=False)


def test_cli_writes_dataset_and_has_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        S.main(["--help"])
    assert exc.value.code == 0 and "--seed" in capsys.readouterr().out
    S.main(
        [
            str(tmp_path / "cli"),
            "--n",
            "2",
            "--seed",
            "0",
            "--frames",
            "5",
            "--families",
            "translate=1,static=0",
        ]
    )
    lines = (tmp_path / "cli" / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["family"] == "translate" for x in lines)
