"""Cost of VDOT's OTD loss vs the DMD loss: time and peak memory, at tiny and at Wan2.1-1.3B latent shape.

    python bench/otd_cost.py                      # CPU, both shapes
    python bench/otd_cost.py --device cuda        # GPU: the full shape runs to convergence
    python bench/otd_cost.py --skip-full          # tiny shape only

Shapes (random N(0, 1) tensors): tiny ``[B=4, C=8, F=5, h=8, w=8]`` (I = 64 points of D = 40) and Wan2.1-1.3B
at 81x480x832 ``[B=2, C=16, F=21, h=60, w=104]`` (I = 6240 points of D = 336, a 6240x6240 plan per sample).
Each measurement is ``loss(x0_hat, ...)`` forward + ``backward()``, the whole cost the trainer pays.

What is measured:
- time: median wall time of ``--repeats`` runs after one warm-up run (CUDA: synchronized).
- peak memory: CUDA -- ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call (the
  loss's own working set). CPU -- each (shape, loss) runs in a fresh subprocess and we report the growth of
  the process's peak resident set size (``resource.getrusage(...).ru_maxrss``) over the RSS after the inputs
  were built and a 1-point warm-up call had paid for lazy initialisation. torch's CPU tensors bypass Python's
  allocator, so ``tracemalloc`` would see none of them; RSS has page/allocator granularity (~MiB), so the
  tiny shape's figures are mostly that granularity.
- Sinkhorn iterations: the tiny shape runs to convergence (``--tol``, at most ``--max-iter``) and prints the
  count. At full shape on CPU one Sinkhorn iteration costs seconds, so the OTD run uses a fixed ``--full-iters``
  iterations (tol 0, so it never stops early); it times 1 and ``--full-iters`` iterations, prints both, and prints a
  linear EXTRAPOLATION to ``--assume-iters`` iterations, labelled as such. On CUDA (or with
  ``--full-converge``) the full shape runs to convergence like the tiny one. Iteration counts depend on ``reg``
  and on the data (bench/README.md has the counts measured on random latents).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.losses.dmd import dmd_loss
from trainer.losses.ot import latent_to_points, otd_loss, sinkhorn_plan

SHAPES = {
    "tiny": (4, 8, 5, 8, 8),
    "wan1.3b_81x480x832": (2, 16, 21, 60, 104),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _child(args: argparse.Namespace) -> dict:
    """One (shape, loss) measurement in this process; returns a JSON-able dict."""
    device = torch.device(args.device)
    shape = SHAPES[args.case]
    gen = torch.Generator(device="cpu").manual_seed(0)
    x0_hat = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    x0_fake = torch.randn(shape, generator=gen).to(device)
    x0_real = torch.randn(shape, generator=gen).to(device)
    full_fixed = args.case != "tiny" and device.type == "cpu" and not args.full_converge

    def run(max_iter: int, tol: float):
        x0_hat.grad = None
        if args.loss == "dmd":
            loss = dmd_loss(x0_hat, x0_real, x0_fake)
        else:
            loss = otd_loss(x0_hat, x0_fake, x0_real, args.reg, max_iter=max_iter, tol=tol)
        loss.backward()
        _sync(device)

    iters = (args.full_iters, 0.0) if full_fixed else (args.max_iter, args.tol)
    out: dict = {"case": args.case, "loss": args.loss, "shape": list(shape), "device": str(device)}

    # warm-up run = the memory measurement
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run(*iters)
        out["peak_bytes"] = torch.cuda.max_memory_allocated(device) - base
        out["peak_method"] = "torch.cuda.max_memory_allocated - allocated before"
    else:
        # Pay one-off lazy initialisation (autograd engine, kernels, POT backend) on a 1-point problem first,
        # so that the RSS growth measured below is the working set of the real call, not library start-up.
        small = torch.randn(1, 1, 1, 1, 2, requires_grad=True)
        if args.loss == "dmd":
            dmd_loss(small, small.detach() - 1, small.detach() + 1).backward()
        else:
            otd_loss(small, small.detach() + 1, small.detach() - 1, args.reg, max_iter=2).backward()
        base = _rss_bytes()
        run(*iters)
        out["peak_bytes"] = _rss_bytes() - base
        out["peak_method"] = "peak RSS growth (ru_maxrss) in a fresh process"

    repeats = args.full_repeats if full_fixed else args.repeats
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(*iters)
        times.append(time.perf_counter() - t0)
    out["median_s"] = statistics.median(times)
    out["times_s"] = times

    if args.loss == "otd":
        # Iterations the Sinkhorn solver actually ran (same inputs, same settings).
        _, info = sinkhorn_plan(
            latent_to_points(x0_fake),
            latent_to_points(x0_real),
            args.reg,
            max_iter=iters[0],
            tol=iters[1],
            return_info=True,
        )
        out["sinkhorn_iters"] = info["n_iters"]
        out["converged"] = (not full_fixed) and info["n_iters"] < iters[0]
        if full_fixed:
            t0 = time.perf_counter()
            run(1, 0.0)
            out["median_s_1iter"] = time.perf_counter() - t0
    return out


def _spawn(args: argparse.Namespace, case: str, loss: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_child",
        case,
        loss,
        "--device",
        args.device,
        "--reg",
        str(args.reg),
        "--repeats",
        str(args.repeats),
        "--max-iter",
        str(args.max_iter),
        "--tol",
        str(args.tol),
        "--full-iters",
        str(args.full_iters),
        "--full-repeats",
        str(args.full_repeats),
    ]
    if args.full_converge:
        cmd.append("--full-converge")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"benchmark child {case}/{loss} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _mib(n: int) -> str:
    return f"{n / 2**20:9.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--reg",
        type=float,
        default=0.2,
        help="Sinkhorn reg, relative to the centred cost RMS (trainer.losses.ot; default 0.2)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median; default 3)")
    p.add_argument("--max-iter", type=int, default=1000, help="Sinkhorn iteration cap when converging")
    p.add_argument("--tol", type=float, default=1e-4, help="Sinkhorn relative marginal tolerance")
    p.add_argument(
        "--full-iters",
        type=int,
        default=5,
        help="fixed Sinkhorn iterations for the full shape on CPU (default 5)",
    )
    p.add_argument("--full-repeats", type=int, default=1, help="timed runs for the full-shape CPU OTD (default 1)")
    p.add_argument(
        "--assume-iters",
        type=int,
        default=100,
        help="iteration count for the labelled CPU extrapolation (default 100; bench/README.md has measured counts)",
    )
    p.add_argument("--full-converge", action="store_true", help="run the full shape to convergence even on CPU")
    p.add_argument("--skip-full", action="store_true", help="only the tiny shape")
    p.add_argument("--_child", nargs=2, metavar=("CASE", "LOSS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._child:
        args.case, args.loss = args._child
        print(json.dumps(_child(args)))
        return 0

    print(
        f"OTD vs DMD loss cost on {args.device} (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads), "
        f"reg={args.reg:g}"
    )
    cases = ["tiny"] if args.skip_full else list(SHAPES)
    for case in cases:
        b, c, f, h, w = SHAPES[case]
        print(f"\n[{case}] latent [B={b}, C={c}, F={f}, h={h}, w={w}]: I={h * w} points of D={c * f} per sample")
        dmd = _spawn(args, case, "dmd")
        otd = _spawn(args, case, "otd")
        print(f"  DMD : time {dmd['median_s'] * 1e3:10.2f} ms  peak {_mib(dmd['peak_bytes'])}")
        label = "converged" if otd["converged"] else "FIXED iteration count, not converged"
        print(
            f"  OTD : time {otd['median_s'] * 1e3:10.2f} ms  peak {_mib(otd['peak_bytes'])}  "
            f"(Sinkhorn {otd['sinkhorn_iters']} iterations, {label})"
        )
        print(
            f"  ratio OTD/DMD: time {otd['median_s'] / dmd['median_s']:.1f}x, "
            f"peak memory {otd['peak_bytes'] / max(dmd['peak_bytes'], 1):.1f}x"
        )
        if "median_s_1iter" in otd:
            n = otd["sinkhorn_iters"]
            per_iter = (otd["median_s"] - otd["median_s_1iter"]) / max(n - 1, 1)
            fixed = otd["median_s_1iter"] - per_iter
            est = fixed + args.assume_iters * per_iter
            print(
                f"  OTD with 1 iteration: {otd['median_s_1iter']:.2f} s; => per Sinkhorn iteration "
                f"{per_iter:.3f} s, fixed part (cost matrix, gradient, first stop test) {fixed:.2f} s"
            )
            print(
                f"  EXTRAPOLATED (linear, not measured; ignores the stop test every 10 iterations): "
                f"{args.assume_iters} iterations ~ {est:.1f} s = {est / dmd['median_s']:.0f}x DMD"
            )
        plan_bytes = b * (h * w) ** 2 * 4
        print(f"  memory method: {otd['peak_method']}; for scale, one float32 [B, I, I] plan = {_mib(plan_bytes)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
