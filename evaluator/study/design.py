"""Design of a human preference study (pure): its configuration, its items, its gold items, left/right sides.

A study compares two or more checkpoints on the same prompts and seeds (the benchmark runner samples every
model with the same seeds, so a pair differs by the model only). Two modes:

- ``pairwise`` (MoGAN): an item is two videos of one (prompt, seed) from two models; every question is answered
  left / tie / right. Items for every pair of the study's models (or the pairs given).
- ``likert`` (DF-DPO, VDOT): an item is one video; every question is rated 1-5.

Gold (attention-check) items put a real video against a temporally distorted copy of itself
(``trainer.data.distortions``: ``Reverse`` or ``BlockShuffle``), so the expected answer is known: the original
(``GOLD_ORIGINAL``) is preferred on the questions in ``gold.expect`` (motion quality by default).

    cfg = validate_config({"mode": "pairwise", "k": 5, "gold": {"count": 4}})
    videos = benchmark_videos(records, out_dir)          # runner layout: out/videos/<model>/<hash>_s<seed>.mp4
    items = build_items(videos, cfg)                      # [ItemSpec], positions randomized by cfg["seed"]
    sources = pick_gold_sources(videos, 4, seed=0)
    gold_frames = make_gold_video(frames, "shuffle", seed=1)
    swap = side_swap(cfg["seed"], annotator_id, item_id)  # True: video A is shown on the right

Everything here is deterministic given its seed and touches no database. Tests:
``python -m pytest tests/backend/test_study_design.py -q``.
"""

from __future__ import annotations

import hashlib
import itertools
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from evaluator.reports import SET_PROMPT

Mode = Literal["pairwise", "likert"]
MODES: tuple[str, ...] = typing.get_args(Mode)
GOLD_ORIGINAL = "gold:original"
GoldDistortion = Literal["reverse", "shuffle"]
GOLD_DISTORTIONS: tuple[str, ...] = typing.get_args(GoldDistortion)
LIKERT_SCALE = (1, 5)
ID_RE = r"^[a-z][a-z0-9_]{0,39}$"

#: The three questions of MoGAN Sec. 6.3 / Fig. 5; ``prompt`` is shown in pairwise mode, ``likert`` in Likert mode.
DEFAULT_QUESTIONS: tuple[dict[str, str], ...] = (
    {
        "id": "visual_quality",
        "label": "Visual quality",
        "prompt": "Which video looks better (sharpness, detail, fewer artifacts)?",
        "likert": "How good is the visual quality (sharpness, detail, artifacts)?",
    },
    {
        "id": "motion_quality",
        "label": "Motion quality",
        "prompt": "Which video moves more naturally and smoothly?",
        "likert": "How natural and smooth is the motion?",
    },
    {
        "id": "text_alignment",
        "label": "Text alignment",
        "prompt": "Which video matches the text prompt better?",
        "likert": "How well does the video match the text prompt?",
    },
)

DEFAULT_INSTRUCTIONS = (
    "You will see short generated videos and the text prompt they were made from. Watch each video to the end "
    "(the answer buttons unlock once every video has played through), then answer each question. There are no "
    "right or wrong answers except on a few check items; answer with your honest impression. 'Tie' is fine when "
    "you cannot tell the videos apart on a question."
)

# limits of a study configuration (each is named in the error of a config that exceeds it)
LIMITS = {
    "k": (1, 50),
    "items_per_annotator": (1, 10_000),
    "gold.count": (0, 500),
    "gold_every": (2, 1000),
    "time_limit_s": (5, 24 * 3600),
    "assignment_timeout_s": (30, 7 * 24 * 3600),
    "max_items": (1, 20_000),
    "questions": (1, 10),
    "models": (1, 16),
    "seed": (0, 2**32 - 1),
    "gold.max_frac": (0.05, 1.0),
    "min_watch_fraction": (0.5, 1.0),
    "instructions": (0, 5000),
}


class DesignError(ValueError):
    """A study configuration or video set that cannot make a study; ``field`` names the offending field."""

    def __init__(self, field: str, message: str, limit: Any = None):
        self.field, self.detail, self.limit = field, message, limit
        super().__init__(f"{field}: {message}")

    def __reduce__(self):  # picklable, like trainer.config.ConfigError
        return type(self), (self.field, self.detail, self.limit)


@dataclass(frozen=True)
class VideoRef:
    """One video available to the study: which model made it, from which prompt and seed; ``key`` is whatever
    locates it for the caller (a file path, a video id)."""

    model: str
    prompt: str
    seed: int
    key: str


@dataclass(frozen=True)
class ItemSpec:
    """One study item: a pair of videos (pairwise; A = ``videos[0]``) or one video (Likert)."""

    position: int
    prompt: str
    seed: int | None
    videos: tuple[VideoRef, ...]
    gold: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def systems(self) -> tuple[str, ...]:
        return tuple(v.model for v in self.videos)


# --- configuration ---------------------------------------------------------------------------------------------


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer option also takes a whole float (5.0); strict otherwise, like every option (no "5", no true).
Int = Annotated[int, BeforeValidator(_whole)]


def _bounded(name: str, default: Any = None, **kw: Any) -> Any:
    """A field whose value must lie in ``LIMITS[name]``."""
    lo, hi = LIMITS[name]
    return Field(default, ge=lo, le=hi, **kw)


def _sized(name: str, default: Any = None, **kw: Any) -> Any:
    """A field whose length must lie in ``LIMITS[name]``."""
    lo, hi = LIMITS[name]
    return Field(default, min_length=lo, max_length=hi, **kw)


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


_BUILT_IN = {q["id"]: q for q in DEFAULT_QUESTIONS}


class Question(_Options):
    """A question: a built-in one named by its id, or ``{id, label?, prompt?, likert?}`` (texts not given are the
    built-in question's, or generic ones)."""

    id: str = Field(pattern=ID_RE)
    label: str | None = Field(None, min_length=1, max_length=300)
    prompt: str | None = Field(None, min_length=1, max_length=300)
    likert: str | None = Field(None, min_length=1, max_length=300)

    @model_validator(mode="before")
    @classmethod
    def _by_id(cls, raw: Any) -> Any:
        if not isinstance(raw, str):
            return raw
        if raw not in _BUILT_IN:
            raise ValueError(
                f"unknown question {raw!r}; built in: {sorted(_BUILT_IN)} (or give {{'id', 'label', 'prompt'}})"
            )
        return {"id": raw}

    def resolved(self) -> dict[str, str]:
        words = self.id.replace("_", " ")
        out = dict(
            _BUILT_IN.get(self.id)
            or {
                "id": self.id,
                "label": words.capitalize(),
                "prompt": f"Which video is better: {words}?",
                "likert": f"Rate the video: {words}",
            }
        )
        out.update(self.model_dump(exclude_none=True))
        return out


class Gold(_Options):
    count: Int = _bounded("gold.count", 0)
    distortion: GoldDistortion = "shuffle"
    max_frac: float = _bounded("gold.max_frac", 0.5, allow_inf_nan=False)
    # "study": the study's own videos; "synthetic": procedurally generated real motion clips
    source: Literal["study", "synthetic"] = "study"
    # the questions on which the original is expected to win (default: motion quality, or the first question)
    expect: list[str] | None = Field(None, min_length=1, strict=False)


def _two_models(pair: tuple[str, str]) -> tuple[str, str]:
    if pair[0] == pair[1]:
        raise ValueError("must be two different model names")
    return pair


ModelName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Pair = Annotated[tuple[str, str], Strict(False), AfterValidator(_two_models)]


class StudyConfig(_Options):
    """The options of a study as the user gives them (see ``validate_config``); bounds from ``LIMITS``."""

    mode: Mode = "pairwise"
    questions: list[Question] | None = _sized("questions", strict=False)  # None: DEFAULT_QUESTIONS
    k: Int = _bounded("k", 5)
    items_per_annotator: Int | None = _bounded("items_per_annotator")
    time_limit_s: Int | None = _bounded("time_limit_s")
    assignment_timeout_s: Int = _bounded("assignment_timeout_s", 1800)
    max_items: Int | None = _bounded("max_items")
    seed: Int = _bounded("seed", 0)
    min_watch_fraction: float = _bounded("min_watch_fraction", 0.97, allow_inf_nan=False)
    instructions: str = _sized("instructions", DEFAULT_INSTRUCTIONS)
    models: list[ModelName] | None = _sized("models", strict=False)
    pairs: list[Pair] | None = Field(None, min_length=1, strict=False)
    gold: Gold | None = None
    gold_every: Int | None = _bounded("gold_every")  # default 5 with gold items

    @field_validator("questions")
    @classmethod
    def _unique_ids(cls, questions: list[Question] | None) -> list[Question] | None:
        ids = [q.id for q in questions or ()]
        if len(set(ids)) != len(ids):
            raise ValueError(f"question ids must be unique (got {ids})")
        return questions

    @field_validator("models")
    @classmethod
    def _distinct_models(cls, models: list[str] | None) -> list[str] | None:
        if models is not None and len(set(models)) != len(models):
            raise ValueError("must not repeat a model")
        if any(m.startswith("gold:") for m in models or ()):
            raise ValueError("names starting with 'gold:' are reserved for gold items")
        return models


def validate_config(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """A complete, JSON-able study configuration from the user's (partial) one; DesignError names a bad field.

    Keys: mode, questions, k (annotations per item, default 5), items_per_annotator (quota, default: all),
    gold {count, distortion, max_frac, source, expect}, gold_every (a gold item every n assignments),
    time_limit_s (answer within this long of getting the item; optional), assignment_timeout_s (an abandoned
    item is released after this much inactivity), models (subset and order), pairs, max_items, seed,
    min_watch_fraction (of each video's duration that must have played, default 0.97), instructions.
    """
    try:
        opts = StudyConfig.model_validate(dict(raw or {}))
    except ValidationError as exc:
        errors = exc.errors()
        raise _design_error(next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])) from None
    questions = (
        [q.resolved() for q in opts.questions] if opts.questions is not None else [dict(q) for q in DEFAULT_QUESTIONS]
    )
    for i, pair in enumerate(opts.pairs or ()):
        if opts.mode != "pairwise":
            raise DesignError("pairs", "only pairwise studies have pairs")
        if opts.models is not None and not set(pair) <= set(opts.models):
            raise DesignError(f"pairs[{i}]", f"names a model outside models {opts.models}")
    gold = opts.gold or Gold()
    if gold.count and opts.mode != "pairwise":
        raise DesignError("gold.count", "gold items (original vs distorted copy) need a pairwise study")
    q_ids = [q["id"] for q in questions]
    expect = gold.expect if gold.expect is not None else ["motion_quality"] if "motion_quality" in q_ids else q_ids[:1]
    if any(q not in q_ids for q in expect):
        raise DesignError(
            "gold.expect", f"must list the questions on which the original is expected to win, from {q_ids}"
        )
    cfg = opts.model_dump()
    cfg.update(
        questions=questions,
        pairs=None if opts.pairs is None else [list(p) for p in opts.pairs],
        gold={**gold.model_dump(), "expect": list(dict.fromkeys(expect))},
        gold_every=(opts.gold_every or 5) if gold.count else None,
    )
    if opts.time_limit_s is not None and opts.time_limit_s > opts.assignment_timeout_s:
        cfg["assignment_timeout_s"] = opts.time_limit_s  # never release an item before its time limit
    return cfg


# pydantic error type -> what the option must be
_MUST_BE = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a number",
    "string_type": "text",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _design_error(err: Mapping[str, Any]) -> DesignError:
    """A pydantic error of ``StudyConfig`` as a DesignError naming the field, and the limit it exceeds."""
    loc, kind, value, ctx = err["loc"], err["type"], err.get("input"), err.get("ctx") or {}
    field_name = ""
    for part in loc:
        field_name += f"[{part}]" if isinstance(part, int) else f".{part}" if field_name else str(part)
    field_name = field_name or "config"
    lo, hi = LIMITS.get(field_name, (None, None))
    if kind == "extra_forbidden":
        section = next((p for p in reversed(loc[:-1]) if isinstance(p, str)), None)
        owner = {"gold": Gold, "questions": Question}.get(section, StudyConfig)
        return DesignError(field_name, f"unknown option; allowed: {sorted(owner.model_fields)}")
    if kind in ("greater_than_equal", "less_than_equal"):
        return DesignError(field_name, f"must be in [{lo}, {hi}] (got {value})", limit=ctx.get("ge", ctx.get("le")))
    if kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        n = ctx.get("min_length", ctx.get("max_length"))
        span = f"{lo}-{hi}" if lo is not None else f"{'at least' if kind.endswith('short') else 'at most'} {n}"
        unit = "character(s)" if kind.startswith("string") else "item(s)"
        return DesignError(field_name, f"must have {span} {unit} (got {len(value)})", limit=n)
    if kind in _MUST_BE:
        within = f" in [{lo}, {hi}]" if lo is not None and kind.startswith(("int", "float", "finite")) else ""
        return DesignError(field_name, f"must be {_MUST_BE[kind]}{within} (got {value!r})")
    if kind == "literal_error":
        return DesignError(field_name, f"must be {ctx['expected']} (got {value!r})")
    if kind == "string_pattern_mismatch":
        return DesignError(field_name, f"must match {ctx['pattern']}")
    if kind == "value_error":
        return DesignError(field_name, str(ctx["error"]))
    return DesignError(field_name, f"{err['msg']} (got {value!r})")


# --- videos and items -------------------------------------------------------------------------------------------


def benchmark_video_path(out_dir: str | Path, model: str, prompt: str, seed: int) -> Path:
    """Where ``evaluator.benchmark.runner`` writes a video: ``out/videos/<model>/<sha1(prompt)[:10]>_s<seed>.mp4``."""
    from evaluator.benchmark.runner import video_path

    return video_path(Path(out_dir), model, prompt, int(seed))


def benchmark_videos(records: Iterable[Mapping[str, Any]], out_dir: str | Path) -> list[VideoRef]:
    """The videos of a benchmark run: one per (model, prompt, seed) in its records whose file exists.

    ``records`` are the runner's score records (``records.jsonl`` lines or the scores table); aggregate records
    (prompt "(all prompts)") are skipped. ``key`` is the file path.
    """
    seen: dict[tuple[str, str, int], VideoRef] = {}
    for r in records:
        prompt = r.get("prompt")
        if not prompt or prompt == SET_PROMPT or r.get("seed") is None:
            continue
        k = (str(r["model"]), str(prompt), int(r["seed"]))
        if k in seen:
            continue
        path = benchmark_video_path(out_dir, *k)
        if path.is_file():
            seen[k] = VideoRef(k[0], k[1], k[2], str(path))
    return sorted(seen.values(), key=lambda v: (v.model, v.prompt, v.seed))


def read_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a benchmark output folder (``records.jsonl``); [] when there are none."""
    import json

    path = Path(out_dir) / "records.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_videos(videos: Sequence[VideoRef]) -> None:
    seen = set()
    for i, v in enumerate(videos):
        if not isinstance(v, VideoRef):
            raise DesignError(f"videos[{i}]", f"must be a VideoRef, got {type(v).__name__}")
        if v.model.startswith("gold:"):
            raise DesignError(f"videos[{i}].model", "names starting with 'gold:' are reserved for gold items")
        k = (v.model, v.prompt, v.seed)
        if k in seen:
            raise DesignError(
                f"videos[{i}]", f"duplicate video for model {v.model!r}, seed {v.seed} and prompt {v.prompt[:60]!r}"
            )
        seen.add(k)


def study_models(videos: Sequence[VideoRef], cfg: Mapping[str, Any]) -> list[str]:
    """The models of the study, in order: ``cfg["models"]`` (each must have videos) or every model, sorted."""
    have = sorted({v.model for v in videos})
    models = cfg.get("models") or have
    missing = [m for m in models if m not in have]
    if missing:
        raise DesignError("models", f"no videos for model(s) {missing}; the videos have {have}")
    if cfg["mode"] == "pairwise" and len(models) < 2:
        raise DesignError("models", f"a pairwise study needs at least 2 models with videos (got {models})")
    return list(models)


def build_items(videos: Sequence[VideoRef], cfg: Mapping[str, Any]) -> list[ItemSpec]:
    """The study's regular items from its videos, in a random (seeded) presentation order.

    Pairwise: for every pair of models (``cfg["pairs"]`` or all pairs, in model order) and every (prompt, seed)
    both models have, one item with A = the pair's first model. Likert: one item per video of the study's
    models. ``cfg["max_items"]`` keeps a seeded random subset. Raises DesignError when no item can be made.
    """
    _check_videos(videos)
    models = study_models(videos, cfg)
    by_key: dict[tuple[str, int], dict[str, VideoRef]] = {}
    for v in videos:
        if v.model in models:
            by_key.setdefault((v.prompt, v.seed), {})[v.model] = v
    keys = sorted(by_key)
    specs: list[tuple[str, int, tuple[VideoRef, ...]]] = []
    if cfg["mode"] == "pairwise":
        pairs = [tuple(p) for p in cfg.get("pairs") or itertools.combinations(models, 2)]
        for a, b in pairs:
            for prompt, seed in keys:
                have = by_key[(prompt, seed)]
                if a in have and b in have:
                    specs.append((prompt, seed, (have[a], have[b])))
    else:
        for prompt, seed in keys:
            for m in models:
                if m in by_key[(prompt, seed)]:
                    specs.append((prompt, seed, (by_key[(prompt, seed)][m],)))
    if not specs:
        raise DesignError(
            "videos",
            "no items: no (prompt, seed) has videos from both models of any pair"
            if cfg["mode"] == "pairwise"
            else "no videos of the study's models",
        )
    rng = np.random.default_rng(cfg.get("seed", 0))
    if cfg.get("max_items") and len(specs) > cfg["max_items"]:
        keep = np.sort(rng.choice(len(specs), size=cfg["max_items"], replace=False))
        specs = [specs[i] for i in keep]
    order = rng.permutation(len(specs))
    return [ItemSpec(position=int(pos), prompt=p, seed=s, videos=vs) for pos, (p, s, vs) in zip(order, specs)]


def pick_gold_sources(videos: Sequence[VideoRef], count: int, seed: int = 0) -> list[VideoRef]:
    """``count`` distinct videos to make gold items from, spread over models and prompts (round robin over
    models, each model's videos in a seeded random order). Raises DesignError when there are too few."""
    if count <= 0:
        return []
    if count > len(videos):
        raise DesignError(
            "gold.count", f"must be at most the number of source videos ({len(videos)}); got {count}", limit=len(videos)
        )
    rng = np.random.default_rng(seed + 7919)  # a stream apart from build_items'
    per_model: dict[str, list[VideoRef]] = {}
    for v in sorted(videos, key=lambda v: (v.model, v.prompt, v.seed)):
        per_model.setdefault(v.model, []).append(v)
    queues = [[vs[i] for i in rng.permutation(len(vs))] for _, vs in sorted(per_model.items())]
    out: list[VideoRef] = []
    used_prompts: set[str] = set()
    while len(out) < count:
        progressed = False
        for q in queues:
            if len(out) >= count or not q:
                continue
            # prefer a prompt not used yet, so gold items are not all the same scene
            idx = next((i for i, v in enumerate(q) if v.prompt not in used_prompts), 0)
            v = q.pop(idx)
            out.append(v)
            used_prompts.add(v.prompt)
            progressed = True
        if not progressed:
            break
    return out


def make_gold_video(frames: np.ndarray, distortion: str, seed: int, max_frac: float = 0.5) -> np.ndarray:
    """The distorted copy of a gold item's original: ``Reverse`` or ``BlockShuffle(max_frac)`` from
    ``trainer.data.distortions`` (uint8 ``[T, H, W, 3]`` in and out; the input is not modified)."""
    from trainer.data.distortions import BlockShuffle, Reverse

    if distortion not in GOLD_DISTORTIONS:
        raise DesignError("gold.distortion", f"must be one of {list(GOLD_DISTORTIONS)}")
    op = Reverse() if distortion == "reverse" else BlockShuffle(max_frac)
    out = op(frames, np.random.default_rng(seed))
    if np.array_equal(out, frames):
        # a palindromic or static clip reversed is itself: the answer would not be known
        raise DesignError(
            "gold",
            f"the {distortion} of this video equals the video (static or palindromic clip); pick another source video",
        )
    return out


def gold_item(
    position: int, original: VideoRef, distorted_key: str, distortion: str, expect: Sequence[str]
) -> ItemSpec:
    """A gold item: A = the original (system ``GOLD_ORIGINAL``), B = its distorted copy (``gold:<distortion>``);
    ``gold["expect"]`` maps each checked question to the system that must win."""
    distorted = VideoRef(f"gold:{distortion}", original.prompt, original.seed, distorted_key)
    original = VideoRef(GOLD_ORIGINAL, original.prompt, original.seed, original.key)
    return ItemSpec(
        position=position,
        prompt=original.prompt,
        seed=original.seed,
        videos=(original, distorted),
        gold={"expect": {q: GOLD_ORIGINAL for q in expect}, "distortion": distortion},
    )


def side_swap(seed: int, annotator_id: str, item_id: str) -> bool:
    """Whether video A goes on the right for this annotator and item: a fair coin that is reproducible from the
    study seed (recorded with the assignment anyway)."""
    digest = hashlib.sha256(f"{seed}:{annotator_id}:{item_id}".encode()).digest()
    return bool(digest[0] & 1)


__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "DEFAULT_QUESTIONS",
    "GOLD_DISTORTIONS",
    "GOLD_ORIGINAL",
    "LIKERT_SCALE",
    "LIMITS",
    "MODES",
    "DesignError",
    "ItemSpec",
    "VideoRef",
    "benchmark_video_path",
    "benchmark_videos",
    "build_items",
    "gold_item",
    "make_gold_video",
    "pick_gold_sources",
    "read_records",
    "side_swap",
    "study_models",
    "validate_config",
]
