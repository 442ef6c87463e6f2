"""Video distortions that turn a real video (DPO "win") into its "lose" edit, for DF-DPO.

Paper: DF-DPO (discriminator-free video DPO), section 5.1.
Videos are numpy uint8 ``[T, H, W, 3]``. Every distortion is a callable
``distortion(video, rng: np.random.Generator) -> new video``: all randomness comes from ``rng`` (same seed,
same output) and the input is never modified.

- temporal: :class:`Reverse` (``t -> T+1-t``), :class:`BlockShuffle` (one block of <= floor(0.2 T) frames).
- spatial: :class:`GaussianBlur`, :class:`ColorShift` (per-channel offset),
  :class:`PixelNoise` (``N(0, sigma^2)``).
- combinators: :class:`Compose` (in order), :class:`OneOf` (one member, picked by ``rng``).
- presets: ``temporal`` = one of reverse / shuffle; ``spatial`` = blur + colour shift + noise (eq. 5:
  ``G(v) + eps``); ``hybrid`` = temporal then spatial (eq. 6: ``G(v_phi(t)) + eps``).
- :func:`build_distortion` parses specs: ``"reverse"``, ``"shuffle:max_frac=0.2"``,
  ``"blur:sigma=1.5+noise:sigma=8"`` (``+`` composes in order), ``"reverse|shuffle"`` (``|`` picks one at
  random, binds tighter than ``+``), ``"hybrid"``; or dicts ``{"name": "blur", "sigma": 1.5}``,
  ``{"compose": [...]}``, ``{"one_of": [...]}``. Each distortion's ``spec`` property gives a string that
  parses back to an equal distortion (stored in run configs).
- :class:`Curriculum`: the distortion in force at a training step (paper Alg. 1: operators updated every
  K steps).

CLI (writes an edited copy of a video)::

    python -m trainer.data.distortions IN.mp4 OUT.mp4 --spec hybrid --seed 0
"""

from __future__ import annotations

import argparse
import bisect
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.ndimage import gaussian_filter

from trainer.data.video_io import read_video, write_video

__all__ = [
    "PRESETS",
    "BlockShuffle",
    "ColorShift",
    "Compose",
    "Curriculum",
    "Distortion",
    "GaussianBlur",
    "OneOf",
    "PixelNoise",
    "Reverse",
    "build_distortion",
    "main",
]


class Distortion(Protocol):
    """``video [T, H, W, 3] uint8, rng -> new video`` (the input is never mutated)."""

    @property
    def spec(self) -> str: ...

    def __call__(self, video: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


def _check_video(video: np.ndarray) -> None:
    if not isinstance(video, np.ndarray) or video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        desc = f"{type(video).__name__} {getattr(video, 'dtype', '')} {getattr(video, 'shape', '')}"
        raise ValueError(f"video must be a uint8 numpy array [T, H, W, 3]; got {desc}")
    if video.shape[0] < 1:
        raise ValueError("video must have at least 1 frame")


def _check_range(op: str, field: str, value: float, lo: float, hi: float, lo_open: bool = True) -> float:
    """Validate ``value`` in ``(lo, hi]`` (or ``[lo, hi]``); the error names the op, field and range."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {field} must be a number, got {value!r}") from None
    below = value <= lo if lo_open else value < lo
    if not math.isfinite(value) or below or value > hi:
        bracket = "(" if lo_open else "["
        raise ValueError(f"{op}: {field} must be in {bracket}{lo:g}, {hi:g}], got {value:g}")
    return value


def _fmt(x: float) -> str:
    return f"{x:g}"


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # Round to nearest (not truncate) so a zero-mean perturbation stays zero-mean, then clip to the range.
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- temporal


@dataclass(frozen=True)
class Reverse:
    """Global reversal ``f_t -> f_{T+1-t}`` (paper eq. 4)."""

    @property
    def spec(self) -> str:
        return "reverse"

    def __call__(self, video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_video(video)
        return video[::-1].copy()


@dataclass(frozen=True)
class BlockShuffle:
    """Partial shuffle (paper eq. 4): permute one contiguous block of frames, leave the others in place.

    Block length L uniform in ``[2, floor(max_frac * T)]`` (2 is the least that can change the order), start
    uniform; the permutation is uniform over the non-identity ones, so the frame order always changes.
    Needs ``floor(max_frac * T) >= 2`` (T >= 10 at the paper's 0.2); shorter videos raise ValueError.
    """

    max_frac: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_frac", _check_range("shuffle", "max_frac", self.max_frac, 0.0, 1.0))

    @property
    def spec(self) -> str:
        return f"shuffle:max_frac={_fmt(self.max_frac)}"

    def block(self, n_frames: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """Draw ``(start, perm)``: frames ``start + perm[i]`` move to position ``start + i``."""
        # The tiny epsilon keeps a product like 0.2 * 10 that lands at 1.9999999999999998 from flooring to 1.
        max_len = math.floor(self.max_frac * n_frames + 1e-9)
        if max_len < 2:
            need = math.ceil(2 / self.max_frac - 1e-9)
            raise ValueError(
                f"shuffle: a block of at most floor(max_frac * T) = floor({_fmt(self.max_frac)} * "
                f"{n_frames}) = {max_len} frames cannot be shuffled; the video needs at least {need} frames "
                "(T >= 2 / max_frac)"
            )
        length = int(rng.integers(2, max_len + 1))
        start = int(rng.integers(0, n_frames - length + 1))
        identity = np.arange(length)
        perm = rng.permutation(length)
        while np.array_equal(perm, identity):  # rejection: P(identity) <= 1/2, so this ends fast
            perm = rng.permutation(length)
        return start, perm

    def __call__(self, video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_video(video)
        start, perm = self.block(video.shape[0], rng)
        out = video.copy()
        out[start : start + len(perm)] = video[start + perm]
        return out


# ---------------------------------------------------------------------------------------------- spatial


@dataclass(frozen=True)
class GaussianBlur:
    """Per-frame spatial Gaussian blur, standard deviation ``sigma`` pixels (same on every channel/frame)."""

    sigma: float = 1.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_range("blur", "sigma", self.sigma, 0.0, 20.0))

    @property
    def spec(self) -> str:
        return f"blur:sigma={_fmt(self.sigma)}"

    def __call__(self, video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_video(video)
        out = np.empty_like(video)
        # Frame by frame in float32: a full-scale clip (81x480x832) never needs a float copy of the video.
        for t in range(video.shape[0]):
            blurred = gaussian_filter(video[t].astype(np.float32), sigma=(self.sigma, self.sigma, 0), mode="reflect")
            out[t] = _to_uint8(blurred)
        return out


@dataclass(frozen=True)
class ColorShift:
    """Add a per-channel offset (0-255 units), the same for every pixel and frame (a colour cast).

    Offsets are drawn uniform in ``[-max_shift, max_shift]`` per channel, or fixed with ``offsets=(r, g, b)``.
    """

    max_shift: float = 20.0
    offsets: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_shift", _check_range("color", "max_shift", self.max_shift, 0.0, 255.0))
        if self.offsets is not None:
            offs = tuple(self.offsets)
            if len(offs) != 3:
                raise ValueError(f"color: offsets must have 3 values (R, G, B), got {len(offs)}")
            offs = tuple(_check_range("color", "offsets", o, -255.0, 255.0, lo_open=False) for o in offs)
            object.__setattr__(self, "offsets", offs)

    @property
    def spec(self) -> str:
        if self.offsets is not None:
            r, g, b = self.offsets
            return f"color:r={_fmt(r)},g={_fmt(g)},b={_fmt(b)}"
        return f"color:max_shift={_fmt(self.max_shift)}"

    def draw_offsets(self, rng: np.random.Generator) -> np.ndarray:
        """The (R, G, B) offsets this call will add (consumes rng exactly as ``__call__`` does)."""
        if self.offsets is not None:
            return np.asarray(self.offsets, dtype=np.float32)
        return rng.uniform(-self.max_shift, self.max_shift, size=3).astype(np.float32)

    def __call__(self, video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_video(video)
        offsets = self.draw_offsets(rng)
        out = np.empty_like(video)
        for t in range(video.shape[0]):
            out[t] = _to_uint8(video[t].astype(np.float32) + offsets)
        return out


@dataclass(frozen=True)
class PixelNoise:
    """Additive i.i.d. Gaussian pixel noise ``N(0, sigma^2)`` in 0-255 units, rounded and clipped to uint8."""

    sigma: float = 8.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_range("noise", "sigma", self.sigma, 0.0, 128.0))

    @property
    def spec(self) -> str:
        return f"noise:sigma={_fmt(self.sigma)}"

    def __call__(self, video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_video(video)
        out = np.empty_like(video)
        for t in range(video.shape[0]):
            noise = rng.standard_normal(video.shape[1:], dtype=np.float32) * np.float32(self.sigma)
            out[t] = _to_uint8(video[t].astype(np.float32) + noise)
        return out


# ------------------------------------------------------------------------------------------ combinators


@dataclass(frozen=True)
class Compose:
    """Apply ``ops`` in order, all drawing from the same ``rng``."""

    ops: tuple[Distortion, ...]

    def __init__(self, ops: Iterable[Distortion]) -> None:
        ops = tuple(ops)
        if not ops:
            raise ValueError("compose: needs at least one distortion")
        object.__setattr__(self, "ops", ops)

    @property
    def spec(self) -> str:
        return "+".join(op.spec for op in self.ops)

    def __call__(self, video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_video(video)
        out = video
        for op in self.ops:
            out = op(out, rng)
        return out if out is not video else video.copy()


@dataclass(frozen=True)
class OneOf:
    """Apply one of ``ops``, chosen uniformly by ``rng``."""

    ops: tuple[Distortion, ...]

    def __init__(self, ops: Iterable[Distortion]) -> None:
        ops = tuple(ops)
        if not ops:
            raise ValueError("one_of: needs at least one distortion")
        for op in ops:
            if isinstance(op, Compose):
                # '|' binds tighter than '+' in specs: a Compose member would not round-trip through `spec`.
                raise ValueError("one_of: members must be single distortions or presets, not a composition")
        object.__setattr__(self, "ops", ops)

    @property
    def spec(self) -> str:
        return "|".join(op.spec for op in self.ops)

    def __call__(self, video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_video(video)
        return self.ops[int(rng.integers(len(self.ops)))](video, rng)


@dataclass(frozen=True)
class Preset:
    """A named preset (``temporal`` / ``spatial`` / ``hybrid``); behaves like the distortion it names."""

    name: str
    op: Distortion

    @property
    def spec(self) -> str:
        return self.name

    def __call__(self, video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.op(video, rng)


def _temporal() -> Distortion:
    return OneOf([Reverse(), BlockShuffle(0.2)])


def _spatial() -> Distortion:
    # The paper gives no magnitudes; these are visible but mild edits of a 0-255 video.
    return Compose([GaussianBlur(1.5), ColorShift(20.0), PixelNoise(8.0)])


PRESETS: dict[str, Any] = {
    "temporal": lambda: Preset("temporal", _temporal()),
    "spatial": lambda: Preset("spatial", _spatial()),
    "hybrid": lambda: Preset("hybrid", Compose([_temporal(), _spatial()])),
}

# name -> (class, allowed parameter names); parameter ranges are checked by the classes themselves.
_OPS: dict[str, tuple[type, tuple[str, ...]]] = {
    "reverse": (Reverse, ()),
    "shuffle": (BlockShuffle, ("max_frac",)),
    "blur": (GaussianBlur, ("sigma",)),
    "color": (ColorShift, ("max_shift", "r", "g", "b")),
    "noise": (PixelNoise, ("sigma",)),
}
_ALIASES = {"colour": "color", "color_shift": "color", "block_shuffle": "shuffle", "gaussian_blur": "blur"}


def _known_names() -> str:
    return ", ".join(sorted(_OPS) + sorted(PRESETS))


def _make_op(name: str, params: Mapping[str, Any]) -> Distortion:
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key in PRESETS:
        if params:
            raise ValueError(f"distortion preset {key!r} takes no parameters, got {sorted(params)}")
        return PRESETS[key]()
    if key not in _OPS:
        raise ValueError(f"unknown distortion {name!r}; known: {_known_names()}")
    cls, allowed = _OPS[key]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        allowed_txt = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"{key}: unknown parameter(s) {unknown}; allowed: {allowed_txt}")
    if key == "color" and any(k in params for k in ("r", "g", "b")):
        if not all(k in params for k in ("r", "g", "b")) or "max_shift" in params:
            raise ValueError("color: give either max_shift, or all three fixed offsets r, g, b")
        return ColorShift(offsets=(params["r"], params["g"], params["b"]))
    return cls(**params)


def _parse_term(term: str) -> Distortion:
    name, sep, rest = term.partition(":")
    if not name.strip():
        raise ValueError(f"empty distortion name in {term!r}")
    params: dict[str, float] = {}
    if sep:
        if not rest.strip():
            raise ValueError(f"{name.strip()}: expected parameters after ':' in {term!r} (e.g. sigma=1.5)")
        for item in rest.split(","):
            field, eq, value = item.partition("=")
            field = field.strip()
            if not eq or not field:
                raise ValueError(f"{name.strip()}: malformed parameter {item.strip()!r}; expected field=value")
            try:
                params[field] = float(value)
            except ValueError:
                raise ValueError(f"{name.strip()}: {field} must be a number, got {value.strip()!r}") from None
    return _make_op(name, params)


def _parse_string(spec: str) -> Distortion:
    if not spec.strip():
        raise ValueError("distortion spec is empty")
    ops: list[Distortion] = []
    for term in spec.split("+"):
        alternatives = [_parse_term(alt) for alt in term.split("|")]
        ops.append(alternatives[0] if len(alternatives) == 1 else OneOf(alternatives))
    return ops[0] if len(ops) == 1 else Compose(ops)


def _parse_dict(spec: Mapping[str, Any]) -> Distortion:
    spec = dict(spec)
    if "compose" in spec or "one_of" in spec:
        key = "compose" if "compose" in spec else "one_of"
        if len(spec) != 1:
            raise ValueError(f"a {key!r} spec takes only the {key!r} key, got {sorted(spec)}")
        members = spec[key]
        if isinstance(members, (str, bytes)) or not isinstance(members, Sequence):
            raise ValueError(f"{key}: expected a list of distortion specs, got {type(members).__name__}")
        built = [build_distortion(m) for m in members]
        return Compose(built) if key == "compose" else OneOf(built)
    if "name" not in spec:
        raise ValueError(f"a distortion dict needs a 'name' (or 'compose' / 'one_of'); got keys {sorted(spec)}")
    name = spec.pop("name")
    if not isinstance(name, str):
        raise ValueError(f"distortion name must be a string, got {name!r}")
    return _make_op(name, spec)


def build_distortion(spec: str | Mapping[str, Any] | Distortion) -> Distortion:
    """Build a distortion from a spec string, a dict, or return an already built distortion unchanged."""
    if isinstance(spec, str):
        return _parse_string(spec)
    if isinstance(spec, Mapping):
        return _parse_dict(spec)
    if callable(spec) and hasattr(spec, "spec"):
        return spec
    raise ValueError(f"distortion spec must be a string or a dict, got {type(spec).__name__}")


class Curriculum:
    """Piecewise-constant schedule of distortions: ``stages = [(start_step, spec), ...]``.

    Start steps must be ints, strictly increasing, the first 0 (every step has a distortion).
    ``at(step)`` returns the distortion whose stage contains ``step``.
    """

    def __init__(self, stages: Sequence[tuple[int, str | Mapping[str, Any] | Distortion]]) -> None:
        if not stages:
            raise ValueError("curriculum: stages must not be empty")
        starts: list[int] = []
        ops: list[Distortion] = []
        for i, stage in enumerate(stages):
            if not (isinstance(stage, (tuple, list)) and len(stage) == 2):
                raise ValueError(f"curriculum: stage {i} must be (start_step, spec), got {stage!r}")
            start, spec = stage
            if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
                raise ValueError(f"curriculum: stage {i} start_step must be an int >= 0, got {start!r}")
            if starts and start <= starts[-1]:
                raise ValueError(
                    f"curriculum: start steps must be strictly increasing; stage {i} starts at {start} "
                    f"after {starts[-1]}"
                )
            starts.append(int(start))
            ops.append(build_distortion(spec))
        if starts[0] != 0:
            raise ValueError(f"curriculum: the first stage must start at step 0, got {starts[0]}")
        self.starts = starts
        self.ops = ops

    @classmethod
    def every(cls, k: int, specs: Sequence[str | Mapping[str, Any] | Distortion]) -> Curriculum:
        """Change distortion every ``k`` steps (paper Alg. 1), staying on the last one afterwards."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"curriculum: k must be an int >= 1, got {k!r}")
        return cls([(i * k, s) for i, s in enumerate(specs)])

    def at(self, step: int) -> Distortion:
        if step < 0:
            raise ValueError(f"curriculum: step must be >= 0, got {step}")
        return self.ops[bisect.bisect_right(self.starts, step) - 1]

    @property
    def spec(self) -> list[tuple[int, str]]:
        return [(s, op.spec) for s, op in zip(self.starts, self.ops)]


# ----------------------------------------------------------------------------------------------- CLI / IO


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.data.distortions",
        description="Write a distorted copy of a video (DF-DPO lose sample).",
    )
    parser.add_argument("input", help="input video file (mp4)")
    parser.add_argument("output", help="output video file (mp4)")
    parser.add_argument(
        "--spec",
        default="hybrid",
        help=f"distortion spec, e.g. 'hybrid' or 'blur:sigma=1.5+noise:sigma=8'; names: {_known_names()}",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same edit)")
    args = parser.parse_args(argv)
    try:
        distortion = build_distortion(args.spec)
    except ValueError as err:
        parser.error(f"--spec: {err}")
    if not os.path.isfile(args.input):
        parser.error(f"input video {args.input!r} does not exist")
    video, fps = read_video(args.input)
    out = distortion(video, np.random.default_rng(args.seed))
    write_video(args.output, out, fps=fps)
    print(
        f"wrote {args.output}: {out.shape[0]} frames {out.shape[2]}x{out.shape[1]} @ {fps:g} fps, "
        f"spec={distortion.spec}, seed={args.seed}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
