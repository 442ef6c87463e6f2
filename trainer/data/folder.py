"""A user's folder of captioned videos as a training dataset, validated in full before training starts.

The folder may hold video files (mp4, webm, mkv, mov, avi, gif) and frame folders (a subfolder of images, read
in name order, optional ``fps.txt``), at any depth. Captions come from ``captions.jsonl`` (one
``{"file": "relative/path.mp4", "caption": "..."}`` per line) or from a sidecar text file next to each video
(``clip.mp4`` -> ``clip.txt``; a frame folder ``clip/`` -> ``clip.txt`` or ``clip/caption.txt``);
``captions.jsonl`` wins where both exist.

Construction opens and decodes every listed or found video (a full decode, compared with the container's frame
count where it has one) and collects every problem: missing, corrupt, truncated, unreadable, too short, no
caption. It then raises one ``DatasetError`` that names each bad file and its reason; nothing is skipped
silently. With ``skip_bad=True`` the bad files are left out instead, logged, and listed in ``.skipped``.

Items are ``(video uint8 [num_frames, height, width, 3], caption)``:

- temporal sampling (deterministic): ``sampling="first"`` (default) takes the first ``num_frames`` frames,
  which keeps each clip's native frame rate, so per-frame motion is comparable across clips of any length;
  ``sampling="stride"`` takes ``num_frames`` frames evenly spread over the whole clip (first and last
  included).
- spatial: scale so the frame covers ``height x width`` (cv2 area filter when shrinking, bilinear when
  enlarging), then center crop to the target aspect.

    ds = VideoFolder("my_videos", num_frames=17, height=32, width=32)
    video, caption = ds[0]
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data.video_io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoReadError, read_video

__all__ = [
    "DatasetError",
    "VideoEntry",
    "VideoFolder",
    "find_videos",
    "resize_center_crop",
    "temporal_indices",
]

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.jsonl"
SAMPLING_MODES = ("first", "stride")


class DatasetError(ValueError):
    """A dataset with bad items; ``problems`` is ``[(name, reason), ...]`` and the message lists them all."""

    def __init__(self, root: str | os.PathLike, problems: list[tuple[str, str]]):
        self.root = str(root)
        self.problems = list(problems)
        lines = "\n".join(f"  - {name}: {reason}" for name, reason in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in video folder {self.root}:\n{lines}")


@dataclass(frozen=True)
class VideoEntry:
    """One validated clip. ``name`` is its path relative to the root (posix), as in ``captions.jsonl``."""

    name: str
    path: Path
    caption: str
    num_frames: int
    fps: float
    height: int
    width: int


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_videos(root: str | os.PathLike) -> tuple[list[Path], list[tuple[str, str]]]:
    """Video files and frame folders under ``root`` (sorted), plus problems found while scanning.

    A directory holding at least one image is a frame folder and is not searched further. Hidden entries
    (``.name``, e.g. half-written temp files) are ignored; images lying directly in ``root`` are a problem,
    because they do not say which clip they belong to.
    """
    root = Path(root)
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not _is_hidden(n))
        files = sorted(n for n in filenames if not _is_hidden(n))
        images = [n for n in files if Path(n).suffix.lower() in IMAGE_SUFFIXES]
        if images and d != root:
            found.append(d)
            dirnames[:] = []  # a frame folder's contents are its frames
            continue
        if images:
            problems.append(
                (
                    images[0] if len(images) == 1 else f"{images[0]} (+{len(images) - 1} more images)",
                    "image files directly in the dataset folder; put each clip's frames in a subfolder",
                )
            )
        found.extend(d / n for n in files if Path(n).suffix.lower() in VIDEO_SUFFIXES)
    return sorted(found), problems


def temporal_indices(total: int, num_frames: int, sampling: str = "first") -> np.ndarray:
    """Frame indices to take from a clip of ``total`` frames (``total >= num_frames``)."""
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {list(SAMPLING_MODES)}, got {sampling!r}")
    if total < num_frames:
        raise ValueError(f"clip has {total} frames, fewer than num_frames={num_frames}")
    if sampling == "first" or num_frames == 1:
        return np.arange(num_frames)
    # evenly spread with first and last frame included; integer arithmetic, so it is exact and deterministic
    k = np.arange(num_frames, dtype=np.int64)
    return (k * (total - 1) + (num_frames - 1) // 2) // (num_frames - 1)


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale ``uint8 [T, H, W, 3]`` so it covers ``height x width`` (area filter when shrinking, bilinear when
    enlarging), then crop the center to exactly that size."""
    import cv2

    t, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return np.ascontiguousarray(frames)
    s = max(height / h, width / w)
    new_h, new_w = max(height, round(h * s)), max(width, round(w * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    top, left = (new_h - height) // 2, (new_w - width) // 2
    out = np.empty((t, height, width, 3), dtype=np.uint8)
    for i in range(t):
        resized = cv2.resize(frames[i], (new_w, new_h), interpolation=interp)
        out[i] = resized[top : top + height, left : left + width]
    return out


def _uses_av(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() != ".gif"


def _probe(path: Path) -> tuple[int, float, int, int]:
    """``(frames, fps, height, width)`` from a full decode. For container formats the frames are decoded one
    at a time and dropped (a long clip does not have to fit in memory), and a clip that decodes fewer frames
    than its header declares is reported as truncated; ``read_video`` alone accepts such a clip."""
    if not _uses_av(path):
        frames, fps = read_video(path)
        return frames.shape[0], fps, frames.shape[1], frames.shape[2]
    import av

    if not path.exists():
        raise VideoReadError(path, "file does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream")
            stream = container.streams.video[0]
            declared = int(stream.frames or 0)
            fps = float(stream.average_rate or stream.guessed_rate or 8.0)
            n, h, w = 0, 0, 0
            for frame in container.decode(stream):
                if n == 0:
                    h, w = frame.height, frame.width
                n += 1
    except VideoReadError:
        raise
    except Exception as exc:  # decoders raise many types; report one, with the reason
        raise VideoReadError(path, f"{type(exc).__name__}: {exc}") from exc
    if n == 0:
        raise VideoReadError(path, "no decodable frames")
    if declared and n < declared:
        raise VideoReadError(path, f"truncated: the header declares {declared} frames but only {n} decode")
    return n, fps, h, w


def _read_indices(path: Path, indices: np.ndarray) -> np.ndarray:
    """Decode only the frames at ``indices`` (sorted), stopping after the last one."""
    if not _uses_av(path):
        frames, _ = read_video(path)
        return frames[indices]
    if np.array_equal(indices, np.arange(len(indices))):
        frames, _ = read_video(path, max_frames=len(indices))
        return frames
    import av

    want, last, out = {int(i) for i in indices}, int(indices[-1]), []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for i, frame in enumerate(container.decode(stream)):
                if i in want:
                    out.append(frame.to_ndarray(format="rgb24"))
                if i >= last:
                    break
    except Exception as exc:
        raise VideoReadError(path, f"{type(exc).__name__}: {exc}") from exc
    return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def _load_jsonl(path: Path, root: Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    captions: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    where = path.name if path.parent == root else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [(where, f"cannot read captions file: {exc}")]
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append((f"{where} line {lineno}", f"not valid JSON: {exc.msg}"))
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("file"), str) or not rec["file"].strip():
            problems.append((f"{where} line {lineno}", 'each line needs a "file" string'))
            continue
        name = Path(rec["file"]).as_posix()
        cap = rec.get("caption")
        if not isinstance(cap, str) or not cap.strip():
            problems.append((name, f'{where} line {lineno} has no "caption" text'))
            captions.setdefault(name, "")
            continue
        if name in captions and captions[name] != cap.strip():
            problems.append((name, f"{where} line {lineno} lists it again with a different caption"))
            continue
        captions[name] = cap.strip()
    return captions, problems


def _sidecar_caption(path: Path) -> tuple[str | None, str | None]:
    """``(caption, problem)`` from ``NAME.txt`` (or ``DIR/caption.txt`` for frame folders)."""
    candidates = [path.with_suffix(".txt") if path.is_file() else path.parent / (path.name + ".txt")]
    if path.is_dir():
        candidates.append(path / "caption.txt")
    for c in candidates:
        if c.is_file():
            try:
                text = c.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                return None, f"caption file {c.name} unreadable: {exc}"
            if not text:
                return None, f"caption file {c.name} is empty"
            return " ".join(text.split()), None
    return None, None


class VideoFolder:
    """Map-style dataset over a folder of captioned videos; see the module docstring.

    Args:
        root: the folder.
        num_frames, height, width: the clip shape every item is brought to.
        captions: ``None`` (use ``root/captions.jsonl`` if present, else sidecar ``.txt`` files), a path to a
            captions JSONL file (``file`` paths relative to ``root``), or a mapping ``{relative path:
            caption}``.
        sampling: ``"first"`` or ``"stride"`` (see the module docstring).
        skip_bad: leave bad files out (logged and kept in ``.skipped``) instead of raising ``DatasetError``.
        progress: show a progress bar while validating.

    Raises:
        DatasetError: listing every bad file and its reason (or, with ``skip_bad``, when nothing usable is
            left).
        ValueError: for bad arguments.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        num_frames: int,
        height: int,
        width: int,
        captions: str | os.PathLike | Mapping[str, str] | None = None,
        sampling: str = "first",
        skip_bad: bool = False,
        progress: bool = False,
    ):
        for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {list(SAMPLING_MODES)}, got {sampling!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"video folder {self.root} does not exist or is not a directory")
        self.num_frames, self.height, self.width = int(num_frames), int(height), int(width)
        self.sampling = sampling
        self.entries: list[VideoEntry] = []
        self.skipped: list[tuple[str, str]] = []
        self._scan_and_validate(captions, skip_bad, progress)

    # -- validation ------------------------------------------------------------------------------------------

    def _name(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def _scan_and_validate(self, captions, skip_bad: bool, progress: bool) -> None:
        from tqdm import tqdm

        problems: list[tuple[str, str]] = []
        listed: dict[str, str] = {}
        if isinstance(captions, Mapping):
            listed = {Path(k).as_posix(): str(v).strip() for k, v in captions.items()}
            problems += [(k, "empty caption") for k, v in listed.items() if not v]
        else:
            jsonl = Path(captions) if captions is not None else self.root / CAPTIONS_FILE
            if captions is not None and not jsonl.is_absolute() and not jsonl.exists():
                jsonl = self.root / jsonl
            if captions is not None and not jsonl.is_file():
                raise ValueError(f"captions file {captions} does not exist")
            if jsonl.is_file():
                listed, jsonl_problems = _load_jsonl(jsonl, self.root)
                problems += jsonl_problems

        found, scan_problems = find_videos(self.root)
        problems += scan_problems
        candidates: dict[str, Path] = {self._name(p): p for p in found}
        root_resolved = self.root.resolve()
        for name in listed:
            if name in candidates:
                continue
            path = self.root / name
            if not path.resolve().is_relative_to(root_resolved):
                problems.append((name, "listed in the captions file but lies outside the dataset folder"))
            elif not path.exists():
                problems.append((name, "listed in the captions file but does not exist"))
            else:
                candidates[name] = path  # e.g. a file with an unusual suffix, named explicitly

        if not candidates and not problems:
            looked = f"no videos found (looked for {', '.join(sorted(VIDEO_SUFFIXES))} files and frame folders)"
            raise DatasetError(self.root, [(str(self.root), looked)])

        bad_names = {n for n, _ in problems}
        for name in tqdm(sorted(candidates), desc=f"checking {self.root}", unit="video", disable=not progress):
            path = candidates[name]
            caption = listed.get(name) or None
            if caption is None and name not in bad_names:
                caption, cap_problem = _sidecar_caption(path)
                if cap_problem:
                    problems.append((name, cap_problem))
                elif caption is None:
                    side = path.with_suffix(".txt").name if path.is_file() else f"{path.name}.txt"
                    problems.append((name, f"no caption: not in {CAPTIONS_FILE} and no sidecar {side}"))
            try:
                n, fps, h, w = _probe(path)
            except VideoReadError as exc:
                problems.append((name, exc.reason))
                continue
            if n < self.num_frames:
                problems.append((name, f"too short: {n} frames, need num_frames={self.num_frames}"))
                continue
            if caption is not None and name not in bad_names:
                self.entries.append(VideoEntry(name, path, caption, n, fps, h, w))

        # one line per bad item, all of its reasons joined, in name order
        grouped: dict[str, list[str]] = {}
        for n, r in problems:
            grouped.setdefault(n, []).append(r)
        problems = [(n, "; ".join(grouped[n])) for n in sorted(grouped)]
        bad = set(grouped)
        self.entries = [e for e in self.entries if e.name not in bad]
        if problems and not skip_bad:
            raise DatasetError(self.root, problems)
        if problems:
            self.skipped = problems
            log.warning(
                "skipped %d bad item(s) in %s:\n%s",
                len(problems),
                self.root,
                "\n".join(f"  - {n}: {r}" for n, r in problems),
            )
        if not self.entries:
            raise DatasetError(self.root, problems or [(str(self.root), "no usable videos")])

    # -- access ----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[np.ndarray, str]:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} videos")
        entry = self.entries[i]
        idx = temporal_indices(entry.num_frames, self.num_frames, self.sampling)
        frames = _read_indices(entry.path, idx)
        if frames.shape[0] != self.num_frames:  # the file changed after validation
            raise VideoReadError(entry.path, f"decoded {frames.shape[0]} of the {self.num_frames} frames needed")
        return resize_center_crop(frames, self.height, self.width), entry.caption

    def __repr__(self) -> str:
        return (
            f"VideoFolder({str(self.root)!r}, {len(self)} videos, num_frames={self.num_frames}, "
            f"{self.height}x{self.width}, sampling={self.sampling!r})"
        )
