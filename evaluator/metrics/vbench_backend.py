"""The ``vbench`` metric backend: VBench's own models *and code* on in-memory videos, from local weight files.

``vbench`` is installed without its dependencies (``pip install --no-deps vbench``; it pins old numpy and
transformers) plus the few packages the five modules used here import: ``easydict``, ``omegaconf``, ``decord``
(imported by ``vbench.utils``), ``openai-clip`` (needs ``setuptools<81`` for ``pkg_resources``) and ``pyiqa``
(``--no-deps``; only ``pyiqa.archs.musiq_arch`` is used).

How each metric reuses VBench (so that numbers equal VBench's; the parity tests check it on the same files):

- dynamic_degree: VBench's ``DynamicDegree`` (its model loading, ``infer``, ``set_params``, ``get_score``,
  ``check_move``, RAFT with 20 iterations); only its frame source is replaced by the array (sampled with VBench's
  interval from the given fps, as VBench does for mp4 files; VBench's frame-folder route skips that sampling, here
  every video is sampled by its fps).
- motion_smoothness: VBench's ``MotionSmoothness`` (AMT-S from its own config, ``motion_score``, ``vfi_score``); only
  its ``FrameProcess`` reader is replaced by one that returns the array's frames.
- temporal_flickering: VBench's ``mae_seq`` and formula on the frames in VBench's (BGR) order.
- aesthetic_quality: VBench's ``get_aesthetic_model`` and ``clip.load`` on the local files, VBench's
  ``clip_transform(224)``, batches of VBench's ``batch_size``; the per-video loop of ``laion_aesthetic``.
- imaging_quality: pyiqa's ``MUSIQ`` built as VBench builds it, VBench's ``transform`` ('longer' by default), the
  per-video loop of ``technical_quality``; per-video value divided by 100 as in VBench's average.

Weight files come from ``<weights_dir>/vbench/`` (VBench's cache layout, see ``weights.py``); they are passed to
VBench's classes as paths, so ``$VBENCH_CACHE_DIR`` is not needed and nothing is downloaded. Missing files, a missing
package, or a frame size at which VBench's models are undefined give an "unavailable" result with the reason.

Size limit found while wiring this (a property of VBench's code, any weights): RAFT and AMT build 4-level correlation
pyramids at 1/8 resolution and normalise sample coordinates by ``(size - 1)``; when the coarsest level is 1 pixel
that is a division by zero and the flow is NaN. VBench then silently reports "static" (NaN comparisons are false) and
a meaningless smoothness. Here such videos are reported unavailable instead: RAFT needs both sides, padded to a
multiple of 8, >= 128; AMT-S needs both sides, padded to a multiple of 16, >= 128.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from evaluator.metrics import weights as W
from evaluator.metrics.base import MetricResult, check_fps, check_video, unavailable
from evaluator.metrics.lite import dd_interval

BACKEND = "vbench"
MIN_PYRAMID_SIDE = 128  # padded side for which the 4th correlation level (1/64 resolution) is >= 2 pixels

_MODEL_CACHE: dict[tuple, Any] = {}


def vbench_version() -> str | None:
    try:
        return importlib.metadata.version("vbench")
    except importlib.metadata.PackageNotFoundError:
        return None


def vbench_import_error(module: str) -> str | None:
    """None when ``vbench.<module>`` imports, else the reason (with the install hint)."""
    try:
        __import__(f"vbench.{module}")
    except Exception as exc:  # noqa: BLE001 - any import-time failure makes the backend unavailable, with the reason
        return (
            f"vbench.{module} cannot be imported ({type(exc).__name__}: {exc}); install with "
            "`pip install --no-deps vbench easydict omegaconf decord` (+ `openai-clip 'setuptools<81'` for "
            "aesthetic_quality, `pip install --no-deps pyiqa` for imaging_quality)"
        )
    return None


def _padded(side: int, divisor: int) -> int:
    return int(math.ceil(side / divisor) * divisor)


def size_problem(height: int, width: int, divisor: int, model: str) -> str | None:
    ph, pw = _padded(height, divisor), _padded(width, divisor)
    if min(ph, pw) < MIN_PYRAMID_SIDE:
        return (
            f"{model} in VBench is undefined for {height}x{width} frames (padded to {ph}x{pw}; needs both sides >= "
            f"{MIN_PYRAMID_SIDE} after padding to a multiple of {divisor}): its 4-level correlation pyramid reaches 1 "
            "pixel and the flow becomes NaN"
        )
    return None


def _preflight(metric: str, video: np.ndarray, weights_dir, module: str) -> tuple[list[Path], MetricResult | None]:
    err = vbench_import_error(module)
    if err:
        return [], unavailable(metric, BACKEND, err)
    wd = W.resolve_weights_dir(weights_dir)
    missing = W.missing_weights([metric], wd)
    if missing:
        return [], unavailable(
            metric,
            BACKEND,
            W.missing_weights_message(missing, wd, [metric]),
            missing_files=[str(w.path(wd)) for w in missing],
        )
    return [w.path(wd) for w in W.weights_for([metric])], None


def _result(metric: str, value: float, paths: list[Path], **details: Any) -> MetricResult:
    details = {"vbench_version": vbench_version(), "weight_files": [str(p) for p in paths], **details}
    return MetricResult(
        value=float(value), metric=metric, backend=BACKEND, model_hash=W.combined_hash(paths), details=details
    )


# ----------------------------------------------------------------------------------------------------------------
# dynamic degree


def _dynamic_model(path: Path, device: str):
    key = ("raft", str(path), os.stat(path).st_mtime_ns, str(device))
    if key not in _MODEL_CACHE:
        import torch
        from easydict import EasyDict
        from vbench.dynamic_degree import DynamicDegree

        class ArrayDynamicDegree(DynamicDegree):
            """VBench's DynamicDegree reading frames from an array instead of a file; records per-pair scores."""

            source: tuple[np.ndarray, float] | None = None
            scores: list[float]

            def get_frames(self, video_path):
                frames, fps = self.source
                # VBench: every frame as float [1, 3, H, W] RGB on the device, then every interval-th kept.
                picked = self.extract_frame(list(frames), dd_interval(fps))
                return [torch.from_numpy(f).permute(2, 0, 1).float()[None].to(self.device) for f in picked]

            def get_score(self, img, flo):
                s = super().get_score(img, flo)
                self.scores.append(s)
                return s

        # The same args VBench's compute_dynamic_degree builds.
        args = EasyDict({"model": str(path), "small": False, "mixed_precision": False, "alternate_corr": False})
        _MODEL_CACHE[key] = ArrayDynamicDegree(args, device)
    return _MODEL_CACHE[key]


def dynamic_degree_vbench(
    video: np.ndarray, fps: float, weights_dir: str | os.PathLike | None = None, device: str = "cpu", **_: Any
) -> MetricResult:
    video = check_video(video, min_frames=2)
    fps = check_fps(fps)
    paths, bad = _preflight("dynamic_degree", video, weights_dir, "dynamic_degree")
    if bad:
        return bad
    problem = size_problem(video.shape[1], video.shape[2], 8, "RAFT")
    if problem:
        return unavailable("dynamic_degree", BACKEND, problem)
    dd = _dynamic_model(paths[0], device)
    dd.source, dd.scores = (video, fps), []
    try:
        moving = bool(dd.infer("<array>.mp4"))  # the ".mp4" route of VBench's infer (fps-based sampling)
    finally:
        dd.source = None
    return _result(
        "dynamic_degree",
        1.0 if moving else 0.0,
        paths,
        dynamic=moving,
        interval=dd_interval(fps),
        n_sampled=len(dd.scores) + 1,
        thres=dd.params["thres"],
        count_num=dd.params["count_num"],
        pair_scores=list(dd.scores),
    )


# ----------------------------------------------------------------------------------------------------------------
# motion smoothness


def _smoothness_model(path: Path, device: str):
    key = ("amt", str(path), os.stat(path).st_mtime_ns, str(device))
    if key not in _MODEL_CACHE:
        import vbench
        from vbench.motion_smoothness import MotionSmoothness

        config = Path(vbench.__file__).parent / "third_party" / "amt" / "cfgs" / "AMT-S.yaml"
        _MODEL_CACHE[key] = MotionSmoothness(str(config), str(path), device)
    return _MODEL_CACHE[key]


def _array_frame_process(frames: np.ndarray):
    from vbench.motion_smoothness import FrameProcess

    class ArrayFrames(FrameProcess):
        def get_frames(self, video_path):
            return [np.ascontiguousarray(f) for f in frames]  # RGB uint8 HxWx3, as VBench's reader returns

    return ArrayFrames()


def motion_smoothness_vbench(
    video: np.ndarray,
    fps: float = 0.0,
    weights_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    **_: Any,
) -> MetricResult:
    video = check_video(video, min_frames=3)
    paths, bad = _preflight("motion_smoothness", video, weights_dir, "motion_smoothness")
    if bad:
        return bad
    problem = size_problem(video.shape[1], video.shape[2], 16, "AMT-S")
    if problem:
        return unavailable("motion_smoothness", BACKEND, problem)
    ms = _smoothness_model(paths[0], device)
    ms.fp = _array_frame_process(video)
    value = ms.motion_score("<array>.mp4")
    return _result("motion_smoothness", value, paths)


# ----------------------------------------------------------------------------------------------------------------
# temporal flickering (no model)


def temporal_flickering_vbench(video: np.ndarray, fps: float = 0.0, **_: Any) -> MetricResult:
    video = check_video(video, min_frames=2)
    err = vbench_import_error("temporal_flickering")
    if err:
        return unavailable("temporal_flickering", BACKEND, err)
    from vbench.temporal_flickering import mae_seq

    frames = [np.ascontiguousarray(f[..., ::-1]) for f in video]  # VBench reads BGR with cv2
    seq = mae_seq(frames)
    value = (255.0 - np.mean(seq).item()) / 255.0
    return MetricResult(
        value=value,
        metric="temporal_flickering",
        backend=BACKEND,
        model_hash=None,
        details={"vbench_version": vbench_version(), "n_pairs": len(seq)},
    )


# ----------------------------------------------------------------------------------------------------------------
# aesthetic quality


def _aesthetic_models(clip_path: Path, head_path: Path, device: str):
    key = (
        "aesthetic",
        str(clip_path),
        os.stat(clip_path).st_mtime_ns,
        str(head_path),
        os.stat(head_path).st_mtime_ns,
        str(device),
    )
    if key not in _MODEL_CACHE:
        import clip
        from vbench.aesthetic_quality import get_aesthetic_model

        # get_aesthetic_model takes the folder; the file is there (checked), so it does not try to download.
        head = get_aesthetic_model(str(head_path.parent)).to(device)
        clip_model, _ = clip.load(str(clip_path), device=device)
        head.eval()
        clip_model.eval()
        _MODEL_CACHE[key] = (clip_model, head)
    return _MODEL_CACHE[key]


def aesthetic_quality_vbench(
    video: np.ndarray,
    fps: float = 0.0,
    weights_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    **_: Any,
) -> MetricResult:
    video = check_video(video, min_frames=1)
    paths, bad = _preflight("aesthetic_quality", video, weights_dir, "aesthetic_quality")
    if bad:
        return bad
    import torch
    import torch.nn.functional as F
    from vbench.aesthetic_quality import batch_size
    from vbench.utils import clip_transform

    clip_model, head = _aesthetic_models(paths[0], paths[1], device)
    # VBench's load_video gives torch.Tensor(uint8 frames) -> float32 [T, 3, H, W] in 0..255.
    images = torch.from_numpy(np.ascontiguousarray(video)).float().permute(0, 3, 1, 2)
    transform = clip_transform(224)
    scores = []
    for i in range(0, len(images), batch_size):
        batch = transform(images[i : i + batch_size]).to(device)
        with torch.no_grad():
            feats = clip_model.encode_image(batch).to(torch.float32)
            feats = F.normalize(feats, dim=-1, p=2)
            scores.append(head(feats).squeeze(dim=-1))
    per_frame = torch.cat(scores, dim=0) / 10
    value = torch.mean(per_frame, dim=0, keepdim=True).item()
    return _result("aesthetic_quality", value, paths, per_frame=per_frame.cpu().tolist())


# ----------------------------------------------------------------------------------------------------------------
# imaging quality


def _musiq_model(path: Path, device: str):
    key = ("musiq", str(path), os.stat(path).st_mtime_ns, str(device))
    if key not in _MODEL_CACHE:
        from pyiqa.archs.musiq_arch import MUSIQ

        model = MUSIQ(pretrained_model_path=str(path))
        model.to(device)
        model.training = False  # exactly what VBench does (not .eval(); MUSIQ's dropouts are 0 either way)
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]


def imaging_quality_vbench(
    video: np.ndarray,
    fps: float = 0.0,
    weights_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    preprocess_mode: str = "longer",
    **_: Any,
) -> MetricResult:
    video = check_video(video, min_frames=1)
    paths, bad = _preflight("imaging_quality", video, weights_dir, "imaging_quality")
    if bad:
        return bad
    import torch
    from vbench.imaging_quality import transform

    model = _musiq_model(paths[0], device)
    images = transform(torch.from_numpy(np.ascontiguousarray(video)).float().permute(0, 3, 1, 2), preprocess_mode)
    acc = 0.0
    per_frame = []
    with torch.no_grad():
        for i in range(len(images)):
            s = float(model(images[i].unsqueeze(0).to(device)))
            per_frame.append(s)
            acc += s
    # VBench: per-video score = mean MUSIQ over frames (0..100); the reported average is divided by 100.
    value = (acc / len(images)) / 100.0
    return _result("imaging_quality", value, paths, per_frame_musiq=per_frame, preprocess_mode=preprocess_mode)
