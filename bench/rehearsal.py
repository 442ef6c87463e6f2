"""Full-architecture rehearsal: every method on Wan2.1-T2V-1.3B's transformer config, from preprocessed shards.

Random weights (the work per step does not depend on their values), the full preset of each method, FSDP2 under
``torchrun``: preprocess a few synthetic clips and prompts into shards, train each method one iteration, resume it for
a second, export a diffusers pipeline and load it back. Prints seconds per iteration and peak memory per method next
to ``motionlab plan``'s prediction for the same config.

    python bench/rehearsal.py                     # CPU: 2 blocks, 13x64x64 clips, 2 gloo ranks, all five methods
    python bench/rehearsal.py --device cuda --layers 30 --frames 81 --height 480 --width 832 --nproc 1 \\
        --methods mogan --window-chunks 3          # the GPU step of scripts/gpu_check.sh: the whole 1.3B model

The discriminator trunk takes the first ``min(16, layers)`` blocks of the teacher, as at full scale; MoGAN's window
and head indices shrink with the clip and the trunk. Batches are global and as small as the ranks allow: what is
rehearsed is the architecture and the sharded path, not the paper's batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

from trainer.config import FULL_DISC_BLOCKS, load_train_config
from trainer.models.generator import Generator
from trainer.plan import plan_memory

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("sft", "dmd", "mogan", "vdot", "dfdpo")
NEEDS_TEACHER = ("dmd", "mogan", "vdot")


def build_pipeline(out: Path, layers: int, device: str) -> Path:
    """Wan2.1's DiT at ``layers`` blocks, Wan's VAE, a one-layer 4096-wide text encoder; random, saved as diffusers."""
    path = out / "pipeline"
    if not (path / "model_index.json").is_file():
        gen = Generator.build_full_random(seed=0, device=device, num_layers=layers, text_layers=1)
        gen.to("cpu").save_pretrained(path)
    return path


def raft_weights(out: Path) -> Path:
    """torchvision's RAFT-large with random weights as a state-dict file, where the real one would be."""
    path = out / "raft_large.pth"
    if not path.is_file():
        torch.save(torchvision.models.optical_flow.raft_large(weights=None).state_dict(), path)
    return path


def preprocess(out: Path, pipeline: Path, raft: Path, args) -> Path:
    shards = out / "shards"
    cmd = [
        sys.executable,
        "-m",
        "backend.cli",
        "data",
        "preprocess",
        str(shards),
        "--model",
        str(pipeline),
        "--source",
        "synthetic",
        "--num-videos",
        str(args.clips),
        "--num-prompts",
        str(args.clips),
        "--frames",
        str(args.frames),
        "--height",
        str(args.height),
        "--width",
        str(args.width),
        "--flow",
        "raft_large",
        "--flow-weights",
        str(raft),
        "--pixels",
        "--device",
        args.device,
        "--shard-size",
        str(max(1, args.clips // 2)),
        "--batch-size",
        "1",
    ]
    _run(cmd, out / "preprocess.log")
    return shards


def train_overrides(method: str, shards: Path, raft: Path, args) -> dict:
    """The full preset, pointed at the shards and shrunk to the rehearsal's clip, depth and ranks."""
    batch = args.nproc  # one sample per rank: the global batch is split over the ranks
    sets = {
        "device": args.device,
        "parallel": "fsdp",
        "batch_size": batch,
        "grad_accum": 1,
        "log_every": 1,
        "checkpoint_every": 1,
        "keep_checkpoints": 1,  # a checkpoint of the 2-block rehearsal is gigabytes
        "data.source": "shards",
        "data.root": str(shards),
        "data.num_frames": args.frames,
        "data.height": args.height,
        "data.width": args.width,
    }
    if method == "vdot":  # the feature discriminator's blocks of the fake score, scaled to the rehearsal's depth
        sets["method_cfg.disc_blocks"] = sorted({b * args.layers // 30 for b in FULL_DISC_BLOCKS})
    if method == "mogan":
        chunks = 1 + (args.frames - 1) // 4
        blocks = min(16, args.layers)
        heads = [7, 13, 15] if blocks == 16 else [max(0, blocks - 3 + i) for i in range(3)]
        sets.update(
            {
                "method_cfg.window_chunks": args.window_chunks or min(12, chunks),
                "method_cfg.disc_blocks": blocks,
                "method_cfg.head_blocks": heads,
                "method_cfg.disc_batch_size": batch,
                "method_cfg.flow_weights": str(raft),
            }
        )
    return sets


def _nested(sets: dict) -> dict:
    out: dict = {}
    for key, value in sets.items():
        cur = out
        *parents, leaf = key.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = value
    return out


def train(method: str, pipeline: Path, sets: dict, run_dir: Path, steps: int, args) -> float:
    """One launch of ``motionlab train`` (torchrun for several ranks); returns its wall time."""
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc)]
        if args.nproc > 1
        else [sys.executable]
    )
    cmd = [
        *launcher,
        "-m",
        "backend.cli",
        "train",
        method,
        "--preset",
        "full",
        "--init",
        str(pipeline),
        "--run-dir",
        str(run_dir),
        "--steps",
        str(steps),
    ]
    if method in NEEDS_TEACHER:
        cmd += ["--teacher", str(pipeline)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    t0 = time.perf_counter()
    _run(cmd, run_dir.parent / f"{run_dir.name}-{steps}.log")
    return time.perf_counter() - t0


def _run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"rehearsal: {' '.join(cmd[:8])} ... failed ({proc.returncode}); log {log}:\n{tail}")


def check_export(run_dir: Path) -> None:
    """The export is a pipeline stock diffusers loads: its transformer comes back with the full width."""
    from diffusers import WanTransformer3DModel

    name = "policy" if (run_dir / "export" / "policy").is_dir() else "transformer"
    model = WanTransformer3DModel.from_pretrained(run_dir / "export", subfolder=name)
    assert model.config.num_attention_heads * model.config.attention_head_dim == 1536, model.config


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/rehearsal"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--frames", type=int, default=13)  # DF-DPO's shuffle edit needs at least 10 frames
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--window-chunks", type=int, default=0, help="MoGAN's decoded window (default: 12 or all chunks)")
    ap.add_argument("--gpu-mem", type=float, default=80.0, help="GPU memory the plan is checked against (GiB)")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    pipeline = build_pipeline(args.out, args.layers, args.device)
    raft = raft_weights(args.out)
    shards = preprocess(args.out, pipeline, raft, args)
    print(
        f"rehearsal: pipeline ({args.layers} blocks) and shards ({args.clips} clips {args.frames}x{args.height}x"
        f"{args.width}) in {time.perf_counter() - t0:.0f} s"
    )

    rows = []
    for method in methods:
        sets = train_overrides(method, shards, raft, args)
        run_dir = args.out / "runs" / method
        first = train(method, pipeline, sets, run_dir, 1, args)  # iteration 1, checkpoint
        second = train(method, pipeline, sets, run_dir, 2, args)  # resume at 1, iteration 2, export
        check_export(run_dir)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [1, 2], f"{method}: steps logged {[m['step'] for m in metrics]}"
        refs = {"init": str(pipeline), **({"teacher": str(pipeline)} if method in NEEDS_TEACHER else {})}
        cfg = load_train_config(method, _nested(sets) | refs, preset="full")
        plan = plan_memory(cfg, gpus=args.nproc, gpu_mem_gib=args.gpu_mem, device=args.device)
        peak = max(m.get("peak_mem_gib", m.get("peak_rss_gib", 0.0)) for m in metrics)  # rank 0's
        rows.append(
            {
                "method": method,
                "sec_per_iter": metrics[-1]["sec_per_step"],
                "launch_s": [first, second],
                "peak_gib": peak,
                "planned_gib": plan.total_gib,
                "fits": plan.fits,
            }
        )
    kind = "allocator peak" if args.device.startswith("cuda") else "peak RSS"
    print(f"\n{'method':8} {'s/iter':>8} {'launch 1+2 (s)':>15} {kind + ' GiB':>18} {'planned GiB':>12}")
    for r in rows:
        print(
            f"{r['method']:8} {r['sec_per_iter']:8.1f} {r['launch_s'][0]:7.0f}+{r['launch_s'][1]:<7.0f} "
            f"{r['peak_gib']:18.2f} {r['planned_gib']:12.2f}"
        )
    print(
        f"total {time.perf_counter() - t0:.0f} s ({args.nproc} ranks, {args.device}, {args.layers} blocks); planned: "
        f"`motionlab plan` for one rank, without the CUDA margin"
    )
    return rows


if __name__ == "__main__":
    main()
