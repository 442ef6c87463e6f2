"""Compare tab: the same prompt and seed on two to four checkpoints side by side (e.g. teacher 50-step, DMD 3-step,
MoGAN 3-step), each with its flow video, generation time, network evaluations and motion metrics; the clips play in
sync, and one frame-locked side-by-side video is made for download. Below: a gallery of comparisons built from the
videos a benchmark saved (same prompt and seed for every checkpoint).

Generations go through the API with the person's key (``generate.generate_one``); the per-key concurrency limit
of the API applies (four checkpoints are four concurrent generations).
"""

from __future__ import annotations

import asyncio
from typing import Any

import gradio as gr
import pandas as pd

from evaluator.benchmark.runner import video_path
from webui import media
from webui.common import (
    UiContext,
    checkpoint_choices,
    checkpoint_sampling,
    error_status,
    error_text,
    optional_int,
    seconds,
    status,
)
from webui.generate import GenResult, generate_one

MAX_SLOTS = 4
MAX_GALLERY_ITEMS = 8
SYNC_JS = """
() => {
  const vids = Array.from(document.querySelectorAll('#cmp-grid video'));
  vids.forEach(v => { v.pause(); v.loop = true; v.muted = true; v.currentTime = 0; });
  Promise.all(vids.map(v => v.play().catch(() => null)));
  return [];
}
"""


def _metrics_row(r: GenResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "checkpoint": r.checkpoint,
        "sampling time": seconds(r.seconds),
        "network evaluations": r.nfe if r.nfe is not None else "n/a",
    }
    for name, entry in r.metrics.items():
        row[media.metric_label(name)] = media.format_metric(entry)
    if r.flow.max_magnitude is not None:
        row["largest motion (px/frame)"] = f"{r.flow.max_magnitude:.2f}"
    return row


def _slot_markdown(r: GenResult) -> str:
    lines = [f"**{seconds(r.seconds)}** sampling · **{r.nfe if r.nfe is not None else 'n/a'}** network evaluations"]
    for name, entry in r.metrics.items():
        lines.append(f"{media.metric_label(name)}: {media.format_metric(entry)}")
    return "  \n".join(lines)


def composite_video(results: list[GenResult]) -> str:
    """All clips and their flows in one frame-locked mp4 (returns its path)."""
    grid = media.side_by_side([(r.checkpoint, r.frames, r.flow.frames) for r in results])
    out = media.scratch_dir() / "side_by_side.mp4"
    media.write_clip(out, grid, results[0].fps)
    return str(out)


def benchmark_gallery(
    app: Any, benchmark: dict[str, Any], scores: list[dict[str, Any]], limit: int = MAX_GALLERY_ITEMS
) -> list[tuple[str, str]]:
    """Side-by-side videos (clips over flows) of every checkpoint of a benchmark for its first (prompt, seed)
    pairs, from the videos the benchmark saved. Returns ``[(mp4 path, caption)]``."""
    config = benchmark.get("config") or {}
    checkpoints = list(config.get("checkpoints") or [])
    out_dir = app.state.store.path("reports", benchmark["id"])
    pairs: list[tuple[str, int]] = []
    for s in scores:
        if s.get("prompt") is not None and s.get("seed") is not None and (s["prompt"], s["seed"]) not in pairs:
            pairs.append((s["prompt"], int(s["seed"])))
    by_key: dict[tuple[str, str, int], dict[str, float]] = {}
    for s in scores:
        if s.get("value") is not None and s.get("prompt") is not None:
            by_key.setdefault((s["checkpoint"], s["prompt"], int(s["seed"])), {})[s["metric"]] = s["value"]
    items = []
    scratch = media.scratch_dir()
    for n, (prompt, seed) in enumerate(pairs[:limit]):
        cols = []
        for ck in checkpoints:
            p = video_path(out_dir, ck, prompt, seed)
            if not p.is_file():
                continue
            frames, fps = media.read_clip(p)
            fl = media.clip_flow(media.downscale(frames, 256))
            cols.append((ck, frames, fl.frames))
        if len(cols) < 1:
            continue
        grid = media.side_by_side(cols)
        path = scratch / f"cmp_{n:02d}.mp4"
        media.write_clip(path, grid, fps)
        ms = []
        for ck, *_ in cols:
            v = by_key.get((ck, prompt, seed), {}).get("motion_score")
            ms.append(f"{ck}: {v:.3f}" if v is not None else f"{ck}: n/a")
        items.append((str(path), f"**“{prompt}”** (seed {seed}) · motion score: {', '.join(ms)}"))
    return items


def build(ctx: UiContext) -> None:
    items_state = gr.State([])
    with gr.Row():
        ckpts = gr.Dropdown(
            label="Checkpoints (2 to 4)",
            choices=[],
            multiselect=True,
            max_choices=MAX_SLOTS,
            elem_id="cmp-checkpoints",
            scale=4,
            info="each samples with its own schedule (teacher multi-step, students few-step)",
        )
        refresh = gr.Button("↻", elem_id="cmp-refresh", scale=0, min_width=40)
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", elem_id="cmp-prompt", scale=4, placeholder="a ball bounces")
        seed = gr.Number(0, label="Seed", precision=0, elem_id="cmp-seed", scale=1)
        teacher_steps = gr.Textbox(
            "",
            label="Teacher steps",
            elem_id="cmp-teacher-steps",
            scale=1,
            placeholder="each teacher's own",
            info="empty: each teacher's own (e.g. 50)",
        )
    with gr.Row():
        go = gr.Button("Compare", variant="primary", elem_id="cmp-button")
        sync = gr.Button("▶ Play all in sync", elem_id="cmp-sync")
    state = gr.HTML(status("info", "Pick two to four checkpoints and a prompt, press Compare."), elem_id="cmp-status")
    slots = []
    with gr.Row(elem_id="cmp-grid", equal_height=False):
        for i in range(MAX_SLOTS):
            with gr.Column(visible=False, min_width=200) as col:
                title = gr.Markdown(f"slot {i}", elem_id=f"cmp-title-{i}")
                v, f = (
                    gr.Video(
                        label=label,
                        autoplay=True,
                        loop=True,
                        height=220,
                        interactive=False,
                        elem_id=f"cmp-{kind}-{i}",
                        elem_classes=["ml-video"],
                    )
                    for kind, label in (("video", "video"), ("flow", "optical flow"))
                )
                md = gr.Markdown("", elem_id=f"cmp-stats-{i}")
            slots.append((col, title, v, f, md))
    table = gr.Dataframe(
        label="Time and motion metrics (lite backend)", interactive=False, elem_id="cmp-table", visible=False
    )
    with gr.Column(visible=False) as composite_box:
        gr.Markdown(
            "<span class='ml-muted'>The side-by-side video below is one file: every clip and its flow are "
            "frame-locked; download it with the button in its corner.</span>"
        )
        composite = gr.Video(
            label="Side by side",
            interactive=False,
            elem_id="cmp-composite",
            elem_classes=["ml-video"],
            height=420,
            autoplay=True,
            loop=True,
        )

    gr.Markdown("### Saved comparisons from benchmark videos")
    with gr.Row():
        bench = gr.Dropdown(
            label="Benchmark",
            choices=[],
            elem_id="cmp-bench",
            scale=4,
            info="finished benchmarks; each item shows every checkpoint on the same prompt and seed",
        )
        bench_refresh = gr.Button("↻", elem_id="cmp-bench-refresh", scale=0, min_width=40)
        bench_go = gr.Button("Show", elem_id="cmp-bench-show", scale=1)
    gallery_state = gr.HTML("", elem_id="cmp-gallery-status")
    gallery_slots = []
    with gr.Column(elem_id="cmp-gallery"):
        for r in range(0, MAX_GALLERY_ITEMS, 2):
            with gr.Row(equal_height=False):
                for i in range(r, r + 2):
                    with gr.Column(visible=False, min_width=300) as gcol:
                        gv = gr.Video(
                            label=f"comparison {i + 1}",
                            show_label=False,
                            autoplay=True,
                            loop=True,
                            height=300,
                            interactive=False,
                            elem_id=f"cmp-gallery-video-{i}",
                            elem_classes=["ml-video"],
                        )
                        gcap = gr.Markdown("", elem_id=f"cmp-gallery-caption-{i}")
                    gallery_slots.append((gcol, gv, gcap))

    async def load(key: str, current: list[str] | None):
        if not (key or "").strip():
            return gr.update(choices=[], value=[]), [], gr.update(choices=[], value=None)
        try:
            api = ctx.api(key)
            items = await api.checkpoints()
            benches = await api.benchmarks(status="succeeded", source="measured")  # imported have no videos
        except Exception:
            return gr.update(), [], gr.update()
        names = {i["name"] for i in items}
        bench_choices = [
            (f"{b.get('name') or b['id']} · {', '.join(b['config'].get('checkpoints', []))}", b["id"]) for b in benches
        ]
        return (
            gr.update(choices=checkpoint_choices(items), value=[c for c in (current or []) if c in names]),
            items,
            gr.update(choices=bench_choices, value=bench_choices[0][1] if bench_choices else None),
        )

    async def run(key, names, text, seed_v, tsteps, items):
        outs: list[Any] = [state, table, composite, composite_box] + [c for s in slots for c in s]
        keep = {o: gr.update() for o in outs}
        try:
            names = list(names or [])
            if not 2 <= len(names) <= MAX_SLOTS:
                raise ValueError(f"checkpoints: pick 2 to {MAX_SLOTS} checkpoints (got {len(names)})")
            seed_i = optional_int(seed_v, "seed") or 0
            t_steps = optional_int(tsteps, "teacher steps")
            bodies, samplings = [], []
            for n in names:
                item = next((i for i in items if i["name"] == n), None)
                s = checkpoint_sampling(ctx.app, item)
                samplings.append(s)
                steps = t_steps if (t_steps and (s or {}).get("kind", "teacher") == "teacher") else None
                bodies.append({"checkpoint": n, "prompt": text or "", "seed": seed_i, "steps": steps})
            hidden = {}
            for i, (col, title, v, f, md) in enumerate(slots):
                hidden[col] = gr.update(visible=i < len(names))
                if i < len(names):
                    hidden.update({title: f"**{names[i]}**", v: None, f: None, md: "waiting…"})
            yield {
                **keep,
                **hidden,
                state: status("busy", f"Generating on {len(names)} checkpoints…"),
                table: gr.update(visible=False),
                composite_box: gr.update(visible=False),
            }
            progress: dict[str, str] = {n: "submitting" for n in names}
            changed = asyncio.Event()

            def make_cb(n: str):
                async def cb(t: str, _p: float | None) -> None:
                    progress[n] = t.split(": ", 1)[-1]
                    changed.set()

                return cb

            tasks = [
                asyncio.create_task(generate_one(ctx, key, b, make_cb(b["checkpoint"]), s))
                for b, s in zip(bodies, samplings)
            ]
            while not all(t.done() for t in tasks):
                try:
                    await asyncio.wait_for(changed.wait(), timeout=0.5)
                except TimeoutError:
                    pass
                changed.clear()
                done = sum(t.done() for t in tasks)
                yield {
                    **keep,
                    state: status(
                        "busy",
                        f"{done}/{len(tasks)} done · " + " · ".join(f"{n}: {p}" for n, p in progress.items()),
                        progress=done / len(tasks),
                    ),
                }
            results: list[GenResult] = []
            upd: dict[Any, Any] = {}
            errors = []
            for i, t in enumerate(tasks):
                col, title, v, f, md = slots[i]
                exc = t.exception()
                if exc is not None:
                    errors.append(f"{names[i]}: {error_text(exc)}")
                    upd[md] = f"⚠ {error_text(exc)}"
                    continue
                r = t.result()
                results.append(r)
                upd.update({v: str(r.video_path), f: str(r.flow_path) if r.flow_path else None, md: _slot_markdown(r)})
            if results:
                upd[table] = gr.update(value=pd.DataFrame([_metrics_row(r) for r in results]), visible=True)
                upd[composite] = await asyncio.to_thread(composite_video, results)
                upd[composite_box] = gr.update(visible=True)
            if errors:
                upd[state] = status("error", "Some generations failed: " + "; ".join(errors))
            else:
                upd[state] = status(
                    "ok",
                    f"Done: {len(results)} checkpoints on the same prompt and seed {seed_i}. "
                    "Press “Play all in sync” to restart them together.",
                )
            yield {**keep, **upd}
        except Exception as exc:
            yield {**keep, state: error_status(exc)}

    gallery_outputs = [gallery_state] + [c for slot in gallery_slots for c in slot]

    def gallery_update(items: list[tuple[str, str]]) -> list[Any]:
        out: list[Any] = []
        for i in range(MAX_GALLERY_ITEMS):
            if i < len(items):
                out += [gr.update(visible=True), items[i][0], items[i][1]]
            else:
                out += [gr.update(visible=False), None, ""]
        return out

    async def show_gallery(key: str, bench_id: str | None):
        keep = [gr.update()] * (3 * MAX_GALLERY_ITEMS)
        try:
            if not bench_id:
                raise ValueError("benchmark: pick a finished benchmark (run one with POST /v1/benchmarks)")
            yield [status("busy", "Building the comparisons from the benchmark's videos…")] + keep
            rep = await ctx.api(key).get(f"/v1/benchmarks/{bench_id}/report")
            items = await asyncio.to_thread(benchmark_gallery, ctx.app, rep["benchmark"], rep["scores"])
            if not items:
                yield [status("error", "This benchmark has no saved videos to compare.")] + gallery_update([])
                return
            yield (
                [
                    status(
                        "ok",
                        f"{len(items)} comparisons: in each, every checkpoint on the same prompt and seed, "
                        f"their optical flow below.",
                    )
                ]
                + gallery_update(items)
            )
        except Exception as exc:
            yield [error_status(exc)] + keep

    outs = [state, table, composite, composite_box] + [c for s in slots for c in s]
    go.click(run, [ctx.key, ckpts, prompt, seed, teacher_steps, items_state], outs, concurrency_limit=None)
    sync.click(None, None, None, js=SYNC_JS)
    for trigger in (refresh.click, bench_refresh.click, ctx.key.change):
        trigger(load, [ctx.key, ckpts], [ckpts, items_state, bench], show_progress="hidden")
    bench_go.click(show_gallery, [ctx.key, bench], gallery_outputs, concurrency_limit=None)


__all__ = ["benchmark_gallery", "build", "composite_video"]
