"""One generation job, start to finish: what the infer worker's task and the API's in-process sync path share.

    out = run_generation({"id": job.id, "params": job.params}, store, device)   # frames -> mp4 in storage
    with session_scope(settings) as db:
        record_generation(db, db.get(Job, job.id), out)                        # Video row, job succeeded

Frames come from ``trainer.serving`` (warm models, prompt-embedding cache, request batching), so concurrent
generations in one process run as one batch wherever they come from.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from backend.core.config import Serving, Settings, get_settings
from backend.core.jsonable import jsonable
from backend.crud import checkpoints as ckpt_crud
from backend.db.models import SUCCEEDED, Job, Video, utcnow
from backend.db.session import session_scope
from backend.storage import ArtifactStore


def resolve_checkpoint(ref: str, store: ArtifactStore, settings: Settings | None = None,
                       db: Session | None = None) -> Path:
    """A checkpoint id/name from the database (through ``db`` when given), else a zoo name (trainer.zoo)."""
    if db is None:
        with session_scope(settings, write=False) as own:
            return resolve_checkpoint(ref, store, db=own)
    row = ckpt_crud.get_checkpoint(db, ref)
    if row is not None:
        return ckpt_crud.location_path(row, store)
    from trainer.zoo import list_checkpoints
    from trainer.zoo import resolve_checkpoint as zoo_resolve

    # only names the zoo lists: the zoo resolver also accepts directory paths, which a client must never choose
    if ref not in {c["name"] for c in list_checkpoints()}:
        raise ValueError(f"checkpoint: no checkpoint or zoo entry named {ref!r}")
    return Path(zoo_resolve(ref))


def serving_options(serving: Serving, device: str) -> dict[str, Any]:
    """``trainer.serving.shared_service``'s options from the ``MOTIONLAB_SERVING_*`` settings."""
    from trainer.serving import FastPaths

    fast = FastPaths.for_device(device, dtype=serving.dtype, vae_dtype=serving.vae_dtype, compile=serving.compile,
                                channels_last_vae=serving.channels_last_vae, sliced_decode=serving.sliced_decode)
    return {"fast": fast, "window_ms": serving.batch_window_ms, "max_batch": serving.max_batch}


def video_id_for(job_id: str) -> str:
    """Deterministic, so a redelivered job overwrites its own artifact instead of leaving a second one."""
    return "vid_" + job_id.split("_", 1)[-1]


def run_generation(job: dict[str, Any], store: ArtifactStore, device: str, settings: Settings | None = None,
                   checkpoint_path: Path | None = None) -> dict[str, Any]:
    """Generate the job's video and store it as mp4; returns what ``record_generation`` writes.

    ``checkpoint_path``: the job's checkpoint already resolved (the API's in-process path did it when it created
    the job), which saves looking it up again.
    """
    from trainer.data.video_io import encode_mp4
    from trainer.serving import generate_one

    p = job["params"]
    ckpt_path = checkpoint_path or resolve_checkpoint(p["checkpoint"], store, settings)
    frames, info = generate_one(ckpt_path, p["prompt"], int(p.get("seed", 0)), steps=p.get("steps"),
                                num_frames=p.get("num_frames"), height=p.get("height"), width=p.get("width"),
                                guidance=p.get("guidance"), device=device,
                                **serving_options((settings or get_settings()).serving, device))
    fps = float(p.get("fps") or (info or {}).get("fps") or 8.0)
    vid = video_id_for(job["id"])
    t = time.perf_counter()
    data = encode_mp4(frames, fps, quality="web")  # in memory: written once, hashed without reading it back
    # not fsynced (see backend.storage): as durable as the row that records it on the embedded database, and
    # a power cut that loses it is answered 410 by GET /v1/videos/{id}
    store.write_bytes("videos", vid, data, ".mp4", durable=False)
    sha = hashlib.sha256(data).hexdigest()
    info.setdefault("timings", {})["video_encoding"] = round(time.perf_counter() - t, 6)
    return {"video_id": vid, "storage_key": store.key("videos", vid, ".mp4"), "num_frames": int(frames.shape[0]),
            "height": int(frames.shape[1]), "width": int(frames.shape[2]), "fps": fps, "size_bytes": len(data),
            "sha256": sha, "info": jsonable(info or {})}


def record_generation(db: Session, job: Job, out: dict[str, Any]) -> Video:
    """The job's Video row (the stored mp4 and how it was sampled) and the job marked succeeded, in ``db``."""
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
    job.result = {"video_id": out["video_id"], "url": f"/v1/videos/{out['video_id']}",
                  "num_frames": out["num_frames"], "height": out["height"], "width": out["width"], "fps": out["fps"]}
    job.progress, job.status, job.finished_at, job.worker_id = 1.0, SUCCEEDED, utcnow(), None
    return video
