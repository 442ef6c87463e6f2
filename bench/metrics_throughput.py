"""Throughput of the lite motion metrics (dynamic degree + motion smoothness + temporal flickering).

Random-motion videos (a smooth random texture panning with a random velocity per video) of 17 x 64 x 64 (the tiny
scale) and 81 x 480 x 832 (Wan2.1 at 480p, 16 fps) are scored by a process pool (default 2 workers, one OpenCV thread
each). Each worker makes its video, then times only the metrics, so the figures are metric throughput:
``videos/s = n_videos / (sum of per-video metric seconds / workers)``; the wall clock including video synthesis is
printed too.

Run: python bench/metrics_throughput.py [--workers 2] [--n-small 32] [--n-large 4] [--flow dis --preset medium]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

METRICS = ["dynamic_degree", "motion_smoothness", "temporal_flickering"]
FPS = 16.0


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker; the pool provides the parallelism


def _one(args: tuple[int, int, int, int, str, str]) -> tuple[float, dict[str, float]]:
    frames, height, width, seed, flow, preset = args
    import numpy as np

    from evaluator.metrics import score_video
    from evaluator.metrics.synthetic import panning_texture

    rng = np.random.default_rng(seed)
    # velocities up to ~1% of the width per frame: small videos move a little, large ones several pixels
    v = rng.uniform(-1, 1, 2) * max(1.0, width / 100)
    video = panning_texture(frames, height, width, velocity=(float(v[0]), float(v[1])), seed=seed)
    t0 = time.perf_counter()
    res = score_video(video, FPS, METRICS, backend="lite", flow=flow, preset=preset)
    dt = time.perf_counter() - t0
    return dt, {k: r.value for k, r in res.items()}


def run(frames: int, height: int, width: int, n: int, workers: int, flow: str, preset: str) -> dict[str, float]:
    tasks = [(frames, height, width, seed, flow, preset) for seed in range(n)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
        out = list(pool.map(_one, tasks))
    wall = time.perf_counter() - t0
    metric_s = [o[0] for o in out]
    return {
        "videos": n,
        "sec_per_video": sum(metric_s) / n,
        "videos_per_s": n / (sum(metric_s) / workers),
        "wall_s": wall,
        "wall_videos_per_s": n / wall,
        "dynamic_fraction": sum(o[1]["dynamic_degree"] for o in out) / n,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n-small", type=int, default=32, help="videos of 17x64x64")
    p.add_argument("--n-large", type=int, default=4, help="videos of 81x480x832")
    p.add_argument("--flow", default="dis", choices=["dis", "farneback"])
    p.add_argument("--preset", default="medium", choices=["ultrafast", "fast", "medium"])
    a = p.parse_args(argv)
    print(
        f"lite motion metrics ({', '.join(METRICS)}), flow={a.flow}/{a.preset}, {a.workers} worker processes, "
        f"{os.cpu_count()} CPUs visible"
    )
    for frames, h, w, n in [(17, 64, 64, a.n_small), (81, 480, 832, a.n_large)]:
        if n <= 0:
            continue
        r = run(frames, h, w, n, a.workers, a.flow, a.preset)
        print(
            f"  {frames:3d} x {h:3d} x {w:3d}: {r['videos_per_s']:8.3f} videos/s  "
            f"({r['sec_per_video']:.3f} s/video/core, {r['videos']} videos, wall incl. synthesis "
            f"{r['wall_s']:.1f} s = {r['wall_videos_per_s']:.3f} videos/s, dynamic {r['dynamic_fraction']:.2f})"
        )


if __name__ == "__main__":
    main()
