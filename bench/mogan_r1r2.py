"""How much MoGAN's R1/R2 move the discriminator: R1, R2, L_D and the ratio of the gradient norms that
``lambda_R1 R1 + lambda_R2 R2`` and ``lambda_2 L_D`` put on D's parameters.

    python bench/mogan_r1r2.py                         # tiny run (25 iterations) + one full-architecture D step
    python bench/mogan_r1r2.py --steps 30 --skip-full  # tiny run only
    python bench/mogan_r1r2.py --skip-tiny --height 256 --width 256

1. Tiny: ``motionlab train mogan --preset tiny --init tiny-dmd --teacher tiny-teacher`` for ``--steps`` iterations
   (the shipped checkpoints; the preset's batch, learning rates and lambdas), one log line per iteration: the
   trainer's own ``disc/*`` figures, as the method computes them.
2. Full architecture: Wan2.1-T2V-1.3B's DiT config cut to 2 blocks and Wan's VAE, random weights, built as
   ``bench/rehearsal.py`` builds them; the discriminator is MoGAN's (2-block trunk, heads after blocks 0, 0, 1,
   flow encoded by the VAE) on ``--frames`` x ``--height`` x ``--width`` clips: Horn-Schunck flow of moving synthetic
   clips, ``--batch`` real and ``--batch`` "generated" (synthetic clips of another seed: the figures describe D's
   sensitivity, not a generator). One discriminator objective with its part gradients, four ways:
     - ``normalised, float32``: what MoGAN computes (noise std sigma_n in the normalised flow, D in float32);
     - ``normalised, bf16``: the same under bf16 autocast (what float32 avoids);
     - ``pixels, bf16``: noise std sigma_n in pixel units under bf16 autocast (a GPU path's naive choice);
     - ``pixels, float32``: the same in float32.
   plus the first-order prediction ``E[R] ~ sigma_n^2 E_b ||grad_u D(u_b)||^2`` (u: the normalised flow), and the
   wall time of the objective + backward with and without the part gradients (float32; the two alternate,
   ``--repeats`` times each, best of each reported).
Random weights mean the discriminator is untrained: these are figures at initialisation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainer.config import load_train_config
from trainer.data.synthetic import sample_clips
from trainer.flow import build_flow_estimator
from trainer.loop import train_run
from trainer.losses.gan import discriminator_objective, flow_tensor
from trainer.methods.mogan import DISC_PROMPT
from trainer.models.discriminators import MotionDiscriminator
from trainer.models.generator import Generator

MOVING = {"translate": 1.0, "bounce": 1.0, "rotate": 1.0, "pan": 1.0, "scale": 1.0}  # no static clips
KEYS = ("disc/l_d", "disc/r1", "disc/r2", "disc/r1r2_grad_ratio", "disc/d_real", "disc/d_gen")


def tiny_run(steps: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_train_config(
            "mogan",
            {
                "teacher": "tiny-teacher",
                "init": "tiny-dmd",
                "steps": steps,
                "seed": seed,
                "log_every": 1,
                "checkpoint_every": steps,
            },
            preset="tiny",
        )
        m = cfg.method_cfg
        print(
            f"tiny MoGAN from tiny-dmd / tiny-teacher: {steps} iterations, batch {cfg.batch_size}, "
            f"D batch {m.disc_batch_size or cfg.batch_size}, disc_lr {m.disc_lr}, lambda_2 {m.lambda_disc}, "
            f"lambda_R1 {m.lambda_r1}, lambda_R2 {m.lambda_r2}, sigma_n {m.sigma_n} (normalised flow), seed {seed}"
        )
        t0 = time.perf_counter()
        train_run(cfg, Path(tmp) / "run", progress_bar=False)
        wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    print(f"{'step':>4} {'L_D':>8} {'R1':>10} {'R2':>10} {'ratio':>10} {'D(real)':>8} {'D(gen)':>8}")
    for r in rows:
        v = [r[k] for k in KEYS]
        print(f"{r['step']:>4} {v[0]:8.4f} {v[1]:10.3e} {v[2]:10.3e} {v[3]:10.3e} {v[4]:8.4f} {v[5]:8.4f}")
    ratios = [r["disc/r1r2_grad_ratio"] for r in rows]
    print(
        f"ratio ||grad(0.3 R1 + 0.3 R2)|| / ||grad(0.5 L_D)||: median {statistics.median(ratios):.3e}, "
        f"min {min(ratios):.3e}, max {max(ratios):.3e}; R1 median {statistics.median(r['disc/r1'] for r in rows):.3e}"
        f", R2 median {statistics.median(r['disc/r2'] for r in rows):.3e}; {wall:.0f} s wall "
        f"({statistics.median(r['sec_per_step'] for r in rows):.2f} s per iteration, median)"
    )


def synthetic_flow(n: int, seed: int, frames: int, height: int, width: int, flow) -> torch.Tensor:
    clips = sample_clips(n, seed, frames=frames, height=height, width=width, families=MOVING, split="train")
    pixels = torch.stack([torch.from_numpy(c[0]) for c in clips]).float() / 127.5 - 1  # [B, T, H, W, 3]
    with torch.no_grad():
        return flow_tensor(flow(pixels.permute(0, 1, 4, 2, 3).contiguous()))


def input_grad_norm2(disc, o: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-sample ||grad_u D(u)||^2 with u = o / scale (float32)."""
    o = o.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(disc(o).sum(), o)
    return (g * scale).square().reshape(g.shape[0], -1).sum(dim=1)


def full_step(args) -> None:
    torch.manual_seed(args.seed)
    gen = Generator.build_full_random(seed=args.seed, num_layers=2, text_layers=1)
    with torch.no_grad():
        prompt = gen.encode_prompts([DISC_PROMPT])[0]
    disc = MotionDiscriminator.from_transformer(
        gen.transformer, num_blocks=2, head_blocks=(0, 0, 1), prompt_embeds=prompt, encode=gen.encode_video
    )
    gen.vae.requires_grad_(False)
    gen.transformer.requires_grad_(False)
    params = [p for p in disc.parameters() if p.requires_grad]
    flow = build_flow_estimator("horn_schunck")
    real = synthetic_flow(args.batch, args.seed + 2, args.frames, args.height, args.width, flow)
    fake = synthetic_flow(args.batch, args.seed + 3, args.frames, args.height, args.width, flow)
    scale = disc.config["flow_norm"] * min(args.height, args.width)
    print(
        f"\nfull architecture (Wan2.1-1.3B DiT config at 2 blocks, Wan VAE, random weights): D of "
        f"{sum(p.numel() for p in params) / 1e6:.1f}M trainable parameters; flow {tuple(real.shape)} per side; "
        f"D divides the flow by flow_norm * min(H, W) = {scale:g} px"
    )
    print(f"mean |flow| (px): real {real[:, :, 2].mean():.3f}, generated {fake[:, :, 2].mean():.3f}")
    sigma = 0.01

    def objective(units: str, precision: str, with_params: bool = True):
        disc.zero_grad(set_to_none=True)
        bf16 = precision == "bf16"
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, logs = discriminator_objective(
                disc,
                real,
                fake,
                lambda_d=0.5,
                lambda_r1=0.3,
                lambda_r2=0.3,
                sigma_n=sigma,
                input_scale=scale if units == "normalised" else 1.0,
                generator=torch.Generator().manual_seed(7),
                float32=precision == "float32",
                params=params if with_params else None,
            )
        loss.backward()
        return logs, time.perf_counter() - t0

    print(f"{'noise units, D precision':<26} {'L_D':>8} {'R1':>10} {'R2':>10} {'ratio':>10}")
    for units, precision in (
        ("normalised", "float32"),
        ("normalised", "bf16"),
        ("pixels", "bf16"),
        ("pixels", "float32"),
    ):
        logs, _ = objective(units, precision)
        print(
            f"{units + ', ' + precision:<26} {float(logs['l_d']):8.4f} {float(logs['r1']):10.3e} "
            f"{float(logs['r2']):10.3e} {float(logs['r1r2_grad_ratio']):10.3e}"
        )
    pred = [sigma**2 * float(input_grad_norm2(disc, o, scale).mean()) for o in (real, fake)]
    print(f"first-order prediction sigma_n^2 E||grad_u D||^2: R1 {pred[0]:.3e}, R2 {pred[1]:.3e}")
    times = {True: [], False: []}
    for _ in range(args.repeats):
        for with_params in (False, True):
            times[with_params].append(objective("normalised", "float32", with_params)[1])
    with_ratio, without = min(times[True]), min(times[False])
    print(
        f"objective + backward, float32, best of {args.repeats}: {without:.2f} s without the part gradients, "
        f"{with_ratio:.2f} s with them ({with_ratio / without:.2f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if not args.skip_tiny:
        tiny_run(args.steps, args.seed)
    if not args.skip_full:
        full_step(args)


if __name__ == "__main__":
    main()
