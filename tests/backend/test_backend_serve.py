"""`run_serve`: one command, embedded defaults, API + local workers (restarted when they die), clean shutdown.

python -m pytest tests/backend/test_backend_serve.py -q
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.backend.backend_helpers import children_of, wait_for
from tests.conftest import REPO, pid_alive

pytestmark = pytest.mark.slow  # real worker and server processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_api_and_local_workers_with_nothing_configured(tmp_path, tiny_pipeline_dir):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIONLAB_")}
    env["PYTHONPATH"] = str(REPO)
    log = tmp_path / "serve.log"
    # run from an empty directory: the default storage root is ./storage
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from backend.server import run_serve; run_serve('127.0.0.1', {port})"],
        cwd=workdir,
        env=env,
        stdout=open(log, "wb"),  # noqa: SIM115 - the child process holds it; closed when it exits
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(base + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 120, "serve to be ready", on_timeout=log.read_text)
        assert (workdir / "storage" / "motionlab.db").is_file() and (workdir / "storage" / "broker.sqlite").is_file()
        key = re.search(r"^\s+(ml_\S+)\s*$", log.read_text(), re.MULTILINE).group(1)
        h = {"Authorization": f"Bearer {key}"}
        workers = wait_for(
            lambda: len(children_of(proc.pid)) >= 2 and children_of(proc.pid),
            60,
            "two local workers",
            on_timeout=log.read_text,
        )
        r = httpx.post(
            base + "/v1/checkpoints", json={"name": "tiny", "path": str(tiny_pipeline_dir)}, headers=h, timeout=60
        )
        assert r.status_code == 201, r.text
        # a local worker dies: serve starts another; a generation still goes through
        infer = [p for p in workers if "infer" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(infer) == 1
        os.kill(infer[0], signal.SIGKILL)
        wait_for(
            lambda: any(p not in workers for p in children_of(proc.pid)),
            60,
            "the worker to be restarted",
            on_timeout=log.read_text,
        )
        r = httpx.post(
            base + "/v1/generations",
            json={
                "checkpoint": "tiny",
                "prompt": "a ball",
                "num_frames": 5,
                "height": 32,
                "width": 32,
                "timeout_s": 240,
            },
            headers=h,
            timeout=300,
        )
        assert r.status_code == 201, (r.text, log.read_text()[-3000:])
        video = httpx.get(base + r.json()["video"]["url"], headers=h, timeout=60)
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
        # the web UI is mounted at /ui when the webui package provides its hook
        import webui

        if hasattr(webui, "mount"):
            ui = httpx.get(base + "/ui/", timeout=60, follow_redirects=True)
            assert ui.status_code == 200 and "text/html" in ui.headers["content-type"]
        assert len(re.findall(r"created an admin API key", log.read_text())) == 1
        all_workers = children_of(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, log.read_text()[-3000:]
    time.sleep(0.5)
    assert not any(pid_alive(p) for p in all_workers), "serve left worker processes behind"
