"""JSON errors for the API: every error body is

    {"error": {"code": "limit_exceeded", "message": "num_frames: must be <= 121 (got 100000)",
               "field": "num_frames", "limit": 121}}

``code`` is stable and machine-readable; ``message`` names the field and the limit; ``field``/``limit`` are
present where they apply. Validation errors from pydantic, HTTP errors from routing and unexpected exceptions
all come out in this shape (the last as a 500 without internals).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.run_refs import redact_paths

log = logging.getLogger("motionlab.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, field: str | None = None, limit: Any = None,
                 headers: dict[str, str] | None = None):
        self.status, self.code, self.message, self.field, self.limit = status, code, message, field, limit
        self.headers = headers
        super().__init__(message)


def error_body(code: str, message: str, field: str | None = None, limit: Any = None,
               details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    if limit is not None:
        err["limit"] = limit
    if details:
        err["details"] = details
    return {"error": err}


def not_found(kind: str, ref: str, field: str) -> ApiError:
    return ApiError(404, "not_found", f"{field}: no {kind} {ref[:100]!r}", field=field)


def check_range(field: str, value: float | None, lo: float | None, hi: float | None) -> None:
    """Raise a 422 naming the field and the limit when value is outside [lo, hi]."""
    if value is None:
        return
    if lo is not None and value < lo:
        raise ApiError(422, "limit_exceeded", f"{field}: must be >= {lo} (got {value})", field=field, limit=lo)
    if hi is not None and value > hi:
        raise ApiError(422, "limit_exceeded", f"{field}: must be <= {hi} (got {value})", field=field, limit=hi)


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
        return JSONResponse(error_body(exc.code, message, exc.field, exc.limit), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            # FastAPI parses JSON before it runs any dependency: check the route's key now, so that a caller
            # without one learns nothing about the body either (a body that is JSON is checked after the key)
            from starlette.concurrency import run_in_threadpool

            from backend.api.deps import check_key, route_scopes

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
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden",
                 413: "payload_too_large"}
        msg = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and msg == "Not Found":
            msg = "no such endpoint (the API lives under /v1; see /docs)"
        return JSONResponse(error_body(codes.get(exc.status_code, "http_error"), msg), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("internal_error", f"internal error ({type(exc).__name__})"), status_code=500)
