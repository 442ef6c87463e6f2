"""The FastAPI application: ``create_app()`` builds it (migrations run first, ``upgrade head``).

    uvicorn --factory backend.api.main:create_app          # or `motionlab api` / `motionlab serve`
    app = create_app(Settings(storage_root=tmp))           # tests

Everything lives under ``/v1`` (OpenAPI at ``/docs`` and ``/openapi.json``) except ``/healthz`` and ``/readyz``.
Every /v1 endpoint needs an API key with the right scope (``backend.security``). Errors are JSON
(``backend.api.errors``, handled by ``backend.api.handlers``). Request bodies are capped at
``limits.max_request_bytes``; query strings with NUL characters, Gradio uploads and requests past ``rate_limits``
are refused in front of the routes (``backend.api.guards``).

Every response carries ``SECURITY_HEADERS`` (no framing by other sites, no MIME sniffing, no Referer) unless it sets
its own; annotator tokens in paths (``/a/<token>/...``) are redacted from the access log (``RedactAnnotatorTokens``).

Hooks for other packages: ``backend.api.routes.studies`` (``router`` under /v1, optional ``annotator_router``
at the root for the per-annotator token pages) is included when it exists; ``webui.mount(app)`` mounts the web
UI when ``mount_ui=True`` (``motionlab serve``).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.api.errors import error_body
from backend.api.guards import NulQueryMiddleware, RateLimitMiddleware, RefuseUploadsMiddleware
from backend.api.handlers import install_error_handlers
from backend.api.routes import benchmarks, checkpoints, datasets, generations, health, keys, runs
from backend.api.schemas import ErrorBody
from backend.core.config import Settings, get_settings
from backend.db.migrate import upgrade_to_head
from backend.db.session import get_engine, get_sessionmaker
from backend.storage import ArtifactStore, private_dir
from backend.worker.celery_app import make_celery

log = logging.getLogger("motionlab.api")
API_VERSION = "v1"


class BodyLimitMiddleware:
    """413 for bodies over the limit: by Content-Length up front, and by counting for chunked uploads.

    The web UI (``/ui``, Gradio) is exempt: it has its own upload limits and takes video files.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, exempt_prefixes: tuple[str, ...] = ("/ui",)):
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt_prefixes

    async def _reject(self, send: Send, size: str) -> None:
        body = json.dumps(
            error_body(
                "payload_too_large",
                f"body: must be at most {self.max_bytes} bytes (got {size})",
                field="body",
                limit=self.max_bytes,
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or any(path == p or path.startswith(p + "/") for p in self.exempt):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    n = -1
                if n > self.max_bytes or n < 0:
                    await self._reject(send, str(n) if n >= 0 else "an invalid Content-Length")
                    return
        received = 0
        too_big = False
        replied = False

        async def limited_receive() -> Message:
            nonlocal received, too_big
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_big = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            # once the body overflowed, whatever the app answers (FastAPI turns the read error into a 400) is
            # replaced by the 413
            nonlocal replied
            if too_big:
                if not replied:
                    replied = True
                    await self._reject(send, f"more than {self.max_bytes}")
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if too_big and not replied:
            await self._reject(send, f"more than {self.max_bytes}")


class _BodyTooLarge(Exception):
    pass


# frame-ancestors 'self' (not 'none'): the web UI may frame its own pages; no script-src, Gradio needs its own
SECURITY_HEADERS = (
    (b"content-security-policy", b"frame-ancestors 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


class SecurityHeadersMiddleware:
    """Adds ``SECURITY_HEADERS`` to every HTTP response that does not set the header itself (the annotator pages
    send a stricter policy of their own)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                have = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class RedactAnnotatorTokens(logging.Filter):
    """An annotator's token is its credential and sits in its links' path: uvicorn's access log lines show
    ``/a/<redacted>/api/next`` instead (the path is the third argument of uvicorn's access record)."""

    TOKEN_PATH = re.compile(r"/a/[^/?#\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "/a/" in args[2]:
            record.args = (*args[:2], self.TOKEN_PATH.sub("/a/<redacted>", args[2]), *args[3:])
        elif isinstance(record.msg, str) and "/a/" in record.msg and not args:
            record.msg = self.TOKEN_PATH.sub("/a/<redacted>", record.msg)
        return True


def install_log_redaction() -> None:
    """Put ``RedactAnnotatorTokens`` on uvicorn's access logger (once). A logger's filters outlive uvicorn's logging
    setup (``dictConfig`` replaces handlers, not filters), so this holds whether it runs before or after it."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactAnnotatorTokens) for f in access.filters):
        access.addFilter(RedactAnnotatorTokens())


def _optional_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            return None  # the module itself is absent (not one of its imports)
        raise


def mount_web_ui(app: FastAPI) -> bool:
    """Mount the web UI through ``webui.mount(app)`` when that hook exists."""
    webui = _optional_module("webui")
    hook = getattr(webui, "mount", None) if webui is not None else None
    if hook is None:
        mod = _optional_module("webui.mount")
        hook = getattr(mod, "mount", None) if mod is not None else None
    if callable(hook):
        hook(app)
        return True
    log.info("web UI not mounted: no webui.mount(app) hook")
    return False


def install_openapi(app: FastAPI) -> None:
    """The OpenAPI document as the API answers: a 422 carries ``ErrorBody`` (FastAPI would document its own
    ``HTTPValidationError``, which ``install_error_handlers`` replaces)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in (
                ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}").pop("$defs", {}).items()
            ):
                components[name] = schema
            components["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
            components["ErrorBody"].pop("$defs", None)
            for ops in doc.get("paths", {}).values():
                for op in ops.values():
                    if isinstance(op, dict) and "422" in op.get("responses", {}):
                        op["responses"]["422"] = {
                            "description": "Validation error (names the field and limit)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                        }
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi


def create_app(settings: Settings | None = None, *, migrate: bool = True, mount_ui: bool = False) -> FastAPI:
    settings = settings or get_settings()
    private_dir(settings.storage_root)
    install_log_redaction()
    if migrate:
        upgrade_to_head(settings)
    store = ArtifactStore(settings.storage_root)
    store.cleanup_temp()

    app = FastAPI(
        title="MotionLab API",
        version="1.0",
        summary="Motion-centric post-training, evaluation and serving of few-step video diffusion models",
        description="Runs, checkpoints, generations, benchmarks and studies. Authenticate with "
        "`Authorization: Bearer <API key>` (scopes: read, generate, train, admin).",
        openapi_tags=[
            {"name": t} for t in ("runs", "checkpoints", "datasets", "generations", "benchmarks", "keys", "health")
        ],
    )
    app.state.settings = settings
    app.state.engine = get_engine(settings)
    app.state.sessionmaker = get_sessionmaker(settings)
    app.state.store = store
    app.state.celery = make_celery(settings)
    # threads that run sync generations in this process (settings.sync_generation == "api"); they meet in the
    # serving batcher, so this bounds how many concurrent requests can share a batch
    app.state.generation_pool = ThreadPoolExecutor(settings.sync_generation_threads, thread_name_prefix="generate")
    install_error_handlers(app)
    install_openapi(app)

    v1 = APIRouter(prefix=f"/{API_VERSION}")
    for module in (runs, checkpoints, datasets, generations, benchmarks, keys):
        v1.include_router(module.router)
    studies = _optional_module("backend.api.routes.studies")
    if studies is not None and hasattr(studies, "router"):
        v1.include_router(studies.router)
    app.include_router(v1)
    if studies is not None and hasattr(studies, "annotator_router"):
        app.include_router(studies.annotator_router)
    app.include_router(health.router)
    if mount_ui:
        mount_web_ui(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_request_bytes)
    app.add_middleware(RefuseUploadsMiddleware)
    app.add_middleware(NulQueryMiddleware)
    app.add_middleware(RateLimitMiddleware, rates=settings.rate_limits)
    app.add_middleware(SecurityHeadersMiddleware)
    return app
