"""Weight-free distribution distances between generated and real videos (for the tiny scale, where no FVD/CLIP
model is available): lower is closer, 0 for identical sets.

- ``sliced_wasserstein_patches``: visual fidelity; sliced Wasserstein distance (POT) between the distributions of
  ``patch x patch x 3`` RGB frame patches (values in [0, 1]) of the two sets.
- ``flow_statistics_distance``: motion fidelity; sliced Wasserstein distance between per-video vectors of optical-flow
  statistics (magnitude quantiles, temporal variation, magnitude-weighted direction histogram) of the two sets.

Both are deterministic for a given ``seed`` (patch sampling and projection directions), and both sample the two
sets with the same generator state so that identical sets give exactly 0.

    swd = sliced_wasserstein_patches(gen_videos, real_videos, patch=8, n_proj=128, seed=0)
    fsd = flow_statistics_distance(gen_videos, real_videos, seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evaluator.metrics.base import check_video
from evaluator.metrics.lite import optical_flow, to_gray

N_DIRECTION_BINS = 8
FLOW_STAT_NAMES = (
    "mag_mean",
    "mag_std",
    "mag_p50",
    "mag_p90",
    "mag_p99",
    "mag_temporal_std",
    "mag_temporal_absdiff",
) + tuple(f"dir_hist_{i}" for i in range(N_DIRECTION_BINS))


def _check_set(videos: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    if isinstance(videos, np.ndarray) and videos.ndim == 4:
        videos = [videos]
    videos = list(videos)
    if not videos:
        raise ValueError(f"{name} must contain at least one video")
    return [check_video(v, name=f"{name}[{i}]") for i, v in enumerate(videos)]


def extract_patches(videos: Sequence[np.ndarray], patch: int, max_patches: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``max_patches`` non-overlapping ``patch x patch`` RGB patches from all frames, as float rows in [0, 1]
    (every patch when there are fewer, else a uniform sample without replacement)."""
    locs = []  # (video, frame, y, x) of every non-overlapping patch
    for vi, v in enumerate(videos):
        t, h, w, _ = v.shape
        if h < patch or w < patch:
            raise ValueError(f"video {vi} frames are {h}x{w}, smaller than patch={patch}")
        ys, xs = np.arange(0, h - patch + 1, patch), np.arange(0, w - patch + 1, patch)
        grid = np.stack(np.meshgrid(np.arange(t), ys, xs, indexing="ij"), -1).reshape(-1, 3)
        locs.append(np.concatenate([np.full((len(grid), 1), vi), grid], 1))
    locs = np.concatenate(locs)
    if len(locs) > max_patches:
        locs = locs[np.sort(rng.choice(len(locs), max_patches, replace=False))]
    out = np.empty((len(locs), patch * patch * 3), np.float64)
    for k, (vi, fi, y, x) in enumerate(locs):
        out[k] = videos[vi][fi, y : y + patch, x : x + patch].reshape(-1)
    return out / 255.0


def sliced_wasserstein_patches(
    gen_videos: Sequence[np.ndarray],
    real_videos: Sequence[np.ndarray],
    patch: int = 8,
    n_proj: int = 128,
    seed: int = 0,
    max_patches: int = 4096,
) -> float:
    """Sliced 2-Wasserstein distance between the frame-patch distributions of two video sets."""
    gen, real = _check_set(gen_videos, "gen_videos"), _check_set(real_videos, "real_videos")
    if patch < 1 or n_proj < 1 or max_patches < 1:
        raise ValueError(f"patch, n_proj and max_patches must be >= 1, got {patch}, {n_proj}, {max_patches}")
    xg = extract_patches(gen, patch, max_patches, np.random.default_rng(seed))
    xr = extract_patches(real, patch, max_patches, np.random.default_rng(seed))
    return _swd(xg, xr, n_proj, seed)


def _swd(x: np.ndarray, y: np.ndarray, n_proj: int, seed: int) -> float:
    import ot

    return float(ot.sliced_wasserstein_distance(x, y, n_projections=n_proj, seed=seed))


def flow_statistics(video: np.ndarray, flow: str = "dis", preset: str = "medium", max_pairs: int = 32) -> np.ndarray:
    """Per-video motion descriptor (see ``FLOW_STAT_NAMES``), flow of consecutive frames (at most ``max_pairs``
    evenly spaced pairs). Magnitudes are in units of ``min(H, W) / 256`` pixels, the scale of VBench's dynamic
    threshold, so that descriptors of different resolutions are comparable."""
    video = check_video(video, min_frames=2)
    t = video.shape[0]
    starts = np.unique(np.linspace(0, t - 2, min(max_pairs, t - 1)).round().astype(int))
    unit = min(video.shape[1], video.shape[2]) / 256.0
    mags, per_pair_mean = [], []
    hist = np.zeros(N_DIRECTION_BINS)
    for s in starts:
        f = optical_flow(to_gray(video[s]), to_gray(video[s + 1]), flow, preset).astype(np.float64) / unit
        m = np.hypot(f[..., 0], f[..., 1]).ravel()
        ang = np.arctan2(f[..., 1], f[..., 0]).ravel()
        bins = ((ang + np.pi) / (2 * np.pi) * N_DIRECTION_BINS).astype(int) % N_DIRECTION_BINS
        hist += np.bincount(bins, weights=m, minlength=N_DIRECTION_BINS)
        mags.append(m)
        per_pair_mean.append(m.mean())
    allm = np.concatenate(mags)
    hist = hist / hist.sum() if hist.sum() > 0 else np.full(N_DIRECTION_BINS, 1.0 / N_DIRECTION_BINS)
    ppm = np.array(per_pair_mean)
    return np.concatenate(
        [
            [allm.mean(), allm.std(), *np.percentile(allm, [50, 90, 99])],
            [ppm.std(), np.abs(np.diff(ppm)).mean() if len(ppm) > 1 else 0.0],
            hist,
        ]
    )


def flow_statistics_distance(
    gen_videos: Sequence[np.ndarray],
    real_videos: Sequence[np.ndarray],
    n_proj: int = 128,
    seed: int = 0,
    flow: str = "dis",
    preset: str = "medium",
) -> float:
    """Sliced 2-Wasserstein distance between the per-video flow-statistic vectors of two video sets."""
    gen, real = _check_set(gen_videos, "gen_videos"), _check_set(real_videos, "real_videos")
    xg = np.stack([flow_statistics(v, flow, preset) for v in gen])
    xr = np.stack([flow_statistics(v, flow, preset) for v in real])
    return _swd(xg, xr, n_proj, seed)
