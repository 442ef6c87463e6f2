"""How close ``trainer/plan.py`` comes to measured peak memory: every method trained for 2 steps on CPU.

Each method runs ``train_run`` for 2 iterations (VDOT's two phases, every MoGAN update) in a fresh process at the
tiny configs and a larger video than the tiny preset's (default 17 x 128 x 128: 1280 DiT tokens per clip, so that
activations, not the tiny weights, make the peak), one torch thread, float32, micro-batch 4. The planner plans the
same config for one CPU process (``plan_memory(cfg, gpus=1, ..., device="cpu")``).

What is measured, and why it compares with the plan: after the method has built its networks and data
(``Method.setup_data`` returns), the child resets the kernel's peak-RSS counter (VmHWM, via /proc/self/clear_refs)
and reads its RSS; when the last step is done (just before the loop writes its checkpoint) it reads VmHWM again.
The difference is what training adds on top of the built networks and data: AdamW states (allocated at each
network's first step), gradients and activations, with every transient -- exactly the planner's optimizer +
gradients + activations of its peak phase (the weights, frozen networks and data are in the baseline on both
sides). The children run with MALLOC_MMAP_THRESHOLD_=65536 and MALLOC_TRIM_THRESHOLD_=0 so that glibc returns
freed tensor memory at once and RSS follows live tensors (as bench/window_memory.py does). The optimizer states
are also counted exactly (bytes of every AdamW state tensor), so the table splits each side into optimizer and
the rest (gradients + activations).

    python bench/plan_accuracy.py                       # sft dmd mogan vdot dfdpo at 17x128x128, batch 4
    python bench/plan_accuracy.py --methods mogan --size 192 --batch 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.config import deep_merge, load_train_config
from trainer.plan import GIB, plan_memory

METHODS = ("sft", "dmd", "mogan", "vdot", "dfdpo")
# starting checkpoints from the tiny zoo (the weights' values do not change memory) and small datasets: only the
# clips' shape matters here
START = {
    "sft": {"init": "tiny-teacher"},
    "dmd": {"teacher": "tiny-teacher", "method_cfg": {"num_prompts": 32}},
    "mogan": {"teacher": "tiny-teacher", "init": "tiny-dmd", "method_cfg": {"num_prompts": 32, "num_real": 8}},
    "vdot": {"teacher": "tiny-teacher", "method_cfg": {"num_prompts": 32, "num_real": 8}},
    "dfdpo": {"init": "tiny-teacher"},
}


def overrides(method: str, frames: int, size: int, batch: int) -> dict:
    common = {
        "steps": 2,
        "batch_size": batch,
        "grad_accum": 1,
        "ema_decay": 0.0,
        "log_every": 1,
        "checkpoint_every": 1000,
        "device": "cpu",
        "mixed_precision": "no",
        "data": {"num_frames": frames, "height": size, "width": size, "num_videos": 8},
    }
    return deep_merge(common, START[method])


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def child(method: str, over: dict, run_dir: str, tensors: bool) -> None:
    """Train 2 steps; print the peak RSS increase over the state after setup_data, and the AdamW state bytes (with
    ``tensors``: also the peak of live tensor bytes, by the planner's own dispatch-mode counter)."""
    import torch

    from trainer import loop
    from trainer.methods import METHODS as REGISTRY
    from trainer.plan import _LiveBytes

    torch.set_num_threads(1)
    cls = REGISTRY[method]
    base: dict = {}
    setup = cls.setup_data

    def setup_data(self, rank, world_size):
        setup(self, rank, world_size)
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        base["rss"] = _status_kib("VmRSS")
        base["t"] = time.perf_counter()
        if tensors:
            base["live"] = _LiveBytes()
            base["live"].__enter__()  # until the process exits

    def save_checkpoint(run_dir, step, method_obj, optimizers, *args, **kwargs):
        peak = _status_kib("VmHWM")
        opt = sum(
            t.numel() * t.element_size()
            for o in optimizers.values()
            for s in o.state.values()
            for t in s.values()
            if torch.is_tensor(t)
        )
        print(
            "RESULT "
            + json.dumps(
                {
                    "peak_delta": (peak - base["rss"]) * 1024,
                    "optimizer": opt,
                    "tensors": base["live"].peak if tensors else None,
                    "seconds": time.perf_counter() - base["t"],
                }
            ),
            flush=True,
        )
        os._exit(0)

    cls.setup_data = setup_data
    loop.save_checkpoint = save_checkpoint
    cfg = load_train_config(method, over, preset="tiny")
    loop.train_run(cfg, run_dir, progress_bar=False)
    raise SystemExit("the loop ended without writing its checkpoint")


def measure(method: str, over: dict, tensors: bool) -> dict:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "0",
    }
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--_child", method, "--_overrides", json.dumps(over), "--_run-dir", tmp]
        cmd += ["--tensors"] if tensors else []
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{method}: the measuring process failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--frames", type=int, default=17, help="video frames (1 + 4k; the synthetic clips need <= 17)")
    p.add_argument("--size", type=int, default=128, help="video height and width (multiple of 4, at most 512)")
    p.add_argument("--batch", type=int, default=4, help="batch_size (one process: the micro-batch)")
    p.add_argument(
        "--tensors",
        action="store_true",
        help="also measure the peak of live tensor bytes (slower: every op goes through a dispatch mode)",
    )
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_overrides", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_run-dir", dest="run_dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        child(args._child, json.loads(args._overrides), args.run_dir, args.tensors)
        return

    mib = 2**20
    print(
        f"tiny configs, video {args.frames}x{args.size}x{args.size}, batch {args.batch}, float32, one CPU thread; "
        f"MiB; 'rest' = gradients + activations of the peak (planned: its peak phase)"
    )
    header = (
        f"{'method':<7} {'planned peak phase':<26} {'opt plan':>8} {'opt meas':>8} {'rest plan':>9} "
        f"{'rest meas':>9} {'plan':>8} {'measured':>8} {'ratio':>6} {'run s':>6}"
        + (f" {'tensors':>8} {'ratio':>6}" if args.tensors else "")
    )
    print(header)
    for method in args.methods:
        over = overrides(method, args.frames, args.size, args.batch)
        cfg = load_train_config(method, over, preset="tiny")
        plan = plan_memory(cfg, 1, 1024.0, device="cpu", suggest_fix=False)
        g = plan.groups()
        planned_opt, planned_rest = g["optimizer"] * GIB, (g["gradients"] + g["activations"]) * GIB
        m = measure(method, over, args.tensors)
        measured_rest = m["peak_delta"] - m["optimizer"]
        planned = planned_opt + planned_rest
        print(
            f"{method:<7} {plan.peak.name:<26} {planned_opt / mib:>8.1f} {m['optimizer'] / mib:>8.1f} "
            f"{planned_rest / mib:>9.1f} {measured_rest / mib:>9.1f} {planned / mib:>8.1f} "
            f"{m['peak_delta'] / mib:>8.1f} {planned / m['peak_delta']:>6.2f} {m['seconds']:>6.1f}"
            + (f" {m['tensors'] / mib:>8.1f} {planned / m['tensors']:>6.2f}" if args.tensors else ""),
            flush=True,
        )


if __name__ == "__main__":
    main()
