"""A training run's config as the API checks it: the trainer's own validation, answered as 422s naming the field.

    resolved, total_steps = validate_config("dmd", {"steps": 200}, "tiny")               # no side effects
    resolved, total_steps = validate_config(method, body.config, preset, db=db, store=store)   # a request's config

``POST /v1/runs`` calls it with the request's session and store (checkpoints and datasets must then be named, not
given as paths); the web UI's "Check config" calls it without them (through ``backend.services``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy.orm import Session

from backend.api.errors import ApiError, check_finite
from backend.run_refs import RunConfigError, check_api_config, to_server_paths, with_names
from backend.storage import ArtifactStore
from trainer.config import load_train_config, to_dict


def validate_config(
    method: str,
    overrides: dict[str, Any],
    preset: str,
    *,
    db: Session | None = None,
    store: ArtifactStore | None = None,
) -> tuple[dict[str, Any], int | None]:
    """The trainer's own config check; returns (resolved config as a dict, total steps).

    With ``db`` and ``store`` (a request's config): checkpoints and datasets must be named, not given as paths, and
    the resolved config shows those names."""
    check_finite(overrides, "config")
    server = overrides
    if db is not None and store is not None:
        try:
            check_api_config(db, overrides)
        except RunConfigError as exc:
            raise ApiError(422, "invalid_config", str(exc), field=exc.field) from None
        server = to_server_paths(db, store, overrides)
    try:
        cfg = load_train_config(method, server, preset=preset)
    except ValueError as exc:  # trainer.config.ConfigError is a ValueError with .field
        raise config_error(exc) from exc
    except (TypeError, KeyError) as exc:
        raise ApiError(422, "invalid_config", f"config: {exc}", field="config") from exc
    resolved = json.loads(json.dumps(to_dict(cfg), default=str))
    return (with_names(resolved, overrides) if server is not overrides else resolved), _total_steps(cfg)


def config_error(exc: ValueError) -> ApiError:
    """A 422 naming the dotted config field (``config.optim.lr``) and, for ranges, the limit."""
    raw = getattr(exc, "field", None) or ""
    msg = str(exc)
    prefix = f"config field '{raw}': "
    reason = msg.removeprefix(prefix)
    if raw in ("method", "preset"):
        field = raw
    elif raw and not raw.startswith("<"):
        field = f"config.{raw}"
    else:
        field = "config"
    m = re.search(r"range \[([^\]]+)\]", reason)
    limit = f"[{m.group(1)}]" if m else None
    return ApiError(422, "invalid_config", f"{field}: {reason}", field=field, limit=limit)


def _total_steps(cfg: Any) -> int | None:
    for name in ("total_steps", "max_steps", "steps", "num_steps"):
        v = getattr(cfg, name, None)
        if isinstance(v, int):
            return v
    for sub in ("loop", "train", "optim", "schedule"):
        obj = getattr(cfg, sub, None)
        for name in ("total_steps", "max_steps", "steps", "num_steps"):
            v = getattr(obj, name, None) if obj is not None else None
            if isinstance(v, int):
                return v
    return None


__all__ = ["config_error", "validate_config"]
