"""Claim verdicts from a Table 1: intervals of differences of seed means, paired over shared seeds."""

import numpy as np
import pytest
from scipy import stats

from evaluator.claims import CONTRADICTED, MISSING, SUPPORTED, UNRESOLVED, Claim, claim_verdicts, difference
from evaluator.reports import table1, write_report


def _records(model: str, metric: str, per_seed: list[float], prompts=("p1", "p2")) -> list[dict]:
    # each seed's prompts average to the given value: +-0.01 around it
    out = []
    for seed, v in enumerate(per_seed):
        for j, p in enumerate(prompts):
            out.append(
                {
                    "model": model,
                    "prompt": p,
                    "seed": seed,
                    "metric": metric,
                    "value": v + (0.01 if j else -0.01),
                    "backend": "lite",
                }
            )
    return out


def test_paired_interval_matches_a_hand_computed_t_interval():
    base = {"seeds": [0, 1, 2, 3], "seed_means": [0.50, 0.52, 0.49, 0.51]}
    other = {"seeds": [0, 1, 2, 3], "seed_means": [0.40, 0.45, 0.41, 0.40]}
    d = difference(base, other)
    diffs = np.array(other["seed_means"]) - np.array(base["seed_means"])
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
    assert d["paired"] and d["difference"] == pytest.approx(diffs.mean())
    assert d["ci95"] == pytest.approx([diffs.mean() - half, diffs.mean() + half])
    welch = difference(base, {**other, "seeds": [5, 6, 7, 8]})  # other seeds: not paired
    assert not welch["paired"] and welch["ci95"][1] - welch["ci95"][0] != pytest.approx(2 * half)
    assert difference({"seeds": [0], "seed_means": [0.5]}, other) is None


def test_verdicts_supported_contradicted_unresolved_and_missing():
    records = (
        _records("teacher", "dynamic_degree", [0.60, 0.62, 0.61])
        + _records("dmd", "dynamic_degree", [0.40, 0.41, 0.43])  # clearly lower: supports "lower"
        + _records("teacher", "motion_swd", [1.0, 1.1, 0.9])
        + _records("dmd", "motion_swd", [0.5, 0.55, 0.52])  # clearly lower: contradicts "higher"
        + _records("teacher", "visual_swd", [0.10, 0.30, 0.20])
        + _records("dmd", "visual_swd", [0.25, 0.12, 0.21])
    )  # noisy: spans 0
    table = table1(records)
    claims = [
        Claim("loses dynamics", "teacher", "dmd", (("dynamic_degree", "lower"),)),
        Claim("worse motion", "teacher", "dmd", (("dynamic_degree", "lower"), ("motion_swd", "higher"))),
        Claim("visual", "teacher", "dmd", (("visual_swd", "lower"),)),
        Claim("keeps visual", "teacher", "dmd", (("visual_swd", "not_worse"),)),
        Claim("no such row", "teacher", "mogan", (("visual_swd", "lower"),)),
    ]
    v = {x["claim"]: x for x in claim_verdicts(table, claims)}
    assert v["loses dynamics"]["verdict"] == SUPPORTED
    assert v["worse motion"]["verdict"] == CONTRADICTED
    assert [m["verdict"] for m in v["worse motion"]["measures"]] == [SUPPORTED, CONTRADICTED]
    assert v["visual"]["verdict"] == UNRESOLVED and v["keeps visual"]["verdict"] == SUPPORTED
    assert v["no such row"]["verdict"] == MISSING
    # not_worse is contradicted by a clear harm (visual SWD higher is worse)
    harm = table1(_records("a", "visual_swd", [0.1, 0.11, 0.1]) + _records("b", "visual_swd", [0.3, 0.31, 0.32]))
    assert (
        claim_verdicts(harm, [Claim("keeps", "a", "b", (("visual_swd", "not_worse"),))])[0]["verdict"] == CONTRADICTED
    )


def test_report_shows_the_verdicts_of_the_tiny_claims(tmp_path):
    records = _records("teacher-50step", "dynamic_degree", [0.6, 0.62, 0.61]) + _records(
        "dmd", "dynamic_degree", [0.4, 0.41, 0.43]
    )
    text = write_report(records, tmp_path)["markdown"].read_text()
    assert "## The papers' claims on this table" in text
    assert "DMD loses dynamics against the teacher (`dmd` vs `teacher-50step`) | **not resolved**" in text
    assert "| dynamic_degree | lower |" in text and "(supported)" in text
    assert "MoGAN restores" not in text  # its rows are not in the table
