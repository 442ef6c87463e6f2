"""Celery tasks: thin shells that take a row id, re-read the row, lease it, call trainer/evaluator code and
write progress and results back to the database.

Every task is idempotent: a finished (or cancelled) row makes it a no-op; a row another live worker executes
makes it defer; a row whose worker died is taken over, and training resumes from the run directory's last
checkpoint (the trainer's own resume). Transient infrastructure errors (database, broker, network) are
retried with exponential backoff; anything else fails the row with its message.

    train_run(run_id)        queue "train"
    generate(job_id)         queue "infer"
    evaluate(benchmark_id)   queue "eval"
    ping(job_id)             queue "infer": a trivial real task (worker checks, tests); params {"sleep": s}
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Self

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from backend.core.config import default_nproc, get_settings
from backend.core.jsonable import jsonable
from backend.crud import benchmarks as bench_crud
from backend.crud import checkpoints as ckpt_crud
from backend.crud import runs as run_crud
from backend.crud.leases import LeaseKeeper, claim
from backend.db.models import (
    CANCELLED,
    FAILED,
    QUEUED,
    SUCCEEDED,
    TERMINAL,
    Benchmark,
    Job,
    Run,
    Score,
    utcnow,
)
from backend.db.session import session_scope
from backend.generation import (
    GenerationCancelled,
    finish_cancelled,
    record_generation,
    resolve_checkpoint,
    run_generation,
    video_id_for,
)
from backend.run_refs import to_server_paths
from backend.storage import ArtifactStore
from backend.worker import shutdown
from backend.worker.celery_app import celery_app
from backend.worker.liveness import owner_token
from evaluator.benchmark.runner import FIDELITY_METRICS, BenchmarkSpec, run_benchmark, split_sampler
from evaluator.benchmark.suites import load_suite, real_videos_for
from evaluator.reports import table1, to_markdown
from trainer.config import load_train_config, to_dict

log = logging.getLogger("motionlab.worker")
SETTINGS = get_settings()


def _transient_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [OperationalError, ConnectionError, TimeoutError]
    try:
        from kombu.exceptions import OperationalError as KombuOperationalError

        errs.append(KombuOperationalError)
    except ImportError:
        pass
    try:
        import redis.exceptions

        errs += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:
        pass
    return tuple(errs)


TRANSIENT = _transient_errors()
RETRY = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": 2,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": SETTINGS.task_max_retries,
}


def _limits(soft: int) -> dict[str, int]:
    return {"soft_time_limit": soft, "time_limit": soft + SETTINGS.hard_time_limit_margin_s}


class LeasedTask(Task):
    """Marks the task's row failed when the task fails for good (e.g. transient errors past max_retries)."""

    model: type | None = None

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        if self.model is None or not args:
            return
        try:
            with session_scope() as db:
                row = db.get(self.model, args[0])
                if row is not None and row.status not in TERMINAL:
                    row.status, row.finished_at = FAILED, utcnow()
                    row.error = f"{type(exc).__name__}: {exc}"[:4000]
                    row.worker_id = None
        except Exception:  # the database itself may be what failed
            log.exception("could not mark %s %s failed", self.model.__name__, args[0])


def _defer(task: Task, row_id: str) -> dict[str, Any]:
    """Another live worker executes this row: look again after a lease period (a watchdog, not a duplicate)."""
    task.apply_async(args=[row_id], countdown=SETTINGS.lease_timeout_s)
    return {"outcome": "deferred"}


# --- training ------------------------------------------------------------------------------------------------


class _LeaseLost(Exception):
    """Raised from should_stop when another worker took the run over (its heartbeat went stale)."""


class _LogBuffer(logging.Handler):
    """Collects log records of trainer code during a run; flushed into run_logs with progress."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[str, str]] = []
        self.lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is kept as its raw message
            msg = str(record.msg)
        with self.lock2:
            self.lines.append((record.levelname, msg))

    def drain(self) -> list[tuple[str, str]]:
        with self.lock2:
            out, self.lines = self.lines, []
        return out


def _flat_metrics(info: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for k, v in info.items():
        if k in ("step", "total_steps"):
            continue
        if isinstance(v, dict):
            for k2, v2 in v.items():
                values[f"{k2}" if k == "losses" else f"{k}.{k2}"] = v2
        else:
            values[k] = v
    return jsonable(values)


def _read_metrics_jsonl(run_dir: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    f = run_dir / "metrics.jsonl"
    if not f.is_file():
        return out
    for line in f.read_text().splitlines():
        try:
            rec = json.loads(line)
            out[int(rec["step"])] = _flat_metrics(rec)
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line after a crash
    return out


def _last_training_checkpoint(run_dir: Path) -> str | None:
    """The newest complete training checkpoint (what a resume starts from), relative to the run directory."""
    try:
        from trainer.loop import latest_checkpoint  # heavy: torch and diffusers, for training workers only
    except ImportError:
        return None
    p = latest_checkpoint(run_dir)
    return str(p.relative_to(run_dir)) if p is not None else None


def _register_export(
    run_id: str, run_name: str | None, export_dir: Path, step: int | None, store: ArtifactStore
) -> str | None:
    """The run's product (a pipeline directory) becomes a checkpoint row: generations and benchmarks can use it."""
    if not export_dir.is_dir() or not ckpt_crud.looks_like_diffusers_dir(export_dir):
        return None
    info = {"sampling": s} if (s := ckpt_crud.sampling_info(export_dir)) else {}
    try:  # a LoRA run's export: an adapter checkpoint naming its base
        if adapter := ckpt_crud.adapter_info(export_dir):
            info["adapter"] = adapter
    except ckpt_crud.CheckpointError:
        pass
    with session_scope() as db:
        row = ckpt_crud.register_run_checkpoint(
            db,
            run_id=run_id,
            run_name=run_name,
            rel_location=str(export_dir.resolve().relative_to(store.root)),
            step=step,
            info=info or None,
        )
        return row.id


@celery_app.task(
    bind=True,
    base=LeasedTask,
    model=Run,
    name="motionlab.train_run",
    **_limits(SETTINGS.train_soft_time_limit_s),
    **RETRY,
)
def train_run(self: Task, run_id: str) -> dict[str, Any]:
    settings = get_settings()
    me = owner_token()
    if shutdown.STOP.is_set():  # this worker is shutting down: leave the run to the next one
        raise Reject("worker shutting down", requeue=True)
    store = ArtifactStore(settings.storage_root)
    with session_scope() as db:
        outcome, run = claim(db, Run, run_id, me, settings.lease_timeout_s, settings.max_attempts)
        if outcome != "claimed":
            return _defer(self, run_id) if outcome == "busy" else {"outcome": outcome}
        # registered checkpoint and dataset names (what API configs hold) -> their directories
        method, overrides = run.method, to_server_paths(db, store, dict(run.config or {}))
        preset, name = run.preset, run.name
        attempt, nproc = run.attempts, run.nproc
        run_crud.append_log(db, run_id, f"attempt {attempt} started on {me}")

    run_dir = store.path("runs", run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    margin = min(600.0, 0.05 * settings.train_soft_time_limit_s)
    deadline = time.monotonic() + settings.train_soft_time_limit_s - margin
    state: dict[str, Any] = {"stop": None, "last_check": 0.0, "cancel": False, "first": True}
    buf = _LogBuffer()
    trainer_logger = logging.getLogger("trainer")
    trainer_logger.addHandler(buf)
    if trainer_logger.level == logging.NOTSET or trainer_logger.level > logging.INFO:
        trainer_logger.setLevel(logging.INFO)

    with LeaseKeeper(settings, Run, run_id, me) as lease:

        def should_stop() -> bool:
            now = time.monotonic()
            if lease.lost:  # another worker owns the run now: abort without saving a checkpoint over its work
                raise _LeaseLost()
            if shutdown.STOP.is_set():
                state["stop"] = "shutdown"
            elif now >= deadline:
                state["stop"] = "deadline"
            elif now - state["last_check"] >= 0.25:
                state["last_check"] = now
                with session_scope(write=False) as db:
                    row = db.get(Run, run_id)
                    state["cancel"] = bool(row is None or row.cancel_requested)
                if state["cancel"]:
                    state["stop"] = "cancel"
            return state["stop"] is not None

        def on_log(level: str, message: str) -> None:
            with session_scope() as db:
                run_crud.append_log(db, run_id, message, level)

        def on_progress(info: dict[str, Any]) -> None:
            step = int(info.get("step", 0))
            total = info.get("total_steps")
            with session_scope() as db:
                if state["first"]:
                    state["first"] = False
                    if step > 1:
                        run_crud.append_log(db, run_id, f"resumed from the checkpoint at step {step - 1}")
                run_crud.record_progress(
                    db, run_id, step=step, total_steps=int(total) if total else None, values=_flat_metrics(info)
                )
                for level, line in buf.drain():
                    run_crud.append_log(db, run_id, line, level)

        try:
            # heavy: torch and diffusers, for training workers only
            from trainer.loop import train_run as trainer_train_run

            config = load_train_config(method, overrides, preset=preset)
            nproc = _resolve_nproc(run_id, nproc, config.device, settings)
            with shutdown.training():
                if nproc == 1:  # in this process, as always: no launch cost, the device is this worker's own
                    result = trainer_train_run(
                        config, run_dir, should_stop=should_stop, on_progress=on_progress, progress_bar=False
                    )
                else:
                    result = _train_on_ranks(run_id, config, run_dir, nproc, should_stop, on_progress, on_log)
                    if not result.get("stopped"):  # asked after the ranks' last check: the run finished anyway
                        state["stop"] = None
        except _LeaseLost:
            log.warning("run %s: lease lost to another worker; stopped without touching the row", run_id)
            return {"outcome": "lease-lost"}
        except _RanksFailed as exc:
            if lease.lost:
                log.warning("run %s: lease lost to another worker; its ranks were stopped", run_id)
                return {"outcome": "lease-lost"}
            log.error("run %s failed on its ranks: %s", run_id, exc.message)
            _finish_run(run_id, FAILED, exc.message, buf, detail=exc.detail)
            return {"outcome": "failed"}
        except TRANSIENT:
            _release(Run, run_id, me)
            raise
        except SoftTimeLimitExceeded:
            _finish_run(
                run_id,
                FAILED,
                f"time limit of {settings.train_soft_time_limit_s} s exceeded; the last "
                f"checkpoint ({_last_training_checkpoint(run_dir)}) is kept: resume with "
                f"POST /v1/runs/{run_id}/resume",
                buf,
            )
            return {"outcome": "failed"}
        except Exception as exc:
            log.exception("run %s failed", run_id)
            _finish_run(run_id, FAILED, f"{type(exc).__name__}: {exc}", buf, detail=traceback.format_exc(limit=20))
            return {"outcome": "failed"}
        finally:
            trainer_logger.removeHandler(buf)

    _reconcile_metrics(run_id, run_dir)
    last = _last_training_checkpoint(run_dir)
    if state["stop"] == "shutdown":
        _hand_back(
            run_id,
            me,
            buf,
            f"worker shut down at step {result.get('step')} after saving {last}; the run "
            "continues from it when a worker starts",
        )
        raise Reject("worker shutting down", requeue=True)  # the message goes back to the queue
    if state["stop"] == "cancel":
        _finish_run(
            run_id,
            CANCELLED,
            None,
            buf,
            note=f"cancelled at step {result.get('step')}; the last checkpoint "
            f"({last}) is kept: POST /v1/runs/{run_id}/resume continues",
        )
        return {"outcome": "cancelled", "checkpoint": last}
    if state["stop"] == "deadline":
        _finish_run(
            run_id,
            FAILED,
            f"stopped at the time limit ({settings.train_soft_time_limit_s} s) after "
            f"saving {last}; resume with POST /v1/runs/{run_id}/resume",
            buf,
        )
        return {"outcome": "failed"}
    export = result.get("export_dir")
    ckpt_id = _register_export(run_id, name, Path(export), result.get("step"), store) if export else None
    summary = jsonable({k: v for k, v in (result or {}).items() if k in ("step", "resumed_from")})
    _finish_run(
        run_id,
        SUCCEEDED,
        None,
        buf,
        note=f"finished at step {result.get('step')}; checkpoint {ckpt_id}",
        summary=summary,
    )
    return {"outcome": "succeeded", "checkpoint_id": ckpt_id}


class _RanksFailed(Exception):
    """A rank of a launched run failed: ``message`` is its own error (``ConfigError: ...``), ``detail`` the rest."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.message, self.detail = message, detail


def _resolve_nproc(run_id: str, nproc: int | None, device: str, settings: Any) -> int:
    """The run's ranks: its own ``nproc``, or this worker's default (recorded in the row, so that a redelivery
    resumes on as many ranks as the checkpoint was written with). Errors name the field and the limit."""
    if nproc is None:
        nproc = default_nproc(settings, device)
        with session_scope() as db:
            row = db.get(Run, run_id)
            if row is not None and row.nproc is None:
                row.nproc = nproc
    limit = settings.limits.max_nproc
    if not 1 <= nproc <= limit:
        raise ValueError(f"nproc: must be between 1 and {limit} (limits.max_nproc; got {nproc})")
    if nproc > 1 and device.startswith("cuda"):
        import torch

        have = torch.cuda.device_count()
        if nproc > have:
            raise ValueError(f"nproc: {nproc} ranks need as many CUDA devices; this worker has {have}")
    return nproc


class _RankWatch:
    """While a run's ranks train in their own processes, a thread of the task's process (which keeps the lease's
    heartbeat too) polls every ``interval`` seconds:

    - relays rank 0's progress file (steps, trainer log lines) to the database, as ``on_progress`` does in-process;
    - turns the task's stop reasons (a cancel request in the database, this worker's shutdown, the deadline) into the
      stop file every rank's ``should_stop`` checks; a lost lease writes ``abort``: the ranks fail without saving
      a checkpoint over the new owner's work.
    """

    def __init__(self, progress_file: Path, stop_file: Path, should_stop, on_progress, on_log, interval: float = 0.25):
        self.progress_file, self.stop_file = progress_file, stop_file
        self.should_stop, self.on_progress, self.on_log = should_stop, on_progress, on_log
        self.interval, self.offset, self.written = interval, 0, None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rank-watch", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        try:
            self.relay()  # the last steps' lines, written after the final poll
        except Exception:  # what is missing is reconciled from metrics.jsonl at the end of the task
            log.exception("could not relay a run's last progress lines")

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.relay()
            except Exception:  # the database may be briefly unavailable: the lines stay unread until the next poll
                log.exception("could not relay a run's progress")
            try:
                reason = "stop" if self.should_stop() else None
            except _LeaseLost:
                reason = "abort"
            except Exception:
                log.exception("could not check whether a run should stop")
                reason = None
            if reason and self.written != "abort" and (self.written is None or reason == "abort"):
                tmp = self.stop_file.with_name(self.stop_file.name + ".tmp")
                tmp.write_text(reason)
                os.replace(tmp, self.stop_file)
                self.written = reason

    def relay(self) -> None:
        """Apply the complete lines of the progress file after ``offset``; an unterminated last line waits."""
        try:
            with open(self.progress_file, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        for raw in chunk.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            try:
                event = json.loads(raw)
            except ValueError:
                event = {}
            kind = event.pop("kind", None)
            event.pop("time", None)
            if kind == "progress":
                self.on_progress(event)
            elif kind == "log":
                self.on_log(str(event.get("level", "INFO")), str(event.get("message", "")))
            self.offset += len(raw)


def _train_on_ranks(
    run_id: str, config: Any, run_dir: Path, nproc: int, should_stop, on_progress, on_log
) -> dict[str, Any]:
    """``trainer.launch.launch_train`` on ``nproc`` local ranks, watched by a ``_RankWatch`` thread."""
    from trainer.launch import RankFailed, launch_train  # heavy: torch's elastic launcher, training only

    stop_file, progress_file = run_dir / "STOP", run_dir / "progress.jsonl"
    stop_file.unlink(missing_ok=True)  # left by an earlier attempt (a cancel, a shutdown)
    progress_file.write_bytes(b"")
    on_log(
        "INFO",
        f"launching {nproc} ranks (torch elastic, c10d rendezvous on 127.0.0.1); their stdout/stderr "
        "go to logs/launch-*/ in the run directory",
    )
    try:
        with _RankWatch(progress_file, stop_file, should_stop, on_progress, on_log):
            result = launch_train(
                to_dict(config), run_dir, nproc, stop_file=stop_file, progress_file=progress_file, rdzv_id=run_id
            )
    except RankFailed as exc:
        where = f"rank logs: {os.path.relpath(exc.log_dir, run_dir.resolve())}" if exc.log_dir else ""
        raise _RanksFailed(exc.message, "\n".join(x for x in (exc.detail, where) if x)) from None
    finally:
        stop_file.unlink(missing_ok=True)
    return result


def _hand_back(run_id: str, me: str, buf: _LogBuffer, note: str) -> None:
    """Queue the run again after a clean stop (checkpoint saved), not counting this delivery as a lost attempt."""
    with session_scope() as db:
        run = db.get(Run, run_id)
        if run is None or run.worker_id != me:
            return
        for level, line in buf.drain():
            run_crud.append_log(db, run_id, line, level)
        run_crud.append_log(db, run_id, note)
        run.status, run.worker_id = QUEUED, None
        run.attempts = max(0, (run.attempts or 0) - 1)


def _release(model: type, row_id: str, me: str) -> None:
    """Give the lease up before a retry, so whichever process runs the retry can take the row at once."""
    try:
        with session_scope() as db:
            row = db.get(model, row_id)
            if row is not None and row.worker_id == me:
                row.worker_id = None
    except Exception as exc:  # noqa: BLE001 - best effort: the stale-lease sweeper frees the row anyway
        log.warning("could not release the lease on %s %s: %s", model.__name__, row_id, exc)


def _reconcile_metrics(run_id: str, run_dir: Path) -> None:
    """metrics.jsonl (written by the trainer) is the source of truth: add any step the database missed."""
    from_file = _read_metrics_jsonl(run_dir)
    if not from_file:
        return
    with session_scope() as db:
        have = {m.step for m in run_crud.metrics(db, run_id, limit=10**9)}
        for step in sorted(set(from_file) - have):
            run_crud.upsert_metric(db, run_id, step, from_file[step])


def _finish_run(
    run_id: str,
    status: str,
    error: str | None,
    buf: _LogBuffer,
    *,
    note: str | None = None,
    detail: str | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    with session_scope() as db:
        run = db.get(Run, run_id)
        if run is None:
            return
        for level, line in buf.drain():
            run_crud.append_log(db, run_id, line, level)
        if detail:
            run_crud.append_log(db, run_id, detail, "DEBUG")
        if note:
            run_crud.append_log(db, run_id, note)
        if status == SUCCEEDED:
            run.progress = 1.0
            if summary:
                run.metrics = {**(run.metrics or {}), **{f"final.{k}": v for k, v in summary.items()}}
        run.worker_id = None
        run_crud.finish(db, run, status, error=error)


# --- generation ----------------------------------------------------------------------------------------------


@celery_app.task(
    bind=True,
    base=LeasedTask,
    model=Job,
    name="motionlab.generate",
    **_limits(SETTINGS.infer_soft_time_limit_s),
    **RETRY,
)
def generate(self: Task, job_id: str) -> dict[str, Any]:
    settings = get_settings()
    me = owner_token()
    with session_scope() as db:
        outcome, job = claim(db, Job, job_id, me, settings.lease_timeout_s, settings.max_attempts)
        if outcome != "claimed":
            return _defer(self, job_id) if outcome == "busy" else {"outcome": outcome}
        snapshot = {"id": job.id, "params": dict(job.params)}
    store = ArtifactStore(settings.storage_root)
    with LeaseKeeper(settings, Job, job_id, me):
        try:
            out = run_generation(snapshot, store, settings.device)
        except GenerationCancelled:
            with session_scope() as db:
                finish_cancelled(db.get(Job, job_id))
            return {"outcome": "cancelled"}
        except TRANSIENT:
            _release(Job, job_id, me)
            raise
        except SoftTimeLimitExceeded:
            _finish_job(job_id, FAILED, error=f"time limit of {settings.infer_soft_time_limit_s} s exceeded")
            return {"outcome": "failed"}
        except Exception as exc:
            log.exception("generation %s failed", job_id)
            _finish_job(job_id, FAILED, error=f"{type(exc).__name__}: {exc}")
            return {"outcome": "failed"}
    with session_scope() as db:
        video = record_generation(db, db.get(Job, job_id), out)
    if video is None:
        return {"outcome": "cancelled"}
    return {"outcome": "succeeded", "video_id": out["video_id"]}


def _finish_job(job_id: str, status: str, *, error: str | None = None, result: dict | None = None) -> None:
    with session_scope() as db:
        job = db.get(Job, job_id)
        if job is None:
            return
        job.status, job.finished_at, job.worker_id = status, utcnow(), None
        if error:
            job.error = error[:4000]
        if result is not None:
            job.result = result


@celery_app.task(
    bind=True, base=LeasedTask, model=Job, name="motionlab.ping", **_limits(SETTINGS.infer_soft_time_limit_s), **RETRY
)
def ping(self: Task, job_id: str) -> dict[str, Any]:
    """Trivial real work: sleep ``params.sleep`` seconds in small slices (heartbeating), then record who ran it."""
    settings = get_settings()
    me = owner_token()
    with session_scope() as db:
        outcome, job = claim(db, Job, job_id, me, settings.lease_timeout_s, settings.max_attempts)
        if outcome != "claimed":
            return _defer(self, job_id) if outcome == "busy" else {"outcome": outcome}
        sleep_s, attempts = float((job.params or {}).get("sleep", 0)), job.attempts
    with LeaseKeeper(settings, Job, job_id, me):
        end = time.monotonic() + min(max(sleep_s, 0.0), 60.0)
        while time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
    _finish_job(job_id, SUCCEEDED, result={"worker": me, "pid": os.getpid(), "attempts": attempts})
    return {"outcome": "succeeded"}


# --- evaluation ----------------------------------------------------------------------------------------------


class _Cancelled(Exception):
    pass


class DbRecordStore:
    """The evaluator's RecordStore on the scores table: a redelivered benchmark skips what is already scored."""

    def __init__(self, benchmark_id: str):
        self.benchmark_id = benchmark_id

    def all(self) -> list[dict[str, Any]]:
        with session_scope(write=False) as db:
            return [
                {
                    "model": s.checkpoint,
                    "prompt": s.prompt,
                    "seed": s.seed,
                    "metric": s.metric,
                    "value": s.value,
                    "backend": s.backend,
                    **(s.extra or {}),
                }
                for s in bench_crud.scores(db, self.benchmark_id)
            ]

    def existing(self) -> set[tuple[str, str, int]]:
        return {(r["model"], r["prompt"], int(r["seed"])) for r in self.all() if r["metric"] not in FIDELITY_METRICS}

    def add(self, records: list[dict[str, Any]]) -> None:
        with session_scope() as db:
            for r in records:
                extra = {
                    k: v for k, v in r.items() if k not in ("model", "prompt", "seed", "metric", "value", "backend")
                }
                value = r.get("value")
                db.add(
                    Score(
                        benchmark_id=self.benchmark_id,
                        checkpoint=str(r["model"]),
                        prompt=r.get("prompt"),
                        seed=r.get("seed"),
                        metric=str(r["metric"]),
                        backend=str(r.get("backend", "unknown")),
                        value=None if value is None or not math.isfinite(float(value)) else float(value),
                        extra=jsonable(extra) or None,
                    )
                )


def _sampling_kind(path: Path) -> str:
    f = path / "motionlab_sampling.json"
    try:
        return json.loads(f.read_text()).get("kind", "teacher") if f.is_file() else "teacher"
    except (OSError, ValueError):
        return "teacher"


def build_benchmark_spec(config: dict[str, Any], store: ArtifactStore) -> Any:
    """The API's benchmark config -> evaluator.benchmark.runner.BenchmarkSpec (checkpoints resolved to paths)."""
    opts = dict(config.get("options") or {})
    prompts = list(config.get("prompts") or []) or load_suite(config["suite"], opts.get("suite_size"))
    paths, labels, overrides = [], {}, {}
    for ref in config["checkpoints"]:
        base, sampler = split_sampler(ref)  # NAME@flowmo: NAME sampled with FlowMo guidance, its own row
        path = str(resolve_checkpoint(base, store))
        entry = path if sampler == "default" else f"{path}@{sampler}"
        paths.append(entry)
        labels[entry] = ref
        o: dict[str, Any] = {k: config[k] for k in ("num_frames", "height", "width") if config.get(k)}
        if config.get("steps") and _sampling_kind(Path(path)) == "teacher":
            o["num_steps"] = int(config["steps"])
        overrides[entry] = o
    kw: dict[str, Any] = {
        "checkpoints": paths,
        "prompts": prompts,
        "seeds": list(config.get("seeds") or [0]),
        "labels": labels,
        "sampling_overrides": overrides,
        "workers": 1,
    }  # a Celery pool process may not start a process pool of its own
    if config.get("metrics"):
        kw["metrics"] = list(config["metrics"])
    for k in ("backend", "batch_size"):
        if k in opts:
            kw[k] = opts[k]
    if kw.get("backend") == "vbench":
        kw["weights_dir"] = str(get_settings().weights_dir)
    return BenchmarkSpec(**kw)


def _report(records: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    table = table1(records)
    return {"table": table, "records": len(records)}, to_markdown(table)


@celery_app.task(
    bind=True,
    base=LeasedTask,
    model=Benchmark,
    name="motionlab.evaluate",
    **_limits(SETTINGS.eval_soft_time_limit_s),
    **RETRY,
)
def evaluate(self: Task, benchmark_id: str) -> dict[str, Any]:
    settings = get_settings()
    me = owner_token()
    with session_scope() as db:
        outcome, row = claim(db, Benchmark, benchmark_id, me, settings.lease_timeout_s, settings.max_attempts)
        if outcome != "claimed":
            return _defer(self, benchmark_id) if outcome == "busy" else {"outcome": outcome}
        config = dict(row.config)
    store = ArtifactStore(settings.storage_root)
    out_dir = store.path("reports", benchmark_id)  # generated videos (the scores go to the database)
    out_dir.mkdir(parents=True, exist_ok=True)

    def progress(done: int, total: int) -> None:
        with session_scope() as db:
            r = db.get(Benchmark, benchmark_id)
            if r is None or r.cancel_requested:
                raise _Cancelled()
            r.progress = float(done / total) if total else 1.0

    with LeaseKeeper(settings, Benchmark, benchmark_id, me):
        try:
            spec = build_benchmark_spec(config, store)
            # the fidelity figures of a synthetic suite are against its real clips (custom prompts have none)
            real = None if config.get("prompts") else real_videos_for(config["suite"])
            records = run_benchmark(
                spec,
                out_dir,
                store=DbRecordStore(benchmark_id),
                device=settings.device,
                progress=progress,
                real_videos=real,
            )
        except _Cancelled:
            _finish_benchmark(benchmark_id, CANCELLED)
            return {"outcome": "cancelled"}
        except TRANSIENT:
            _release(Benchmark, benchmark_id, me)
            raise
        except SoftTimeLimitExceeded:
            _finish_benchmark(
                benchmark_id,
                FAILED,
                error=f"time limit of {settings.eval_soft_time_limit_s} s exceeded (the scores so far are kept)",
            )
            return {"outcome": "failed"}
        except Exception as exc:
            log.exception("benchmark %s failed", benchmark_id)
            _finish_benchmark(benchmark_id, FAILED, error=f"{type(exc).__name__}: {exc}")
            return {"outcome": "failed"}
    report, markdown = _report(records)
    report = jsonable(report)
    store.write_text("reports", benchmark_id, json.dumps(report, indent=2), ".json")
    if markdown:
        store.write_text("reports", benchmark_id, markdown, ".md")
    summary = {"records": len(records), "checkpoints": config["checkpoints"]}
    _finish_benchmark(benchmark_id, SUCCEEDED, summary=summary, report_key=store.key("reports", benchmark_id, ".json"))
    return {"outcome": "succeeded"}


def _finish_benchmark(
    benchmark_id: str, status: str, *, error: str | None = None, summary: Any = None, report_key: str | None = None
) -> None:
    with session_scope() as db:
        row = db.get(Benchmark, benchmark_id)
        if row is None:
            return
        row.status, row.finished_at, row.worker_id = status, utcnow(), None
        if status == SUCCEEDED:
            row.progress = 1.0
        if error:
            row.error = error[:4000]
        if summary is not None:
            row.summary = summary
        if report_key:
            row.report_key = report_key


__all__ = ["evaluate", "generate", "ping", "resolve_checkpoint", "train_run", "video_id_for"]
