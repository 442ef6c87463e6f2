"""Warm shutdown that reaches a training: SIGTERM to a worker (``kill``, systemd, ``docker stop``, or ``motionlab
serve`` stopping its local workers) makes a running training save a checkpoint at its next step and hand its run
back to the queue, so the next worker to start resumes it.

Celery's warm shutdown waits for running tasks, and a training can run for days: the worker's main process forwards
the signal to its pool processes that run a task (``forward_to_pool``); a pool process that trains has its own handler
for the duration (``training``), which sets ``STOP`` (read by the run's ``should_stop``); any other busy pool process
ends through billiard's own handler, and its message goes back to the queue. An idle pool process is left to the
pool's own shutdown.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STOP = threading.Event()  # set in a pool process when its worker shuts down while it trains


def _on_sigterm(_signum: int, _frame: object) -> None:
    STOP.set()


@contextmanager
def training() -> Iterator[None]:
    """While a training runs in this process's main thread, SIGTERM sets ``STOP`` instead of ending the process
    (the handler billiard installs in a pool process is put back afterwards)."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (a threads pool): the signal reaches the worker's main process only
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc; empty where there is none)."""
    out = []
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return out
    for d in entries:
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                out.append(int(d.name))
    return out


def forward_to_pool() -> None:
    """In the worker's main process when it starts shutting down: SIGTERM to each pool process that runs a task.

    Not to an idle one: billiard replaces a pool process that dies while the pool still runs, so the signal would start
    a new process in the middle of the shutdown, and the pool's join could then wait forever on its result queue's lock
    (the worker stopped only when SIGKILLed, after ``serve_stop_timeout_s``)."""
    from celery.worker import state

    busy = {r.worker_pid for r in list(state.active_requests) if r.worker_pid}
    for pid in children(os.getpid()):
        if pid not in busy:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
