"""Figures of the human preference study: the stacked win / tie / lose bars of MoGAN Fig. 5.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global backend switch), so it is
safe in workers and tests. Input is the row list produced by
:func:`evaluator.study.statistics.pairwise_report`.

Example::

    rows = pairwise_report(responses, questions=["visual", "motion", "text"])
    win_tie_lose_bars(rows, "out/human_study.png")

Tests: ``python -m pytest tests/evaluator/study/test_plots.py -q``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["SEGMENT_COLORS", "win_tie_lose_bars"]

#: Segment colours: win (first model preferred), tie, lose.
SEGMENT_COLORS: dict[str, str] = {"win": "#2e7d32", "tie": "#9e9e9e", "lose": "#c62828"}


def _check_row(k: int, row: Any) -> tuple[str, str, str, dict[str, float], int | None]:
    if not isinstance(row, Mapping):
        raise ValueError(f"report[{k}] must be a mapping, got {type(row).__name__}")
    for key in ("question", "model_a", "model_b", "rates"):
        if key not in row:
            raise ValueError(f"report[{k}] is missing field {key!r}")
    rates = row["rates"]
    if not isinstance(rates, Mapping) or any(key not in rates for key in SEGMENT_COLORS):
        raise ValueError(f"report[{k}].rates must have keys {tuple(SEGMENT_COLORS)}")
    values = {key: float(rates[key]) for key in SEGMENT_COLORS}
    if any(not math.isfinite(v) or v < 0 for v in values.values()):
        raise ValueError(f"report[{k}].rates must be finite and >= 0, got {values}")
    total = sum(values.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"report[{k}].rates must sum to 1, got {total:.6f}")
    return str(row["question"]), str(row["model_a"]), str(row["model_b"]), values, row.get("n")


def win_tie_lose_bars(
    report: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str | None = "Human preference study",
    dpi: int = 150,
    min_label_width: float = 0.06,
    focus_model: str | None = None,
) -> Figure:
    """Stacked horizontal bars (win | tie | lose, each bar summing to 1), one per question and model pair.

    Bars are grouped by model pair (pairs in order of first appearance, questions in report order); the
    y label reads "question (n=...)" and each group is titled "model_a vs model_b". Segments wider than
    ``min_label_width`` carry their percentage. Saves a PNG at ``path`` (parent folders are created) and
    returns the Figure; its single Axes holds the bars in draw order (win, tie, lose for each bar).
    ``focus_model`` (e.g. "ours"): in pairs containing it, show it first, i.e. win/lose from its perspective,
    as in MoGAN Fig. 5 ("Ours vs DMD"); report rows are sorted by name, so they are flipped where needed.
    """
    if not isinstance(report, Sequence) or isinstance(report, (str, bytes)) or len(report) == 0:
        raise ValueError("report must be a non-empty sequence of pairwise_report rows")
    rows = [_check_row(k, row) for k, row in enumerate(report)]
    if focus_model is not None:
        flipped = []
        for question, a, b, values, n in rows:
            if b == focus_model:
                a, b = b, a
                values = {"win": values["lose"], "tie": values["tie"], "lose": values["win"]}
            flipped.append((question, a, b, values, n))
        rows = flipped

    pair_order: list[tuple[str, str]] = list(dict.fromkeys((a, b) for _, a, b, _, _ in rows))
    # Layout top to bottom: per pair, a header gap then one bar per question.
    bars: list[tuple[float, str, dict[str, float]]] = []
    group_labels: list[tuple[float, str]] = []
    y = 0.0
    for pair in pair_order:
        group_labels.append((y, f"{pair[0]} vs {pair[1]}"))
        y += 0.8
        for question, a, b, values, n in rows:
            if (a, b) != pair:
                continue
            label = question if n is None else f"{question} (n={n})"
            bars.append((y, label, values))
            y += 1.0
        y += 0.4

    height = max(2.0, 0.45 * y + 1.2)
    fig = Figure(figsize=(8.0, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for y_pos, _, values in bars:
        left = 0.0
        for key, color in SEGMENT_COLORS.items():
            width = values[key]
            ax.barh(
                y_pos,
                width,
                left=left,
                height=0.7,
                color=color,
                edgecolor="white",
                linewidth=0.5,
                label=key if y_pos == bars[0][0] else None,
            )
            if width >= min_label_width:
                ax.text(
                    left + width / 2.0,
                    y_pos,
                    f"{100.0 * width:.0f}%",
                    ha="center",
                    va="center",
                    color="white",
                    fontsize=8,
                )
            left += width
    for y_pos, text in group_labels:
        ax.text(0.0, y_pos, text, ha="left", va="center", fontsize=9, fontweight="bold")
    ax.set_yticks([y_pos for y_pos, _, _ in bars])
    ax.set_yticklabels([label for _, label, _ in bars])
    ax.set_ylim(y - 0.2, -0.6)  # inverted: first pair on top
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("share of answers (win = first model preferred)")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return fig
