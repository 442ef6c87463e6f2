"""Service settings for the MotionLab backend (API, workers, storage), read from ``MOTIONLAB_*`` variables.

Embedded default (nothing to install or start): SQLite at ``<storage_root>/motionlab.db`` and the serverless
SQLite broker (``motionlab+sqlite:///<storage_root>/broker.sqlite``, see ``backend.worker.sqlite_broker``).
Shared deployment: ``MOTIONLAB_DATABASE_URL=postgresql://...`` and ``MOTIONLAB_BROKER_URL=redis://...`` (or
``amqp://...``), with the storage root on a filesystem every API/worker machine mounts.

    from backend.core.config import get_settings
    s = get_settings()          # cached, from the environment
    s = Settings(storage_root="/tmp/x")   # explicit (tests)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Limits(BaseSettings):
    """Per-request limits; each is named in the error a request that exceeds it gets."""

    model_config = SettingsConfigDict(env_prefix="MOTIONLAB_LIMIT_", extra="ignore")

    max_request_bytes: int = 1_048_576  # bodies are JSON configs and prompts; nothing legitimate is larger
    max_frames: int = 121
    max_height: int = 720
    max_width: int = 1280
    max_steps: int = 100
    max_prompt_chars: int = 2000
    max_seed: int = 2**32 - 1
    max_concurrent_generations_per_key: int = 4
    max_sync_timeout_s: float = 300.0
    max_page_size: int = 500
    max_benchmark_prompts: int = 1000
    max_benchmark_checkpoints: int = 16
    # compute budget of one video: frames x height x width x sampling steps (the checkpoint's own defaults where a
    # request leaves them out); the default admits the full and tiny models' own defaults, not the largest shape at
    # the most steps
    max_generation_cost: int = Field(2_000_000_000, ge=1)
    # compute budget of one benchmark: checkpoints x prompts x seeds x the cost of one of its videos (about 600
    # full-size videos at the default)
    max_benchmark_cost: int = Field(1_000_000_000_000, ge=1)
    max_active_benchmarks_per_key: int = Field(2, ge=1)  # queued or running
    max_nproc: int = Field(64, ge=1, le=1024)  # ranks (processes, one GPU each) one training run may launch


class RateLimits(BaseSettings):
    """Request rates (``limits`` notation, e.g. ``"100/second;6000/minute"``; empty: no limit), answered 429 with
    Retry-After past them. Counts live in this process (``storage_uri="memory://"``) unless a shared store is named
    (e.g. ``redis://host:6379/1``), so several API processes share one budget."""

    model_config = SettingsConfigDict(env_prefix="MOTIONLAB_RATE_", extra="ignore")

    api_per_key: str = "6000/minute"  # /v1, per API key (per client address for requests without one)
    annotator_per_token: str = "300/minute"  # /a/<token>/..., per invitation link
    annotator_per_ip: str = "10000/minute"  # the annotator pages, per client address (many annotators share a NAT)
    storage_uri: str = "memory://"

    @field_validator("api_per_key", "annotator_per_token", "annotator_per_ip")
    @classmethod
    def _parses(cls, value: str) -> str:
        from limits import parse_many

        if value.strip():
            try:
                parse_many(value)
            except ValueError as exc:
                raise ValueError(f"not a rate such as '100/minute' or '10/second;600/minute' ({exc})") from None
        return value.strip()


class Serving(BaseSettings):
    """How a process serves generations (``trainer.serving``): request batching and the fast paths, each one
    switchable.

    Each fast path stays within the tolerance ``trainer/serving.py`` states; the video's stored sampler info
    (``fast_paths``) says which produced it.
    """

    model_config = SettingsConfigDict(env_prefix="MOTIONLAB_SERVING_", extra="ignore")

    batch_window_ms: float = Field(20.0, ge=0, le=1000)  # how long a batch's first request waits for others
    max_batch: int = Field(16, ge=1, le=256)
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # transformer + text encoder; None: float32
    vae_dtype: Literal["float32", "bfloat16", "float16"] | None = None  # the VAE; None: float32
    compile: bool = False  # torch.compile the transformer (each new shape compiles on its first request)
    channels_last_vae: bool | None = None  # None: the device's default (on for CPU, off for CUDA)
    sliced_decode: int | None = Field(None, ge=1)  # decode this many videos of a batch at a time (bounds memory)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOTIONLAB_", extra="ignore", env_nested_delimiter="__")

    storage_root: Path = Path("./storage")
    database_url: str | None = None
    broker_url: str | None = None
    # e.g. {"global_keyprefix": "motionlab:", "visibility_timeout": 43200} for Redis (JSON in the env variable)
    broker_transport_options: dict[str, Any] = Field(default_factory=dict)
    # prefixed to the queue names (train, eval, infer): several deployments (or test sessions) can share a broker
    queue_prefix: str = Field("", pattern=r"^[A-Za-z0-9_.:-]{0,64}$")
    weights_dir: Path | None = None
    # where admins may register external checkpoint directories from (empty: any absolute path)
    checkpoint_roots: list[Path] = Field(default_factory=list)
    device: str = "cpu"  # the torch device workers run on (e.g. "cuda:0" on a GPU worker)
    # GPUs a training worker launches a run's ranks on when the run does not say (its ``nproc``); None: every CUDA
    # device the worker sees. A run on the CPU defaults to one rank.
    worker_gpus: int | None = Field(None, ge=1, le=1024)

    # Celery time limits (seconds). Training stops itself cleanly (checkpoint kept) shortly before its soft limit.
    train_soft_time_limit_s: int = 7 * 24 * 3600
    eval_soft_time_limit_s: int = 12 * 3600
    infer_soft_time_limit_s: int = 900
    hard_time_limit_margin_s: int = 300

    # A task holds a lease on its row (runs/jobs/benchmarks) renewed every heartbeat_interval_s; the row is
    # abandoned when its owner is dead (same host) or its heartbeat is older than lease_timeout_s (any host). Every
    # worker sweeps for abandoned rows (and for waiting rows whose message was lost) every heartbeat_interval_s and
    # queues them again (backend.worker.recovery).
    heartbeat_interval_s: float = 5.0
    lease_timeout_s: float = 120.0
    task_max_retries: int = 5  # retries of transient errors (database, broker, network), with backoff
    max_attempts: int = 5  # claims of one row whose worker went away each time before the row is failed

    sync_generation_timeout_s: float = 60.0
    # Where sync-mode generations run. "api": in the API process -- warm models, prompt cache and request batching
    # in the serving process itself, no queue hop, so a 3-step student's latency stays its own. "worker": on an
    # infer worker through the queue (an API host without the accelerator). Job mode always goes through the queue.
    sync_generation: Literal["api", "worker"] = "api"
    sync_generation_threads: int = Field(32, ge=1, le=1024)  # sync generations the API runs at once (>= max batch)
    api_key_pepper: str | None = None  # optional HMAC key for API-key hashes; plain sha256 without it
    # an annotator's activity pushes its item's release back, but never past this long after the item was handed
    # out (or the study's own assignment_timeout_s, if longer): nobody holds an item's slot indefinitely
    study_max_hold_s: float = Field(3600.0, ge=60, le=7 * 24 * 3600)
    # an annotator's answer is accepted only once the server has served both videos of the item to that
    # assignment and the clips' length has passed since (playback events alone can be invented by a client)
    study_verify_watch: bool = True
    # how long `motionlab serve` waits for its workers to stop (a training saves a checkpoint first) before it
    # kills them
    serve_stop_timeout_s: float = Field(30.0, ge=1, le=3600)
    limits: Limits = Field(default_factory=Limits)
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    serving: Serving = Field(default_factory=Serving)

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        # absolute, so subprocess workers started elsewhere use the same root
        self.storage_root = Path(self.storage_root).expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.storage_root / 'motionlab.db'}"
        if not self.broker_url:
            self.broker_url = f"motionlab+sqlite:///{self.storage_root / 'broker.sqlite'}"
        if self.weights_dir is None:
            self.weights_dir = self.storage_root / "weights"
        self.weights_dir = Path(self.weights_dir).expanduser().resolve()
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """database_url with the installed driver (psycopg 3) made explicit for PostgreSQL."""
        url = self.database_url or ""
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def embedded_broker(self) -> bool:
        return (self.broker_url or "").startswith("motionlab+")

    def as_env(self) -> dict[str, str]:
        """The settings as MOTIONLAB_* variables, so a child worker process sees exactly these values."""
        import json

        env = {
            "MOTIONLAB_STORAGE_ROOT": str(self.storage_root),
            "MOTIONLAB_DATABASE_URL": self.database_url or "",
            "MOTIONLAB_BROKER_URL": self.broker_url or "",
            "MOTIONLAB_BROKER_TRANSPORT_OPTIONS": json.dumps(self.broker_transport_options),
            "MOTIONLAB_WEIGHTS_DIR": str(self.weights_dir),
            "MOTIONLAB_QUEUE_PREFIX": self.queue_prefix,
            "MOTIONLAB_DEVICE": self.device,
        }
        for name in (
            "train_soft_time_limit_s",
            "eval_soft_time_limit_s",
            "infer_soft_time_limit_s",
            "hard_time_limit_margin_s",
            "heartbeat_interval_s",
            "lease_timeout_s",
            "task_max_retries",
            "max_attempts",
        ):
            env[f"MOTIONLAB_{name.upper()}"] = str(getattr(self, name))
        if self.worker_gpus is not None:
            env["MOTIONLAB_WORKER_GPUS"] = str(self.worker_gpus)
        if self.api_key_pepper:
            env["MOTIONLAB_API_KEY_PEPPER"] = self.api_key_pepper
        for name, value in self.serving.model_dump().items():
            if value is not None:
                env[f"MOTIONLAB_SERVING_{name.upper()}"] = str(value)
        return env


def default_nproc(settings: Settings, device: str) -> int:
    """Ranks a run launches when it does not say: ``worker_gpus``, else every CUDA device this machine has, for a
    run on CUDA; one for a run on the CPU."""
    if not device.startswith("cuda"):
        return 1
    if settings.worker_gpus is not None:
        return settings.worker_gpus
    import torch  # lazily: the API process need not load it

    return max(1, torch.cuda.device_count())


class SettingsError(ValueError):
    """``MOTIONLAB_*`` variables that do not validate, each named with its value and what it must be."""


# the variable prefix of each settings model, as pydantic names it in an error
_ENV_PREFIX = {
    "Settings": "MOTIONLAB_",
    "Limits": "MOTIONLAB_LIMIT_",
    "Serving": "MOTIONLAB_SERVING_",
    "RateLimits": "MOTIONLAB_RATE_",
}


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process; a bad variable raises ``SettingsError`` naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        prefix = _ENV_PREFIX.get(exc.title, "MOTIONLAB_")
        problems = [
            f"{prefix}{'__'.join(str(p) for p in e['loc']).upper()}={e['input']!r}: {e['msg']}" for e in exc.errors()
        ]
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
