"""Interactive figures (plotly) and tables (pandas) of the dashboard: the benchmark's Table-1-shaped table and its
plots (grouped bars with 95% intervals, smoothness vs dynamic degree), training curves of a run (losses of every
network, learning rates, throughput) and the win / tie / lose bars of a preference study.

The numbers come from ``evaluator.reports.table1`` and ``evaluator.study.statistics.pairwise_report`` (same
aggregation as the static reports); this module only draws them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from evaluator.reports import table1

BAR_METRICS = ("motion_smoothness", "dynamic_degree", "motion_score", "aesthetic_quality", "imaging_quality")
LAYOUT = {
    "template": "plotly_white",
    "height": 340,
    "margin": {"l": 50, "r": 20, "t": 50, "b": 40},
    "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
}


MAX_LABELLED = 6  # more models than this: legend on the right, scatter points unlabelled (hover shows the model)


def _many(layout: dict[str, Any], n: int) -> dict[str, Any]:
    """``layout`` with the legend moved to the right of the plot when ``n`` models would crowd the top."""
    if n <= MAX_LABELLED:
        return layout
    return {
        **layout,
        "height": max(layout["height"], 60 + 22 * n),
        "legend": {"orientation": "v", "yanchor": "top", "y": 1, "x": 1.02, "font": {"size": 10}},
    }


def _empty(title: str, note: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 14})
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False}, **{**LAYOUT, "height": 220})
    return fig


# --- benchmarks -----------------------------------------------------------------------------------------------


def records_from_scores(scores: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The API's score rows -> ``evaluator.reports`` records."""
    out = []
    for s in scores:
        rec = {
            "model": s["checkpoint"],
            "prompt": s.get("prompt") or "",
            "seed": s.get("seed") or 0,
            "metric": s["metric"],
            "value": s.get("value"),
            "backend": s.get("backend") or "unknown",
        }
        extra = s.get("extra") or {}
        if extra.get("unavailable_reason"):
            rec["unavailable_reason"] = extra["unavailable_reason"]
        out.append(rec)
    return out


def benchmark_table(report: Mapping[str, Any] | None, scores: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The stored Table-1 table of a report, else one computed from its scores."""
    if report and isinstance(report.get("table"), Mapping) and report["table"].get("rows"):
        return dict(report["table"])
    if not scores:
        return None
    return table1(records_from_scores(scores))


def table1_frame(table: Mapping[str, Any]) -> pd.DataFrame:
    """One row per model, one column per Table-1 metric (header names the backend), display strings. An imported
    table whose rows carry the source's own label (``evaluator.table_import``) gets it as a second column."""
    cols = [
        c
        for c in table["columns"]
        if any(
            r["cells"][c["metric"]]["mean"] is not None or r["cells"][c["metric"]]["n_unavailable"]
            for r in table["rows"]
        )
    ]
    labelled = any(r.get("label") and r["label"] != r["model"] for r in table["rows"])
    rows = []
    for r in table["rows"]:
        row = {"Model": r["model"]}
        if labelled:
            row["Row as in the source"] = r["label"] if r.get("label") and r["label"] != r["model"] else ""
        for c in cols:
            head = f"{c['label']} [{'/'.join(c['backends'])}]" if c["backends"] else c["label"]
            row[head] = r["cells"][c["metric"]]["display"]
        rows.append(row)
    return pd.DataFrame(rows)


def per_prompt_frame(table: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "Model": p["model"],
                "Prompt": p["prompt"],
                "Metric": p["label"],
                "Value": p["display"],
                "Seeds": p["n_seeds"],
            }
            for p in table.get("per_prompt", [])
        ]
    )


def _err(cell: Mapping[str, Any]) -> tuple[float, float]:
    if cell.get("ci95"):
        return cell["mean"] - cell["ci95"][0], cell["ci95"][1] - cell["mean"]
    return 0.0, 0.0


def bars_figure(
    table: Mapping[str, Any] | None, title: str = "Benchmark: mean over seeds with 95% interval"
) -> go.Figure:
    """Grouped bars per metric (0-1 scale), one bar per model, 95% Student-t interval over seeds (where known)."""
    if not table or not table.get("rows"):
        return _empty(title, "no scores yet")
    cols = [
        c
        for c in table["columns"]
        if c["metric"] in BAR_METRICS and any(r["cells"][c["metric"]]["mean"] is not None for r in table["rows"])
    ]
    if not cols:
        return _empty(title, "no metric has a value")
    fig = go.Figure()
    for r in table["rows"]:
        xs, ys, lo, hi, text = [], [], [], [], []
        for c in cols:
            cell = r["cells"][c["metric"]]
            if cell["mean"] is None:
                continue
            e = _err(cell)
            xs.append(c["label"].replace(" (%)", ""))
            ys.append(cell["mean"] / c["scale"])
            lo.append(e[0] / c["scale"])
            hi.append(e[1] / c["scale"])
            text.append(cell["display"])
        fig.add_trace(
            go.Bar(
                name=r["model"],
                x=xs,
                y=ys,
                hovertext=text,
                hoverinfo="name+x+text",
                error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo},
            )
        )
    fig.update_layout(title=title, barmode="group", yaxis_title="score (0-1)", **_many(LAYOUT, len(table["rows"])))
    return fig


def scatter_figure(table: Mapping[str, Any] | None) -> go.Figure:
    """Motion smoothness (%) against dynamic degree, one point per model with 95% intervals."""
    title = "Smoothness vs dynamics"
    pts = [
        r
        for r in (table or {}).get("rows", [])
        if r["cells"]["motion_smoothness"]["mean"] is not None and r["cells"]["dynamic_degree"]["mean"] is not None
    ]
    if not pts:
        return _empty(title, "no smoothness / dynamic degree values yet")
    fig = go.Figure()
    crowded = len(pts) > MAX_LABELLED
    for r in pts:
        sm, dd = r["cells"]["motion_smoothness"], r["cells"]["dynamic_degree"]
        es, ed = _err(sm), _err(dd)
        fig.add_trace(
            go.Scatter(
                x=[dd["mean"]],
                y=[sm["mean"]],
                mode="markers" if crowded else "markers+text",
                name=r["model"],
                text=[r["model"]],
                textposition="top center",
                marker={"size": 11},
                error_x={"type": "data", "symmetric": False, "array": [ed[1]], "arrayminus": [ed[0]]},
                error_y={"type": "data", "symmetric": False, "array": [es[1]], "arrayminus": [es[0]]},
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title="Dynamic degree",
        yaxis_title="Motion smoothness (%)",
        showlegend=crowded,
        **_many(LAYOUT, len(pts)),
    )
    return fig


# --- training curves ------------------------------------------------------------------------------------------


def flatten_metrics(items: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-step metric records (``{"step", "values": {...}}`` from the API, or the trainer's metrics.jsonl lines)
    -> long table (step, series, value). Learning rates appear as ``lr/<network>``, throughput as ``steps/s``."""
    rows = []
    for it in items:
        step = it.get("step")
        values = dict(it.get("values") or {k: v for k, v in it.items() if k not in ("step", "time")})
        for k, v in values.items():
            if isinstance(v, Mapping):  # {"lr": {"generator": 5e-5, ...}}
                for k2, v2 in v.items():
                    if isinstance(v2, (int, float)) and not isinstance(v2, bool):
                        rows.append({"step": step, "series": f"{k}/{k2}", "value": float(v2)})
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            name = k
            if k.startswith("lr."):
                name = "lr/" + k[3:]
            if k == "sec_per_step":
                if v > 0:
                    rows.append({"step": step, "series": "steps/s", "value": 1.0 / float(v)})
                continue
            rows.append({"step": step, "series": name, "value": float(v)})
    return pd.DataFrame(rows, columns=["step", "series", "value"])


def _lines(df: pd.DataFrame, title: str, ytitle: str, note: str, log_y: bool = False) -> go.Figure:
    if df.empty:
        return _empty(title, note)
    fig = go.Figure()
    for name, g in df.groupby("series", sort=True):
        g = g.sort_values("step")
        fig.add_trace(
            go.Scatter(
                x=g["step"].tolist(),
                y=g["value"].tolist(),
                mode="lines+markers" if len(g) < 30 else "lines",
                name=str(name),
            )
        )
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=ytitle, **LAYOUT)
    if log_y and (df["value"] > 0).all():
        fig.update_yaxes(type="log")
    return fig


def curve_figures(df: pd.DataFrame) -> tuple[go.Figure, go.Figure, go.Figure]:
    """(losses of every network, learning rates, throughput)."""
    is_loss = df["series"].str.contains("loss") if not df.empty else pd.Series(dtype=bool)
    is_lr = df["series"].str.startswith("lr/") if not df.empty else pd.Series(dtype=bool)
    is_thr = df["series"].eq("steps/s") if not df.empty else pd.Series(dtype=bool)
    losses = _lines(df[is_loss] if not df.empty else df, "Losses (every network)", "loss", "no losses logged yet")
    lrs = _lines(
        df[is_lr] if not df.empty else df, "Learning rates", "learning rate", "no learning rates logged yet", log_y=True
    )
    thr = _lines(df[is_thr] if not df.empty else df, "Throughput", "steps / s", "no timing logged yet")
    return losses, lrs, thr


# --- studies ----------------------------------------------------------------------------------------------------


def win_tie_lose_figure(rows: Sequence[Mapping[str, Any]], title: str = "Human preference") -> go.Figure:
    """Stacked horizontal bars (win | tie | lose of model_a against model_b), one per question and pair, with the
    colours of ``evaluator.study.plots`` (MoGAN Fig. 5)."""
    if not rows:
        return _empty(title, "no responses yet")
    try:
        from evaluator.study.plots import SEGMENT_COLORS  # heavy: matplotlib, for its three colours
    except ImportError:
        SEGMENT_COLORS = {"win": "#2e7d32", "tie": "#9e9e9e", "lose": "#c62828"}
    labels = [f"{r['model_a']} vs {r['model_b']} · {r['question']} (n={r.get('n', '?')})" for r in rows]
    fig = go.Figure()
    for seg in ("win", "tie", "lose"):
        vals = [float(r["rates"][seg]) for r in rows]
        fig.add_trace(
            go.Bar(
                y=labels,
                x=vals,
                name=seg,
                orientation="h",
                marker_color=SEGMENT_COLORS[seg],
                text=[f"{v:.0%}" if v >= 0.06 else "" for v in vals],
                textposition="inside",
                hovertemplate="%{y}<br>" + seg + ": %{x:.1%}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title,
        barmode="stack",
        xaxis={"range": [0, 1], "tickformat": ".0%"},
        legend_traceorder="normal",
        **{**LAYOUT, "height": max(220, 90 + 48 * len(rows)), "margin": {"l": 260, "r": 20, "t": 60, "b": 40}},
    )
    fig.update_yaxes(autorange="reversed")
    return fig


__all__ = [
    "bars_figure",
    "benchmark_table",
    "curve_figures",
    "flatten_metrics",
    "per_prompt_frame",
    "records_from_scores",
    "scatter_figure",
    "table1_frame",
    "win_tie_lose_figure",
]
