"""Caption conformance measures (evaluator/conformance.py) on real synthetic clips, on spoiled clips, and the bench
script that reports them (bench/caption_conformance.py, run in-process with --real-only)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from evaluator.benchmark.suites import load_suite
from evaluator.conformance import (
    compare_reconstruction,
    conformance_prompts,
    conformance_scores,
    expected_from_meta,
    format_table,
    measure_video,
    parse_caption,
    summarize,
)
from tests.conftest import load_bench
from trainer.data.synthetic import DIRECTIONS, FAMILIES, ROTATIONS, families_for_split, is_heldout, sample_clips

ACCURACIES = ("colour", "shape", "motion", "direction", "rotation", "scale", "bounce", "static", "two_objects")


@pytest.fixture(scope="module")
def real():
    """Rows of held-out real clips of every family (pan: training clips), measured against each clip's meta."""
    prompts = conformance_prompts(6, seed=11)
    return [measure_video(p["video"], expected_from_meta(p["caption"], p["meta"])) for p in prompts]


def _grey(video: np.ndarray) -> np.ndarray:
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in video])
    return np.repeat(grey[..., None], 3, axis=-1)


def _clip(family: str, seed: int = 0, **kw):
    split = "heldout" if family in families_for_split("heldout") else "train"
    return FAMILIES[family](np.random.default_rng(seed), split=split, **kw)


def test_real_clips_of_every_family_pass_their_own_measures(real):
    summary = summarize(real, real)
    assert set(summary) == set(FAMILIES) | {"overall"}
    print("\n" + format_table(summary))
    for family, entry in summary.items():
        assert entry["n"] == (6 if family != "overall" else 6 * len(FAMILIES))
        for key in ACCURACIES:
            if entry[key] is not None:
                assert entry[key] >= 0.9, (family, key, entry[key])
        # each family has a motion check and, except pan, colour and shape checks
        assert entry["motion"] is not None
        assert (entry["colour"] is None) == (family == "pan")
        # speeds measured against each clip's own meta
        if entry["speed_ratio"] is not None:
            assert 0.9 <= entry["speed_ratio"] <= 1.1, (family, entry["speed_ratio"])
        # a ratio to a still reference is not given
        assert entry["flow_ratio"] == (None if family == "static" else pytest.approx(1.0))
    assert summary["static"]["flow_mag"] < 0.02 < summary["translate"]["flow_mag"]
    assert summary["two_objects"]["two_objects"] >= 0.9
    assert summary["overall"]["saturation"] > 0.5


def test_parse_caption_round_trips_every_family():
    for family in FAMILIES:
        split = "train" if family == "pan" else "all"
        for video, caption, meta in sample_clips(12, seed=3, families={family: 1.0}, split=split):
            exp = parse_caption(caption)
            assert exp["family"] == family, caption
            if family == "two_objects":
                assert exp["n_objects"] == 2
                assert [(o["colour"], o["shape"], o["direction"]) for o in exp["objects"]] == [
                    (m["colour"], m["shape"], m["direction"]) for m in meta["objects"]
                ]
            else:
                assert (exp["colour"], exp["shape"], exp["direction"]) == (
                    meta["colour"],
                    meta["shape"],
                    meta["direction"],
                ), caption
                assert exp["n_objects"] == (0 if family == "pan" else 1)
            if family == "pan":
                # content moves opposite to the camera
                cx, cy = DIRECTIONS[exp["content_direction"]]
                assert np.sign(cx) == np.sign(meta["dx"]) and np.sign(cy) == np.sign(meta["dy"])
            assert expected_from_meta(caption, meta)["family"] == family
    assert parse_caption("  A Red  Square moves up left ")["direction"] == "up left"
    for bad in (
        "a red dog moves left",
        "a red square moves sideways",
        "",
        "a blue circle rotates clockwise",
        "a red square moves left and a red circle moves up",
    ):
        with pytest.raises(ValueError, match="caption"):
            parse_caption(bad)
    with pytest.raises(ValueError, match="meta"):
        expected_from_meta("a red square moves left", {"family": "rotate"})


def test_grey_and_greyscaled_videos_fail_colour():
    for family in ("translate", "rotate", "scale", "static", "bounce", "two_objects"):
        video, caption, _ = _clip(family, seed=5)
        assert measure_video(video, caption)["colour_ok"] is True, caption
        greyscaled = measure_video(_grey(video), caption)
        assert greyscaled["colour_ok"] is False, caption
        assert greyscaled["top2pct_saturation"] < 0.1
        flat = measure_video(np.full_like(video, 128), caption)
        assert flat["colour_ok"] is False and flat["shape_ok"] is False, caption


def test_a_colour_flipped_in_one_frame_shows_in_the_worst_frame_and_barely_in_the_clip_mean():
    video, _, _ = _clip("translate", seed=4, colour="green")
    same = compare_reconstruction(video, video.copy())
    assert same["colour_error"] == same["worst_frame_colour_error"] == 0.0
    flipped = video.copy()
    flipped[8] = flipped[8][..., [2, 0, 1]]  # the object turns another colour in one frame of 17
    err = compare_reconstruction(video, flipped)
    assert err["worst_frame_colour_error"] > 100
    assert err["colour_error"] < err["worst_frame_colour_error"] / 10


def test_static_check_ignores_faint_flicker_and_catches_slow_change():
    still, caption, _ = _clip("static", seed=3)
    # what a decoder adds to a still clip: per-pixel noise far below what the eye sees
    noise = np.random.default_rng(0).normal(0.0, 2.0, still.shape)
    flicker = np.clip(still + noise, 0, 255).astype(np.uint8)
    row = measure_video(flicker, caption)
    assert row["static_ok"] is True and row["changed_share"] == 0.0
    assert row["flow_mag"] > 0.02  # Farneback reads the flicker as motion
    drifting, _, _ = _clip("translate", seed=3, speed=0.1)
    turning, _, _ = _clip("rotate", seed=3, angular_speed=2.0)
    for video in (drifting, turning):
        assert measure_video(video, caption)["static_ok"] is False
    # a still object whose outline changes every frame, the failure seen in generated "static" scenes
    morphing = np.stack([cv2.GaussianBlur(f, (5, 5), 1.5) if i % 2 else f for i, f in enumerate(still)])
    row = measure_video(morphing, caption)
    assert row["static_ok"] is False and row["changed_share"] > 0.01


@pytest.mark.parametrize("direction", ["left", "right", "up right", "down left"])
def test_static_and_flipped_translate_clips_fail_direction(direction):
    video, caption, _ = _clip("translate", seed=7, direction=direction)
    ok = measure_video(video, caption)
    assert ok["direction_ok"] is True and ok["direction"] == direction
    frozen = measure_video(np.repeat(video[:1], len(video), axis=0), caption)
    assert frozen["direction_ok"] is False and frozen["direction"] is None
    # every chosen direction has a horizontal part, so a left-right flip changes it
    flipped = measure_video(np.ascontiguousarray(video[:, :, ::-1]), caption)
    assert flipped["direction_ok"] is False
    assert DIRECTIONS[flipped["direction"]][0] == -DIRECTIONS[direction][0]


@pytest.mark.parametrize("shape", ["bar", "square", "triangle"])
@pytest.mark.parametrize("sense", ROTATIONS)
def test_time_reversed_rotation_fails_sense(shape, sense):
    split_shape = {"bar": ("orange", "bar"), "square": ("blue", "square"), "triangle": ("red", "triangle")}
    colour, shape = split_shape[shape]
    video, caption, _ = FAMILIES["rotate"](
        np.random.default_rng(2), split="heldout", colour=colour, shape=shape, direction=sense
    )
    forward = measure_video(video, caption)
    assert forward["rotation_ok"] is True and forward["shape_ok"] is True, caption
    backward = measure_video(np.ascontiguousarray(video[::-1]), caption)
    assert backward["rotation_ok"] is False
    assert np.sign(backward["angular_speed"]) == -np.sign(forward["angular_speed"])


def test_other_spoiled_motions_are_caught():
    scale_video, scale_caption, _ = _clip("scale", seed=4)
    assert measure_video(scale_video[::-1].copy(), scale_caption)["scale_ok"] is False
    pan_video, pan_caption, _ = _clip("pan", seed=4)
    assert measure_video(pan_video[::-1].copy(), pan_caption)["direction_ok"] is False
    ball, ball_caption, _ = _clip("bounce", seed=4)
    assert measure_video(np.repeat(ball[:1], len(ball), axis=0), ball_caption)["bounce_ok"] is False
    moving, moving_caption, meta = _clip("translate", seed=4)
    assert measure_video(moving, f"a static {meta['colour']} {meta['shape']}")["static_ok"] is False
    two, two_caption, _ = _clip("two_objects", seed=4)
    both = measure_video(two, two_caption)
    assert both["two_objects_ok"] is True and both["n_objects"] == 2
    # a one-object clip under a two-object caption
    lone = measure_video(moving, two_caption)
    assert lone["two_objects_ok"] is False and lone["n_objects"] <= 1
    # a single-object caption shown with a copy of its object half a frame away (split where it wraps around)
    assert measure_video(moving, moving_caption)["one_object_ok"] is True
    row = measure_video(np.maximum(moving, np.roll(moving, moving.shape[2] // 2, axis=2)), moving_caption)
    assert row["one_object_ok"] is False and row["n_objects"] >= 2


def test_conformance_scores_and_suite():
    captions = load_suite("conformance", 14)
    assert len(captions) == 14 and captions == load_suite("conformance", 14)
    assert {parse_caption(c)["family"] for c in captions} == set(FAMILIES)  # balanced: two of each family
    assert len(load_suite("conformance")) == 4 * len(FAMILIES)
    prompts = conformance_prompts(1, seed=0)
    videos = [p["video"] for p in prompts]
    captions = [p["caption"] for p in prompts]
    scores = conformance_scores(videos, captions)
    assert all(len(v) == len(prompts) for v in scores.values())
    assert scores["family"] == list(FAMILIES)
    pan = scores["family"].index("pan")
    assert scores["colour_ok"][pan] is None and scores["motion_ok"][pan] == 1.0
    assert all(v == 1.0 for v in scores["motion_ok"])
    grey_scores = conformance_scores([_grey(v) for v in videos], captions)
    assert all(v in (None, 0.0) for v in grey_scores["colour_ok"])
    with pytest.raises(ValueError, match="captions"):
        conformance_scores(videos, captions[:-1])


def test_prompt_splits_draw_unseen_or_seen_pairs():
    heldout_families = set(families_for_split("heldout"))
    unseen = conformance_prompts(2, seed=3)
    seen = conformance_prompts(2, seed=3, split="train")
    assert [p["family"] for p in unseen] == [p["family"] for p in seen]
    for u, s in zip(unseen, seen):
        assert u["meta"]["split"] == ("heldout" if u["family"] in heldout_families else "train")
        assert s["meta"]["split"] == "train"
        pair = (s["meta"].get("colour"), s["meta"].get("shape"))
        assert None in pair or not is_heldout(*pair)
    # the real clips pass their measures in either split
    rows = [measure_video(p["video"], expected_from_meta(p["caption"], p["meta"])) for p in seen]
    assert summarize(rows, rows)["overall"]["motion"] == 1.0
    with pytest.raises(ValueError, match="split"):
        conformance_prompts(1, split="all")


def test_bench_script_real_only_in_process(tmp_path, capsys):
    bench = load_bench("caption_conformance")
    out_json = tmp_path / "conformance.json"
    results = bench.main(
        [
            "--real-only",
            "--per-family",
            "2",
            "--seed",
            "1",
            "--split",
            "train",
            "--json",
            str(out_json),
            "--save-frames",
            str(tmp_path / "frames"),
        ]
    )
    printed = capsys.readouterr().out
    for family in FAMILIES:
        assert family in printed
    assert results["checkpoints"] == {}
    overall = results["real"]["summary"]["overall"]
    assert overall["n"] == 2 * len(FAMILIES) and overall["colour"] >= 0.9 and overall["motion"] >= 0.9
    saved = json.loads(out_json.read_text())
    assert saved["split"] == "train" and "train pairs" in printed
    assert saved["real"]["summary"]["overall"]["n"] == overall["n"]
    assert len(saved["real"]["rows"]) == overall["n"]
    sheet = cv2.imread(str(tmp_path / "frames" / "real.png"))
    assert sheet is not None and sheet.shape[0] >= len(FAMILIES) * 32 * 4


def test_bench_script_one_family_reproduces_its_rows_of_the_full_run(tiny_student_dir, capsys):
    bench = load_bench("caption_conformance")
    # one video per batch: on some CPUs a batch's size changes the few-step sampler's rounding by a grey level
    common = ["--checkpoint", str(tiny_student_dir), "--per-family", "1", "--seed", "3", "--batch", "1"]
    full = bench.main(common)["checkpoints"][str(tiny_student_dir)]["rows"]
    alone = bench.main([*common, "--family", "static", "--family", "scale"])["checkpoints"][str(tiny_student_dir)]
    capsys.readouterr()
    assert [r["family"] for r in alone["rows"]] == ["scale", "static"]
    # same prompts, same sampling seeds: the very same videos, so the same measures
    assert alone["rows"] == [r for r in full if r["family"] in ("scale", "static")]


def test_bench_script_from_noise_ends_are_generation_and_round_trip(tiny_pipeline_dir, capsys):
    bench = load_bench("caption_conformance")
    ckpt = str(tiny_pipeline_dir)
    args = ["--checkpoint", ckpt, "--per-family", "1", "--seed", "2", "--family", "static", "--family", "translate"]
    runs = bench.main([*args, "--through-vae", ckpt, "--from-noise", "1", "--from-noise", "0"])["checkpoints"]
    capsys.readouterr()
    # sigma 1 re-noises the clip into the very noise the plain generation starts from; sigma 0 runs no step
    assert runs[f"{ckpt} from sigma 1"]["rows"] == runs[ckpt]["rows"]
    assert runs[f"{ckpt} from sigma 0"]["rows"] == runs[f"{ckpt} VAE round trip"]["rows"]
    assert runs[f"{ckpt} from sigma 0"]["sampling"]["steps"] == 0
    assert runs[f"{ckpt} from sigma 0"]["rows"] != runs[ckpt]["rows"]  # the rows tell the two videos apart


def test_bench_script_latent_noise_and_bad_levels(tiny_pipeline_dir, tiny_student_dir):
    bench = load_bench("caption_conformance")
    clips = [p["video"] for p in conformance_prompts(1, seed=0)[:2]]
    clean, _ = bench._reconstruct(str(tiny_pipeline_dir), clips, batch=2)
    noisy, _ = bench._reconstruct(str(tiny_pipeline_dir), clips, batch=2, latent_noise=0.5, seed=1)
    again, _ = bench._reconstruct(str(tiny_pipeline_dir), clips, batch=2, latent_noise=0.5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(noisy, again))
    assert not any(np.array_equal(a, b) for a, b in zip(clean, noisy))
    with pytest.raises(SystemExit, match="few-step"):
        bench.main(["--checkpoint", str(tiny_student_dir), "--per-family", "1", "--from-noise", "0.5"])
    for bad in (["--from-noise", "1.5"], ["--latent-noise", "-1"]):
        with pytest.raises(SystemExit):
            bench.main(["--real-only", "--per-family", "1", *bad])


def test_bench_script_frames_sets_real_and_generated_length(tiny_pipeline_dir, capsys):
    bench = load_bench("caption_conformance")
    ckpt = str(tiny_pipeline_dir)
    results = bench.main(["--checkpoint", ckpt, "--per-family", "1", "--family", "translate", "--frames", "9"])
    capsys.readouterr()
    assert results["frames"] == 9 and results["checkpoints"][ckpt]["rows"]
    prompts = conformance_prompts(1, seed=0, frames=9)[:1]
    assert prompts[0]["video"].shape[0] == 9
    videos, _ = bench._generate(ckpt, prompts, [0], batch=1, frames=9)  # not the checkpoint's own 17 frames
    assert videos[0].shape[0] == 9
    args = ["--checkpoint", ckpt, "--per-family", "1", "--family", "translate"]
    with pytest.raises(SystemExit, match="--frames 10: .*num_frames"):  # a length the VAE cannot code
        bench.main([*args, "--frames", "10"])
    with pytest.raises(SystemExit):
        bench.main([*args, "--frames", "1"])
    assert "--frames must be >= 2" in capsys.readouterr().err
