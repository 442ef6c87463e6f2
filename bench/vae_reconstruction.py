"""How well does a (tiny) VAE reconstruct held-out videos, and does motion survive encode -> decode?

    python bench/vae_reconstruction.py --checkpoint tiny-teacher          # the shipped tiny VAE
    python bench/vae_reconstruction.py --checkpoint runs/sft-tiny/vae/export --n 64

Held-out synthetic clips (17 frames, colour/shape pairs never seen in training) are encoded to the posterior mean and
decoded; prints the PSNR over all clips (and per latent chunk, since later chunks of a causal VAE tend to fade), and
for the "moves <direction>" clips among them the share whose reconstruction still moves the stated way (the same
direction test as ``bench/teacher_direction.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np
import torch

from evaluator.direction import AXES, direction_correct
from trainer.data.streams import encode_clips
from trainer.data.synthetic import sample_clips
from trainer.serving import to_uint8_frames
from trainer.models.vae_window import window_frame_range
from trainer.zoo import load_generator


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="tiny-teacher", help="zoo name or pipeline directory")
    ap.add_argument("--n", type=int, default=64, help="held-out clips")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)

    gen = load_generator(args.checkpoint)
    clips = sample_clips(args.n, seed=args.seed, split="heldout")
    real = [c[0] for c in clips]
    t0 = time.perf_counter()
    latents = encode_clips(gen, np.stack(real), batch_size=args.batch, progress=False)  # the training-time encoder
    recs = []
    for i in range(0, len(latents), args.batch):
        with torch.no_grad():
            recs += to_uint8_frames(gen.decode_latents(latents[i:i + args.batch]))
    seconds = time.perf_counter() - t0

    overall = float(np.mean([psnr(a, b) for a, b in zip(real, recs)]))
    k = gen.latent_shape(*real[0].shape[:3])[2]
    per_chunk = []
    for c in range(k):
        f0, f1 = window_frame_range(gen.vae, c, 1)
        per_chunk.append(float(np.mean([psnr(a[f0:f1], b[f0:f1]) for a, b in zip(real, recs)])))
    moving = [(r, c[2]["direction"]) for r, c in zip(recs, clips)
              if c[2].get("family") == "translate" and c[2]["direction"] in AXES]  # cardinal directions only
    kept = [direction_correct(r, d) for r, d in moving]
    print(f"checkpoint={args.checkpoint} clips={len(real)} (held-out, {real[0].shape[0]} frames) "
          f"PSNR={overall:.2f} dB  per latent chunk: {', '.join(f'{p:.1f}' for p in per_chunk)} dB  "
          f"direction kept: {sum(kept)}/{len(kept)} translations  ({seconds:.1f}s)")
    return {"psnr": overall, "psnr_per_chunk": per_chunk, "direction_kept": sum(kept) / max(1, len(kept))}


if __name__ == "__main__":
    main()
