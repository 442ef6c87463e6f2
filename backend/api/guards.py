"""ASGI guards in front of every route: NUL characters in query strings, the web UI's upload endpoint, and request
rates.

- ``NulQueryMiddleware``: a query parameter holding a NUL character (``?status=%00``) is a 422 naming it; it never
  reaches the database (PostgreSQL rejects NUL in text).
- ``RefuseUploadsMiddleware``: the web UI has no file inputs, so Gradio's upload endpoints answer 403 instead of
  storing whatever anyone sends.
- ``RateLimitMiddleware``: per API key on /v1 (per client address without a key), per invitation token and per
  client address on the annotator pages; 429 with Retry-After past ``settings.rate_limits`` (``limits`` library).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from urllib.parse import parse_qsl

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.api.errors import error_body
from backend.core.config import RateLimits

UI_PREFIX = "/ui"
UPLOAD_PATHS = ("/gradio_api/upload", "/gradio_api/upload_progress")


async def _reply(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


class NulQueryMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        qs = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if qs and (b"%00" in qs or b"\x00" in qs) and not _under(scope.get("path", ""), UI_PREFIX):
            for name, value in parse_qsl(qs.decode("utf-8", "replace"), keep_blank_values=True):
                if "\x00" in name or "\x00" in value:
                    field = name.replace("\x00", "\\x00")[:60]
                    await _reply(
                        send,
                        422,
                        error_body(
                            "validation_error", f"{field}: must not contain NUL characters (\\x00)", field=field
                        ),
                    )
                    return
        await self.app(scope, receive, send)


class RefuseUploadsMiddleware:
    def __init__(self, app: ASGIApp, prefix: str = UI_PREFIX):
        self.app, self.paths = app, tuple(prefix + p for p in UPLOAD_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").rstrip("/") in self.paths:
            await _reply(send, 403, error_body("uploads_disabled", "the web UI takes no file uploads"))
            return
        await self.app(scope, receive, send)


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, rates: RateLimits):
        self.app = app
        storage = storage_from_string(rates.storage_uri)
        self.inline = isinstance(storage, MemoryStorage)  # in-memory counts are cheap enough for the event loop
        self.limiter = MovingWindowRateLimiter(storage)
        self.rates = {
            name: parse_many(getattr(rates, name)) if getattr(rates, name) else []
            for name in ("api_per_key", "annotator_per_token", "annotator_per_ip")
        }

    def _checks(self, scope: Scope) -> list[tuple[str, str, str]]:
        """(setting, what, counter key) for each rate this request counts against."""
        path = scope.get("path", "")
        ip = (scope.get("client") or ("unknown",))[0]
        if _under(path, "/v1"):
            token = None
            for name, value in scope.get("headers", ()):
                if name in (b"authorization", b"x-api-key"):
                    token = value.split(b" ", 1)[-1].strip() if name == b"authorization" else value.strip()
                    break
            ident = "key:" + hashlib.sha256(token).hexdigest()[:32] if token else f"ip:{ip}"
            return [("api_per_key", "api key" if token else "client address", ident)]
        if path.startswith(("/a/", "/study-assets/", "/study-results/")):
            out = [("annotator_per_ip", "client address", f"ip:{ip}")]
            parts = path.split("/")
            if path.startswith("/a/") and len(parts) > 2 and parts[2]:
                token = hashlib.sha256(parts[2].encode()).hexdigest()[:32]
                out.insert(0, ("annotator_per_token", "invitation link", f"ann:{token}"))
            return out
        return []

    def _hit(self, item: RateLimitItem, key: str) -> float | None:
        """None when within the rate, else the seconds until a request is allowed again."""
        if self.limiter.hit(item, key):
            return None
        reset = self.limiter.get_window_stats(item, key).reset_time
        return max(1.0, reset - time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for setting, what, key in self._checks(scope):
                for item in self.rates[setting]:
                    wait = (
                        self._hit(item, f"{setting}:{key}")
                        if self.inline
                        else await run_in_threadpool(self._hit, item, f"{setting}:{key}")
                    )
                    if wait is not None:
                        retry, limit = str(math.ceil(wait)), str(item)
                        body = error_body(
                            "rate_limited",
                            f"{what}: at most {limit} requests (rate_limits.{setting}); retry after {retry} s",
                            field=f"rate_limits.{setting}",
                            limit=limit,
                        )
                        await _reply(send, 429, body, [(b"retry-after", retry.encode())])
                        return
        await self.app(scope, receive, send)
