"""Tests of evaluator.study.plots (Fig. 5 style stacked win/tie/lose bars).

Run: python -m pytest tests/evaluator/study/test_plots.py -q
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest

from evaluator.study.plots import SEGMENT_COLORS, win_tie_lose_bars
from evaluator.study.statistics import pairwise_report


def _responses():
    answers = {
        ("dmd", "motion"): ["right"] * 7 + ["tie"] * 2 + ["left"] * 1,
        ("dmd", "visual"): ["right"] * 5 + ["tie"] * 3 + ["left"] * 2,
        ("wan", "motion"): ["right"] * 6 + ["tie"] * 1 + ["left"] * 3,
        ("wan", "text"): ["right"] * 3 + ["tie"] * 2 + ["left"] * 5,
    }
    out = []
    for (baseline, question), labels in answers.items():
        for k, answer in enumerate(labels):
            out.append(
                {
                    "item_id": f"{baseline}-{k // 5}",
                    "annotator_id": f"ann{k % 5}",
                    "model_left": baseline,
                    "model_right": "mogan",
                    "question": question,
                    "answer": answer,
                }
            )
    return out


def test_win_tie_lose_bars_png_and_segments(tmp_path):
    rows = pairwise_report(_responses())
    path = tmp_path / "figs" / "human_study.png"
    fig = win_tie_lose_bars(rows, path)

    assert path.exists()
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000

    ax = fig.axes[0]
    bars = defaultdict(list)
    for patch in ax.patches:
        bars[round(patch.get_y() + patch.get_height() / 2, 6)].append(patch)
    assert len(bars) == len(rows) == 4
    for patches in bars.values():
        assert len(patches) == 3
        assert sum(p.get_width() for p in patches) == pytest.approx(1.0, abs=1e-9)
        # segments are contiguous: each starts where the previous ended
        patches.sort(key=lambda p: p.get_x())
        assert patches[0].get_x() == pytest.approx(0.0)
        for a, b in itertools.pairwise(patches):
            assert b.get_x() == pytest.approx(a.get_x() + a.get_width())

    # Top to bottom: grouped by model pair (first appearance), report order within a pair; the report is
    # question-major, so the plot order differs from it. Widths are the rates (win, tie, lose).
    by_key = {(r["model_a"], r["model_b"], r["question"]): r for r in rows}
    expected_order = [
        ("dmd", "mogan", "motion"),
        ("dmd", "mogan", "visual"),
        ("mogan", "wan", "motion"),
        ("mogan", "wan", "text"),
    ]
    ordered = [bars[y] for y in sorted(bars)]
    for key, patches in zip(expected_order, ordered):
        row = by_key[key]
        widths = [p.get_width() for p in sorted(patches, key=lambda p: p.get_x())]
        assert widths == pytest.approx([row["rates"][k] for k in SEGMENT_COLORS])
    # dmd vs mogan, motion: mogan ("lose" for dmd) preferred 7/10
    assert ordered[0][2].get_width() == pytest.approx(0.7)
    # mogan vs wan, text: mogan (right) preferred 3/10, wan 5/10; "win" = mogan, the name sorting first
    assert ordered[3][0].get_width() == pytest.approx(0.3)
    assert ordered[3][2].get_width() == pytest.approx(0.5)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["motion (n=10)", "visual (n=10)", "motion (n=10)", "text (n=10)"]


def test_win_tie_lose_bars_focus_model_flips_perspective(tmp_path):
    rows = pairwise_report(_responses())
    fig = win_tie_lose_bars(rows, tmp_path / "focus.png", focus_model="mogan")
    ax = fig.axes[0]
    bars = defaultdict(list)
    for patch in ax.patches:
        bars[round(patch.get_y() + patch.get_height() / 2, 6)].append(patch)
    ordered = [sorted(bars[y], key=lambda p: p.get_x()) for y in sorted(bars)]
    # mogan vs dmd, motion: mogan preferred 7/10, tie 2/10, dmd 1/10 (the report's row reads it from dmd's side)
    assert [p.get_width() for p in ordered[0]] == pytest.approx([0.7, 0.2, 0.1])
    # mogan vs wan is already mogan-first: unchanged (motion: mogan 6/10)
    assert [p.get_width() for p in ordered[2]] == pytest.approx([0.6, 0.1, 0.3])
    group_titles = [t.get_text() for t in ax.texts if " vs " in t.get_text()]
    assert group_titles == ["mogan vs dmd", "mogan vs wan"]


def test_win_tie_lose_bars_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        win_tie_lose_bars([], tmp_path / "x.png")
    row = {"question": "q", "model_a": "a", "model_b": "b", "rates": {"win": 0.5, "tie": 0.2, "lose": 0.2}}
    with pytest.raises(ValueError, match="sum to 1"):
        win_tie_lose_bars([row], tmp_path / "x.png")
    with pytest.raises(ValueError, match="missing field 'rates'"):
        win_tie_lose_bars([{"question": "q", "model_a": "a", "model_b": "b"}], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
