"""How well does a (tiny) VAE reconstruct held-out videos, and does motion survive encode -> decode?

    python bench/vae_reconstruction.py --checkpoint tiny-teacher          # the shipped tiny VAE
    python bench/vae_reconstruction.py --checkpoint runs/sft-tiny/vae/export --n 64
    python bench/vae_reconstruction.py --frames 33                        # longer clips than it was trained on

Held-out synthetic clips (17 frames unless ``--frames``, colour/shape pairs never seen in training) are encoded to
the posterior mean and decoded; prints the PSNR over all clips (and per latent chunk, since later chunks of a causal
VAE tend to fade), how well each clip's main object survives (``evaluator.conformance.compare_reconstruction``: its
mean colour over the clip and in its worst frame, also per family; its centre per frame) and, for the "moves
<direction>" clips, whether the reconstruction's object still moves the stated way at the same speed. Targets of the
tiny VAE: PSNR >= 30 dB, colour within 10/255, centre within 1 px, every direction kept, speed within 10%.
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

from evaluator.conformance import compare_reconstruction
from trainer.data.streams import encode_clips
from trainer.data.synthetic import sample_clips
from trainer.models.vae_window import window_frame_range
from trainer.sampling import to_uint8_frames
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
    ap.add_argument("--frames", type=int, default=17, help="clip length, 1 + 4k for Wan's VAE (default 17)")
    args = ap.parse_args(argv)

    gen = load_generator(args.checkpoint)
    try:
        gen.latent_shape(args.frames, 32, 32)
        clips = sample_clips(args.n, seed=args.seed, split="heldout", frames=args.frames)
    except ValueError as e:
        ap.error(f"--frames {args.frames}: {e}")
    real = [c[0] for c in clips]
    t0 = time.perf_counter()
    latents = encode_clips(gen, np.stack(real), batch_size=args.batch, progress=False)  # the training-time encoder
    recs = []
    for i in range(0, len(latents), args.batch):
        with torch.no_grad():
            recs += to_uint8_frames(gen.decode_latents(latents[i : i + args.batch]))
    seconds = time.perf_counter() - t0

    overall = float(np.mean([psnr(a, b) for a, b in zip(real, recs)]))
    k = gen.latent_shape(*real[0].shape[:3])[2]
    per_chunk = []
    for c in range(k):
        f0, f1 = window_frame_range(gen.vae, c, 1)
        per_chunk.append(float(np.mean([psnr(a[f0:f1], b[f0:f1]) for a, b in zip(real, recs)])))
    objects = [(compare_reconstruction(a, b), c[2]) for a, b, c in zip(real, recs, clips)]
    objects = [(o, meta) for o, meta in objects if o is not None]
    colour = np.array([o["colour_error"] for o, _ in objects])
    worst = np.array([o["worst_frame_colour_error"] for o, _ in objects])
    families = sorted({meta["family"] for _, meta in objects})
    per_family = {
        f: {
            k: float(np.mean([o[k] for o, meta in objects if meta["family"] == f]))
            for k in ("colour_error", "worst_frame_colour_error")
        }
        for f in families
    }
    centre = np.array([o["centre_error"] for o, _ in objects])
    moves = [(o, meta) for o, meta in objects if meta.get("family") == "translate"]
    kept = [float(np.dot(o["velocity_rec"], o["velocity"])) > 0 and _same_direction(o) for o, _ in moves]
    speed = np.array([np.hypot(*o["velocity_rec"]) / max(np.hypot(*o["velocity"]), 1e-6) for o, _ in moves])
    out = {
        "psnr": overall,
        "psnr_per_chunk": per_chunk,
        "colour_error_mean": float(colour.mean()),
        "colour_error_max": float(colour.max()),
        "colour_within_10": float((colour <= 10).mean()),
        "worst_frame_colour_error_median": float(np.median(worst)),
        "colour_per_family": per_family,
        "centre_error_mean": float(centre.mean()),
        "centre_within_1px": float((centre <= 1).mean()),
        "direction_kept": sum(kept) / max(1, len(kept)),
        "speed_within_10pct": float((np.abs(speed - 1) <= 0.1).mean()) if len(speed) else float("nan"),
    }
    print(
        f"checkpoint={args.checkpoint} clips={len(real)} (held-out, {real[0].shape[0]} frames) "
        f"PSNR={overall:.2f} dB  per latent chunk: {', '.join(f'{p:.1f}' for p in per_chunk)} dB  ({seconds:.1f}s)\n"
        f"  object colour error: mean {out['colour_error_mean']:.1f}, max {out['colour_error_max']:.1f} /255 "
        f"(within 10: {out['colour_within_10']:.0%} of {len(objects)})  centre error: mean "
        f"{out['centre_error_mean']:.2f} px (within 1 px: {out['centre_within_1px']:.0%})\n"
        f"  worst frame's colour error: median {out['worst_frame_colour_error_median']:.1f} /255\n"
        f"  colour error per family, clip mean / worst frame (mean): "
        + ", ".join(f"{f} {v['colour_error']:.1f} / {v['worst_frame_colour_error']:.1f}" for f, v in per_family.items())
        + "\n"
        f"  translations: direction kept {sum(kept)}/{len(kept)}, speed within 10%: "
        f"{out['speed_within_10pct']:.0%} (ratios {', '.join(f'{x:.2f}' for x in speed)})"
    )
    return out


def _same_direction(obj: dict) -> bool:
    """The reconstruction's velocity points within 22.5 degrees of the original's (one of 8 directions)."""
    (vx, vy), (rx, ry) = obj["velocity"], obj["velocity_rec"]
    cos = (vx * rx + vy * ry) / max(np.hypot(vx, vy) * np.hypot(rx, ry), 1e-9)
    return bool(cos >= np.cos(np.pi / 8))


if __name__ == "__main__":
    main()
