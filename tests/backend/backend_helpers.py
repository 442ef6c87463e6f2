"""Helpers for the backend tests (imported by conftest and the test modules)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from backend.core.config import Settings
from tests.conftest import REPO


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def queue_depth(settings: Settings, queue: str) -> int:
    """Ready messages in a broker queue (both the embedded broker and Redis)."""
    from backend.worker.celery_app import make_celery

    with make_celery(settings).connection_for_write() as conn:
        return conn.default_channel.queue_declare(queue=settings.queue_prefix + queue).message_count


# --- worker processes -----------------------------------------------------------------------------------------


class WorkerProc:
    def __init__(
        self,
        settings: Settings,
        queues: str,
        log_path: Path,
        env_extra: dict[str, str] | None = None,
        pool: str = "prefork",
        concurrency: int = 1,
    ):
        env = {**os.environ, **settings.as_env(), "PYTHONPATH": str(REPO), **(env_extra or {})}
        self.log_path = log_path
        self.log = open(log_path, "ab")  # noqa: SIM115 - the server's log for its lifetime, closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "backend.worker",
                "--queues",
                queues,
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
            ],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        return children_of(self.pid)

    def sigkill(self) -> None:
        """SIGKILL the worker's main process only (its pool processes must die with it)."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.log.close()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def children_of(pid: int) -> list[int]:
    """Live child processes of ``pid``, forked from any of its threads (/proc/<pid>/task/<tid>/children is per
    thread, so this scans parent pids instead)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                out.append(int(d.name))
    return sorted(out)


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.25,
    on_timeout: Callable[[], str] | None = None,
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    extra = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{extra}")
