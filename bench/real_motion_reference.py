"""The tiny Table 1's reference point: the lite motion metrics of real (procedurally rendered) videos.

    python bench/real_motion_reference.py --prompts 16 --seeds 5

Renders, for each held-out prompt of the tiny benchmark suite (``evaluator.benchmark.suites.tiny_suite``), ``--seeds``
fresh clips of the same motion family (17 x 32 x 32, held-out colour/shape pairs) and prints their mean motion
smoothness and dynamic degree with the lite backend -- what a model that matched the real videos' motion would
score. The dynamic degree of real videos is well below 1: static scenes, slow growth and rotation count as static.
"""

from __future__ import annotations

import argparse

import numpy as np

from evaluator.benchmark.suites import tiny_suite
from evaluator.metrics.lite import dynamic_degree_lite, motion_smoothness_lite
from trainer.data.synthetic import FAMILIES, families_for_split


def suite_families(n: int) -> list[str]:
    """The motion family behind each of ``tiny_suite(n)``'s prompts (it draws them in this order)."""
    prompts = tiny_suite(n)
    fams = families_for_split("heldout")
    rng = np.random.default_rng(0)  # tiny_suite's own seed and draws, repeated
    found: dict[str, str] = {}
    i = 0
    while len(found) < len(prompts):
        fam = fams[i % len(fams)]
        _, caption, _ = FAMILIES[fam](rng, frames=2, height=32, width=32, split="heldout")
        found.setdefault(caption, fam)
        i += 1
    return [found[p] for p in prompts]


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--fps", type=float, default=8.0)
    args = ap.parse_args(argv)
    dynamic, smooth = [], []
    for seed in range(args.seeds):
        rng = np.random.default_rng(1000 + seed)
        for fam in suite_families(args.prompts):
            video, _, _ = FAMILIES[fam](rng, frames=17, height=32, width=32, split="heldout")
            dynamic.append(dynamic_degree_lite(np.asarray(video), args.fps).value)
            smooth.append(motion_smoothness_lite(np.asarray(video), args.fps).value)
    out = {"smoothness_pct": 100 * float(np.mean(smooth)), "dynamic_degree": float(np.mean(dynamic))}
    out["motion_score"] = (out["smoothness_pct"] / 100 + out["dynamic_degree"]) / 2
    print(f"real videos, {args.prompts} suite families x {args.seeds} clips: smoothness {out['smoothness_pct']:.2f}%, "
          f"dynamic degree {out['dynamic_degree']:.3f}, motion score {out['motion_score']:.3f}")
    return out


if __name__ == "__main__":
    main()
