"""Score every video in a folder with one metric backend (the engine of ``motionlab score``).

A folder's videos are its video files (mp4, webm, mkv, mov, avi, gif) and its sub-folders of frame images,
read with ``trainer.data.video_io.read_video``. A video that cannot be read or scored is listed with its error and
left out of the aggregates; the rest are still scored.

    from evaluator.score_folder import score_folder
    out = score_folder("samples/", backend="lite", metrics=["motion_smoothness", "dynamic_degree"])
    out["aggregate"]["dynamic_degree"]["value"]     # fraction of dynamic videos
    out["videos"][0]["scores"]["motion_smoothness"]["value"]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from evaluator.metrics import (
    EVALUATOR_VERSION,
    aggregate_results,
    check_metrics,
    score_video,
)
from evaluator.metrics.base import check_backend
from trainer.data.video_io import VideoReadError, is_video_path, read_video


def list_videos(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder {folder} is not a directory")
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and is_video_path(p))


def score_folder(
    folder: str | os.PathLike,
    backend: str = "lite",
    metrics: Iterable[str] | None = None,
    progress: Callable[[int, int, Path], None] | None = None,
    **opts: Any,
) -> dict[str, Any]:
    """Per-video and aggregate scores of all videos in ``folder`` (JSON-serialisable dict).

    ``opts`` go to the metrics (``weights_dir``, ``device``, ``flow``, ``preset``). ``progress(i, n, path)`` is
    called before each video. Raises ``ValueError`` for a missing folder, a folder without videos, an unknown metric
    or backend."""
    names = check_metrics(metrics)
    check_backend(backend)
    paths = list_videos(folder)
    if not paths:
        raise ValueError(f"folder {folder} contains no videos (looked for video files and frame folders)")
    videos: list[dict[str, Any]] = []
    results: dict[str, list] = {n: [] for n in names}
    for i, path in enumerate(paths):
        if progress:
            progress(i, len(paths), path)
        entry: dict[str, Any] = {"path": str(path), "name": path.name}
        try:
            frames, fps = read_video(path)
            entry.update(fps=fps, frames=int(frames.shape[0]), height=int(frames.shape[1]), width=int(frames.shape[2]))
            scores = score_video(frames, fps, names, backend, **opts)
        except (VideoReadError, ValueError) as exc:
            entry["error"] = str(exc)
            videos.append(entry)
            continue
        entry["scores"] = {n: r.to_dict() for n, r in scores.items()}
        for n, r in scores.items():
            results[n].append(r)
        videos.append(entry)
    aggregate = {n: aggregate_results(rs) for n, rs in results.items() if rs}
    return {
        "folder": str(folder),
        "backend": backend,
        "metrics": names,
        "evaluator_version": EVALUATOR_VERSION,
        "n_videos": len(paths),
        "n_scored": sum(1 for v in videos if "scores" in v),
        "n_errors": sum(1 for v in videos if "error" in v),
        "videos": videos,
        "aggregate": aggregate,
    }
