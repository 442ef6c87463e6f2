"""Multi-stage recipes: training runs (``trainer.loop.train_run``), then the benchmark of what they trained.

``train_tiny_teacher``: the tiny VAE (reconstruction + KL), then the tiny teacher (SFT) on its latents.
``recipe_tiny``: the teacher, then every post-training method and its ablations (in parallel where they do not
depend on each other), then the Table-1 benchmark.

    motionlab recipe tiny                      # everything, into runs/recipe-tiny
    motionlab recipe tiny --only dmd --only mogan --no-ablations

Each stage is its own run directory under ``run_root``, so re-running resumes whichever stage was interrupted.
A recipe both trains and evaluates, so it lives above the trainer, in the evaluator package.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from evaluator.benchmark.runner import CONFORMANCE, BenchmarkSpec, JsonlStore, run_benchmark
from evaluator.benchmark.suites import tiny_suite
from evaluator.conformance import real_reference
from evaluator.reports import write_report
from trainer.config import deep_merge, load_train_config
from trainer.distributed import launch_local, local_procs
from trainer.loop import train_run
from trainer.zoo import register_checkpoint, zoo_dir


def train_tiny_teacher(
    run_root: str | Path,
    sft_overrides: dict | None = None,
    vae_overrides: dict | None = None,
    procs: int | None = None,
    **run_kw,
) -> Path:
    """The tiny VAE, then the tiny teacher on its latents; returns the teacher's export directory.

    Both stages run data-parallel over ``procs`` local processes of one torch thread each (default: one per core,
    at most 4; ``trainer.distributed``): the preset's batch is split evenly over them, so the global batch is the
    preset's. Each rank draws its own samples, so the weights depend on ``procs`` (for a given ``procs`` they are
    reproducible: the shipped tiny teacher is the 2-process result), and a run resumes exactly only with the same
    ``procs`` (its config.yaml records the split under ``layout``; another ``procs`` continues, not bit-equal).
    ``run_kw`` (``should_stop`` / ``on_progress`` callbacks) needs ``procs=1``.
    """
    run_root = Path(run_root)
    procs = procs or local_procs()
    if run_kw and procs > 1:
        raise ValueError("train_tiny_teacher: callbacks need procs=1 (they cannot cross into spawned processes)")
    sft_overrides = dict(sft_overrides or {})
    shared = {k: sft_overrides[k] for k in ("data", "seed", "device") if k in sft_overrides}

    def run(method: str, overrides: dict, run_dir: Path) -> dict:
        cfg = load_train_config(method, overrides, preset="tiny")  # validated here, before any process starts
        # batch_size is global (the loop splits it over the ranks); one that does not split evenly: run alone
        n = procs if cfg.batch_size % (procs * cfg.grad_accum) == 0 else 1
        return launch_local(train_run, cfg, run_dir, nprocs=n, **run_kw)

    vae = run("vae", deep_merge(shared, vae_overrides or {}), run_root / "vae")
    if vae.get("stopped"):
        raise InterruptedError("stopped during the VAE stage")
    sft = run("sft", {**sft_overrides, "init": vae["export_dir"]}, run_root / "sft")
    if sft.get("stopped"):
        raise InterruptedError("stopped during the teacher stage")
    return Path(sft["export_dir"])


# The tiny recipe: teacher -> DMD 3-step -> MoGAN 3-step, VDOT and DF-DPO (+ one-switch ablations), then the
# benchmark. A stage is (name, method, overrides, zoo name to register or None). A stage waits for the stages that
# register the checkpoints its `teacher` / `init` name, so independent stages can run side by side.
TINY_STAGES = [  # the rows of Table 1 after the teacher; DMD first: MoGAN starts from it
    ("dmd", "dmd", {"teacher": "tiny-teacher"}, "tiny-dmd"),
    ("mogan", "mogan", {"teacher": "tiny-teacher", "init": "tiny-dmd"}, "tiny-mogan"),
    ("vdot", "vdot", {"teacher": "tiny-teacher"}, "tiny-vdot"),
    ("dfdpo", "dfdpo", {"init": "tiny-teacher"}, "tiny-dfdpo"),
]
TINY_ABLATIONS = [  # each changes exactly one switch of its method's row
    ("mogan-no-dmd", "mogan", {"teacher": "tiny-teacher", "init": "tiny-dmd", "method_cfg": {"use_dmd": False}}),
    ("mogan-no-r1r2", "mogan", {"teacher": "tiny-teacher", "init": "tiny-dmd", "method_cfg": {"use_r1r2": False}}),
    (
        "mogan-video-disc",
        "mogan",
        {"teacher": "tiny-teacher", "init": "tiny-dmd", "method_cfg": {"disc_space": "video"}},
    ),
    ("vdot-dmd-only", "vdot", {"teacher": "tiny-teacher", "method_cfg": {"use_otd": False, "use_gan": False}}),
    ("vdot-no-gan", "vdot", {"teacher": "tiny-teacher", "method_cfg": {"use_gan": False}}),
    ("vdot-no-otd", "vdot", {"teacher": "tiny-teacher", "method_cfg": {"use_otd": False}}),
    ("dfdpo-temporal", "dfdpo", {"init": "tiny-teacher", "method_cfg": {"mode": "temporal"}}),
    ("dfdpo-spatial", "dfdpo", {"init": "tiny-teacher", "method_cfg": {"mode": "spatial"}}),
    # not an ablation: the MoGAN row trained as LoRA adapters (the paper's full fine-tuning against the cheap path)
    ("mogan-lora", "mogan", {"teacher": "tiny-teacher", "init": "tiny-dmd", "lora": {"enabled": True}}),
]


def tiny_stages(ablations: bool = True) -> list[tuple[str, str, dict, str | None]]:
    """Every stage after the teacher, in priority order: the Table-1 rows, then the ablations."""
    return list(TINY_STAGES) + ([(n, m, o, None) for n, m, o in TINY_ABLATIONS] if ablations else [])


def stage_dependencies(stages, run_root: Path | None = None) -> dict[str, set[str]]:
    """name -> the stages whose checkpoint it starts from (``teacher`` is the teacher stage): a stage's ``teacher`` /
    ``init`` names a registered zoo name or, for the stages of other training seeds, the export of a stage under
    ``run_root``."""
    producer = {"tiny-teacher": "teacher", **{zoo: name for name, _m, _o, zoo in stages if zoo}}
    if run_root is not None:
        producer.update({_export_of(run_root, name): name for name, *_ in stages})
    return {
        name: {producer[ref] for ref in (o.get("teacher"), o.get("init")) if ref in producer}
        for name, _m, o, _z in stages
    }


def _export_of(run_root: Path, stage: str) -> str:
    return str(Path(run_root) / stage / "export")


def seeded_stages(stages, train_seed: int, run_root: Path) -> list[tuple[str, str, dict, str | None]]:
    """The stages again with training seed ``train_seed`` (> 0), named ``<name>-seed<k>``: each starts from the
    same-seed export of the stage it depends on (a MoGAN row of seed k continues the DMD row of seed k), and none
    is registered in the zoo. The teacher is shared by every seed."""
    renamed = {zoo: _export_of(run_root, f"{name}-seed{train_seed}") for name, _m, _o, zoo in stages if zoo}
    out = []
    for name, method, over, _zoo in stages:
        over = {**over, "seed": train_seed}
        for key in ("teacher", "init"):
            if over.get(key) in renamed:
                over[key] = renamed[over[key]]
        out.append((f"{name}-seed{train_seed}", method, over, None))
    return out


SEEDED_ROW = re.compile(r"^(?P<row>.+)-seed(?P<k>[1-9]\d*)$")
EVAL_SEEDS_PER_TRAIN_SEED = 1000  # merged seed key: train_seed * this + eval seed (a spec has at most 100 seeds)


def merge_training_seeds(records: list[dict]) -> list[dict]:
    """Records of ``<row>-seed<k>`` models as rows ``<row>``, their seed ``k * 1000 + eval seed`` (training seed 0
    keeps its eval seeds), so that a row's mean and interval are over training seeds x evaluation seeds."""
    out = []
    for r in records:
        m = SEEDED_ROW.match(str(r["model"]))
        if m:
            r = {
                **r,
                "model": m["row"],
                "seed": int(m["k"]) * EVAL_SEEDS_PER_TRAIN_SEED + int(r["seed"]),
                "train_seed": int(m["k"]),
            }
        out.append(r)
    return out


def recipe_tiny(
    run_root: str | Path = "runs/recipe-tiny",
    *,
    ablations: bool = True,
    evaluate: bool = True,
    train_seeds: int = 1,
    eval_seeds: int = 5,
    n_prompts: int = 16,
    only: list[str] | None = None,
    workers: int | None = None,
    overrides: dict | None = None,
) -> dict:
    """Train the tiny zoo end to end and write the Table-1-shaped report. Every stage resumes if re-run.

    The teacher trains first with every core. The later stages run ``workers`` at a time (default: one per core,
    each with one torch thread: on a small CPU two one-thread runs finish sooner than two two-thread runs in turn).
    With ``train_seeds`` N > 1 every later stage also trains with seeds 1..N-1 (``seeded_stages``; the teacher is
    shared), and each row of the report is over N training seeds x ``eval_seeds``. ``overrides`` (nested dict)
    applies to every stage, e.g. ``{"steps": 2}`` for a smoke run.
    """
    if not 1 <= train_seeds <= 10:
        raise ValueError(f"train_seeds: between 1 and 10, got {train_seeds}")
    run_root = Path(run_root)
    overrides = dict(overrides or {})
    workers = max(1, workers or local_procs())
    timings: dict[str, float] = {}
    exports: dict[str, str] = {}
    t_start = time.perf_counter()

    def log(name: str, seconds: float, out) -> None:
        timings[name] = seconds
        exports[name] = str(out)
        print(f"[recipe] {name}: {seconds / 60:.1f} min -> {out}", flush=True)

    if not only or "teacher" in only:
        t0 = time.perf_counter()
        teacher = train_tiny_teacher(run_root / "teacher", sft_overrides=overrides, vae_overrides=overrides)
        log("teacher", time.perf_counter() - t0, _register(teacher, "tiny-teacher"))
    stages = [s for s in tiny_stages(ablations) if not only or s[0] in only]
    stages += [s for k in range(1, train_seeds) for s in seeded_stages(stages, k, run_root)]
    _run_stages(stages, run_root, workers, overrides, log)
    result = {"timings_s": timings, "exports": exports}
    if evaluate:
        teacher_dir = str(zoo_dir() / "tiny-teacher")
        ckpts = {"teacher-50step": teacher_dir, "teacher-50step + FlowMo": teacher_dir + "@flowmo"}
        ckpts.update({n: p for n, p in exports.items() if n != "teacher"})
        t0 = time.perf_counter()
        report = evaluate_tiny(ckpts, run_root / "report", eval_seeds, n_prompts)
        log("benchmark", time.perf_counter() - t0, report)
        result["report"] = str(report)
    result["total_s"] = time.perf_counter() - t_start
    print(f"[recipe] total: {result['total_s'] / 60:.1f} min", flush=True)
    (run_root / "recipe.json").write_text(json.dumps(result, indent=2))
    return result


def _register(export: Path, zoo_name: str | None) -> Path:
    return register_checkpoint(export, zoo_name) if zoo_name else export


def _run_stage(method: str, overrides: dict, zoo_name: str | None, run_dir: str, threads: int) -> tuple[str, float]:
    """One stage in a worker process: train, export, register. Returns (export path, seconds)."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    cfg = load_train_config(method, overrides, preset="tiny")
    export = Path(train_run(cfg, run_dir, progress_bar=False)["export_dir"])
    return str(_register(export, zoo_name)), time.perf_counter() - t0


def _run_stages(stages, run_root: Path, workers: int, overrides: dict, log) -> None:
    """Run stages in ``workers`` spawned processes as their dependencies finish (a failed stage stops the rest)."""
    deps = stage_dependencies(stages, run_root)
    names = {s[0] for s in stages}
    done = {"teacher"} | {d for ds in deps.values() for d in ds if d not in names}  # made earlier / elsewhere
    pending = list(stages)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        running = {}
        while pending or running:
            for s in [s for s in pending if deps[s[0]] <= done][: workers - len(running)]:
                pending.remove(s)
                name, method, over, zoo = s
                running[
                    pool.submit(_run_stage, method, deep_merge(over, overrides), zoo, str(run_root / name), threads)
                ] = name
                print(f"[recipe] {name}: started (metrics in {run_root / name / 'metrics.jsonl'})", flush=True)
            if not running:
                raise RuntimeError(f"stages {[s[0] for s in pending]} wait for stages that are not in this run")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                name = running.pop(fut)
                out, seconds = fut.result()  # re-raises a stage's error here
                done.add(name)
                log(name, seconds, out)


def evaluate_tiny(checkpoints: dict[str, str], out_dir: Path, seeds: int = 5, n_prompts: int = 16) -> Path:
    """Benchmark the tiny models on held-out synthetic prompts x shared seeds; write the report (rows of other
    training seeds, ``<row>-seed<k>``, merged into their row: ``merge_training_seeds``)."""
    prompts = tiny_suite(n_prompts)
    spec = BenchmarkSpec(
        checkpoints=list(checkpoints.values()),
        prompts=prompts,
        seeds=list(range(seeds)),
        metrics=["motion_smoothness", "dynamic_degree", "motion_score", "temporal_flickering", CONFORMANCE],
        labels={v: k for k, v in checkpoints.items()},
    )
    records = run_benchmark(spec, out_dir, real_suite="tiny")
    write_report(
        merge_training_seeds(records or JsonlStore(out_dir / "records.jsonl").all()),
        out_dir,
        title=f"Tiny recipe: held-out synthetic prompts x {seeds} seeds (lite backend)",
        conformance_reference=real_reference(),
    )
    return out_dir / "report.md"
