"""JSON errors for the API: every error body is

    {"error": {"code": "limit_exceeded", "message": "num_frames: must be <= 121 (got 100000)",
               "field": "num_frames", "limit": 121}}

``code`` is stable and machine-readable; ``message`` names the field and the limit; ``field``/``limit`` are
present where they apply. Validation errors from pydantic, HTTP errors from routing and unexpected exceptions
all come out in this shape (the last as a 500 without internals): ``backend.api.handlers`` installs the
handlers. This module is the bottom of the API package: the error type and the range checks every route shares.
"""

from __future__ import annotations

import math
from typing import Any


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        limit: Any = None,
        headers: dict[str, str] | None = None,
    ):
        self.status, self.code, self.message, self.field, self.limit = status, code, message, field, limit
        self.headers = headers
        super().__init__(message)


def error_body(
    code: str, message: str, field: str | None = None, limit: Any = None, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
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


def check_finite(value: Any, path: str, depth: int = 0) -> None:
    """JSON allows NaN/Infinity literals; a config must not (and PostgreSQL's JSONB rejects them)."""
    if depth > 20:
        raise ApiError(422, "invalid_config", f"{path}: nested more than 20 levels deep", field=path, limit=20)
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(422, "invalid_config", f"{path}: must be a finite number (got {value})", field=path)
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{path}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_finite(v, f"{path}[{i}]", depth + 1)
