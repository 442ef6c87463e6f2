"""Prompt-following benchmark: does the tiny teacher move objects in the stated direction?

    python bench/teacher_direction.py --checkpoint tiny-teacher --n 40 --steps 50

Held-out prompts ("a <colour> <shape> moves <left|right|up|down>" with colour/shape pairs never seen in training),
one seed each, sampled with the checkpoint's own sampler (the teacher: 50 Euler steps with CFG); prints the share
of videos whose mean optical flow points the stated way.
"""

from __future__ import annotations

import argparse
import time

import torch

from evaluator.direction import direction_correct, mean_flow
from trainer.data.synthetic import direction_prompts
from trainer.sampling import generate_videos
from trainer.zoo import load_generator


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="tiny-teacher")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's own)")
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the checkpoint's own)")
    ap.add_argument("--shift", type=float, default=None, help="sampling sigma shift (default: the checkpoint's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    from dataclasses import replace

    gen = load_generator(args.checkpoint)
    given = {"num_steps": args.steps, "guidance_scale": args.guidance, "shift": args.shift}
    sampling = replace(gen.sampling, **{k: v for k, v in given.items() if v is not None})
    prompts = direction_prompts(args.n, seed=args.seed, split="heldout")
    t0 = time.perf_counter()
    hits = []
    for i in range(0, len(prompts), args.batch):
        chunk = prompts[i : i + args.batch]
        with torch.no_grad():
            videos = generate_videos(
                gen, [p["prompt"] for p in chunk], [args.seed + i + j for j in range(len(chunk))], sampling=sampling
            )
        for p, v in zip(chunk, videos):
            ok = direction_correct(v, p["direction"])
            hits.append(ok)
            if args.verbose:
                print(f"{p['prompt']:40s} flow={mean_flow(v).round(3)} {'ok' if ok else 'WRONG'}")
    acc = sum(hits) / len(hits)
    kind = sampling.kind
    steps = sampling.num_steps if kind == "teacher" else len(sampling.timesteps)
    print(
        f"checkpoint={args.checkpoint} sampler={kind} steps={steps} cfg={sampling.guidance_scale:g} "
        f"prompts={len(hits)} (held-out) "
        f"direction accuracy={acc:.3f} ({sum(hits)}/{len(hits)}) in {time.perf_counter() - t0:.1f}s"
    )
    return acc


if __name__ == "__main__":
    main()
