"""Dashboard tab: benchmark reports (the Table-1-shaped table and its plots), a form that runs a benchmark, study
results (win / tie / lose bars) and training curves of runs (losses of every network, learning rates, throughput),
all as interactive plots.

Everything goes through the API with the person's key: ``/v1/benchmarks`` (list, ``options`` for the form's choices,
create, status polled while it runs, ``{id}/report``), ``/v1/studies/{id}/results``, ``/v1/runs/{id}`` and
``/v1/runs/{id}/metrics``. A benchmark is either measured on this server or imported from a file shipped with the
checkpoints (``source``); the list, the status line and the table's title say which. For a run the API has granted,
the trainer's own ``metrics.jsonl`` in the run's directory is preferred when present: it also records learning
rates and seconds per step, which the per-step progress rows do not carry.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import gradio as gr
import pandas as pd

from webui import plots
from webui.client import ApiClient
from webui.common import UiContext, checkpoint_choices, error_status, error_text, status

POLL_S = 1.0
ACTIVE = ("queued", "running")
NO_KEY = "Paste your API key at the top of the page to see this server's benchmarks and to run one."
NO_BENCHMARKS = (
    "No benchmarks on this server yet. To measure checkpoints, fill in “Run benchmark” below: pick one "
    "or more checkpoints, a prompt suite, how many prompts and seeds and the metrics backend, then press "
    "“Run benchmark”; its table and plots appear here when it has finished."
)
MEASURED_TITLE = "Measured on this server (MoGAN Table 1 layout): mean ± std over seeds [95% interval]"


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
    return (
        f"{r.get('name') or r['id']} · {r['method']} · {r['status']} · step {r['step']}/{r.get('total_steps') or '?'}"
    )


def bench_label(b: dict[str, Any]) -> str:
    """A benchmark in the list: imported ones name their file, measured ones their status and checkpoints."""
    cfg = b.get("config") or {}
    if b.get("source") == "imported":
        return f"{b.get('name') or b['id']} · imported from {cfg.get('source_file') or 'a shipped file'}"
    return f"{b.get('name') or b['id']} · measured here · {b['status']} · {', '.join(cfg.get('checkpoints', []))}"


def _whole(value: Any, field: str, hi: int, hint: str) -> int:
    """A count from the form, 1..hi; the message names the field and the limit."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = math.nan
    if not (math.isfinite(f) and f.is_integer() and 1 <= f <= hi):
        got = "nothing" if value is None or value == "" else repr(value)
        raise ValueError(f"{field}: must be a whole number from 1 to {hi}{hint}; got {got}")
    return int(f)


def benchmark_request(
    checkpoints: list[str] | None,
    suite: str | None,
    prompts: Any,
    seeds: Any,
    backend: str | None,
    options: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ``POST /v1/benchmarks`` body of the Run benchmark form, or ValueError naming the field and its limit.

    ``options`` is ``GET /v1/benchmarks/options``; seeds are a count N (seeds 0..N-1, as ``motionlab eval --seeds``),
    prompts the first N of the suite; the metrics are those the backend implements plus the suite's own."""
    if not options:
        raise ValueError(
            "Run benchmark: the form's choices are not loaded yet; paste an API key at the top of the "
            "page (or press ↻ Refresh lists)"
        )
    names = [c for c in (checkpoints or []) if c]
    most = int(options["max_checkpoints"])
    if not names:
        raise ValueError(f"Checkpoints: pick at least one checkpoint (at most {most})")
    if len(names) > most:
        raise ValueError(f"Checkpoints: at most {most} per benchmark; {len(names)} picked")
    suites = {x["name"]: x for x in options["suites"]}
    if suite not in suites:
        raise ValueError(f"Suite: pick one of {', '.join(suites)}")
    size = min(int(suites[suite]["prompts"]), int(options["max_prompts"]))
    n_prompts = _whole(prompts, "Prompts", size, f" (the {suite} suite has {suites[suite]['prompts']} prompts)")
    n_seeds = _whole(
        seeds, "Seeds", int(options["max_seeds"]), " (seeds 0 to N-1 are used, the same for every checkpoint)"
    )
    backends = {x["name"]: x for x in options["backends"]}
    if backend not in backends:
        raise ValueError(f"Metrics backend: pick one of {', '.join(backends)}")
    if not backends[backend]["available"]:
        raise ValueError(
            f"Metrics backend: {backend} is not available on this server "
            f"({backends[backend].get('reason') or 'no reason given'}); use lite"
        )
    name = f"{', '.join(names)} · {suite} × {n_prompts} prompts × {n_seeds} seed{'s' if n_seeds > 1 else ''}"
    metrics = list(backends[backend].get("metrics") or []) + list(suites[suite].get("metrics") or [])
    return {
        "name": name[:200],
        "checkpoints": names,
        "suite": suite,
        "seeds": list(range(n_seeds)),
        "metrics": metrics or None,
        "options": {"backend": backend, "suite_size": n_prompts},
    }


def _hidden(state_html: str) -> list[Any]:
    """The benchmark outputs with only a status line: table, plots and per-prompt rows hidden."""
    return [
        state_html,
        gr.update(visible=False),
        "",
        gr.update(visible=False),
        gr.update(),
        gr.update(),
        gr.update(visible=False),
        gr.update(),
    ]


def _widths(frame: pd.DataFrame) -> list[str]:
    """Column widths that keep every metric column on screen: names narrow, metric columns share the rest."""
    n_text = 2 if "Row as in the source" in frame.columns else 1
    n_metrics = max(1, frame.shape[1] - n_text)
    text = [14, 20][:n_text]
    return [f"{w}%" for w in text] + [f"{(100 - sum(text)) / n_metrics:.1f}%"] * n_metrics


async def report_view(api: ApiClient, bench_id: str) -> list[Any]:
    """The values of the benchmark outputs (status, table, notes, plot row, bars, scatter, per-prompt box and
    table) for one benchmark: its report when finished, its progress while it runs."""
    b = await api.benchmark(bench_id)
    if b["status"] in ACTIVE:
        return _hidden(
            status(
                "busy",
                f"Benchmark {bench_id} is {b['status']} ({b['progress']:.0%}); the report "
                "appears when it has finished.",
                progress=b["progress"],
            )
        )
    if b["status"] != "succeeded":
        return _hidden(status("error", f"Benchmark {bench_id} {b['status']}: {b.get('error') or 'no report'}"))
    rep = await api.benchmark_report(bench_id)
    tab = plots.benchmark_table(rep.get("report"), rep.get("scores") or [])
    if tab is None:
        return _hidden(status("error", "This benchmark has no scores."))
    note_md = "\n".join(f"- {n}" for n in tab.get("notes", []))
    cfg = b.get("config") or {}
    if b.get("source") == "imported":
        src = cfg.get("source_file") or "a shipped file"
        n_ckpt = sum(1 for r in tab["rows"] if r.get("checkpoint"))
        seeds = f", mean ± std over {cfg['n_seeds']} seeds" if cfg.get("n_seeds") else ""
        msg = status(
            "ok",
            f"Imported from {src}, not measured on this server: {len(tab['rows'])} rows ({n_ckpt} "
            f"of them shipped checkpoints){seeds}, as the file gives them. “Run benchmark” below "
            "measures checkpoints here.",
        )
        title = f"Imported from {src} (“{cfg.get('section') or 'Table 1'}”): not measured on this server"
        note_md = f"- Source: {src}, section “{cfg.get('section') or 'Table 1'}”.\n" + note_md
        bars_title = "Imported: mean over seeds (the file gives no intervals)"
    else:
        n_models, n_prompts = len(tab["rows"]), len(tab.get("prompts", []))
        msg = status(
            "ok",
            f"{n_models} model{'s' if n_models != 1 else ''}, {n_prompts} prompt"
            f"{'s' if n_prompts != 1 else ''}, {len(rep.get('scores') or [])} scores; measured on "
            "this server.",
        )
        title = MEASURED_TITLE
        bars_title = "Measured on this server: mean over seeds with 95% interval"
    per_prompt = plots.per_prompt_frame(tab)
    frame = plots.table1_frame(tab)
    return [
        msg,
        gr.update(value=frame, label=title, visible=True, column_widths=_widths(frame)),
        note_md,
        gr.update(visible=True),
        plots.bars_figure(tab, bars_title),
        plots.scatter_figure(tab),
        gr.update(visible=not per_prompt.empty),
        per_prompt,
    ]


def study_view(res: dict[str, Any]) -> tuple[Any, pd.DataFrame, str]:
    """(win/tie/lose figure, table, notes) of a study's results (``GET /v1/studies/{id}/results``)."""
    labels = (res.get("study") or {}).get("question_labels") or {}
    rows = [{**r, "question": labels.get(r["question"], r["question"])} for r in res.get("pairwise") or []]
    fig = plots.win_tie_lose_figure(rows, title=f"Human preference: {(res.get('study') or {}).get('name', '')}")
    table_rows = []
    for r in rows:
        iv = r.get("intervals") or {}
        table_rows.append(
            {
                "question": r["question"],
                "pair": f"{r['model_a']} vs {r['model_b']}",
                "n": r.get("n"),
                "win": f"{r['rates']['win']:.0%}",
                "tie": f"{r['rates']['tie']:.0%}",
                "lose": f"{r['rates']['lose']:.0%}",
                "win 95% CI": (f"[{iv['win'][0]:.0%}, {iv['win'][1]:.0%}]" if iv.get("win") else ""),
                "sign test p": (f"{r['sign_test_p']:.3g}" if r.get("sign_test_p") is not None else ""),
            }
        )
    for r in res.get("likert") or []:
        table_rows.append(
            {
                "question": labels.get(r.get("question"), r.get("question")),
                "pair": r.get("model"),
                "n": r.get("n"),
                "win": "",
                "tie": "",
                "lose": "",
                "win 95% CI": "",
                "sign test p": "",
                "mean": f"{r['mean']:.2f}" if r.get("mean") is not None else "",
            }
        )
    notes = [f"{res.get('n_used', 0)} responses used"]
    if res.get("excluded_annotators"):
        notes.append(f"{len(res['excluded_annotators'])} annotators excluded (failed gold checks)")
    return fig, pd.DataFrame(table_rows), "; ".join(notes) + "."


def build(ctx: UiContext) -> None:
    gr.Markdown("### Benchmarks")
    with gr.Row():
        bench = gr.Dropdown(
            label="Benchmark",
            choices=[],
            elem_id="dash-bench",
            scale=4,
            info="measured on this server, or imported from a file shipped with the checkpoints",
        )
        refresh = gr.Button("↻ Refresh lists", elem_id="dash-refresh", scale=1)
        bench_go = gr.Button("Show report", variant="primary", elem_id="dash-bench-show", scale=1)
    bench_state = gr.HTML(status("info", NO_KEY), elem_id="dash-bench-status")
    table = gr.Dataframe(
        label=MEASURED_TITLE, interactive=False, elem_id="dash-table", wrap=True, visible=False, max_height=760
    )
    notes = gr.Markdown("", elem_id="dash-notes")
    with gr.Row(visible=False) as plot_row:
        bars = gr.Plot(label="Scores", elem_id="dash-bars")
        scatter = gr.Plot(label="Smoothness vs dynamic degree", elem_id="dash-scatter")
    with gr.Accordion("Per-prompt breakdown", open=False, visible=False) as per_prompt_box:
        per_prompt = gr.Dataframe(interactive=False, elem_id="dash-per-prompt")
    bench_outputs = [bench_state, table, notes, plot_row, bars, scatter, per_prompt_box, per_prompt]

    gr.Markdown("#### Run benchmark")
    options = gr.State({})
    with gr.Row():
        bm_ckpts = gr.Dropdown(
            label="Checkpoints",
            choices=[],
            multiselect=True,
            elem_id="dash-bm-checkpoints",
            scale=4,
            info="zoo and registered checkpoints; each samples with its own schedule",
        )
        bm_suite = gr.Dropdown(
            label="Suite",
            choices=[],
            elem_id="dash-bm-suite",
            scale=2,
            info="the prompt suites of `motionlab eval --suite`",
        )
    with gr.Row():
        bm_prompts = gr.Number(
            4, label="Prompts", precision=0, elem_id="dash-bm-prompts", info="the first N prompts of the suite"
        )
        bm_seeds = gr.Number(
            1,
            label="Seeds",
            precision=0,
            elem_id="dash-bm-seeds",
            info="N seeds per prompt (0 to N-1), shared by every checkpoint",
        )
        bm_backend = gr.Dropdown(
            label="Metrics backend",
            choices=[("lite", "lite")],
            value="lite",
            elem_id="dash-bm-backend",
            info="lite: weight-free; vbench: where its weights are",
        )
        bm_go = gr.Button("Run benchmark", variant="primary", elem_id="dash-bm-submit")
    bm_info = gr.Markdown("", elem_id="dash-bm-info")
    bm_state = gr.HTML("", elem_id="dash-bm-status")

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
            return (
                gr.update(choices=[], value=None),
                gr.update(choices=[]),
                gr.update(choices=[]),
                status("info", NO_KEY),
            )
        api = ctx.api(key)
        out: list[Any] = []
        bench_msg: Any = gr.update()
        for path, label, cur in (
            ("/v1/benchmarks", bench_label, b_cur),
            ("/v1/runs", _run_label, r_cur),
            ("/v1/studies", lambda s: f"{s['name']} · {s['status']} · {s['id']}", s_cur),
        ):
            try:
                items = (await api.get(path, limit=100))["items"]
            except Exception as exc:
                out.append(gr.update())
                if path == "/v1/benchmarks":
                    bench_msg = error_status(exc)
                continue
            choices = [(label(i), i["id"]) for i in items]
            ids = [c[1] for c in choices]
            out.append(gr.update(choices=choices, value=cur if cur in ids else (ids[0] if ids else None)))
            if path == "/v1/benchmarks":
                bench_msg = status("info", NO_BENCHMARKS) if not ids else gr.update()
        return (*out, bench_msg)

    async def show_selected(key: str, bench_id: str | None):
        """After the lists load: the picked benchmark's report (nothing to do when there is none)."""
        if not bench_id or not (key or "").strip():
            return [gr.update()] + _hidden(gr.update())[1:]
        try:
            return await report_view(ctx.api(key), bench_id)
        except Exception as exc:
            return [error_status(exc)] + [gr.update()] * (len(bench_outputs) - 1)

    async def show_bench(key: str, bench_id: str | None):
        try:
            if not bench_id:
                raise ValueError("Benchmark: pick a benchmark first (or run one below)")
            return await report_view(ctx.api(key), bench_id)
        except Exception as exc:
            return [error_status(exc)] + [gr.update()] * (len(bench_outputs) - 1)

    async def load_form(key: str, cur_ckpts: list[str] | None, cur_suite: str | None, cur_backend: str | None):
        if not (key or "").strip():
            return gr.update(choices=[], value=[]), gr.update(choices=[], value=None), gr.update(), "", {}
        try:
            api = ctx.api(key)
            items = await api.checkpoints()
            opts = await api.benchmark_options()
        except Exception as exc:
            return (
                gr.update(),
                gr.update(),
                gr.update(),
                f"The form's choices could not be loaded: {error_text(exc)}",
                {},
            )
        names = {i["name"] for i in items}
        suites = [(f"{x['name']} ({x['prompts']} prompts)", x["name"]) for x in opts["suites"]]
        suite_names = [v for _, v in suites]
        avail = [x["name"] for x in opts["backends"] if x["available"]]
        per_dim = [x for x in opts["suites"] if x["name"].startswith("vbench:")]  # one line for all of them
        info = [
            "Suites: "
            + "; ".join(f"**{x['name']}**: {x['description']}" for x in opts["suites"] if x not in per_dim)
            + (f"; **vbench:DIMENSION**: VBench's prompts of one of its {len(per_dim)} dimensions" if per_dim else "")
            + "."
        ]
        info += [
            f"The {x['name']} backend is not available here: {x['reason']}."
            for x in opts["backends"]
            if not x["available"]
        ]
        return (
            gr.update(choices=checkpoint_choices(items), value=[c for c in (cur_ckpts or []) if c in names]),
            gr.update(
                choices=suites,
                value=cur_suite if cur_suite in suite_names else ("tiny" if "tiny" in suite_names else suite_names[0]),
            ),
            gr.update(choices=[(b, b) for b in avail], value=cur_backend if cur_backend in avail else avail[0]),
            "  \n".join(info),
            opts,
        )

    async def run_benchmark(key, names, suite_v, prompts_v, seeds_v, backend_v, opts):
        keep = {o: gr.update() for o in [bm_state, bench, *bench_outputs]}
        try:
            body = benchmark_request(names, suite_v, prompts_v, seeds_v, backend_v, opts)
        except ValueError as exc:
            yield {**keep, bm_state: error_status(exc)}
            return
        api = ctx.api(key)
        try:
            yield {**keep, bm_state: status("busy", f"Submitting a benchmark of {', '.join(body['checkpoints'])}…")}
            b = await api.create_benchmark(body)
            bid, total = b["id"], len(body["checkpoints"]) * len(body["seeds"]) * body["options"]["suite_size"]
            t0 = time.monotonic()
            deadline = t0 + ctx.settings.eval_soft_time_limit_s + ctx.settings.hard_time_limit_margin_s + 60
            while b["status"] in ACTIVE and time.monotonic() < deadline:
                took = time.monotonic() - t0
                if b["status"] == "queued":
                    text = f"Benchmark {bid}: queued, waiting for the evaluation worker ({took:.0f} s)."
                else:
                    text = (
                        f"Benchmark {bid}: running, {round(b['progress'] * total)} of {total} videos generated "
                        f"and scored ({b['progress']:.0%}, {took:.0f} s)."
                    )
                yield {**keep, bm_state: status("busy", text, progress=b["progress"])}
                await asyncio.sleep(POLL_S)
                b = await api.benchmark(bid)
            took = time.monotonic() - t0
            items = await api.benchmarks(limit=100)
            choices = [(bench_label(i), i["id"]) for i in items]
            if b["status"] in ACTIVE:
                yield {
                    **keep,
                    bench: gr.update(choices=choices),
                    bm_state: status(
                        "info",
                        f"Benchmark {bid} is still {b['status']} after {took:.0f} s; pick it in the list above later.",
                    ),
                }
                return
            if b["status"] != "succeeded":
                yield {
                    **keep,
                    bench: gr.update(choices=choices),
                    bm_state: status("error", f"Benchmark {bid} {b['status']}: {b.get('error') or 'no reason'}"),
                }
                return
            view = await report_view(api, bid)
            yield {
                **keep,
                **dict(zip(bench_outputs, view, strict=True)),
                bench: gr.update(choices=choices, value=bid),
                bm_state: status(
                    "ok", f"Benchmark {bid} finished in {took:.0f} s: {total} videos scored; its table is shown above."
                ),
            }
        except Exception as exc:
            yield {**keep, bm_state: error_status(exc)}

    async def show_run(key: str, run_id: str | None):
        try:
            if not run_id:
                raise ValueError("run: pick a run first")
            r, df, source = await run_metric_rows(ctx, key, run_id)
            losses, lrs, thr = plots.curve_figures(df)
            msg = (
                f"{r.get('name') or r['id']} ({r['method']}, {r['status']}): step {r['step']} of "
                f"{r.get('total_steps') or '?'}; {df['step'].nunique() if not df.empty else 0} logged steps from "
                f"{source}."
            )
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
        trigger(
            load_lists, [ctx.key, bench, run, study], [bench, run, study, bench_state], show_progress="hidden"
        ).then(show_selected, [ctx.key, bench], bench_outputs, show_progress="hidden")
        trigger(
            load_form,
            [ctx.key, bm_ckpts, bm_suite, bm_backend],
            [bm_ckpts, bm_suite, bm_backend, bm_info, options],
            show_progress="hidden",
        )
    bench_go.click(show_bench, [ctx.key, bench], bench_outputs)
    bench.input(show_bench, [ctx.key, bench], bench_outputs, show_progress="hidden")
    bm_go.click(
        run_benchmark,
        [ctx.key, bm_ckpts, bm_suite, bm_prompts, bm_seeds, bm_backend, options],
        [bm_state, bench, *bench_outputs],
        show_progress="hidden",
    )
    run_go.click(show_run, [ctx.key, run], [run_state, loss_plot, lr_plot, thr_plot])
    study_go.click(show_study, [ctx.key, study], [study_state, study_plot, study_table])


__all__ = ["bench_label", "benchmark_request", "build", "report_view", "run_metric_rows", "study_view"]
