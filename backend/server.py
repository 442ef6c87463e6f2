"""Process entry points the CLI wires up: ``run_serve`` (everything in one command), ``run_api``, ``run_worker``.

    run_serve("127.0.0.1", 8000)               # motionlab serve: API + web UI + local workers, embedded defaults
    run_api("0.0.0.0", 8000)                   # motionlab api: the API alone (shared deployment)
    run_worker(["train"], concurrency=1)        # motionlab worker --queues train (on each GPU machine)
    run_worker(["infer"], 16, pool="threads")   # motionlab worker --queues infer --pool threads --concurrency 16

Embedded default (no MOTIONLAB_* variables): SQLite and the SQLite broker under ``./storage``; nothing to install
or start besides this process. ``run_serve`` starts three local worker processes (``train``; ``eval``; ``infer``
with 16 threads) and restarts one that dies; a killed worker's unacked message is redelivered to its replacement,
and a training run resumes from its last checkpoint. SIGTERM (``kill``, systemd, ``docker stop``) stops it as
SIGINT (Ctrl-C) does: the workers stop within ``serve_stop_timeout_s``, a running training after saving a
checkpoint (``backend.worker.shutdown``), and the next start resumes it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import func, select

from backend.core.config import Settings, get_settings
from backend.db.migrate import upgrade_to_head
from backend.db.models import ApiKey
from backend.db.session import session_scope
from backend.security import create_api_key
from backend.storage import private_dir
from backend.worker.dispatch import QUEUES

log = logging.getLogger("motionlab.server")

# (queues, pool, concurrency). Inference runs in a thread pool so that concurrent generation requests reach the
# one in-process batcher together (trainer/serving.py); training and evaluation stay in prefork processes.
INFER_THREADS = 16  # = the batcher's default max_batch
LOCAL_WORKERS: tuple[tuple[tuple[str, ...], str, int], ...] = (
    (("train",), "prefork", 1),
    (("eval",), "prefork", 1),
    (("infer",), "threads", INFER_THREADS),
)
POOLS = ("prefork", "threads")


def _check_queues(queues: Sequence[str]) -> list[str]:
    qs = [q.strip() for q in (queues if not isinstance(queues, str) else queues.split(",")) if q.strip()]
    bad = [q for q in qs if q not in QUEUES]
    if not qs or bad:
        raise ValueError(f"queues: must be a non-empty subset of {list(QUEUES)}; got {list(queues)}")
    return qs


def run_worker(
    queues: Sequence[str] = ("train", "eval", "infer"),
    concurrency: int = 1,
    *,
    pool: str = "prefork",
    loglevel: str = "INFO",
    quiet: bool = False,
) -> None:
    """A Celery worker on ``queues`` (blocks). Settings come from the MOTIONLAB_* environment.

    ``quiet``: no Celery banner (``motionlab serve``'s local workers, unless ``--verbose``).

    ``pool="threads"`` is for the infer queue: its tasks share one process's warm models and request batcher. Celery
    does not enforce time limits in a thread pool; a generation is bounded by the API's request limits instead.
    """
    qs = _check_queues(queues)
    if not 1 <= int(concurrency) <= 256:
        raise ValueError(f"concurrency: must be between 1 and 256 (got {concurrency})")
    if pool not in POOLS:
        raise ValueError(f"pool: must be one of {list(POOLS)} (got {pool!r})")
    settings = get_settings()
    upgrade_to_head(settings)
    # lazy: importing the Celery app builds it from the settings of that moment; only the worker needs it
    from backend.worker.celery_app import celery_app

    argv = ["--quiet"] if quiet else []
    argv += [
        "worker",
        "-Q",
        ",".join(settings.queue_prefix + q for q in qs),
        "--concurrency",
        str(int(concurrency)),
        "--pool",
        pool,
        "--loglevel",
        loglevel,
        "-n",
        f"motionlab-{'-'.join(qs)}-{os.getpid()}@%h",
    ]
    if settings.embedded_broker:  # no fanout exchanges: no gossip/mingle/broadcast
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    celery_app.worker_main(argv)


def warm_imports() -> threading.Thread:
    """Import the trainer's config (torch) in the background, so the first run request does not pay for it."""

    def _import() -> None:
        try:  # in a function on purpose: this thread exists to pay for these imports off the request path
            import trainer.config
            import trainer.zoo  # noqa: F401
        except Exception:
            log.debug("warming up the trainer imports failed", exc_info=True)

    t = threading.Thread(target=_import, name="warm-imports", daemon=True)
    t.start()
    return t


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# libraries that log routine INFO on every start (alembic: its plugins and migration context, once per process)
CHATTY_LOGGERS = ("alembic", "celery", "kombu", "uvicorn", "httpx")


def configure_logging(level: int | str = logging.WARNING) -> None:
    """Console logging for a process of ``motionlab serve`` at ``level`` (WARNING unless ``--verbose``: INFO).

    The handler carries the level too, so a logger that sets itself to INFO (the trainer's, whose lines a run's log
    captures) does not reach the console above ``level``; the libraries in ``CHATTY_LOGGERS`` get ``level`` as well.
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_motionlab", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._motionlab = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    level = level.upper() if isinstance(level, str) else level
    handler.setLevel(level)
    root.setLevel(level)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def _hide_password(url: str | None) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db`` (for printing)."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def startup_line(settings: Settings, host: str, port: int) -> str:
    """The one line ``motionlab serve`` prints: where it listens, the database, the broker and the storage."""
    return (
        f"MotionLab on http://{host}:{port} (API /v1, docs /docs, UI /ui) | database "
        f"{_hide_password(settings.database_url)} | broker {_hide_password(settings.broker_url)} | storage "
        f"{settings.storage_root}"
    )


def run_api(
    host: str = "127.0.0.1", port: int = 8000, *, mount_ui: bool = False, settings: Settings | None = None
) -> None:
    """The API alone (blocks)."""
    # heavy: the FastAPI app (and torch, for the shipped table); `motionlab worker` imports this module too
    import uvicorn

    from backend.api.main import create_app
    from backend.imported_results import import_on_start

    app = create_app(settings or get_settings(), mount_ui=mount_ui)
    import_on_start(app.state.settings)
    warm_imports()
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)


class LocalWorkers:
    """Worker subprocesses of ``motionlab serve``, restarted when they die (with backoff)."""

    def __init__(self, settings: Settings, groups=LOCAL_WORKERS, *, verbose: bool = False):
        self.settings, self.groups = settings, [(list(q), pool, n) for q, pool, n in groups]
        self.verbose = verbose
        self.procs: dict[int, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="local-workers", daemon=True)

    def _spawn(self, i: int) -> None:
        env = {**os.environ, **self.settings.as_env()}
        queues, pool, concurrency = self.groups[i]
        cmd = [
            sys.executable,
            "-m",
            "backend.worker",
            "--queues",
            ",".join(queues),
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--parent-pid",  # the worker gets SIGTERM when serve dies, however it dies (no orphaned local workers)
            str(os.getpid()),
        ]
        if not self.verbose:
            cmd += ["--loglevel", "WARNING", "--quiet"]
        # own process group: Ctrl-C in the terminal reaches serve, which then stops workers in order
        self.procs[i] = subprocess.Popen(cmd, env=env, start_new_session=True)
        log.info("started local worker %s (pid %d)", queues, self.procs[i].pid)

    def start(self) -> LocalWorkers:
        for i in range(len(self.groups)):
            self._spawn(i)
        self._thread.start()
        return self

    def _supervise(self) -> None:
        backoff = {i: 1.0 for i in range(len(self.groups))}
        while not self._stop.wait(1.0):
            for i, p in list(self.procs.items()):
                if p.poll() is not None and not self._stop.is_set():
                    log.warning(
                        "local worker %s exited with %s; restarting in %.0fs",
                        self.groups[i][0],
                        p.returncode,
                        backoff[i],
                    )
                    if self._stop.wait(backoff[i]):
                        return
                    backoff[i] = min(backoff[i] * 2, 60.0)
                    self._spawn(i)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (warm shutdown: a training saves a checkpoint and hands its run back), then SIGKILL what is left
        after ``timeout``: an interrupted run resumes on the next start."""
        self._stop.set()
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def ensure_admin_key(settings: Settings) -> str | None:
    """First start: create an admin key and return it (printed once); later starts return None."""
    with session_scope(settings) as db:
        if db.scalar(select(func.count()).select_from(ApiKey)):
            return None
        _row, plaintext = create_api_key(db, "bootstrap-admin", ["admin"], pepper=settings.api_key_pepper)
        return plaintext


class _Terminated(BaseException):
    """SIGTERM reached ``run_serve``."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Terminated()


def run_serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    with_worker: bool = True,
    *,
    settings: Settings | None = None,
    verbose: bool = False,
) -> None:
    """API + web UI (``/ui`` via ``webui.mount``) + local workers, in one command (blocks).

    uvicorn shuts down gracefully on SIGTERM and then re-raises the signal, whose default action would end this
    process before it stops its workers (a training would run on, orphaned): a handler turns it into an exception,
    so SIGTERM takes the same way out as SIGINT.

    Prints the first-start admin key and one line (``startup_line``); INFO logs (alembic, Celery, uvicorn) only with
    ``verbose``."""
    # heavy: the FastAPI app (and torch, for the shipped table); `motionlab worker` imports this module too
    import uvicorn

    from backend.api.main import create_app
    from backend.imported_results import import_on_start

    configure_logging(logging.INFO if verbose else logging.WARNING)
    settings = settings or get_settings()
    private_dir(settings.storage_root)
    upgrade_to_head(settings)
    key = ensure_admin_key(settings)
    if key:
        print(f"\nMotionLab: created an admin API key (shown only now; store it):\n\n    {key}\n", flush=True)
    import_on_start(settings)  # the shipped checkpoints' Table 1, once (backend.imported_results)
    previous = (
        signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    )
    workers = None
    try:
        workers = LocalWorkers(settings, verbose=verbose).start() if with_worker else None
        app = create_app(settings, migrate=False, mount_ui=True)
        warm_imports()
        print(startup_line(settings, host, port), flush=True)
        uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning", timeout_graceful_shutdown=10)
    except _Terminated:
        log.info("SIGTERM: stopping")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the workers' stop short
        if workers is not None:
            workers.stop(settings.serve_stop_timeout_s)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
