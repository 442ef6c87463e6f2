"""What the load benchmarks (``bench/api_load.py``, ``bench/study_load.py``) share: the API server on loopback (a free
port, the uvicorn command line of the app, the wait until it answers, its stop) and latency percentiles. Imported by
those scripts, not run."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 120


def free_port() -> int:
    """A TCP port of the loopback interface that nothing listens on."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def uvicorn_command(port: int, *options: str) -> list[str]:
    """``python -m uvicorn`` serving ``backend.api.main:create_app`` on loopback ``port`` (warnings only), then
    ``options``."""
    app = ["--factory", "backend.api.main:create_app", "--host", LOOPBACK, "--port", str(port)]
    return [sys.executable, "-m", "uvicorn", *app, "--log-level", "warning", *options]


def wait_until_up(url: str, proc: subprocess.Popen, probe: str, log: str | None = None) -> None:
    """Poll ``url + probe`` until it answers 200; SystemExit when the server exits first (naming ``log``, where its
    output went) or does not answer within ``READY_TIMEOUT_S``."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + probe, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the API server exited with {proc.returncode}" + (f"; see {log}" if log else ""))
        time.sleep(0.3)
    raise SystemExit(f"the API server did not become ready in {READY_TIMEOUT_S} s")


def stop_server(proc: subprocess.Popen | None) -> None:
    """SIGTERM the server, SIGKILL it when it has not exited after 15 s."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def percentile(xs: list[float], q: float) -> float:
    """The ``q``-th percentile of ``xs`` (the nearest sample by rank, no interpolation); NaN for no samples."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))] if xs else float("nan")
