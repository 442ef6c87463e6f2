"""Request and response bodies of the /v1 API (pydantic). Inputs forbid unknown fields.

Static bounds here are sanity limits; the configurable ones (frames, resolution, steps, prompt length, ...) come
from ``Settings.limits`` and are checked in the routes, so the error names the configured limit.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from trainer.flowmo import DEFAULT_ETA, DEFAULT_ITERATIONS, ETA_MAX, ITERATIONS_MAX

MIN_TIMEOUT_S = 0.1  # a sync generation's shortest wait (answer 202 and poll); the longest is a setting


def nul_path(value: Any, path: str, depth: int = 0) -> str | None:
    """The path of the first string (or dict key) in ``value`` holding a NUL character; None when there is none."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if depth > 50:  # deeper JSON never gets stored: the routes refuse configs nested more than 20 levels
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and "\x00" in k:
                return path
            found = nul_path(v, f"{path}.{k}", depth + 1)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = nul_path(v, f"{path}[{i}]", depth + 1)
            if found:
                return found
    return None


class In(BaseModel):
    """A request body: unknown fields are rejected, and so is a NUL character in any text (PostgreSQL cannot store
    one in a text column, and no prompt, name or config needs one)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any, info: ValidationInfo) -> Any:
        field = info.field_name or "body"
        where = nul_path(value, field)
        if where == field:
            raise PydanticCustomError("string_nul", "must not contain NUL characters (\\x00)")
        if where:
            raise PydanticCustomError(
                "string_nul", "must not contain NUL characters (\\x00; found in {where})", {"where": where}
            )
        return value


class Out(BaseModel):
    """A response body. Times are UTC with their offset (SQLite hands them back naive), as RFC 3339 wants."""

    model_config = ConfigDict(from_attributes=True)

    @field_validator("*")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class Page(Out):
    total: int
    limit: int
    offset: int


# --- keys ---------------------------------------------------------------------------------------------------


class KeyCreate(In):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[Literal["read", "generate", "train", "admin"]] = Field(min_length=1, max_length=4)


class KeyOut(Out):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: dt.datetime
    last_used_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="The API key itself. Shown only in this response; store it now.")


class KeyList(Out):
    items: list[KeyOut]


# --- runs ---------------------------------------------------------------------------------------------------


class RunCreate(In):
    method: str = Field(min_length=1, max_length=40, description="sft | dmd | mogan | vdot | dfdpo")
    preset: str = Field("tiny", min_length=1, max_length=40, pattern=r"^[a-z0-9_-]+$")
    config: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset's config")
    name: str | None = Field(None, max_length=200)
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="re-submitting the same key returns the existing run"
    )
    # an integer (no "2", 2.0 or true); the upper bound is the configurable limits.max_nproc, checked in the route
    nproc: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="ranks (processes, one GPU each) to train on; default: every GPU of the "
        "worker (MOTIONLAB_WORKER_GPUS), one rank for a run on the CPU",
    )


class RunOut(Out):
    id: str
    name: str | None
    method: str
    preset: str
    config: dict[str, Any]
    status: str
    progress: float
    step: int
    total_steps: int | None
    nproc: int | None = Field(None, description="ranks the run trains on; null until a worker picks its default")
    metrics: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class RunDetail(RunOut):
    resolved_config: dict[str, Any] | None


class RunList(Page):
    items: list[RunOut]


class MetricOut(Out):
    step: int
    values: dict[str, Any]


class MetricList(Out):
    run_id: str
    items: list[MetricOut]


class LogOut(Out):
    id: int
    level: str
    message: str
    created_at: dt.datetime


class LogList(Out):
    run_id: str
    items: list[LogOut]


# --- checkpoints --------------------------------------------------------------------------------------------


class CheckpointRegister(In):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="absolute path of a diffusers directory on the API and worker machines",
    )


class CheckpointOut(Out):
    id: str
    name: str
    source: str
    run_id: str | None = None
    step: int | None = None
    info: dict[str, Any] | None = None
    created_at: dt.datetime | None = None


class CheckpointList(Out):
    items: list[CheckpointOut]


# --- datasets -----------------------------------------------------------------------------------------------


class DatasetRegister(In):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="absolute path of a directory of training videos on the API and worker machines",
    )


class DatasetOut(Out):
    id: str
    name: str
    path: str | None = Field(None, description="shown to admin keys only")
    created_at: dt.datetime


class DatasetList(Out):
    items: list[DatasetOut]


# --- generations --------------------------------------------------------------------------------------------


class GenerationCreate(In):
    checkpoint: str = Field(min_length=1, max_length=200, description="checkpoint id or name, or a zoo name")
    prompt: str = Field(min_length=1)
    seed: int = 0
    steps: int | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    guidance: float | None = Field(None, ge=0.0, le=50.0)
    fps: float | None = Field(None, gt=0.0, le=120.0)
    sampler: Literal["default", "flowmo"] = Field(
        "default",
        description="default: the checkpoint's own sampler; flowmo: the same with FlowMo guidance "
        "(training-free; one more forward and one backward pass per guided step and "
        "iteration)",
    )
    flowmo_eta: float | None = Field(
        None,
        allow_inf_nan=False,
        description=f"FlowMo: step size of its gradient step on the latent, in (0, "
        f"{ETA_MAX:g}] (default {DEFAULT_ETA:g})",
    )
    flowmo_start: int | None = Field(None, description="FlowMo: first guided sampling step, 0-based (default 0)")
    flowmo_stop: int | None = Field(
        None,
        description="FlowMo: guided steps end before this one, at most the "
        "sampler's step count (default: the first quarter of the "
        "steps, rounded up)",
    )
    flowmo_iterations: int | None = Field(
        None, description=f"FlowMo: gradient steps per guided step, 1-{ITERATIONS_MAX} (default {DEFAULT_ITERATIONS})"
    )
    mode: Literal["sync", "job"] = "sync"
    timeout_s: float | None = Field(
        None,
        ge=MIN_TIMEOUT_S,
        allow_inf_nan=False,
        description="sync mode: how long to wait before answering 202 (s; at most limits.max_sync_timeout_s)",
    )


class VideoOut(Out):
    id: str
    checkpoint: str
    prompt: str
    seed: int
    num_frames: int
    height: int
    width: int
    fps: float
    size_bytes: int
    sha256: str
    url: str
    created_at: dt.datetime


class GenerationOut(Out):
    id: str
    status: str
    progress: float
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    cancel_requested: bool = False
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    video: VideoOut | None = None


class GenerationList(Page):
    items: list[GenerationOut]


# --- benchmarks ---------------------------------------------------------------------------------------------


class BenchmarkCreate(In):
    name: str | None = Field(None, max_length=200)
    checkpoints: list[str] = Field(
        min_length=1,
        description="checkpoint ids/names or zoo names to compare; "
        "NAME@flowmo: NAME sampled with FlowMo guidance (default settings), its own row",
    )
    prompts: list[str] | None = Field(None, description="prompts to generate; or use `suite`")
    suite: str | None = Field(
        None,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="a named prompt suite of the evaluator (GET /v1/benchmarks/options), e.g. "
        "tiny, vbench-motion, vbench:dynamic_degree",
    )
    metrics: list[str] | None = Field(None, max_length=64)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=16)
    steps: int | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="evaluator options (backends, ...)")


class BenchmarkOut(Out):
    id: str
    name: str | None
    source: Literal["measured", "imported"] = Field(
        "measured",
        description="measured: scored by this server's workers; imported: read from a file shipped with "
        "the checkpoints (config.source_file), with no scores or videos",
    )
    status: str
    progress: float
    config: dict[str, Any]
    summary: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class BenchmarkList(Page):
    items: list[BenchmarkOut]


class SuiteInfo(BaseModel):
    name: str
    prompts: int = Field(description="prompts in the suite (options.suite_size takes the first N)")
    description: str
    metrics: list[str] = Field(description="metrics this suite adds to the backend's (conformance: its checks)")


class BackendInfo(BaseModel):
    name: str
    available: bool
    reason: str | None = Field(None, description="why it cannot be used here, when it cannot")
    metrics: list[str] = Field(description="the metrics it implements")


class BenchmarkOptions(BaseModel):
    """What a benchmark may ask for on this server (the web UI's Run benchmark form is built from it)."""

    suites: list[SuiteInfo]
    backends: list[BackendInfo]
    max_checkpoints: int
    max_seeds: int
    max_seed: int
    max_prompts: int


class ScoreOut(Out):
    checkpoint: str
    metric: str
    value: float | None
    backend: str
    prompt: str | None
    seed: int | None
    extra: dict[str, Any] | None


class BenchmarkReport(Out):
    benchmark: BenchmarkOut
    report: dict[str, Any] | None
    scores: list[ScoreOut]


# --- errors -------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    limit: Any = None
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """Every error response (``backend.api.errors``)."""

    error: ErrorDetail


# --- health -------------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, Literal["ok", "unavailable"]]
