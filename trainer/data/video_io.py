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
    """Write ``uint8 [T, H, W, 3]`` to mp4 (H.264, see ``encode_mp4``) or gif, atomically (temp file + rename)."""
    path = Path(path)
    _check_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix, prefix=".tmp-")
    os.close(fd)
    try:
        if path.suffix.lower() == ".gif":
            Path(tmp).write_bytes(encode_gif(frames, fps))
        else:
            Path(tmp).write_bytes(encode_mp4(frames, fps, quality))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def encode_mp4(frames: np.ndarray, fps: float = 8.0, quality: str = "lossless") -> bytes:
    """``uint8 [T, H, W, 3]`` -> mp4 (H.264) bytes, encoded in memory.

    ``quality="lossless"`` (crf 0, yuv444p) keeps tiny synthetic videos exact enough to train on;
    ``"web"`` (crf 18, yuv420p, even sizes padded, index first) gives files every browser plays, and starts playing
    before the whole file has arrived.
    """
    import io

    frames = _check_frames(frames)
    buf = io.BytesIO()
    _encode_av(buf, frames, fps, quality)
    data = buf.getvalue()
    # The muxer's own "+faststart" re-reads its output by file name, which an in-memory file does not have.
    return moov_first(data) if quality == "web" else data


def encode_gif(frames: np.ndarray, fps: float = 8.0) -> bytes:
    """``uint8 [T, H, W, 3]`` -> animated GIF bytes (looping), encoded in memory."""
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", _check_frames(frames), extension=".gif", duration=1000.0 / fps, loop=0)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    return frames


def _encode_av(target, frames: np.ndarray, fps: float, quality: str) -> None:
    from fractions import Fraction

    import av

    if quality == "web":
        # yuv420p needs even sizes; pad by edge replication rather than resample
        _, h, w, _ = frames.shape
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(target, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        # Small frames: one x264 thread -- starting its frame threads costs more than they save below ~256 x 256 --
        # and preset veryfast, several times faster than x264's defaults at about the same size: encoding is part of
        # every served request's latency. For the same reason small web clips skip x264's lookahead and B-frames
        # (its per-frame analysis is most of the time there), for a somewhat larger file of a few kB.
        small = frames.shape[1] * frames.shape[2] <= 256 * 256
        threads = {"threads": "1"} if small else {}
        if quality == "lossless":
            stream.pix_fmt = "yuv444p"
            stream.options = {"crf": "0", "preset": "ultrafast", **threads}
        else:
            stream.pix_fmt = "yuv420p"
            latency = {"x264-params": "rc-lookahead=0:bframes=0:sync-lookahead=0"} if small else {}
            stream.options = {"crf": "18", "preset": "veryfast", **threads, **latency}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


_MOOV_PARENTS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}  # the boxes on the way to the chunk offset tables


def _boxes(data: bytes | memoryview, start: int = 0, end: int | None = None):
    """Top-level ISO-BMFF boxes in ``data[start:end]`` as (type, box start, payload start, box end)."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), bytes(data[pos + 4 : pos + 8])
        header = 8
        if size == 1:  # 64-bit size follows
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:  # to the end
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"mp4: box {kind!r} at byte {pos} has an invalid size {size}")
        yield kind, pos, pos + header, pos + size
        pos += size


def moov_first(data: bytes) -> bytes:
    """An mp4 with its index (``moov``) moved in front of the media data (``mdat``), laid out as
    ``-movflags +faststart`` lays it out (right after ``ftyp``).

    Moving ``moov`` forward shifts every sample by its size, so the chunk offsets inside it (``stco``/``co64`` of
    every track) grow by that much. A file whose ``moov`` already comes first is returned as it is.
    """
    top = list(_boxes(data))
    kinds = [k for k, *_ in top]
    if b"moov" not in kinds or b"mdat" not in kinds or kinds.index(b"moov") < kinds.index(b"mdat"):
        return data
    _, m0, p0, m1 = top[kinds.index(b"moov")]
    moov = bytearray(data[m0:m1])
    shift = len(moov)

    def patch(start: int, end: int) -> None:
        for kind, _, payload, box_end in _boxes(moov, start, end):
            if kind in _MOOV_PARENTS:
                patch(payload, box_end)
            elif kind in (b"stco", b"co64"):
                width = 4 if kind == b"stco" else 8
                count = int.from_bytes(moov[payload + 4 : payload + 8], "big")  # after version + flags
                for i in range(payload + 8, payload + 8 + count * width, width):
                    offset = int.from_bytes(moov[i : i + width], "big") + shift
                    if offset >= 1 << (8 * width):
                        raise ValueError(
                            f"mp4: {kind.decode()} chunk offsets overflow {8 * width} bits once moov moves first"
                        )
                    moov[i : i + width] = offset.to_bytes(width, "big")

    patch(p0 - m0, len(moov))
    at = top[0][3] if kinds[0] == b"ftyp" else 0  # right after the file type, where ffmpeg puts it
    return data[:at] + bytes(moov) + data[at:m0] + data[m1:]


def from_model_pixels(x) -> np.ndarray:
    """float tensor ``[3, T, H, W]`` in [-1, 1] -> uint8 ``[T, H, W, 3]``."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to("cpu")
    return x.permute(1, 2, 3, 0).numpy().astype(np.uint8)
