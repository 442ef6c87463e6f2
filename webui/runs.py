"""Runs tab: start a training run of any method from a form (method, preset, init checkpoint, key
hyper-parameters, with the method's preset defaults filled in), check it before starting, watch progress and logs
live, cancel or resume it, and promote a finished run's checkpoint to the generation list under a name.

The form's defaults come from the trainer (``trainer.config.load_train_config(method, {}, preset)``: the method's
``Config`` model and ``defaults(preset)``); only the fields the person changed are sent as overrides.
"Check" runs the API's own config validation (``backend.services.validate_config``, no side effects);
"Start" is ``POST /v1/runs``; cancel / resume / logs / metrics are the ``/v1/runs/{id}/...`` routes; promote is
``POST /v1/checkpoints`` (admin scope), registering the run's exported directory under the chosen name.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr
import pandas as pd

from backend import services
from trainer.config import load_train_config, to_dict
from webui.common import (
    INIT_REQUIRED_METHODS,
    TEACHER_METHODS,
    UiContext,
    error_status,
    error_text,
    optional_float,
    optional_int,
    require_scope,
    status,
)

MAX_LOG_LINES = 400
FORM_FIELDS = (  # (dotted config path, label, kind)
    ("steps", "Steps", "int"),
    ("batch_size", "Batch size", "int"),
    ("optim.lr", "Learning rate", "float"),
    ("optim.warmup_steps", "Warm-up steps", "int"),
    ("checkpoint_every", "Checkpoint every", "int"),
    ("log_every", "Log every", "int"),
    ("seed", "Seed", "int"),
    ("data.num_videos", "Training videos", "int"),
)


def methods() -> list[str]:
    from trainer.methods import METHODS  # heavy: torch and every method's module, for the form's list only

    return list(METHODS)


def method_defaults(method: str, preset: str) -> dict[str, Any]:
    """The full resolved config of a method's preset (what a run with no overrides would use)."""
    return json.loads(json.dumps(to_dict(load_train_config(method, {}, preset=preset)), default=str))


def get_dotted(d: dict[str, Any], path: str) -> Any:
    cur: Any = d
    for k in path.split("."):
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def set_dotted(d: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value


def diff(new: Any, base: Any) -> Any:
    """What of ``new`` differs from ``base`` (recursively for mappings); None when nothing does."""
    if isinstance(new, dict) and isinstance(base, dict):
        out = {}
        for k, v in new.items():
            if k not in base:
                out[k] = v
            else:
                d = diff(v, base[k])
                if d is not None:
                    out[k] = d
        return out or None
    if isinstance(new, (list, tuple)) and isinstance(base, (list, tuple)):
        return None if list(new) == list(base) else list(new)
    return None if new == base else new


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_json_object(text: str | None, field: str) -> dict[str, Any]:
    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{field}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{field}: must be a JSON object {{...}}, got {type(value).__name__}")
    return value


def build_overrides(
    method: str,
    preset: str,
    init: str | None,
    teacher: str | None,
    values: list[Any],
    method_cfg_text: str,
    extra_text: str,
) -> dict[str, Any]:
    """The overrides to send: the form's fields that differ from the preset's defaults, plus the JSON ones."""
    defaults = method_defaults(method, preset)
    form: dict[str, Any] = {}
    for (path, label, kind), v in zip(FORM_FIELDS, values):
        v = optional_int(v, label) if kind == "int" else optional_float(v, label)
        if v is not None:
            set_dotted(form, path, v)
    if init:
        form["init"] = init
    if teacher:
        form["teacher"] = teacher
    form["method_cfg"] = parse_json_object(method_cfg_text, "method hyper-parameters")
    merged = deep_merge(form, parse_json_object(extra_text, "other overrides"))
    return diff(merged, defaults) or {}


def run_status(run: dict[str, Any]) -> str:
    total = run.get("total_steps")
    where = f"step {run['step']}" + (f" of {total}" if total else "")
    latest = run.get("metrics") or {}
    losses = ", ".join(f"{k} {v:.4g}" for k, v in latest.items() if "loss" in k and isinstance(v, (int, float)))
    name = run.get("name") or run["id"]
    if run["status"] == "failed":
        return status("error", f"Run {name} failed at {where}: {run.get('error') or 'no reason recorded'}")
    if run["status"] == "cancelled":
        return status("info", f"Run {name} was cancelled at {where}; its last checkpoint is kept (Resume continues).")
    if run["status"] == "succeeded":
        return status("ok", f"Run {name} finished at {where}." + (f" Last losses: {losses}." if losses else ""))
    if run["status"] == "queued":
        return status("busy", f"Run {name} is queued, waiting for a training worker.", progress=run.get("progress"))
    extra = " (cancel requested: stopping at the next step)" if run.get("cancel_requested") else ""
    return status(
        "busy",
        f"Run {name} is running: {where}{extra}." + (f" Losses: {losses}." if losses else ""),
        progress=run.get("progress"),
    )


def runs_frame(items: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run; ``ranks`` is its ``nproc`` ("auto": the worker's default, until a worker starts it)."""
    return pd.DataFrame(
        [
            {
                "id": r["id"],
                "name": r.get("name") or "",
                "method": r["method"],
                "preset": r["preset"],
                "ranks": str(r.get("nproc") or "auto"),
                "status": r["status"],
                "step": f"{r['step']}/{r.get('total_steps') or '?'}",
                "progress": f"{(r.get('progress') or 0):.0%}",
                "created": str(r["created_at"])[:19],
            }
            for r in items
        ],
        columns=["id", "name", "method", "preset", "ranks", "status", "step", "progress", "created"],
    )


def build(ctx: UiContext) -> None:
    names = methods()
    first = "sft" if "sft" in names else names[0]
    d0 = method_defaults(first, "tiny")
    gr.Markdown("### Start a run")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                method = gr.Dropdown(names, value=first, label="Method", elem_id="run-method")
                preset = gr.Radio(["tiny", "full"], value="tiny", label="Preset", elem_id="run-preset")
                name = gr.Textbox(label="Run name (optional)", elem_id="run-name")
                nproc = gr.Number(
                    0,
                    label="Ranks (GPUs)",
                    precision=0,
                    elem_id="run-nproc",
                    info="processes, one GPU each; 0 = every GPU of the worker (1 on CPU)",
                )
            hint = gr.Markdown("", elem_id="run-hint")
            with gr.Row():
                init = gr.Dropdown(
                    [],
                    value=None,
                    label="Init checkpoint",
                    allow_custom_value=True,
                    elem_id="run-init",
                    info="a zoo or registered checkpoint name; empty = the method's default",
                )
                teacher = gr.Dropdown(
                    [],
                    value=None,
                    label="Teacher",
                    allow_custom_value=True,
                    elem_id="run-teacher",
                    info="the frozen teacher of distillation methods",
                )
            fields = []
            with gr.Row():
                for path, label, kind in FORM_FIELDS[:4]:
                    fields.append(
                        gr.Number(
                            get_dotted(d0, path),
                            label=label,
                            elem_id=f"run-{path.replace('.', '-')}",
                            precision=0 if kind == "int" else None,
                        )
                    )
            with gr.Row():
                for path, label, kind in FORM_FIELDS[4:]:
                    fields.append(
                        gr.Number(
                            get_dotted(d0, path),
                            label=label,
                            elem_id=f"run-{path.replace('.', '-')}",
                            precision=0 if kind == "int" else None,
                        )
                    )
        with gr.Column(scale=2):
            method_cfg = gr.Code(
                json.dumps(d0.get("method_cfg") or {}, indent=2),
                language="json",
                label="Method hyper-parameters (method_cfg)",
                elem_id="run-method-cfg",
                lines=10,
            )
            extra = gr.Code(
                "{}",
                language="json",
                label='Other overrides (JSON, e.g. {"data": {"num_frames": 9}})',
                elem_id="run-extra",
                lines=3,
            )
    with gr.Row():
        check = gr.Button("Check config", elem_id="run-check")
        start = gr.Button("Start run", variant="primary", elem_id="run-start")
    form_state = gr.HTML(
        status("info", "The form holds the method's defaults for the preset; change what you need."),
        elem_id="run-form-status",
    )
    with gr.Accordion("Resolved config", open=False):
        resolved = gr.JSON(elem_id="run-resolved")

    gr.Markdown("### Runs")
    runs_table = gr.Dataframe(runs_frame([]), interactive=False, elem_id="run-table", max_height=260)
    with gr.Row():
        selected = gr.Dropdown([], value=None, label="Watch run", elem_id="run-selected", scale=4)
        cancel = gr.Button("Cancel run", variant="stop", elem_id="run-cancel", scale=1)
        resume = gr.Button("Resume run", elem_id="run-resume", scale=1)
    run_state = gr.HTML("", elem_id="run-status")
    logs = gr.Textbox(
        label="Logs (live)", lines=12, max_lines=12, autoscroll=True, interactive=False, elem_id="run-logs"
    )
    log_state = gr.State({"run_id": None, "after": 0, "lines": []})
    with gr.Accordion("Promote a finished checkpoint to the generation list", open=False):
        with gr.Row():
            promote_ckpt = gr.Dropdown([], value=None, label="Checkpoint of this run", elem_id="run-promote-ckpt")
            promote_name = gr.Textbox(
                label="Name in the generation list", elem_id="run-promote-name", placeholder="tiny-mogan-v2"
            )
            promote = gr.Button("Promote", elem_id="run-promote")
        promote_state = gr.HTML("", elem_id="run-promote-status")
    timer = gr.Timer(2.0)

    # --- form ---------------------------------------------------------------------------------------------------

    def fill(m: str, p: str):
        try:
            d = method_defaults(m, p)
        except Exception as exc:
            return [gr.update()] * len(FORM_FIELDS) + [gr.update(), "", error_status(exc)]
        hint_text = []
        if m in TEACHER_METHODS:
            hint_text.append(f"**{m}** distils a teacher: pick one in *Teacher* (e.g. the tiny teacher).")
        if m in INIT_REQUIRED_METHODS:
            hint_text.append(f"**{m}** aligns an existing checkpoint: pick it in *Init checkpoint*.")
        if m == "vae":
            hint_text.append("**vae** trains the tiny VAE (tiny preset only).")
        vals = [get_dotted(d, path) for path, _, _ in FORM_FIELDS]
        return vals + [
            json.dumps(d.get("method_cfg") or {}, indent=2),
            "  \n".join(hint_text),
            status("info", f"Defaults of {m} ({p}) filled in."),
        ]

    fill_outputs = fields + [method_cfg, hint, form_state]
    method.change(fill, [method, preset], fill_outputs, show_progress="hidden")
    preset.change(fill, [method, preset], fill_outputs, show_progress="hidden")

    async def load_zoo(key: str):
        if not (key or "").strip():
            return gr.update(), gr.update()
        try:
            items = await ctx.api(key).checkpoints()
        except Exception:
            return gr.update(), gr.update()
        zoo = [i["name"] for i in items if i.get("source") == "zoo"]
        teachers = [
            i["name"]
            for i in items
            if i.get("source") == "zoo" and (i.get("info") or {}).get("kind", "teacher") == "teacher"
        ]
        return gr.update(choices=zoo), gr.update(choices=teachers or zoo)

    ctx.key.change(load_zoo, [ctx.key], [init, teacher], show_progress="hidden")

    def _collect(m, p, ini, tea, mc, ex, *vals):
        return build_overrides(m, p, ini or None, tea or None, list(vals), mc, ex)

    def do_check(key, m, p, ini, tea, mc, ex, *vals):
        try:
            require_scope(ctx.app, key, "train", "checking a run config")
            overrides = _collect(m, p, ini, tea, mc, ex, *vals)
            resolved_cfg, total = services.validate_config(m, overrides, p)
            return (
                status("ok", f"Valid: {m} ({p}), {total} steps. Overrides: {json.dumps(overrides) or '{}'}"),
                resolved_cfg,
            )
        except Exception as exc:
            return error_status(exc), gr.update()

    async def do_start(key, m, p, nm, ranks, ini, tea, mc, ex, *vals):
        try:
            overrides = _collect(m, p, ini, tea, mc, ex, *vals)
            body = {"method": m, "preset": p, "config": overrides, "name": (nm or "").strip() or None}
            ranks = optional_int(ranks, "Ranks (GPUs)")
            if ranks:  # 0 or empty: the worker's default
                body["nproc"] = ranks
            run = await ctx.api(key).post("/v1/runs", body)
            ranks_text = f", {run['nproc']} ranks" if run.get("nproc") else ""
            return (
                status(
                    "ok", f"Started run {run['id']} ({m}, {p}{ranks_text}); it is {run['status']}. Watching it below."
                ),
                run.get("resolved_config"),
                gr.update(choices=[(run.get("name") or run["id"], run["id"])], value=run["id"]),
            )
        except Exception as exc:
            return error_status(exc), gr.update(), gr.update()

    form_inputs = [method, preset, init, teacher, method_cfg, extra] + fields
    check.click(do_check, [ctx.key] + form_inputs, [form_state, resolved])
    start.click(
        do_start,
        [ctx.key, method, preset, name, nproc, init, teacher, method_cfg, extra] + fields,
        [form_state, resolved, selected],
    )

    # --- watching -----------------------------------------------------------------------------------------------

    async def tick(key: str, run_id: str | None, logst: dict[str, Any]):
        if not (key or "").strip():
            return gr.update(), gr.update(), gr.update(), gr.update(), logst
        api = ctx.api(key)
        try:
            items = await api.runs(limit=50)
        except Exception as exc:
            return gr.update(), gr.update(), error_status(exc), gr.update(), logst
        choices = [(f"{r.get('name') or r['id']} · {r['method']} · {r['status']}", r["id"]) for r in items]
        ids = [c[1] for c in choices]
        if run_id and run_id not in ids:  # an older run picked from elsewhere: keep it selectable
            choices.append((run_id, run_id))
        run_id = run_id or (ids[0] if ids else None)
        sel = gr.update(choices=choices, value=run_id)
        if not run_id:
            return runs_frame(items), sel, status("info", "No runs yet: start one above."), "", logst
        try:
            run = await api.get(f"/v1/runs/{run_id}")
            if logst.get("run_id") != run_id:
                logst = {"run_id": run_id, "after": 0, "lines": []}
            new = (await api.get(f"/v1/runs/{run_id}/logs", after_id=logst["after"], limit=1000))["items"]
            if new:
                lines = logst["lines"] + [
                    f"{str(x['created_at'])[11:19]} {x['level']:<5} {x['message']}"
                    for x in new
                    if x["level"] != "DEBUG"
                ]
                logst = {"run_id": run_id, "after": new[-1]["id"], "lines": lines[-MAX_LOG_LINES:]}
            return runs_frame(items), sel, run_status(run), "\n".join(logst["lines"]), logst
        except Exception as exc:
            return runs_frame(items), sel, error_status(exc), gr.update(), logst

    watch_outputs = [runs_table, selected, run_state, logs, log_state]
    timer.tick(tick, [ctx.key, selected, log_state], watch_outputs, show_progress="hidden", concurrency_limit=None)
    selected.change(tick, [ctx.key, selected, log_state], watch_outputs, show_progress="hidden")

    def run_action(action: str):
        """The click handler that asks the API to ``action`` (cancel / resume) the selected run."""

        async def act(key: str, run_id: str | None):
            try:
                if not run_id:
                    raise ValueError(f"run: pick a run to {action}")
                return run_status(await ctx.api(key).post(f"/v1/runs/{run_id}/{action}"))
            except Exception as exc:
                return error_status(exc)

        return act

    cancel.click(run_action("cancel"), [ctx.key, selected], [run_state])
    resume.click(run_action("resume"), [ctx.key, selected], [run_state])

    # --- promote ------------------------------------------------------------------------------------------------

    async def list_run_checkpoints(key: str, run_id: str | None, current: str | None):
        if not run_id or not (key or "").strip():
            return gr.update(choices=[], value=None)
        try:
            items = await ctx.api(key).checkpoints(run_id=run_id)
        except Exception:
            return gr.update()
        choices = [(f"{i['name']} (step {i.get('step')})", i["id"]) for i in items]
        ids = [c[1] for c in choices]
        return gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    # the run's status line changes as it progresses: a finished run's checkpoint shows up without a reload
    for trigger in (selected.change, run_state.change):
        trigger(list_run_checkpoints, [ctx.key, selected, promote_ckpt], [promote_ckpt], show_progress="hidden")

    async def do_promote(key: str, ckpt_id: str | None, new_name: str):
        try:
            if not ckpt_id:
                raise ValueError(
                    "checkpoint: this run has no finished checkpoint yet (a run registers one when it succeeds)"
                )
            api = ctx.api(key)
            item = await api.get(f"/v1/checkpoints/{ckpt_id}")  # the key must be able to see it
            where = services.checkpoint_dir(ctx.app, item["id"])
            path = str(where) if where is not None else None
            if path is None:
                raise ValueError(f"checkpoint: {item['name']} has no files on this server")
            made = await api.post("/v1/checkpoints", {"name": (new_name or "").strip(), "path": path})
            return status(
                "ok",
                f"{made['name']} is now in the generation list (press ↻ next to the checkpoint "
                f"lists on Generate and Compare).",
            )
        except Exception as exc:
            return status("error", f"Not promoted: {error_text(exc)}")

    promote.click(do_promote, [ctx.key, promote_ckpt, promote_name], [promote_state])


__all__ = ["build", "build_overrides", "diff", "method_defaults", "parse_json_object", "run_status", "runs_frame"]
