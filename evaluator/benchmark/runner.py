"""Benchmark runner: prompts x seeds x checkpoints -> videos (shared samplers) -> metrics -> records -> report.

    motionlab eval --checkpoints tiny-teacher tiny-dmd tiny-mogan --suite tiny --seeds 5 --out reports/tiny
    motionlab eval --checkpoints tiny-teacher --checkpoints tiny-teacher@flowmo --suite tiny   # + teacher with FlowMo

A checkpoint entry ``NAME@flowmo`` samples checkpoint ``NAME`` with FlowMo guidance (``trainer.flowmo``; settings
``BenchmarkSpec.flowmo``), as its own row of the table.

Every prompt is sampled with the same N seeds for every model (the seed drives the initial noise, so model
differences are not seed differences). Videos are saved under ``out/videos/<model>/``; scores are appended to
``out/records.jsonl`` (or to the database through a ``store`` with the same two methods); re-running skips every
(model, prompt, seed) already scored. Metric computation runs in a process pool.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from evaluator.benchmark.suites import SYNTHETIC_SUITES, real_videos_for
from evaluator.conformance import conformance_records, parse_caption
from evaluator.metrics import score_video
from evaluator.metrics.base import EVALUATOR_VERSION
from evaluator.metrics.fidelity import flow_statistics_distance, sliced_wasserstein_patches
from evaluator.reports import SET_PROMPT, to_records
from trainer.data.video_io import read_video, write_video
from trainer.flowmo import SAMPLERS, FlowMoConfig

MOTION_METRICS = ["motion_smoothness", "dynamic_degree", "motion_score", "temporal_flickering"]
QUALITY_METRICS = ["aesthetic_quality", "imaging_quality"]
# Not a per-video metric of ``evaluator.metrics``: asks for ``evaluator.conformance`` records ("conformance/<field>"),
# which read the expected answers from each prompt, so every prompt must be a synthetic caption.
CONFORMANCE = "conformance"
# Figures of a model's whole set of videos of one seed against the real videos (prompt ``SET_PROMPT``), added after
# scoring when real videos are given: SWD of frame patches, SWD of flow statistics, and |dynamic degree - the real
# videos' dynamic degree| (dynamic degree alone rewards motion wherever it is, static scenes included).
FIDELITY_METRICS = ("visual_swd", "motion_swd", "dynamic_degree_gap")


def default_metrics(suite: str) -> list[str]:
    """What a benchmark of ``suite`` scores when it names no metrics: the motion and quality metrics, and caption
    conformance for the synthetic suites (their captions state checkable answers)."""
    return [*MOTION_METRICS, *QUALITY_METRICS] + ([CONFORMANCE] if suite in SYNTHETIC_SUITES else [])


class RecordStore(Protocol):
    def existing(self) -> set[tuple[str, str, int]]: ...
    def add(self, records: list[dict]) -> None: ...


class JsonlStore:
    """Records in ``records.jsonl``; a (model, prompt, seed) with any record counts as done."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def all(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]

    def existing(self) -> set[tuple[str, str, int]]:
        return {(r["model"], r["prompt"], int(r["seed"])) for r in self.all() if r["metric"] not in FIDELITY_METRICS}

    def add(self, records: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)


@dataclass
class BenchmarkSpec:
    checkpoints: list[str]
    prompts: list[str]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    metrics: list[str] = field(default_factory=lambda: list(MOTION_METRICS) + list(QUALITY_METRICS))
    backend: str = "lite"
    labels: dict[str, str] = field(default_factory=dict)  # checkpoint -> model name shown in the table
    sampling_overrides: dict[str, dict] = field(default_factory=dict)  # checkpoint -> SamplingConfig fields
    batch_size: int = 8
    workers: int = 2
    weights_dir: str | None = None
    flowmo: FlowMoConfig | None = None  # FlowMo's settings for ``NAME@flowmo`` entries (None: its defaults)

    def __post_init__(self):
        if not self.checkpoints:
            raise ValueError("checkpoints: at least one checkpoint is needed")
        if self.flowmo is not None:
            self.flowmo.check()
        if not self.prompts:
            raise ValueError("prompts: the suite is empty")
        if not 1 <= len(self.seeds) <= 100:
            raise ValueError(f"seeds: between 1 and 100 seeds, got {len(self.seeds)}")
        if CONFORMANCE in self.metrics:
            for p in self.prompts:
                parse_caption(p)  # a prompt that states no checkable answer is named here, before any work

    def label(self, ckpt: str) -> str:
        return self.labels.get(ckpt, Path(ckpt).name)


def split_sampler(entry: str) -> tuple[str, str]:
    """A checkpoint entry -> ``(checkpoint, sampler)``: ``"tiny-teacher@flowmo"`` -> ``("tiny-teacher", "flowmo")``;
    an entry without a known sampler suffix is all checkpoint, with the ``"default"`` sampler."""
    base, sep, sampler = entry.rpartition("@")
    return (base, sampler) if sep and base and sampler in SAMPLERS else (entry, "default")


def video_path(out_dir: Path, model: str, prompt: str, seed: int) -> Path:
    key = hashlib.sha1(prompt.encode()).hexdigest()[:10]
    return Path(out_dir) / "videos" / model / f"{key}_s{seed}.mp4"


def _score_one(args) -> list[dict]:
    video, fps, model, prompt, seed, metrics, backend, opts, extra = args
    per_video = [m for m in metrics if m != CONFORMANCE]
    records = (
        to_records(model, prompt, seed, score_video(video, fps, per_video, backend, **opts), extra) if per_video else []
    )
    if CONFORMANCE in metrics:
        records += conformance_records(model, prompt, seed, video, extra)
    return records


def run_benchmark(
    spec: BenchmarkSpec,
    out_dir: str | Path,
    *,
    store: RecordStore | None = None,
    real_suite: str | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Generate what is missing, score it, add fidelity figures against ``real_suite``'s real clips (a synthetic
    suite's, ``real_videos_for``; none for other suites); return all records of this spec."""
    # heavy: torch and the model code; the API imports this module for its constants and checks
    import torch
    from tqdm import tqdm

    from trainer.sampling import flowmo_info, generate_videos, sampling_steps
    from trainer.zoo import load_generator

    out_dir = Path(out_dir)
    store = store or JsonlStore(out_dir / "records.jsonl")
    done = store.existing()
    todo = [
        (c, p, s)
        for c in spec.checkpoints
        for p in spec.prompts
        for s in spec.seeds
        if (spec.label(c), p, s) not in done
    ]
    total, finished = len(todo), 0
    opts = _metric_opts(spec)
    # spawn, not fork: a child forked from a process with live threads (torch's pool, a server's, a logger's) can
    # inherit a lock held mid-use and wait on it forever
    pool = ProcessPoolExecutor(spec.workers, mp_context=mp.get_context("spawn")) if spec.workers > 1 else None
    try:
        bar = tqdm(total=total, desc="benchmark", disable=total == 0)
        for ckpt in spec.checkpoints:
            mine = [(p, s) for c, p, s in todo if c == ckpt]
            if not mine:
                continue
            path, sampler = split_sampler(ckpt)
            gen = load_generator(path, device=device)
            sampling = replace(gen.sampling, **spec.sampling_overrides.get(ckpt, {}))
            flowmo = (spec.flowmo or FlowMoConfig()).check(sampling_steps(sampling)) if sampler == "flowmo" else None
            model = spec.label(ckpt)
            for i in range(0, len(mine), spec.batch_size):
                chunk = mine[i : i + spec.batch_size]
                with torch.no_grad():
                    videos = generate_videos(
                        gen, [p for p, _ in chunk], [s for _, s in chunk], sampling=sampling, flowmo=flowmo
                    )
                jobs = []
                for (p, s), v in zip(chunk, videos):
                    write_video(video_path(out_dir, model, p, s), v, fps=sampling.fps, quality="web")
                    extra = {"checkpoint": str(path), "sampler": sampling.kind}
                    if flowmo is not None:
                        extra["flowmo"] = flowmo_info(sampling, flowmo)["flowmo"]
                    jobs.append((v, float(sampling.fps), model, p, s, spec.metrics, spec.backend, opts, extra))
                results = list(pool.map(_score_one, jobs)) if pool else [_score_one(j) for j in jobs]
                store.add([r for rs in results for r in rs])
                finished += len(chunk)
                bar.update(len(chunk))
                if progress:
                    progress(finished, total)
        bar.close()
    finally:
        if pool:
            pool.shutdown()
    if real_suite in SYNTHETIC_SUITES:
        _add_fidelity(spec, out_dir, store, real_suite)
    wanted = {spec.label(c) for c in spec.checkpoints}
    return [r for r in getattr(store, "all", list)() if r["model"] in wanted]


_SET_DISTANCES = {"visual_swd": sliced_wasserstein_patches, "motion_swd": flow_statistics_distance}


def _metric_opts(spec: BenchmarkSpec) -> dict[str, Any]:
    return {"weights_dir": spec.weights_dir} if spec.backend == "vbench" and spec.weights_dir else {}


def _add_fidelity(spec: BenchmarkSpec, out_dir: Path, store, real_suite: str) -> None:
    """Per (model, seed), ``FIDELITY_METRICS`` against the suite's real clips of the generated videos' length
    (weight-free, except dynamic degree, which uses the spec's backend on the real videos as on the generated
    ones)."""
    scored = getattr(store, "all", list)()
    have = {(r["model"], int(r["seed"]), r["metric"]) for r in scored}
    dynamic: dict[tuple[str, int], list[float]] = {}
    for r in scored:
        if r["metric"] == "dynamic_degree" and r["value"] is not None:
            dynamic.setdefault((r["model"], int(r["seed"])), []).append(float(r["value"]))

    @cache
    def real_set(frames: int) -> list[np.ndarray]:
        return real_videos_for(real_suite, frames)

    @cache
    def real_dynamic(frames: int, fps: float) -> float:
        return _real_dynamic_degree(spec, real_set(frames), fps)

    recs = []
    for ckpt in spec.checkpoints:
        model = spec.label(ckpt)
        for s in spec.seeds:
            missing = [m for m in FIDELITY_METRICS if (model, s, m) not in have]
            if "dynamic_degree_gap" in missing and (model, s) not in dynamic:
                missing.remove("dynamic_degree_gap")  # dynamic degree not asked for, or unavailable
            if not missing:
                continue
            gen, fps = zip(*(read_video(video_path(out_dir, model, p, s)) for p in spec.prompts))
            frames = len(gen[0])
            for metric in missing:
                if metric == "dynamic_degree_gap":
                    value = abs(float(np.mean(dynamic[(model, s)])) - real_dynamic(frames, fps[0]))
                else:
                    value = float(_SET_DISTANCES[metric](list(gen), real_set(frames), seed=s))
                recs.append(
                    {
                        "model": model,
                        "prompt": SET_PROMPT,
                        "seed": s,
                        "metric": metric,
                        "value": value,
                        "backend": spec.backend if metric == "dynamic_degree_gap" else "lite",
                        "model_hash": None,
                        "evaluator_version": EVALUATOR_VERSION,
                    }
                )
    if recs:
        store.add(recs)


def _real_dynamic_degree(spec: BenchmarkSpec, real_videos: list[np.ndarray], fps: float) -> float:
    """The share of the real videos that are dynamic, scored as the generated ones are."""
    values = [
        score_video(v, fps, ["dynamic_degree"], spec.backend, **_metric_opts(spec))["dynamic_degree"].value
        for v in real_videos
    ]
    values = [v for v in values if v is not None]
    if not values:
        raise ValueError(f"dynamic degree is unavailable on the real videos with backend {spec.backend!r}")
    return float(np.mean(values))
