"""The backend's in-process service layer: the read-only look-ups the web UI makes besides its HTTP calls.

    info = key_info(app, "ml_...")              # KeyInfo(name, prefix, scopes) or None (unknown / revoked)
    resolved, total = validate_config("dmd", {"steps": 200}, "tiny")    # the API's own run config check
    path = checkpoint_dir(app, "ckpt_0123456789abcdef")                 # a registered checkpoint's directory
    sampler = video_sampler_info(app, "vid_0123456789abcdef")           # what the worker measured

``app`` is the FastAPI application the UI is mounted in (``backend.api.main.create_app``): its ``state`` holds the
settings, the session factory and the artifact store. Each call uses a database session of its own and writes
nothing (``key_info`` only stamps the key's last use, as every API request does). Everything that changes state
goes through the ``/v1`` API (``webui.client``); ``webui`` imports nothing else of ``backend``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.api.run_config import validate_config
from backend.crud import checkpoints as ckpt_crud
from backend.db.models import Video
from backend.security import authenticate, has_scope


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


__all__ = ["KeyInfo", "checkpoint_dir", "has_scope", "key_info", "validate_config", "video_sampler_info"]
