"""One generation job, start to finish: what the infer worker's task and the API's in-process sync path share.

    out = run_generation({"id": job.id, "params": job.params}, store, device)   # frames -> mp4 in storage
    with session_scope(settings) as db:
        record_generation(db, db.get(Job, job.id), out)                        # Video row, job succeeded

The video comes from ``trainer.serving.generate_video``, the function every caller that makes one video uses, run
through the process's shared ``GenerationService`` (warm models, prompt-embedding cache, request batching), so
concurrent generations in one process run as one batch wherever they come from. This module adds the job's part:
its checkpoint resolved, its cancelling, its mp4 in storage and its rows.

A job's sampling options (steps, guidance, shape, FlowMo) are merged with the checkpoint's own settings by
``trainer.sampling.resolve_sampling``, as everywhere else; ``checkpoint_sampling`` reads those settings without
loading the model, for the API's checks before a job exists.

Cancelling a running generation (``jobs.cancel_requested``): ``trainer.serving`` samples without a per-step
callback, so this module puts a forward pre-hook on each served transformer (one call per sampling step) that
raises ``GenerationCancelled`` once every generation this process runs was asked to stop (``CancelWatch``). A
cancelled request that shares its batch with a live one runs to the end with it and is then recorded cancelled.

Compute budget: ``video_cost`` (frames x height x width x steps, the checkpoint's defaults where a request leaves
them out) is what ``limits.max_generation_cost`` and ``limits.max_benchmark_cost`` bound.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.config import Serving, Settings, get_settings
from backend.core.jsonable import jsonable
from backend.crud import checkpoints as ckpt_crud
from backend.db.models import CANCELLED, SUCCEEDED, Job, Video, utcnow
from backend.db.session import session_scope
from backend.storage import ArtifactStore
from trainer.data.video_io import encode_mp4

log = logging.getLogger("motionlab.generation")


class GenerationCancelled(Exception):
    """The generation was asked to stop (``POST /v1/generations/{id}/cancel``) and stopped at a sampling step."""


# --- compute budget ---------------------------------------------------------------------------------------------

# a FlowMo iteration, a forward pass with gradient and its backward, is counted as 3 sampling steps of compute
FLOWMO_ITERATION_STEPS = 3


def checkpoint_sampling(path: Path) -> Any:
    """The ``SamplingConfig`` a checkpoint samples with (its ``motionlab_sampling.json`` over the model's defaults),
    read without loading the model: what a request's options are merged with (``trainer.sampling.resolve_sampling``)
    to check the request before a job exists.

    A file that does not describe a valid configuration gives the fields it sets with the right type (kind, step
    count, timesteps, shape) over the defaults, or the defaults: loading that checkpoint fails later, with its own
    error.
    """
    from trainer.models.generator import SamplingConfig  # heavy: torch; the API starts without the model code

    info = ckpt_crud.sampling_info(path) or {}
    if not isinstance(info, dict):
        info = {}
    try:
        return SamplingConfig.from_dict(info)
    except (TypeError, ValueError):
        pass
    fields: dict[str, Any] = {
        k: info[k]
        for k in ("kind", "num_steps", "num_frames", "height", "width")
        if isinstance(info.get(k), (int, str)) and not isinstance(info.get(k), bool)
    }
    if isinstance(info.get("timesteps"), list) and info["timesteps"]:
        fields["timesteps"] = info["timesteps"]
    try:
        return SamplingConfig(**fields)
    except (TypeError, ValueError):
        return SamplingConfig()


def sampling_defaults(path: Path) -> dict[str, Any]:
    """The checkpoint's own video shape and step count (``checkpoint_sampling``), for ``video_cost``."""
    from trainer.sampling import sampling_steps  # heavy: torch; the API starts without the model code

    s = checkpoint_sampling(path)
    return {
        "kind": s.kind,
        "num_steps": sampling_steps(s),
        "num_frames": s.num_frames,
        "height": s.height,
        "width": s.width,
    }


def video_cost(
    defaults: dict[str, Any],
    *,
    steps: int | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> int:
    """frames x height x width x sampling steps of one video, the checkpoint's ``defaults`` filling the gaps."""
    return (
        int(num_frames or defaults["num_frames"])
        * int(height or defaults["height"])
        * int(width or defaults["width"])
        * int(steps or defaults["num_steps"])
    )


# --- cancelling a running generation -----------------------------------------------------------------------------


class CancelWatch:
    """The generations this process runs, each with an event set once its job's ``cancel_requested`` is seen
    (polled from the database at most every ``POLL_S``, or set at once by ``stop`` in the process that runs it)."""

    POLL_S = 0.2
    _active: ClassVar[dict[str, tuple[Settings, threading.Event]]] = {}
    _lock = threading.Lock()
    _polled_at = 0.0

    @classmethod
    @contextmanager
    def running(cls, job_id: str, settings: Settings) -> Iterator[threading.Event]:
        event = threading.Event()
        with cls._lock:
            cls._active[job_id] = (settings, event)
        try:
            yield event
        finally:
            with cls._lock:
                cls._active.pop(job_id, None)

    @classmethod
    def stop(cls, job_id: str) -> bool:
        """Ask a generation this process runs to stop; False when it runs elsewhere (it polls the database)."""
        with cls._lock:
            entry = cls._active.get(job_id)
        if entry is not None:
            entry[1].set()
        return entry is not None

    @classmethod
    def all_cancelled(cls) -> bool:
        """True when this process runs generations and every one of them was asked to stop."""
        with cls._lock:
            active = dict(cls._active)
            poll = bool(active) and time.monotonic() - cls._polled_at >= cls.POLL_S
            if poll:
                cls._polled_at = time.monotonic()
        if not active:
            return False
        if poll:
            cls._poll(active)
        return all(event.is_set() for _settings, event in active.values())

    @staticmethod
    def _poll(active: dict[str, tuple[Settings, threading.Event]]) -> None:
        groups: dict[int, tuple[Settings, list[str]]] = {}
        for job_id, (settings, event) in active.items():
            if not event.is_set():
                groups.setdefault(id(settings), (settings, []))[1].append(job_id)
        for settings, ids in groups.values():
            try:
                with session_scope(settings, write=False) as db:
                    for job_id in db.scalars(select(Job.id).where(Job.id.in_(ids), Job.cancel_requested.is_(True))):
                        active[job_id][1].set()
            except Exception:  # a transient database error: the next step polls again
                log.debug("cancel poll failed", exc_info=True)


def _stop_hook(_module: Any, _args: Any) -> None:
    if CancelWatch.all_cancelled():
        raise GenerationCancelled("cancelled at a sampling step")


def install_stop_hook(transformer: Any) -> None:
    """Put ``_stop_hook`` on a served transformer once: it runs before each forward pass (each sampling step)."""
    if not getattr(transformer, "_motionlab_stop_hook", False):
        transformer.register_forward_pre_hook(_stop_hook)
        transformer._motionlab_stop_hook = True


def resolve_checkpoint(
    ref: str, store: ArtifactStore, settings: Settings | None = None, db: Session | None = None
) -> Path:
    """A checkpoint id/name from the database (through ``db`` when given), else a zoo name (trainer.zoo)."""
    if db is None:
        with session_scope(settings, write=False) as own:
            return resolve_checkpoint(ref, store, db=own)
    row = ckpt_crud.get_checkpoint(db, ref)
    if row is not None:
        return ckpt_crud.location_path(row, store)
    # heavy: torch; the API starts without the model code
    from trainer.zoo import list_checkpoints
    from trainer.zoo import resolve_checkpoint as zoo_resolve

    # only names the zoo lists: the zoo resolver also accepts directory paths, which a client must never choose
    if ref not in {c["name"] for c in list_checkpoints()}:
        raise ValueError(f"checkpoint: no checkpoint or zoo entry named {ref!r}")
    return Path(zoo_resolve(ref))


def serving_options(serving: Serving, device: str) -> dict[str, Any]:
    """``trainer.serving.shared_service``'s options from the ``MOTIONLAB_SERVING_*`` settings."""
    from trainer.serving import FastPaths  # heavy: torch; the API starts without the model code

    fast = FastPaths.for_device(
        device,
        dtype=serving.dtype,
        vae_dtype=serving.vae_dtype,
        compile=serving.compile,
        channels_last_vae=serving.channels_last_vae,
        sliced_decode=serving.sliced_decode,
    )
    return {"fast": fast, "window_ms": serving.batch_window_ms, "max_batch": serving.max_batch}


def video_id_for(job_id: str) -> str:
    """Deterministic, so a redelivered job overwrites its own artifact instead of leaving a second one."""
    return "vid_" + job_id.split("_", 1)[-1]


def run_generation(
    job: dict[str, Any],
    store: ArtifactStore,
    device: str,
    settings: Settings | None = None,
    checkpoint_path: Path | None = None,
) -> dict[str, Any]:
    """Generate the job's video and store it as mp4; returns what ``record_generation`` writes.

    ``checkpoint_path``: the job's checkpoint already resolved (the API's in-process path did it when it created
    the job), which saves looking it up again.
    """
    # heavy: torch; the API starts without it
    from trainer.sampling import SamplingOptions
    from trainer.serving import generate_video, shared_service

    settings = settings or get_settings()
    p = job["params"]
    options = SamplingOptions.from_params(p)
    ckpt_path = checkpoint_path or resolve_checkpoint(p["checkpoint"], store, settings)
    service = shared_service(device, **serving_options(settings.serving, device))
    with CancelWatch.running(job["id"], settings) as stopped:
        install_stop_hook(service.generator(str(ckpt_path)).transformer)
        frames, info = generate_video(ckpt_path, p["prompt"], int(p.get("seed", 0)), options, service=service)
    if stopped.is_set():  # its batch ran on for another request
        raise GenerationCancelled("cancelled while its batch finished")
    fps = float(p.get("fps") or (info or {}).get("fps") or 8.0)
    vid = video_id_for(job["id"])
    t = time.perf_counter()
    data = encode_mp4(frames, fps, quality="web")  # in memory: written once, hashed without reading it back
    # not fsynced (see backend.storage): as durable as the row that records it on the embedded database, and
    # a power cut that loses it is answered 410 by GET /v1/videos/{id}
    store.write_bytes("videos", vid, data, ".mp4", durable=False)
    sha = hashlib.sha256(data).hexdigest()
    info.setdefault("timings", {})["video_encoding"] = round(time.perf_counter() - t, 6)
    return {
        "video_id": vid,
        "storage_key": store.key("videos", vid, ".mp4"),
        "num_frames": int(frames.shape[0]),
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "fps": fps,
        "size_bytes": len(data),
        "sha256": sha,
        "info": jsonable(info or {}),
    }


def record_generation(db: Session, job: Job, out: dict[str, Any]) -> Video | None:
    """The job's Video row (the stored mp4 and how it was sampled) and the job marked succeeded, in ``db``; a job
    cancelled meanwhile is marked cancelled instead (None)."""
    if job.cancel_requested:
        finish_cancelled(job)
        return None
    params = job.params
    video = db.get(Video, out["video_id"])  # a redelivered job rewrites its own row
    if video is None:
        video = Video(id=out["video_id"])
        db.add(video)
    video.job_id, video.checkpoint, video.prompt = job.id, params["checkpoint"], params["prompt"]
    video.seed = int(params.get("seed", 0))
    video.params = jsonable({**params, "sampler": out["info"]})
    video.num_frames, video.height, video.width, video.fps = out["num_frames"], out["height"], out["width"], out["fps"]
    video.storage_key, video.size_bytes, video.sha256 = out["storage_key"], out["size_bytes"], out["sha256"]
    job.result = {
        "video_id": out["video_id"],
        "url": f"/v1/videos/{out['video_id']}",
        "num_frames": out["num_frames"],
        "height": out["height"],
        "width": out["width"],
        "fps": out["fps"],
    }
    job.progress, job.status, job.finished_at, job.worker_id = 1.0, SUCCEEDED, utcnow(), None
    return video


def finish_cancelled(job: Job) -> None:
    job.status, job.finished_at, job.worker_id = CANCELLED, utcnow(), None
    job.error = f"cancelled while running (POST /v1/generations/{job.id}/cancel)"
