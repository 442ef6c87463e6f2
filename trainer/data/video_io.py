"""Video files <-> numpy arrays.

Every video in MotionLab is a ``uint8`` array shaped ``[T, H, W, 3]`` (RGB). This module is the one place that
reads and writes them: mp4/webm/mkv/mov/avi through PyAV, gif through imageio, and folders of frame images.

    frames, fps = read_video("clip.mp4")
    write_video("out.mp4", frames, fps=8)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class VideoReadError(ValueError):
    """A video file (or frame folder) that cannot be read; the message names the path and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES or (
        path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
    )


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Read a video file or a folder of frames into ``uint8 [T, H, W, 3]`` and its fps.

    Raises ``VideoReadError`` naming the file for anything unreadable: missing, empty, truncated, not a video,
    frames of changing size.
    """
    path = Path(path)
    if not path.exists():
        raise VideoReadError(path, "file does not exist")
    try:
        if path.is_dir():
            frames, fps = _read_frame_folder(path)
        elif path.suffix.lower() == ".gif":
            frames, fps = _read_gif(path)
        else:
            frames, fps = _read_av(path, max_frames)
    except VideoReadError:
        raise
    except Exception as exc:  # decoders raise many types; the caller needs one, with the file's name
        raise VideoReadError(path, f"{type(exc).__name__}: {exc}") from exc
    if max_frames is not None:
        frames = frames[:max_frames]
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise VideoReadError(path, "no decodable frames")
    return frames, fps


def _read_av(path: Path, max_frames: int | None) -> tuple[np.ndarray, float]:
    import av

    frames = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoReadError(path, "no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 8.0)
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise VideoReadError(path, "no decodable frames")
    return np.stack(frames), fps


def _read_gif(path: Path) -> tuple[np.ndarray, float]:
    import imageio.v3 as iio

    frames = iio.imread(path, index=None)
    meta = iio.immeta(path)
    duration_ms = float(meta.get("duration", 125) or 125)
    frames = np.asarray(frames)
    if frames.ndim == 3:  # a single-frame gif
        frames = frames[None]
    return np.ascontiguousarray(frames[..., :3]).astype(np.uint8), 1000.0 / duration_ms


def _read_frame_folder(path: Path) -> tuple[np.ndarray, float]:
    import imageio.v3 as iio

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VideoReadError(path, "frame folder holds no images")
    frames = []
    for f in files:
        try:
            img = np.asarray(iio.imread(f))
        except Exception as exc:
            raise VideoReadError(f, f"unreadable frame: {exc}") from exc
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        img = img[..., :3]
        if frames and img.shape != frames[0].shape:
            raise VideoReadError(f, f"frame size {img.shape[:2]} differs from the first frame's {frames[0].shape[:2]}")
        frames.append(img.astype(np.uint8))
    fps_file = path / "fps.txt"
    fps = float(fps_file.read_text().strip()) if fps_file.exists() else 8.0
    return np.stack(frames), fps


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0, quality: str = "lossless") -> Path:
    """Write ``uint8 [T, H, W, 3]`` to mp4 (H.264) or gif, atomically (temp file + rename).

    ``quality="lossless"`` (crf 0, yuv444p) keeps tiny synthetic videos exact enough to train on;
    ``"web"`` (crf 18, yuv420p, even sizes padded) gives files every browser plays.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix, prefix=".tmp-")
    os.close(fd)
    try:
        if path.suffix.lower() == ".gif":
            import imageio.v3 as iio

            iio.imwrite(tmp, frames, duration=1000.0 / fps, loop=0)
        else:
            _write_av(Path(tmp), frames, fps, quality)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _write_av(path: Path, frames: np.ndarray, fps: float, quality: str) -> None:
    import av
    from fractions import Fraction

    if quality == "web":
        # yuv420p needs even sizes; pad by edge replication rather than resample
        t, h, w, _ = frames.shape
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    options = {"movflags": "+faststart"} if quality == "web" else {}  # index first: browsers start playing at once
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        # Small frames: one x264 thread -- starting its frame threads costs more than they save below ~256 x 256.
        # With preset veryfast a 17 x 32 x 32 web clip takes ~10 ms instead of ~36 ms (x264's default threads,
        # preset fast) at about the same size: it is part of every served request's latency.
        threads = {"threads": "1"} if frames.shape[1] * frames.shape[2] <= 256 * 256 else {}
        if quality == "lossless":
            stream.pix_fmt = "yuv444p"
            stream.options = {"crf": "0", "preset": "ultrafast", **threads}
        else:
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18", "preset": "veryfast", **threads}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def to_model_pixels(frames: np.ndarray):
    """uint8 ``[T, H, W, 3]`` -> float tensor ``[3, T, H, W]`` in [-1, 1] (the VAE's input convention)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()
    return x / 127.5 - 1.0


def from_model_pixels(x) -> np.ndarray:
    """float tensor ``[3, T, H, W]`` in [-1, 1] -> uint8 ``[T, H, W, 3]``."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to("cpu")
    return x.permute(1, 2, 3, 0).numpy().astype(np.uint8)
