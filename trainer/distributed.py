"""Data-parallel training on the local CPU cores without torchrun: N processes, one torch thread each, DDP over gloo.

    from trainer.distributed import launch_local
    result = launch_local(train_run, cfg, "runs/teacher/sft", nprocs=2)     # rank 0's return value

Why: the tiny models are too small for intra-op threading to pay off. On a 2-core machine one process with two
torch threads runs an SFT step little faster than with one thread, while two one-thread processes that each take
half the batch (DDP) run it nearly twice as fast. ``train_run`` reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as
under torchrun, so this is the same code path as ``torchrun --nproc-per-node N``: ``cfg.batch_size`` is the global
batch (``batch_size / N`` per rank), checkpoints hold every rank's RNG, and resuming with the same ``nprocs`` is exact.

Every child gets SIGTERM when the launching process dies, however it dies, so no orphaned rank keeps writing to a
run directory that a restarted launch is about to resume.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import socket
import traceback
from collections.abc import Callable
from typing import Any

from trainer.parent_death import die_with_parent


def local_procs(cap: int = 4) -> int:
    """One process per CPU core, at most ``cap``: the default width of local data-parallel and parallel stages."""
    return max(1, min(cap, os.cpu_count() or 1))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child(rank: int, nprocs: int, port: int, threads: int, fn, args, kwargs, results, parent_pid: int) -> None:
    die_with_parent(parent_pid, signal.SIGTERM)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nprocs),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS=str(threads),
    )
    import torch
    import torch.distributed as tdist

    torch.set_num_threads(threads)
    try:
        out = fn(*args, **kwargs)
        results.put((rank, "ok", out if rank == 0 else None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which re-raises it
        results.put((rank, "error", _portable(exc)))
        raise SystemExit(1) from None
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling (so callers can catch e.g. ValueError), else a RuntimeError."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - e.g. an exception class whose __init__ takes other arguments than its args
        return RuntimeError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")


def launch_local(fn: Callable[..., Any], *args, nprocs: int = 2, threads_per_proc: int = 1, **kwargs) -> Any:
    """Run ``fn(*args, **kwargs)`` in ``nprocs`` ranks; return rank 0's result, or raise the first rank's error.

    ``fn`` and its arguments must be picklable (processes are spawned). ``nprocs=1`` calls ``fn`` in this process.
    """
    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1 (got {nprocs})")
    if nprocs == 1:
        return fn(*args, **kwargs)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(
            target=_child,
            args=(r, nprocs, port, threads_per_proc, fn, args, kwargs, results, os.getpid()),
            name=f"rank-{r}",
        )
        for r in range(nprocs)
    ]
    for p in procs:
        p.start()
    outcome: dict[int, tuple[str, Any]] = {}
    try:
        while len(outcome) < nprocs:
            try:
                rank, status, value = results.get(timeout=1.0)
                outcome[rank] = (status, value)
                if status == "error":
                    break  # the other ranks would wait for it in their next collective: stop them
            except queue.Empty:  # check that no rank died without reporting (e.g. killed)
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    outcome.setdefault(
                        procs.index(dead[0]),
                        (
                            "error",
                            RuntimeError(
                                f"rank {procs.index(dead[0])} of {nprocs} exited with code {dead[0].exitcode}"
                            ),
                        ),
                    )
                    break
    finally:
        for p in procs:
            if p.is_alive() and any(s == "error" for s, _ in outcome.values()):
                p.terminate()
        for p in procs:
            p.join()
    errors = [v for _r, (s, v) in sorted(outcome.items()) if s == "error"]
    if errors:
        raise errors[0]
    return outcome[0][1]
