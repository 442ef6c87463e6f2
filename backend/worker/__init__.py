"""Celery app, tasks and the embedded broker. Start a worker with ``python -m backend.worker --queues train``."""
