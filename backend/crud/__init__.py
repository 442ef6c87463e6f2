"""Database operations shared by the API routes and the worker tasks (no HTTP, no Celery here)."""
