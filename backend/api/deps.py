"""FastAPI dependencies: settings, database session, artifact store, Celery app, API-key auth, id checks, and the
check of a checkpoint a request names (shared by the generation and benchmark routes)."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery
from fastapi import Depends, Query, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.orm import Session

from backend.api.errors import ApiError, check_range, not_found
from backend.core.config import Settings
from backend.crud import checkpoints as ckpt_crud
from backend.db.models import ApiKey
from backend.generation import resolve_checkpoint
from backend.run_refs import redact_paths
from backend.security import authenticate, has_scope
from backend.storage import ArtifactStore

T = TypeVar("T")
ID_PATTERN = r"^[a-z]{2,6}_[0-9a-f]{16}$"
_ID_RE = re.compile(ID_PATTERN)
# bounds of integer query parameters: a value past what the database column holds (INTEGER or BIGINT) is a 422
# naming the parameter, never an overflow inside the query
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
MAX_OFFSET = 10**9


# The trivial dependencies are async: FastAPI runs a plain ``def`` dependency on a threadpool thread, a hop per
# request that reading an attribute does not need.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> AsyncIterator[Session]:
    """A session per request. Routes commit explicitly; routes that write call ``begin_write(db)`` first.

    A sync route's session is closed on the route's own thread as it returns (``SessionReleasingRoute``); this close
    is for the rest (an error raised before the route ran, async routes). Async on purpose: a sync teardown would
    wait for a threadpool thread while holding the session's connection (or SQLite's write lock), and under load
    every thread may be waiting for a connection that only such a close would free.
    """
    db = request.app.state.sessionmaker()
    try:
        yield db
    finally:
        db.close()


def release_sessions(endpoint: Callable[..., T]) -> Callable[..., T]:
    """``endpoint``, a sync route function, closing the sessions it was given as it returns or raises.

    A route that only reads leaves its read transaction open, and with it a pooled connection (on SQLite a read
    snapshot). FastAPI validates a sync route's ``response_model`` on another threadpool thread, so without this the
    request would wait for a free thread while holding that connection; under load every thread can be waiting for
    a connection that only such a waiting request would give back, until the pool times out. Closing keeps the rows
    the route loaded readable (detached, ``expire_on_commit=False``); routes commit what they write themselves.
    """

    @functools.wraps(endpoint)
    def run(*args: Any, **kwargs: Any) -> T:
        try:
            return endpoint(*args, **kwargs)
        finally:
            for value in kwargs.values():
                if isinstance(value, Session):
                    value.close()

    run.releases_sessions = True  # type: ignore[attr-defined]  # a route built again from it wraps it once only
    return run


class SessionReleasingRoute(APIRoute):
    """The route class of every API router: a sync endpoint closes its session before it returns (``release_sessions``),
    so no request holds a database connection while it waits for a threadpool thread."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint) and not getattr(endpoint, "releases_sessions", False):
            endpoint = release_sessions(endpoint)
        super().__init__(path, endpoint, **kwargs)


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


def authorize(request: Request, db: Session, scopes: tuple[str, ...]) -> ApiKey:
    """The caller's API key if it has any of ``scopes`` (admin has all); 401/403 naming what is wrong.

    Leaves the read transaction open: the caller goes on in it, or commits."""
    wanted = " or ".join(repr(s) for s in scopes)
    token = _token(request)
    if not token:
        raise ApiError(
            401,
            "missing_api_key",
            f"an API key with scope {wanted} is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            field="authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = authenticate(db, token, pepper=request.app.state.settings.api_key_pepper)
    if key is None:
        raise ApiError(
            401,
            "invalid_api_key",
            "the API key is unknown or revoked",
            field="authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not any(has_scope(key.scopes, s) for s in scopes):
        raise ApiError(
            403,
            "insufficient_scope",
            f"this endpoint needs scope {wanted}; the key has {list(key.scopes)}",
            field="scope",
        )
    request.state.admin = has_scope(key.scopes, "admin")  # errors keep server paths for admins only
    return key


def redacted(key: ApiKey, text: str | None) -> str | None:
    """``text`` as ``key`` may see it: server paths replaced by ``<path>`` unless the key is an admin's."""
    return text if has_scope(key.scopes, "admin") else redact_paths(text)


def shown(schema: type[BaseModel], row: Any, key: ApiKey) -> dict[str, Any]:
    """``row`` as ``schema`` shows it, its ``error`` without server paths unless the key is an admin's."""
    out = schema.model_validate(row).model_dump()
    out["error"] = redacted(key, out["error"])
    return out


def require_scope(*scopes: str) -> Callable[..., ApiKey]:
    """A dependency that returns the caller's API key if it has any of ``scopes`` (see ``authorize``)."""

    def dependency(request: Request, db: Session = Depends(get_db)) -> ApiKey:
        key = authorize(request, db, scopes)
        db.commit()  # end the read; the route starts its own transactions
        return key

    dependency.scopes = scopes  # read by ``route_scopes``
    return dependency


def check_key(request: Request, scopes: tuple[str, ...]) -> None:
    """``authorize`` in a session of its own (for code that runs outside a route's dependencies); raises 401/403."""
    db: Session = request.app.state.sessionmaker()
    try:
        authorize(request, db, scopes)
    finally:
        db.close()


def route_scopes(request: Request) -> tuple[str, ...] | None:
    """The scopes the matched route's ``require_scope`` dependency asks for (None: the route checks no key)."""
    pending = [getattr(request.scope.get("route"), "dependant", None)]
    while pending:
        dep = pending.pop()
        if dep is None:
            continue
        scopes = getattr(dep.call, "scopes", None)
        if scopes:
            return scopes
        pending.extend(dep.dependencies)
    return None


def check_id(value: str, field: str) -> str:
    """Ids are generated by the server (``run_0123456789abcdef``); anything else is rejected before any lookup."""
    if not _ID_RE.fullmatch(value or ""):
        raise ApiError(
            422,
            "invalid_id",
            f"{field}: must look like 'run_0123456789abcdef' ({ID_PATTERN}); got {value[:60]!r}",
            field=field,
        )
    return value


def get_row(db: Session, model: type[T], row_id: str, kind: str, field: str) -> T:
    """The ``model`` row with id ``row_id`` (checked first); a 404 naming ``field`` when there is none."""
    check_id(row_id, field)
    row = db.get(model, row_id)
    if row is None:
        raise not_found(kind, row_id, field)
    return row


def allowed_roots(settings: Settings) -> list[Path] | None:
    """The directories admins may register server paths from (``checkpoint_roots``); None: anywhere."""
    return [Path(r).expanduser().resolve() for r in settings.checkpoint_roots] or None


def registration_error(exc: ckpt_crud.CheckpointError, code: str) -> ApiError:
    """A refused registration of a server directory as the API answers it; ``code`` for a directory that is unfit."""
    return ApiError(exc.status, {403: "forbidden", 409: "conflict"}.get(exc.status, code), str(exc), field=exc.field)


def check_checkpoint_ref(ref: str) -> None:
    """A checkpoint a request names is an id or a name, never a path; 422 naming ``checkpoint`` otherwise."""
    if not ckpt_crud.NAME_RE.fullmatch(ref):
        raise ApiError(
            422,
            "invalid_id",
            f"checkpoint: must be a checkpoint id or name without '/' (got {ref[:60]!r})",
            field="checkpoint",
        )


def checkpoint_exists(db: Session, ref: str) -> bool:
    check_checkpoint_ref(ref)
    return ckpt_crud.get_checkpoint(db, ref) is not None or ref in {e["name"] for e in ckpt_crud.zoo_entries()}


def checkpoint_path(db: Session, store: ArtifactStore, ref: str) -> Path:
    """The directory of checkpoint ``ref`` (a registered id or name, or a zoo entry); 422 naming it if unknown."""
    check_checkpoint_ref(ref)
    try:
        return resolve_checkpoint(ref, store, db=db)
    except ckpt_crud.CheckpointError:
        raise
    except ValueError:  # unknown name
        raise ApiError(
            422,
            "unknown_checkpoint",
            f"checkpoint: no checkpoint or zoo entry named {ref!r} (see GET /v1/checkpoints)",
            field="checkpoint",
        ) from None


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int


def pagination(default_limit: int = 50) -> Callable:
    """The ``limit`` / ``offset`` query parameters of a list route, ``limit`` bounded by the server's page size."""

    async def page(
        limit: int = Query(default_limit, ge=1),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
        settings: Settings = Depends(get_settings_dep),
    ) -> Page:
        check_range("limit", limit, 1, settings.limits.max_page_size)
        return Page(limit, offset)

    return page
