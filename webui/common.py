"""Pieces shared by the tabs of the web UI: the context a tab is built with, status lines, turning errors into
sentences, who the API key belongs to, and what a checkpoint's sampling schedule is.

The UI reaches the backend through the ``/v1`` API (``webui.client``) and, for read-only look-ups, through
``backend.services`` only.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from typing import Any

from backend import services
from webui.client import ApiClient, ApiError

log = logging.getLogger("motionlab.webui")

CSS = """
.ml-status { padding: 8px 12px; border-radius: 6px; margin: 4px 0; font-size: 0.95em; line-height: 1.4; }
.ml-status.ml-info { background: #eef3fb; color: #1d3b66; border: 1px solid #c9d8ef; }
.ml-status.ml-busy { background: #fff8e6; color: #5c4400; border: 1px solid #f0d890; }
.ml-status.ml-ok { background: #eaf6ec; color: #1e4d26; border: 1px solid #b9dfc0; }
.ml-status.ml-error { background: #fdecea; color: #7a1c12; border: 1px solid #f3b8b0; font-weight: 500; }
.ml-spin { display: inline-block; width: 0.8em; height: 0.8em; border: 2px solid #c9a43a; border-top-color: transparent;
           border-radius: 50%; animation: ml-spin 0.9s linear infinite; vertical-align: -1px; margin-right: 6px; }
@keyframes ml-spin { to { transform: rotate(360deg); } }
.ml-progress { width: 100%; height: 10px; background: #e8e8e8; border-radius: 5px; overflow: hidden; margin-top: 4px; }
.ml-progress > div { height: 100%; background: #3b7dd8; }
.ml-video video { image-rendering: pixelated; }
.ml-title { margin: 0 0 2px 0; }
.ml-muted { color: #666; font-size: 0.9em; }
.ml-links code { user-select: all; }
"""

# Methods whose frozen teacher (real score) is required; the trainer checks again when the run starts.
TEACHER_METHODS = ("dmd", "mogan", "vdot")
INIT_REQUIRED_METHODS = ("dfdpo",)


@dataclass
class UiContext:
    """What every tab builder gets: the FastAPI app (for in-process API calls) and the API-key field."""

    app: Any
    key: Any  # gr.Textbox holding the person's API key

    @property
    def settings(self) -> Any:
        return self.app.state.settings

    @property
    def limits(self) -> Any:
        return self.app.state.settings.limits

    def api(self, key: str | None) -> ApiClient:
        return ApiClient(self.app, key)


# --- status lines -------------------------------------------------------------------------------------------------


def status(kind: str, text: str, *, progress: float | None = None) -> str:
    """A status line: kind is info | busy | ok | error. ``text`` is escaped (it may carry user input)."""
    spin = '<span class="ml-spin"></span>' if kind == "busy" else ""
    icon = {"ok": "✔ ", "error": "⚠ "}.get(kind, "")
    bar = ""
    if progress is not None:
        pct = max(0.0, min(1.0, float(progress))) * 100
        bar = f'<div class="ml-progress"><div style="width:{pct:.0f}%"></div></div>'
    return f'<div class="ml-status ml-{kind}" role="status">{spin}{icon}{html.escape(text)}{bar}</div>'


def error_text(exc: BaseException) -> str:
    """A sentence for a person: the API's own message (field and limit), never a stack trace."""
    if (
        not isinstance(exc, ApiError)
        and isinstance(getattr(exc, "code", None), str)
        and isinstance(getattr(exc, "message", None), str)
    ):  # the backend's own ApiError (a service function was called)
        exc = ApiError(getattr(exc, "status", 422), exc.code, exc.message)
    if isinstance(exc, ApiError):
        if exc.code == "missing_api_key":
            return (
                "No API key: paste one into the 'API key' field at the top of the page (motionlab serve prints an "
                "admin key the first time it starts; an admin can create narrower keys with POST /v1/keys)."
            )
        if exc.code == "invalid_api_key":
            return "This API key is unknown or revoked: paste a valid key into the 'API key' field at the top."
        if exc.code == "insufficient_scope":
            return f"Your API key may not do this: {exc.message}."
        if exc.code == "too_many_concurrent_generations":
            return f"{exc.message}. Wait for one to finish and try again."
        if exc.code == "broker_unavailable":
            return f"The job queue cannot be reached, so nothing was started: {exc.message}"
        return exc.message
    if isinstance(exc, (ValueError, KeyError, LookupError)):
        return str(exc).strip("'\"") or type(exc).__name__
    log.exception("web UI: unexpected error", exc_info=exc)
    return f"Unexpected error ({type(exc).__name__}); the server log has the details."


def error_status(exc: BaseException, prefix: str = "") -> str:
    return status("error", f"{prefix}{error_text(exc)}")


# --- the key ------------------------------------------------------------------------------------------------------


def whoami(app: Any, key: str | None) -> tuple[bool, str]:
    """(valid, sentence) for an API key, by the backend's own authentication (``backend.services.key_info``)."""
    key = (key or "").strip()
    if not key:
        return False, (
            "No API key yet. Paste one above: motionlab serve prints an admin key the first time it "
            "starts (an admin can create narrower keys with POST /v1/keys)."
        )
    info = services.key_info(app, key)
    if info is None:
        return False, "This API key is unknown or revoked."
    return True, f"Using key '{info.name}' ({info.prefix}…), scopes: {', '.join(info.scopes)}."


def require_scope(app: Any, key: str | None, scope: str, action: str) -> None:
    """For the few checks the UI runs in process (no side effects): the same key and scope rule as the API."""
    if not (key or "").strip():
        raise ApiError(401, "missing_api_key", "missing key")
    info = services.key_info(app, key.strip())
    if info is None:
        raise ApiError(401, "invalid_api_key", "unknown key")
    scopes = info.scopes
    if not services.has_scope(scopes, scope):
        raise ApiError(403, "insufficient_scope", f"{action} needs scope '{scope}'; the key has {scopes}")


# --- checkpoints --------------------------------------------------------------------------------------------------


def checkpoint_kind(item: dict[str, Any]) -> str | None:
    info = item.get("info") or {}
    return info.get("kind") or (info.get("sampling") or {}).get("kind")


def checkpoint_label(item: dict[str, Any]) -> str:
    kind = checkpoint_kind(item)
    kind_s = {"few_step": "few-step", "teacher": "teacher"}.get(kind or "", kind or "")
    parts = [item["name"], item.get("source") or ""]
    if kind_s:
        parts.append(kind_s)
    adapter = (item.get("info") or {}).get("adapter")
    if isinstance(adapter, dict) and adapter.get("base"):  # base + adapter: a LoRA checkpoint
        parts.append("LoRA on " + str(adapter["base"]).rstrip("/").rsplit("/", 1)[-1])
    return " · ".join(p for p in parts if p)


def checkpoint_choices(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(checkpoint_label(i), i["name"]) for i in items]


def checkpoint_sampling(app: Any, item: dict[str, Any] | None) -> dict[str, Any] | None:
    """The sampling JSON of a checkpoint the API listed (how many steps, which timesteps, CFG, default size)."""
    if not item:
        return None
    info = item.get("info") or {}
    if isinstance(info.get("sampling"), dict) and info["sampling"].get("kind"):
        return info["sampling"]
    try:
        # heavy: torch; most listed checkpoints carry their sampling info and never get here
        from trainer.models.generator import SAMPLING_FILE
        from trainer.zoo import resolve_checkpoint
    except ImportError:
        return None
    path = None
    try:
        if item.get("source") == "zoo":
            path = resolve_checkpoint(item["name"])
        else:
            path = services.checkpoint_dir(app, item["id"])
        if path is not None and (path / SAMPLING_FILE).is_file():
            return json.loads((path / SAMPLING_FILE).read_text())
    except Exception:  # a checkpoint without readable sampling info still generates with its defaults
        log.debug("no sampling info for %s", item.get("name"), exc_info=True)
    return None


def effective_sampling(sampling: dict[str, Any] | None, steps: int | None, guidance: float | None) -> Any:
    """The SamplingConfig the worker will use for a request (the backend's override rules)."""
    return services.effective_sampling(sampling, {"steps": steps, "guidance": guidance})


def network_evaluations(sampling: dict[str, Any] | None, steps: int | None, guidance: float | None) -> int | None:
    return services.network_evaluations(sampling, {"steps": steps, "guidance": guidance})


def describe_schedule(sampling: dict[str, Any] | None) -> str:
    if not sampling:
        return "Sampling schedule: the checkpoint's own (not described by the checkpoint)."
    size = f"{sampling.get('num_frames')} frames at {sampling.get('height')}x{sampling.get('width')}"
    if sampling.get("kind") == "few_step":
        ts = ", ".join(f"{t:g}" for t in sampling.get("timesteps") or [])
        return (
            f"Few-step student: {len(sampling.get('timesteps') or [])} steps at timesteps {ts}, no CFG "
            f"(1 network evaluation per step); default {size}."
        )
    nfe = network_evaluations(sampling, None, None)
    return (
        f"Teacher: {sampling.get('num_steps')} Euler steps, shift {sampling.get('shift')}, CFG "
        f"{sampling.get('guidance_scale')} ({nfe} network evaluations); default {size}."
    )


def optional_int(value: Any, field: str) -> int | None:
    """A form number that may be empty; non-integers are named (the API checks the ranges)."""
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: must be a whole number (got {value!r})") from None
    if not f.is_integer():
        raise ValueError(f"{field}: must be a whole number (got {value})")
    return int(f)


def optional_float(value: Any, field: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: must be a number (got {value!r})") from None


def seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


__all__ = [
    "CSS",
    "INIT_REQUIRED_METHODS",
    "TEACHER_METHODS",
    "UiContext",
    "checkpoint_choices",
    "checkpoint_kind",
    "checkpoint_label",
    "checkpoint_sampling",
    "describe_schedule",
    "error_status",
    "error_text",
    "network_evaluations",
    "optional_float",
    "optional_int",
    "seconds",
    "status",
    "whoami",
]
