"""Does a Table 1 support the papers' claims? A verdict per claim, from differences of seed means with intervals.

    table = reports.table1(records)
    for v in claim_verdicts(table, TINY_CLAIMS):
        print(v["claim"], v["verdict"])

A claim compares two rows of the table (``base`` and ``other``) on a few measures, each with the direction the
claim predicts for ``other - base``: ``"higher"``, ``"lower"`` or ``"not_worse"`` (no harm: the claim fails only if
the difference is on the harmful side). Each measure's difference of the rows' per-seed means gets a 95% Student-t
interval (scipy): paired over shared seeds when both rows have the same seeds (the benchmark samples every model
with the same seeds), Welch's otherwise. A measure *supports* the claim when its interval lies on the predicted
side, *contradicts* it when it lies on the other side, and leaves it *unresolved* when it spans 0 (or the rows
lack two seeds). ``"not_worse"`` is supported unless contradicted. A claim is supported when every measure supports
it, contradicted when any measure contradicts it, and unresolved otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

SUPPORTED, CONTRADICTED, UNRESOLVED, MISSING = "supported", "contradicted", "not resolved", "rows missing"
# For each measure: +1 when a higher value is better, -1 when lower is better (the SWDs, the dynamic-degree gap).
BETTER = {
    "dynamic_degree": +1,
    "motion_score": +1,
    "motion_smoothness": +1,
    "conformance/motion_ok": +1,
    "conformance/colour_ok": +1,
    "visual_swd": -1,
    "motion_swd": -1,
    "dynamic_degree_gap": -1,
}


@dataclass(frozen=True)
class Claim:
    text: str
    base: str | tuple[str, ...]  # the row (model) compared against; several names: the first the table has
    other: str | tuple[str, ...]
    measures: tuple[tuple[str, str], ...]  # (metric, "higher" | "lower" | "not_worse") for other - base


def _row(rows: Mapping[str, Any], names: str | tuple[str, ...]) -> str | None:
    return next((n for n in ((names,) if isinstance(names, str) else names) if n in rows), None)


# Row names: the tiny recipe's (``evaluator.recipes``), else the shipped checkpoints' (``motionlab eval``).
TEACHER, DMD_ROW, MOGAN_ROW = ("teacher-50step", "tiny-teacher"), ("dmd", "tiny-dmd"), ("mogan", "tiny-mogan")


def _ablation(row: str) -> Claim:
    return Claim(
        f"{row} degrades against MoGAN", MOGAN_ROW, row, (("motion_swd", "higher"), ("conformance/motion_ok", "lower"))
    )


# The claims of the MoGAN paper as the tiny rows can test them.
TINY_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "DMD loses dynamics against the teacher",
        TEACHER,
        DMD_ROW,
        (("dynamic_degree", "lower"), ("conformance/motion_ok", "lower"), ("motion_swd", "higher")),
    ),
    Claim(
        "MoGAN restores motion realism over DMD",
        DMD_ROW,
        MOGAN_ROW,
        (("motion_swd", "lower"), ("conformance/motion_ok", "higher"), ("dynamic_degree_gap", "lower")),
    ),
    Claim("MoGAN keeps DMD's visual fidelity", DMD_ROW, MOGAN_ROW, (("visual_swd", "not_worse"),)),
    _ablation("mogan-no-dmd"),
    _ablation("mogan-no-r1r2"),
    _ablation("mogan-video-disc"),
)


def difference(base: Mapping[str, Any], other: Mapping[str, Any], level: float = 0.95) -> dict[str, Any] | None:
    """``other - base`` of two table cells' seed means with a ``level`` Student-t interval; ``None`` when either
    has fewer than two seeds."""
    a, b = base.get("seed_means") or [], other.get("seed_means") or []
    if len(a) < 2 or len(b) < 2:
        return None
    paired = list(base.get("seeds") or []) == list(other.get("seeds") or [])
    test = stats.ttest_rel(b, a) if paired else stats.ttest_ind(b, a, equal_var=False)
    ci = test.confidence_interval(level)
    diff = (sum(b) / len(b)) - (sum(a) / len(a))
    lo, hi = float(ci.low), float(ci.high)
    if math.isnan(lo):  # differences without spread: a zero-width interval (scipy returns nan)
        lo = hi = diff
    return {"difference": diff, "ci95": [lo, hi], "paired": paired, "n_base": len(a), "n_other": len(b)}


def _measure_verdict(metric: str, predicted: str, d: dict[str, Any] | None) -> str:
    if d is None:
        return UNRESOLVED
    lo, hi = d["ci95"]
    sign = BETTER.get(metric, +1)
    up = {"higher": +1, "lower": -1, "not_worse": sign}[predicted]  # the side the claim predicts
    if (up > 0 and lo > 0) or (up < 0 and hi < 0):
        return SUPPORTED
    if (up > 0 and hi < 0) or (up < 0 and lo > 0):
        return CONTRADICTED
    return SUPPORTED if predicted == "not_worse" else UNRESOLVED


def claim_verdicts(table: Mapping[str, Any], claims: Sequence[Claim] = TINY_CLAIMS) -> list[dict[str, Any]]:
    """One verdict per claim whose rows the table has (others: ``MISSING``): ``claim``, ``base``, ``other``,
    ``verdict`` and ``measures`` (``metric``, ``predicted``, ``difference``, ``ci95``, ``paired``, ``verdict``)."""
    rows = {r["model"]: r["cells"] for r in table["rows"]}
    out = []
    for c in claims:
        base, other = _row(rows, c.base), _row(rows, c.other)
        if base is None or other is None:
            out.append({"claim": c.text, "base": base, "other": other, "verdict": MISSING, "measures": []})
            continue
        measures = []
        for metric, predicted in c.measures:
            a, b = rows[base].get(metric), rows[other].get(metric)
            d = difference(a, b) if a and b else None
            measures.append(
                {
                    "metric": metric,
                    "predicted": predicted,
                    **(d or {"difference": None, "ci95": None}),
                    "verdict": _measure_verdict(metric, predicted, d),
                }
            )
        verdicts = {m["verdict"] for m in measures}
        verdict = CONTRADICTED if CONTRADICTED in verdicts else SUPPORTED if verdicts == {SUPPORTED} else UNRESOLVED
        out.append({"claim": c.text, "base": base, "other": other, "verdict": verdict, "measures": measures})
    return out


def claims_markdown(verdicts: Sequence[Mapping[str, Any]]) -> str:
    """The verdicts as a report section ("" when no claim's rows are in the table)."""
    shown = [v for v in verdicts if v["verdict"] != MISSING]
    if not shown:
        return ""
    lines = [
        "",
        "## The papers' claims on this table",
        "",
        "Difference `other - base` of per-seed means, 95% Student-t interval (paired over shared seeds).",
        "",
        "| claim | verdict | measure | predicted | difference [95% interval] |",
        "|---|---|---|---|---|",
    ]
    for v in shown:
        for i, m in enumerate(v["measures"]):
            cell = (
                "n/a (fewer than 2 seeds)"
                if m["ci95"] is None
                else f"{m['difference']:+.4g} [{m['ci95'][0]:+.4g}, {m['ci95'][1]:+.4g}]"
            )
            head = (f"{v['claim']} (`{v['other']}` vs `{v['base']}`)", f"**{v['verdict']}**") if i == 0 else ("", "")
            lines.append(f"| {head[0]} | {head[1]} | {m['metric']} | {m['predicted']} | {cell} ({m['verdict']}) |")
    return "\n".join(lines) + "\n"
