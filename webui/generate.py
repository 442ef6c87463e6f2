"""Generate tab: one video from a checkpoint (its own sampler, or with FlowMo guidance: Advanced), with its
generation time, network evaluations, optical-flow video (colour wheel, as in MoGAN's Figure 3), weight-free motion
metrics, and an mp4 download.

The request is ``POST /v1/generations`` (job mode) with the person's key, then ``GET /v1/generations/{id}`` until it
is done (progress is shown meanwhile) and ``GET /v1/videos/{id}`` for the file: the API's limits and scopes apply,
and the worker makes the video with the same function as the CLI and the API's sync generations
(``trainer.serving.generate_video``). ``generate_one`` is that round trip, shared with the Compare tab; this module
reaches the backend only through ``webui.client`` and ``backend.services``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from backend import services
from backend.services import DEFAULT_ETA, DEFAULT_ITERATIONS, ETA_MAX, ITERATIONS_MAX
from webui import media
from webui.common import (
    UiContext,
    checkpoint_choices,
    checkpoint_sampling,
    describe_schedule,
    error_status,
    optional_float,
    optional_int,
    seconds,
    status,
)
from webui.flow_viz import color_wheel_legend

TERMINAL = ("succeeded", "failed", "cancelled")
POLL_S = 0.4


class JobFailed(Exception):
    """A generation job that ended failed or cancelled; the message is the worker's, in words."""


@dataclass
class GenResult:
    checkpoint: str
    job: dict[str, Any]
    video_path: Path
    frames: np.ndarray
    fps: float
    seconds: float | None  # sampling time measured by the worker
    wall_seconds: float | None  # the job from start to finish (model load and encoding included)
    nfe: int | None
    steps: int | None
    kind: str | None
    flow: media.FlowClip = field(default_factory=lambda: media.FlowClip(None, reason="not computed"))
    flow_path: Path | None = None
    metrics: dict[str, dict] = field(default_factory=dict)
    flowmo: dict[str, Any] | None = None  # FlowMo's settings and extra passes, when the video was guided


def _sampler_info(app: Any, job: dict[str, Any]) -> dict[str, Any]:
    """What the worker measured (sampling seconds, network evaluations): from the job's result when the API gives
    it, else from the video's record (read-only)."""
    result = job.get("result") or {}
    for k in ("sampler", "info"):
        if isinstance(result.get(k), dict):
            return result[k]
    vid = (job.get("video") or {}).get("id")
    if not vid:
        return {}
    return services.video_sampler_info(app, vid)


def _wall(job: dict[str, Any]) -> float | None:
    a, b = job.get("started_at"), job.get("finished_at")
    if not a or not b:
        return None
    try:
        return (dt.datetime.fromisoformat(str(b)) - dt.datetime.fromisoformat(str(a))).total_seconds()
    except ValueError:
        return None


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-")[:60] or "video"


async def generate_one(
    ctx: UiContext,
    key: str,
    body: dict[str, Any],
    on_status: Callable[[str, float | None], Awaitable[None]] | None = None,
    sampling: dict[str, Any] | None = None,
    analyse: bool = True,
) -> GenResult:
    """Submit one generation with ``key``, wait for it, fetch the mp4, and (``analyse``) compute its flow video and
    motion metrics. ``on_status(text, progress)`` is awaited on every change."""
    api = ctx.api(key)
    body = {k: v for k, v in body.items() if v is not None}
    body["mode"] = "job"
    job = await api.post("/v1/generations", body)
    deadline = time.monotonic() + ctx.settings.infer_soft_time_limit_s + ctx.settings.hard_time_limit_margin_s + 60
    t0 = time.monotonic()
    last = None
    while job["status"] not in TERMINAL:
        now = time.monotonic()
        if now > deadline:
            raise JobFailed(
                f"generation {job['id']} did not finish within the worker's time limit; it is still "
                f"{job['status']} (GET /v1/generations/{job['id']})"
            )
        text = (
            f"{body['checkpoint']}: queued, waiting for a worker ({now - t0:.0f} s)"
            if job["status"] == "queued"
            else f"{body['checkpoint']}: generating ({now - t0:.0f} s)"
        )
        if on_status and text != last:
            await on_status(text, job.get("progress"))
            last = text
        await asyncio.sleep(POLL_S)
        job = await api.get(f"/v1/generations/{job['id']}")
    if job["status"] == "failed":
        raise JobFailed(f"{body['checkpoint']}: the generation failed: {job.get('error') or 'no reason recorded'}")
    if job["status"] == "cancelled":
        raise JobFailed(f"{body['checkpoint']}: the generation was cancelled")
    video = job.get("video")
    if not video:
        raise JobFailed(f"{body['checkpoint']}: the generation finished without a video")
    if on_status:
        await on_status(f"{body['checkpoint']}: fetching the video", None)
    data = await api.get_bytes(video["url"])
    out = media.scratch_dir()
    path = out / f"{_safe_name(body['checkpoint'])}_seed{body.get('seed', 0)}.mp4"
    path.write_bytes(data)
    frames, fps = await asyncio.to_thread(media.read_clip, path)
    info = _sampler_info(ctx.app, job)
    nfe = info.get("network_evaluations")
    if nfe is None:  # worked out from the request as the worker works it out
        nfe = await asyncio.to_thread(services.network_evaluations, sampling, body)
    res = GenResult(
        checkpoint=body["checkpoint"],
        job=job,
        video_path=path,
        frames=frames,
        fps=float(video.get("fps") or fps),
        seconds=info.get("seconds"),
        wall_seconds=_wall(job),
        nfe=nfe,
        steps=info.get("steps"),
        kind=info.get("kind"),
        flowmo=info.get("flowmo") if isinstance(info.get("flowmo"), dict) else None,
    )
    if analyse:
        if on_status:
            await on_status(f"{body['checkpoint']}: optical flow and motion metrics", None)
        res.flow = await asyncio.to_thread(media.clip_flow, frames)
        if res.flow.frames is not None:
            res.flow_path = out / f"{path.stem}_flow.mp4"
            await asyncio.to_thread(media.write_clip, res.flow_path, res.flow.frames, res.fps)
        res.metrics = await asyncio.to_thread(media.motion_metrics, frames, res.fps)
    return res


def stats_markdown(r: GenResult) -> str:
    kind = {"few_step": "few-step", "teacher": "teacher"}.get(r.kind or "", r.kind or "")
    steps = f", {r.steps} steps" if r.steps else ""
    lines = [
        f"- **Generation time:** {seconds(r.seconds)} sampling"
        + (f" ({seconds(r.wall_seconds)} for the whole job)" if r.wall_seconds is not None else ""),
        f"- **Network evaluations:** {r.nfe if r.nfe is not None else 'n/a'}" + (f" ({kind}{steps})" if kind else ""),
        f"- **Clip:** {r.frames.shape[0]} frames, {r.frames.shape[1]}x{r.frames.shape[2]}, {r.fps:g} fps",
        *([flowmo_line(r.flowmo)] if r.flowmo else []),
        "",
        "| Motion metric (lite) | value |",
        "|---|---|",
    ]
    for name, entry in r.metrics.items():
        lines.append(f"| {media.metric_label(name)} | {media.format_metric(entry)} |")
    if r.flow.frames is not None:
        lines += [
            "",
            (
                f"Flow (OpenCV DIS): largest motion {r.flow.max_magnitude:.2f} px/frame, mean "
                f"{r.flow.mean_magnitude:.2f} px/frame; fully saturated colour = the largest motion."
            ),
        ]
    elif r.flow.reason:
        lines += ["", f"No flow visualization: {r.flow.reason}."]
    reasons = sorted({e["reason"] for e in r.metrics.values() if e.get("reason")})
    lines += [f"n/a: {x}" for x in reasons]
    return "\n".join(lines)


def flowmo_line(f: dict[str, Any]) -> str:
    """The stats line of a FlowMo-guided video: its settings and the passes it added."""
    return (
        f"- **Sampler:** FlowMo, eta {f.get('eta')}, guided steps {f.get('start')}-{f.get('stop')} x "
        f"{f.get('iterations')} iteration(s): +{f.get('forward_evaluations')} forward and "
        f"{f.get('backward_evaluations')} backward network evaluations (included above)"
    )


def flowmo_fields(sampler: str | None, eta: Any, start: Any, stop: Any, iterations: Any) -> dict[str, Any]:
    """The request's ``sampler`` and, for FlowMo, its settings from the form (empty: FlowMo's defaults); the
    settings are left out for the default sampler, whatever the fields hold."""
    if (sampler or "default") != "flowmo":
        return {"sampler": "default"}
    return {
        "sampler": "flowmo",
        "flowmo_eta": optional_float(eta, "FlowMo eta"),
        "flowmo_start": optional_int(start, "FlowMo first step"),
        "flowmo_stop": optional_int(stop, "FlowMo stop step"),
        "flowmo_iterations": optional_int(iterations, "FlowMo iterations"),
    }


def checkpoint_defaults(app: Any, item: dict[str, Any] | None) -> tuple[str, int | None, int | None, int | None]:
    """``(schedule text, frames, height, width)`` of a listed checkpoint, so the fields show its defaults before a
    generation; ``None`` where the checkpoint does not say."""
    if item is None:
        return "", None, None, None
    s = checkpoint_sampling(app, item)
    if not s:
        return describe_schedule(None), None, None, None
    return describe_schedule(s), s.get("num_frames"), s.get("height"), s.get("width")


def default_shape() -> tuple[int | None, int | None, int | None]:
    """``(frames, height, width)`` of the first zoo checkpoint: the fields' values when the page loads, before a key
    lists the checkpoints (the shipped tiny ones all share one size)."""
    first = services.first_zoo_checkpoint()
    if first is None:  # an empty or unreadable zoo: empty until a checkpoint is picked
        return None, None, None
    return checkpoint_defaults(None, {"name": first, "source": "zoo"})[1:]


def build(ctx: UiContext) -> None:
    lim = ctx.limits
    items_state = gr.State([])
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            with gr.Row():
                ckpt = gr.Dropdown(
                    label="Checkpoint",
                    choices=[],
                    elem_id="gen-checkpoint",
                    scale=4,
                    info="trained, registered and zoo checkpoints (the tiny ones ship ready)",
                )
                refresh = gr.Button("↻", elem_id="gen-refresh", scale=0, min_width=40)
            schedule = gr.Markdown("", elem_id="gen-schedule")
            prompt = gr.Textbox(
                label="Prompt",
                lines=2,
                elem_id="gen-prompt",
                placeholder="a red square moves to the right",
                info=f"at most {lim.max_prompt_chars} characters",
            )
            with gr.Row():
                seed = gr.Number(0, label="Seed", precision=0, elem_id="gen-seed", info=f"0-{lim.max_seed}")
                steps = gr.Textbox(
                    "",
                    label="Steps",
                    elem_id="gen-steps",
                    placeholder="the checkpoint's own",
                    info=f"empty: the checkpoint's own schedule; 1-{lim.max_steps}",
                )
            with gr.Row():
                # a callable value runs on every page load: the default checkpoint's size, not 0, before a pick
                frames, height, width = (
                    gr.Number(lambda i=i: default_shape()[i], label=label, precision=0, elem_id=elem, info=info)
                    for i, (label, elem, info) in enumerate(
                        (
                            ("Frames", "gen-frames", f"1-{lim.max_frames}"),
                            ("Height", "gen-height", f"8-{lim.max_height} px"),
                            ("Width", "gen-width", f"8-{lim.max_width} px"),
                        )
                    )
                )
            with gr.Accordion("Advanced", open=False):
                guidance = gr.Textbox(
                    "",
                    label="Guidance (teacher CFG)",
                    elem_id="gen-guidance",
                    placeholder="the checkpoint's own",
                    info="empty: the checkpoint's own; few-step students use none",
                )
                sampler = gr.Radio(
                    ["default", "flowmo"],
                    value="default",
                    label="Sampler",
                    elem_id="gen-sampler",
                    info="flowmo: FlowMo guidance toward coherent motion (training-free; gradient "
                    "steps on the latent at the first steps: one more forward and backward pass "
                    "per guided step and iteration)",
                )
                with gr.Row():
                    fm_eta = gr.Textbox(
                        "",
                        label="FlowMo eta",
                        elem_id="gen-flowmo-eta",
                        placeholder=f"{DEFAULT_ETA:g}",
                        info=f"step size, (0, {ETA_MAX:g}]",
                    )
                    fm_start = gr.Textbox(
                        "", label="FlowMo first step", elem_id="gen-flowmo-start", placeholder="0", info="0-based"
                    )
                    fm_stop = gr.Textbox(
                        "",
                        label="FlowMo stop step",
                        elem_id="gen-flowmo-stop",
                        placeholder="first quarter",
                        info="guided steps end before it",
                    )
                    fm_iterations = gr.Textbox(
                        "",
                        label="FlowMo iterations",
                        elem_id="gen-flowmo-iterations",
                        placeholder=f"{DEFAULT_ITERATIONS}",
                        info=f"1-{ITERATIONS_MAX} per guided step",
                    )
            go = gr.Button("Generate", variant="primary", elem_id="gen-button")
            state = gr.HTML(status("info", "Pick a checkpoint, write a prompt, press Generate."), elem_id="gen-status")
        with gr.Column(scale=3, min_width=400):
            with gr.Row():
                video = gr.Video(
                    label="Video",
                    elem_id="gen-video",
                    autoplay=True,
                    loop=True,
                    height=300,
                    interactive=False,
                    elem_classes=["ml-video"],
                )
                flow = gr.Video(
                    label="Optical flow",
                    elem_id="gen-flow",
                    autoplay=True,
                    loop=True,
                    height=300,
                    interactive=False,
                    elem_classes=["ml-video"],
                )
            with gr.Row():
                stats = gr.Markdown("", elem_id="gen-stats")
                with gr.Column(scale=0, min_width=150):
                    gr.Image(
                        color_wheel_legend(97),
                        label="Flow colour key",
                        show_label=False,
                        height=120,
                        width=120,
                        interactive=False,
                        elem_id="gen-legend",
                        buttons=[],
                        container=False,
                    )
                    gr.Markdown(
                        "<span class='ml-muted'>Flow colour key: hue = direction (right = red, down = "
                        "yellow, left = blue, up = violet), saturation = speed.</span>"
                    )
            download = gr.DownloadButton("Download mp4", visible=False, elem_id="gen-download")

    def fields(item: dict | None) -> tuple:
        """The schedule and size fields for ``item`` (a field the checkpoint does not describe keeps its value)."""
        text, *shape = checkpoint_defaults(ctx.app, item)
        return (text, *(gr.update() if v is None else v for v in shape))

    async def load_checkpoints(key: str, current: str | None):
        keep = (gr.update(),) * 4
        if not (key or "").strip():
            return (
                gr.update(choices=[], value=None),
                [],
                status("info", "Paste an API key at the top to list the checkpoints."),
                *keep,
            )
        try:
            items = await ctx.api(key).checkpoints()
        except Exception as exc:
            return gr.update(), [], error_status(exc), *keep
        choices = checkpoint_choices(items)
        names = [v for _, v in choices]
        value = current if current in names else (names[0] if names else None)
        msg = (
            status("info", f"{len(items)} checkpoints available.")
            if items
            else status("error", "No checkpoints yet: train one (Runs tab, or motionlab recipe tiny) or register one.")
        )
        # a newly pre-selected checkpoint fills its defaults here, not only through the dropdown's change event
        shown = fields(next((i for i in items if i["name"] == value), None)) if value != current else keep
        return gr.update(choices=choices, value=value), items, msg, *shown

    def on_checkpoint(name: str | None, items: list[dict]):
        return fields(next((i for i in items if i["name"] == name), None))

    async def run(
        key,
        name,
        text,
        seed_v,
        steps_v,
        frames_v,
        height_v,
        width_v,
        guidance_v,
        sampler_v,
        eta_v,
        start_v,
        stop_v,
        iterations_v,
        items,
    ):
        outputs = [state, video, flow, stats, download]
        none = {o: gr.update() for o in outputs}
        try:
            if not name:
                raise ValueError("checkpoint: pick a checkpoint first")
            body = {
                "checkpoint": name,
                "prompt": text or "",
                "seed": optional_int(seed_v, "seed") or 0,
                "steps": optional_int(steps_v, "steps"),
                "num_frames": optional_int(frames_v, "frames"),
                "height": optional_int(height_v, "height"),
                "width": optional_int(width_v, "width"),
                "guidance": optional_float(guidance_v, "guidance"),
                **flowmo_fields(sampler_v, eta_v, start_v, stop_v, iterations_v),
            }
            item = next((i for i in items if i["name"] == name), None)
            sampling = checkpoint_sampling(ctx.app, item)
            yield {**none, state: status("busy", f"Submitting to {name}…"), download: gr.update(visible=False)}
            queue: asyncio.Queue = asyncio.Queue()

            async def on_status(text_: str, progress: float | None) -> None:
                await queue.put(status("busy", text_, progress=progress))

            task = asyncio.create_task(generate_one(ctx, key, body, on_status, sampling))
            while not task.done():
                try:
                    msg = await asyncio.wait_for(queue.get(), timeout=0.5)
                    yield {**none, state: msg}
                except TimeoutError:
                    pass
            r = task.result()
            yield {
                state: status(
                    "ok",
                    f"Done: {r.frames.shape[0]} frames from {name} in {seconds(r.seconds)} "
                    f"({r.nfe} network evaluations).",
                ),
                video: str(r.video_path),
                flow: str(r.flow_path) if r.flow_path else None,
                stats: stats_markdown(r),
                download: gr.update(value=str(r.video_path), visible=True),
            }
        except Exception as exc:
            yield {**none, state: error_status(exc)}

    inputs = [
        ctx.key,
        ckpt,
        prompt,
        seed,
        steps,
        frames,
        height,
        width,
        guidance,
        sampler,
        fm_eta,
        fm_start,
        fm_stop,
        fm_iterations,
        items_state,
    ]
    go.click(run, inputs, [state, video, flow, stats, download], concurrency_limit=None)
    prompt.submit(run, inputs, [state, video, flow, stats, download], concurrency_limit=None)
    for trigger in (refresh.click, ctx.key.change):
        trigger(
            load_checkpoints,
            [ctx.key, ckpt],
            [ckpt, items_state, state, schedule, frames, height, width],
            show_progress="hidden",
        )
    ckpt.change(on_checkpoint, [ckpt, items_state], [schedule, frames, height, width], show_progress="hidden")


__all__ = [
    "GenResult",
    "JobFailed",
    "build",
    "checkpoint_defaults",
    "default_shape",
    "flowmo_fields",
    "flowmo_line",
    "generate_one",
    "stats_markdown",
]
