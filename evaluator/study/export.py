"""Results and exports of a human preference study (pure): raw response rows in, numbers, CSV and JSON out.

A raw response row (what ``backend.crud.studies.response_rows`` returns and ``responses.csv`` holds) is a dict:

    response_id, study_id, item_id, annotator_id, assignment_id, question, is_gold, prompt, seed,
    system_a, system_b            the item's systems (A is the pair's first model; B None in Likert mode)
    swap_sides                    True: A was shown on the right
    model_left, model_right       what the annotator saw where (model_right None in Likert mode)
    choice                        pairwise: "a" | "tie" | "b" (about systems); likert: "1".."5"
    answer                        pairwise: "left" | "tie" | "right" (about screen sides); likert: the rating
    duration_ms, created_at

``study_results`` turns them into every figure of the study, using ``evaluator.study.statistics``:
per question and model pair win/tie/lose rates with Wilson (and item-bootstrap) 95% intervals, a sign test,
Fleiss' kappa and Krippendorff's alpha; a Bradley-Terry ranking with bootstrap intervals per question when the
study has three or more models; Likert means with t intervals and Krippendorff's alpha; per-annotator gold
accuracy, with the flagged annotators excluded unless asked otherwise. ``results_csv``/``responses_csv``/
``to_json`` write them (CSV text cells a spreadsheet would read as a formula are escaped: ``csv_cell``);
``results_figure`` draws MoGAN Fig. 5 (``evaluator.study.plots``).

Tests: ``python -m pytest tests/backend/test_study_design.py -q``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluator.study import statistics as st

RESPONSE_COLUMNS = (
    "response_id",
    "study_id",
    "item_id",
    "annotator_id",
    "assignment_id",
    "question",
    "is_gold",
    "prompt",
    "seed",
    "system_a",
    "system_b",
    "swap_sides",
    "model_left",
    "model_right",
    "choice",
    "answer",
    "duration_ms",
    "created_at",
)
RESULT_COLUMNS = (
    "kind",
    "question",
    "model",
    "model_a",
    "model_b",
    "n",
    "n_items",
    "n_annotators",
    "win",
    "tie",
    "lose",
    "win_low",
    "win_high",
    "tie_low",
    "tie_high",
    "lose_low",
    "lose_high",
    "sign_test_p",
    "fleiss_kappa",
    "krippendorff_alpha",
    "strength",
    "strength_low",
    "strength_high",
    "rank",
    "rank_low",
    "rank_high",
    "prob_best",
    "mean",
    "std",
    "ci_low",
    "ci_high",
)


def pairwise_records(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Raw pairwise rows -> ``statistics`` records (model_left/model_right/answer as the annotator saw them)."""
    out = []
    for r in rows:
        out.append(
            {
                "item_id": r["item_id"],
                "annotator_id": r["annotator_id"],
                "model_left": r["model_left"],
                "model_right": r["model_right"],
                "question": r["question"],
                "answer": r["answer"],
            }
        )
    return out


def side_answer(choice: str, swap_sides: bool) -> str:
    """A stored system choice ("a" | "tie" | "b") as the screen side the annotator clicked."""
    if choice == "tie":
        return "tie"
    left_is_a = not swap_sides
    return "left" if (choice == "a") == left_is_a else "right"


def system_choice(answer: str, swap_sides: bool) -> str:
    """The screen side the annotator clicked ("left" | "tie" | "right") as a system choice ("a" | "tie" | "b")."""
    if answer == "tie":
        return "tie"
    if answer not in ("left", "right"):
        raise ValueError(f"answer must be 'left', 'tie' or 'right' (got {answer!r})")
    return "a" if (answer == "left") != bool(swap_sides) else "b"


def _finite(x: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, NaN/inf to None, tuples to lists."""
    if isinstance(x, Mapping):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_finite(v) for v in x.tolist()]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _ranking(records: Sequence[Mapping[str, Any]], question: str, n_boot: int, seed: int) -> list[dict[str, Any]]:
    recs = [r for r in records if r["question"] == question]
    models = sorted({m for r in recs for m in (r["model_left"], r["model_right"])})
    if len(models) < 3:
        return []
    index = {m: i for i, m in enumerate(models)}
    wins, ties = [], []
    for r in recs:
        left, right = index[r["model_left"]], index[r["model_right"]]
        if r["answer"] == "left":
            wins.append((left, right))
        elif r["answer"] == "right":
            wins.append((right, left))
        else:
            ties.append((left, right))
    bt = st.bradley_terry_bootstrap(wins, len(models), n_boot=max(1, n_boot), seed=seed, ties=ties)
    rows = [
        {
            "model": m,
            "strength": bt["strengths"][i],
            "low": bt["low"][i],
            "high": bt["high"][i],
            "rank": bt["rank"][i],
            "rank_low": bt["rank_low"][i],
            "rank_high": bt["rank_high"][i],
            "prob_best": bt["prob_best"][i],
            "n_comparisons": len(wins) + len(ties),
        }
        for i, m in enumerate(models)
    ]
    return sorted(rows, key=lambda r: (int(r["rank"]), r["model"]))


def _likert(rows: Sequence[Mapping[str, Any]], questions: Sequence[str]) -> tuple[list[dict], dict[str, Any]]:
    table: list[dict[str, Any]] = []
    agreement: dict[str, Any] = {}
    for q in questions:
        rq = [r for r in rows if r["question"] == q]
        for model in sorted({r["model_left"] for r in rq}):
            ratings = [float(r["answer"]) for r in rq if r["model_left"] == model]
            s = st.likert_summary(ratings)
            table.append(
                {
                    "question": q,
                    "model": model,
                    "mean": s["mean"],
                    "std": s["std"],
                    "ci_low": s["ci"][0],
                    "ci_high": s["ci"][1],
                    "n": s["n"],
                }
            )
        annotators = sorted({r["annotator_id"] for r in rq})
        items = sorted({r["item_id"] for r in rq})
        if len(annotators) >= 2 and items:
            m = np.full((len(annotators), len(items)), np.nan)
            ai = {a: i for i, a in enumerate(annotators)}
            ii = {it: j for j, it in enumerate(items)}
            for r in rq:
                m[ai[r["annotator_id"]], ii[r["item_id"]]] = float(r["answer"])
            pairable = (np.sum(~np.isnan(m), axis=0) >= 2).any()
            agreement[q] = st.krippendorff_alpha_nominal(m) if pairable else float("nan")
        else:
            agreement[q] = float("nan")
    return table, agreement


def study_results(
    rows: Sequence[Mapping[str, Any]],
    *,
    mode: str,
    questions: Sequence[str],
    gold_expect: Mapping[str, Mapping[str, str]] | None = None,
    exclude_flagged: bool = True,
    gold_threshold: float = 0.75,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Every figure of a study from its raw response rows (JSON-safe: NaN becomes None).

    ``gold_expect``: gold item id -> {question: the system that must be preferred}. Gold items never enter the
    comparison figures. Annotators below ``gold_threshold`` accuracy on gold items are ``flagged``; with
    ``exclude_flagged`` their answers are left out of every figure (``excluded_annotators`` lists them).
    """
    rows = list(rows)
    questions = list(questions)
    gold_expect = dict(gold_expect or {})
    out: dict[str, Any] = {
        "mode": mode,
        "questions": questions,
        "confidence": confidence,
        "n_responses": len(rows),
        "n_annotators": len({r["annotator_id"] for r in rows}),
        "n_items": len({r["item_id"] for r in rows if not r.get("is_gold")}),
        "gold": {},
        "flagged": [],
        "excluded_annotators": [],
        "pairwise": [],
        "ranking": {},
        "likert": [],
        "likert_agreement": {},
    }
    if mode == "pairwise":
        records = pairwise_records(rows)
        if gold_expect:
            check = st.gold_check(records, gold_expect, threshold=gold_threshold)
            out["gold"] = {a: v for a, v in sorted(check.items())}
            out["flagged"] = sorted(st.flagged_annotators(check))
        excluded = out["flagged"] if exclude_flagged else []
        out["excluded_annotators"] = list(excluded)
        gold_items = {r["item_id"] for r in rows if r.get("is_gold")} | set(gold_expect)
        kept = st.filter_responses(records, exclude_annotators=excluded, exclude_items=gold_items)
        out["n_used"] = len(kept)
        if kept:
            report = st.pairwise_report(
                kept,
                questions=[q for q in questions if any(r["question"] == q for r in kept)],
                confidence=confidence,
                n_boot=n_boot,
                seed=seed,
            )
            out["pairwise"] = report
            for q in questions:
                ranking = _ranking(kept, q, n_boot, seed)
                if ranking:
                    out["ranking"][q] = ranking
    elif mode == "likert":
        kept = [r for r in rows if not r.get("is_gold")]
        out["n_used"] = len(kept)
        if kept:
            out["likert"], out["likert_agreement"] = _likert(kept, questions)
    else:
        raise ValueError(f"mode must be 'pairwise' or 'likert' (got {mode!r})")
    return _finite(out)


def results_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The results as flat rows (``RESULT_COLUMNS``): kind = pairwise | ranking | likert."""
    flat: list[dict[str, Any]] = []
    for r in results.get("pairwise", []):
        row = {
            "kind": "pairwise",
            "question": r["question"],
            "model_a": r["model_a"],
            "model_b": r["model_b"],
            "n": r["n"],
            "n_items": r["n_items"],
            "n_annotators": r["n_annotators"],
            "sign_test_p": r["sign_test_p"],
            "fleiss_kappa": r["fleiss_kappa"],
            "krippendorff_alpha": r["krippendorff_alpha"],
        }
        for o in st.OUTCOMES:
            row[o] = r["rates"][o]
            row[f"{o}_low"], row[f"{o}_high"] = r["intervals"][o]
        flat.append(row)
    for q, ranking in results.get("ranking", {}).items():
        for r in ranking:
            flat.append(
                {
                    "kind": "ranking",
                    "question": q,
                    "model": r["model"],
                    "n": r["n_comparisons"],
                    "strength": r["strength"],
                    "strength_low": r["low"],
                    "strength_high": r["high"],
                    "rank": r["rank"],
                    "rank_low": r["rank_low"],
                    "rank_high": r["rank_high"],
                    "prob_best": r["prob_best"],
                }
            )
    for r in results.get("likert", []):
        flat.append(
            {
                "kind": "likert",
                "question": r["question"],
                "model": r["model"],
                "n": r["n"],
                "mean": r["mean"],
                "std": r["std"],
                "ci_low": r["ci_low"],
                "ci_high": r["ci_high"],
                "krippendorff_alpha": results.get("likert_agreement", {}).get(r["question"]),
            }
        )
    return flat


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text starting like a formula (``= + - @``, tab, CR) gets a leading
    single quote (OWASP's advice against CSV injection; prompts and names come from users). Numbers stay numbers."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """RFC 4180 CSV: CRLF line ends, so that a cell holding a CR or LF is quoted (the writer quotes only the line
    terminator's characters; an unquoted CR would start a new row, and a formula, mid-cell)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\r\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: csv_cell(r.get(c)) for c in columns})
    return buf.getvalue()


def results_csv(results: Mapping[str, Any]) -> str:
    return _csv(results_rows(results), RESULT_COLUMNS)


def responses_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    return _csv(rows, RESPONSE_COLUMNS)


def to_json(obj: Any) -> str:
    """Strict JSON (NaN/inf as null), with datetimes as ISO strings."""
    return json.dumps(
        _finite(obj), indent=2, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else str(o), allow_nan=False
    )


def results_figure(results: Mapping[str, Any], path: str | Path, focus_model: str | None = None) -> Path | None:
    """MoGAN Fig. 5 (stacked win / tie / lose bars) of a pairwise study's results; None when there is nothing
    to draw (a Likert study, or no answers yet)."""
    from evaluator.study.plots import win_tie_lose_bars  # heavy: matplotlib, for the figure only

    report = results.get("pairwise") or []
    if not report:
        return None
    win_tie_lose_bars(report, path, focus_model=focus_model)
    return Path(path)


__all__ = [
    "RESPONSE_COLUMNS",
    "RESULT_COLUMNS",
    "csv_cell",
    "pairwise_records",
    "responses_csv",
    "results_csv",
    "results_figure",
    "results_rows",
    "side_answer",
    "study_results",
    "system_choice",
    "to_json",
]
