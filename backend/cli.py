"""``motionlab``: the command-line tool. Every command has ``--help``.

motionlab train sft --preset tiny                 # tiny VAE + teacher on CPU
motionlab train dmd --preset tiny --teacher tiny-teacher
motionlab plan --method mogan --preset full --gpus 8 --gpu-mem 80   # per-GPU memory before a run
motionlab generate --checkpoint tiny-teacher --prompt "a red square moves left" --seed 0 --out v.mp4
motionlab generate --checkpoint tiny-dmd --prompts-file prompts.txt --seeds 4 --out videos/
motionlab data synth data/synthetic --n 200
motionlab data preprocess data/shards --model tiny-teacher --flow horn_schunck   # then data.source=shards
motionlab serve                                   # API + web UI + local worker, embedded defaults
motionlab keys create --name alice --scope read --scope generate
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from trainer.flowmo import (
    DEFAULT_ETA,
    DEFAULT_ITERATIONS,
    ETA_MAX,
    ITERATIONS_MAX,
    SAMPLERS,
    FlowMoError,
    flowmo_from_options,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
data_app = typer.Typer(no_args_is_help=True, help="Make and inspect datasets.")
ckpt_app = typer.Typer(no_args_is_help=True, help="Checkpoints known by name.")
app.add_typer(data_app, name="data")
app.add_typer(ckpt_app, name="checkpoints")


def _fail(msg: str, code: int = 2):
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _parse_sets(sets: list[str]) -> dict:
    """``--set optim.lr=1e-4 --set data.num_videos=100`` -> nested dict (values parsed as YAML scalars)."""
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    import yaml

    from trainer.config import set_dotted

    out: dict = {}
    for item in sets or []:
        if "=" not in item:
            _fail(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; a number is meant
            try:
                value = float(value)
            except ValueError:
                pass
        set_dotted(out, key.strip(), value)
    return out


@app.command()
def train(
    method: str = typer.Argument(..., help="sft | dmd | mogan | vdot | dfdpo | vae"),
    preset: str = typer.Option("tiny", help="tiny (CPU) or full (Wan2.1-T2V-1.3B from the weights directory)"),
    init: str | None = typer.Option(None, help="checkpoint name or directory the trained network starts from"),
    teacher: str | None = typer.Option(None, help="frozen teacher checkpoint (distillation methods)"),
    config: Path | None = typer.Option(None, help="YAML config file (overridden by --set)"),
    set_: list[str] = typer.Option([], "--set", help="override a config field: --set optim.lr=1e-4"),
    steps: int | None = typer.Option(None, help="number of training iterations"),
    run_dir: Path | None = typer.Option(None, help="run directory (re-running on it resumes)"),
    register_as: str | None = typer.Option(None, help="copy the export into the zoo under this name"),
):
    """Train with one method; resumes if RUN_DIR already holds checkpoints."""
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    from trainer.config import ConfigError, deep_merge, load_train_config, load_yaml

    overrides = load_yaml(config) if config else {}
    overrides = deep_merge(overrides, _parse_sets(set_))
    for key, val in (("init", init), ("teacher", teacher), ("steps", steps)):
        if val is not None:
            overrides[key] = val
    run_dir = run_dir or Path("runs") / f"{method}-{preset}"
    try:
        if method == "sft" and preset == "tiny" and not overrides.get("init"):
            # heavy: torch and diffusers, for this command only
            from evaluator.recipes import train_tiny_teacher

            typer.echo(f"training the tiny VAE, then the tiny teacher, in {run_dir}")
            export = train_tiny_teacher(run_dir, overrides)
        else:
            # heavy: torch and diffusers, for this command only
            from trainer.loop import train_run

            cfg = load_train_config(method, overrides, preset=preset)
            export = Path(train_run(cfg, run_dir)["export_dir"])
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if register_as:
        # lazy: a command imports what it needs when it runs (CLI start-up time)
        from trainer.zoo import register_checkpoint

        export = register_checkpoint(export, register_as)
    typer.echo(f"checkpoint: {export}")


# planner argument -> the flag that sets it, so an error names what the user typed
PLAN_FLAGS = {"gpus": "--gpus", "gpu_mem_gib": "--gpu-mem", "method": "--method", "device": "--device"}


@app.command()
def plan(
    method: str = typer.Option(..., help="sft | dmd | mogan | vdot | dfdpo"),
    preset: str = typer.Option("full", help="full (Wan2.1-T2V-1.3B's architecture) or tiny"),
    gpus: int = typer.Option(1, help="GPUs the run is spread over (batch_size is global)"),
    gpu_mem: float = typer.Option(80.0, "--gpu-mem", help="memory of one GPU, GiB"),
    config: Path | None = typer.Option(None, help="YAML config file (overridden by --set)"),
    set_: list[str] = typer.Option([], "--set", help="override a config field: --set method_cfg.window_chunks=6"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
):
    """Predict per-GPU memory of a training run by component (no weights needed) and whether it fits."""
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    from trainer.config import ConfigError, deep_merge, load_train_config, load_yaml
    from trainer.plan import PlanError, format_plan, plan_dict, plan_memory

    overrides = deep_merge(load_yaml(config) if config else {}, _parse_sets(set_))
    overrides.setdefault("device", "cuda")  # a plan is for GPUs: mixed_precision=auto resolves to bf16
    try:
        cfg = load_train_config(method, overrides, preset=preset)
        result = plan_memory(cfg, gpus, gpu_mem)
    except PlanError as exc:
        _fail(f"{PLAN_FLAGS.get(exc.field, exc.field)}: {exc.detail}")
    except ConfigError as exc:
        _fail(f"--method: {exc.detail}" if exc.field == "method" else str(exc))
    typer.echo(json.dumps(plan_dict(result), indent=2) if as_json else format_plan(result))


VIDEO_SUFFIXES = (".mp4", ".gif")


def _slug(text: str, limit: int = 40) -> str:
    """A file-name-safe, readable stem of a prompt ("a red square moves left" -> "a-red-square-moves-left")."""
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "prompt"


SAMPLER_HELP = (
    "default: the checkpoint's own sampler | flowmo: the same with FlowMo guidance (training-free: "
    "gradient steps on the latent at the first steps toward lower temporal variance of the predicted "
    "video; each guided step x iteration costs one more forward and one backward pass)"
)
FLOWMO_HELP = {
    "eta": f"FlowMo: step size of its gradient step on the latent, in (0, {ETA_MAX:g}] (default {DEFAULT_ETA:g})",
    "start": "FlowMo: first guided sampling step, 0-based (default 0)",
    "stop": "FlowMo: guided steps end before this step, at most the sampler's step count (default: the first "
    "quarter of the steps, rounded up)",
    "iterations": f"FlowMo: gradient steps per guided step, 1-{ITERATIONS_MAX} (default {DEFAULT_ITERATIONS})",
}


def _flowmo(sampler: str, eta: float | None, start: int | None, stop: int | None, iterations: int | None):
    """``--sampler`` and ``--flowmo-*`` -> FlowMo settings (None: the plain sampler); a bad value fails naming its
    flag and limit."""
    try:
        return flowmo_from_options(sampler, eta, start, stop, iterations)
    except FlowMoError as exc:
        _fail(_flag_error(exc))


def _flag_error(exc: FlowMoError) -> str:
    return f"--{exc.field.replace('_', '-')}: {exc.detail}"


def _read_prompts(path: Path) -> list[str]:
    """One prompt a line; blank lines and lines starting with ``#`` are skipped."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@app.command()
def generate(
    checkpoint: str = typer.Option(..., help="zoo name (tiny-teacher, tiny-dmd, ...) or pipeline directory"),
    prompt: list[str] = typer.Option([], help="text prompt (repeatable)"),
    prompts_file: Path | None = typer.Option(None, help="text file with one prompt a line (blank and # lines skipped)"),
    seed: list[int] = typer.Option([], help="noise seed (repeatable; default 0)"),
    seeds: int | None = typer.Option(None, help="use seeds 0 .. N-1 for every prompt"),
    out: Path | None = typer.Option(
        None,
        help="output .mp4/.gif for one video, or a folder (one mp4 per prompt x "
        "seed + index.jsonl); default video.mp4, or videos/ for several",
    ),
    steps: int | None = typer.Option(None, help="sampling steps (default: the checkpoint's own schedule)"),
    frames: int | None = typer.Option(None, help="number of frames (1 + 4k)"),
    height: int | None = typer.Option(None),
    width: int | None = typer.Option(None),
    guidance: float | None = typer.Option(None, help="classifier-free guidance scale (teacher checkpoints)"),
    batch_size: int = typer.Option(1, min=1, help="videos sampled together (same videos, more memory)"),
    device: str = typer.Option("cpu"),
    sampler: str = typer.Option("default", help=SAMPLER_HELP),
    flowmo_eta: float | None = typer.Option(None, help=FLOWMO_HELP["eta"]),
    flowmo_start: int | None = typer.Option(None, help=FLOWMO_HELP["start"]),
    flowmo_stop: int | None = typer.Option(None, help=FLOWMO_HELP["stop"]),
    flowmo_iterations: int | None = typer.Option(None, help=FLOWMO_HELP["iterations"]),
):
    """Generate videos with a checkpoint's sampler (teacher: 50-step CFG; students: their few steps), optionally
    with FlowMo guidance (--sampler flowmo).

    Several prompts and seeds make one video per prompt x seed in a folder, with the model loaded once.
    """
    prompts = list(prompt)
    if prompts_file is not None:
        if not prompts_file.is_file():
            _fail(f"--prompts-file {prompts_file} is not a file")
        prompts += _read_prompts(prompts_file)
    if not prompts:
        _fail("give --prompt (repeatable) or --prompts-file")
    if seed and seeds is not None:
        _fail("give --seed (repeatable) or --seeds N, not both")
    if seeds is not None and seeds < 1:
        _fail("--seeds must be at least 1")
    seed_list = list(range(seeds)) if seeds is not None else list(seed) or [0]
    jobs = [(i, p, s) for i, p in enumerate(prompts) for s in seed_list]
    single_file = out is not None and out.suffix.lower() in VIDEO_SUFFIXES
    if len(jobs) > 1 and single_file:
        _fail(f"{len(jobs)} videos (prompts x seeds) need a folder for --out, not {out}")
    if out is None:
        out = Path("video.mp4") if len(jobs) == 1 else Path("videos")
        single_file = len(jobs) == 1
    flowmo = _flowmo(sampler, flowmo_eta, flowmo_start, flowmo_stop, flowmo_iterations)

    # heavy; only this command needs it (torch, transformers and diffusers: seconds to import)
    from trainer.data.video_io import write_video
    from trainer.sampling import SamplingOptionError, SamplingOptions, generate_batch, resolve_sampling
    from trainer.serving import generate_video
    from trainer.zoo import load_generator

    options = SamplingOptions(
        steps=steps, guidance=guidance, num_frames=frames, height=height, width=width, flowmo=flowmo
    )
    try:
        if single_file:
            video, info = generate_video(checkpoint, jobs[0][1], jobs[0][2], options, device=device)
            write_video(out, video, fps=info["fps"], quality="web")
            typer.echo(json.dumps({"out": str(out), **info}))
            return
        # several videos: the model loaded once, the options checked once before any video, then batches of
        # --batch-size through the same generation path as one video
        gen = load_generator(checkpoint, device=device)
        sampling = resolve_sampling(gen.sampling, options)
        out.mkdir(parents=True, exist_ok=True)
        index = out / "index.jsonl"
        index.write_text("")
        width_i = len(str(len(prompts)))
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            batch = generate_batch(gen, sampling, [p for _, p, _ in chunk], [s for _, _, s in chunk], flowmo=flowmo)
            info = {"seconds": sum(batch.timings.values()), **batch.info}
            for (i, p, s), video in zip(chunk, batch.frames):
                name = f"{i:0{width_i}d}-{_slug(p)}-seed{s}.mp4"
                write_video(out / name, video, fps=info["fps"], quality="web")
                row = {"prompt": p, "seed": s, "path": name}
                with index.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                typer.echo(json.dumps({**row, "out": str(out / name), **info, "batch": len(chunk)}))
    except (FlowMoError, SamplingOptionError) as exc:
        _fail(_option_flag_error(exc))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))


# a sampling option's field -> the generate flag that sets it, where the two differ
OPTION_FLAGS = {"num_frames": "--frames"}


def _option_flag_error(exc: FlowMoError | ValueError) -> str:
    """A sampling or FlowMo option out of bounds, worded with the flag that set it."""
    return f"{OPTION_FLAGS.get(exc.field, '--' + exc.field.replace('_', '-'))}: {exc.detail}"


@ckpt_app.command("list")
def checkpoints_list():
    """List checkpoints addressable by name."""
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    from trainer.zoo import list_checkpoints

    for c in list_checkpoints():
        base = f"  (LoRA on {c['base']})" if c.get("base") else ""  # an adapter checkpoint
        typer.echo(f"{c['name']:24s} {c['kind']:9s} {c['path']}{base}")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="output folder (mp4 files + captions.jsonl)"),
    n: int = typer.Option(100, help="number of clips"),
    seed: int = typer.Option(0),
    frames: int = typer.Option(17),
    height: int = typer.Option(32),
    width: int = typer.Option(32),
    fps: int = typer.Option(8),
    split: str = typer.Option("train", help="train | heldout"),
):
    """Write procedurally generated, captioned motion videos."""
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    from trainer.data.synthetic import generate_dataset

    try:
        path = generate_dataset(out, n=n, seed=seed, frames=frames, height=height, width=width, fps=fps, split=split)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {n} clips to {path}")


@data_app.command("preprocess")
def data_preprocess(
    out: Path = typer.Argument(
        ..., help="output directory (shards + index.json); training: data.source=shards, data.root=OUT"
    ),
    model: str = typer.Option(
        ..., help="checkpoint (zoo name or directory) whose text encoder and VAE encode: the run's teacher or init"
    ),
    source: str = typer.Option("synthetic", help="clips: synthetic | folder | none (prompts only)"),
    root: Path | None = typer.Option(None, help="video folder (source folder): videos + captions.jsonl or .txt"),
    num_videos: int = typer.Option(1200, help="synthetic clips"),
    seed: int = typer.Option(0, help="synthetic stream (prompts: seed + 1)"),
    frames: int = typer.Option(17, help="frames per clip (1 + 4k)"),
    height: int = typer.Option(32),
    width: int = typer.Option(32),
    prompts_file: Path | None = typer.Option(
        None,
        help="generation prompts, one a line (default: synthetic prompts with --num-prompts, else the clips' captions)",
    ),
    num_prompts: int = typer.Option(0, help="synthetic generation prompts (source synthetic, no prompts file)"),
    extra_prompts: Path | None = typer.Option(
        None, help="more prompts to embed for lookup by text (e.g. custom validation prompts), one a line"
    ),
    flow: str | None = typer.Option(
        None,
        help="MoGAN: store the real clips' optical flow by this estimator (horn_schunck | raft_small | raft_large)",
    ),
    flow_weights: Path | None = typer.Option(None, help="RAFT weights file (.pth)"),
    pixels: bool = typer.Option(False, help="DF-DPO: store the clips' uint8 frames (its edits are made at train time)"),
    shard_size: int = typer.Option(64, help="samples per shard file"),
    precision: str = typer.Option("half", help="half (bf16 latents/embeddings, float16 flow) | full (float32)"),
    batch_size: int = typer.Option(8, help="clips / prompts per encoder call"),
    device: str = typer.Option("cpu", help="cpu | cuda (under torchrun: each rank its LOCAL_RANK device)"),
    rank: int | None = typer.Option(None, help="this process's share: shards i % world == rank (default: $RANK)"),
    world: int | None = typer.Option(None, help="number of processes sharing the work (default: $WORLD_SIZE)"),
):
    """Encode prompts, captions, clip latents (and MoGAN's real flow / DF-DPO's frames) once, into shards.

    Resumable (complete shards are skipped) and splittable over processes; index.json is written by whichever
    process finds every shard complete.
    """
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    from trainer.data.preprocess import PreprocessConfig, preprocess
    from trainer.models.generator import WeightsNotFoundError

    cfg = PreprocessConfig(
        model=model,
        source=source,
        root=str(root) if root else None,
        num_videos=num_videos,
        seed=seed,
        num_frames=frames,
        height=height,
        width=width,
        prompts_file=str(prompts_file) if prompts_file else None,
        num_prompts=num_prompts,
        extra_prompts_file=str(extra_prompts) if extra_prompts else None,
        flow=flow,
        flow_weights=str(flow_weights) if flow_weights else None,
        pixels=pixels,
        shard_size=shard_size,
        precision=precision,
        batch_size=batch_size,
        device=device,
    )
    try:
        result = preprocess(cfg, out, rank=rank, world=world)
    except (ValueError, WeightsNotFoundError, FileNotFoundError) as exc:
        _fail(str(exc))
    if result["index"]:
        typer.echo(
            f"wrote {len(result['written'])} file(s), {len(result['skipped'])} already complete; "
            f"index: {result['index']}"
        )
    else:
        typer.echo(
            f"wrote {len(result['written'])} file(s); index not written yet: {len(result['pending'])} "
            f"shard(s) of other processes pending (rerun when they finish, or run them)"
        )


@data_app.command("distort")
def data_distort(
    src: Path = typer.Argument(..., help="input video"),
    dst: Path = typer.Argument(..., help="output video"),
    spec: str = typer.Option(
        "hybrid", help="reverse | shuffle | blur:sigma=1.5+noise:sigma=8 | temporal | spatial | hybrid"
    ),
    seed: int = typer.Option(0),
):
    """Write an edited copy of a video (DF-DPO's 'lose' samples), to see what the model is taught to avoid."""
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    import numpy as np

    from trainer.data.distortions import build_distortion
    from trainer.data.video_io import VideoReadError, read_video, write_video

    try:
        op = build_distortion(spec)
        frames, fps = read_video(src)
    except (ValueError, VideoReadError) as exc:
        _fail(str(exc))
    write_video(dst, op(frames, np.random.default_rng(seed)), fps=fps)
    typer.echo(f"wrote {dst}")


@app.command()
def recipe(
    name: str = typer.Argument("tiny", help="only 'tiny' exists: teacher -> DMD -> MoGAN (+ ablations, VDOT, DF-DPO)"),
    run_root: Path = typer.Option(Path("runs/recipe-tiny"), help="where the stages' run directories go"),
    ablations: bool = typer.Option(True, help="also train the one-switch ablation rows"),
    evaluate: bool = typer.Option(True, help="benchmark every model and write the Table-1 report"),
    seeds: int = typer.Option(
        1,
        help="training seeds of every row after the teacher (1-10): a row's figures are "
        "over training seeds x evaluation seeds",
    ),
    eval_seeds: int = typer.Option(5, help="sampling seeds per prompt, shared by every model"),
    prompts: int = typer.Option(16, help="held-out prompts in the benchmark"),
    only: list[str] = typer.Option([], help="run only these stages (e.g. --only teacher --only dmd)"),
    workers: int = typer.Option(0, help="stages trained side by side after the teacher (0: one per CPU core)"),
):
    """Train the tiny zoo end to end and write the results table (re-running resumes every stage)."""
    # heavy: torch and diffusers, for this command only
    from evaluator.recipes import recipe_tiny

    if name != "tiny":
        _fail(f"unknown recipe {name!r}; only 'tiny' exists")
    if not 1 <= seeds <= 10:
        _fail(f"--seeds: between 1 and 10 training seeds, got {seeds}")
    result = recipe_tiny(
        run_root,
        ablations=ablations,
        evaluate=evaluate,
        train_seeds=seeds,
        eval_seeds=eval_seeds,
        n_prompts=prompts,
        only=only or None,
        workers=workers or None,
    )
    typer.echo(json.dumps(result, indent=2))


@app.command("eval")
def eval_(
    checkpoints: list[str] = typer.Option(
        ...,
        "--checkpoints",
        help="zoo names or directories; NAME@flowmo samples NAME with FlowMo guidance, as its own row",
    ),
    suite: str = typer.Option(
        "motion",
        help="motion | tiny | conformance (tiny and conformance: synthetic captions, "
        "scored also for caption conformance and against real clips) "
        "| vbench:<dimension> (VBench's prompts of one dimension, e.g. "
        "dynamic_degree, motion_smoothness, subject_consistency, "
        "temporal_flickering; read from the installed vbench package) | "
        "vbench-motion (the union of those four) | path to a prompt file "
        "(one prompt a line; VideoJAM-bench's 128 prompts are not shipped: "
        "pass them as a file)",
    ),
    seeds: int = typer.Option(5, help="seeds per prompt (shared by all models)"),
    prompts: int | None = typer.Option(None, help="use only the first N prompts"),
    backend: str = typer.Option("lite", help="lite (weight-free) | vbench (weights from the weights directory)"),
    out: Path = typer.Option(Path("reports/eval"), help="output folder (videos, records.jsonl, report.*)"),
    device: str = typer.Option("cpu"),
    sampler: str = typer.Option(
        "default", help=SAMPLER_HELP + "; applies to every checkpoint without its own @sampler"
    ),
    flowmo_eta: float | None = typer.Option(None, help=FLOWMO_HELP["eta"]),
    flowmo_start: int | None = typer.Option(None, help=FLOWMO_HELP["start"]),
    flowmo_stop: int | None = typer.Option(None, help=FLOWMO_HELP["stop"]),
    flowmo_iterations: int | None = typer.Option(None, help=FLOWMO_HELP["iterations"]),
):
    """Benchmark checkpoints: generate prompts x seeds, score them, write the Table-1-shaped report."""
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    from evaluator.benchmark.runner import BenchmarkSpec, JsonlStore, default_metrics, run_benchmark, split_sampler
    from evaluator.benchmark.suites import SYNTHETIC_SUITES, load_suite
    from evaluator.conformance import real_reference
    from evaluator.reports import write_report

    if sampler not in SAMPLERS:
        _fail(f"--sampler: must be one of {', '.join(SAMPLERS)} (got {sampler!r})")
    entries = [
        f"{c}@{sampler}" if sampler != "default" and split_sampler(c)[1] == "default" else c for c in checkpoints
    ]
    uses_flowmo = any(split_sampler(c)[1] == "flowmo" for c in entries)
    flowmo = _flowmo("flowmo" if uses_flowmo else "default", flowmo_eta, flowmo_start, flowmo_stop, flowmo_iterations)
    try:
        spec = BenchmarkSpec(
            checkpoints=entries,
            prompts=load_suite(suite, prompts),
            seeds=list(range(seeds)),
            backend=backend,
            metrics=default_metrics(suite),
            flowmo=flowmo,
        )
        records = run_benchmark(spec, out, device=device, real_suite=suite)
    except FlowMoError as exc:
        _fail(_flag_error(exc))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    reference = real_reference() if suite in SYNTHETIC_SUITES else None
    paths = write_report(records or JsonlStore(out / "records.jsonl").all(), out, conformance_reference=reference)
    typer.echo(paths["markdown"].read_text())


@app.command()
def score(
    folder: Path = typer.Argument(..., help="folder of videos (mp4/webm/gif/frame folders)"),
    backend: str = typer.Option("lite", help="lite | vbench"),
    metrics: list[str] = typer.Option([], "--metric", help="metrics to compute (default: all)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
):
    """Score videos that come from elsewhere (VBench's custom-input mode): per-video and aggregate scores."""
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    from evaluator.score_folder import score_folder

    try:
        result = score_folder(folder, backend=backend, metrics=metrics or None)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        for name, agg in result["aggregate"].items():
            value = agg.get("value")
            typer.echo(f"{name:22s} {'n/a' if value is None else f'{value:.4f}'}")


keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed; the token is shown once).")
app.add_typer(keys_app, name="keys")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    worker: bool = typer.Option(True, help="also start local workers (embedded default)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="INFO logs (migrations, workers, requests)"),
):
    """API + web UI + local workers in one process tree (SQLite and an embedded broker unless configured)."""
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    from backend.server import run_serve

    run_serve(host, port, with_worker=worker, verbose=verbose)


@app.command()
def api(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    ui: bool = typer.Option(False, help="mount the web UI at /ui"),
):
    """The API alone (shared deployment: MOTIONLAB_DATABASE_URL / MOTIONLAB_BROKER_URL)."""
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    from backend.server import run_api

    run_api(host, port, mount_ui=ui)


@app.command()
def worker(
    queues: str = typer.Option("train,eval,infer", help="comma-separated: train, eval, infer"),
    concurrency: int = typer.Option(1, help="processes, or threads with --pool threads (1 for the train queue)"),
    pool: str = typer.Option("prefork", help="prefork, or threads (an infer worker that batches requests)"),
):
    """A Celery worker (run one per GPU machine with --queues train)."""
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    from backend.server import run_worker

    try:
        run_worker(queues.split(","), concurrency, pool=pool)
    except ValueError as exc:
        _fail(str(exc))


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., help="who or what the key is for"),
    scope: list[str] = typer.Option(["read"], help="read | generate | train | admin (repeatable)"),
):
    """Create an API key and print its token once."""
    # lazy: a command imports what it needs when it runs (CLI start-up time)
    from backend.core.config import get_settings
    from backend.db.migrate import upgrade_to_head
    from backend.db.session import session_scope
    from backend.security import create_api_key

    upgrade_to_head(get_settings())
    try:
        with session_scope() as db:
            row, token = create_api_key(db, name, scope)
            key_id = row.id
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"id": key_id, "name": name, "scopes": scope, "token": token}))


def main():
    """The console script: a bad ``MOTIONLAB_*`` variable is one line naming it (exit 2), not a traceback."""
    import gc

    try:
        app()
    except ValueError as exc:
        # SettingsError is a ValueError whose module (pydantic-settings) only the commands that read settings load;
        # when one of them raised it, that import is already done
        from backend.core.config import SettingsError

        if not isinstance(exc, SettingsError):
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    finally:
        # the interpreter's last cyclic GC over torch/diffusers' objects makes every exit slow; objects
        # still freed by reference counting are unaffected, and the outputs are already written and closed
        gc.freeze()


if __name__ == "__main__":
    main()
