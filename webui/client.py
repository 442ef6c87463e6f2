"""The web UI's way into the backend: the MotionLab HTTP API, called in-process with the person's API key.

Every action of the UI goes through the same ``/v1`` routes a remote client uses (``httpx.ASGITransport`` on the
FastAPI app the UI is mounted in: no network hop, no second port), so it gets exactly the API's validation,
limits, scopes and error messages. Nothing here writes to the database or the artifact store.

    api = ApiClient(app, key)
    items = await api.get("/v1/checkpoints")
    job = await api.post("/v1/generations", {"checkpoint": "tiny-dmd", "prompt": "a ball", "mode": "job"})
    data = await api.get_bytes(job["video"]["url"])

Errors come back as ``ApiError`` with the API's message (it names the field and the limit).
"""

from __future__ import annotations

from typing import Any

import httpx

INTERNAL_BASE_URL = "http://motionlab.internal"
DEFAULT_TIMEOUT_S = 120.0


class ApiError(Exception):
    """An error answer of the API (or no answer): ``message`` is meant for people."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, limit: Any = None):
        self.status, self.code, self.message, self.field, self.limit = status, code, message, field, limit
        super().__init__(message)


def _error_from(r: httpx.Response) -> ApiError:
    try:
        err = r.json().get("error") or {}
    except (ValueError, AttributeError):
        err = {}
    message = err.get("message") or f"the server answered {r.status_code} {r.reason_phrase}"
    return ApiError(r.status_code, err.get("code") or "http_error", message, err.get("field"), err.get("limit"))


class ApiClient:
    """Calls the API of ``app`` with ``key`` (``Authorization: Bearer``). Create one per UI action."""

    def __init__(self, app: Any, key: str | None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.app, self.key, self.timeout_s = app, (key or "").strip(), timeout_s

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    async def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None, raw: bool = False
    ) -> Any:
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        # raise_app_exceptions=False: an unhandled error comes back as the API's own JSON 500, not as a traceback
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False, client=("127.0.0.1", 0))
        params = {k: v for k, v in (params or {}).items() if v is not None} or None
        async with httpx.AsyncClient(transport=transport, base_url=INTERNAL_BASE_URL, timeout=self.timeout_s) as client:
            try:
                r = await client.request(method, path, json=json, params=params, headers=self._headers())
            except httpx.HTTPError as exc:
                raise ApiError(503, "unreachable", f"the API did not answer ({type(exc).__name__}: {exc})") from exc
        if r.status_code >= 400:
            raise _error_from(r)
        if raw:
            return r.content
        if not r.content:
            return None
        return r.json()

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.request("POST", path, json=body if body is not None else {})

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)

    async def get_bytes(self, path: str) -> bytes:
        return await self.request("GET", path, raw=True)

    # --- conveniences over the routes the UI uses ----------------------------------------------------------------

    async def checkpoints(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return (await self.get("/v1/checkpoints", run_id=run_id, limit=500))["items"]

    async def runs(self, limit: int = 100) -> list[dict[str, Any]]:
        return (await self.get("/v1/runs", limit=limit))["items"]

    async def benchmarks(
        self, status: str | None = None, limit: int = 100, source: str | None = None
    ) -> list[dict[str, Any]]:
        """``source="measured"`` leaves out imported tables (they have no videos or scores)."""
        items = (await self.get("/v1/benchmarks", status=status, limit=limit))["items"]
        return [b for b in items if source is None or b.get("source", "measured") == source]

    async def benchmark_options(self) -> dict[str, Any]:
        """Suites, metric backends (with availability) and limits a benchmark may use."""
        return await self.get("/v1/benchmarks/options")

    async def create_benchmark(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.post("/v1/benchmarks", body)

    async def benchmark(self, benchmark_id: str) -> dict[str, Any]:
        return await self.get(f"/v1/benchmarks/{benchmark_id}")

    async def benchmark_report(self, benchmark_id: str) -> dict[str, Any]:
        return await self.get(f"/v1/benchmarks/{benchmark_id}/report")


__all__ = ["INTERNAL_BASE_URL", "ApiClient", "ApiError"]
