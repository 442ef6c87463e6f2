"""Caption gap: which caption words does a model's flow-matching loss use?

    python bench/caption_gap.py --checkpoint tiny-teacher --per-family 12
    python bench/caption_gap.py --checkpoint tiny-teacher --family rotate --per-family 30 --sigma 0.9

For held-out real clips of each family (``evaluator.conformance.conformance_prompts``), the model's flow-matching
error with the true caption, with a counterfactual one that flips the word the family turns on (the opposite
direction, rotation sense or scale direction; a still scene captioned "moves right"; a two-object scene with the two
motions swapped; bounces have none) and with the empty caption (the sampler's negative prompt, empty for the tiny
models), at fixed sigmas and the same noise for all three. Each cell is ``(err(counterfactual) - err(true)) /
err(true)`` / the same for the empty caption, mean over the clips: near 0 on the left means the loss does not depend
on that word, so the model has not learnt it, whatever it draws. Run with ``OMP_NUM_THREADS=1`` on a shared CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from evaluator.conformance import OPPOSITE_DIRECTION, conformance_prompts, parse_caption
from trainer.data.streams import encode_clips
from trainer.data.synthetic import FAMILIES, article
from trainer.methods.sft import flow_matching_loss
from trainer.zoo import load_generator

DEFAULT_SIGMAS = (0.9, 0.7, 0.5, 0.3, 0.1)
FLIPS = {"grows": "shrinks", "shrinks": "grows", "clockwise": "counterclockwise", "counterclockwise": "clockwise"}


def counterfactual(caption: str) -> str | None:
    """``caption`` with the word its family turns on flipped (``None`` for bounces, and for two objects that move
    the same way); checked to parse as the same family with that word changed."""
    p = parse_caption(caption)
    family, text = p["family"], p["caption"]
    if family in ("translate", "pan"):
        verb = "moves" if family == "translate" else "pans"
        out = text.replace(f"{verb} {p['direction']}", f"{verb} {OPPOSITE_DIRECTION[p['direction']]}")
    elif family in ("rotate", "scale"):
        out = text.replace(p["direction"], FLIPS[p["direction"]])
    elif family == "static":
        out = f"{article(p['colour'])} {p['colour']} {p['shape']} moves right"
    elif family == "two_objects":
        first, second = p["objects"]
        if first["direction"] == second["direction"]:
            return None
        a, b = text.split(" and ")
        out = f"{a.replace(first['direction'], second['direction'])} and {b.replace(second['direction'], first['direction'])}"
    else:
        return None
    q = parse_caption(out)  # raises if the edit broke the caption
    expected = "translate" if family == "static" else family
    if q["family"] != expected or out == text:
        raise ValueError(f"counterfactual of {caption!r} is {out!r}, a {q['family']} caption")
    return out


@torch.no_grad()
def caption_gaps(gen, prompts: list[dict], sigmas=DEFAULT_SIGMAS, seed: int = 0) -> list[dict]:
    """Per clip and sigma: the relative error gaps of the counterfactual and the empty caption (one shared noise
    draw per clip and sigma)."""
    rows = []
    # i: the clip's place in ``prompts``, which seeds its noise
    kept = [(i, p, counterfactual(p["caption"])) for i, p in enumerate(prompts)]
    kept = [(i, p, other) for i, p, other in kept if other is not None]
    latents = encode_clips(gen, np.stack([p["video"] for _, p, _ in kept]), progress=False) if kept else []
    for (i, p, other), x0 in zip(kept, latents):
        x0 = x0[None].to(gen.device)
        cond = gen.encode_prompts([p["caption"], other, gen.sampling.negative_prompt])
        for k, s in enumerate(sigmas):
            g = torch.Generator().manual_seed(seed * 1_000_003 + i * len(sigmas) + k)
            eps = torch.randn(x0.shape, generator=g).to(x0)
            sigma = torch.full((1,), float(s), device=x0.device)
            err = [float(flow_matching_loss(gen.transformer, x0, cond[j : j + 1], sigma, eps)) for j in range(3)]
            rows.append(
                {
                    "family": p["family"],
                    "caption": p["caption"],
                    "counterfactual": other,
                    "sigma": float(s),
                    "error": err[0],
                    "gap_counterfactual": (err[1] - err[0]) / err[0],
                    "gap_empty": (err[2] - err[0]) / err[0],
                }
            )
    return rows


def format_gaps(rows: list[dict], sigmas=DEFAULT_SIGMAS) -> str:
    families = [f for f in FAMILIES if any(r["family"] == f for r in rows)]
    lines = [f"{'family':12} {'n':>3}  " + "  ".join(f"sigma {s:<9g}" for s in sigmas)]
    for f in families:
        cells = []
        for s in sigmas:
            sel = [r for r in rows if r["family"] == f and r["sigma"] == s]
            cf, em = (np.mean([r[k] for r in sel]) for k in ("gap_counterfactual", "gap_empty"))
            cells.append(f"{cf:+.2f} / {em:+.2f}  ")
        n = sum(1 for r in rows if r["family"] == f and r["sigma"] == sigmas[0])
        lines.append(f"{f:12} {n:3d}  " + "  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="tiny-teacher", help="zoo name or directory (default: tiny-teacher)")
    ap.add_argument("--per-family", type=int, default=12, help="held-out clips per family (default 12)")
    ap.add_argument("--seed", type=int, default=0, help="prompt set and noise seed (default 0)")
    ap.add_argument("--family", action="append", default=[], choices=sorted(FAMILIES), help="repeatable")
    ap.add_argument("--sigma", action="append", type=float, default=[], help=f"repeatable (default {DEFAULT_SIGMAS})")
    ap.add_argument("--json", type=Path, default=None, help="write the per-clip rows here")
    args = ap.parse_args(argv)
    if args.per_family < 1:
        ap.error("--per-family must be >= 1")
    sigmas = tuple(args.sigma) or DEFAULT_SIGMAS
    if any(not 0.0 < s <= 1.0 for s in sigmas):
        ap.error(f"--sigma: each must be in (0, 1], got {list(sigmas)}")
    prompts = conformance_prompts(args.per_family, seed=args.seed)
    prompts = [p for p in prompts if not args.family or p["family"] in args.family]
    gen = load_generator(args.checkpoint).eval()
    rows = caption_gaps(gen, prompts, sigmas, args.seed)
    print(f"{args.checkpoint}: error gap of the counterfactual / empty caption, relative to the true caption's")
    print(format_gaps(rows, sigmas))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
