"""Seconds per training iteration of every method at tiny scale, this checkout against another commit, in one run.

    python bench/tiny_step_time.py --against 6acee83      # git worktree of that commit under /tmp, same venv

Each method trains a few iterations from the shipped tiny checkpoints in a fresh single-process run (one rank, the
tiny path ``motionlab recipe tiny`` takes), alternately in the two trees; the first logged window (start-up, first
iterations) is dropped. Prints the mean seconds per iteration of each and the ratio (this / other).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {  # method -> (arguments, iterations)
    "vae": ([], 20),  # the recipe's first stage (one rank here; the recipe runs it on two)
    "sft": (["--init", "tiny-teacher", "--set", "data.num_videos=64"], 40),
    "dmd": (["--teacher", "tiny-teacher"], 20),
    "mogan": (["--teacher", "tiny-teacher", "--init", "tiny-dmd"], 12),
    "vdot": (["--teacher", "tiny-teacher"], 12),
    "dfdpo": (["--init", "tiny-teacher", "--set", "data.num_videos=64"], 12),
}
WINDOWS = 4  # logged windows per run; the first is dropped


def sec_per_iter(tree: Path, method: str, run_dir: Path) -> float:
    args, steps = RUNS[method]
    cmd = [
        sys.executable,
        "-m",
        "backend.cli",
        "train",
        method,
        "--preset",
        "tiny",
        "--run-dir",
        str(run_dir),
        "--steps",
        str(steps),
        "--set",
        f"log_every={steps // WINDOWS}",
        "--set",
        f"checkpoint_every={steps}",
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{method} in {tree} failed:\n{proc.stderr[-2000:]}")
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.mean(r["sec_per_step"] for r in recs[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", required=True, help="the commit to compare with")
    ap.add_argument("--methods", default=",".join(RUNS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(other), args.against], cwd=ROOT, check=True, capture_output=True
        )
        try:
            print(f"{'method':8} {'this s/iter':>12} {args.against[:10] + ' s/iter':>18} {'ratio':>7}")
            for method in args.methods.split(","):
                this = sec_per_iter(ROOT, method, Path(tmp) / f"this-{method}")
                then = sec_per_iter(other, method, Path(tmp) / f"other-{method}")
                print(f"{method:8} {this:12.3f} {then:18.3f} {this / then:7.2f}", flush=True)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, capture_output=True, check=False
            )


if __name__ == "__main__":
    main()
