"""Tests of evaluator.study.statistics: hand-computed values plus cross-checks against statsmodels / scipy.

Run: python -m pytest tests/evaluator/study -q
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

from evaluator.study.statistics import (
    bootstrap_rate_intervals,
    bradley_terry,
    bradley_terry_bootstrap,
    filter_responses,
    flagged_annotators,
    fleiss_kappa,
    gold_check,
    krippendorff_alpha_nominal,
    likert_summary,
    pairwise_report,
    sign_test,
    wilson_interval,
    win_tie_lose,
)

NAN = float("nan")


# ---------------------------------------------------------------------------------------------------- Wilson
def test_wilson_8_of_10_by_hand():
    # z = 1.959964, z^2/n = 0.3841459; center = (0.8 + 0.1920729) / 1.3841459 = 0.7167401;
    # half = 1.959964 / 1.3841459 * sqrt(0.016 + 0.0096036) = 1.4160098 * 0.1600114 = 0.2265777
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.7167401 - 0.2265777, abs=2e-6)
    assert high == pytest.approx(0.7167401 + 0.2265777, abs=2e-6)
    assert (low, high) == pytest.approx((0.4901625, 0.9433178), abs=1e-6)


@pytest.mark.parametrize(
    "k,n,conf", [(0, 1, 0.95), (1, 1, 0.95), (3, 7, 0.9), (50, 100, 0.95), (0, 25, 0.99), (148, 740, 0.95)]
)
def test_wilson_matches_statsmodels(k, n, conf):
    expected = proportion_confint(k, n, alpha=1 - conf, method="wilson")
    assert wilson_interval(k, n, conf) == pytest.approx(expected, abs=1e-12)


def test_wilson_endpoints_exact_at_extremes():
    assert wilson_interval(0, 12)[0] == 0.0
    assert wilson_interval(12, 12)[1] == 1.0
    _low, high = wilson_interval(0, 12)
    assert 0.0 < high < 0.3


@pytest.mark.parametrize(
    "args,match",
    [
        ((1, 0), "n must be >= 1"),
        ((5, 4), "successes"),
        ((-1, 4), "successes must be >= 0"),
        ((1.5, 4), "successes must be an integer"),
        ((1, 4, 1.0), "confidence"),
    ],
)
def test_wilson_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        wilson_interval(*args)


# ---------------------------------------------------------------------------------------------- win/tie/lose
def test_win_tie_lose_counts_rates_intervals():
    answers = ["A"] * 8 + ["tie"] * 1 + ["B"] * 1
    out = win_tie_lose(answers)
    assert out["n"] == 10
    assert out["counts"] == {"win": 8, "tie": 1, "lose": 1}
    assert out["rates"] == pytest.approx({"win": 0.8, "tie": 0.1, "lose": 0.1})
    assert out["intervals"]["win"] == pytest.approx((0.4901625, 0.9433178), abs=1e-6)
    assert out["intervals"]["tie"] == pytest.approx(proportion_confint(1, 10, method="wilson"), abs=1e-12)


def test_win_tie_lose_bad_input():
    with pytest.raises(ValueError, match="empty"):
        win_tie_lose([])
    with pytest.raises(ValueError, match=r"answers\[1\] = 'left'"):
        win_tie_lose(["A", "left"])


def test_bootstrap_identical_items_give_exact_rates():
    # Every item has the same answer mix, so every resample has the same pooled rates.
    items = {i: ["A", "A", "tie", "B", "A"] for i in range(10)}
    out = bootstrap_rate_intervals(items, n_boot=200, seed=1)
    assert out["win"] == pytest.approx((0.6, 0.6))
    assert out["tie"] == pytest.approx((0.2, 0.2))
    assert out["lose"] == pytest.approx((0.2, 0.2))


def test_bootstrap_wider_than_wilson_when_annotators_agree_within_items():
    # 20 items x 5 annotators who always agree: effectively 20 independent units, not 100.
    items = [["A"] * 5 if i < 12 else ["B"] * 5 for i in range(20)]
    boot = bootstrap_rate_intervals(items, n_boot=2000, seed=0)
    wil = win_tie_lose([a for item in items for a in item])["intervals"]["win"]
    assert boot["win"][0] <= 0.6 <= boot["win"][1]
    assert (boot["win"][1] - boot["win"][0]) > 1.5 * (wil[1] - wil[0])
    # Per-item (cluster) bootstrap of a 12/20 proportion: sd ~ sqrt(.6*.4/20) = 0.11 -> width ~ 0.43
    assert 0.3 < boot["win"][1] - boot["win"][0] < 0.55
    assert boot == bootstrap_rate_intervals(items, n_boot=2000, seed=0)  # seeded => reproducible
    assert boot["tie"] == (0.0, 0.0)


def test_bootstrap_bad_input():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_rate_intervals({}, n_boot=10)
    with pytest.raises(ValueError, match="no answers"):
        bootstrap_rate_intervals({"x": []}, n_boot=10)
    with pytest.raises(ValueError, match="'C'"):
        bootstrap_rate_intervals({"x": ["A", "C"]}, n_boot=10)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_rate_intervals({"x": ["A"]}, n_boot=0)


# ---------------------------------------------------------------------------------------------- sign test
def test_sign_test_by_hand():
    # 9 wins, 1 loss: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert sign_test(9, 1) == pytest.approx(22 / 1024, rel=1e-12)
    assert sign_test(1, 9) == pytest.approx(22 / 1024, rel=1e-12)
    assert sign_test(5, 5) == 1.0
    assert sign_test(0, 0) == 1.0


@pytest.mark.parametrize("w,l", [(0, 1), (3, 5), (7, 2), (60, 40), (120, 90), (0, 30)])
def test_sign_test_matches_scipy(w, l):
    assert sign_test(w, l) == pytest.approx(stats.binomtest(w, w + l, 0.5).pvalue, rel=1e-9)


def test_sign_test_bad_input():
    with pytest.raises(ValueError, match="losses must be >= 0"):
        sign_test(3, -1)


# ---------------------------------------------------------------------------------------------- Fleiss
def test_fleiss_by_hand():
    # P_i = [1, 1/3, 1], mean 7/9; p_j = [5/9, 4/9], P_e = 41/81; kappa = (63 - 41) / (81 - 41) = 0.55
    assert fleiss_kappa([[3, 0], [2, 1], [0, 3]]) == pytest.approx(0.55, abs=1e-12)
    assert fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0)
    assert fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)


def test_fleiss_wikipedia_example():
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    assert fleiss_kappa(table) == pytest.approx(sm_fleiss_kappa(np.array(table)), abs=1e-12)


def test_fleiss_matches_statsmodels_random():
    rng = np.random.default_rng(3)
    for _ in range(5):
        raters = rng.integers(0, 3, size=(30, 5))  # 30 items, 5 annotators, 3 categories
        table = np.stack([np.bincount(r, minlength=3) for r in raters])
        assert fleiss_kappa(table) == pytest.approx(sm_fleiss_kappa(table), abs=1e-12)


def test_fleiss_single_category_is_nan():
    assert math.isnan(fleiss_kappa([[3, 0, 0], [3, 0, 0]]))


def test_fleiss_single_category_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(fleiss_kappa([[0, 4], [0, 4], [0, 4]]))


@pytest.mark.parametrize(
    "table,match",
    [
        ([], "2-D"),
        (np.zeros((0, 3)), "empty"),
        ([[2, -1], [1, 0]], "negative"),
        ([[2, 1], [1, 1]], "same number of raters"),
        ([[1, 0], [0, 1]], ">= 2 ratings"),
    ],
)
def test_fleiss_bad_input(table, match):
    with pytest.raises(ValueError, match=match):
        fleiss_kappa(table)


# ---------------------------------------------------------------------------------------------- Krippendorff
def test_krippendorff_small_hand_example():
    # Units (0,0), (0,1), (1,1), (1,1): o = [[2,1],[1,4]], n_0 = 3, n_1 = 5, n = 8
    # alpha = 1 - (n - 1) * (o_01 + o_10) / (2 n_0 n_1) = 1 - 7 * 2 / 30 = 16/30
    assert krippendorff_alpha_nominal([[0, 0, 1, 1], [0, 1, 1, 1]]) == pytest.approx(16 / 30, abs=1e-12)


def test_krippendorff_ignores_unpairable_units_and_codes():
    base = krippendorff_alpha_nominal([[0, 0, 1, 1], [0, 1, 1, 1]])
    # An extra unit with one value is not pairable; labels 7/9 instead of 0/1 must not matter.
    assert krippendorff_alpha_nominal([[7, 7, 9, 9, 7], [7, 9, 9, 9, NAN]]) == pytest.approx(base, abs=1e-12)


def test_krippendorff_2011_reliability_data():
    # Krippendorff (2011) "Computing Krippendorff's alpha-reliability", 4 observers x 12 units, nominal
    # alpha reported as 0.743. Coincidences: n = 40, sum_{c!=k} o_ck = 8 (rounded), so
    # alpha = 1 - 39 * 8 / 1212 = 0.7426 (exact from fractional o_ck: 0.74342).
    d = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
        [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
    ]
    assert krippendorff_alpha_nominal(d) == pytest.approx(0.743, abs=1e-3)


def test_krippendorff_agreement_extremes_and_bad_input():
    assert krippendorff_alpha_nominal([[0, 1, 2], [0, 1, 2]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha_nominal([[1, 1], [1, 1]]))
    with pytest.raises(ValueError, match="all missing"):
        krippendorff_alpha_nominal([[NAN, NAN], [NAN, NAN]])
    with pytest.raises(ValueError, match="2-D"):
        krippendorff_alpha_nominal([1, 2, 3])
    with pytest.raises(ValueError, match="pairable"):
        krippendorff_alpha_nominal([[1, NAN], [NAN, 2]])


def test_krippendorff_nan_when_only_unpairable_values_differ():
    # The 2 sits in a unit with one value; every pairable value is 1, so expected disagreement is 0.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(krippendorff_alpha_nominal([[1, 1, 2], [1, 1, NAN]]))


# ---------------------------------------------------------------------------------------------- Bradley-Terry
def _simulate(strengths: np.ndarray, n: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    k = len(strengths)
    out = []
    for _ in range(n):
        i, j = rng.choice(k, size=2, replace=False)
        p_i = 1.0 / (1.0 + np.exp(strengths[j] - strengths[i]))
        out.append((int(i), int(j)) if rng.random() < p_i else (int(j), int(i)))
    return out


def test_bradley_terry_two_models_closed_form():
    # 30 wins vs 10: s_0 - s_1 = log(3), mean zero.
    s = bradley_terry([(0, 1)] * 30 + [(1, 0)] * 10, 2, prior=0.0)
    assert s == pytest.approx([math.log(3) / 2, -math.log(3) / 2], abs=1e-8)
    # Ties count half a win each way: 2 wins + 2 ties -> 3 : 1.
    s = bradley_terry([(0, 1), (0, 1)], 2, ties=[(0, 1), (1, 0)], prior=0.0)
    assert s[0] - s[1] == pytest.approx(math.log(3), abs=1e-8)
    # The tie prior shrinks towards 0: 30+0.5 vs 10+0.5.
    s = bradley_terry([(0, 1)] * 30 + [(1, 0)] * 10, 2, prior=1.0)
    assert s[0] - s[1] == pytest.approx(math.log(30.5 / 10.5), abs=1e-8)


def test_bradley_terry_mle_score_equations():
    # At the MLE each model's expected wins equal its observed wins (checked independently of the algorithm).
    comps = [(0, 1)] * 7 + [(1, 0)] * 3 + [(1, 2)] * 6 + [(2, 1)] * 4 + [(0, 2)] * 5 + [(2, 0)] * 2
    s = bradley_terry(comps, 3, prior=0.0)
    wins = np.zeros((3, 3))
    for w, l in comps:
        wins[w, l] += 1
    games = wins + wins.T
    expected = (games / (1.0 + np.exp(s[None, :] - s[:, None]))).sum(axis=1)
    assert expected == pytest.approx(wins.sum(axis=1), abs=1e-6)
    assert s.mean() == pytest.approx(0.0, abs=1e-12)
    assert list(np.argsort(-s)) == [0, 1, 2]


def test_bradley_terry_lopsided_data_reaches_the_mle():
    # Near-separated data (100000 : 1 and 50000 : 3): the score equations must still hold at the fit.
    comps = [(0, 1)] * 100_000 + [(1, 0)] + [(1, 2)] * 50_000 + [(2, 1)] * 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = bradley_terry(comps, 3, prior=0.0)
    wins = np.array([[0, 100_000, 0], [1, 0, 50_000], [0, 3, 0]], dtype=float)
    expected = ((wins + wins.T) / (1.0 + np.exp(s[None, :] - s[:, None]))).sum(axis=1)
    assert expected == pytest.approx(wins.sum(axis=1), abs=1e-6)
    # Only the pairs (0, 1) and (1, 2) meet (a chain), so each MLE gap is that pair's log-odds.
    assert s[0] - s[1] == pytest.approx(math.log(100_000), abs=1e-8)
    assert s[1] - s[2] == pytest.approx(math.log(50_000 / 3), abs=1e-8)


def test_bradley_terry_recovers_simulated_strengths():
    true = np.array([-1.0, 0.0, 0.5, 1.5])
    true -= true.mean()
    comps = _simulate(true, 3000, seed=0)
    s = bradley_terry(comps, 4)
    assert list(np.argsort(s)) == list(np.argsort(true))
    assert s == pytest.approx(true, abs=0.15)


def test_bradley_terry_bootstrap_intervals_and_ranks():
    true = np.array([-1.0, 0.0, 0.5, 1.5])
    true -= true.mean()
    comps = _simulate(true, 3000, seed=1)
    out = bradley_terry_bootstrap(comps, 4, n_boot=200, seed=0)
    assert list(out["rank"]) == [4, 3, 2, 1]
    assert np.all(out["low"] <= out["strengths"]) and np.all(out["strengths"] <= out["high"])
    assert np.all(out["low"] <= true + 0.05) and np.all(true - 0.05 <= out["high"])
    assert np.all(out["high"] - out["low"] < 0.4)
    assert list(out["rank_low"]) == [4, 3, 2, 1] and list(out["rank_high"]) == [4, 3, 2, 1]
    assert out["prob_best"][3] == pytest.approx(1.0)
    again = bradley_terry_bootstrap(comps, 4, n_boot=200, seed=0)
    assert np.array_equal(out["low"], again["low"])


def test_bradley_terry_bootstrap_overlapping_models_share_ranks():
    # Models 1 and 2 are equal: their rank intervals must both span {2, 3}.
    comps = _simulate(np.array([-1.0, 0.0, 0.0, 1.0]), 1200, seed=2)
    out = bradley_terry_bootstrap(comps, 4, n_boot=200, seed=0)
    assert out["rank_low"][1] == 2 and out["rank_high"][1] == 3
    assert out["rank_low"][2] == 2 and out["rank_high"][2] == 3


def test_bradley_terry_bad_input():
    with pytest.raises(ValueError, match="empty"):
        bradley_terry([], 3)
    with pytest.raises(ValueError, match="outside"):
        bradley_terry([(0, 3)], 3)
    with pytest.raises(ValueError, match="outside"):
        bradley_terry([(-1, 0)], 3)
    with pytest.raises(ValueError, match="itself"):
        bradley_terry([(1, 1)], 3)
    with pytest.raises(ValueError, match="n_models must be >= 2"):
        bradley_terry([(0, 1)], 1)
    with pytest.raises(ValueError, match="prior"):
        bradley_terry([(0, 1)], 2, prior=-1)
    with pytest.raises(ValueError, match="strongly connected"):
        bradley_terry([(0, 1), (0, 1)], 2, prior=0.0)


# ---------------------------------------------------------------------------------------------- Likert
def test_likert_by_hand():
    out = likert_summary([1, 2, 3, 4, 5])
    # mean 3, std sqrt(2.5) = 1.5811388, t_{4, .975} = 2.7764451 -> half = 2.7764451 * 1.5811388 / sqrt(5)
    assert out["mean"] == 3.0 and out["n"] == 5
    assert out["std"] == pytest.approx(1.5811388, abs=1e-7)
    assert out["ci"] == pytest.approx((3 - 1.9632432, 3 + 1.9632432), abs=1e-6)
    ratings = [4, 5, 3, 4, 4, 2, 5]
    ref = stats.t.interval(0.9, len(ratings) - 1, loc=np.mean(ratings), scale=stats.sem(ratings))
    assert likert_summary(ratings, confidence=0.9)["ci"] == pytest.approx(ref, abs=1e-12)


def test_likert_single_and_bad():
    single = likert_summary([4])
    assert single["mean"] == 4.0 and math.isnan(single["std"])
    with pytest.raises(ValueError, match="empty"):
        likert_summary([])
    with pytest.raises(ValueError, match="outside the scale"):
        likert_summary([1, 6])
    assert likert_summary([0, 10], scale=None)["mean"] == 5.0


def test_likert_constant_ratings_give_a_zero_width_interval():
    out = likert_summary([3, 3, 3])
    assert out["std"] == 0.0 and out["ci"] == (3.0, 3.0)


# ---------------------------------------------------------------------------------------------- records
def _rec(item, ann, left, right, answer, question="motion"):
    return {
        "item_id": item,
        "annotator_id": ann,
        "model_left": left,
        "model_right": right,
        "question": question,
        "answer": answer,
    }


def _toy_responses():
    # "dmd" sorts before "mogan": win = dmd preferred.
    return [
        _rec("i1", "a1", "mogan", "dmd", "left"),  # mogan -> B
        _rec("i1", "a2", "dmd", "mogan", "right"),  # mogan -> B
        _rec("i1", "a3", "dmd", "mogan", "tie"),  # tie
        _rec("i2", "a1", "dmd", "mogan", "left"),  # dmd -> A
        _rec("i2", "a2", "mogan", "dmd", "right"),  # dmd -> A
        _rec("i2", "a3", "mogan", "dmd", "right"),  # dmd -> A
        _rec("i3", "a1", "mogan", "dmd", "left"),  # B
        _rec("i3", "a2", "mogan", "dmd", "left"),  # B
        _rec("i3", "a3", "dmd", "mogan", "right"),  # B
        _rec("i1", "a1", "mogan", "dmd", "right", "visual"),  # dmd -> A
        _rec("i1", "a2", "dmd", "mogan", "left", "visual"),  # A
        _rec("j1", "a1", "wan", "mogan", "left"),  # pair (mogan, wan): wan -> B
        _rec("j1", "a2", "mogan", "wan", "left"),  # mogan -> A
    ]


def test_pairwise_report_maps_sides_to_models():
    rows = pairwise_report(_toy_responses())
    keys = [(r["question"], r["model_a"], r["model_b"]) for r in rows]
    assert keys == [("motion", "dmd", "mogan"), ("motion", "mogan", "wan"), ("visual", "dmd", "mogan")]
    motion = rows[0]
    assert motion["counts"] == {"win": 3, "tie": 1, "lose": 5}
    assert motion["n"] == 9 and motion["n_items"] == 3 and motion["n_annotators"] == 3
    assert motion["rates"]["lose"] == pytest.approx(5 / 9)
    assert motion["intervals"]["win"] == pytest.approx(proportion_confint(3, 9, method="wilson"), abs=1e-12)
    # sign test 3 vs 5: 2 * (1 + 8 + 28 + 56) / 256
    assert motion["sign_test_p"] == pytest.approx(186 / 256)
    # items: [0,1,2], [3,0,0], [0,0,3]: P = [1/3, 1, 1], p = [3,1,5]/9, P_e = 35/81 -> kappa = 28/46
    assert motion["fleiss_kappa"] == pytest.approx(28 / 46, abs=1e-12)
    assert motion["fleiss_kappa"] == pytest.approx(
        sm_fleiss_kappa(np.array([[0, 1, 2], [3, 0, 0], [0, 0, 3]])), abs=1e-12
    )
    assert motion["kappa_n_items"] == 3 and motion["kappa_raters"] == 3
    # annotators x items coded A=0, tie=1, B=2
    alpha = krippendorff_alpha_nominal([[2, 0, 2], [2, 0, 2], [1, 0, 2]])
    assert motion["krippendorff_alpha"] == pytest.approx(alpha, abs=1e-12)
    assert rows[1]["counts"] == {"win": 1, "tie": 0, "lose": 1}
    assert rows[2]["counts"] == {"win": 2, "tie": 0, "lose": 0}
    assert rows[2]["sign_test_p"] == pytest.approx(0.5)


def test_pairwise_report_question_order_bootstrap_and_unequal_raters():
    responses = [r for r in _toy_responses() if not (r["item_id"] == "i3" and r["annotator_id"] == "a3")]
    rows = pairwise_report(responses, questions=["visual", "motion"], n_boot=100, seed=0)
    assert [r["question"] for r in rows] == ["visual", "motion", "motion"]
    motion = rows[1]
    # i3 now has 2 ratings, i1 and i2 have 3: kappa uses the two 3-rater items.
    assert motion["kappa_n_items"] == 2 and motion["kappa_raters"] == 3
    assert motion["fleiss_kappa"] == pytest.approx(fleiss_kappa([[0, 1, 2], [3, 0, 0]]))
    lo, hi = motion["bootstrap_intervals"]["win"]
    assert 0.0 <= lo <= motion["rates"]["win"] <= hi <= 1.0


def test_pairwise_report_bad_input():
    with pytest.raises(ValueError, match="empty"):
        pairwise_report([])
    bad = _toy_responses()
    bad[0] = dict(bad[0], answer="A")
    with pytest.raises(ValueError, match=r"responses\[0\].answer = 'A'"):
        pairwise_report(bad)
    missing = [{k: v for k, v in _toy_responses()[0].items() if k != "model_right"}]
    with pytest.raises(ValueError, match="model_right"):
        pairwise_report(missing)
    dup = _toy_responses() + [_toy_responses()[0]]
    with pytest.raises(ValueError, match="one answer per annotator per item"):
        pairwise_report(dup)
    with pytest.raises(ValueError, match="'visual' is not one of the expected questions"):
        pairwise_report(_toy_responses(), questions=["motion"])
    with pytest.raises(ValueError, match="itself"):
        pairwise_report([_rec("x", "a", "m", "m", "left")])


def test_gold_check_flags_and_exclusion():
    gold = {"g1": "real", "g2": {"motion": "tie"}}
    responses = _toy_responses() + [
        _rec("g1", "a1", "real", "broken", "left"),  # correct
        _rec("g1", "a2", "broken", "real", "right"),  # correct
        _rec("g1", "a3", "broken", "real", "left"),  # wrong
        _rec("g2", "a1", "real", "broken", "tie"),  # correct
        _rec("g2", "a2", "real", "broken", "tie"),  # correct
        _rec("g2", "a3", "real", "broken", "tie"),  # correct
        _rec("g2", "a3", "real", "broken", "left", "visual"),  # question not checked for g2
    ]
    check = gold_check(responses, gold)
    assert check["a1"] == {"n_gold": 2, "n_correct": 2, "accuracy": 1.0, "flagged": False}
    assert check["a3"]["n_gold"] == 2 and check["a3"]["accuracy"] == 0.5 and check["a3"]["flagged"]
    assert flagged_annotators(check) == ["a3"]
    assert not gold_check(responses, gold, threshold=0.5)["a3"]["flagged"]

    rows = pairwise_report(responses, exclude_annotators=flagged_annotators(check), exclude_items=gold)
    motion = next(r for r in rows if r["question"] == "motion" and r["model_b"] == "mogan")
    assert motion["n"] == 6 and motion["n_annotators"] == 2
    assert all("real" not in (r["model_a"], r["model_b"]) for r in rows)
    assert len(filter_responses(responses, ["a1"])) == len(responses) - 7

    no_gold = gold_check(_toy_responses(), gold)
    assert math.isnan(no_gold["a1"]["accuracy"]) and not no_gold["a1"]["flagged"]
    assert gold_check(_toy_responses(), gold, require_gold=True)["a1"]["flagged"]


def test_gold_check_bad_input():
    with pytest.raises(ValueError, match="neither 'tie' nor a model"):
        gold_check([_rec("g", "a", "x", "y", "left")], {"g": "z"})
    with pytest.raises(ValueError, match="threshold"):
        gold_check([], {}, threshold=1.5)
