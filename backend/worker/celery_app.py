"""The MotionLab Celery app: one app, three queues (``train``, ``eval``, ``infer``), tasks that take ids.

    celery -A backend.worker.celery_app worker -Q train --concurrency 1      # what run_worker() starts
    make_celery(settings).send_task("motionlab.train_run", args=[run_id], queue="train")

Who runs a row, and when abandoned work is taken up again, is decided in one place: the row's lease in the database
(``backend.crud.leases``). A message is only a wake-up hint for its row: a task claims the row, and a duplicate
message finds it held or finished and does nothing (``backend.worker.leased``). Every worker sweeps for rows whose
owner is gone (dead by /proc on this host at once, silent for ``lease_timeout_s`` anywhere) and for waiting rows
whose hint was lost, and hints them again (``backend.worker.recovery``). So a SIGKILLed worker's work resumes on
any broker, whether or not the broker ever redelivers its message.

Transport settings: ``acks_late`` (a message is acked when its task has finished), reject-on-worker-lost (a pool
process that dies mid-task sends its message back), prefetch 1 (a worker holds at most one message per pool
process, so a long training run never sits on messages other workers could take). A redelivery these cause is one
more hint; nothing depends on it.
"""

from __future__ import annotations

import os
import signal

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutting_down
from kombu import Exchange, Queue

from backend.core.config import Settings, get_settings
from backend.db.migrate import upgrade_to_head
from backend.db.session import dispose_engines
from backend.worker import shutdown, sqlite_broker
from backend.worker.dispatch import QUEUES, TASK_QUEUES, queue_name
from backend.worker.recovery import StaleSweeper
from trainer.parent_death import die_with_parent

_MAIN_PID = os.getpid()  # the worker's main process (this module is imported before the pool forks)


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    sqlite_broker.register()
    app = Celery("motionlab", broker=settings.broker_url, include=["backend.worker.tasks"])
    pre = settings.queue_prefix
    exchange = Exchange(f"{pre}motionlab", type="direct")
    app.conf.update(
        task_queues=[Queue(pre + q, exchange, routing_key=pre + q) for q in QUEUES],
        task_default_queue=pre + "infer",
        task_default_exchange=f"{pre}motionlab",
        task_default_routing_key=pre + "infer",
        task_routes={name: {"queue": pre + q, "routing_key": pre + q} for name, q in TASK_QUEUES.items()},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # results live in the database rows
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=dict(settings.broker_transport_options),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        worker_send_task_events=False,
        worker_enable_remote_control=not settings.embedded_broker,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    app.conf.motionlab_settings = settings
    return app


@worker_process_init.connect
def _on_pool_process_start(**_kwargs) -> None:
    # a killed worker never leaves an orphan still training while its message is delivered to another worker
    die_with_parent(_MAIN_PID, signal.SIGKILL)
    dispose_engines()  # never share the parent's pooled connections across fork


@worker_shutting_down.connect
def _on_worker_shutting_down(**_kwargs) -> None:
    shutdown.forward_to_pool()  # a training saves a checkpoint and hands its run back instead of running on


@worker_init.connect
def _on_worker_start(**_kwargs) -> None:
    upgrade_to_head(get_settings())  # a worker started with plain `celery worker` still gets the schema


@worker_ready.connect
def _on_worker_ready(sender=None, **_kwargs) -> None:
    app = sender.app if sender is not None else celery_app
    StaleSweeper(app.conf.get("motionlab_settings") or get_settings(), app).start()  # the app's own settings


celery_app = make_celery()
app = celery_app  # `celery -A backend.worker.celery_app` finds `app` / `celery_app`

__all__ = ["QUEUES", "TASK_QUEUES", "app", "celery_app", "make_celery", "queue_name"]
