"""The backend's in-process service layer: the read-only look-ups the web UI makes besides its HTTP calls.

    info = key_info(app, "ml_...")              # KeyInfo(name, prefix, scopes) or None (unknown / revoked)
    resolved, total = validate_config("dmd", {"steps": 200}, "tiny")    # the API's own run config check
    path = checkpoint_dir(app, "ckpt_0123456789abcdef")                 # a registered checkpoint's directory
    sampler = video_sampler_info(app, "vid_0123456789abcdef")           # what the worker measured
    s = effective_sampling(checkpoint_json, {"steps": 4})                # the settings a request would run with
    nfe = network_evaluations(checkpoint_json, {"steps": 4, "sampler": "flowmo"})

``app`` is the FastAPI application the UI is mounted in (``backend.api.main.create_app``): its ``state`` holds the
settings, the session factory and the artifact store. Each call uses a database session of its own and writes
nothing (``key_info`` only stamps the key's last use, as every API request does). Everything that changes state
goes through the ``/v1`` API (``webui.client``); ``webui`` imports nothing else of ``backend``.

What a request would sample with is worked out as the generation itself works it out
(``trainer.sampling.resolve_sampling``), so the UI's figures match the worker's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.api.run_config import validate_config
from backend.crud import checkpoints as ckpt_crud
from backend.db.models import Video
from backend.security import authenticate, has_scope
from trainer.flowmo import DEFAULT_ETA, DEFAULT_ITERATIONS, ETA_MAX, ITERATIONS_MAX


@dataclass(frozen=True)
class KeyInfo:
    """Who an API key belongs to: its name, its shown prefix and its scopes."""

    name: str
    prefix: str
    scopes: list[str]


def key_info(app: Any, key: str) -> KeyInfo | None:
    """The key's owner and scopes by the API's own authentication; None for an unknown or revoked key."""
    db = app.state.sessionmaker()
    try:
        row = authenticate(db, key, pepper=app.state.settings.api_key_pepper)
        db.commit()
        return KeyInfo(row.name, row.prefix, list(row.scopes)) if row is not None else None
    finally:
        db.close()


def checkpoint_dir(app: Any, checkpoint_id: str) -> Path | None:
    """The directory of a registered or trained checkpoint (by id or name) on this server; None if there is none."""
    db = app.state.sessionmaker()
    try:
        row = ckpt_crud.get_checkpoint(db, checkpoint_id)
        return ckpt_crud.location_path(row, app.state.store) if row is not None else None
    finally:
        db.close()


def video_sampler_info(app: Any, video_id: str) -> dict[str, Any]:
    """The sampler record of a generated video (sampling seconds, network evaluations); {} when there is none."""
    db = app.state.sessionmaker()
    try:
        row = db.get(Video, video_id)
        return dict(((row.params or {}).get("sampler") or {}) if row is not None else {})
    finally:
        db.close()


def effective_sampling(sampling: dict[str, Any] | None, request: dict[str, Any] | None = None) -> Any:
    """The ``SamplingConfig`` a generation request (its ``steps``, ``guidance``, shape, ``sampler`` and ``flowmo_*``
    fields) would run with on a checkpoint whose sampling JSON is ``sampling``; None when the checkpoint does not
    describe its sampling or the request does not fit it (the API names why when it is sent)."""
    resolved = _resolve(sampling, request)
    return resolved[0] if resolved is not None else None


def network_evaluations(sampling: dict[str, Any] | None, request: dict[str, Any] | None = None) -> int | None:
    """Transformer forward passes of one video of that request (CFG pairs and FlowMo's passes included); None as
    for ``effective_sampling``."""
    resolved = _resolve(sampling, request)
    if resolved is None:
        return None
    from trainer.sampling import network_evaluations as nfe  # heavy: torch; once a checkpoint is listed

    return int(nfe(*resolved))


def _resolve(sampling: dict[str, Any] | None, request: dict[str, Any] | None) -> tuple[Any, Any] | None:
    if not sampling:
        return None
    # heavy: torch; only once a key lists a checkpoint
    from trainer.models.generator import SamplingConfig
    from trainer.sampling import SamplingOptions, resolve_sampling

    try:
        options = SamplingOptions.from_params(request or {})
        return resolve_sampling(SamplingConfig.from_dict(sampling), options), options.flowmo
    except (TypeError, ValueError):  # an undescribed checkpoint, or options it does not take
        return None


def first_zoo_checkpoint() -> str | None:
    """The name of the first checkpoint the zoo lists (the web UI's defaults before a key lists any); None when
    there is none or the zoo cannot be read."""
    try:
        from trainer.zoo import list_checkpoints  # heavy: torch; the page's first load only

        first = next(iter(list_checkpoints()), None)
    except (ImportError, OSError, ValueError):
        return None
    return first["name"] if first is not None else None


__all__ = [
    "DEFAULT_ETA",
    "DEFAULT_ITERATIONS",
    "ETA_MAX",
    "ITERATIONS_MAX",
    "KeyInfo",
    "checkpoint_dir",
    "effective_sampling",
    "first_zoo_checkpoint",
    "has_scope",
    "key_info",
    "network_evaluations",
    "validate_config",
    "video_sampler_info",
]
