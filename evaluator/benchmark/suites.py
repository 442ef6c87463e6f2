"""Prompt suites: the built-in motion suite, the tiny synthetic suite, or a user's file (one prompt per line)."""

from __future__ import annotations

from pathlib import Path

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


# The suites a benchmark can name (``load_suite``), with what each is for.
NAMED_SUITES = {
    "tiny": "held-out synthetic captions over the motion families (for the tiny models)",
    "conformance": "held-out synthetic captions balanced over the motion families, also scored for whether the "
                   "video shows the caption's colour, shape and motion",
    "motion": "motion-focused natural-language prompts (for full-scale models)",
}


def tiny_suite(n: int = 16, seed: int = 0) -> list[str]:
    """Held-out synthetic captions over the motion families (never seen by the tiny models in training)."""
    return [caption for caption, _family in tiny_suite_families(n, seed)]


def tiny_suite_families(n: int = 16, seed: int = 0) -> list[tuple[str, str]]:
    """``tiny_suite``'s captions with the motion family that rendered each (to render real clips of the same kind)."""
    import numpy as np

    from trainer.data.synthetic import FAMILIES, families_for_split

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


def load_suite(suite: str, n: int | None = None) -> list[str]:
    """``"motion"``, ``"tiny"``, ``"conformance"`` (held-out synthetic captions of every motion family, balanced,
    scored by ``evaluator.conformance.conformance_scores``) or a path to a text file of prompts (blank lines and
    ``#`` comments skipped)."""
    if suite == "motion":
        prompts = list(MOTION_SUITE)
    elif suite == "tiny":
        prompts = tiny_suite(n or 16)
    elif suite == "conformance":
        from evaluator.conformance import conformance_captions

        prompts = conformance_captions(n)
    else:
        path = Path(suite)
        if not path.is_file():
            raise ValueError(f"suite {suite!r} is not 'motion', 'tiny', 'conformance' or an existing prompt file")
        prompts = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if not prompts:
            raise ValueError(f"prompt file {path} holds no prompts")
    too_long = [p for p in prompts if len(p) > 1000]
    if too_long:
        raise ValueError(f"prompt too long ({len(too_long[0])} chars > 1000): {too_long[0][:60]}...")
    return prompts[:n] if n else prompts
