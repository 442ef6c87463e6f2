"""Tiny VAE designs against training time: held-out PSNR and object colour error as each trains.

    python bench/vae_design.py --design residual --minutes 10 --clip-frames 17
    python bench/vae_design.py --design plain --foreground-weight 0 --minutes 4      # no foreground weight
    python bench/vae_design.py --design residual-8x --size 64 --minutes 4           # larger clips, the same latents

One design trains on one torch thread (run two side by side on 2 cores) with the project's own loss
(``trainer.methods.vae.vae_loss``), batch 8, AdamW with 50 warmup steps and cosine decay over the time budget
(training time: evaluations are not counted); every ``--every`` minutes it prints the PSNR of 32 (``--held-out``)
held-out 17-frame clips, their objects' mean colour error (``evaluator.conformance.compare_reconstruction``) and the
seconds per training step. Clips are ``--size`` pixels square (the objects scale with it). Designs are ``TINY_VAE``
with these changes:

    plain      Wan2.1's blocks (is_residual False)        residual   TINY_VAE (Wan2.2's residual blocks)
    residual-z8    8 latent channels (the earlier tiny VAE)   no-temporal    no temporal compression
    residual-8x    one more spatial downsampling: 64 x 64 clips get the 8 x 8 latents 32 x 32 clips get from TINY_VAE
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np
import torch
from diffusers import AutoencoderKLWan

from evaluator.conformance import compare_reconstruction
from trainer.data.synthetic import sample_clips
from trainer.methods.vae import vae_loss
from trainer.models.generator import TINY_VAE, prefer_onednn_conv3d

DESIGNS = {
    "plain": {"is_residual": False},
    "residual": {},
    "residual-z8": {"z_dim": 8, "latents_mean": [0.0] * 8, "latents_std": [1.0] * 8},
    "no-temporal": {"temperal_downsample": [False, False]},
    "residual-8x": {"dim_mult": [1, 2, 2, 2], "temperal_downsample": [False, True, True], "scale_factor_spatial": 8},
}


def evaluate(vae, clips: np.ndarray) -> tuple[float, float]:
    """(mean PSNR over clips, mean object colour error /255) of posterior-mean reconstructions."""
    vae.eval()
    with torch.no_grad():
        x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        rec = torch.cat([vae.decode(vae.encode(x[i : i + 16]).latent_dist.mode()).sample for i in range(0, len(x), 16)])
    vae.train()
    rec = ((rec.permute(0, 2, 3, 4, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    mse = ((rec.astype(np.float64) - clips) ** 2).mean(axis=(1, 2, 3, 4))
    objects = [compare_reconstruction(a, b) for a, b in zip(clips, rec)]
    colour = [o["colour_error"] for o in objects if o is not None]
    return float(np.mean(10 * np.log10(255**2 / np.maximum(mse, 1e-9)))), float(np.mean(colour))


def main(argv=None) -> list[tuple[float, int, float, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--design", choices=sorted(DESIGNS), default="residual")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=2.0, help="minutes between evaluations")
    ap.add_argument("--clip-frames", type=int, default=17)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--foreground-weight", type=float, default=5.0)
    ap.add_argument("--clips", type=int, default=1500, help="training clips")
    ap.add_argument("--size", type=int, default=32, help="clip height and width in pixels")
    ap.add_argument("--held-out", type=int, default=32, help="held-out clips evaluated")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**{**TINY_VAE, **DESIGNS[args.design]})
    prefer_onednn_conv3d(vae)
    size = {"height": args.size, "width": args.size}
    train = np.stack([c[0] for c in sample_clips(args.clips, seed=0, frames=args.clip_frames, **size)])
    train = torch.from_numpy(train).permute(0, 4, 1, 2, 3).contiguous()
    held = np.stack([c[0] for c in sample_clips(args.held_out, seed=12345, split="heldout", **size)])
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    curve, step, t0, budget, next_eval = [], 0, time.perf_counter(), args.minutes * 60, args.every * 60
    while (elapsed := time.perf_counter() - t0) < budget:
        for group in opt.param_groups:
            group["lr"] = (
                args.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * elapsed / budget)))
            )
        x = train[torch.randint(len(train), (8,), generator=g)].float() / 127.5 - 1
        loss, _ = vae_loss(vae, x, kl_weight=1e-6, motion_weight=1.0, foreground_weight=args.foreground_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if time.perf_counter() - t0 >= next_eval or time.perf_counter() - t0 >= budget:
            next_eval += args.every * 60
            started = time.perf_counter()
            psnr, colour = evaluate(vae, held)
            t0 += time.perf_counter() - started  # the budget and the seconds per step count training alone
            curve.append((elapsed / 60, step, psnr, colour))
            print(
                f"design={args.design} size={args.size} clip_frames={args.clip_frames} "
                f"fg_weight={args.foreground_weight:g} {elapsed / 60:5.1f} min  step {step:5d} "
                f"({elapsed / step:.2f} s/step)  held-out PSNR {psnr:5.2f} dB  colour error {colour:5.1f}/255",
                flush=True,
            )
    return curve


if __name__ == "__main__":
    main()
