"""Procedurally generated, captioned motion videos: the tiny scale's training data and direction benchmark.

Every clip is a ``uint8 [T, H, W, 3]`` video whose caption states its motion exactly ("a red square moves
left", "a blue ball bounces", "the camera pans right over a textured wall"), plus a ``meta`` dict with the
numbers behind the caption (direction, speed in px/frame, signed ``dx``/``dy``, ...). Generation is
deterministic: clip ``i`` of seed ``s`` depends only on ``(s, i)`` and the rendering parameters, so a dataset
of 10 clips is a prefix of one of 100 with the same seed.

Conventions:

- Image coordinates: ``x`` grows to the right, ``y`` grows *downward* (rows). "up" therefore means ``dy < 0``,
  and "clockwise" (as seen on screen) means the drawing angle increases.
- ``dx``/``dy`` are the motion of the *image content* in px/frame; for ``pan`` the camera moves the other way
  (``camera_dx = -dx``), so "the camera pans right" has ``dx < 0``.
- Sizes and speeds are given at 32 px and scaled by ``min(height, width) / 32``.
- Shapes are drawn antialiased (signed-distance edge ramps on a 2x2 supersample grid: coverage is
  continuous in the position), so sub-pixel motion is smooth.
- Held-out split: some (colour, object) pairs are reserved for evaluation by a fixed rule (``is_heldout``);
  ``split="train"`` never draws them, ``split="heldout"`` draws only them, ``split="all"`` ignores the rule.

Use:

    from trainer.data.synthetic import sample_clips, generate_dataset, direction_prompts
    clips = sample_clips(8, seed=0)                       # [(video, caption, meta), ...] in memory
    generate_dataset("data/synth", n=100, seed=0)         # clip_*.mp4 + captions.jsonl + dataset.json
    prompts = direction_prompts(16, seed=0)               # held-out "moves <direction>" prompts

CLI:

    python -m trainer.data.synthetic OUT_DIR --n 100 --seed 0 [--frames 17 --height 32 --width 32 --fps 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CARDINAL_DIRECTIONS",
    "COLOURS",
    "DIRECTIONS",
    "FAMILIES",
    "MAX_CAPTION_WORDS",
    "NOUNS",
    "PAN_DIRECTIONS",
    "ROTATIONS",
    "SHAPES",
    "SPLITS",
    "VOCABULARY",
    "allowed_combos",
    "article",
    "bounce",
    "direction_prompts",
    "families_for_split",
    "generate_dataset",
    "is_heldout",
    "main",
    "make_clip",
    "pan",
    "rotate",
    "sample_clips",
    "scale",
    "static",
    "translate",
    "two_objects",
]

# ------------------------------------------------------------------------------------------------------------
# The closed vocabulary. Order matters: the held-out rule below uses the indices.

# Saturated colours that stay distinct from the dark backgrounds; RGB centres (each clip jitters them
# slightly).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "green": (45, 195, 70),
    "blue": (50, 95, 235),
    "yellow": (235, 215, 45),
    "purple": (160, 70, 210),
    "orange": (245, 140, 35),
}
# Shapes a "moves" / "grows" / "static" caption can name.
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
# Every object noun; "bar" is only used by rotate and "ball" only by bounce.
NOUNS: tuple[str, ...] = ("square", "circle", "triangle", "bar", "ball")
ROTATE_SHAPES: tuple[str, ...] = ("bar", "square", "triangle")

# Unit vectors in image coordinates (y down). Diagonals are two plain words ("up left") rather than a
# hyphenated token, so a whitespace/punctuation pre-tokenizer sees only vocabulary words.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "up right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "down left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "down right": (math.sqrt(0.5), math.sqrt(0.5)),
}
CARDINAL_DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
PAN_DIRECTIONS: tuple[str, ...] = CARDINAL_DIRECTIONS
ROTATIONS: tuple[str, ...] = ("clockwise", "counterclockwise")

_FUNCTION_WORDS = (
    "a",
    "an",
    "the",
    "and",
    "moves",
    "bounces",
    "rotates",
    "grows",
    "shrinks",
    "static",
    "camera",
    "pans",
    "over",
    "textured",
    "wall",
)
# Every word any caption can contain (captions are lower case, single spaces, no punctuation).
VOCABULARY: list[str] = sorted(
    set(_FUNCTION_WORDS) | set(COLOURS) | set(NOUNS) | set(ROTATIONS) | {w for d in DIRECTIONS for w in d.split()}
)
# Longest caption: "a red square moves up left and a blue circle moves down right" (13 words).
MAX_CAPTION_WORDS = 13

SPLITS = ("train", "heldout", "all")

_SS = 2  # supersampling factor per axis for antialiased drawing and textures


def is_heldout(colour: str, noun: str) -> bool:
    """The held-out rule: ``(colour index + noun index) % 3 == 2`` over ``COLOURS`` and ``NOUNS`` order.

    For the three shapes it reserves exactly one shape per colour (red triangle, green circle, blue square,
    yellow triangle, purple circle, orange square), so every colour and every shape still appears in training,
    only in other pairings; it also reserves blue/orange bars and green/purple balls.
    """
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {list(COLOURS)}, got {colour!r}")
    if noun not in NOUNS:
        raise ValueError(f"shape must be one of {list(NOUNS)}, got {noun!r}")
    return (list(COLOURS).index(colour) + NOUNS.index(noun)) % 3 == 2


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


def allowed_combos(split: str, nouns: tuple[str, ...] = SHAPES) -> list[tuple[str, str]]:
    """The (colour, noun) pairs ``split`` may draw, in a fixed order."""
    _check_split(split)
    combos = [(c, n) for c in COLOURS for n in nouns]
    if split == "all":
        return combos
    want = split == "heldout"
    return [(c, n) for c, n in combos if is_heldout(c, n) == want]


# ------------------------------------------------------------------------------------------------------------
# Drawing helpers


def _check_dims(frames: int, height: int, width: int) -> None:
    for name, value, lo in (("frames", frames, 2), ("height", height, 16), ("width", width, 16)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Supersample centres in pixel units (pixel ``i`` spans ``[i, i+1)``), shaped for broadcasting."""
    xs = ((np.arange(width * _SS) + 0.5) / _SS).astype(np.float32)[None, :]
    ys = ((np.arange(height * _SS) + 0.5) / _SS).astype(np.float32)[:, None]
    return xs, ys


def _downsample(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Supersampled boolean/float mask -> per-pixel area coverage in [0, 1]."""
    return mask.reshape(height, _SS, width, _SS).mean(axis=(1, 3), dtype=np.float32)


def _shape_sdf(
    shape: str, cx: float, cy: float, size: float, angle: float, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """Signed distance (px, negative inside) to the shape's outline on the given grid. ``size`` is the
    half-extent: circle radius, square half side, triangle circumradius, bar half length (thickness 0.28 *
    size). ``angle`` in radians, clockwise on screen."""
    c, s = math.cos(angle), math.sin(angle)
    px, py = xs - cx, ys - cy
    lx = px * c + py * s  # local axes: local +x points along the drawing angle
    ly = -px * s + py * c
    if shape in ("circle", "ball"):
        return np.sqrt(lx * lx + ly * ly) - size
    if shape in ("square", "bar"):
        hx, hy = size, (size if shape == "square" else 0.28 * size)
        qx, qy = np.abs(lx) - hx, np.abs(ly) - hy
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        return outside + np.minimum(np.maximum(qx, qy), 0)
    if shape == "triangle":
        # equilateral, apex up (local -y): distance beyond the farthest of the three edges (exact inside and
        # along edges; slightly short outside the corners, which only softens the corner pixels)
        d = None
        for b in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6):
            e = lx * math.cos(b) + ly * math.sin(b) - size / 2
            d = e if d is None else np.maximum(d, e)
        return d
    raise ValueError(f"unknown shape {shape!r}")


def _extent(shape: str, size: float, rotating: bool = False) -> float:
    """Radius of a disc that holds the shape (used to keep it inside the frame)."""
    if shape == "square":
        return size * math.sqrt(2) if rotating else size
    return size  # circle/ball radius, triangle circumradius, bar half length


def _coverage(
    shape: str,
    cx: float,
    cy: float,
    size: float,
    angle: float,
    height: int,
    width: int,
    grid: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    # area coverage: each sub-sample ramps linearly across the 1/_SS px band around the outline, so coverage
    # is a continuous function of the position (exact for straight edges); no quantisation to sub-sample steps
    sdf = _shape_sdf(shape, cx, cy, size, angle, *grid)
    return _downsample(np.clip(0.5 - sdf * _SS, 0.0, 1.0), height, width)


def _pick_rgb(rng: np.random.Generator, colour: str) -> np.ndarray:
    base = np.asarray(COLOURS[colour], dtype=np.float32)
    return np.clip(base + rng.uniform(-12, 12, size=3), 0, 255).astype(np.float32)


def _sine_texture(rng: np.random.Generator, n_waves: int, wavelengths: tuple[float, float]):
    """A random smooth texture as a sum of sinusoid gratings, evaluable at any continuous position (so it can
    be shifted by sub-pixel amounts exactly). Returns ``f(xs, ys) -> float32 array`` with values roughly in
    [-1, 1].
    """
    theta = rng.uniform(0, 2 * math.pi, n_waves)
    lam = np.exp(rng.uniform(math.log(wavelengths[0]), math.log(wavelengths[1]), n_waves))
    kx, ky = 2 * math.pi * np.cos(theta) / lam, 2 * math.pi * np.sin(theta) / lam
    phase = rng.uniform(0, 2 * math.pi, n_waves)
    amp = rng.uniform(0.5, 1.0, n_waves)
    amp = amp / np.sqrt((amp**2).sum() / 2)  # unit-ish RMS regardless of the number of waves

    def f(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(xs.shape, ys.shape), dtype=np.float32)
        for i in range(n_waves):
            out += np.float32(amp[i]) * np.sin(np.float32(kx[i]) * xs + np.float32(ky[i]) * ys + np.float32(phase[i]))
        return out / math.sqrt(2)

    return f


def _background(rng: np.random.Generator, height: int, width: int, kind: str | None) -> tuple[np.ndarray, str]:
    """A dark plain or softly textured background ``float32 [H, W, 3]`` and its kind."""
    if kind is None:
        kind = "plain" if rng.random() < 0.5 else "textured"
    if kind not in ("plain", "textured"):
        raise ValueError(f"background must be 'plain' or 'textured', got {kind!r}")
    base = rng.uniform(18, 70) + rng.uniform(-8, 8, size=3)
    bg = np.broadcast_to(base.astype(np.float32), (height, width, 3)).copy()
    if kind == "textured":
        scale = min(height, width) / 32
        tex = _sine_texture(rng, 6, (10 * scale, 28 * scale))
        xs, ys = _grid(height, width)
        t = _downsample(tex(xs, ys), height, width)
        tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        bg += 9.0 * t[..., None] * tint
    return np.clip(bg, 0, 255), kind


def _choose(rng: np.random.Generator, options, value, name: str):
    """Draw from ``options`` unless the caller fixed ``value``; either way it must be one of them."""
    options = list(options)
    if value is None:
        return options[int(rng.integers(len(options)))]
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def _choose_combo(
    rng: np.random.Generator,
    split: str,
    nouns: tuple[str, ...],
    colour: str | None,
    shape: str | None,
    exclude_colours: tuple[str, ...] = (),
) -> tuple[str, str]:
    combos = [(c, n) for c, n in allowed_combos(split, nouns) if c not in exclude_colours]
    if colour is not None and colour not in COLOURS:
        raise ValueError(f"colour must be one of {list(COLOURS)}, got {colour!r}")
    if shape is not None and shape not in nouns:
        raise ValueError(f"shape must be one of {list(nouns)}, got {shape!r}")
    combos = [(c, n) for c, n in combos if (colour is None or c == colour) and (shape is None or n == shape)]
    if not combos:
        raise ValueError(
            f"no ({colour or 'any colour'}, {shape or 'any shape'}) pair is allowed in split {split!r} "
            f"(held-out rule: see is_heldout)"
        )
    return combos[int(rng.integers(len(combos)))]


def _linear_path(
    rng: np.random.Generator,
    frames: int,
    height: int,
    width: int,
    radius: float,
    direction: str,
    speed: float,
) -> tuple[float, float, float, float, float]:
    """Start centre and per-frame velocity of a straight move that keeps a disc of ``radius`` inside the
    frame.

    The speed is lowered when the whole path would not fit (long clips at small sizes); returns
    ``(x0, y0, dx, dy, speed)``.
    """
    ux, uy = DIRECTIONS[direction]
    margin = 0.5 * min(height, width) / 32
    lo_x, hi_x = radius + margin, width - radius - margin
    lo_y, hi_y = radius + margin, height - radius - margin
    steps = frames - 1
    for u, lo, hi in ((ux, lo_x, hi_x), (uy, lo_y, hi_y)):
        if abs(u) > 1e-9:
            speed = min(speed, (hi - lo) / (steps * abs(u)))
    dx, dy = speed * ux, speed * uy
    tx, ty = dx * steps, dy * steps
    # where the path fills the whole range, rounding can leave high a hair below low: the range is then one point
    x_lo, y_lo = lo_x + max(0.0, -tx), lo_y + max(0.0, -ty)
    x0 = rng.uniform(x_lo, max(x_lo, hi_x - max(0.0, tx)))
    y0 = rng.uniform(y_lo, max(y_lo, hi_y - max(0.0, ty)))
    return float(x0), float(y0), float(dx), float(dy), float(speed)


def article(word: str) -> str:
    """The article, "a" or "an", before ``word`` in a caption."""
    return "an" if word[0] in "aeiou" else "a"


# ------------------------------------------------------------------------------------------------------------
# Motion families. Each: fn(rng, *, frames, height, width, split, **overrides) -> (video, caption, meta).
# A family draws its parameters (the order of the draws is part of the clip stream) and states where its
# objects are on each frame; ``_draw`` renders them and ``_clip`` packages the result.

# One object on one frame: (shape, centre x, centre y, size, angle in radians, rgb).
_Object = tuple[str, float, float, float, float, np.ndarray]


def _unit(frames: int, height: int, width: int) -> float:
    """Check the clip's dimensions; return the length scale (1 at 32 px)."""
    _check_dims(frames, height, width)
    return min(height, width) / 32


def _equal_area(shape: str, size: float) -> float:
    """A triangle of circumradius R is much smaller than a square of half side R: enlarge it to look alike."""
    return size * 1.25 if shape == "triangle" else size


def _place(rng: np.random.Generator, extent: float, margin: float, height: int, width: int) -> tuple[float, float]:
    """A centre that keeps a disc of ``extent`` inside the frame (the middle of an axis too short to hold it)."""
    cx = rng.uniform(min(extent + margin, width / 2), max(width - extent - margin, width / 2))
    cy = rng.uniform(min(extent + margin, height / 2), max(height - extent - margin, height / 2))
    return cx, cy


def _draw(bg: np.ndarray, scene: list[list[_Object]]) -> list[np.ndarray]:
    """Each frame of ``scene`` (its objects, back to front) alpha-composited over ``bg``: float32 [H, W, 3]
    frames. A frame that holds the very same object list as the one before is not drawn again."""
    height, width = bg.shape[:2]
    grid = _grid(height, width)
    out: list[np.ndarray] = []
    for i, objects in enumerate(scene):
        if i and objects is scene[i - 1]:
            out.append(out[-1])
            continue
        frame = bg.copy()
        for shape, cx, cy, size, angle, rgb in objects:
            a = _coverage(shape, cx, cy, size, angle, height, width, grid)[..., None]
            frame = frame * (1 - a) + rgb * a
        out.append(frame)
    return out


def _clip(family: str, frames: list[np.ndarray], caption: str, **meta: Any) -> tuple[np.ndarray, str, dict]:
    """A family's result: the frames as uint8 ``[T, H, W, 3]``, the caption, and ``meta`` over the keys every
    clip's meta has."""
    video = np.clip(np.rint(np.asarray(frames, dtype=np.float32)), 0, 255).astype(np.uint8)
    base = {
        "family": family,
        "colour": None,
        "shape": None,
        "direction": None,
        "speed": 0.0,
        "dx": 0.0,
        "dy": 0.0,
        "background": None,
    }
    return video, caption, {**base, **meta}


def translate(
    rng: np.random.Generator,
    *,
    frames: int = 17,
    height: int = 32,
    width: int = 32,
    split: str = "train",
    colour: str | None = None,
    shape: str | None = None,
    direction: str | None = None,
    speed: float | None = None,
    background: str | None = None,
    directions: tuple[str, ...] = tuple(DIRECTIONS),
) -> tuple[np.ndarray, str, dict]:
    """One shape moves in a straight line: "a red square moves left". ``speed`` in px/frame at 32 px."""
    unit = _unit(frames, height, width)
    colour, shape = _choose_combo(rng, split, SHAPES, colour, shape)
    direction = _choose(rng, directions, direction, "direction")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    speed = (rng.uniform(0.6, 1.2) if speed is None else float(speed)) * unit
    size = _equal_area(shape, rng.uniform(3.5, 5.0) * unit)
    rgb = _pick_rgb(rng, colour)
    bg, bg_kind = _background(rng, height, width, background)
    x0, y0, dx, dy, speed = _linear_path(rng, frames, height, width, _extent(shape, size), direction, speed)
    scene = [[(shape, x0 + dx * t, y0 + dy * t, size, 0.0, rgb)] for t in range(frames)]
    return _clip(
        "translate",
        _draw(bg, scene),
        f"{article(colour)} {colour} {shape} moves {direction}",
        colour=colour,
        shape=shape,
        direction=direction,
        speed=speed,
        dx=dx,
        dy=dy,
        background=bg_kind,
        size=size,
        x0=x0,
        y0=y0,
        rgb=rgb.tolist(),
    )


def bounce(
    rng: np.random.Generator,
    *,
    frames: int = 17,
    height: int = 32,
    width: int = 32,
    split: str = "train",
    colour: str | None = None,
    background: str | None = None,
) -> tuple[np.ndarray, str, dict]:
    """A ball dropped from rest falls under constant gravity and bounces off a floor strip: "a blue ball
    bounces".

    The first impact is placed at 35-60% of the clip; each bounce keeps ``restitution`` of the speed. Between
    impacts the centre height is exactly ``y0 + v t + g t^2 / 2`` (px, y down).
    """
    unit = _unit(frames, height, width)
    colour, _ = _choose_combo(rng, split, ("ball",), colour, "ball")
    radius = rng.uniform(3.0, 4.5) * unit
    rgb = _pick_rgb(rng, colour)
    bg, bg_kind = _background(rng, height, width, background)
    floor_h = max(1.0, round(2 * unit))
    floor_rgb = np.clip(bg[-1, 0] + 45.0, 0, 255)
    bg[height - int(floor_h) :] = floor_rgb  # a lighter floor strip the ball lands on
    y_floor = height - floor_h - radius  # centre height at contact
    y0 = rng.uniform(radius + 1.0 * unit, radius + 1.0 * unit + 0.15 * height)
    x = rng.uniform(radius + 1.0 * unit, width - radius - 1.0 * unit)
    t1 = rng.uniform(0.35, 0.6) * (frames - 1)
    t1 = max(t1, 1.5)
    g = 2 * (y_floor - y0) / (t1 * t1)
    restitution = rng.uniform(0.65, 0.85)

    # piecewise-parabolic trajectory, event by event
    segments = []  # (t_start, y_start, v_start, t_end)
    ts, ys, vs = 0.0, y0, 0.0
    impacts = []
    for _ in range(64):
        if ts >= frames - 1:
            break
        # solve ys + vs*tau + g/2 tau^2 = y_floor for the positive root
        a, b, c = 0.5 * g, vs, ys - y_floor
        tau = (-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)
        segments.append((ts, ys, vs, ts + tau))
        ts = ts + tau
        impacts.append(ts)
        v_out = restitution * (vs + g * tau)
        if v_out < 0.05 * unit:  # at rest on the floor
            segments.append((ts, y_floor, 0.0, math.inf))
            break
        ys, vs = y_floor, -v_out
    ys_out = []
    for t in range(frames):
        t_s, y_s, v_s, _ = [seg for seg in segments if seg[0] <= t][-1]
        dt = t - t_s
        # the clamp keeps the resting ball on the floor (its segment has v = 0 and would fall through)
        ys_out.append(min(y_s + v_s * dt + 0.5 * g * dt * dt, y_floor))
    scene = [[("ball", x, y, radius, 0.0, rgb)] for y in ys_out]
    return _clip(
        "bounce",
        _draw(bg, scene),
        f"{article(colour)} {colour} ball bounces",
        colour=colour,
        shape="ball",
        background=bg_kind,
        size=radius,
        x0=x,
        y0=y0,
        gravity=g,
        restitution=restitution,
        floor_y=y_floor,
        impact_times=[t for t in impacts if t <= frames - 1],
        y=[float(v) for v in ys_out],
        rgb=rgb.tolist(),
    )


def rotate(
    rng: np.random.Generator,
    *,
    frames: int = 17,
    height: int = 32,
    width: int = 32,
    split: str = "train",
    colour: str | None = None,
    shape: str | None = None,
    direction: str | None = None,
    angular_speed: float | None = None,
    background: str | None = None,
) -> tuple[np.ndarray, str, dict]:
    """A bar (or square/triangle) spins in place: "a green bar rotates clockwise". ``angular_speed`` in
    deg/frame."""
    unit = _unit(frames, height, width)
    colour, shape = _choose_combo(rng, split, ROTATE_SHAPES, colour, shape)
    direction = _choose(rng, ROTATIONS, direction, "direction")
    # ~1-2 px/frame at the bar's tips; triangles/squares have 3/4-fold symmetry, so stay well under 60/45 deg
    omega = rng.uniform(6.0, 12.0) if angular_speed is None else float(angular_speed)
    sign = 1.0 if direction == "clockwise" else -1.0
    size = {
        "bar": rng.uniform(8.0, 11.0),
        "square": rng.uniform(4.5, 6.0),
        "triangle": rng.uniform(6.0, 8.0),
    }[shape]
    size *= unit
    rgb = _pick_rgb(rng, colour)
    bg, bg_kind = _background(rng, height, width, background)
    cx, cy = _place(rng, _extent(shape, size, rotating=True), 0.5 * unit, height, width)
    a0 = rng.uniform(0, 2 * math.pi)
    scene = [[(shape, cx, cy, size, a0 + sign * math.radians(omega) * t, rgb)] for t in range(frames)]
    return _clip(
        "rotate",
        _draw(bg, scene),
        f"{article(colour)} {colour} {shape} rotates {direction}",
        colour=colour,
        shape=shape,
        direction=direction,
        background=bg_kind,
        size=size,
        x0=cx,
        y0=cy,
        angle0_deg=math.degrees(a0),
        angular_speed=sign * omega,
        speed=math.radians(omega) * size,
        rgb=rgb.tolist(),
    )


def pan(
    rng: np.random.Generator,
    *,
    frames: int = 17,
    height: int = 32,
    width: int = 32,
    split: str = "train",
    direction: str | None = None,
    speed: float | None = None,
) -> tuple[np.ndarray, str, dict]:
    """The camera slides over a smooth random wall texture: "the camera pans right over a textured wall".

    The texture is a sum of sinusoids evaluated at the shifted supersample grid, so every frame is an exact
    sub-pixel translate of the same wall. ``dx``/``dy`` give the content motion (opposite to the camera).
    """
    unit = _unit(frames, height, width)
    if split == "heldout":
        raise ValueError("family 'pan' has no (colour, shape) pair, so it has no held-out clips; use split='train'")
    _check_split(split)
    direction = _choose(rng, PAN_DIRECTIONS, direction, "direction")
    speed = (rng.uniform(0.6, 1.2) if speed is None else float(speed)) * unit
    ux, uy = DIRECTIONS[direction]
    cam_dx, cam_dy = speed * ux, speed * uy
    tex_l = _sine_texture(rng, 10, (5 * unit, 16 * unit))  # luminance structure
    tex_c = _sine_texture(rng, 5, (12 * unit, 30 * unit))  # slow hue drift
    dark = rng.uniform(30, 80, size=3).astype(np.float32)
    light = np.clip(dark + rng.uniform(70, 140) * rng.uniform(0.6, 1.0, size=3), 0, 255).astype(np.float32)
    tint = (rng.uniform(-25, 25, size=3)).astype(np.float32)
    xs, ys = _grid(height, width)
    out = []
    for t in range(frames):
        sx, sy = xs + cam_dx * t, ys + cam_dy * t  # the camera window moves; the wall stays put
        lum = _downsample(np.tanh(1.3 * tex_l(sx, sy)), height, width)  # tanh: crisper blobs than a raw sum
        hue = _downsample(tex_c(sx, sy), height, width)
        w = (lum[..., None] + 1) / 2
        out.append(dark * (1 - w) + light * w + tint * hue[..., None])
    return _clip(
        "pan",
        out,
        f"the camera pans {direction} over a textured wall",
        direction=direction,
        speed=speed,
        dx=0.0 - cam_dx,
        dy=0.0 - cam_dy,
        background="textured",
        camera_dx=cam_dx,
        camera_dy=cam_dy,
    )


def scale(
    rng: np.random.Generator,
    *,
    frames: int = 17,
    height: int = 32,
    width: int = 32,
    split: str = "train",
    colour: str | None = None,
    shape: str | None = None,
    direction: str | None = None,
    background: str | None = None,
) -> tuple[np.ndarray, str, dict]:
    """A shape grows or shrinks in place (geometric size change by 1.7-2.5x): "a yellow circle grows"."""
    unit = _unit(frames, height, width)
    colour, shape = _choose_combo(rng, split, SHAPES, colour, shape)
    direction = _choose(rng, ("grows", "shrinks"), direction, "direction")
    small = rng.uniform(2.5, 3.5) * unit
    big = small * rng.uniform(1.7, 2.5)
    small, big = _equal_area(shape, small), _equal_area(shape, big)
    big_limit = min(height, width) / 2 - 0.5 * unit
    if big > big_limit:  # fit non-square or small frames
        big = big_limit
        small = min(small, big / 1.5)
    s_start, s_end = (small, big) if direction == "grows" else (big, small)
    rgb = _pick_rgb(rng, colour)
    bg, bg_kind = _background(rng, height, width, background)
    cx, cy = _place(rng, big, 0.5 * unit, height, width)
    sizes = [s_start * (s_end / s_start) ** (t / (frames - 1)) for t in range(frames)]
    return _clip(
        "scale",
        _draw(bg, [[(shape, cx, cy, s, 0.0, rgb)] for s in sizes]),
        f"{article(colour)} {colour} {shape} {direction}",
        colour=colour,
        shape=shape,
        direction=direction,
        background=bg_kind,
        x0=cx,
        y0=cy,
        size_start=s_start,
        size_end=s_end,
        growth_per_frame=(s_end / s_start) ** (1 / (frames - 1)),
        speed=abs(s_end - s_start) / (frames - 1),
        rgb=rgb.tolist(),
    )


def two_objects(
    rng: np.random.Generator,
    *,
    frames: int = 17,
    height: int = 32,
    width: int = 32,
    split: str = "train",
    directions: tuple[str, ...] = tuple(DIRECTIONS),
    background: str | None = None,
) -> tuple[np.ndarray, str, dict]:
    """Two shapes of different colours move in different directions:
    "a red square moves left and a blue circle moves up". Paths are drawn so the shapes never overlap."""
    unit = _unit(frames, height, width)
    c1, s1 = _choose_combo(rng, split, SHAPES, None, None)
    c2, s2 = _choose_combo(rng, split, SHAPES, None, None, exclude_colours=(c1,))
    d1 = _choose(rng, directions, None, "direction")
    d2 = _choose(rng, [d for d in directions if d != d1], None, "direction")
    objs = []
    for colour, shape, direction in ((c1, s1, d1), (c2, s2, d2)):
        size = _equal_area(shape, rng.uniform(3.0, 4.0) * unit)
        objs.append(
            {
                "colour": colour,
                "shape": shape,
                "direction": direction,
                "size": size,
                "speed0": rng.uniform(0.6, 1.2) * unit,
                "rgb": _pick_rgb(rng, colour),
            }
        )
    ext = [_extent(o["shape"], o["size"]) for o in objs]
    # rejection-sample start points until the two paths keep apart for the whole clip
    t = np.arange(frames)
    for _ in range(100):
        paths = [_linear_path(rng, frames, height, width, e, o["direction"], o["speed0"]) for o, e in zip(objs, ext)]
        (xa, ya, dxa, dya, _), (xb, yb, dxb, dyb, _) = paths
        dist = np.hypot(xa + dxa * t - xb - dxb * t, ya + dya * t - yb - dyb * t)
        if dist.min() > ext[0] + ext[1] + unit:
            break
    bg, bg_kind = _background(rng, height, width, background)
    scene = [
        [(o["shape"], x + dx * ti, y + dy * ti, o["size"], 0.0, o["rgb"]) for o, (x, y, dx, dy, _) in zip(objs, paths)]
        for ti in range(frames)
    ]
    objects = [
        {
            "colour": o["colour"],
            "shape": o["shape"],
            "direction": o["direction"],
            "speed": sp,
            "dx": dx,
            "dy": dy,
            "size": o["size"],
            "x0": x,
            "y0": y,
            "rgb": o["rgb"].tolist(),
        }
        for o, (x, y, dx, dy, sp) in zip(objs, paths)
    ]
    caption = f"{article(c1)} {c1} {s1} moves {d1} and {article(c2)} {c2} {s2} moves {d2}"
    return _clip("two_objects", _draw(bg, scene), caption, background=bg_kind, objects=objects)


def static(
    rng: np.random.Generator,
    *,
    frames: int = 17,
    height: int = 32,
    width: int = 32,
    split: str = "train",
    colour: str | None = None,
    shape: str | None = None,
    background: str | None = None,
) -> tuple[np.ndarray, str, dict]:
    """A still scene, every frame identical: "a static purple triangle"."""
    unit = _unit(frames, height, width)
    colour, shape = _choose_combo(rng, split, SHAPES, colour, shape)
    size = _equal_area(shape, rng.uniform(3.5, 6.0) * unit)
    rgb = _pick_rgb(rng, colour)
    bg, bg_kind = _background(rng, height, width, background)
    cx, cy = _place(rng, size, 0.5 * unit, height, width)
    still = [(shape, cx, cy, size, 0.0, rgb)]
    return _clip(
        "static",
        _draw(bg, [still] * frames),
        f"a static {colour} {shape}",
        colour=colour,
        shape=shape,
        background=bg_kind,
        size=size,
        x0=cx,
        y0=cy,
        rgb=rgb.tolist(),
    )


FAMILIES: dict[str, Callable[..., tuple[np.ndarray, str, dict]]] = {
    "translate": translate,
    "bounce": bounce,
    "rotate": rotate,
    "pan": pan,
    "scale": scale,
    "two_objects": two_objects,
    "static": static,
}
# Families with no (colour, shape) pair cannot produce held-out clips.
_NO_HELDOUT = {"pan"}


def families_for_split(split: str) -> list[str]:
    """The families that can produce clips in ``split``."""
    _check_split(split)
    return [f for f in FAMILIES if not (split == "heldout" and f in _NO_HELDOUT)]


# ------------------------------------------------------------------------------------------------------------
# Datasets


def _family_weights(families: Mapping[str, float] | None, split: str) -> tuple[list[str], np.ndarray]:
    allowed = families_for_split(split)
    if families is None:
        families = {f: 1.0 for f in allowed}
    names, weights = [], []
    for name, w in families.items():
        if name not in FAMILIES:
            raise ValueError(f"unknown family {name!r}; known: {list(FAMILIES)}")
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"family weight for {name!r} must be a finite number >= 0, got {w}")
        if w > 0 and name not in allowed:
            raise ValueError(f"family {name!r} cannot produce clips in split {split!r}")
        if w > 0:
            names.append(name)
            weights.append(w)
    if not names:
        raise ValueError("families: at least one family needs a weight > 0")
    # registry order, so the same weights given in another dict order draw the same clips
    order = sorted(range(len(names)), key=lambda i: list(FAMILIES).index(names[i]))
    names = [names[i] for i in order]
    p = np.asarray([weights[i] for i in order], dtype=np.float64)
    return names, p / p.sum()


def _clip_rng(seed: int, index: int) -> np.random.Generator:
    # one independent stream per (seed, index): clip i does not depend on how many clips are drawn
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def make_clip(
    index: int,
    seed: int,
    *,
    frames: int = 17,
    height: int = 32,
    width: int = 32,
    fps: float = 8.0,
    families: Mapping[str, float] | None = None,
    split: str = "train",
) -> tuple[np.ndarray, str, dict]:
    """Clip number ``index`` of the stream ``seed``: ``(video uint8 [T, H, W, 3], caption, meta)``.

    The family is drawn by ``families`` weights (default: uniform over the families ``split`` allows).
    """
    _check_dims(frames, height, width)
    _check_split(split)
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    names, p = _family_weights(families, split)
    rng = _clip_rng(seed, index)
    family = names[int(rng.choice(len(names), p=p))]
    video, caption, meta = FAMILIES[family](rng, frames=frames, height=height, width=width, split=split)
    meta = _jsonable(meta)
    meta.update(index=int(index), fps=float(fps), split=split)
    return video, caption, meta


def sample_clips(
    n: int,
    seed: int = 0,
    *,
    frames: int = 17,
    height: int = 32,
    width: int = 32,
    fps: float = 8.0,
    families: Mapping[str, float] | None = None,
    split: str = "train",
) -> list[tuple[np.ndarray, str, dict]]:
    """``n`` clips in memory (clips ``0..n-1`` of ``seed``), for training without touching disk."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [
        make_clip(i, seed, frames=frames, height=height, width=width, fps=fps, families=families, split=split)
        for i in range(n)
    ]


def generate_dataset(
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    frames: int = 17,
    height: int = 32,
    width: int = 32,
    fps: float = 8.0,
    families: Mapping[str, float] | None = None,
    split: str = "train",
    *,
    quality: str = "lossless",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``n`` clips as ``clip_000000.mp4 ...`` plus ``captions.jsonl`` and ``dataset.json`` under
    ``out_dir``.

    ``captions.jsonl`` holds one ``{"file", "caption", **meta}`` per line; ``dataset.json`` the generation
    parameters. ``captions.jsonl`` and ``dataset.json`` are written last and atomically, so a directory that
    has them is complete. Refuses to write into a directory that already holds a dataset unless ``overwrite``.
    """
    from tqdm import tqdm

    from trainer.data.video_io import write_video

    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    _check_dims(frames, height, width)
    _check_split(split)
    _family_weights(families, split)  # validate before writing anything
    out = Path(out_dir)
    if (out / "captions.jsonl").exists() and not overwrite:
        raise FileExistsError(
            f"{out} already holds a dataset (captions.jsonl); pass overwrite=True (--overwrite) to replace it"
        )
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in tqdm(range(n), desc=f"synthetic clips -> {out}", unit="clip", disable=not progress):
        video, caption, meta = make_clip(
            i, seed, frames=frames, height=height, width=width, fps=fps, families=families, split=split
        )
        name = f"clip_{i:06d}.mp4"
        write_video(out / name, video, fps=fps, quality=quality)
        lines.append(json.dumps({"file": name, "caption": caption, **meta}, sort_keys=False))
    _atomic_write(out / "captions.jsonl", "\n".join(lines) + "\n")
    params = {
        "format": "motionlab-synthetic",
        "version": 1,
        "n": int(n),
        "seed": int(seed),
        "frames": int(frames),
        "height": int(height),
        "width": int(width),
        "fps": float(fps),
        "split": split,
        "quality": quality,
        "families": dict(zip(*_family_weights(families, split))) if families is None else dict(families),
        "vocabulary": VOCABULARY,
    }
    params["families"] = {k: float(v) for k, v in params["families"].items()}
    _atomic_write(out / "dataset.json", json.dumps(params, indent=2) + "\n")
    return out


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def direction_prompts(n: int, seed: int = 0, split: str = "heldout") -> list[dict[str, Any]]:
    """``n`` "a <colour> <shape> moves <direction>" prompts over the 4 cardinal directions, balanced.

    Directions cycle left, right, up, down (any prefix is balanced to within one); each direction walks
    through its own shuffled order of the split's (colour, shape) pairs, so the first ``4 * len(pairs)``
    prompts are distinct. ``dx_sign``/``dy_sign`` are in image coordinates (``dy_sign = -1`` for "up").
    """
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    combos = allowed_combos(split, SHAPES)
    rng = np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(0x5EED,)))
    orders = {d: [combos[j] for j in rng.permutation(len(combos))] for d in CARDINAL_DIRECTIONS}
    out = []
    for i in range(n):
        d = CARDINAL_DIRECTIONS[i % 4]
        colour, shape = orders[d][(i // 4) % len(combos)]
        ux, uy = DIRECTIONS[d]
        out.append(
            {
                "prompt": f"{article(colour)} {colour} {shape} moves {d}",
                "direction": d,
                "dx_sign": int(np.sign(ux)),
                "dy_sign": int(np.sign(uy)),
                "colour": colour,
                "shape": shape,
            }
        )
    return out


# ------------------------------------------------------------------------------------------------------------
# CLI


def _parse_families(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition("=")
        try:
            out[name.strip()] = float(w) if w else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad family weight {part!r}; use name=weight") from None
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.data.synthetic",
        description="Write procedurally generated, captioned motion clips (mp4 + captions.jsonl + dataset.json).",
    )
    parser.add_argument("out_dir", help="output directory")
    parser.add_argument("--n", type=int, default=100, help="number of clips (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--frames", type=int, default=17, help="frames per clip (default 17)")
    parser.add_argument("--height", type=int, default=32, help="frame height in px (default 32)")
    parser.add_argument("--width", type=int, default=32, help="frame width in px (default 32)")
    parser.add_argument("--fps", type=float, default=8.0, help="frames per second written to the files (default 8)")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="train",
        help="train: never the held-out (colour, shape) pairs; heldout: only them; all: both",
    )
    parser.add_argument(
        "--families",
        type=_parse_families,
        default=None,
        help=f"comma-separated name=weight, e.g. translate=2,bounce=1 (names: {', '.join(FAMILIES)})",
    )
    parser.add_argument("--quality", choices=("lossless", "web"), default="lossless", help="mp4 encoding")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT_DIR")
    args = parser.parse_args(argv)
    try:
        out = generate_dataset(
            args.out_dir,
            args.n,
            args.seed,
            args.frames,
            args.height,
            args.width,
            args.fps,
            args.families,
            args.split,
            quality=args.quality,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    print(f"wrote {args.n} clips to {out}")
    return out


if __name__ == "__main__":
    main()
