"""Statistics of the human preference study (as in the MoGAN paper, Sec. 6.3 / Fig. 5).

Pure functions: answers in, numbers out; nothing here touches the database or the web UI. The formulas come from
libraries (scipy, statsmodels, krippendorff, choix); this module validates inputs, maps study answers onto those
calls and keeps the study's conventions for edge cases (a ValueError or NaN). The bootstraps (items for the
rates, comparisons for Bradley-Terry) are the study's own resampling method and are written out here.

A record is a mapping ``{"item_id", "annotator_id", "model_left", "model_right", "question", "answer"}`` with
answer in {"left", "tie", "right"}. Left/right is randomized per annotation, so every answer is first mapped
back to the preferred *model*; within a pair, "A" is the model whose name sorts first.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import choix
import krippendorff
import numpy as np
from scipy import stats
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from statsmodels.stats.inter_rater import fleiss_kappa as _sm_fleiss_kappa

__all__ = [
    "AB_LABELS",
    "OUTCOMES",
    "SIDE_LABELS",
    "bootstrap_rate_intervals",
    "bradley_terry",
    "bradley_terry_bootstrap",
    "filter_responses",
    "flagged_annotators",
    "fleiss_kappa",
    "gold_check",
    "krippendorff_alpha_nominal",
    "likert_summary",
    "pairwise_report",
    "sign_test",
    "wilson_interval",
    "win_tie_lose",
]

#: Answer labels from the first model's perspective: A preferred, tie, B preferred.
AB_LABELS: tuple[str, str, str] = ("A", "tie", "B")
#: Answer labels as stored by the survey page (positions on screen).
SIDE_LABELS: tuple[str, str, str] = ("left", "tie", "right")
#: Keys of the rate dictionaries, aligned with AB_LABELS.
OUTCOMES: tuple[str, str, str] = ("win", "tie", "lose")

_RECORD_KEYS = ("item_id", "annotator_id", "model_left", "model_right", "question", "answer")


# --------------------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------------------
def _as_count(name: str, value: Any) -> int:
    """A non-negative integer count (ints, numpy ints, or integral floats); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not float(value).is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return int(value)


def _check_confidence(confidence: float) -> float:
    if not isinstance(confidence, numbers.Real) or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _check_n_boot(n_boot: Any) -> int:
    n = _as_count("n_boot", n_boot)
    if n < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
    return n


def _ab_counts(answers: Iterable[str], where: str = "answers") -> np.ndarray:
    """Counts of (A, tie, B); unknown labels raise ValueError naming the label."""
    counts = np.zeros(3, dtype=np.int64)
    index = {label: i for i, label in enumerate(AB_LABELS)}
    for k, answer in enumerate(answers):
        if not isinstance(answer, str) or answer not in index:
            raise ValueError(f"{where}[{k}] = {answer!r} is not one of {AB_LABELS}")
        counts[index[answer]] += 1
    return counts


# --------------------------------------------------------------------------------------------------------------
# proportions
# --------------------------------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``successes / n`` (scipy ``binomtest(...).proportion_ci(method="wilson")``).

    Unlike the Wald interval it stays inside [0, 1] and is not degenerate at 0 or n successes (the endpoint
    there is exactly 0 or 1), which matters for small per-pair samples.
    """
    successes = _as_count("successes", successes)
    n = _as_count("n", n)
    confidence = _check_confidence(confidence)
    if n == 0:
        raise ValueError("n must be >= 1 for a proportion interval (got 0 answers)")
    if successes > n:
        raise ValueError(f"successes ({successes}) must be <= n ({n})")
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def win_tie_lose(answers: Iterable[str], confidence: float = 0.95) -> dict[str, Any]:
    """Counts, rates and Wilson intervals of answers in {"A", "tie", "B"} (A = the first model of the pair).

    Returns ``{"n": int, "counts": {"win", "tie", "lose"}, "rates": {...}, "intervals": {...: (low, high)}}``
    where "win" means A was preferred. Each rate's interval is a separate Wilson interval of that category
    against the other two.
    """
    counts = _ab_counts(answers)
    n = int(counts.sum())
    if n == 0:
        raise ValueError("answers is empty: need at least one answer for win/tie/lose rates")
    return {
        "n": n,
        "counts": {key: int(c) for key, c in zip(OUTCOMES, counts)},
        "rates": {key: float(c) / n for key, c in zip(OUTCOMES, counts)},
        "intervals": {key: wilson_interval(int(c), n, confidence) for key, c in zip(OUTCOMES, counts)},
    }


def bootstrap_rate_intervals(
    answers_by_item: Mapping[Hashable, Sequence[str]] | Sequence[Sequence[str]],
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the win/tie/lose rates, resampling items with replacement.

    ``answers_by_item`` holds, per item, the answers ("A"/"tie"/"B") of its annotators. Each replicate draws
    as many items as there are, pools their answers and computes the rates, so the intervals account for
    annotators of the same video agreeing with each other (Wilson intervals treat answers as independent).
    Returns ``{"win": (low, high), "tie": ..., "lose": ...}``.
    """
    n_boot = _check_n_boot(n_boot)
    confidence = _check_confidence(confidence)
    items = list(answers_by_item.items()) if isinstance(answers_by_item, Mapping) else list(enumerate(answers_by_item))
    if not items:
        raise ValueError("answers_by_item is empty: need at least one item")
    per_item = np.zeros((len(items), 3), dtype=np.float64)
    for row, (item, answers) in enumerate(items):
        if isinstance(answers, str):
            raise ValueError(f"answers_by_item[{item!r}] must be a sequence of answers, not a string")
        per_item[row] = _ab_counts(answers, where=f"answers_by_item[{item!r}]")
        if per_item[row].sum() == 0:
            raise ValueError(f"answers_by_item[{item!r}] has no answers")
    rng = np.random.default_rng(seed)
    n_items = len(items)
    rates = np.empty((n_boot, 3), dtype=np.float64)
    # Chunked so memory stays ~chunk x n_items regardless of n_boot.
    chunk = max(1, min(n_boot, 2_000_000 // max(n_items, 1)))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        # Multiplicity of each item in each replicate == resampling items with replacement.
        weights = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=stop - start)
        totals = weights @ per_item
        rates[start:stop] = totals / totals.sum(axis=1, keepdims=True)
    alpha = 1.0 - confidence
    lows = np.quantile(rates, alpha / 2.0, axis=0)
    highs = np.quantile(rates, 1.0 - alpha / 2.0, axis=0)
    return {key: (float(lo), float(hi)) for key, lo, hi in zip(OUTCOMES, lows, highs)}


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test of ``wins`` vs ``losses`` (scipy ``binomtest(wins, wins + losses, 0.5)``).

    Ties are excluded by the caller (pass only decisive answers). With no decisive answers there is no
    evidence either way and the p-value is 1.0.
    """
    wins = _as_count("wins", wins)
    losses = _as_count("losses", losses)
    n = wins + losses
    return float(stats.binomtest(wins, n, 0.5).pvalue) if n else 1.0


# --------------------------------------------------------------------------------------------------------------
# agreement
# --------------------------------------------------------------------------------------------------------------
def fleiss_kappa(table: Any) -> float:
    """Fleiss' kappa from an items x categories table of counts (statsmodels ``fleiss_kappa``).

    Every item must be rated by the same number (>= 2) of raters. Returns NaN when every rating falls in a
    single category (chance agreement is 1, kappa undefined).
    """
    arr = np.asarray(table, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"table must be 2-D (items x categories), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"table is empty (shape {arr.shape}); need >= 1 item and >= 1 category")
    if not np.all(np.isfinite(arr)):
        raise ValueError("table contains NaN or inf counts")
    if np.any(arr < 0):
        raise ValueError("table contains negative counts")
    if not np.all(arr == np.round(arr)):
        raise ValueError("table counts must be integers")
    raters = arr.sum(axis=1)
    if not np.all(raters == raters[0]):
        raise ValueError(
            f"table rows must all sum to the same number of raters; got row sums from {raters.min():g} "
            f"to {raters.max():g}"
        )
    if raters[0] < 2:
        raise ValueError(f"each item needs >= 2 ratings for Fleiss' kappa, got {raters[0]:g}")
    if np.count_nonzero(arr.sum(axis=0)) == 1:
        return float("nan")
    return float(_sm_fleiss_kappa(arr, method="fleiss"))


def krippendorff_alpha_nominal(data: Any) -> float:
    """Krippendorff's alpha for nominal data (``krippendorff.alpha``); ``data`` is annotators x items.

    NaN (or None) marks a missing value. Items with fewer than two values are not pairable and are ignored.
    Returns NaN when all pairable values are the same category (expected disagreement 0, alpha undefined).
    """
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"data must be 2-D (annotators x items), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"data is empty (shape {arr.shape})")
    if np.any(np.isinf(arr)):
        raise ValueError("data contains inf; use NaN for missing values")
    present = ~np.isnan(arr)
    if not present.any():
        raise ValueError("data has no values (all missing)")
    pairable = arr[:, present.sum(axis=0) >= 2]
    if pairable.size == 0:
        raise ValueError("data has no pairable unit (no item has >= 2 values)")
    if np.unique(pairable[~np.isnan(pairable)]).size < 2:
        return float("nan")
    return float(krippendorff.alpha(reliability_data=arr, level_of_measurement="nominal"))


# --------------------------------------------------------------------------------------------------------------
# Bradley-Terry
# --------------------------------------------------------------------------------------------------------------
def _pairs_array(pairs: Any, n_models: int, name: str) -> np.ndarray:
    if pairs is None:
        return np.zeros((0, 2), dtype=np.int64)
    arr = np.asarray(list(pairs) if not isinstance(pairs, np.ndarray) else pairs)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be a sequence of (i, j) pairs, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer model indices")
        arr = arr.astype(np.int64)
    if np.any(arr < 0) or np.any(arr >= n_models):
        bad = arr[(arr < 0) | (arr >= n_models)][0]
        raise ValueError(f"{name} has model index {int(bad)} outside [0, {n_models - 1}] (n_models={n_models})")
    if np.any(arr[:, 0] == arr[:, 1]):
        row = int(np.flatnonzero(arr[:, 0] == arr[:, 1])[0])
        raise ValueError(f"{name}[{row}] compares model {int(arr[row, 0])} with itself")
    return arr.astype(np.int64)


def _fit_bt(wins: np.ndarray, prior: float, max_iter: int, tol: float) -> np.ndarray:
    """Mean-zero log-strengths from a (fractional) win matrix, ``wins[i, j]`` = times i beat j.

    The prior is added here as pseudo-ties (``prior / 2`` wins each way per pair), so choix runs unregularised
    (``alpha=0``) and returns the maximum-likelihood fit of the augmented counts.
    """
    k = wins.shape[0]
    if prior > 0:
        wins = wins + (prior / 2.0) * (1.0 - np.eye(k))
    else:
        n_comp, _ = connected_components(csr_matrix(wins > 0), directed=True, connection="strong")
        if n_comp > 1:
            raise ValueError(
                "Bradley-Terry MLE does not exist: the win graph is not strongly connected (some model never "
                "wins or never loses against the rest); use prior > 0"
            )
    try:
        return choix.ilsr_pairwise_dense(wins, alpha=0.0, max_iter=max_iter, tol=tol)
    except RuntimeError as exc:
        raise RuntimeError(
            f"bradley_terry did not converge within max_iter={max_iter} iterations (tol={tol:g})"
        ) from exc


def bradley_terry(
    comparisons: Any,
    n_models: int,
    ties: Any = None,
    prior: float = 1.0,
    max_iter: int = 10_000,
    tol: float = 1e-10,
) -> np.ndarray:
    """Bradley-Terry log-strengths s (natural log, mean 0): P(i beats j) = 1 / (1 + exp(s_j - s_i)).

    comparisons: (winner, loser) model-index pairs. ties: (i, j) pairs, each counted as half a win for both.
    prior: pseudo-games per pair of models, counted as ties; it keeps the fit finite when a model never wins or
    never loses (0 = plain MLE, which needs a strongly connected win graph). Fitted with choix's iterative
    Luce spectral ranking (``ilsr_pairwise_dense``), whose fixed point is the maximum-likelihood estimate.
    """
    n_models = _as_count("n_models", n_models)
    if n_models < 2:
        raise ValueError(f"n_models must be >= 2, got {n_models}")
    if not isinstance(prior, numbers.Real) or not math.isfinite(prior) or prior < 0:
        raise ValueError(f"prior must be a finite number >= 0, got {prior!r}")
    decisive = _pairs_array(comparisons, n_models, "comparisons")
    tie_pairs = _pairs_array(ties, n_models, "ties")
    if len(decisive) + len(tie_pairs) == 0:
        raise ValueError("comparisons (and ties) are empty: need at least one comparison")
    wins = np.zeros((n_models, n_models))
    np.add.at(wins, (decisive[:, 0], decisive[:, 1]), 1.0)
    np.add.at(wins, (tie_pairs[:, 0], tie_pairs[:, 1]), 0.5)
    np.add.at(wins, (tie_pairs[:, 1], tie_pairs[:, 0]), 0.5)
    return _fit_bt(wins, float(prior), max_iter, tol)


def _ranks(strengths: np.ndarray) -> np.ndarray:
    """Rank 1 = strongest, along the last axis; equal strengths keep index order."""
    return stats.rankdata(-strengths, method="ordinal", axis=-1).astype(np.int64)


def bradley_terry_bootstrap(
    comparisons: Any,
    n_models: int,
    n_boot: int = 1000,
    seed: int = 0,
    ties: Any = None,
    prior: float = 1.0,
    confidence: float = 0.95,
) -> dict[str, np.ndarray | int | float]:
    """Bradley-Terry point estimate plus percentile bootstrap over comparisons.

    Returns arrays of length n_models: "strengths" (point fit), "low"/"high" (strength interval),
    "rank" (1 = best, from the point fit), "rank_low"/"rank_high" (rank interval), "prob_best"
    (share of replicates in which the model ranks first); plus "n_boot" and "confidence".
    With prior 0, replicates whose win graph is not strongly connected are dropped ("n_boot" counts the rest).
    """
    n_boot = _check_n_boot(n_boot)
    confidence = _check_confidence(confidence)
    point = bradley_terry(comparisons, n_models, ties=ties, prior=prior)
    k = int(n_models)
    decisive = _pairs_array(comparisons, k, "comparisons")
    tie_pairs = _pairs_array(ties, k, "ties")
    # Resampling comparisons with replacement == multinomial draw over outcome cells: ordered (winner, loser)
    # cells, then tie cells (i, j) kept in the order given.
    cells = np.concatenate([decisive[:, 0] * k + decisive[:, 1], k * k + tie_pairs[:, 0] * k + tie_pairs[:, 1]])
    cell_counts = np.bincount(cells, minlength=2 * k * k).astype(np.float64)
    n_total = int(cell_counts.sum())
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_total, cell_counts / n_total, size=n_boot)
    samples = np.full((n_boot, k), np.nan)
    for b in range(n_boot):
        dec = draws[b, : k * k].reshape(k, k).astype(np.float64)
        tie = draws[b, k * k :].reshape(k, k).astype(np.float64)
        try:
            samples[b] = _fit_bt(dec + 0.5 * (tie + tie.T), float(prior), 10_000, 1e-10)
        except ValueError:  # prior 0 only: the replicate lost connectivity, so its MLE is undefined
            pass
    samples = samples[~np.isnan(samples).any(axis=1)]
    if len(samples) == 0:
        raise ValueError("every bootstrap replicate was degenerate; use prior > 0")
    alpha = 1.0 - confidence
    ranks = _ranks(samples)
    return {
        "strengths": point,
        "low": np.quantile(samples, alpha / 2.0, axis=0),
        "high": np.quantile(samples, 1.0 - alpha / 2.0, axis=0),
        "rank": _ranks(point),
        "rank_low": np.quantile(ranks, alpha / 2.0, axis=0, method="lower").astype(np.int64),
        "rank_high": np.quantile(ranks, 1.0 - alpha / 2.0, axis=0, method="higher").astype(np.int64),
        "prob_best": (ranks == 1).mean(axis=0),
        "n_boot": len(samples),
        "confidence": confidence,
    }


# --------------------------------------------------------------------------------------------------------------
# Likert
# --------------------------------------------------------------------------------------------------------------
def likert_summary(
    ratings: Iterable[float],
    confidence: float = 0.95,
    scale: tuple[float, float] | None = (1, 5),
) -> dict[str, Any]:
    """Mean, sample std (ddof=1), Student-t interval of the mean (``scipy.stats.t.interval``) and n.

    ``scale`` = allowed (min, max) rating; values outside raise ValueError (None disables the check).
    With a single rating the std and interval are NaN; identical ratings give the zero-width interval.
    """
    confidence = _check_confidence(confidence)
    arr = np.asarray(list(ratings), dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"ratings must be a flat sequence, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("ratings is empty: need at least one rating")
    if not np.all(np.isfinite(arr)):
        raise ValueError("ratings contain NaN or inf")
    if scale is not None:
        lo, hi = scale
        if np.any(arr < lo) or np.any(arr > hi):
            bad = arr[(arr < lo) | (arr > hi)][0]
            raise ValueError(f"rating {bad:g} is outside the scale [{lo}, {hi}]")
    n = int(arr.size)
    mean = float(arr.mean())
    if n < 2:
        nan = float("nan")
        return {"mean": mean, "std": nan, "ci": (nan, nan), "n": n}
    std = float(arr.std(ddof=1))
    if std == 0.0:  # scipy rejects scale 0; the interval of a constant sample is the point itself
        return {"mean": mean, "std": std, "ci": (mean, mean), "n": n}
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return {"mean": mean, "std": std, "ci": (float(low), float(high)), "n": n}


# --------------------------------------------------------------------------------------------------------------
# study-level helpers on answer records
# --------------------------------------------------------------------------------------------------------------
def _validate_records(responses: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    records = list(responses)
    seen: set[tuple[Any, Any, Any]] = set()
    for k, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"responses[{k}] must be a mapping, got {type(rec).__name__}")
        missing = [key for key in _RECORD_KEYS if key not in rec]
        if missing:
            raise ValueError(f"responses[{k}] is missing field(s) {missing}")
        if rec["answer"] not in SIDE_LABELS:
            raise ValueError(f"responses[{k}].answer = {rec['answer']!r} is not one of {SIDE_LABELS}")
        for key in ("model_left", "model_right", "question"):
            if not isinstance(rec[key], str) or not rec[key]:
                raise ValueError(f"responses[{k}].{key} must be a non-empty string, got {rec[key]!r}")
        if rec["model_left"] == rec["model_right"]:
            raise ValueError(f"responses[{k}] compares model {rec['model_left']!r} with itself")
        key3 = (rec["item_id"], rec["annotator_id"], rec["question"])
        if key3 in seen:
            raise ValueError(
                f"responses[{k}] duplicates an answer of annotator {rec['annotator_id']!r} on item "
                f"{rec['item_id']!r} for question {rec['question']!r} (one answer per annotator per item)"
            )
        seen.add(key3)
    return records


def _preferred_model(rec: Mapping[str, Any]) -> str:
    """Model name the answer prefers, or "tie"."""
    return {"left": rec["model_left"], "right": rec["model_right"], "tie": "tie"}[rec["answer"]]


def _ab_answer(rec: Mapping[str, Any]) -> tuple[str, str, str]:
    """(model_a, model_b, "A"/"tie"/"B") with model_a the name that sorts first."""
    model_a, model_b = sorted((rec["model_left"], rec["model_right"]))
    pref = _preferred_model(rec)
    return model_a, model_b, ("tie" if pref == "tie" else "A" if pref == model_a else "B")


def filter_responses(
    responses: Iterable[Mapping[str, Any]],
    exclude_annotators: Iterable[Hashable] = (),
    exclude_items: Iterable[Hashable] = (),
) -> list[Mapping[str, Any]]:
    """Drop records of the given annotators (e.g. failed gold checks) and items (e.g. the gold items)."""
    bad_annotators = set(exclude_annotators)
    bad_items = set(exclude_items)
    return [rec for rec in responses if rec["annotator_id"] not in bad_annotators and rec["item_id"] not in bad_items]


def _kappa_for_items(per_item: Mapping[Hashable, np.ndarray]) -> tuple[float, int, int]:
    """Fleiss' kappa over items rated by the most common number (>= 2) of annotators.

    Exclusions can leave items with unequal numbers of ratings, which Fleiss' kappa does not allow; rather
    than fail, use the largest consistent block and report how many items/raters it covers.
    Returns (kappa, n_items_used, raters_per_item); (nan, 0, 0) when no item has >= 2 ratings.
    """
    sizes = Counter(int(c.sum()) for c in per_item.values() if c.sum() >= 2)
    if not sizes:
        return float("nan"), 0, 0
    best = max(sizes.values())
    m = max(size for size, count in sizes.items() if count == best)
    table = np.array([c for c in per_item.values() if int(c.sum()) == m])
    return fleiss_kappa(table), len(table), m


def pairwise_report(
    responses: Iterable[Mapping[str, Any]],
    *,
    questions: Sequence[str] | None = None,
    exclude_annotators: Iterable[Hashable] = (),
    exclude_items: Iterable[Hashable] = (),
    confidence: float = 0.95,
    n_boot: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Summarize pairwise (left / tie / right) answers per question and per unordered model pair.

    Every answer is mapped to the preferred model; within a pair, model_a is the name that sorts first and
    "win" means model_a was preferred. One row per (question, model_a, model_b), ordered by ``questions``
    (default: sorted names) then by pair, with keys:
        question, model_a, model_b, n, n_items, n_annotators,
        counts / rates / intervals ({"win", "tie", "lose"}; Wilson intervals),
        sign_test_p (wins vs losses, ties excluded),
        fleiss_kappa, kappa_n_items, kappa_raters (categories: a preferred / tie / b preferred),
        krippendorff_alpha (same categories, all items, tolerates unequal annotators per item),
        bootstrap_intervals (only when n_boot > 0; items resampled).
    ``questions``: the expected questions, in display order; a record with another question raises ValueError.
    """
    confidence = _check_confidence(confidence)
    records = filter_responses(_validate_records(responses), exclude_annotators, exclude_items)
    if not records:
        raise ValueError("responses is empty (after exclusions): nothing to report")
    if questions is not None:
        questions = list(questions)
        known = set(questions)
        for rec in records:
            if rec["question"] not in known:
                raise ValueError(f"question {rec['question']!r} is not one of the expected questions {questions}")
    else:
        questions = sorted({rec["question"] for rec in records})

    groups: dict[tuple[str, str, str], list[tuple[Hashable, Hashable, str]]] = defaultdict(list)
    for rec in records:
        model_a, model_b, ab = _ab_answer(rec)
        groups[(rec["question"], model_a, model_b)].append((rec["item_id"], rec["annotator_id"], ab))

    pairs = sorted({(a, b) for (_, a, b) in groups})
    rows: list[dict[str, Any]] = []
    for question in questions:
        for model_a, model_b in pairs:
            entries = groups.get((question, model_a, model_b))
            if not entries:
                continue
            answers = [ab for _, _, ab in entries]
            summary = win_tie_lose(answers, confidence)
            by_item: dict[Hashable, list[str]] = defaultdict(list)
            for item, _, ab in entries:
                by_item[item].append(ab)
            item_counts = {item: _ab_counts(ans) for item, ans in by_item.items()}
            kappa, kappa_items, kappa_raters = _kappa_for_items(item_counts)

            annotators = list(dict.fromkeys(ann for _, ann, _ in entries))
            items = list(by_item)
            matrix = np.full((len(annotators), len(items)), np.nan)
            a_index = {a: i for i, a in enumerate(annotators)}
            i_index = {it: j for j, it in enumerate(items)}
            for item, ann, ab in entries:
                matrix[a_index[ann], i_index[item]] = AB_LABELS.index(ab)
            pairable = np.sum(~np.isnan(matrix), axis=0) >= 2
            alpha = krippendorff_alpha_nominal(matrix) if pairable.any() else float("nan")

            row: dict[str, Any] = {
                "question": question,
                "model_a": model_a,
                "model_b": model_b,
                "n": summary["n"],
                "n_items": len(items),
                "n_annotators": len(annotators),
                "counts": summary["counts"],
                "rates": summary["rates"],
                "intervals": summary["intervals"],
                "sign_test_p": sign_test(summary["counts"]["win"], summary["counts"]["lose"]),
                "fleiss_kappa": kappa,
                "kappa_n_items": kappa_items,
                "kappa_raters": kappa_raters,
                "krippendorff_alpha": alpha,
            }
            if n_boot:
                row["bootstrap_intervals"] = bootstrap_rate_intervals(by_item, n_boot, seed, confidence)
            rows.append(row)
    return rows


def gold_check(
    responses: Iterable[Mapping[str, Any]],
    gold: Mapping[Hashable, str | Mapping[str, str]],
    *,
    threshold: float = 0.75,
    require_gold: bool = False,
) -> dict[Hashable, dict[str, Any]]:
    """Per-annotator accuracy on gold / attention-check items.

    gold: item_id -> expected answer, given as the preferred *model name* or "tie" (left/right positions are
    randomized, so the expectation is about models). A plain string applies to every question of the item;
    a mapping question -> expected applies per question (questions not listed are not checked).
    Returns annotator_id -> {"n_gold", "n_correct", "accuracy", "flagged"}; flagged when accuracy < threshold.
    Annotators with no gold answers get accuracy NaN and are flagged only if ``require_gold``.
    """
    if not isinstance(threshold, numbers.Real) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    if not isinstance(gold, Mapping):
        raise ValueError(f"gold must be a mapping item_id -> expected answer, got {type(gold).__name__}")
    records = _validate_records(responses)
    tallies: dict[Hashable, list[int]] = {}
    for k, rec in enumerate(records):
        tally = tallies.setdefault(rec["annotator_id"], [0, 0])
        if rec["item_id"] not in gold:
            continue
        expected = gold[rec["item_id"]]
        if isinstance(expected, Mapping):
            if rec["question"] not in expected:
                continue
            expected = expected[rec["question"]]
        valid = {"tie", rec["model_left"], rec["model_right"]}
        if expected not in valid:
            raise ValueError(
                f"gold[{rec['item_id']!r}] expects {expected!r}, which is neither 'tie' nor a model of that item "
                f"({rec['model_left']!r}, {rec['model_right']!r}) (responses[{k}])"
            )
        tally[0] += 1
        tally[1] += int(_preferred_model(rec) == expected)
    result: dict[Hashable, dict[str, Any]] = {}
    for annotator, (n_gold, n_correct) in tallies.items():
        accuracy = n_correct / n_gold if n_gold else float("nan")
        flagged = (accuracy < threshold) if n_gold else bool(require_gold)
        result[annotator] = {
            "n_gold": n_gold,
            "n_correct": n_correct,
            "accuracy": accuracy,
            "flagged": flagged,
        }
    return result


def flagged_annotators(check: Mapping[Hashable, Mapping[str, Any]]) -> list[Hashable]:
    """Annotator ids flagged by :func:`gold_check`, for ``pairwise_report(exclude_annotators=...)``."""
    return [annotator for annotator, info in check.items() if info["flagged"]]
