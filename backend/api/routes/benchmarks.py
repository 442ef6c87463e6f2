"""/v1/benchmarks: create (queued on ``eval``), list, status, cancel, report (summary + per-video scores), and
``options`` (the suites, metric backends and limits a benchmark may use: the web UI's form). A benchmark's
``source`` is ``measured`` or ``imported`` (a table read from a file shipped with the checkpoints,
``backend.imported_results``; clients cannot create those).

A benchmark is bounded before its row exists: its compute (checkpoints x prompts x seeds x each video's frames x
height x width x steps) by ``limits.max_benchmark_cost`` (422), a key's queued and running benchmarks by
``limits.max_active_benchmarks_per_key`` (429).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from celery import Celery
from fastapi import APIRouter, Depends
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.api.deps import (
    Page,
    SessionReleasingRoute,
    check_id,
    checkpoint_exists,
    checkpoint_path,
    get_celery,
    get_db,
    get_row,
    get_settings_dep,
    get_store,
    pagination,
    require_scope,
    shown,
)
from backend.api.errors import ApiError, check_finite, check_range
from backend.api.schemas import (
    BenchmarkCreate,
    BenchmarkList,
    BenchmarkOptions,
    BenchmarkOut,
    BenchmarkReport,
)
from backend.core.config import Settings
from backend.crud import benchmarks as crud
from backend.db.models import ACTIVE, FAILED, ApiKey, Benchmark, utcnow
from backend.db.session import begin_write
from backend.generation import FLOWMO_ITERATION_STEPS, sampling_defaults, video_cost
from backend.storage import ArtifactStore
from backend.worker.dispatch import EVALUATE, BrokerUnavailable, enqueue
from evaluator.benchmark.runner import CONFORMANCE, default_metrics, split_sampler
from evaluator.benchmark.suites import SYNTHETIC_SUITES, available_suites, load_suite
from evaluator.conformance import parse_caption
from evaluator.metrics import BACKENDS, METRICS
from evaluator.metrics.vbench_backend import vbench_version
from evaluator.metrics.weights import missing_weights
from trainer.flowmo import FlowMoConfig

router = APIRouter(prefix="/benchmarks", tags=["benchmarks"], route_class=SessionReleasingRoute)

# named suites (VBench's where the vbench package is installed) only: a client never names a file on the server
SUITE_DESCRIPTIONS = available_suites()
SUITES = tuple(SUITE_DESCRIPTIONS)
OPTIONS = {"backend": "lite | vbench", "batch_size": "generation batch", "suite_size": "prompts taken from the suite"}


def check_benchmark_cost(db: Session, store: ArtifactStore, body: BenchmarkCreate, settings: Settings) -> None:
    """422 naming the limit when one video exceeds ``limits.max_generation_cost`` or the whole benchmark exceeds
    ``limits.max_benchmark_cost`` (a few-step checkpoint keeps its own steps, as the runner samples it)."""
    lim = settings.limits
    if body.prompts:
        n_prompts = len(body.prompts)
    else:
        n_prompts = len(load_suite(str(body.suite), body.options.get("suite_size")))
    total = 0
    for i, ref in enumerate(body.checkpoints):
        base, sampler = split_sampler(ref)
        d = sampling_defaults(checkpoint_path(db, store, base))
        steps = (body.steps if d["kind"] == "teacher" else None) or d["num_steps"]
        if sampler == "flowmo":  # the runner's default FlowMo settings; each gradient iteration counted as 3 steps
            flowmo = FlowMoConfig()
            steps += FLOWMO_ITERATION_STEPS * len(flowmo.guided_steps(steps)) * flowmo.iterations
        one = video_cost(d, steps=steps, num_frames=body.num_frames, height=body.height, width=body.width)
        if one > lim.max_generation_cost:
            raise ApiError(
                422,
                "limit_exceeded",
                f"checkpoints[{i}]: one video's num_frames x height x width x steps "
                f"must be at most {lim.max_generation_cost} "
                f"(limits.max_generation_cost); got {one}",
                field="max_generation_cost",
                limit=lim.max_generation_cost,
            )
        total += one * n_prompts * len(body.seeds)
    if total > lim.max_benchmark_cost:
        raise ApiError(
            422,
            "limit_exceeded",
            f"checkpoints x prompts x seeds x per-video cost: must be at most "
            f"{lim.max_benchmark_cost} (limits.max_benchmark_cost); got {total} "
            f"({len(body.checkpoints)} checkpoints x {n_prompts} prompts x "
            f"{len(body.seeds)} seeds)",
            field="max_benchmark_cost",
            limit=lim.max_benchmark_cost,
        )


def validate_benchmark(
    db: Session, body: BenchmarkCreate, settings: Settings, store: ArtifactStore | None = None
) -> dict[str, Any]:
    lim = settings.limits
    check_range("checkpoints", len(body.checkpoints), 1, lim.max_benchmark_checkpoints)
    for i, ref in enumerate(body.checkpoints):  # NAME@flowmo: that checkpoint sampled with FlowMo guidance
        if not checkpoint_exists(db, split_sampler(ref)[0]):
            raise ApiError(
                422,
                "unknown_checkpoint",
                f"checkpoints[{i}]: no checkpoint or zoo entry named {ref!r}",
                field=f"checkpoints[{i}]",
            )
    if not body.prompts and not body.suite:
        raise ApiError(422, "validation_error", "prompts: give a list of prompts or a suite name", field="prompts")
    if body.prompts:
        check_range("prompts", len(body.prompts), 1, lim.max_benchmark_prompts)
        for i, p in enumerate(body.prompts):
            if not p.strip() or len(p) > lim.max_prompt_chars:
                raise ApiError(
                    422,
                    "limit_exceeded",
                    f"prompts[{i}]: must be 1-{lim.max_prompt_chars} characters",
                    field=f"prompts[{i}]",
                    limit=lim.max_prompt_chars,
                )
    for i, s in enumerate(body.seeds):
        check_range(f"seeds[{i}]", s, 0, lim.max_seed)
    check_range("steps", body.steps, 1, lim.max_steps)
    check_range("num_frames", body.num_frames, 1, lim.max_frames)
    check_range("height", body.height, 8, lim.max_height)
    check_range("width", body.width, 8, lim.max_width)
    check_finite(body.options, "options")
    if body.suite is not None and body.suite not in SUITES:
        raise ApiError(
            422, "validation_error", f"suite: must be one of {list(SUITES)} (or give prompts)", field="suite"
        )
    unknown = sorted(set(body.options) - set(OPTIONS))
    if unknown:
        raise ApiError(
            422,
            "validation_error",
            f"options.{unknown[0]}: unknown option; allowed: {sorted(OPTIONS)}",
            field=f"options.{unknown[0]}",
        )
    check_range("options.batch_size", body.options.get("batch_size"), 1, 64)
    check_range("options.suite_size", body.options.get("suite_size"), 1, lim.max_benchmark_prompts)
    for i, m in enumerate(body.metrics or []):
        if m not in METRICS and m != CONFORMANCE:
            raise ApiError(
                422,
                "validation_error",
                f"metrics[{i}]: unknown metric {m!r}; allowed: {sorted([*METRICS, CONFORMANCE])}",
                field=f"metrics[{i}]",
            )
    backend = body.options.get("backend", "lite")
    if backend not in BACKENDS:
        raise ApiError(
            422, "validation_error", f"options.backend: must be one of {sorted(BACKENDS)}", field="options.backend"
        )
    if CONFORMANCE in (body.metrics or []):
        for i, p in enumerate(body.prompts or []):
            try:
                parse_caption(p)
            except ValueError as exc:
                raise ApiError(
                    422,
                    "validation_error",
                    f"prompts[{i}]: the conformance metric needs synthetic captions: {exc}",
                    field=f"prompts[{i}]",
                ) from exc
    if store is not None:
        check_benchmark_cost(db, store, body, settings)
    config = body.model_dump(exclude={"name"})
    if body.suite in SYNTHETIC_SUITES and not body.prompts and not body.metrics:
        config["metrics"] = default_metrics(body.suite)  # as `motionlab eval --suite <suite>`
    return json.loads(json.dumps(config, default=str))


@lru_cache(maxsize=1)
def _suite_sizes() -> dict[str, int]:
    return {name: len(load_suite(name)) for name in SUITES}


def vbench_unavailable(settings: Settings) -> str | None:
    """Why the vbench metrics backend cannot score the motion metrics on this server (None: it can)."""
    if vbench_version() is None:
        return "the vbench package is not installed on the server"
    missing = missing_weights(["motion_smoothness", "dynamic_degree"], settings.weights_dir)
    if missing:
        return f"weight files missing from the server's weights directory: {', '.join(w.key for w in missing)}"
    return None


def _max_seeds() -> int:
    return next(m.max_length for m in BenchmarkCreate.model_fields["seeds"].metadata if hasattr(m, "max_length"))


@router.get("/options", response_model=BenchmarkOptions, summary="Suites, metric backends and limits of benchmarks")
def benchmark_options(
    settings: Settings = Depends(get_settings_dep), key: ApiKey = Depends(require_scope("read"))
) -> dict[str, Any]:
    lim = settings.limits
    reason = vbench_unavailable(settings)
    return {
        "suites": [
            {
                "name": n,
                "prompts": _suite_sizes()[n],
                "description": SUITE_DESCRIPTIONS[n],
                "metrics": [CONFORMANCE] if n in SYNTHETIC_SUITES else [],
            }
            for n in SUITES
        ],
        "backends": [
            {
                "name": b,
                "available": b == "lite" or reason is None,
                "reason": None if b == "lite" else reason,
                "metrics": [m for m, metric in METRICS.items() if b in metric.backends],
            }
            for b in BACKENDS
        ],
        "max_checkpoints": lim.max_benchmark_checkpoints,
        "max_seeds": _max_seeds(),
        "max_seed": lim.max_seed,
        "max_prompts": lim.max_benchmark_prompts,
    }


@router.post("", response_model=BenchmarkOut, status_code=201, summary="Create (and queue) a benchmark")
def create_benchmark(
    body: BenchmarkCreate,
    db: Session = Depends(get_db),
    celery: Celery = Depends(get_celery),
    settings: Settings = Depends(get_settings_dep),
    store: ArtifactStore = Depends(get_store),
    key: ApiKey = Depends(require_scope("train")),
) -> dict[str, Any]:
    config = validate_benchmark(db, body, settings, store)
    # count and insert in one write transaction, serialised per key (as for generations)
    begin_write(db)
    if db.get_bind().dialect.name != "sqlite":
        db.execute(select(ApiKey.id).where(ApiKey.id == key.id).with_for_update())
    active = (
        db.scalar(
            select(func.count())
            .select_from(Benchmark)
            .where(Benchmark.api_key_id == key.id, Benchmark.status.in_(ACTIVE))
        )
        or 0
    )
    limit = settings.limits.max_active_benchmarks_per_key
    if active >= limit:
        raise ApiError(
            429,
            "too_many_active_benchmarks",
            f"api key: at most {limit} queued or running benchmarks per key ({active} now; "
            "limits.max_active_benchmarks_per_key)",
            field="api_key",
            limit=limit,
            headers={"Retry-After": "60"},
        )
    row = crud.create_benchmark(db, name=body.name, config=config, api_key_id=key.id)
    db.commit()
    try:
        task_id = enqueue(celery, EVALUATE, row.id)
    except BrokerUnavailable as exc:
        begin_write(db)
        row.status, row.error, row.finished_at = FAILED, f"could not queue the benchmark: {exc}", utcnow()
        db.commit()
        raise ApiError(503, "broker_unavailable", str(exc)) from exc
    begin_write(db)
    row.task_id = task_id
    db.commit()
    return _show(row, key)


@router.get("", response_model=BenchmarkList, summary="List benchmarks")
def list_benchmarks(
    status: str | None = None,
    page: Page = Depends(pagination()),
    db: Session = Depends(get_db),
    key: ApiKey = Depends(require_scope("read")),
) -> dict:
    rows, total = crud.list_benchmarks(db, status=status, limit=page.limit, offset=page.offset)
    return {"items": [_show(r, key) for r in rows], "total": total, "limit": page.limit, "offset": page.offset}


def _show(row: Benchmark, key: ApiKey) -> dict[str, Any]:
    """The benchmark; its error without server paths unless the key is an admin's."""
    return shown(BenchmarkOut, row, key)


def _get(db: Session, benchmark_id: str) -> Benchmark:
    return get_row(db, Benchmark, benchmark_id, "benchmark", "benchmark_id")


@router.get("/{benchmark_id}", response_model=BenchmarkOut, summary="Benchmark status")
def get_benchmark(
    benchmark_id: str, db: Session = Depends(get_db), key: ApiKey = Depends(require_scope("read"))
) -> dict[str, Any]:
    return _show(_get(db, benchmark_id), key)


@router.post("/{benchmark_id}/cancel", response_model=BenchmarkOut, status_code=202, summary="Cancel a benchmark")
def cancel_benchmark(
    benchmark_id: str, db: Session = Depends(get_db), key: ApiKey = Depends(require_scope("train"))
) -> dict[str, Any]:
    check_id(benchmark_id, "benchmark_id")
    begin_write(db)
    row = _get(db, benchmark_id)
    crud.request_cancel(db, row)
    db.commit()
    return _show(row, key)


@router.get("/{benchmark_id}/report", response_model=BenchmarkReport, summary="Benchmark report and scores")
def benchmark_report(
    benchmark_id: str,
    db: Session = Depends(get_db),
    store: ArtifactStore = Depends(get_store),
    key: ApiKey = Depends(require_scope("read")),
) -> dict:
    row = _get(db, benchmark_id)
    report = None
    if row.report_key:
        path = store.path_for_key(row.report_key)
        if path.is_file():
            report = json.loads(path.read_text())
    if report is None and row.status != "succeeded":
        raise ApiError(
            409,
            "not_ready",
            f"benchmark_id: benchmark {benchmark_id} is {row.status}; the report exists once it has succeeded",
            field="benchmark_id",
        )
    return {"benchmark": _show(row, key), "report": report, "scores": crud.scores(db, benchmark_id)}
