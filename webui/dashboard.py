"""Dashboard tab: benchmark reports (the Table-1-shaped table and its plots), study results (win / tie / lose bars)
and training curves of runs (losses of every network, learning rates, throughput), all as interactive plots.

Everything is read through the API with the person's key (``read`` scope): ``/v1/benchmarks/{id}/report``,
``/v1/studies/{id}/results``, ``/v1/runs/{id}`` and ``/v1/runs/{id}/metrics``. For a run the API has granted, the
trainer's own ``metrics.jsonl`` in the run's directory is preferred when present: it also records learning rates
and seconds per step, which the per-step progress rows do not carry.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr
import pandas as pd

from webui import plots
from webui.common import UiContext, error_status, status

_EMPTY = pd.DataFrame()


async def run_metric_rows(ctx: UiContext, key: str, run_id: str) -> tuple[dict[str, Any], pd.DataFrame, str]:
    """(run, long metrics table, where the numbers came from) for a run the key may read."""
    api = ctx.api(key)
    run = await api.get(f"/v1/runs/{run_id}")  # access check first: nothing is read for a run the key cannot see
    jsonl = ctx.app.state.store.path("runs", run_id) / "metrics.jsonl"
    if jsonl.is_file():
        recs = []
        for line in jsonl.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:
                continue  # a torn last line while the trainer writes
        if recs:
            return run, plots.flatten_metrics(recs), "the trainer's metrics.jsonl"
    items: list[dict[str, Any]] = []
    after = -1
    while True:
        page = (await api.get(f"/v1/runs/{run_id}/metrics", after_step=after, limit=10_000))["items"]
        items += page
        if len(page) < 10_000:
            break
        after = page[-1]["step"]
    return run, plots.flatten_metrics(items), "GET /v1/runs/{id}/metrics"


def _run_label(r: dict[str, Any]) -> str:
    return f"{r.get('name') or r['id']} · {r['method']} · {r['status']} · step {r['step']}/{r.get('total_steps') or '?'}"


def _bench_label(b: dict[str, Any]) -> str:
    return f"{b.get('name') or b['id']} · {b['status']} · {', '.join((b.get('config') or {}).get('checkpoints', []))}"


def study_view(res: dict[str, Any]) -> tuple[Any, pd.DataFrame, str]:
    """(win/tie/lose figure, table, notes) of a study's results (``GET /v1/studies/{id}/results``)."""
    labels = (res.get("study") or {}).get("question_labels") or {}
    rows = [{**r, "question": labels.get(r["question"], r["question"])} for r in res.get("pairwise") or []]
    fig = plots.win_tie_lose_figure(rows, title=f"Human preference: {(res.get('study') or {}).get('name', '')}")
    table_rows = []
    for r in rows:
        iv = r.get("intervals") or {}
        table_rows.append({"question": r["question"], "pair": f"{r['model_a']} vs {r['model_b']}", "n": r.get("n"),
                           "win": f"{r['rates']['win']:.0%}", "tie": f"{r['rates']['tie']:.0%}",
                           "lose": f"{r['rates']['lose']:.0%}",
                           "win 95% CI": (f"[{iv['win'][0]:.0%}, {iv['win'][1]:.0%}]" if iv.get("win") else ""),
                           "sign test p": (f"{r['sign_test_p']:.3g}" if r.get("sign_test_p") is not None else "")})
    for r in res.get("likert") or []:
        table_rows.append({"question": labels.get(r.get("question"), r.get("question")), "pair": r.get("model"),
                           "n": r.get("n"), "win": "", "tie": "", "lose": "",
                           "win 95% CI": "", "sign test p": "",
                           "mean": f"{r['mean']:.2f}" if r.get("mean") is not None else ""})
    notes = [f"{res.get('n_used', 0)} responses used"]
    if res.get("excluded_annotators"):
        notes.append(f"{len(res['excluded_annotators'])} annotators excluded (failed gold checks)")
    return fig, pd.DataFrame(table_rows), "; ".join(notes) + "."


def build(ctx: UiContext) -> None:
    gr.Markdown("### Benchmarks")
    with gr.Row():
        bench = gr.Dropdown(label="Benchmark", choices=[], elem_id="dash-bench", scale=4)
        refresh = gr.Button("↻ Refresh lists", elem_id="dash-refresh", scale=1)
        bench_go = gr.Button("Show report", variant="primary", elem_id="dash-bench-show", scale=1)
    bench_state = gr.HTML(status("info", "Pick a benchmark (POST /v1/benchmarks runs one)."), elem_id="dash-bench-status")
    table = gr.Dataframe(label="Motion benchmark (MoGAN Table 1 layout): mean ± std over seeds [95% interval]",
                         interactive=False, elem_id="dash-table", wrap=True)
    notes = gr.Markdown("", elem_id="dash-notes")
    with gr.Row():
        bars = gr.Plot(label="Scores", elem_id="dash-bars")
        scatter = gr.Plot(label="Smoothness vs dynamic degree", elem_id="dash-scatter")
    with gr.Accordion("Per-prompt breakdown", open=False):
        per_prompt = gr.Dataframe(interactive=False, elem_id="dash-per-prompt")

    gr.Markdown("### Training curves")
    with gr.Row():
        run = gr.Dropdown(label="Run", choices=[], elem_id="dash-run", scale=4)
        run_go = gr.Button("Show curves", variant="primary", elem_id="dash-run-show", scale=1)
    run_state = gr.HTML("", elem_id="dash-run-status")
    with gr.Row():
        loss_plot = gr.Plot(label="Losses", elem_id="dash-losses")
        lr_plot = gr.Plot(label="Learning rates", elem_id="dash-lr")
        thr_plot = gr.Plot(label="Throughput", elem_id="dash-throughput")

    gr.Markdown("### Human preference studies")
    with gr.Row():
        study = gr.Dropdown(label="Study", choices=[], elem_id="dash-study", scale=4)
        study_go = gr.Button("Show results", variant="primary", elem_id="dash-study-show", scale=1)
    study_state = gr.HTML("", elem_id="dash-study-status")
    study_plot = gr.Plot(label="Win / tie / lose", elem_id="dash-study-plot")
    study_table = gr.Dataframe(interactive=False, elem_id="dash-study-table", visible=False)

    async def load_lists(key: str, b_cur: str | None, r_cur: str | None, s_cur: str | None):
        if not (key or "").strip():
            return gr.update(choices=[]), gr.update(choices=[]), gr.update(choices=[])
        api = ctx.api(key)
        out = []
        for path, label, cur in (("/v1/benchmarks", _bench_label, b_cur), ("/v1/runs", _run_label, r_cur),
                                 ("/v1/studies", lambda s: f"{s['name']} · {s['status']} · {s['id']}", s_cur)):
            try:
                items = (await api.get(path, limit=100))["items"]
            except Exception:
                out.append(gr.update())
                continue
            choices = [(label(i), i["id"]) for i in items]
            ids = [c[1] for c in choices]
            out.append(gr.update(choices=choices, value=cur if cur in ids else (ids[0] if ids else None)))
        return tuple(out)

    async def show_bench(key: str, bench_id: str | None):
        try:
            if not bench_id:
                raise ValueError("benchmark: pick a benchmark first")
            api = ctx.api(key)
            b = await api.get(f"/v1/benchmarks/{bench_id}")
            if b["status"] in ("queued", "running"):
                return (status("busy", f"Benchmark {bench_id} is {b['status']} ({b['progress']:.0%}); the report "
                                       "appears when it has finished.", progress=b["progress"]),
                        _EMPTY, "", plots.bars_figure(None), plots.scatter_figure(None), _EMPTY)
            if b["status"] != "succeeded":
                return (status("error", f"Benchmark {bench_id} {b['status']}: {b.get('error') or 'no report'}"),
                        _EMPTY, "", plots.bars_figure(None), plots.scatter_figure(None), _EMPTY)
            rep = await api.get(f"/v1/benchmarks/{bench_id}/report")
            tab = plots.benchmark_table(rep.get("report"), rep.get("scores") or [])
            if tab is None:
                return (status("error", "This benchmark has no scores."), _EMPTY, "", plots.bars_figure(None),
                        plots.scatter_figure(None), _EMPTY)
            note_md = "\n".join(f"- {n}" for n in tab.get("notes", []))
            return (status("ok", f"{len(tab['rows'])} models, {len(tab.get('prompts', []))} prompts, "
                                 f"{len(rep.get('scores') or [])} scores."),
                    plots.table1_frame(tab), note_md, plots.bars_figure(tab), plots.scatter_figure(tab),
                    plots.per_prompt_frame(tab))
        except Exception as exc:
            return error_status(exc), gr.update(), gr.update(), gr.update(), gr.update(), gr.update()

    async def show_run(key: str, run_id: str | None):
        try:
            if not run_id:
                raise ValueError("run: pick a run first")
            r, df, source = await run_metric_rows(ctx, key, run_id)
            losses, lrs, thr = plots.curve_figures(df)
            msg = (f"{r.get('name') or r['id']} ({r['method']}, {r['status']}): step {r['step']} of "
                   f"{r.get('total_steps') or '?'}; {df['step'].nunique() if not df.empty else 0} logged steps from "
                   f"{source}.")
            return status("ok" if not df.empty else "info", msg), losses, lrs, thr
        except Exception as exc:
            return error_status(exc), gr.update(), gr.update(), gr.update()

    async def show_study(key: str, study_id: str | None):
        try:
            if not study_id:
                raise ValueError("study: pick a study first")
            res = await ctx.api(key).get(f"/v1/studies/{study_id}/results", n_boot=0)
            fig, df, note = study_view(res)
            return status("ok", note), fig, gr.update(value=df, visible=not df.empty)
        except Exception as exc:
            return error_status(exc), gr.update(), gr.update()

    for trigger in (refresh.click, ctx.key.change):
        trigger(load_lists, [ctx.key, bench, run, study], [bench, run, study], show_progress="hidden")
    bench_go.click(show_bench, [ctx.key, bench], [bench_state, table, notes, bars, scatter, per_prompt])
    run_go.click(show_run, [ctx.key, run], [run_state, loss_plot, lr_plot, thr_plot])
    study_go.click(show_study, [ctx.key, study], [study_state, study_plot, study_table])


__all__ = ["build", "run_metric_rows", "study_view"]
