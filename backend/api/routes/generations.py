"""/v1/generations and /v1/videos: few-step generation, synchronously (wait up to a timeout) or as a job.

``POST /v1/generations`` with ``mode="sync"`` (default) waits up to ``timeout_s``: 201 with the finished generation
(and its video) when it is done in time, else 202 with the job to poll at ``GET /v1/generations/{id}``.
``mode="job"`` queues it on the ``infer`` queue and answers 202 at once.

Each request is bounded before any job row exists: its shape and steps by the ``limits`` ranges, its compute
(frames x height x width x steps, FlowMo's gradient passes included) by ``limits.max_generation_cost``, a key's
queued and running generations by ``limits.max_concurrent_generations_per_key``. ``sampler="flowmo"`` adds FlowMo
guidance (``trainer.flowmo``); its ``flowmo_*`` settings are checked against their bounds and the sampler's step
count, each error naming the field and the limit. The request's options are merged with the checkpoint's sampling
settings by ``trainer.sampling.resolve_sampling``, the same merge the generation itself makes, so the checks see
the steps and shape that will run. A running generation is cancelled at its next sampling step.

Where a sync generation runs is ``settings.sync_generation``. ``"api"`` (default): in this process, on one thread of
``app.state.generation_pool`` from the key check to the recorded video (``_run_here``), through the process's
``trainer.serving`` service (warm models, prompt cache, batching of concurrent requests) -- the job row is created
already claimed by this process and heartbeats while it runs, so if the API dies mid-generation a worker's
stale-lease recovery requeues it. ``"worker"``: queued like a job, and the request polls its row until it finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.api.deps import (
    Page,
    SessionReleasingRoute,
    authorize,
    check_id,
    check_key,
    checkpoint_path,
    get_db,
    get_row,
    get_settings_dep,
    get_store,
    pagination,
    redacted,
    require_scope,
)
from backend.api.errors import ApiError, check_range, not_found
from backend.api.schemas import MIN_TIMEOUT_S, GenerationCreate, GenerationList, GenerationOut
from backend.core.config import Settings
from backend.crud import jobs as crud
from backend.crud.leases import LeaseKeeper
from backend.db.models import FAILED, RUNNING, SUCCEEDED, TERMINAL, ApiKey, Job, Video, utcnow
from backend.db.session import begin_write
from backend.generation import (
    FLOWMO_ITERATION_STEPS,
    CancelWatch,
    GenerationCancelled,
    checkpoint_sampling,
    finish_cancelled,
    record_generation,
    run_generation,
    video_cost,
)
from backend.storage import ArtifactStore
from backend.worker.dispatch import GENERATE, BrokerUnavailable, enqueue
from backend.worker.liveness import owner_token
from trainer.flowmo import FlowMoConfig, FlowMoError, flowmo_from_options

router = APIRouter(tags=["generations"], route_class=SessionReleasingRoute)
log = logging.getLogger("motionlab.api.generations")


def _option_error(exc: ValueError) -> ApiError:
    """A sampling or FlowMo option out of bounds (``SamplingOptionError``, ``FlowMoError``) as a 422 naming the
    field and its limit."""
    limit = getattr(exc, "limit", None)
    return ApiError(
        422,
        "limit_exceeded" if limit is not None else "validation_error",
        str(exc),
        field=getattr(exc, "field", None),
        limit=limit,
    )


def flowmo_settings(body: GenerationCreate) -> FlowMoConfig | None:
    """The request's FlowMo settings (None: the plain sampler); 422 naming the field and its limit when one is out of
    bounds (their range against the sampler's step count is checked with the checkpoint, ``check_generation_cost``)."""
    try:
        return flowmo_from_options(
            body.sampler, body.flowmo_eta, body.flowmo_start, body.flowmo_stop, body.flowmo_iterations
        )
    except FlowMoError as exc:
        raise _option_error(exc) from None


def validate_generation(body: GenerationCreate, settings: Settings) -> None:
    lim = settings.limits
    if len(body.prompt) > lim.max_prompt_chars:
        raise ApiError(
            422,
            "limit_exceeded",
            f"prompt: must be at most {lim.max_prompt_chars} characters (got {len(body.prompt)})",
            field="prompt",
            limit=lim.max_prompt_chars,
        )
    check_range("seed", body.seed, 0, lim.max_seed)
    check_range("steps", body.steps, 1, lim.max_steps)
    check_range("num_frames", body.num_frames, 1, lim.max_frames)
    check_range("height", body.height, 8, lim.max_height)
    check_range("width", body.width, 8, lim.max_width)
    check_range("timeout_s", body.timeout_s, MIN_TIMEOUT_S, lim.max_sync_timeout_s)
    flowmo_settings(body)


def check_generation_cost(body: GenerationCreate, ckpt_path: Path, settings: Settings) -> None:
    """The request's options merged with the checkpoint's sampling settings as the generation will merge them
    (``trainer.sampling.resolve_sampling``: 422 naming the field and its limit when one does not fit, FlowMo's step
    range against the resulting step count included), then 422 naming ``limits.max_generation_cost`` when the
    video's frames x height x width x steps exceed it (a FlowMo gradient iteration, a forward and a backward pass,
    counts as ``FLOWMO_ITERATION_STEPS`` steps)."""
    # heavy: torch; the API starts without the model code
    from trainer.sampling import SamplingOptionError, SamplingOptions, resolve_sampling, sampling_steps

    limit = settings.limits.max_generation_cost
    try:
        options = SamplingOptions.from_params(body.model_dump())
        s = resolve_sampling(checkpoint_sampling(ckpt_path), options)
    except (SamplingOptionError, FlowMoError) as exc:
        raise _option_error(exc) from None
    steps = sampling_steps(s)
    if options.flowmo is not None:
        steps += FLOWMO_ITERATION_STEPS * len(options.flowmo.guided_steps(steps)) * options.flowmo.iterations
    cost = video_cost(asdict(s), steps=steps)
    if cost > limit:
        shape = f"{s.num_frames} frames x {s.height} x {s.width} x {steps} steps" + (
            ", FlowMo's passes included" if options.flowmo else ""
        )
        raise ApiError(
            422,
            "limit_exceeded",
            f"num_frames x height x width x steps: must be at most {limit} "
            f"(limits.max_generation_cost); got {cost} ({shape})",
            field="max_generation_cost",
            limit=limit,
        )


def video_out(v: Video) -> dict[str, Any]:
    return {
        "id": v.id,
        "checkpoint": v.checkpoint,
        "prompt": v.prompt,
        "seed": v.seed,
        "num_frames": v.num_frames,
        "height": v.height,
        "width": v.width,
        "fps": v.fps,
        "size_bytes": v.size_bytes,
        "sha256": v.sha256,
        "url": f"/v1/videos/{v.id}",
        "created_at": v.created_at,
    }


def job_out(db: Session, job: Job, video: Video | None = None) -> dict[str, Any]:
    """The job as the API shows it; ``video``: its Video row when the caller has it (saves the query)."""
    if video is None and job.status == SUCCEEDED:
        video = crud.video_for_job(db, job.id)
    out = GenerationOut.model_validate(job).model_dump()
    out["video"] = video_out(video) if video else None
    return out


def _insert(db: Session, request: Request, body: GenerationCreate, owner: str | None) -> tuple[Job, Path]:
    """Authorize, check and insert the job (per-key limit checked in the same transaction); commits.

    ``owner``: the job is inserted already leased to this process (it runs it), else queued. Returns the job and its
    checkpoint's directory.
    """
    settings: Settings = request.app.state.settings
    key = authorize(request, db, ("generate",))
    validate_generation(body, settings)
    ckpt_path = checkpoint_path(db, request.app.state.store, body.checkpoint)
    check_generation_cost(body, ckpt_path, settings)
    # count and insert in one write transaction, serialised per key (a row lock on PostgreSQL; SQLite has none, but
    # its write lock serialises all writers), so concurrent submissions cannot all slip under the limit
    begin_write(db)
    if db.get_bind().dialect.name != "sqlite":
        db.execute(select(ApiKey.id).where(ApiKey.id == key.id).with_for_update())
    active = crud.count_active(db, kind="generate", api_key_id=key.id)
    limit = settings.limits.max_concurrent_generations_per_key
    if active >= limit:
        raise ApiError(
            429,
            "too_many_concurrent_generations",
            f"api key: at most {limit} concurrent generations per key ({active} queued or running; "
            "limits.max_concurrent_generations_per_key)",
            field="api_key",
            limit=limit,
            headers={"Retry-After": "5"},
        )
    params = body.model_dump(exclude={"mode", "timeout_s"})
    job = crud.create_job(db, kind="generate", params=params, api_key_id=key.id, owner=owner)
    db.commit()
    return job, ckpt_path


def _queue(request: Request, body: GenerationCreate) -> Job:
    """Insert the job and queue it for an infer worker (job mode, and sync mode with ``sync_generation="worker"``)."""
    db: Session = request.app.state.sessionmaker()
    try:
        job, _ = _insert(db, request, body, owner=None)
        try:
            task_id = enqueue(request.app.state.celery, GENERATE, job.id)
        except BrokerUnavailable as exc:
            begin_write(db)
            job.status, job.error = FAILED, f"could not queue the job: {exc}"
            db.commit()
            raise ApiError(503, "broker_unavailable", str(exc)) from exc
        begin_write(db)
        job.task_id = task_id
        db.commit()
        return job
    finally:
        db.close()


def _run_here(request: Request, body: GenerationCreate, created: Future) -> dict[str, Any]:
    """Insert the job leased to this process, generate it and record it, all on one generation-pool thread with one
    session (this is in every sync generation's latency); returns the finished job as the API shows it.

    ``created`` gets the job's id once it is inserted (or what inserting raised), for an answer past the timeout.
    """
    state = request.app.state
    settings: Settings = state.settings
    me = owner_token()
    db: Session = state.sessionmaker()
    try:
        try:
            job, ckpt_path = _insert(db, request, body, owner=me)
        except BaseException as exc:
            created.set_exception(exc)
            raise
        created.set_result(job.id)
        cancelled = False
        with LeaseKeeper(settings, Job, job.id, me):
            try:
                out = run_generation(
                    {"id": job.id, "params": job.params}, state.store, settings.device, settings, ckpt_path
                )
                error = None
            except GenerationCancelled:
                out, error, cancelled = None, None, True
            except Exception as exc:
                log.exception("generation %s failed", job.id)
                out, error = None, f"{type(exc).__name__}: {exc}"[:4000]
        begin_write(db)
        db.refresh(job)  # cancel_requested may have been set meanwhile
        video = None
        if out is not None:
            video = record_generation(db, job, out)
        elif cancelled:
            finish_cancelled(job)
        else:
            job.status, job.error, job.finished_at, job.worker_id = FAILED, error, utcnow(), None
        db.commit()
        return job_out(db, job, video)
    finally:
        db.close()


async def _sync_here(request: Request, body: GenerationCreate, timeout: float) -> dict[str, Any]:
    """Run ``_run_here`` and wait up to ``timeout``; past it, the job as it is now (the generation still finishes and
    is recorded for a later GET). 503 if no generation thread was free to even start it in that time."""
    state = request.app.state
    created: Future = Future()
    work = state.generation_pool.submit(_run_here, request, body, created)
    done = asyncio.wrap_future(work)
    done.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even when nobody waits for it
    try:
        return await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        pass
    if work.cancel():
        n = state.settings.sync_generation_threads
        raise ApiError(
            503,
            "generation_threads_busy",
            f"all {n} generation threads of this server stayed busy for timeout_s={timeout}; retry later",
            headers={"Retry-After": "5"},
        )
    job_id = await asyncio.wrap_future(created)  # raises what inserting it raised (401, 422, 429, ...)
    job = await run_in_threadpool(_read, request, job_id)
    if job is None:
        raise not_found("generation", job_id, "job_id")
    return job


def _shown(key: ApiKey, job: dict[str, Any]) -> dict[str, Any]:
    return {**job, "error": redacted(key, job.get("error"))}


def _payload(job: dict[str, Any]) -> dict[str, Any]:
    return GenerationOut.model_validate(job).model_dump(mode="json")


def _read(request: Request, job_id: str) -> dict[str, Any] | None:
    db: Session = request.app.state.sessionmaker()
    try:
        job = db.get(Job, job_id)
        return job_out(db, job) if job is not None else None
    finally:
        db.close()


async def _parse_body(request: Request) -> GenerationCreate:
    """The request body as a ``GenerationCreate``; a body that does not fit it is answered 401/403 for a caller
    without a valid "generate" key (as every endpoint that checks its key in a dependency answers), else 422."""
    try:
        return GenerationCreate.model_validate_json(await request.body())
    except ValidationError as exc:
        await run_in_threadpool(check_key, request, ("generate",))  # raises 401/403
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


@router.post(
    "/generations",
    status_code=201,
    response_model=GenerationOut,
    responses={202: {"model": GenerationOut, "description": "queued (job mode) or not done within timeout"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": GenerationCreate.model_json_schema()}},
        }
    },
    summary="Generate a video (few-step); sync with a timeout, or as a job",
)
async def create_generation(request: Request, settings: Settings = Depends(get_settings_dep)) -> Any:
    # The body is parsed here rather than by FastAPI, so that a malformed one cannot be answered 422 before the key
    # is checked. The key (scope "generate") of a well-formed request is checked on the thread that inserts the job,
    # not by a dependency of its own: that saves a session and a thread hop in every generation's latency.
    body = await _parse_body(request)
    try:  # timeout_s is used right here, before the job is checked: check it first (after the key, as above)
        check_range("timeout_s", body.timeout_s, MIN_TIMEOUT_S, settings.limits.max_sync_timeout_s)
    except ApiError:
        await run_in_threadpool(check_key, request, ("generate",))  # raises 401/403
        raise
    timeout = body.timeout_s or settings.sync_generation_timeout_s
    if body.mode == "sync" and settings.sync_generation == "api":
        job = await _sync_here(request, body, timeout)
    else:
        queued = GenerationOut.model_validate(await run_in_threadpool(_queue, request, body))
        if body.mode == "job":
            return JSONResponse(queued.model_dump(mode="json"), status_code=202)
        job = queued.model_dump()
        deadline = time.monotonic() + timeout
        delay = 0.05
        while job["status"] not in TERMINAL and time.monotonic() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.1)
            job = await run_in_threadpool(_read, request, job["id"]) or job
    if job["status"] == FAILED:
        err = job.get("error") or "generation failed"
        bad_input = err.startswith(("ValueError", "ConfigError", "KeyError", "FileNotFoundError"))
        raise ApiError(422 if bad_input else 500, "generation_failed", f"generation {job['id']} failed: {err}")
    # done: 201; queued or running: 202, and the client polls the generation
    return JSONResponse(_payload(job), status_code=201 if job["status"] == SUCCEEDED else 202)


@router.get("/generations", response_model=GenerationList, summary="List generations (newest first)")
def list_generations(
    status: str | None = None,
    page: Page = Depends(pagination()),
    db: Session = Depends(get_db),
    key: ApiKey = Depends(require_scope("read", "generate")),
) -> dict:
    rows, total = crud.list_jobs(db, kind="generate", status=status, limit=page.limit, offset=page.offset)
    return {
        "items": [_shown(key, job_out(db, j)) for j in rows],
        "total": total,
        "limit": page.limit,
        "offset": page.offset,
    }


def _generation(db: Session, job_id: str) -> Job:
    """The generation job ``job_id``; a 404 naming ``job_id`` for another kind of job or none."""
    job = get_row(db, Job, job_id, "generation", "job_id")
    if job.kind != "generate":
        raise not_found("generation", job_id, "job_id")
    return job


@router.get("/generations/{job_id}", response_model=GenerationOut, summary="Get a generation (job)")
def get_generation(
    job_id: str, db: Session = Depends(get_db), key: ApiKey = Depends(require_scope("read", "generate"))
) -> dict:
    return _shown(key, job_out(db, _generation(db, job_id)))


@router.post(
    "/generations/{job_id}/cancel",
    response_model=GenerationOut,
    status_code=202,
    summary="Cancel a generation: a queued one at once, a running one at its next sampling step",
)
def cancel_generation(
    job_id: str, db: Session = Depends(get_db), key: ApiKey = Depends(require_scope("generate"))
) -> dict:
    check_id(job_id, "job_id")
    begin_write(db)
    job = _generation(db, job_id)
    if job.status not in TERMINAL:
        crud.cancel_job(db, job)
    db.commit()
    if job.status == RUNNING:
        CancelWatch.stop(job_id)  # at once when this process runs it; elsewhere its runner polls the row
    return _shown(key, job_out(db, job))


@router.get(
    "/videos/{video_id}",
    response_class=FileResponse,
    summary="Download a generated video (mp4)",
    responses={200: {"content": {"video/mp4": {}}}},
)
def get_video(
    video_id: str,
    db: Session = Depends(get_db),
    store: ArtifactStore = Depends(get_store),
    _key: ApiKey = Depends(require_scope("read", "generate")),
) -> FileResponse:
    video = get_row(db, Video, video_id, "video", "video_id")
    path = store.path_for_key(video.storage_key)
    if not path.is_file():
        raise ApiError(410, "gone", f"video_id: the file of {video_id} is missing from storage", field="video_id")
    size = path.stat().st_size
    if video.size_bytes is not None and size != video.size_bytes:  # e.g. cut short by a power loss
        raise ApiError(
            410,
            "gone",
            f"video_id: the file of {video_id} has {size} bytes, not the {video.size_bytes} recorded",
            field="video_id",
        )
    return FileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4")
