"""Peak memory of window decoding (truncated BPTT) through the Wan VAE decoder vs a full decode.

For a fixed clip of K latent chunks, each case runs ``decode_window`` (trainer/models/vae_window.py)
on a window of L chunks placed at the *end* of the clip (start = K - L, so the no-grad warm-up over
the K - L earlier chunks is included), a simple loss (mean squared pixel) and ``backward()``; the
full decode is the window L = K. Every case runs with gradient checkpointing (the training setting);
``--reference`` adds the same cases without checkpointing (truncation alone).

Measurement (every case in a fresh subprocess, so allocator state and earlier peaks don't leak):
- CPU: peak resident set size increase. After the VAE and the latents are built, the kernel's
  peak-RSS counter (VmHWM) is reset through /proc/self/clear_refs ("5"), the current RSS is read,
  the case runs, and the increase is VmHWM - RSS_before. Where the reset is not possible the script
  falls back to getrusage(RUSAGE_SELF).ru_maxrss and marks the figure as a lower bound.
  The children run with MALLOC_MMAP_THRESHOLD_=65536 and MALLOC_TRIM_THRESHOLD_=0 so that glibc
  gives freed tensor memory back to the OS at once; with glibc's default (adaptive) thresholds freed
  blocks stay resident and the figure of one case varies widely from run to run. The CPU figure
  includes the convolutions' transient workspaces (im2col), which are part of the real peak.
- CUDA (when available and not ``--device cpu``): torch.cuda.max_memory_allocated() minus the
  memory allocated before the case, after reset_peak_memory_stats().

The default shape is K=21 chunks = 81 frames at 64x64, batch 1, one torch thread. "cpu s" is the
process CPU time of the case (all threads), steadier than wall time on a shared machine.

Usage:
    python bench/window_memory.py                      # tiny preset, K=21, 64x64, batch 1, L = 5, 10, 21
    python bench/window_memory.py --lengths 6 12 --K 21
    python bench/window_memory.py --preset wan21 --height 480 --width 832 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRESETS = {
    # The trainer's tiny VAE (spatial x4, temporal x4): 21 chunks <-> 81 frames.
    "tiny": {
        "base_dim": 16,
        "z_dim": 16,
        "dim_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "temperal_downsample": [True, True],
    },
    # Wan2.1's VAE architecture (random weights; memory does not depend on the values).
    "wan21": {
        "base_dim": 96,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "temperal_downsample": [False, True, True],
    },
}


def _rss_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _hwm_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def run_case(args: argparse.Namespace) -> dict:
    """Child process: build the VAE, run one window case, report its peak memory."""
    import torch
    from diffusers import AutoencoderKLWan

    sys.path.insert(0, str(ROOT))
    from trainer.models.vae_window import decode_window

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = PRESETS[args.preset]
    vae = AutoencoderKLWan(**cfg, latents_mean=[0.0] * cfg["z_dim"], latents_std=[1.0] * cfg["z_dim"])
    vae = vae.to(device).eval().requires_grad_(False)
    spatial = 2 ** (len(cfg["dim_mult"]) - 1)
    h, w = args.height // spatial, args.width // spatial
    latents = torch.randn(args.batch, cfg["z_dim"], args.K, h, w, device=device).requires_grad_(True)
    start = args.K - args.length

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        exact = _reset_hwm()
        base_rss = _rss_kib()
        base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    pixels, frame_start = decode_window(vae, latents, start, args.length, checkpoint=args.checkpoint)
    loss = pixels.float().square().mean()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - cpu0

    result = {
        "length": args.length,
        "start": start,
        "frames": [frame_start, frame_start + pixels.shape[2]],
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "grad_nonzero_chunks": int((latents.grad.abs().sum(dim=(0, 1, 3, 4)) > 0).sum()),
    }
    if device.type == "cuda":
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        result["method"] = "cuda max_memory_allocated"
    elif exact and base_rss is not None and _hwm_kib() is not None:
        result["peak_mib"] = (_hwm_kib() - base_rss) / 1024
        result["method"] = "VmHWM reset via clear_refs"
    else:
        result["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_maxrss) / 1024
        result["method"] = "ru_maxrss delta (lower bound)"
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--K", type=int, default=21, help="latent chunks in the clip")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lengths", type=int, nargs=2, default=None, help="two window lengths (default K//4, K//2)")
    p.add_argument("--device", default="auto", help="auto (cpu, plus cuda when available), cpu or cuda")
    p.add_argument(
        "--reference",
        action="store_true",
        help="also run every case without gradient checkpointing (about doubles the runtime)",
    )
    p.add_argument("--no-checkpoint", dest="checkpoint", action="store_false", help=argparse.SUPPRESS)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine OpenMP waits make more threads slower)",
    )
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._child:
        print("RESULT " + json.dumps(run_case(args)))
        return

    short, long_ = args.lengths or (max(1, args.K // 4), max(1, args.K // 2))
    for name, value in (("short window", short), ("long window", long_)):
        if not 1 <= value <= args.K:
            raise SystemExit(f"--lengths: {name} {value} must be in [1, K={args.K}]")
    if args.device == "auto":
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]

    print(
        f"preset={args.preset}: K={args.K} latent chunks, {args.height}x{args.width} pixels, batch {args.batch}; "
        f"window at the clip end; each case in a fresh process"
    )
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "0",
    }
    modes = [True, False] if args.reference else [True]
    for device in devices:
        for ckpt in modes:
            results = {}
            for length in (short, long_, args.K):
                cmd = [
                    sys.executable,
                    __file__,
                    "--_child",
                    "--preset",
                    args.preset,
                    "--K",
                    str(args.K),
                    "--height",
                    str(args.height),
                    "--width",
                    str(args.width),
                    "--batch",
                    str(args.batch),
                    "--length",
                    str(length),
                    "--device",
                    device,
                    "--threads",
                    str(args.threads),
                ] + ([] if ckpt else ["--no-checkpoint"])
                proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    raise SystemExit(f"case L={length} on {device} failed:\n{proc.stderr[-3000:]}")
                results[length] = json.loads(lines[-1][len("RESULT ") :])
            _report(device, ckpt, results, short, long_, args.K)


def _report(device: str, ckpt: bool, results: dict, short: int, long_: int, k: int) -> None:
    method = results[k]["method"]
    title = "with gradient checkpointing" if ckpt else "WITHOUT checkpointing (reference)"
    print(f"\n[{device}] decode_window + loss + backward, {title}; peak memory by {method}")
    print(f"{'L':>9} {'start':>5} {'frames':>7} {'peak MiB':>9} {'wall s':>7} {'cpu s':>7} {'grad chunks':>11}")
    for length, r in results.items():
        label = f"{length}" + (" (full)" if length == k else "")
        frames = f"{r['frames'][0]}-{r['frames'][1] - 1}"
        print(
            f"{label:>9} {r['start']:>5} {frames:>7} {r['peak_mib']:>9.1f} {r['seconds']:>7.2f} "
            f"{r['cpu_seconds']:>7.2f} {r['grad_nonzero_chunks']:>11}"
        )
    full, p_long, p_short = (results[x]["peak_mib"] for x in (k, long_, short))
    slope = (full - p_short) / (k - short) if k != short else float("nan")
    print(
        f"ratios: L={long_} / full = {p_long / full:.3f}; L={short} / L={long_} = {p_short / p_long:.3f}; "
        f"growth {slope:.2f} MiB per extra window chunk; constant part ~ {p_short - slope * short:.1f} MiB"
    )


if __name__ == "__main__":
    main()
