"""Fixtures of the web UI tests: a zoo of random tiny checkpoints, the real server (``run_serve``: API + UI + local
workers, embedded SQLite and broker, a temp storage root) on a free loopback port, and headless Chromium.

Screenshots go to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    """tiny-teacher (multi-step, CFG), tiny-dmd and tiny-mogan (3-step students): random weights, real format."""
    from trainer.models.generator import Generator

    root = tmp_path_factory.mktemp("zoo")
    teacher = Generator.build_tiny(seed=0)
    teacher.save_pretrained(root / "tiny-teacher")
    student = Generator.build_tiny(seed=1)
    student.save_pretrained(root / "tiny-dmd", sampling=student.sampling.few_step())
    student.save_pretrained(root / "tiny-mogan", sampling=student.sampling.few_step([1000.0, 800.0, 500.0]))
    return root


class Server:
    def __init__(self, base: str, key: str, proc: subprocess.Popen, log: Path, storage: Path):
        self.base, self.key, self.proc, self.log, self.storage = base, key, proc, log, storage

    def api(self, method: str, path: str, key: str | None = None, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.request(method, self.base + path, headers=headers, timeout=120, **kw)

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def serve(tmp_path_factory, zoo: Path) -> Iterator[Server]:
    """``motionlab serve`` as a person runs it (embedded defaults), pointed at the checkpoints in ``zoo``."""
    tmp = tmp_path_factory.mktemp("serve")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIONLAB_")}
    env.update(
        PYTHONPATH=str(REPO),
        MOTIONLAB_STORAGE_ROOT=str(tmp / "storage"),
        MOTIONLAB_ZOO_DIR=str(zoo),
        MOTIONLAB_WEIGHTS_DIR=str(tmp / "weights"),
        GRADIO_TEMP_DIR=str(tmp / "gradio"),
        GRADIO_ANALYTICS_ENABLED="False",
    )
    log = tmp / "serve.log"
    code = f"from backend.server import run_serve; run_serve('127.0.0.1', {port})"
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)
        m = re.search(r"^\s+(ml_\S+)\s*$", log.read_text(), re.MULTILINE)
        assert m, log.read_text()
        yield Server(base, m.group(1), proc, log, tmp / "storage")
    finally:
        proc.send_signal(signal.SIGINT)  # run_serve stops its workers and uvicorn
        # the stop takes seconds (the workers' warm shutdown, then each interpreter's exit) and nothing waits for it:
        # it goes on while the next tests run; the session's end waits for every server (``_servers_stopped``)
        stopping = threading.Thread(target=_reap, args=(proc,), name=f"stop-serve-{port}", daemon=True)
        stopping.start()
        _STOPPING.append(stopping)


_STOPPING: list[threading.Thread] = []


def _reap(proc: subprocess.Popen) -> None:
    """Wait for a server sent SIGINT to exit; SIGKILL its session if it does not, and anything of it left over."""
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    try:  # anything of ours still in the session (a worker that ignored the stop)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="session", autouse=True)
def _servers_stopped() -> Iterator[None]:
    """At the end of the session: every server started by ``serve`` has stopped."""
    yield
    for t in _STOPPING:
        t.join(90)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_zoo) -> Iterator[Server]:
    """The server over the random tiny zoo."""
    with serve(tmp_path_factory, tiny_zoo) as srv:
        yield srv


@pytest.fixture(scope="session")
def shipped_server(tmp_path_factory) -> Iterator[Server]:
    """A server over the shipped zoo (``checkpoints/``, with its README), shared by the modules that read it: their
    tests generate videos on it, and none makes a benchmark, a run or a study (its benchmark list stays the import)."""
    with serve(tmp_path_factory, REPO / "checkpoints") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def new_page(browser) -> Iterator[object]:
    """A page of its own browser context (no cookies or storage shared with other tests), closed on exit."""
    ctx = browser.new_context(viewport={"width": 1360, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    try:
        yield pg
    finally:
        ctx.close()


@pytest.fixture
def page(browser, server):
    with new_page(browser) as pg:
        yield pg


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
