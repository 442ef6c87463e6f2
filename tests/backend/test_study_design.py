"""The pure parts of the human study: design (items, gold, sides), assignment policy, results and exports.

python -m pytest tests/backend/test_study_design.py -q
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import pickle

import numpy as np
import pytest
from scipy import stats

from evaluator.study import assignment as policy
from evaluator.study import design, export
from evaluator.study.design import DesignError, VideoRef

MODELS = ("alpha", "beta", "gamma")
PROMPTS = ("a red square moves left", "a blue ball bounces")


def refs(models=MODELS, prompts=PROMPTS, seeds=(0, 1)) -> list[VideoRef]:
    return [VideoRef(m, p, s, f"{m}|{p}|{s}") for m in models for p in prompts for s in seeds]


# --- configuration -----------------------------------------------------------------------------------------------


def test_default_config_is_the_mogan_pairwise_study():
    cfg = design.validate_config({})
    assert cfg["mode"] == "pairwise" and cfg["k"] == 5
    assert [q["id"] for q in cfg["questions"]] == ["visual_quality", "motion_quality", "text_alignment"]
    assert cfg["gold"]["count"] == 0 and cfg["gold_every"] is None
    assert cfg["min_watch_fraction"] == 0.97 and cfg["items_per_annotator"] is None
    json.dumps(cfg)  # stored as JSON


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"k": 0}, "k"),
        ({"k": 51}, "k"),
        ({"mode": "ranking"}, "mode"),
        ({"bogus": 1}, "bogus"),
        ({"gold": {"count": 2}, "mode": "likert"}, "gold.count"),
        ({"gold": {"distortion": "blur"}}, "gold.distortion"),
        ({"time_limit_s": 1}, "time_limit_s"),
        ({"questions": ["nope"]}, "questions[0]"),
        ({"questions": [{"id": "Bad Id"}]}, "questions[0].id"),
        ({"models": ["a", "a"]}, "models"),
        ({"models": ["gold:x", "b"]}, "models"),
        ({"pairs": [["a", "a"]]}, "pairs[0]"),
        ({"gold": {"count": 1, "expect": ["nope"]}}, "gold.expect"),
        ({"k": 2.5}, "k"),
        ({"k": True}, "k"),
    ],
)
def test_bad_config_names_the_field(raw, field):
    with pytest.raises(DesignError) as err:
        design.validate_config(raw)
    assert err.value.field == field and str(err.value).startswith(f"{field}:")


@pytest.mark.parametrize(
    "raw, field, words, limit",
    [
        ({"k": 51}, "k", "must be in [1, 50] (got 51)", 50),
        ({"gold": {"max_frac": 0.01}}, "gold.max_frac", "must be in [0.05, 1.0] (got 0.01)", 0.05),
        ({"k": 2.5}, "k", "must be an integer in [1, 50]", None),
        ({"min_watch_fraction": float("nan")}, "min_watch_fraction", "must be a number in [0.5, 1.0]", None),
        ({"instructions": "x" * 5001}, "instructions", "0-5000 character(s)", 5000),
        ({"questions": ["motion_quality"] * 11}, "questions", "1-10 item(s)", 10),
        ({"mode": "ranking"}, "mode", "'pairwise' or 'likert'", None),
        ({"gold": {"source": "web"}}, "gold.source", "'study' or 'synthetic'", None),
        ({"gold": {"counts": 2}}, "gold.counts", "unknown option; allowed: ['count', 'distortion',", None),
        ({"models": ["a", "b"], "pairs": [["a", "c"]]}, "pairs[0]", "outside models", None),
    ],
)
def test_bad_config_names_the_limit(raw, field, words, limit):
    with pytest.raises(DesignError) as err:
        design.validate_config(raw)
    assert err.value.field == field and words in str(err.value) and err.value.limit == limit
    again = pickle.loads(pickle.dumps(err.value))
    assert (type(again), str(again), again.field, again.limit) == (DesignError, str(err.value), field, limit)


def test_config_takes_whole_floats_and_tuples_but_no_strings():
    cfg = design.validate_config({"k": 3.0, "pairs": [("alpha", "beta")], "models": ("alpha", "beta")})
    assert cfg["k"] == 3 and cfg["pairs"] == [["alpha", "beta"]] and cfg["models"] == ["alpha", "beta"]
    with pytest.raises(DesignError, match="k: must be an integer"):
        design.validate_config({"k": "3"})
    assert design.validate_config({"time_limit_s": 60})["assignment_timeout_s"] == 1800
    assert design.validate_config({"gold": None})["gold"]["count"] == 0


def test_config_keeps_custom_questions_and_gold_defaults():
    cfg = design.validate_config(
        {
            "questions": ["motion_quality", {"id": "fun", "label": "Fun", "prompt": "More fun?"}],
            "gold": {"count": 3},
            "time_limit_s": 3600,
            "assignment_timeout_s": 60,
        }
    )
    assert [q["id"] for q in cfg["questions"]] == ["motion_quality", "fun"]
    assert cfg["questions"][1]["prompt"] == "More fun?"
    assert cfg["gold"] == {
        "count": 3,
        "distortion": "shuffle",
        "max_frac": 0.5,
        "source": "study",
        "expect": ["motion_quality"],
    }
    assert cfg["gold_every"] == 5
    assert cfg["assignment_timeout_s"] == 3600  # never release an item before its time limit


# --- items -------------------------------------------------------------------------------------------------------


def test_pairwise_items_pair_every_model_pair_on_the_same_prompt_and_seed():
    cfg = design.validate_config({"seed": 3})
    items = design.build_items(refs(), cfg)
    # 3 pairs x (2 prompts x 2 seeds)
    assert len(items) == 12
    assert sorted(it.position for it in items) == list(range(12))
    pairs = {}
    for it in items:
        a, b = it.videos
        assert a.prompt == b.prompt == it.prompt and a.seed == b.seed == it.seed
        pairs.setdefault(it.systems, 0)
        pairs[it.systems] += 1
    assert pairs == {("alpha", "beta"): 4, ("alpha", "gamma"): 4, ("beta", "gamma"): 4}
    again = design.build_items(refs(), cfg)
    assert [(i.position, i.systems, i.prompt, i.seed) for i in again] == [
        (i.position, i.systems, i.prompt, i.seed) for i in items
    ]
    other = design.build_items(refs(), design.validate_config({"seed": 4}))
    assert [i.position for i in other] != [i.position for i in items]


def test_items_skip_prompts_a_model_lacks_and_respect_models_pairs_and_max_items():
    videos = [v for v in refs() if not (v.model == "gamma" and v.seed == 1)]
    items = design.build_items(videos, design.validate_config({"models": ["gamma", "alpha"]}))
    assert {it.systems for it in items} == {("gamma", "alpha")} and len(items) == 2  # seed 1 has no gamma
    items = design.build_items(refs(), design.validate_config({"pairs": [["beta", "alpha"]]}))
    assert {it.systems for it in items} == {("beta", "alpha")} and len(items) == 4
    items = design.build_items(refs(), design.validate_config({"max_items": 5}))
    assert len(items) == 5 and sorted(i.position for i in items) == list(range(5))
    with pytest.raises(DesignError, match="models: no videos for model"):
        design.build_items(refs(), design.validate_config({"models": ["alpha", "zeta"]}))
    with pytest.raises(DesignError, match="at least 2 models"):
        design.build_items(refs(models=("alpha",)), design.validate_config({}))
    with pytest.raises(DesignError, match="duplicate video"):
        design.build_items(refs() + refs()[:1], design.validate_config({}))


def test_likert_items_are_single_videos():
    items = design.build_items(refs(), design.validate_config({"mode": "likert"}))
    assert len(items) == 12 and all(len(it.videos) == 1 for it in items)
    assert {it.videos[0] for it in items} == set(refs())


def test_benchmark_videos_follow_the_runner_layout(tmp_path):
    from evaluator.benchmark.runner import video_path

    records = [
        {"model": "alpha", "prompt": "p one", "seed": 0, "metric": "m"},
        {"model": "alpha", "prompt": "p one", "seed": 0, "metric": "n"},
        {"model": "beta", "prompt": "p one", "seed": 0, "metric": "m"},
        {"model": "beta", "prompt": "(all prompts)", "seed": 0, "metric": "visual_swd"},
        {"model": "gamma", "prompt": "p two", "seed": 1, "metric": "m"},
    ]  # its file is missing
    for m in ("alpha", "beta"):
        p = video_path(tmp_path, m, "p one", 0)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    got = design.benchmark_videos(design.read_records(tmp_path), tmp_path)
    assert [(v.model, v.prompt, v.seed) for v in got] == [("alpha", "p one", 0), ("beta", "p one", 0)]
    assert got[0].key == str(video_path(tmp_path, "alpha", "p one", 0))


def test_gold_sources_are_distinct_and_spread_over_models():
    picked = design.pick_gold_sources(refs(), 6, seed=1)
    assert len(set(picked)) == 6
    assert {v.model for v in picked} == set(MODELS)
    assert [v.model for v in picked].count("alpha") == 2
    with pytest.raises(DesignError, match="gold.count"):
        design.pick_gold_sources(refs(), 13)


def test_gold_videos_are_reversed_or_block_shuffled_copies():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8)
    rev = design.make_gold_video(frames, "reverse", seed=0)
    assert np.array_equal(rev, frames[::-1])
    shuf = design.make_gold_video(frames, "shuffle", seed=0, max_frac=0.5)
    assert not np.array_equal(shuf, frames)
    order = [int(np.flatnonzero((frames == f).all(axis=(1, 2, 3)))[0]) for f in shuf]
    assert sorted(order) == list(range(12))  # the same frames, reordered
    changed = [i for i, o in enumerate(order) if o != i]
    assert changed and max(changed) - min(changed) < 6  # one block of at most floor(0.5 * 12) frames
    assert np.array_equal(design.make_gold_video(frames, "shuffle", seed=0, max_frac=0.5), shuf)  # seeded
    static = np.zeros((12, 4, 4, 3), np.uint8)
    with pytest.raises(DesignError, match="static or palindromic"):
        design.make_gold_video(static, "reverse", seed=0)


def test_gold_item_expects_the_original_to_win():
    src = VideoRef("alpha", "p", 0, "vid_a")
    it = design.gold_item(7, src, "vid_b", "reverse", ["motion_quality"])
    assert it.systems == (design.GOLD_ORIGINAL, "gold:reverse") and it.position == 7
    assert it.videos[0].key == "vid_a" and it.videos[1].key == "vid_b"
    assert it.gold["expect"] == {"motion_quality": design.GOLD_ORIGINAL}


def test_side_swap_is_a_reproducible_fair_coin():
    flips = [design.side_swap(0, f"ann_{i}", "item_x") for i in range(2000)]
    assert flips == [design.side_swap(0, f"ann_{i}", "item_x") for i in range(2000)]
    assert 900 < sum(flips) < 1100  # binomial(2000, 1/2): 5 sigma is +-112


# --- assignment policy ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 6, 7, 12, 100])
def test_annotator_order_is_a_permutation(n):
    for a in ("ann_1", "ann_2", "ann_xyz"):
        mul, add = policy.annotator_order(a, n)
        assert sorted((p * mul + add) % n for p in range(n)) == list(range(n))
    orders = {
        tuple((p * m + a) % 12 for p in range(12))
        for m, a in (policy.annotator_order(f"ann_{i}", 12) for i in range(20))
    }
    assert len(orders) > 3  # annotators do not all walk the items in one order


def test_slots_gold_turns_and_release_times():
    assert policy.free_slot([], 3) == 0 and policy.free_slot([0, 2], 3) == 1 and policy.free_slot([0, 1, 2], 3) is None
    assert policy.free_slot([None, 1], 2) == 0
    assert [policy.gold_turn(n, 3) for n in range(7)] == [False, False, True, False, False, True, False]
    assert not any(policy.gold_turn(n, None) for n in range(5))
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    now = t0 + dt.timedelta(seconds=100)
    assert policy.expiry(now, t0, 600, None) == now + dt.timedelta(seconds=600)
    assert policy.expiry(now, t0, 600, 300) == t0 + dt.timedelta(seconds=305)  # capped at the time limit + grace
    assert not policy.over_time_limit(t0 + dt.timedelta(seconds=304), t0, 300)
    assert policy.over_time_limit(t0 + dt.timedelta(seconds=306), t0, 300)
    assert not policy.over_time_limit(t0 + dt.timedelta(days=9), t0, None)


def _events(*spec):
    return [{"event": e, "side": s, "video_time_s": t} for e, s, t in spec]


def test_full_watch_needs_play_and_end_on_every_side_and_enough_wall_time():
    d = {"left": 2.0, "right": 2.0}
    full = _events(("play", "left", 0.0), ("play", "right", 0.0), ("ended", "left", 2.0), ("ended", "right", 2.0))
    assert policy.watch_problem(full, d, elapsed_s=2.5) is None
    assert policy.watch_problem(full, d, elapsed_s=1.95) is None  # 0.97 * 2 = 1.94
    assert "less than the 2.00 s" in policy.watch_problem(full, d, elapsed_s=1.9)
    assert "right video was never played" in policy.watch_problem(full[:1] + full[2:3], d, 3.0)
    assert "no 'ended' event" in policy.watch_problem(full[:3], d, 3.0)
    short = full[:3] + _events(("ended", "right", 1.5))
    assert "it ended at 1.50 s" in policy.watch_problem(short, d, 3.0)
    assert policy.watch_problem(full[:3] + _events(("ended", "right", 1.94)), d, 3.0) is None
    # the page's own idea of the duration does not matter: the server's does
    assert policy.watch_problem(full, {"left": 2.0, "right": 4.0}, 5.0).startswith("the right video was not")
    assert policy.watch_problem(_events(("play", "left", 0), ("ended", "left", 1.0)), {"left": 1.0}, 1.0) is None
    assert policy.watch_problem(full, {}, 3.0) == "no videos to watch"


# --- results ---------------------------------------------------------------------------------------------------------


def _row(item, ann, left, right, q, answer, gold=False, swap=False):
    a, b = (right, left) if swap else (left, right)
    choice = export.system_choice(answer, swap) if answer in ("left", "tie", "right") else str(answer)
    return {
        "response_id": f"r{item}{ann}{q}",
        "study_id": "s",
        "item_id": item,
        "annotator_id": ann,
        "assignment_id": f"a{item}{ann}",
        "question": q,
        "is_gold": gold,
        "prompt": "p",
        "seed": 0,
        "system_a": a,
        "system_b": b,
        "swap_sides": swap,
        "model_left": left,
        "model_right": right,
        "choice": choice,
        "answer": answer,
        "duration_ms": 1000,
        "created_at": "2026-01-01T00:00:00+00:00",
    }


def test_system_choice_and_side_answer_are_inverse():
    for swap in (False, True):
        for side in ("left", "tie", "right"):
            assert export.side_answer(export.system_choice(side, swap), swap) == side
    assert export.system_choice("left", False) == "a" and export.system_choice("left", True) == "b"
    with pytest.raises(ValueError):
        export.system_choice("up", False)


def test_pairwise_results_match_hand_computed_values_and_scipy():
    # ours vs base on "motion": ours preferred 6 times, 2 ties, base preferred twice, over 5 items x 2 annotators,
    # with sides swapped on half of them
    answers = ["ours", "ours", "ours", "tie", "ours", "base", "ours", "tie", "base", "ours"]
    rows = []
    for n, pref in enumerate(answers):
        item, ann = f"i{n // 2}", f"ann{n % 2}"
        swap = n % 2 == 1
        left, right = ("base", "ours") if swap else ("ours", "base")
        side = "tie" if pref == "tie" else ("left" if pref == left else "right")
        rows.append(_row(item, ann, left, right, "motion", side, swap=swap))
    res = export.study_results(rows, mode="pairwise", questions=["motion"], n_boot=200)
    (r,) = res["pairwise"]
    assert (r["model_a"], r["model_b"]) == ("base", "ours")  # sorted names; "win" = base preferred
    assert r["counts"] == {"win": 2, "tie": 2, "lose": 6} and r["n"] == 10
    assert r["rates"] == pytest.approx({"win": 0.2, "tie": 0.2, "lose": 0.6})
    # Wilson 95% interval for 6 of 10 by hand: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z = stats.norm.ppf(0.975)
    p, n = 0.6, 10
    centre, half = (
        (p + z * z / (2 * n)) / (1 + z * z / n),
        z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n),
    )
    assert r["intervals"]["lose"] == pytest.approx([centre - half, centre + half])
    assert r["sign_test_p"] == pytest.approx(stats.binomtest(2, 8, 0.5).pvalue)
    assert r["n_items"] == 5 and r["n_annotators"] == 2
    assert set(r["bootstrap_intervals"]) == {"win", "tie", "lose"}
    assert res["ranking"] == {}  # two models: no Bradley-Terry ranking
    assert res["n_used"] == 10 and res["n_items"] == 5


def test_gold_failures_are_flagged_and_excluded():
    G = design.GOLD_ORIGINAL
    rows = [
        _row("g1", "good", G, "gold:shuffle", "motion", "left"),
        _row("g1", "bad", "gold:shuffle", G, "motion", "left", gold=True, swap=True),  # picked the distorted copy
        _row("i1", "good", "a", "b", "motion", "left"),
        _row("i1", "bad", "a", "b", "motion", "right"),
        _row("i2", "good", "b", "a", "motion", "right"),
        _row("i2", "bad", "b", "a", "motion", "left"),
    ]
    rows[0]["is_gold"] = True
    expect = {"g1": {"motion": G}}
    res = export.study_results(rows, mode="pairwise", questions=["motion"], gold_expect=expect, n_boot=0)
    assert res["gold"]["good"] == {"n_gold": 1, "n_correct": 1, "accuracy": 1.0, "flagged": False}
    assert res["gold"]["bad"]["flagged"] and res["flagged"] == ["bad"] == res["excluded_annotators"]
    (r,) = res["pairwise"]
    assert r["counts"] == {"win": 2, "tie": 0, "lose": 0}  # only "good", and no gold item in the figures
    kept = export.study_results(
        rows, mode="pairwise", questions=["motion"], gold_expect=expect, n_boot=0, exclude_flagged=False
    )
    assert kept["pairwise"][0]["counts"] == {"win": 2, "tie": 0, "lose": 2} and kept["excluded_annotators"] == []


def test_three_models_get_a_bradley_terry_ranking():
    rows = []
    n = 0
    for winner, loser, times in (("c", "b", 6), ("b", "a", 6), ("c", "a", 8), ("a", "c", 1)):
        for _ in range(times):
            rows.append(_row(f"i{n}", "ann", winner, loser, "motion", "left"))
            n += 1
    res = export.study_results(rows, mode="pairwise", questions=["motion"], n_boot=300)
    ranking = res["ranking"]["motion"]
    assert [r["model"] for r in ranking] == ["c", "b", "a"]
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    assert all(r["low"] <= r["strength"] <= r["high"] for r in ranking)
    assert sum(r["strength"] for r in ranking) == pytest.approx(0.0, abs=1e-9)
    assert ranking[0]["n_comparisons"] == 21


def test_likert_means_and_intervals():
    ratings = {"a": [4, 5, 3, 4], "b": [2, 1, 2, 3]}
    rows = []
    for model, rs in ratings.items():
        for i, x in enumerate(rs):
            rows.append({**_row(f"{model}{i // 2}", f"ann{i % 2}", model, None, "motion", x), "choice": str(x)})
    res = export.study_results(rows, mode="likert", questions=["motion"])
    by = {r["model"]: r for r in res["likert"]}
    assert by["a"]["mean"] == 4.0 and by["b"]["mean"] == 2.0 and by["a"]["n"] == 4
    half = stats.t.ppf(0.975, 3) * np.std([4, 5, 3, 4], ddof=1) / 2
    assert [by["a"]["ci_low"], by["a"]["ci_high"]] == pytest.approx([4 - half, 4 + half])
    assert "motion" in res["likert_agreement"]


def test_exports_are_csv_and_strict_json():
    rows = [_row("i1", "x", "a", "b", "motion", "left"), _row("i1", "y", "b", "a", "motion", "right", swap=True)]
    res = export.study_results(rows, mode="pairwise", questions=["motion"], n_boot=0)
    assert res["pairwise"][0]["fleiss_kappa"] is None  # NaN (every answer in one category) -> null
    text = export.to_json(res)
    assert json.loads(text)["n_responses"] == 2 and "NaN" not in text
    table = list(csv.DictReader(io.StringIO(export.results_csv(res))))
    assert len(table) == 1 and table[0]["kind"] == "pairwise" and float(table[0]["win"]) == 1.0
    assert table[0]["fleiss_kappa"] == ""
    assert list(table[0]) == list(export.RESULT_COLUMNS)
    raw = list(csv.DictReader(io.StringIO(export.responses_csv(rows))))
    assert [r["answer"] for r in raw] == ["left", "right"] and list(raw[0]) == list(export.RESPONSE_COLUMNS)


def test_figure_is_drawn_for_pairwise_results(tmp_path):
    rows = [_row("i1", "x", "a", "b", q, "left") for q in ("visual", "motion")]
    res = export.study_results(rows, mode="pairwise", questions=["visual", "motion"], n_boot=0)
    path = export.results_figure(res, tmp_path / "fig.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert export.results_figure({"pairwise": []}, tmp_path / "none.png") is None


def test_probe_video_reads_the_container_like_a_decode(tmp_path):
    from backend.crud.studies import probe_video
    from trainer.data.video_io import VideoReadError, read_video, write_video

    frames = np.random.default_rng(0).integers(0, 255, (9, 15, 20, 3), dtype=np.uint8)
    path = write_video(tmp_path / "v.mp4", frames, fps=8, quality="web")
    decoded, fps = read_video(path)
    assert probe_video(path) == (9, 16, 20, 8.0) == (*decoded.shape[:3], fps)  # web quality pads to even sizes
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoReadError, match="bad.mp4"):
        probe_video(tmp_path / "bad.mp4")
