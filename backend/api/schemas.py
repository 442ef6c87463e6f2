"""Request and response bodies of the /v1 API (pydantic). Inputs forbid unknown fields.

Static bounds here are sanity limits; the configurable ones (frames, resolution, steps, prompt length, ...) come
from ``Settings.limits`` and are checked in the routes, so the error names the configured limit.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


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
    idempotency_key: str | None = Field(None, min_length=1, max_length=200,
                                        description="re-submitting the same key returns the existing run")


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
    path: str = Field(min_length=1, max_length=4096,
                      description="absolute path of a diffusers directory on the API and worker machines")


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
    mode: Literal["sync", "job"] = "sync"
    timeout_s: float | None = Field(None, gt=0.0, description="sync mode: how long to wait before answering 202")


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
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    video: VideoOut | None = None


class GenerationList(Page):
    items: list[GenerationOut]


# --- benchmarks ---------------------------------------------------------------------------------------------


class BenchmarkCreate(In):
    name: str | None = Field(None, max_length=200)
    checkpoints: list[str] = Field(min_length=1, description="checkpoint ids/names or zoo names to compare")
    prompts: list[str] | None = Field(None, description="prompts to generate; or use `suite`")
    suite: str | None = Field(None, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$",
                              description="a named prompt suite of the evaluator")
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


# --- health -------------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
