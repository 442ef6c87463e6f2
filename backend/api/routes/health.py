"""/healthz and /readyz (no key needed): both check the database and the broker.

``/healthz`` answers whether this process can reach them at all (liveness, cheap); ``/readyz`` also checks that
the schema is at the migration head and the storage root is writable (readiness to serve).

Anyone can call them, so they answer states only (``"ok"`` or ``"unavailable"`` per component); what went wrong
(exception text, hosts, paths) goes to this process's log.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

from backend.api.schemas import Health
from backend.db.migrate import current_revision, head_revision

router = APIRouter(tags=["health"])
log = logging.getLogger("motionlab.api.health")
OK, UNAVAILABLE = "ok", "unavailable"

_BROKER_CACHE_S = 2.0  # health probes can be frequent; a broker round trip every call is not needed


def _unavailable(component: str, reason: Any) -> str:
    log.warning("health check: %s unavailable: %s", component, reason)
    return UNAVAILABLE


def check_database(request: Request) -> str:
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return OK
    except Exception as exc:  # noqa: BLE001 - a health probe reports whatever failed, by name
        return _unavailable("database", f"{type(exc).__name__}: {exc}")


def check_broker(request: Request) -> str:
    state = request.app.state
    cached = getattr(state, "_broker_check", None)
    if cached and time.monotonic() - cached[0] < _BROKER_CACHE_S:
        return cached[1]
    try:
        with state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
            if state.settings.embedded_broker:
                ch = conn.default_channel
                ch._size("train")  # touch the SQLite file: the transport connects lazily
        result = OK
    except Exception as exc:  # noqa: BLE001 - a health probe reports whatever failed, by name
        result = _unavailable("broker", f"{type(exc).__name__}: {exc}")
    state._broker_check = (time.monotonic(), result)
    return result


def check_schema(request: Request) -> str:
    try:
        with request.app.state.engine.connect() as conn:
            cur = current_revision(conn)
        head = head_revision()
        return OK if cur == head else _unavailable("schema", f"at {cur}, the code expects {head}")
    except Exception as exc:  # noqa: BLE001 - a health probe reports whatever failed, by name
        return _unavailable("schema", f"{type(exc).__name__}: {exc}")


def check_storage(request: Request) -> str:
    root = request.app.state.store.root
    if root.is_dir() and os.access(root, os.W_OK):
        return OK
    return _unavailable("storage", f"{root} is not a writable directory")


def _answer(checks: dict[str, str]) -> JSONResponse:
    ok = all(v == OK for v in checks.values())
    body = Health(status=OK if ok else UNAVAILABLE, checks=checks).model_dump()
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/healthz", response_model=Health, summary="Liveness: database and broker reachable")
async def healthz(request: Request) -> JSONResponse:
    db, broker = await run_in_threadpool(check_database, request), await run_in_threadpool(check_broker, request)
    return _answer({"database": db, "broker": broker})


@router.get("/readyz", response_model=Health, summary="Readiness: database at schema head, broker, storage")
async def readyz(request: Request) -> JSONResponse:
    checks = {
        "database": await run_in_threadpool(check_database, request),
        "schema": await run_in_threadpool(check_schema, request),
        "broker": await run_in_threadpool(check_broker, request),
        "storage": check_storage(request),
    }
    return _answer(checks)
