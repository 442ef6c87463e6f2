"""Design of a human preference study (pure): its configuration, its items, its gold items, left/right sides.

A study compares two or more checkpoints on the same prompts and seeds (the benchmark runner samples every
model with the same seeds, so a pair differs by the model only). Two modes (METHODS.md "Human preference study"):

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
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("pairwise", "likert")
GOLD_ORIGINAL = "gold:original"
GOLD_DISTORTIONS = ("reverse", "shuffle")
LIKERT_SCALE = (1, 5)
ID_RE = r"^[a-z][a-z0-9_]{0,39}$"

#: The three questions of MoGAN Sec. 6.3 / Fig. 5; ``prompt`` is shown in pairwise mode, ``likert`` in Likert mode.
DEFAULT_QUESTIONS: tuple[dict[str, str], ...] = (
    {"id": "visual_quality", "label": "Visual quality",
     "prompt": "Which video looks better (sharpness, detail, fewer artifacts)?",
     "likert": "How good is the visual quality (sharpness, detail, artifacts)?"},
    {"id": "motion_quality", "label": "Motion quality",
     "prompt": "Which video moves more naturally and smoothly?",
     "likert": "How natural and smooth is the motion?"},
    {"id": "text_alignment", "label": "Text alignment",
     "prompt": "Which video matches the text prompt better?",
     "likert": "How well does the video match the text prompt?"},
)

DEFAULT_INSTRUCTIONS = (
    "You will see short generated videos and the text prompt they were made from. Watch each video to the end "
    "(the answer buttons unlock once every video has played through), then answer each question. There are no "
    "right or wrong answers except on a few check items; answer with your honest impression. 'Tie' is fine when "
    "you cannot tell the videos apart on a question.")

# limits of a study configuration (each is named in the error of a config that exceeds it)
LIMITS = {"k": (1, 50), "items_per_annotator": (1, 10_000), "gold.count": (0, 500), "gold_every": (2, 1000),
          "time_limit_s": (5, 24 * 3600), "assignment_timeout_s": (30, 7 * 24 * 3600), "max_items": (1, 20_000),
          "questions": (1, 10), "models": (1, 16), "seed": (0, 2**32 - 1), "gold.max_frac": (0.05, 1.0),
          "min_watch_fraction": (0.5, 1.0), "instructions": (0, 5000)}


class DesignError(ValueError):
    """A study configuration or video set that cannot make a study; ``field`` names the offending field."""

    def __init__(self, field: str, message: str, limit: Any = None):
        self.field, self.limit = field, limit
        super().__init__(f"{field}: {message}")


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


def _int(field_name: str, value: Any) -> int:
    lo, hi = LIMITS[field_name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise DesignError(field_name, f"must be an integer in [{lo}, {hi}] (got {value!r})")
    value = int(value)
    if not lo <= value <= hi:
        raise DesignError(field_name, f"must be in [{lo}, {hi}] (got {value})", limit=hi if value > hi else lo)
    return value


def _float(field_name: str, value: Any) -> float:
    lo, hi = LIMITS[field_name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise DesignError(field_name, f"must be a number in [{lo}, {hi}] (got {value!r})")
    value = float(value)
    if not lo <= value <= hi:
        raise DesignError(field_name, f"must be in [{lo}, {hi}] (got {value:g})", limit=hi if value > hi else lo)
    return value


def _questions(raw: Any) -> list[dict[str, str]]:
    import re

    if raw is None:
        return [dict(q) for q in DEFAULT_QUESTIONS]
    lo, hi = LIMITS["questions"]
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)) or not lo <= len(raw) <= hi:
        raise DesignError("questions", f"must be a list of {lo}-{hi} questions")
    known = {q["id"]: q for q in DEFAULT_QUESTIONS}
    out: list[dict[str, str]] = []
    for i, q in enumerate(raw):
        if isinstance(q, str):  # a default question by id
            if q not in known:
                raise DesignError(f"questions[{i}]", f"unknown question {q!r}; built in: {sorted(known)} (or give "
                                                     "{'id', 'label', 'prompt'})")
            out.append(dict(known[q]))
            continue
        if not isinstance(q, Mapping) or not isinstance(q.get("id"), str) or not re.fullmatch(ID_RE, q["id"]):
            raise DesignError(f"questions[{i}].id", f"must match {ID_RE}")
        base = dict(known.get(q["id"], {"id": q["id"], "label": q["id"].replace("_", " ").capitalize(),
                                        "prompt": f"Which video is better: {q['id'].replace('_', ' ')}?",
                                        "likert": f"Rate the video: {q['id'].replace('_', ' ')}"}))
        for key in ("label", "prompt", "likert"):
            if key in q:
                if not isinstance(q[key], str) or not 1 <= len(q[key]) <= 300:
                    raise DesignError(f"questions[{i}].{key}", "must be 1-300 characters")
                base[key] = q[key]
        out.append(base)
    ids = [q["id"] for q in out]
    if len(set(ids)) != len(ids):
        raise DesignError("questions", f"question ids must be unique (got {ids})")
    return out


def validate_config(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """A complete, JSON-able study configuration from the user's (partial) one; DesignError names a bad field.

    Keys: mode, questions, k (annotations per item, default 5), items_per_annotator (quota, default: all),
    gold {count, distortion, max_frac, source, expect}, gold_every (a gold item every n assignments),
    time_limit_s (answer within this long of getting the item; optional), assignment_timeout_s (an abandoned
    item is released after this much inactivity), models (subset and order), pairs, max_items, seed,
    min_watch_fraction (of each video's duration that must have played, default 0.97), instructions.
    """
    raw = dict(raw or {})
    known = {"mode", "questions", "k", "items_per_annotator", "gold", "gold_every", "time_limit_s",
             "assignment_timeout_s", "models", "pairs", "max_items", "seed", "min_watch_fraction", "instructions"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DesignError(unknown[0], f"unknown study option; allowed: {sorted(known)}")
    mode = raw.get("mode", "pairwise")
    if mode not in MODES:
        raise DesignError("mode", f"must be one of {list(MODES)} (got {mode!r})")
    cfg: dict[str, Any] = {"mode": mode, "questions": _questions(raw.get("questions"))}
    cfg["k"] = _int("k", raw.get("k", 5))
    cfg["items_per_annotator"] = (None if raw.get("items_per_annotator") is None
                                  else _int("items_per_annotator", raw["items_per_annotator"]))
    cfg["time_limit_s"] = None if raw.get("time_limit_s") is None else _int("time_limit_s", raw["time_limit_s"])
    cfg["assignment_timeout_s"] = _int("assignment_timeout_s", raw.get("assignment_timeout_s", 1800))
    cfg["max_items"] = None if raw.get("max_items") is None else _int("max_items", raw["max_items"])
    cfg["seed"] = _int("seed", raw.get("seed", 0))
    cfg["min_watch_fraction"] = _float("min_watch_fraction", raw.get("min_watch_fraction", 0.97))
    instructions = raw.get("instructions", DEFAULT_INSTRUCTIONS)
    if not isinstance(instructions, str) or len(instructions) > LIMITS["instructions"][1]:
        raise DesignError("instructions", f"must be text of at most {LIMITS['instructions'][1]} characters",
                          limit=LIMITS["instructions"][1])
    cfg["instructions"] = instructions

    models = raw.get("models")
    if models is not None:
        lo, hi = LIMITS["models"]
        if (not isinstance(models, Sequence) or isinstance(models, str) or not lo <= len(models) <= hi
                or not all(isinstance(m, str) and 0 < len(m) <= 200 for m in models)):
            raise DesignError("models", f"must be a list of {lo}-{hi} model names")
        if len(set(models)) != len(models):
            raise DesignError("models", "must not repeat a model")
        if any(m.startswith("gold:") for m in models):
            raise DesignError("models", "names starting with 'gold:' are reserved for gold items")
        models = list(models)
    cfg["models"] = models
    pairs = raw.get("pairs")
    if pairs is not None:
        if mode != "pairwise":
            raise DesignError("pairs", "only pairwise studies have pairs")
        if not isinstance(pairs, Sequence) or isinstance(pairs, str) or not pairs:
            raise DesignError("pairs", "must be a non-empty list of [model_a, model_b]")
        clean = []
        for i, p in enumerate(pairs):
            if (not isinstance(p, Sequence) or isinstance(p, str) or len(p) != 2 or p[0] == p[1]
                    or not all(isinstance(m, str) for m in p)):
                raise DesignError(f"pairs[{i}]", "must be two different model names")
            if models is not None and not set(p) <= set(models):
                raise DesignError(f"pairs[{i}]", f"names a model outside models {models}")
            clean.append([p[0], p[1]])
        pairs = clean
    cfg["pairs"] = pairs

    gold = raw.get("gold") or {}
    if not isinstance(gold, Mapping):
        raise DesignError("gold", "must be an object {count, distortion, max_frac, source, expect}")
    unknown = sorted(set(gold) - {"count", "distortion", "max_frac", "source", "expect"})
    if unknown:
        raise DesignError(f"gold.{unknown[0]}", "unknown gold option; allowed: count, distortion, max_frac, "
                                                "source, expect")
    g: dict[str, Any] = {"count": _int("gold.count", gold.get("count", 0))}
    if g["count"] and mode != "pairwise":
        raise DesignError("gold.count", "gold items (original vs distorted copy) need a pairwise study")
    g["distortion"] = gold.get("distortion", "shuffle")
    if g["distortion"] not in GOLD_DISTORTIONS:
        raise DesignError("gold.distortion", f"must be one of {list(GOLD_DISTORTIONS)}")
    g["max_frac"] = _float("gold.max_frac", gold.get("max_frac", 0.5))
    g["source"] = gold.get("source", "study")
    if g["source"] not in ("study", "synthetic"):
        raise DesignError("gold.source", "must be 'study' (the study's own videos) or 'synthetic' (procedurally "
                                         "generated real motion clips)")
    q_ids = [q["id"] for q in cfg["questions"]]
    expect = gold.get("expect")
    if expect is None:
        expect = ["motion_quality"] if "motion_quality" in q_ids else q_ids[:1]
    if (not isinstance(expect, Sequence) or isinstance(expect, str) or not expect
            or any(q not in q_ids for q in expect)):
        raise DesignError("gold.expect", f"must list the questions on which the original is expected to win, "
                                         f"from {q_ids}")
    g["expect"] = list(dict.fromkeys(expect))
    cfg["gold"] = g
    default_every = 5 if g["count"] else None
    cfg["gold_every"] = (None if not g["count"] else _int("gold_every", raw.get("gold_every", default_every)))
    if cfg["time_limit_s"] is not None and cfg["time_limit_s"] > cfg["assignment_timeout_s"]:
        cfg["assignment_timeout_s"] = cfg["time_limit_s"]
    return cfg


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
        if not prompt or prompt == "(all prompts)" or r.get("seed") is None:
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
            raise DesignError(f"videos[{i}]", f"duplicate video for model {v.model!r}, seed {v.seed} and prompt "
                                              f"{v.prompt[:60]!r}")
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
        raise DesignError("videos", "no items: no (prompt, seed) has videos from both models of any pair"
                          if cfg["mode"] == "pairwise" else "no videos of the study's models")
    rng = np.random.default_rng(cfg.get("seed", 0))
    if cfg.get("max_items") and len(specs) > cfg["max_items"]:
        keep = np.sort(rng.choice(len(specs), size=cfg["max_items"], replace=False))
        specs = [specs[i] for i in keep]
    order = rng.permutation(len(specs))
    return [ItemSpec(position=int(pos), prompt=p, seed=s, videos=vs)
            for pos, (p, s, vs) in zip(order, specs)]


def pick_gold_sources(videos: Sequence[VideoRef], count: int, seed: int = 0) -> list[VideoRef]:
    """``count`` distinct videos to make gold items from, spread over models and prompts (round robin over
    models, each model's videos in a seeded random order). Raises DesignError when there are too few."""
    if count <= 0:
        return []
    if count > len(videos):
        raise DesignError("gold.count", f"must be at most the number of source videos ({len(videos)}); got {count}",
                          limit=len(videos))
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
        raise DesignError("gold", f"the {distortion} of this video equals the video (static or palindromic "
                                  "clip); pick another source video")
    return out


def gold_item(position: int, original: VideoRef, distorted_key: str, distortion: str,
              expect: Sequence[str]) -> ItemSpec:
    """A gold item: A = the original (system ``GOLD_ORIGINAL``), B = its distorted copy (``gold:<distortion>``);
    ``gold["expect"]`` maps each checked question to the system that must win."""
    distorted = VideoRef(f"gold:{distortion}", original.prompt, original.seed, distorted_key)
    original = VideoRef(GOLD_ORIGINAL, original.prompt, original.seed, original.key)
    return ItemSpec(position=position, prompt=original.prompt, seed=original.seed, videos=(original, distorted),
                    gold={"expect": {q: GOLD_ORIGINAL for q in expect}, "distortion": distortion})


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
