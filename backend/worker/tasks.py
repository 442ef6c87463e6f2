"""Celery tasks: the work of each row kind. A task takes a row id; ``backend.worker.leased`` claims the row, keeps
its lease and applies what the work raises (retry, cancelled, failed), so each body below holds only its own work:
read the claimed row, call trainer/evaluator code, write progress and results back to the database.

Every task is idempotent: a finished (or cancelled) row makes it a no-op, as does a row another live process
executes; a row whose worker died is taken over, and training resumes from the run directory's last checkpoint
(the trainer's own resume).

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
from pathlib import Path
from typing import Any, Self

from celery.exceptions import Reject

from backend.core.config import default_nproc, get_settings
from backend.core.jsonable import jsonable
from backend.crud import benchmarks as bench_crud
from backend.crud import checkpoints as ckpt_crud
from backend.crud import runs as run_crud
from backend.db.models import CANCELLED, FAILED, QUEUED, SUCCEEDED, Benchmark, Job, Run, Score, utcnow
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
from backend.worker.dispatch import EVALUATE, GENERATE, PING, TRAIN
from backend.worker.leased import Lease, LeaseLost, WorkCancelled, WorkFailed, end_row, leased_task
from evaluator.benchmark.runner import FIDELITY_METRICS, BenchmarkSpec, run_benchmark, split_sampler
from evaluator.benchmark.suites import load_suite
from evaluator.reports import table1, to_markdown
from trainer.config import load_train_config, to_dict

log = logging.getLogger("motionlab.worker")
SETTINGS = get_settings()


def _limits(soft: int) -> dict[str, int]:
    return {"soft_time_limit": soft, "time_limit": soft + SETTINGS.hard_time_limit_margin_s}


# --- training ------------------------------------------------------------------------------------------------


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


def _train_time_limit_error(lease: Lease) -> str:
    run_dir = ArtifactStore(lease.settings.storage_root).path("runs", lease.row_id)
    return (
        f"time limit of {lease.settings.train_soft_time_limit_s} s exceeded; the last checkpoint "
        f"({_last_training_checkpoint(run_dir)}) is kept: resume with POST /v1/runs/{lease.row_id}/resume"
    )


def _fail_run(run_id: str, error: str, detail: str | None) -> None:
    _finish_run(run_id, FAILED, error, detail=detail)


@leased_task(
    celery_app,
    Run,
    name=TRAIN,
    label="run",
    fail=_fail_run,
    time_limit_error=_train_time_limit_error,
    **_limits(SETTINGS.train_soft_time_limit_s),
)
def train_run(lease: Lease) -> dict[str, Any]:
    settings, run_id, me, run = lease.settings, lease.row_id, lease.me, lease.row
    store = ArtifactStore(settings.storage_root)
    with session_scope() as db:
        # registered checkpoint and dataset names (what API configs hold) -> their directories
        overrides = to_server_paths(db, store, dict(run.config or {}))
        run_crud.append_log(db, run_id, f"attempt {run.attempts} started on {me}")

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

    def should_stop() -> bool:
        now = time.monotonic()
        if lease.lost:  # another worker owns the run now: abort without saving a checkpoint over its work
            raise LeaseLost()
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

        config = load_train_config(run.method, overrides, preset=run.preset)
        nproc = _resolve_nproc(run_id, run.nproc, config.device, settings)
        with shutdown.training():
            if nproc == 1:  # in this process, as always: no launch cost, the device is this worker's own
                result = trainer_train_run(
                    config, run_dir, should_stop=should_stop, on_progress=on_progress, progress_bar=False
                )
            else:
                result = _train_on_ranks(run_id, config, run_dir, nproc, should_stop, on_progress, on_log)
                if not result.get("stopped"):  # asked after the ranks' last check: the run finished anyway
                    state["stop"] = None
    finally:
        trainer_logger.removeHandler(buf)
        if not lease.lost:  # the trainer's last lines, before whatever ends the run (a lost run is not ours)
            _flush_log(run_id, buf)

    _reconcile_metrics(run_id, run_dir)
    last = _last_training_checkpoint(run_dir)
    if state["stop"] == "shutdown":
        _hand_back(
            run_id,
            me,
            f"worker shut down at step {result.get('step')} after saving {last}; the run "
            "continues from it when a worker starts",
        )
        raise Reject("worker shutting down", requeue=True)  # the message goes back to the queue
    if state["stop"] == "cancel":
        _finish_run(
            run_id,
            CANCELLED,
            None,
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
        )
        return {"outcome": "failed"}
    export = result.get("export_dir")
    ckpt_id = _register_export(run_id, run.name, Path(export), result.get("step"), store) if export else None
    summary = jsonable({k: v for k, v in (result or {}).items() if k in ("step", "resumed_from")})
    _finish_run(
        run_id,
        SUCCEEDED,
        None,
        note=f"finished at step {result.get('step')}; checkpoint {ckpt_id}",
        summary=summary,
    )
    return {"outcome": "succeeded", "checkpoint_id": ckpt_id}


class _RanksFailed(WorkFailed):
    """A rank of a launched run failed: ``message`` is its own error (``ConfigError: ...``), ``detail`` the rest."""


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
            except LeaseLost:
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


def _flush_log(run_id: str, buf: _LogBuffer) -> None:
    """The trainer's log lines not yet written with a progress step, into the run's log."""
    lines = buf.drain()
    if not lines:
        return
    try:
        with session_scope() as db:
            for level, line in lines:
                run_crud.append_log(db, run_id, line, level)
    except Exception:  # the database may be what failed: the run's end matters more than these lines
        log.warning("could not write the last log lines of run %s", run_id, exc_info=True)


def _hand_back(run_id: str, me: str, note: str) -> None:
    """Queue the run again after a clean stop (checkpoint saved), not counting this delivery as a lost attempt."""
    with session_scope() as db:
        run = db.get(Run, run_id)
        if run is None or run.worker_id != me:
            return
        run_crud.append_log(db, run_id, note)
        run.status, run.worker_id = QUEUED, None
        run.heartbeat_at = utcnow()  # a waiting row's heartbeat is when it was last hinted (its message requeued)
        run.attempts = max(0, (run.attempts or 0) - 1)


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
    *,
    note: str | None = None,
    detail: str | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    with session_scope() as db:
        run = db.get(Run, run_id)
        if run is None:
            return
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


def _cancel_generation(job_id: str) -> None:
    with session_scope() as db:
        job = db.get(Job, job_id)
        if job is not None:
            finish_cancelled(job)


@leased_task(
    celery_app,
    Job,
    name=GENERATE,
    label="generation",
    cancelled=(GenerationCancelled,),
    cancel=_cancel_generation,
    **_limits(SETTINGS.infer_soft_time_limit_s),
)
def generate(lease: Lease) -> dict[str, Any]:
    settings, job_id = lease.settings, lease.row_id
    snapshot = {"id": job_id, "params": dict(lease.row.params)}
    out = run_generation(snapshot, ArtifactStore(settings.storage_root), settings.device)
    with session_scope() as db:
        video = record_generation(db, db.get(Job, job_id), out)
    if video is None:
        return {"outcome": "cancelled"}
    return {"outcome": "succeeded", "video_id": out["video_id"]}


@leased_task(celery_app, Job, name=PING, label="ping", **_limits(SETTINGS.infer_soft_time_limit_s))
def ping(lease: Lease) -> dict[str, Any]:
    """Trivial real work: sleep ``params.sleep`` seconds in small slices (heartbeating), then record who ran it."""
    sleep_s = float((lease.row.params or {}).get("sleep", 0))
    end = time.monotonic() + min(max(sleep_s, 0.0), 60.0)
    while time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))
    result = {"worker": lease.me, "pid": os.getpid(), "attempts": lease.row.attempts}
    end_row(Job, lease.row_id, SUCCEEDED, result=result)
    return {"outcome": "succeeded"}


# --- evaluation ----------------------------------------------------------------------------------------------


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


@leased_task(
    celery_app,
    Benchmark,
    name=EVALUATE,
    label="benchmark",
    time_limit_error=lambda lease: (
        f"time limit of {lease.settings.eval_soft_time_limit_s} s exceeded (the scores so far are kept)"
    ),
    **_limits(SETTINGS.eval_soft_time_limit_s),
)
def evaluate(lease: Lease) -> dict[str, Any]:
    settings, benchmark_id = lease.settings, lease.row_id
    config = dict(lease.row.config)
    store = ArtifactStore(settings.storage_root)
    out_dir = store.path("reports", benchmark_id)  # generated videos (the scores go to the database)
    out_dir.mkdir(parents=True, exist_ok=True)

    def progress(done: int, total: int) -> None:
        with session_scope() as db:
            r = db.get(Benchmark, benchmark_id)
            if r is None or r.cancel_requested:
                raise WorkCancelled()
            r.progress = float(done / total) if total else 1.0

    spec = build_benchmark_spec(config, store)
    # the fidelity figures of a synthetic suite are against its real clips (custom prompts have none)
    real_suite = None if config.get("prompts") else config["suite"]
    records = run_benchmark(
        spec,
        out_dir,
        store=DbRecordStore(benchmark_id),
        device=settings.device,
        progress=progress,
        real_suite=real_suite,
    )
    report, markdown = _report(records)
    report = jsonable(report)
    store.write_text("reports", benchmark_id, json.dumps(report, indent=2), ".json")
    if markdown:
        store.write_text("reports", benchmark_id, markdown, ".md")
    summary = {"records": len(records), "checkpoints": config["checkpoints"]}
    report_key = store.key("reports", benchmark_id, ".json")
    end_row(Benchmark, benchmark_id, SUCCEEDED, progress=1.0, summary=summary, report_key=report_key)
    return {"outcome": "succeeded"}


__all__ = ["evaluate", "generate", "ping", "resolve_checkpoint", "train_run", "video_id_for"]
