"""Reports: Table 1 values by hand, per-prompt breakdown, exports, plots, run comparison.

Run: python -m pytest tests/evaluator/test_reports.py -q
"""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from evaluator.metrics import MetricResult
from evaluator.reports import (
    compare_runs,
    t_interval,
    table1,
    to_csv,
    to_json,
    to_markdown,
    to_records,
    write_report,
)

T_975_2 = 4.302652729749464  # Student t quantile, 2 degrees of freedom


def rec(model, prompt, seed, metric, value, backend="lite"):
    return {
        "model": model,
        "prompt": prompt,
        "seed": seed,
        "metric": metric,
        "value": value,
        "backend": backend,
    }


@pytest.fixture()
def records():
    sm = {
        ("p1", 0): 0.90,
        ("p2", 0): 0.92,
        ("p1", 1): 0.94,
        ("p2", 1): 0.96,
        ("p1", 2): 0.98,
        ("p2", 2): 0.96,
    }
    dd = {("p1", 0): 1.0, ("p2", 0): 0.0, ("p1", 1): 1.0, ("p2", 1): 1.0, ("p1", 2): 0.0, ("p2", 2): 1.0}
    out = []
    for (p, s), v in sm.items():
        out.append(rec("A", p, s, "motion_smoothness", v))
        out.append(rec("A", p, s, "dynamic_degree", dd[(p, s)]))
        out.append(rec("A", p, s, "aesthetic_quality", None) | {"unavailable_reason": "no weights"})
    out += [
        rec("B", "p1", 0, "motion_smoothness", 0.5),
        rec("B", "p2", 0, "motion_smoothness", 0.7),
        rec("B", "p1", 0, "dynamic_degree", 1.0),
        rec("B", "p2", 0, "dynamic_degree", 1.0),
    ]
    return out


def test_table1_values_by_hand(records):
    t = table1(records)
    assert [r["model"] for r in t["rows"]] == ["A", "B"]
    a = t["rows"][0]["cells"]
    # smoothness: per-seed means over prompts 0.91, 0.95, 0.97 -> percent
    sm = a["motion_smoothness"]
    assert sm["seed_means"] == pytest.approx([91.0, 95.0, 97.0])
    assert sm["mean"] == pytest.approx(94 + 1 / 3)
    assert sm["std"] == pytest.approx(math.sqrt(28 / 3))
    half = T_975_2 * math.sqrt(28 / 3) / math.sqrt(3)
    assert sm["ci95"] == pytest.approx([94 + 1 / 3 - half, 94 + 1 / 3 + half])
    assert sm["n_seeds"] == 3 and sm["n_videos"] == 6 and sm["backend"] == "lite"
    # dynamic degree: fraction of dynamic videos per seed 0.5, 1.0, 0.5
    dd = a["dynamic_degree"]
    assert dd["mean"] == pytest.approx(2 / 3) and dd["std"] == pytest.approx(math.sqrt(1 / 12))
    # motion score derived per video: per-seed (smoothness + dynamic) / 2
    ms = a["motion_score"]
    assert ms["seed_means"] == pytest.approx([0.705, 0.975, 0.735])
    assert ms["mean"] == pytest.approx((0.705 + 0.975 + 0.735) / 3)
    # unavailable / absent
    assert a["aesthetic_quality"]["display"] == "n/a" and a["aesthetic_quality"]["n_unavailable"] == 6
    assert a["imaging_quality"]["display"] == "n/a" and a["imaging_quality"]["backend"] is None
    assert "n/a: no weights" in t["notes"]
    # one seed: no spread
    b = t["rows"][1]["cells"]["motion_smoothness"]
    assert b["mean"] == pytest.approx(60.0) and b["std"] is None and b["ci95"] is None
    assert b["display"] == "60.00"
    assert sm["display"] == f"94.33 ± {math.sqrt(28 / 3):.2f} [{94 + 1 / 3 - half:.2f}, {94 + 1 / 3 + half:.2f}]"


def test_per_prompt_breakdown(records):
    pp = {(e["model"], e["prompt"], e["metric"]): e for e in table1(records)["per_prompt"]}
    e = pp[("A", "p1", "motion_smoothness")]
    assert e["mean"] == pytest.approx(94.0) and e["std"] == pytest.approx(4.0) and e["n_seeds"] == 3
    assert pp[("A", "p2", "dynamic_degree")]["mean"] == pytest.approx(2 / 3)
    assert pp[("B", "p2", "motion_score")]["mean"] == pytest.approx(0.85)
    assert pp[("A", "p1", "aesthetic_quality")]["display"] == "n/a"


def test_exports(records):
    t = table1(records)
    md = to_markdown(t)
    assert "| Model | Smoothness (%) [lite] | Dynamic degree [lite] | Motion score [lite]" in md
    assert "| A | 94.33 ±" in md and "| B | 60.00 |" in md and "n/a" in md and "not VBench numbers" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(t))))
    first = [r for r in rows if r["section"] == "table1" and r["model"] == "A" and r["metric"] == "motion_smoothness"]
    assert float(first[0]["mean"]) == pytest.approx(94 + 1 / 3) and first[0]["n_seeds"] == "3"
    assert any(r["section"] == "per_prompt" and r["prompt"] == "p2" for r in rows)
    na = [r for r in rows if r["section"] == "table1" and r["metric"] == "imaging_quality"]
    assert na[0]["mean"] == "" and na[0]["ci95_low"] == ""
    back = json.loads(to_json(t))
    assert back["rows"][0]["cells"]["dynamic_degree"]["mean"] == pytest.approx(2 / 3)


def test_write_report_files(records, tmp_path):
    paths = write_report(records, tmp_path / "rep")
    for name in ("report.md", "report.csv", "report.json", "bars.png", "scatter.png"):
        p = tmp_path / "rep" / name
        assert p.is_file() and p.stat().st_size > 100
    assert paths["bars"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_runs_paired():
    a = [
        rec("base", p, s, "motion_smoothness", v)
        for (p, s), v in {("p1", 0): 0.90, ("p1", 1): 0.92, ("p2", 0): 0.80}.items()
    ]
    b = [dict(r, model="new", value=r["value"] + 0.01) for r in a]
    c = compare_runs(a, b, "motion_smoothness")
    assert c["paired"] and c["n_pairs"] == 3
    assert c["difference"] == pytest.approx(0.01) and c["ci95"] == pytest.approx([0.01, 0.01])
    b2 = [dict(r, model="new", value=r["value"] + d) for r, d in zip(a, [0.0, 0.02, 0.04])]
    c2 = compare_runs(a, b2, "motion_smoothness", seed=3)
    assert c2["difference"] == pytest.approx(0.02)
    assert -1e-12 <= c2["ci95"][0] < 0.02 < c2["ci95"][1] <= 0.04 + 1e-12
    assert c2 == compare_runs(a, b2, "motion_smoothness", seed=3)  # deterministic


def test_compare_runs_unpaired_and_motion_score():
    a = [
        rec("x", "p1", 0, "dynamic_degree", 0.0),
        rec("x", "p2", 0, "dynamic_degree", 1.0),
        rec("x", "p1", 0, "motion_smoothness", 0.9),
        rec("x", "p2", 0, "motion_smoothness", 0.9),
    ]
    b = [
        rec("y", "q1", 0, "dynamic_degree", 1.0),
        rec("y", "q2", 0, "dynamic_degree", 1.0),
        rec("y", "q1", 0, "motion_smoothness", 0.8),
        rec("y", "q2", 0, "motion_smoothness", 0.8),
    ]
    c = compare_runs(a, b, "dynamic_degree")
    assert not c["paired"] and c["difference"] == pytest.approx(0.5)
    assert c["ci95"][0] <= 0.5 <= c["ci95"][1]
    m = compare_runs(a, b, "motion_score")  # derived per video
    assert m["mean_a"] == pytest.approx(0.7) and m["mean_b"] == pytest.approx(0.9)


def test_bad_records(records):
    with pytest.raises(ValueError, match="lacks field"):
        table1([{"model": "A", "metric": "dynamic_degree", "value": 1.0}])
    with pytest.raises(ValueError, match="duplicate"):
        table1(records + [records[0]])
    with pytest.raises(ValueError, match="mixes backends"):
        table1(records + [rec("A", "p3", 0, "motion_smoothness", 0.9, backend="vbench")])
    with pytest.raises(ValueError, match="finite"):
        table1([rec("A", "p", 0, "dynamic_degree", float("nan"))])
    with pytest.raises(ValueError, match="several models"):
        compare_runs(records, records, "motion_smoothness")
    with pytest.raises(ValueError, match="empty"):
        table1([])


def test_to_records_and_t_interval():
    r = MetricResult(0.5, "motion_score", "vbench", "abc")
    recs = to_records("m", "p", 3, {"motion_score": r}, extra={"run_id": "r1"})
    assert recs == [
        {
            "model": "m",
            "prompt": "p",
            "seed": 3,
            "metric": "motion_score",
            "value": 0.5,
            "backend": "vbench",
            "model_hash": "abc",
            "evaluator_version": r.evaluator_version,
            "run_id": "r1",
        }
    ]
    assert t_interval([1.0]) is None
    # mean 2, std sqrt(2), n 2: half width = t(0.975, 1) * sqrt(2) / sqrt(2)
    assert t_interval([1.0, 3.0]) == pytest.approx([2 - 12.706204736174698, 2 + 12.706204736174698])
