"""Benchmark reports: a MoGAN-Table-1-shaped table with the spread over seeds, per-prompt breakdowns, plots,
CSV/JSON/Markdown export, and the comparison of two runs.

Input is a list of score records, one per (model, prompt, seed, metric)::

    {"model": "mogan-3step", "prompt": "a dog runs", "seed": 0, "metric": "motion_smoothness",
     "value": 0.981, "backend": "vbench"}          # value None = unavailable (optional "unavailable_reason")

Aggregation: per model, metric and seed, the mean over prompts (for dynamic degree: the
fraction of dynamic videos); then over seeds the mean, the sample standard deviation and a 95% Student-t interval.
``motion_score`` records are used when present, else derived per video as the mean of motion smoothness and dynamic
degree. Smoothness is shown in percent; unavailable cells read "n/a". Scores of different backends are never
averaged together (ValueError); the backend is printed with every column.

    table = table1(records)
    print(to_markdown(table))
    compare_runs(records_baseline, records_new, "motion_score")   # difference new - baseline, 95% interval
    write_report(records, "out/")   # report.md, report.csv, report.json, bars.png, scatter.png

Plain dicts and lists throughout (no pandas); plots with matplotlib's Agg backend.
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

from evaluator.claims import claim_verdicts, claims_markdown
from evaluator.conformance import conformance_report, format_table, summarize

# (metric, column label, display scale): MoGAN Table 1's columns, then the motion-fidelity group.
TABLE1_COLUMNS: tuple[tuple[str, str, float], ...] = (
    ("motion_smoothness", "Smoothness (%)", 100.0),
    ("dynamic_degree", "Dynamic degree", 1.0),
    ("motion_score", "Motion score", 1.0),
    ("aesthetic_quality", "Aesthetic", 1.0),
    ("imaging_quality", "Imaging quality", 1.0),
    # weight-free fidelity (lower is better): sliced Wasserstein distance of frame patches between generated and
    # real videos, one value per (model, seed) over all prompts
    ("visual_swd", "Visual SWD (lower better)", 1.0),
    # the motion-fidelity group (MOTION_FIDELITY_METRICS): does the motion match the caption and the real videos
    ("conformance/motion_ok", "Caption motion (share of videos)", 1.0),
    ("conformance/colour_ok", "Caption colour (share of videos)", 1.0),
    ("dynamic_degree_gap", "Dynamic degree gap to real (lower better)", 1.0),
    ("motion_swd", "Motion SWD (lower better)", 1.0),
)
MOTION_FIDELITY_METRICS = ("conformance/motion_ok", "conformance/colour_ok", "dynamic_degree_gap", "motion_swd")
MOTION_FIDELITY_NOTE = (
    "motion fidelity (the last columns): caption motion / colour = share of videos whose motion (the family's own "
    "check: direction, rotation sense, scale direction, bounce, stillness) / object colour is the caption's; "
    "dynamic degree gap = |dynamic degree - the real videos'|; motion SWD = sliced Wasserstein distance of per-video "
    "flow statistics to the real videos. Dynamic degree alone rewards motion wherever it is, static scenes included."
)
NA = "n/a"
# The prompt of a record that scores a model's whole set of videos of one seed (the fidelity figures), not a prompt.
SET_PROMPT = "(all prompts)"
REQUIRED_KEYS = ("model", "prompt", "seed", "metric", "value", "backend")


# ----------------------------------------------------------------------------------------------------------------
# records


def to_records(
    model: str, prompt: str, seed: int, results: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Records from one video's ``score_video`` output (``{metric: MetricResult}``), keeping hash and version."""
    out = []
    for name, r in results.items():
        rec = {
            "model": model,
            "prompt": prompt,
            "seed": int(seed),
            "metric": name,
            "value": r.value,
            "backend": r.backend,
            "model_hash": r.model_hash,
            "evaluator_version": r.evaluator_version,
        }
        if r.unavailable_reason:
            rec["unavailable_reason"] = r.unavailable_reason
        rec.update(extra or {})
        out.append(rec)
    return out


def _validate(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ValueError(f"records[{i}] must be a dict, got {type(r).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"records[{i}] lacks field(s) {missing} (needs {list(REQUIRED_KEYS)})")
        v = r["value"]
        if v is not None:
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"records[{i}].value must be a number or None, got {v!r}") from None
            if not math.isfinite(v):
                raise ValueError(f"records[{i}].value must be finite, got {v!r}")
        out.append(
            {
                **r,
                "value": v,
                "model": str(r["model"]),
                "prompt": str(r["prompt"]),
                "metric": str(r["metric"]),
            }
        )
    if not out:
        raise ValueError("records must not be empty")
    return out


def _index(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[tuple[str, Any], dict[str, Any]]]:
    """(model, metric) -> (prompt, seed) -> record; adds derived motion_score records where parts exist."""
    idx: dict[tuple[str, str], dict[tuple[str, Any], dict[str, Any]]] = {}
    for i, r in enumerate(records):
        cell = idx.setdefault((r["model"], r["metric"]), {})
        key = (r["prompt"], r["seed"])
        if key in cell:
            raise ValueError(
                f"records[{i}]: duplicate score for model={r['model']!r} metric={r['metric']!r} "
                f"prompt={r['prompt']!r} seed={r['seed']!r}"
            )
        cell[key] = r
    for model in _ordered(r["model"] for r in records):
        if (model, "motion_score") in idx:
            continue
        sm, dd = idx.get((model, "motion_smoothness"), {}), idx.get((model, "dynamic_degree"), {})
        derived = {}
        for key in sm.keys() & dd.keys():
            a, b = sm[key], dd[key]
            if a["backend"] != b["backend"]:
                raise ValueError(
                    f"model {model!r}: smoothness and dynamic degree of {key} come from different backends"
                )
            value = None if a["value"] is None or b["value"] is None else 0.5 * (a["value"] + b["value"])
            derived[key] = {**a, "metric": "motion_score", "value": value, "derived": True}
        if derived:
            idx[(model, "motion_score")] = dict(sorted(derived.items(), key=lambda kv: _sort_key(kv[0])))
    return idx


def _sort_key(key: tuple[str, Any]) -> tuple[str, str]:
    return (str(key[0]), str(key[1]))


def _ordered(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _backend_of(cell: dict[tuple[str, Any], dict[str, Any]], model: str, metric: str) -> str:
    backends = _ordered(r["backend"] for r in cell.values())
    if len(backends) > 1:
        raise ValueError(
            f"model {model!r} metric {metric!r} mixes backends {backends}; scores of different backends are not "
            "comparable and are never averaged together"
        )
    return backends[0]


# ----------------------------------------------------------------------------------------------------------------
# statistics


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean; None for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return (float(x.mean() - half), float(x.mean() + half))


def _summary(values: Sequence[float], scale: float) -> dict[str, Any]:
    x = np.asarray(values, dtype=np.float64) * scale
    ci = t_interval(x)
    return {
        "mean": float(x.mean()) if x.size else None,
        "std": float(x.std(ddof=1)) if x.size > 1 else None,
        "ci95": list(ci) if ci else None,
    }


def _fmt(v: float | None, scale: float) -> str:
    if v is None:
        return NA
    return f"{v:.2f}" if scale >= 10 else f"{v:.3f}"


def _display(s: dict[str, Any], scale: float) -> str:
    if s["mean"] is None:
        return NA
    text = _fmt(s["mean"], scale)
    if s["std"] is not None:
        text += f" ± {_fmt(s['std'], scale)}"
    if s["ci95"] is not None:
        text += f" [{_fmt(s['ci95'][0], scale)}, {_fmt(s['ci95'][1], scale)}]"
    return text


def _cell(model: str, metric: str, label: str, scale: float, cell: dict | None) -> dict[str, Any]:
    base = {"metric": metric, "label": label, "scale": scale}
    if not cell:
        return {
            **base,
            "backend": None,
            "mean": None,
            "std": None,
            "ci95": None,
            "n_seeds": 0,
            "n_videos": 0,
            "n_unavailable": 0,
            "seeds": [],
            "seed_means": [],
            "display": NA,
            "unavailable_reasons": [],
        }
    backend = _backend_of(cell, model, metric)
    per_seed: dict[Any, list[float]] = {}
    n_unavail = 0
    for (_, seed), r in cell.items():
        if r["value"] is None:
            n_unavail += 1
            continue
        per_seed.setdefault(seed, []).append(r["value"])
    seeds = sorted(per_seed, key=str)
    seed_means = [float(np.mean(per_seed[k])) for k in seeds]
    s = _summary(seed_means, scale)
    reasons = _ordered(r.get("unavailable_reason") for r in cell.values() if r["value"] is None)
    return {
        **base,
        "backend": backend,
        **s,
        "n_seeds": len(seed_means),
        "n_videos": sum(len(v) for v in per_seed.values()),
        "n_unavailable": n_unavail,
        "seeds": seeds,
        "seed_means": [m * scale for m in seed_means],
        "display": _display(s, scale),
        "unavailable_reasons": [x for x in reasons if x],
    }


def table1(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The table in the shape of MoGAN's Table 1, plus the per-prompt breakdown (plain dicts and lists).

    ``{"columns": [...], "rows": [{"model", "cells": {metric: cell}}], "per_prompt": [...], "notes": [...]}``;
    a cell holds ``mean``, ``std``, ``ci95`` (over seeds, in display units: smoothness in %), ``n_seeds``,
    ``n_videos``, ``n_unavailable``, ``backend`` and ``display`` (``"n/a"`` when nothing is available).
    """
    recs = _validate(records)
    idx = _index(recs)
    models = _ordered(r["model"] for r in recs)
    prompts = _ordered(r["prompt"] for r in recs if r["prompt"] != SET_PROMPT)
    rows = []
    for model in models:
        cells = {m: _cell(model, m, label, scale, idx.get((model, m))) for m, label, scale in TABLE1_COLUMNS}
        rows.append({"model": model, "cells": cells})
    per_prompt = []
    for model in models:
        for prompt in prompts:
            for metric, label, scale in TABLE1_COLUMNS:
                cell = idx.get((model, metric), {})
                vals = [r["value"] for (p, _), r in cell.items() if p == prompt and r["value"] is not None]
                n_unavail = sum(1 for (p, _), r in cell.items() if p == prompt and r["value"] is None)
                if not vals and not n_unavail:
                    continue
                s = _summary(vals, scale)
                per_prompt.append(
                    {
                        "model": model,
                        "prompt": prompt,
                        "metric": metric,
                        "label": label,
                        "backend": _backend_of(cell, model, metric),
                        **s,
                        "n_seeds": len(vals),
                        "n_unavailable": n_unavail,
                        "display": _display(s, scale),
                    }
                )
    columns = []
    for metric, label, scale in TABLE1_COLUMNS:
        backends = _ordered(r["cells"][metric]["backend"] for r in rows if r["cells"][metric]["backend"])
        columns.append(
            {
                "metric": metric,
                "label": label,
                "scale": scale,
                "backends": backends,
                "group": "motion fidelity" if metric in MOTION_FIDELITY_METRICS else "table 1",
            }
        )
    notes = [
        (
            "mean ± std over seeds [95% Student-t interval]; per seed, the mean over prompts "
            "(dynamic degree: the fraction of dynamic videos); smoothness in %."
        ),
        "motion score = mean of motion smoothness and dynamic degree.",
    ]
    if any(c["backends"] for c in columns if c["group"] == "motion fidelity"):
        notes.append(MOTION_FIDELITY_NOTE)
    if any("lite" in c["backends"] for c in columns):
        notes.append("lite = weight-free OpenCV-flow backend; its numbers are not VBench numbers.")
    reasons = _ordered(x for r in rows for c in r["cells"].values() for x in c["unavailable_reasons"])
    notes += [f"n/a: {x}" for x in reasons]
    return {
        "columns": columns,
        "rows": rows,
        "models": models,
        "prompts": prompts,
        "per_prompt": per_prompt,
        "notes": notes,
    }


# ----------------------------------------------------------------------------------------------------------------
# export


def _col_header(col: dict[str, Any]) -> str:
    return f"{col['label']} [{'/'.join(col['backends'])}]" if col["backends"] else col["label"]


def to_markdown(table: Mapping[str, Any], title: str = "Motion benchmark (MoGAN Table 1 layout)") -> str:
    cols = table["columns"]
    lines = [
        f"## {title}",
        "",
        "| Model | " + " | ".join(_col_header(c) for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for row in table["rows"]:
        lines.append(f"| {row['model']} | " + " | ".join(row["cells"][c["metric"]]["display"] for c in cols) + " |")
    lines += [""] + [f"- {n}" for n in table["notes"]]
    if table["per_prompt"]:
        lines += [
            "",
            "### Per prompt (mean ± std over seeds)",
            "",
            "| Model | Prompt | " + " | ".join(c["label"] for c in cols) + " |",
            "|---|---|" + "---|" * len(cols),
        ]
        by = {(e["model"], e["prompt"], e["metric"]): e["display"] for e in table["per_prompt"]}
        for model in table["models"]:
            for prompt in table["prompts"]:
                cells = [by.get((model, prompt, c["metric"]), NA) for c in cols]
                if all(x == NA for x in cells) and not any((model, prompt, c["metric"]) in by for c in cols):
                    continue
                lines.append(f"| {model} | {_md_escape(prompt)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


CSV_FIELDS = (
    "section",
    "model",
    "prompt",
    "metric",
    "label",
    "backend",
    "mean",
    "std",
    "ci95_low",
    "ci95_high",
    "n_seeds",
    "n_videos",
    "n_unavailable",
)


def to_csv(table: Mapping[str, Any]) -> str:
    """One CSV: ``section`` = "table1" rows (per model and metric) then "per_prompt" rows; empty = n/a."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()

    def row(section: str, model: str, prompt: str, e: Mapping[str, Any]) -> dict[str, Any]:
        ci = e.get("ci95") or [None, None]
        vals = {"mean": e["mean"], "std": e["std"], "ci95_low": ci[0], "ci95_high": ci[1]}
        return {
            "section": section,
            "model": model,
            "prompt": prompt,
            "metric": e["metric"],
            "label": e["label"],
            "backend": e["backend"] or "",
            **{k: ("" if v is None else repr(float(v))) for k, v in vals.items()},
            "n_seeds": e["n_seeds"],
            "n_videos": e.get("n_videos", e["n_seeds"]),
            "n_unavailable": e["n_unavailable"],
        }

    for r in table["rows"]:
        for c in table["columns"]:
            w.writerow(row("table1", r["model"], "", r["cells"][c["metric"]]))
    for e in table["per_prompt"]:
        w.writerow(row("per_prompt", e["model"], e["prompt"], e))
    return buf.getvalue()


def to_json(table: Mapping[str, Any]) -> str:
    return json.dumps(table, indent=2, allow_nan=False, default=str)


# ----------------------------------------------------------------------------------------------------------------
# plots


def _err(cell: Mapping[str, Any]) -> tuple[float, float]:
    if cell["ci95"] is not None:
        return cell["mean"] - cell["ci95"][0], cell["ci95"][1] - cell["mean"]
    return 0.0, 0.0


def plot_bars(table: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars: one group per metric (all on a 0-1 scale), one bar per model, 95% interval error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in table["columns"] if any(r["cells"][c["metric"]]["mean"] is not None for r in table["rows"])]
    models = [r["model"] for r in table["rows"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * max(1, len(cols)) + 0.3 * len(models) * len(cols)), 4))
    width = 0.8 / max(1, len(models))
    for i, r in enumerate(table["rows"]):
        xs, ys, lo, hi = [], [], [], []
        for j, c in enumerate(cols):
            cell = r["cells"][c["metric"]]
            if cell["mean"] is None:
                continue
            e = _err(cell)
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(cell["mean"] / c["scale"])
            lo.append(e[0] / c["scale"])
            hi.append(e[1] / c["scale"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=r["model"])
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([c["label"].replace(" (%)", "") for c in cols])
    ax.set_ylabel("score (0-1)")
    ax.set_title("Mean over seeds, 95% interval")
    if models:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_scatter(table: Mapping[str, Any], path: str | Path) -> Path:
    """Motion smoothness (%) against dynamic degree, one point per model with 95% interval bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for r in table["rows"]:
        sm, dd = r["cells"]["motion_smoothness"], r["cells"]["dynamic_degree"]
        if sm["mean"] is None or dd["mean"] is None:
            continue
        ax.errorbar(
            dd["mean"],
            sm["mean"],
            xerr=np.array(_err(dd))[:, None],
            yerr=np.array(_err(sm))[:, None],
            fmt="o",
            capsize=3,
            label=r["model"],
        )
        ax.annotate(r["model"], (dd["mean"], sm["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("Dynamic degree")
    ax.set_ylabel("Motion smoothness (%)")
    ax.set_title("Smoothness vs dynamics")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------
# comparison of two runs


def _values(records: list[dict[str, Any]], metric: str, name: str) -> dict[tuple[str, Any], float]:
    models = _ordered(r["model"] for r in records)
    if len(models) > 1:
        raise ValueError(f"{name} holds several models {models}; pass the records of one run")
    idx = _index(records)
    cell = idx.get((models[0], metric), {})
    if not cell:
        raise ValueError(f"{name} has no {metric!r} scores")
    _backend_of(cell, models[0], metric)
    return {k: r["value"] for k, r in cell.items() if r["value"] is not None}


def compare_runs(
    records_a: Iterable[Mapping[str, Any]],
    records_b: Iterable[Mapping[str, Any]],
    metric: str,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Difference of means ``mean(b) - mean(a)`` of one metric with a bootstrap ``level`` interval.

    Paired when the runs share at least two (prompt, seed) videos: the differences of those pairs are resampled
    (the means are then over the shared videos only). Otherwise each run's videos are resampled independently.
    Deterministic for ``seed``."""
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    ra, rb = _validate(records_a), _validate(records_b)
    if {r["backend"] for r in ra if r["metric"] == metric} != {r["backend"] for r in rb if r["metric"] == metric}:
        raise ValueError(f"runs scored {metric!r} with different backends; they are not comparable")
    va, vb = _values(ra, metric, "records_a"), _values(rb, metric, "records_b")
    rng = np.random.default_rng(seed)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    common = sorted(va.keys() & vb.keys(), key=_sort_key)
    if len(common) >= 2:
        a = np.array([va[k] for k in common])
        b = np.array([vb[k] for k in common])
        d = b - a
        boots = d[rng.integers(0, d.size, (n_boot, d.size))].mean(axis=1)
        lo, hi = np.percentile(boots, q)
        return {
            "metric": metric,
            "paired": True,
            "n_pairs": int(d.size),
            "mean_a": float(a.mean()),
            "mean_b": float(b.mean()),
            "difference": float(d.mean()),
            "ci95": [float(lo), float(hi)],
            "level": level,
            "method": "paired bootstrap over (prompt, seed) videos",
            "n_boot": n_boot,
        }
    a, b = np.array(list(va.values())), np.array(list(vb.values()))
    boots = b[rng.integers(0, b.size, (n_boot, b.size))].mean(axis=1) - a[
        rng.integers(0, a.size, (n_boot, a.size))
    ].mean(axis=1)
    lo, hi = np.percentile(boots, q)
    return {
        "metric": metric,
        "paired": False,
        "n_a": int(a.size),
        "n_b": int(b.size),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "difference": float(b.mean() - a.mean()),
        "ci95": [float(lo), float(hi)],
        "level": level,
        "method": "independent bootstrap of each run's videos",
        "n_boot": n_boot,
    }


# ----------------------------------------------------------------------------------------------------------------


def conformance_markdown(
    records: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]] | None = None
) -> str:
    """The caption-conformance section of report.md ("" without conformance records)."""
    per_model = conformance_report(records, reference)
    if not per_model:
        return ""
    ref = summarize(reference) if reference else None
    lines = [
        "",
        "## Caption conformance (per family; cells: generated (real clips))"
        if ref
        else "## Caption conformance (per family)",
        "",
    ]
    for model, summary in per_model.items():
        lines += [f"### {model}", "", "```", format_table(summary, ref), "```", ""]
    return "\n".join(lines)


def write_report(
    records: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    title: str = "Motion benchmark (MoGAN Table 1 layout)",
    conformance_reference: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write report.md, report.csv, report.json, bars.png and scatter.png into ``out_dir``; returns the paths.

    Caption-conformance records (``evaluator.conformance``), if any, add a per-family table for each model to
    report.md, next to ``conformance_reference`` (``measure_video`` rows of real clips) when given; rows that the
    papers' claims compare (``evaluator.claims.TINY_CLAIMS``) add the verdicts.
    """
    records = list(records)
    table = table1(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "csv": out / "report.csv", "json": out / "report.json"}
    paths["markdown"].write_text(
        to_markdown(table, title)
        + claims_markdown(claim_verdicts(table))
        + conformance_markdown(records, conformance_reference)
    )
    paths["csv"].write_text(to_csv(table))
    paths["json"].write_text(to_json(table))
    paths["bars"] = plot_bars(table, out / "bars.png")
    paths["scatter"] = plot_scatter(table, out / "scatter.png")
    return paths
