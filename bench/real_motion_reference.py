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

from evaluator.benchmark.suites import tiny_suite_families
from evaluator.metrics import motion_score_from
from evaluator.metrics.lite import dynamic_degree_lite, motion_smoothness_lite
from trainer.data.synthetic import FAMILIES


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--fps", type=float, default=8.0)
    args = ap.parse_args(argv)
    families = [fam for _caption, fam in tiny_suite_families(args.prompts)]
    dynamic, smooth, score = [], [], []
    for seed in range(args.seeds):
        rng = np.random.default_rng(1000 + seed)
        for fam in families:
            video = np.asarray(FAMILIES[fam](rng, frames=17, height=32, width=32, split="heldout")[0])
            d, s = dynamic_degree_lite(video, args.fps), motion_smoothness_lite(video, args.fps)
            dynamic.append(d.value)
            smooth.append(s.value)
            score.append(motion_score_from(s, d).value)
    out = {
        "smoothness_pct": 100 * float(np.mean(smooth)),
        "dynamic_degree": float(np.mean(dynamic)),
        "motion_score": float(np.mean(score)),
    }
    print(
        f"real videos, {args.prompts} suite families x {args.seeds} clips: smoothness {out['smoothness_pct']:.2f}%, "
        f"dynamic degree {out['dynamic_degree']:.3f}, motion score {out['motion_score']:.3f}"
    )
    return out


if __name__ == "__main__":
    main()
