"""Prompt suites: the built-in motion suite, the tiny synthetic suite, VBench's per-dimension prompt lists (read
from the installed ``vbench`` package), or a user's file (one prompt per line).

VideoJAM-bench's 128 prompts are not shipped here nor in any installed package: save them one a line and pass
the file as the suite.
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from evaluator.conformance import conformance_captions
from trainer.data.synthetic import FAMILIES, families_for_split, sample_clips

# Motion-focused prompts in the spirit of VideoJAM-bench / VBench's dynamic prompts (full-scale models).
MOTION_SUITE = [
    "a dog running across a grassy field, chasing a ball",
    "a skateboarder performing a kickflip in a skate park",
    "a gymnast doing a backflip on a balance beam",
    "ocean waves crashing against rocks at sunset",
    "a horse galloping along a beach",
    "a person juggling three red balls",
    "a hummingbird hovering near a flower, wings beating fast",
    "a car drifting around a corner on a race track",
    "a ballerina spinning on stage",
    "a basketball player dunking the ball",
    "leaves blowing in strong wind",
    "a waterfall pouring into a pool",
    "a cat jumping onto a table",
    "a cyclist riding downhill on a mountain trail",
    "fireworks exploding in the night sky",
    "a chef flipping a pancake in a pan",
]


# The suites a benchmark can name (``load_suite``), with what each is for; ``available_suites`` adds VBench's.
NAMED_SUITES = {
    "tiny": "held-out synthetic captions over the motion families (for the tiny models)",
    "conformance": "held-out synthetic captions balanced over the motion families, also scored for whether the "
    "video shows the caption's colour, shape and motion",
    "motion": "motion-focused natural-language prompts (for full-scale models)",
}

VBENCH_INFO_FILE = "VBench_full_info.json"  # in the vbench package: every prompt with the dimensions it serves
VBENCH_PREFIX = "vbench:"
VBENCH_MOTION = "vbench-motion"
# VBench's dimensions that judge motion and temporal quality; ``vbench-motion`` is the union of their prompts
VBENCH_MOTION_DIMENSIONS = ("dynamic_degree", "motion_smoothness", "subject_consistency", "temporal_flickering")


def vbench_info_path() -> Path:
    """``VBench_full_info.json`` of the installed ``vbench`` package, found without importing the package (its
    ``__init__`` loads torch and its metric modules)."""
    spec = importlib.util.find_spec("vbench")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "VBench suites read their prompts from the vbench package, which is not installed "
            "(pip install --no-deps vbench)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / VBENCH_INFO_FILE
    if not path.is_file():
        raise ValueError(f"the installed vbench package has no {VBENCH_INFO_FILE} ({path})")
    return path


@lru_cache(maxsize=4)
def _vbench_entries(path: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((e["prompt_en"], tuple(e["dimension"])) for e in json.loads(Path(path).read_text()))


def _prompts_of(dimensions) -> list[str]:
    """The prompts serving any of ``dimensions``, in the file's order, each once."""
    wanted = set(dimensions)
    found = (p for p, dims in _vbench_entries(str(vbench_info_path())) if wanted.intersection(dims))
    return list(dict.fromkeys(found))


def vbench_prompts() -> dict[str, list[str]]:
    """VBench dimension -> its prompts, in the file's order (each once)."""
    dims = dict.fromkeys(d for _p, ds in _vbench_entries(str(vbench_info_path())) for d in ds)
    return {d: _prompts_of([d]) for d in dims}


def vbench_suite(dimension: str) -> list[str]:
    """The prompts of one VBench dimension; an unknown one is an error listing the valid ones."""
    table = vbench_prompts()
    if dimension not in table:
        raise ValueError(
            f"suite {VBENCH_PREFIX}{dimension}: unknown VBench dimension {dimension!r}; valid: "
            f"{', '.join(sorted(table))}"
        )
    return table[dimension]


def vbench_motion_suite() -> list[str]:
    """The union of the prompts of ``VBENCH_MOTION_DIMENSIONS``, each once, in the file's order."""
    return _prompts_of(VBENCH_MOTION_DIMENSIONS)


def available_suites() -> dict[str, str]:
    """Every suite a benchmark can name here: ``NAMED_SUITES``, plus ``vbench-motion`` and ``vbench:<dimension>``
    where the vbench package is installed."""
    out = dict(NAMED_SUITES)
    try:
        dims = sorted(vbench_prompts())
    except ValueError:
        return out
    out[VBENCH_MOTION] = f"VBench's prompts of its motion dimensions ({', '.join(VBENCH_MOTION_DIMENSIONS)})"
    out.update({f"{VBENCH_PREFIX}{d}": f"VBench's prompts for its {d} dimension" for d in dims})
    return out


def tiny_suite(n: int = 16, seed: int = 0) -> list[str]:
    """Held-out synthetic captions over the motion families (never seen by the tiny models in training)."""
    return [caption for caption, _family in tiny_suite_families(n, seed)]


def tiny_suite_families(n: int = 16, seed: int = 0) -> list[tuple[str, str]]:
    """``tiny_suite``'s captions with the motion family that rendered each (to render real clips of the same kind)."""
    fams = families_for_split("heldout")
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str]] = []
    i = 0
    while len(out) < n:
        fam = fams[i % len(fams)]
        _, caption, _ = FAMILIES[fam](rng, frames=2, height=32, width=32, split="heldout")
        if caption not in (c for c, _f in out):
            out.append((caption, fam))
        i += 1
        if i > 100 * n:
            break
    return out


# Suites of synthetic captions: real clips of the same motions exist to measure against, and every caption states
# answers that ``evaluator.conformance`` can check.
SYNTHETIC_SUITES = ("tiny", "conformance")
REAL_CLIPS = 64  # held-out real clips a synthetic suite's fidelity figures are measured against
REAL_CLIPS_SEED = 12345


def real_videos_for(suite: str, frames: int = 17) -> list[np.ndarray] | None:
    """The real videos a suite's generated sets are compared with (``FIDELITY_METRICS``): held-out synthetic clips
    of ``frames`` frames (the generated videos' length) for the synthetic suites; ``None`` for the others (no real
    set ships with them)."""
    if suite not in SYNTHETIC_SUITES:
        return None
    clips = sample_clips(REAL_CLIPS, seed=REAL_CLIPS_SEED, frames=frames, split="heldout")
    return [clip for clip, _caption, _meta in clips]


def load_suite(suite: str, n: int | None = None) -> list[str]:
    """``"motion"``, ``"tiny"``, ``"conformance"`` (held-out synthetic captions of every motion family, balanced,
    scored by ``evaluator.conformance.conformance_scores``), ``"vbench:<dimension>"`` / ``"vbench-motion"``
    (VBench's prompt lists, from the installed package) or a path to a text file of prompts (blank lines and
    ``#`` comments skipped; e.g. VideoJAM-bench's prompts)."""
    if suite.startswith(VBENCH_PREFIX):
        prompts = list(vbench_suite(suite[len(VBENCH_PREFIX) :]))
    elif suite == VBENCH_MOTION:
        prompts = vbench_motion_suite()
    elif suite == "motion":
        prompts = list(MOTION_SUITE)
    elif suite == "tiny":
        prompts = tiny_suite(n or 16)
    elif suite == "conformance":
        prompts = conformance_captions(n)
    else:
        path = Path(suite)
        if not path.is_file():
            raise ValueError(
                f"suite {suite!r} is not 'motion', 'tiny', 'conformance', '{VBENCH_PREFIX}<dimension>', "
                f"'{VBENCH_MOTION}' or an existing prompt file"
            )
        prompts = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if not prompts:
            raise ValueError(f"prompt file {path} holds no prompts")
    too_long = [p for p in prompts if len(p) > 1000]
    if too_long:
        raise ValueError(f"prompt too long ({len(too_long[0])} chars > 1000): {too_long[0][:60]}...")
    return prompts[:n] if n else prompts
