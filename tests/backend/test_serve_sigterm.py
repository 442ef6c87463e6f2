"""SIGTERM to ``motionlab serve`` (what ``kill``, systemd and ``docker stop`` send) stops it like Ctrl-C: its workers
stop within the bound, a running training saves a checkpoint and hands its run back, and the next start resumes it.

    python -m pytest tests/backend/test_serve_sigterm.py -q
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

from backend.core.config import Settings
from backend.db.models import Run
from backend.db.session import dispose_engines, session_scope
from tests.backend.backend_helpers import children_of, wait_for
from tests.conftest import REPO, pid_alive

STOP_BOUND_S = 45.0  # serve_stop_timeout_s (30) plus uvicorn's own graceful shutdown
RUN = {
    "method": "sft",
    "config": {
        "steps": 100_000,
        "batch_size": 2,
        "checkpoint_every": 100_000,
        "log_every": 1,
        "optim": {"warmup_steps": 0},
        "data": {"num_videos": 8},
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        out += kids
        todo += kids
    return out


class Serve:
    def __init__(self, root: Path, log: Path):
        self.port, self.log = _free_port(), log
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIONLAB_")}
        env.update(PYTHONPATH=str(REPO), MOTIONLAB_STORAGE_ROOT=str(root), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.base = f"http://127.0.0.1:{self.port}"
        code = f"from backend.server import run_serve; run_serve('127.0.0.1', {self.port})"
        with open(log, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code], cwd=root.parent, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def ready(self) -> bool:
        try:
            return httpx.get(self.base + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_sigterm_stops_serve_a_training_saves_a_checkpoint_and_resumes_on_the_next_start(tmp_path):
    from trainer.loop import latest_checkpoint

    root = tmp_path / "storage"
    log = tmp_path / "serve.log"
    serve = Serve(root, log)
    try:
        wait_for(serve.ready, 60, "serve to be ready", on_timeout=serve.tail)
        key = re.search(r"^\s+(ml_\S+)\s*$", log.read_text(), re.MULTILINE).group(1)
        h = {"Authorization": f"Bearer {key}"}
        r = httpx.post(serve.base + "/v1/runs", json=RUN, headers=h, timeout=60)
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]

        def step() -> int:
            got = httpx.get(f"{serve.base}/v1/runs/{run_id}", headers=h, timeout=10).json()
            assert got["status"] in ("queued", "running"), got
            return got["step"]

        wait_for(lambda: step() >= 3, 60, "the run to train a few steps", on_timeout=serve.tail)
        family = [serve.proc.pid, *_descendants(serve.proc.pid)]
        assert len(family) >= 4, family  # serve, its three workers and their pool processes
        t0 = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        serve.proc.wait(STOP_BOUND_S + 15)
        took = time.monotonic() - t0
    finally:
        serve.kill()
    assert serve.proc.returncode == 0, serve.tail()
    assert took < STOP_BOUND_S, f"serve took {took:.1f} s to stop"
    time.sleep(0.5)
    assert not [p for p in family if pid_alive(p)], "serve left worker processes behind"

    settings = Settings(storage_root=root)
    with session_scope(settings, write=False) as db:
        run = db.get(Run, run_id)
        status, worker, stopped_at, attempts = run.status, run.worker_id, run.step, run.attempts
        notes = [m.message for m in run_logs(db, run_id)]
    dispose_engines()
    assert status == "queued" and worker is None and attempts == 0, (status, worker, attempts)
    saved = latest_checkpoint(root / "runs" / run_id)
    # saved at the step it stopped at (checkpoint_every is far away)
    assert saved is not None and saved.name.endswith(f"{stopped_at:08d}"), (saved, stopped_at)
    assert any(f"worker shut down at step {stopped_at} after saving" in n for n in notes), notes[-5:]

    again = Serve(root, log)
    try:
        wait_for(again.ready, 60, "serve to start again", on_timeout=again.tail)

        def resumed() -> bool:
            with session_scope(settings, write=False) as db:
                run = db.get(Run, run_id)
                lines = [m.message for m in run_logs(db, run_id)]
            return run.step > stopped_at and f"resumed from the checkpoint at step {stopped_at}" in lines

        wait_for(resumed, 60, "the run to resume from its checkpoint", on_timeout=again.tail)
        again.proc.send_signal(signal.SIGTERM)
        again.proc.wait(STOP_BOUND_S + 15)
    finally:
        again.kill()
        dispose_engines()
    assert again.proc.returncode == 0, again.tail()


def run_logs(db, run_id: str):
    from backend.crud.runs import logs

    return logs(db, run_id, limit=100_000)
