"""Publishing task messages: one place that knows task names, queues and the publish retry policy.

The Celery app (``backend.worker.celery_app``) declares its queues and routes from ``QUEUES`` and ``TASK_QUEUES``
here, so publishing needs nothing of the app module.
"""

from __future__ import annotations

from celery import Celery

TRAIN, EVALUATE, GENERATE, PING = "motionlab.train_run", "motionlab.evaluate", "motionlab.generate", "motionlab.ping"
QUEUES = ("train", "eval", "infer")
TASK_QUEUES = {TRAIN: "train", EVALUATE: "eval", GENERATE: "infer", PING: "infer"}


def queue_name(app: Celery, queue: str) -> str:
    """The broker-level name of a logical queue (``train`` -> ``<queue_prefix>train``)."""
    return app.conf.motionlab_settings.queue_prefix + queue


class BrokerUnavailable(RuntimeError):
    pass


def enqueue(celery: Celery, task_name: str, row_id: str, *, countdown: float | None = None) -> str:
    """Send ``task_name(row_id)`` to its queue; returns the Celery task id. Raises BrokerUnavailable."""
    queue = queue_name(celery, TASK_QUEUES[task_name])
    try:
        result = celery.send_task(
            task_name,
            args=[row_id],
            queue=queue,
            routing_key=queue,
            countdown=countdown,
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0},
        )
    except Exception as exc:  # kombu/redis/amqp/sqlite each raise their own connection errors
        raise BrokerUnavailable(f"broker unavailable: {type(exc).__name__}: {exc}") from exc
    return result.id
