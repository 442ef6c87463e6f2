"""Study admin tab: create a human preference study from a benchmark's videos, invite annotators (copyable links,
shown once), watch progress per annotator, open or close the study, and open its results.

All through the study API with the person's key (``backend.api.routes.studies``): ``POST /v1/studies``,
``GET /v1/studies[/{id}]``, ``POST /v1/studies/{id}/open|close``, ``POST|GET /v1/studies/{id}/annotators``,
``GET /v1/studies/{id}/results`` and ``results.csv``. Invitation links are built from the address the admin's
browser uses for this server plus the ``/a/<token>`` path the API returns.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr
import pandas as pd

from webui import media
from webui.common import UiContext, error_status, optional_int, status
from webui.dashboard import study_view


def browser_origin(request: gr.Request | None) -> str:
    """The scheme://host[:port] the person's browser reaches this server at (for invitation links)."""
    if request is None:
        return ""
    h = {k.lower(): v for k, v in dict(request.headers or {}).items()}
    if h.get("origin") and h["origin"] != "null":
        return h["origin"].rstrip("/")
    host = h.get("x-forwarded-host") or h.get("host") or ""
    scheme = h.get("x-forwarded-proto") or "http"
    return f"{scheme}://{host}" if host else ""


def studies_frame(items: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for s in items:
        c = s.get("counts") or {}
        rows.append(
            {
                "id": s["id"],
                "name": s["name"],
                "status": s["status"],
                "mode": s["config"].get("mode"),
                "items": c.get("items", 0),
                "annotators": c.get("annotators", 0),
                "done": c.get("assignments_done", 0),
                "responses": c.get("responses", 0),
            }
        )
    return pd.DataFrame(rows, columns=["id", "name", "status", "mode", "items", "annotators", "done", "responses"])


def study_progress(s: dict[str, Any]) -> str:
    c = s.get("counts") or {}
    k = int(s["config"].get("k") or 1)
    needed = max(1, c.get("items", 0) * k)
    done = c.get("assignments_done", 0)
    kind = {"draft": "info", "open": "busy", "closed": "ok"}.get(s["status"], "info")
    text = (
        f"Study {s['name']} ({s['id']}) is {s['status']}: {done} of {needed} annotations done "
        f"({c.get('items', 0)} items x {k} each, plus {c.get('gold_items', 0)} gold checks); "
        f"{c.get('annotators', 0)} annotators, {c.get('assignments_pending', 0)} items in progress."
    )
    if s["status"] == "draft":
        text += " Open it so that annotators can start."
    return status(kind, text, progress=min(1.0, done / needed))


def annotators_frame(items: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "annotator": a.get("name") or a["id"],
                "done": a["done"],
                "in progress": a["pending"],
                "quota": a.get("quota") if a.get("quota") is not None else "all",
                "last seen": str(a.get("last_seen_at") or "")[:19],
                "revoked": "yes" if a.get("revoked_at") else "",
            }
            for a in items
        ],
        columns=["annotator", "done", "in progress", "quota", "last seen", "revoked"],
    )


def build(ctx: UiContext) -> None:
    gr.Markdown("### Create a study from a benchmark")
    with gr.Row():
        name = gr.Textbox(label="Study name", elem_id="study-name", scale=2)
        bench = gr.Dropdown(
            [], value=None, label="Benchmark (its videos become the items)", elem_id="study-bench", scale=3
        )
        refresh = gr.Button("↻", elem_id="study-refresh", scale=0, min_width=40)
    with gr.Row():
        mode = gr.Radio(["pairwise", "likert"], value="pairwise", label="Mode", elem_id="study-mode")
        models = gr.Dropdown(
            [], value=[], multiselect=True, label="Models (empty: all of the benchmark's)", elem_id="study-models"
        )
        k = gr.Number(5, label="Annotations per item", precision=0, elem_id="study-k")
        per_annotator = gr.Textbox(
            "",
            label="Items per annotator",
            elem_id="study-quota",
            placeholder="all",
            info="empty: as many as there are",
        )
        gold = gr.Number(
            0, label="Gold checks", precision=0, elem_id="study-gold", info="original vs distorted copy (pairwise only)"
        )
        open_now = gr.Checkbox(True, label="Open right away", elem_id="study-open-now")
    with gr.Accordion("More options (JSON: questions, pairs, time_limit_s, seed, instructions, ...)", open=False):
        more = gr.Code("{}", language="json", elem_id="study-more", lines=4)
    create = gr.Button("Create study", variant="primary", elem_id="study-create")
    create_state = gr.HTML(
        status("info", "Studies are made from a finished benchmark's videos (same prompts and seeds for every model)."),
        elem_id="study-create-status",
    )

    gr.Markdown("### Studies")
    table = gr.Dataframe(studies_frame([]), interactive=False, elem_id="study-table", max_height=240)
    with gr.Row():
        study = gr.Dropdown([], value=None, label="Study", elem_id="study-selected", scale=4)
        open_btn = gr.Button("Open", elem_id="study-open", scale=1)
        close_btn = gr.Button("Close", variant="stop", elem_id="study-close", scale=1)
    progress = gr.HTML("", elem_id="study-progress")
    annotators = gr.Dataframe(
        annotators_frame([]), label="Annotators", interactive=False, elem_id="study-annotators", max_height=240
    )

    gr.Markdown("### Invite annotators")
    with gr.Row():
        count = gr.Number(3, label="How many links", precision=0, elem_id="study-invite-count")
        names = gr.Textbox(label="Or names, one per line", lines=2, elem_id="study-invite-names")
        quota = gr.Textbox("", label="Items each", placeholder="the study's", elem_id="study-invite-quota")
        invite = gr.Button("Create invitation links", elem_id="study-invite")
    links = gr.Textbox(
        label="Invitation links (shown only now: copy them; each link is one annotator's credential)",
        lines=4,
        interactive=False,
        buttons=["copy"],
        elem_id="study-links",
    )
    invite_state = gr.HTML("", elem_id="study-invite-status")

    gr.Markdown("### Results")
    with gr.Row():
        results_btn = gr.Button("Open results", variant="primary", elem_id="study-results")
        csv_btn = gr.DownloadButton("Download results (CSV)", visible=False, elem_id="study-results-csv")
    results_state = gr.HTML("", elem_id="study-results-status")
    results_plot = gr.Plot(label="Win / tie / lose", elem_id="study-results-plot")
    results_table = gr.Dataframe(interactive=False, elem_id="study-results-table", visible=False)
    timer = gr.Timer(5.0)

    benches_state = gr.State([])

    async def load(key: str, cur_bench: str | None, cur_study: str | None):
        if not (key or "").strip():
            return gr.update(), [], gr.update(), gr.update()
        api = ctx.api(key)
        try:
            benches = await api.benchmarks(status="succeeded", source="measured")  # imported have no videos
            studies = (await api.get("/v1/studies", limit=100))["items"]
        except Exception:
            return gr.update(), [], gr.update(), gr.update()
        bch = [
            (f"{b.get('name') or b['id']} · {', '.join(b['config'].get('checkpoints', []))}", b["id"]) for b in benches
        ]
        bids = [c[1] for c in bch]
        sch = [(f"{s['name']} · {s['status']} · {s['id']}", s["id"]) for s in studies]
        sids = [c[1] for c in sch]
        return (
            gr.update(choices=bch, value=cur_bench if cur_bench in bids else (bids[0] if bids else None)),
            benches,
            studies_frame(studies),
            gr.update(choices=sch, value=cur_study if cur_study in sids else (sids[0] if sids else None)),
        )

    def bench_models(bench_id: str | None, benches: list[dict]):
        b = next((x for x in benches if x["id"] == bench_id), None)
        cks = list((b or {}).get("config", {}).get("checkpoints", []))
        return gr.update(choices=cks, value=[])

    async def do_create(key, nm, bench_id, md, models_v, k_v, per_v, gold_v, open_v, more_text):
        try:
            if not bench_id:
                raise ValueError("benchmark_id: pick a finished benchmark")
            try:
                cfg = json.loads((more_text or "").strip() or "{}")
            except json.JSONDecodeError as exc:
                raise ValueError(f"more options: not valid JSON ({exc.msg}, line {exc.lineno})") from None
            if not isinstance(cfg, dict):
                raise ValueError("more options: must be a JSON object {...}")
            cfg = {**cfg, "mode": md}
            for field, v, label in (
                ("k", k_v, "annotations per item"),
                ("items_per_annotator", per_v, "items per annotator"),
            ):
                iv = optional_int(v, label)
                if iv is not None:
                    cfg[field] = iv
            g = optional_int(gold_v, "gold checks")
            if g:
                cfg["gold"] = {**(cfg.get("gold") or {}), "count": g}
            if models_v:
                cfg["models"] = list(models_v)
            s = await ctx.api(key).post(
                "/v1/studies",
                {"name": (nm or "").strip(), "benchmark_id": bench_id, "config": cfg, "open": bool(open_v)},
            )
            return (
                status(
                    "ok",
                    f"Created study {s['name']} ({s['id']}), {s['status']}, with "
                    f"{(s.get('counts') or {}).get('items', 0)} items. Invite annotators below.",
                ),
                gr.update(choices=[(f"{s['name']} · {s['status']} · {s['id']}", s["id"])], value=s["id"]),
            )
        except Exception as exc:
            return error_status(exc), gr.update()

    async def watch(key: str, study_id: str | None):
        if not (key or "").strip():
            return gr.update(), gr.update(), gr.update()
        try:
            api = ctx.api(key)
            listing = studies_frame((await api.get("/v1/studies", limit=100))["items"])
            if not study_id:
                return gr.update(), gr.update(), listing
            s = await api.get(f"/v1/studies/{study_id}")
            anns = (await api.get(f"/v1/studies/{study_id}/annotators"))["items"]
            return study_progress(s), annotators_frame(anns), listing
        except Exception as exc:
            return error_status(exc), gr.update(), gr.update()

    def set_state(what: str):
        """The click handler that asks the API to ``what`` (open / close) the selected study."""

        async def act(key: str, study_id: str | None):
            try:
                if not study_id:
                    raise ValueError("study: pick a study first")
                return study_progress(await ctx.api(key).post(f"/v1/studies/{study_id}/{what}"))
            except Exception as exc:
                return error_status(exc)

        return act

    async def do_invite(key: str, study_id: str | None, n: Any, names_text: str, quota_v: Any, request: gr.Request):
        try:
            if not study_id:
                raise ValueError("study: pick a study first")
            who = [x.strip() for x in (names_text or "").splitlines() if x.strip()]
            body: dict[str, Any] = {"names": who} if who else {"count": optional_int(n, "how many links")}
            q = optional_int(quota_v, "items each")
            if q is not None:
                body["quota"] = q
            made = await ctx.api(key).post(f"/v1/studies/{study_id}/annotators", body)
            origin = browser_origin(request)
            lines = [f"{a.get('name') or a['id']}: {origin}{a['path']}" for a in made["items"]]
            return "\n".join(lines), status(
                "ok",
                f"{len(lines)} invitation links created. Send each person their own link; they are not shown again.",
            )
        except Exception as exc:
            return gr.update(), error_status(exc)

    async def do_results(key: str, study_id: str | None):
        try:
            if not study_id:
                raise ValueError("study: pick a study first")
            api = ctx.api(key)
            res = await api.get(f"/v1/studies/{study_id}/results", n_boot=0)
            fig, df, note = study_view(res)
            csv_bytes = await api.get_bytes(f"/v1/studies/{study_id}/results.csv?n_boot=0")
            path = media.scratch_dir() / f"{study_id}-results.csv"
            path.write_bytes(csv_bytes)
            return (
                status("ok", f"{note} Full page: /study-results/{study_id} (asks for an API key)."),
                fig,
                gr.update(value=df, visible=not df.empty),
                gr.update(value=str(path), visible=True),
            )
        except Exception as exc:
            return error_status(exc), gr.update(), gr.update(), gr.update()

    for trigger in (refresh.click, ctx.key.change):
        trigger(load, [ctx.key, bench, study], [bench, benches_state, table, study], show_progress="hidden")
    bench.change(bench_models, [bench, benches_state], [models], show_progress="hidden")
    create.click(
        do_create, [ctx.key, name, bench, mode, models, k, per_annotator, gold, open_now, more], [create_state, study]
    )
    study.change(watch, [ctx.key, study], [progress, annotators, table], show_progress="hidden")
    timer.tick(watch, [ctx.key, study], [progress, annotators, table], show_progress="hidden", concurrency_limit=None)

    open_btn.click(set_state("open"), [ctx.key, study], [progress])
    close_btn.click(set_state("close"), [ctx.key, study], [progress])
    invite.click(do_invite, [ctx.key, study, count, names, quota], [links, invite_state])
    results_btn.click(do_results, [ctx.key, study], [results_state, results_plot, results_table, csv_btn])


__all__ = ["annotators_frame", "browser_origin", "build", "studies_frame", "study_progress"]
