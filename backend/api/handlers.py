"""The API's exception handlers: every error comes out as the JSON body of ``backend.api.errors``.

    install_error_handlers(app)        # backend.api.main.create_app does this once

``ApiError`` carries its own code, field and limit; pydantic's validation errors name the first field and its
limit (``limit_exceeded``) with up to ten more in ``details``; routing errors get a stable code; anything else is a
500 without internals. Messages lose their server paths unless the caller's key is an admin's.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.api.deps import check_key, route_scopes
from backend.api.errors import ApiError, error_body
from backend.run_refs import redact_paths

log = logging.getLogger("motionlab.api")

_LIMIT_KEYS = {"le": "<=", "lt": "<", "ge": ">=", "gt": ">", "max_length": "at most", "min_length": "at least"}


def _describe(err: dict[str, Any]) -> tuple[str, str, Any]:
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
    field = ".".join(loc) or "body"
    ctx = err.get("ctx") or {}
    typ = err.get("type", "")
    got = err.get("input")
    got_s = "" if isinstance(got, (dict, list)) or got is None else f" (got {str(got)[:60]!r})"
    for key, word in _LIMIT_KEYS.items():
        if key in ctx:
            limit = ctx[key]
            if key in ("max_length", "min_length"):
                unit = "characters" if "string" in typ else "items"
                return field, f"{field}: must be {word} {limit} {unit}{got_s if 'string' not in typ else ''}", limit
            return field, f"{field}: must be {word} {limit}{got_s}", limit
    if typ == "missing":
        return field, f"{field}: required", None
    if typ == "extra_forbidden":
        return field, f"{field}: unknown field", None
    if typ == "json_invalid":
        return "body", f"body: invalid JSON ({ctx.get('error', 'parse error')})", None
    return field, f"{field}: {err.get('msg', 'invalid')}{got_s}", None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(req: Request, exc: ApiError) -> JSONResponse:
        # server paths (a checkpoint's directory, a failed job's traceback text) only to admin keys
        message = exc.message if getattr(req.state, "admin", False) else redact_paths(exc.message)
        return JSONResponse(
            error_body(exc.code, message, exc.field, exc.limit), status_code=exc.status, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            # FastAPI parses JSON before it runs any dependency: check the route's key now, so that a caller
            # without one learns nothing about the body either (a body that is JSON is checked after the key)
            scopes = route_scopes(req)
            if scopes:
                try:
                    await run_in_threadpool(check_key, req, scopes)
                except ApiError as denied:
                    return await _api_error(req, denied)
        described = [_describe(e) for e in errors]
        field, message, limit = described[0] if described else ("body", "invalid request", None)
        code = "limit_exceeded" if limit is not None else "validation_error"
        details = [{"field": f, "message": m} for f, m, _ in described[1:10]]
        return JSONResponse(error_body(code, message, field, limit, details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            404: "not_found",
            405: "method_not_allowed",
            401: "unauthorized",
            403: "forbidden",
            413: "payload_too_large",
        }
        msg = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and msg == "Not Found":
            msg = "no such endpoint (the API lives under /v1; see /docs)"
        return JSONResponse(
            error_body(codes.get(exc.status_code, "http_error"), msg),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("internal_error", f"internal error ({type(exc).__name__})"), status_code=500)
