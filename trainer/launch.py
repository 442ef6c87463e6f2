"""Train one run on ``nproc`` local ranks the way ``torchrun --nproc-per-node N`` does: torch's elastic agent
(``elastic_launch`` + ``LaunchConfig``, c10d rendezvous on 127.0.0.1, no restarts) starts every rank as a fresh
interpreter, ``python -m trainer.launch --spec <launch dir>/launch.json``, which calls ``trainer.loop.train_run``.

    from trainer.launch import launch_train
    result = launch_train(to_dict(cfg), run_dir, 2, stop_file=run_dir / "STOP",
                          progress_file=run_dir / "progress.jsonl")      # rank 0's train_run result

Why a binary and not a function entrypoint: the agent starts a function through ``multiprocessing``, which refuses
to run in a Celery (billiard) prefork pool process ("daemonic processes are not allowed to have children"); a binary
is a plain ``subprocess.Popen`` of a fresh interpreter, which works there and in any other process.

Talking to the launching process, which cannot pass callbacks across processes:

- progress: rank 0 appends one JSON line per event to ``progress_file`` (``{"kind": "progress", ...}`` per step,
  ``{"kind": "log", ...}`` per ``trainer`` log record, ``{"kind": "result", ...}`` at the end), each line in one
  ``write`` on an ``O_APPEND`` descriptor, so a reader sees whole lines (it leaves an unterminated last line for
  its next read);
- stop: the launcher writes ``stop_file`` (its text is the reason); every rank's ``should_stop`` looks for it, and
  the loop makes the decision collective, so all ranks stop at the same step and save one checkpoint. The reason
  ``abort`` instead fails the ranks without a checkpoint (another process owns the run now);
- logs: each launch gets ``<run_dir>/logs/launch-<time>-*/`` (its ``launch.json`` and ``result.json``); each rank's
  stdout/stderr go to ``<rdzv id>_*/attempt_0/<rank>/`` under it (elastic's redirects), next to its ``error.json``;
- errors: an exception in a rank is recorded by elastic's ``record`` and raised here as ``RankFailed`` with the
  rank's own message (``ConfigError: config field ...``) and traceback.

A rank dies with the process that launched it (``PR_SET_PDEATHSIG``: SIGKILL on Linux), so a killed worker never
leaves ranks training on as orphans while its run is delivered to another worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ErrorHandler, record
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from trainer.parent_death import die_with_parent

STOP_ABORT = "abort"  # stop-file text: fail without saving a checkpoint
# signals the agent turns into a shutdown of the ranks; SIGTERM stays with the caller (a Celery worker's warm
# shutdown: the run saves a checkpoint through the stop file), SIGINT too (a terminal's Ctrl-C reaches the worker)
AGENT_SIGNALS = "SIGHUP,SIGQUIT"


class RankFailed(RuntimeError):
    """A rank ended with an error: ``message`` is the rank's own (``ConfigError: ...``), ``detail`` its traceback
    or the tail of its stderr log."""

    def __init__(
        self, message: str, *, rank: int | None, exitcode: int | None, detail: str = "", log_dir: str | None = None
    ):
        self.message, self.rank, self.exitcode, self.detail, self.log_dir = message, rank, exitcode, detail, log_dir
        super().__init__(message)


class StopAborted(RuntimeError):
    """Raised in a rank when the launcher asks it to stop without a checkpoint."""


# --- the launching side ------------------------------------------------------------------------------------------


def launch_train(
    config: dict[str, Any],
    run_dir: str | os.PathLike,
    nproc: int,
    *,
    stop_file: str | os.PathLike,
    progress_file: str | os.PathLike,
    rdzv_id: str = "motionlab",
    monitor_interval: float = 0.5,
    shutdown_timeout: int = 30,
) -> dict[str, Any]:
    """Run ``trainer.loop.train_run(config, run_dir)`` on ``nproc`` ranks; return rank 0's result dict.

    ``config`` is a full training config as a dict (``trainer.config.to_dict``). The caller owns ``stop_file``
    and ``progress_file``: a stop file left from an earlier launch stops the ranks at their first step, so remove
    it first. Raises ``RankFailed`` when a rank fails (the others are then stopped by the agent).
    """
    if not 1 <= int(nproc) <= 1024:
        raise ValueError(f"nproc: must be between 1 and 1024 (got {nproc})")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    launch_dir = Path(tempfile.mkdtemp(prefix=f"launch-{time.strftime('%Y%m%d-%H%M%S')}-", dir=run_dir / "logs"))
    spec = {
        "config": config,
        "run_dir": str(run_dir),
        "stop_file": str(Path(stop_file).resolve()),
        "progress_file": str(Path(progress_file).resolve()),
        "result_file": str(launch_dir / "result.json"),
    }
    spec_path = launch_dir / "launch.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    Path(spec["progress_file"]).touch()

    lc = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=int(nproc),
        run_id=rdzv_id,
        role="trainer",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        local_addr="127.0.0.1",
        max_restarts=0,
        monitor_interval=monitor_interval,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(launch_dir), redirects=Std.ALL),
        signals_to_handle=AGENT_SIGNALS,
        shutdown_timeout=shutdown_timeout,
    )
    with _kept_signal_handlers():
        try:
            elastic_launch(lc, sys.executable)(
                "-u", "-m", "trainer.launch", "--spec", str(spec_path), "--parent-pid", str(os.getpid())
            )
        except ChildFailedError as exc:
            raise _rank_failed(exc, launch_dir) from None
    result_file = Path(spec["result_file"])
    if not result_file.is_file():
        raise RankFailed(
            "rank 0 exited without reporting a result",
            rank=0,
            exitcode=0,
            detail=_tail(_rank_log(launch_dir, 0, "stderr.log")),
            log_dir=str(launch_dir),
        )
    return json.loads(result_file.read_text())


def rank_log_dirs(run_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """{launch directory name: [its rank log directories, by local rank]} of every launch of a run."""
    out: dict[str, list[Path]] = {}
    for launch in sorted((Path(run_dir) / "logs").glob("launch-*")):
        ranks = [p for p in launch.glob("*/attempt_*/*") if p.is_dir() and p.name.isdigit()]
        out[launch.name] = sorted(ranks, key=lambda p: int(p.name))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _kept_signal_handlers() -> Iterator[None]:
    """The agent installs handlers for ``AGENT_SIGNALS`` and never removes them: put the caller's back."""
    names = [s.strip() for s in AGENT_SIGNALS.split(",")]
    saved: dict[int, Any] = {}
    if _in_main_thread():
        for name in names:
            sig = getattr(signal, name, None)
            if sig is not None:
                saved[sig] = signal.getsignal(sig)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _rank_log(launch_dir: Path, rank: int, name: str) -> Path | None:
    found = sorted(launch_dir.glob(f"*/attempt_*/{rank}/{name}"))
    return found[-1] if found else None


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _rank_failed(exc: ChildFailedError, launch_dir: Path) -> RankFailed:
    """The root cause among the failed ranks: the one that recorded an exception first, else the first rank.

    Elastic's own timestamps are whole seconds: a rank whose peer failed (``Connection closed by peer``) often
    records its error in the same second as the peer's own, so the ranks' precise times decide."""

    def recorded(failure) -> dict[str, Any] | None:
        """The rank's recorded error ({"message": ..., "extraInfo": ...}); None when it wrote no error file."""
        data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
        message = data.get("message")
        if isinstance(message, dict):
            return message
        if isinstance(message, str) and os.path.isfile(failure.error_file):
            return {"message": message}
        return None

    def order(item) -> tuple:
        rank, failure = item
        rec = recorded(failure)
        if rec is None:
            return (1, float(failure.timestamp), rank)
        precise = (rec.get("extraInfo") or {}).get("time")
        return (0, float(precise if precise is not None else failure.timestamp), rank)

    rank, failure = min(exc.failures.items(), key=order)
    rec = recorded(failure) or {}
    message = str(rec.get("message") or "")
    detail = str((rec.get("extraInfo") or {}).get("py_callstack") or "")
    if not message:
        how = (
            f"signal {-failure.exitcode} ({failure.signal_name()})"
            if failure.exitcode < 0
            else f"exit code {failure.exitcode}"
        )
        message = f"rank {rank} ended with {how}"
    stderr = _tail(_rank_log(launch_dir, failure.local_rank, "stderr.log"))
    return RankFailed(message, rank=rank, exitcode=failure.exitcode, detail=detail or stderr, log_dir=str(launch_dir))


# --- the rank side -----------------------------------------------------------------------------------------------


class _RankErrorHandler(ErrorHandler):
    """Elastic's error file, plus the time of the error to the microsecond (see ``_rank_failed``)."""

    def record_exception(self, e: BaseException) -> None:
        when = time.time()
        super().record_exception(e)
        path = self._get_error_file_path()
        if not path or not os.path.isfile(path):
            return
        with open(path) as f:
            data = json.load(f)
        if isinstance(data.get("message"), dict):
            data["message"].setdefault("extraInfo", {})["time"] = when
            with open(path, "w") as f:
                json.dump(data, f)


class _EventWriter:
    """Appends JSON lines to the progress file, one ``write`` each (whole lines for a concurrent reader)."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"kind": kind, "time": time.time(), **fields}, default=_plain) + "\n"
        os.write(self.fd, line.encode())

    def close(self) -> None:
        os.close(self.fd)


def _plain(value: Any) -> Any:
    try:
        return float(value)  # numpy / torch scalars
    except (TypeError, ValueError):
        return str(value)


class _LogToEvents(logging.Handler):
    def __init__(self, events: _EventWriter):
        super().__init__(logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.events.write("log", level=record.levelname, message=self.format(record))
        except Exception:  # noqa: BLE001 - a log line must never fail a step
            self.handleError(record)


def stop_checker(stop_file: str | os.PathLike) -> Callable[[], bool]:
    """A rank's ``should_stop``: True once the stop file exists; raises ``StopAborted`` when it says ``abort``."""
    path = Path(stop_file)

    def should_stop() -> bool:
        if not path.exists():
            return False
        try:
            reason = path.read_text().strip()
        except OSError:
            reason = ""
        if reason == STOP_ABORT:
            raise StopAborted("stopped without a checkpoint: the launcher gave the run up (another process owns it)")
        return True

    return should_stop


def _rank_main(spec_path: str) -> None:
    # heavy: diffusers and every method; only a rank process trains, the launching worker never needs them
    import torch

    from trainer.loop import train_run

    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun: share the cores among the local ranks
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    events = _EventWriter(spec["progress_file"]) if rank == 0 else None
    handler = None
    if events is not None:
        handler = _LogToEvents(events)
        logger = logging.getLogger("trainer")
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)

    def on_progress(info: dict[str, Any]) -> None:
        if events is not None:
            events.write("progress", **info)

    try:
        result = train_run(
            spec["config"],
            spec["run_dir"],
            should_stop=stop_checker(spec["stop_file"]),
            on_progress=on_progress,
            progress_bar=False,
        )
        if rank == 0:
            tmp = Path(spec["result_file"] + ".tmp")
            tmp.write_text(json.dumps(result, default=_plain))
            os.replace(tmp, spec["result_file"])
            events.write("result", **result)
    finally:
        if events is not None:
            logging.getLogger("trainer").removeHandler(handler)
            events.close()
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            tdist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m trainer.launch", description="one rank of launch_train")
    ap.add_argument("--spec", required=True, help="launch.json written by launch_train")
    ap.add_argument("--parent-pid", type=int, required=True, help="the launching process (this rank dies with it)")
    args = ap.parse_args(argv)
    die_with_parent(args.parent_pid, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when ranks stop
    record(_rank_main, _RankErrorHandler())(args.spec)


if __name__ == "__main__":
    main()
