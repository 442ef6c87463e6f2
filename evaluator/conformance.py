"""Caption conformance of tiny synthetic-motion videos: does a video show what its caption says?

The tiny models are trained on ``trainer.data.synthetic`` clips, whose captions state everything about the clip
("a red square moves left", "an orange bar rotates clockwise", "a static purple circle", ...). This module reads
the expected answers from a caption (``parse_caption``), measures them on a uint8 ``[T, H, W, 3]`` video with
plain image processing (``measure_video``) and aggregates per motion family (``summarize``):

- colour: the most salient object's mean colour, named by the nearest ``COLOURS`` hue (grey counts as no colour);
- shape: fill ratio of the object in its minimum-area rectangle (square ~1, circle pi/4, triangle 1/2) and its
  elongation (bar);
- motion: a line fitted to the object's centroid track (translate, two objects: per object), the mean optical
  flow (pan: the content moves opposite to the camera), the phase of an n-fold angular moment (rotate), the trend
  of the object's area (scale), a fall followed by a rise (bounce), a still centroid and few visibly changed
  pixels (static);
- ``flow_mag``: mean Farneback optical-flow magnitude over the frame (``flow_magnitude``, one setting everywhere).

Every threshold is a named module constant. The same functions serve the bench script and the evaluator:

    from evaluator.conformance import conformance_prompts, measure_video, parse_caption, summarize, format_table
    prompts = conformance_prompts(8, seed=0)            # held-out captions + meta + real clips, all families
    rows = [measure_video(p["video"], parse_caption(p["caption"])) for p in prompts]
    print(format_table(summarize(rows)))
    conformance_scores(videos, captions)                # per-video metric lists for a benchmark runner

    python bench/caption_conformance.py --checkpoint tiny-teacher --per-family 8

Image coordinates are synthetic.py's: ``x`` right, ``y`` down, so "up" is ``dy < 0`` and clockwise on screen is an
increasing angle ``atan2(dy, dx)``.
"""

from __future__ import annotations

import colorsys
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from evaluator.metrics.base import EVALUATOR_VERSION
from trainer.data.synthetic import (
    COLOURS,
    DIRECTIONS,
    FAMILIES,
    PAN_DIRECTIONS,
    ROTATE_SHAPES,
    ROTATIONS,
    SHAPES,
    families_for_split,
    make_clip,
)

__all__ = [
    "OPPOSITE_DIRECTION",
    "PROMPT_SPLITS",
    "SUMMARY_COLUMNS",
    "colour_name",
    "compare_reconstruction",
    "conformance_captions",
    "conformance_prompts",
    "conformance_records",
    "conformance_report",
    "conformance_scores",
    "expected_from_meta",
    "flow_magnitude",
    "format_table",
    "measure_video",
    "parse_caption",
    "real_reference",
    "summarize",
]

# ------------------------------------------------------------------------------------------------------------
# Constants. Lengths in px and speeds in px/frame are at 32 px and scaled by min(H, W) / 32, as synthetic.py does.

REFERENCE_SIDE = 32  # the frame side synthetic.py states its sizes and speeds at
PROMPT_SPLITS = ("heldout", "train")  # conformance_prompts: unseen colour/shape pairs, or seen ones

# Farneback optical flow on grey frames, fixed for 32 x 32 video. Measured on real clips: a pan's mean flow is
# within 2% of its true speed; a 15 px window (OpenCV's usual) smears a small object's motion over the background.
FLOW_PYR_SCALE = 0.5  # halve per pyramid level
FLOW_LEVELS = 2  # full and half size: a quarter-size level of a tiny frame holds no structure
FLOW_WINSIZE = 9  # about one object across: local enough to keep motion on the object
FLOW_ITERATIONS = 3  # OpenCV's default
FLOW_POLY_N = 5  # small pixel neighbourhood for the polynomial fit (small frames)
FLOW_POLY_SIGMA = 1.1  # the smoothing OpenCV recommends with poly_n = 5

# Segmentation: an object is a connected region far from the background in RGB.
FG_MIN_CONTRAST = 40.0  # RGB distance above background noise; real objects stand 110-230 off the dark background
BG_NOISE_PERCENTILE = 80  # of border-pixel distances: the background's own variation (texture), robust to an
#                           object touching the border (it covers well under 20% of the border)
STRIPE_MIN_SHARE = 0.9  # a row this uniform is a full-width stripe (bounce's floor), i.e. background
STRIPE_TOLERANCE = 20.0  # RGB distance counted as "uniform" for the stripe test (textures vary ~15)
STRIPE_MIN_OFFSET = 20.0  # a stripe must differ this much from the border median to need its own background
MIN_BLOB_AREA = 4  # px; smaller components are noise, the smallest real object covers ~12 px
MIN_OBJECT_AREA = 8  # px (soft area) for a blob to count in n_objects; colour fringes of touching objects are smaller
CORE_ALPHA = 0.75  # pixels at least this covered give an object's colour (edge pixels blend with the background)
MIN_TRACK_SHARE = 0.5  # an object must be found in at least this share of the frames to be measured

# Colour.
MIN_OBJECT_SATURATION = 0.3  # HSV S of the object's mean colour; real objects 0.6-0.85, a grey object ~0
DARK_VALUE = 64  # pixels whose brightest channel is below this count as saturation 0: a near-black pixel's S is noise
TOP_SATURATION_SHARE = 0.02  # top2pct_saturation: the S of the most saturated 2% of pixels (an object covers >= 1%)

# Shape: fill ratio in the minimum-area rectangle and elongation of that rectangle, on the coverage map upsampled
# bilinearly and cut at 1/2 (a sub-pixel outline of the antialiased shape).
SHAPE_UPSAMPLE = 8  # upsampling factor before the outline is traced
BAR_MIN_ELONGATION = 2.0  # a bar is 1 : 0.28 (3.6); squares and circles ~1, triangles 1.15
SQUARE_MIN_FILL = 0.89  # square ~0.97 (rounded corners), circle pi/4 = 0.785
CIRCLE_MIN_FILL = 0.65  # equilateral triangle 0.5
SHAPE_AREA_SHARE = 0.5  # only views at least this share of the largest view's area vote (tiny shapes are blobs)

# Motion.
MIN_SPEED = 0.25  # px/frame a centroid (or pan flow) must move for a direction to count; real motion is >= 0.6
MIN_ANGULAR_SPEED = 1.5  # deg/frame for a rotation sense to count; real rotation is 6-12
ROTATION_ORDERS = (2, 3, 4)  # n-fold angular moments tried: bar (2), triangle (3), square (4)
MIN_SCALE_RATIO = 1.3  # area change over the clip for grows/shrinks; real size ratios of 1.7-2.5 are 2.9-6x in area
BOUNCE_MIN_DROP = 3.0  # px the ball must fall before the lowest point of a bounce; real drops are >= 15 px
BOUNCE_MIN_RISE = 1.0  # px it must rise after that point; real rebounds are >= 5 px
# Static: the object's centroid stays put and few pixels visibly change. Not Farneback flow: a decoder's sub-visible
# flicker reads as much flow as a visible drift (bench/README.md, "The static check").
STATIC_MAX_DRIFT = 0.1  # px/frame centroid drift allowed in a static scene
STATIC_CHANGE_LEVEL = 16  # /255: a pixel whose largest channel is this far from the clip's median frame has changed
STATIC_MAX_CHANGED = 0.01  # share of pixels x frames allowed to change: between decoded still clips and slow drift

DEFAULT_PER_FAMILY = 4  # the evaluator suite's prompts per family (28 in all): every family, still quick to sample
FLOW_RATIO_MIN_REFERENCE = 0.02  # px/frame: no flow ratio against a reference this still (static scenes): x / ~0

# The speed a caption implies, for speed_ratio when no clip meta is given: the middle of synthetic.py's ranges.
NOMINAL_SPEED = 0.9  # px/frame: translate, two_objects and pan draw 0.6-1.2
NOMINAL_ANGULAR_SPEED = 9.0  # deg/frame: rotate draws 6-12
NOMINAL_SIZE_RATIO = 2.1  # scale changes the size by 1.7-2.5x over the clip

# The vocabulary, from synthetic.py.
_COLOURS = "|".join(COLOURS)
_SHAPES = "|".join(SHAPES)
# longest first, so "up left" wins over "up"
_DIRS = "|".join(sorted(DIRECTIONS, key=len, reverse=True))
_CAPTION_PATTERNS: list[tuple[str, re.Pattern]] = [
    (
        "two_objects",
        re.compile(
            rf"an? (?P<c1>{_COLOURS}) (?P<s1>{_SHAPES}) moves (?P<d1>{_DIRS}) and "
            rf"an? (?P<c2>{_COLOURS}) (?P<s2>{_SHAPES}) moves (?P<d2>{_DIRS})"
        ),
    ),
    ("translate", re.compile(rf"an? (?P<c1>{_COLOURS}) (?P<s1>{_SHAPES}) moves (?P<d1>{_DIRS})")),
    ("bounce", re.compile(rf"an? (?P<c1>{_COLOURS}) (?P<s1>ball) bounces")),
    (
        "rotate",
        re.compile(rf"an? (?P<c1>{_COLOURS}) (?P<s1>{'|'.join(ROTATE_SHAPES)}) rotates (?P<d1>{'|'.join(ROTATIONS)})"),
    ),
    ("pan", re.compile(rf"the camera pans (?P<d1>{'|'.join(PAN_DIRECTIONS)}) over a textured wall")),
    ("scale", re.compile(rf"an? (?P<c1>{_COLOURS}) (?P<s1>{_SHAPES}) (?P<d1>grows|shrinks)")),
    ("static", re.compile(rf"a static (?P<c1>{_COLOURS}) (?P<s1>{_SHAPES})")),
]
# The shape class a noun should be measured as (a ball is drawn as a circle).
_SHAPE_CLASS = {"square": "square", "circle": "circle", "triangle": "triangle", "bar": "bar", "ball": "circle"}
_COLOUR_HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360 for name, rgb in COLOURS.items()}
OPPOSITE_DIRECTION = {
    name: min(DIRECTIONS, key=lambda d: math.dist(DIRECTIONS[d], (-vx, -vy))) for name, (vx, vy) in DIRECTIONS.items()
}


# ------------------------------------------------------------------------------------------------------------
# Captions and prompts


def parse_caption(caption: str) -> dict[str, Any]:
    """The answers a synthetic caption states, from its text alone.

    Returns ``family``, ``n_objects``, ``objects`` (one ``{"colour", "shape", "direction"}`` per object) and, for
    one-object families, ``colour``/``shape``/``direction`` at the top level. ``direction`` is the caption's motion
    word: a ``DIRECTIONS`` key (translate; for pan the *camera's* way, ``content_direction`` the image content's),
    a ``ROTATIONS`` sense (rotate), ``"grows"``/``"shrinks"`` (scale), ``None`` (bounce, static). Raises
    ``ValueError`` naming the caption when it is not one synthetic.py can write.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a string, got {caption!r}")
    text = " ".join(caption.lower().split())
    for family, pattern in _CAPTION_PATTERNS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        g = m.groupdict()
        if family == "pan":
            objects: list[dict[str, Any]] = []
            out = {
                "colour": None,
                "shape": None,
                "direction": g["d1"],
                "content_direction": OPPOSITE_DIRECTION[g["d1"]],
            }
        elif family == "two_objects":
            objects = [{"colour": g[f"c{i}"], "shape": g[f"s{i}"], "direction": g[f"d{i}"]} for i in (1, 2)]
            if objects[0]["colour"] == objects[1]["colour"]:
                raise ValueError(f"caption {caption!r}: the two objects of a two-object caption must differ in colour")
            out = {"colour": None, "shape": None, "direction": None}
        else:
            objects = [{"colour": g["c1"], "shape": g["s1"], "direction": g.get("d1")}]
            out = dict(objects[0])
        return {"caption": text, "family": family, "n_objects": len(objects), "objects": objects, **out}
    raise ValueError(f"caption {caption!r} is not a synthetic caption this benchmark can parse")


def expected_from_meta(caption: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """``parse_caption`` plus the clip's exact numbers from its synthetic ``meta`` (for speed ratios against the
    clip itself rather than the caption's nominal speed). Raises ``ValueError`` when caption and meta disagree."""
    exp = parse_caption(caption)
    if meta.get("family") != exp["family"]:
        raise ValueError(f"caption {caption!r} parses as {exp['family']!r} but its meta says {meta.get('family')!r}")
    exp["meta"] = dict(meta)
    fam = exp["family"]
    if fam in ("translate", "pan"):
        exp["speed"] = float(meta["speed"])
    elif fam == "two_objects":
        for obj, m in zip(exp["objects"], meta["objects"], strict=True):
            if (obj["colour"], obj["shape"], obj["direction"]) != (m["colour"], m["shape"], m["direction"]):
                raise ValueError(f"caption {caption!r} does not match its meta objects")
            obj["speed"] = float(m["speed"])
    elif fam == "rotate":
        exp["angular_speed"] = abs(float(meta["angular_speed"]))
    elif fam == "scale":
        exp["size_ratio"] = max(meta["size_start"], meta["size_end"]) / min(meta["size_start"], meta["size_end"])
    for key in ("colour", "shape", "direction"):
        if exp["family"] not in ("two_objects", "pan") and exp[key] != meta.get(key):
            raise ValueError(f"caption {caption!r} says {key}={exp[key]!r}, its meta {meta.get(key)!r}")
    return exp


def conformance_prompts(
    n_per_family: int = 8,
    seed: int = 0,
    *,
    frames: int = 17,
    height: int = 32,
    width: int = 32,
    split: str = "heldout",
) -> list[dict[str, Any]]:
    """Deterministic prompts for every family with a real clip each: ``[{"caption", "family", "meta", "video"}]``.

    Clips come from ``make_clip`` restricted to one family, by default split ``"heldout"`` (colour/shape pairs the
    tiny models never saw); ``pan`` names no colour or shape and has no held-out clips, so its clips are ``"train"``
    ones. ``split="train"`` draws new clips of the pairs the models were trained on instead, which tells a failure to
    compose unseen pairs from a failure on every pair. The list is interleaved family by family (one of each, then
    the next), so any prefix is balanced.
    """
    if not isinstance(n_per_family, (int, np.integer)) or n_per_family < 0:
        raise ValueError(f"n_per_family must be an integer >= 0, got {n_per_family!r}")
    if split not in PROMPT_SPLITS:
        raise ValueError(f"split must be one of {list(PROMPT_SPLITS)}, got {split!r}")
    heldout = set(families_for_split("heldout")) if split == "heldout" else set()
    per_family = []
    for k, family in enumerate(FAMILIES):
        family_split = "heldout" if family in heldout else "train"
        # one stream per (seed, family): families do not share their random draws
        stream = int(seed) * len(FAMILIES) + k
        per_family.append(
            [
                make_clip(
                    i, stream, frames=frames, height=height, width=width, families={family: 1.0}, split=family_split
                )
                for i in range(n_per_family)
            ]
        )
    out = []
    for i in range(n_per_family):
        for clips in per_family:
            video, caption, meta = clips[i]
            out.append({"caption": caption, "family": meta["family"], "meta": meta, "video": video})
    return out


def conformance_captions(n: int | None = None, seed: int = 0) -> list[str]:
    """The captions of ``conformance_prompts``: the first ``n`` (default: ``DEFAULT_PER_FAMILY`` per family), so
    balanced over families to within one."""
    if not n:
        return [p["caption"] for p in conformance_prompts(DEFAULT_PER_FAMILY, seed)]
    per_family = -(-int(n) // len(FAMILIES))  # ceil
    return [p["caption"] for p in conformance_prompts(per_family, seed)][:n]


# ------------------------------------------------------------------------------------------------------------
# Low-level measures


def _check_video(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 2:
        raise ValueError(f"video must be uint8 [T >= 2, H, W, 3], got {video.dtype} {video.shape}")
    return video


def flow_magnitude(video: np.ndarray) -> tuple[float, np.ndarray]:
    """Farneback flow over consecutive grey frames: (mean magnitude in px/frame over all pixels and frame pairs,
    mean (dx, dy) over the same). The single flow setting of this module (``FLOW_*`` constants)."""
    video = _check_video(video)
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in video]
    flows = np.stack(
        [
            cv2.calcOpticalFlowFarneback(
                a, b, None, FLOW_PYR_SCALE, FLOW_LEVELS, FLOW_WINSIZE, FLOW_ITERATIONS, FLOW_POLY_N, FLOW_POLY_SIGMA, 0
            )
            for a, b in itertools.pairwise(grey)
        ]
    )
    return float(np.linalg.norm(flows, axis=-1).mean()), flows.reshape(-1, 2).mean(axis=0)


def changed_share(video: np.ndarray) -> float:
    """Share of pixels x frames whose largest channel differs from the clip's median frame by more than
    ``STATIC_CHANGE_LEVEL``: 0 for a still clip, whatever sub-visible flicker a decoder adds."""
    v = _check_video(video).astype(np.int16)
    deviation = np.abs(v - np.median(v, axis=0).astype(np.int16)).max(axis=-1)
    return float((deviation > STATIC_CHANGE_LEVEL).mean())


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of float RGB ``[..., 3]`` (0-255), 0 for near-black pixels (``DARK_VALUE``)."""
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(mx >= DARK_VALUE, (mx - mn) / np.maximum(mx, 1e-6), 0.0)


def top_saturation(video: np.ndarray) -> float:
    """Saturation of the most saturated ``TOP_SATURATION_SHARE`` of the video's pixels."""
    s = _saturation(np.asarray(video, dtype=np.float32)).ravel()
    return float(np.quantile(s, 1 - TOP_SATURATION_SHARE))


def colour_name(rgb) -> str | None:
    """The ``COLOURS`` entry nearest in hue to an RGB colour (0-255), or ``None`` for a grey or dark colour.

    Hue, not RGB distance: the hue survives the clips' +-12 jitter, blending with the dark background and a model
    rendering a colour darker or lighter."""
    r, g, b = (float(c) / 255 for c in rgb)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    if s < MIN_OBJECT_SATURATION or v * 255 < DARK_VALUE:
        return None
    hue = h * 360

    def hue_dist(name):
        d = abs(hue - _COLOUR_HUES[name]) % 360
        return min(d, 360 - d)

    return min(_COLOUR_HUES, key=hue_dist)


def _background(frame: np.ndarray) -> np.ndarray:
    """Per-pixel background estimate of one float frame ``[H, W, 3]``: the median colour of the border pixels, except
    full-width uniform rows (a floor strip), which are their own background."""
    border = np.concatenate([frame[0], frame[-1], frame[1:-1, 0], frame[1:-1, -1]])
    base = np.median(border, axis=0)
    bg = np.broadcast_to(base, frame.shape).copy()
    row_med = np.median(frame, axis=1)  # [H, 3]
    uniform = (np.linalg.norm(frame - row_med[:, None], axis=-1) < STRIPE_TOLERANCE).mean(axis=1)
    stripe = (uniform >= STRIPE_MIN_SHARE) & (np.linalg.norm(row_med - base, axis=-1) > STRIPE_MIN_OFFSET)
    bg[stripe] = row_med[stripe][:, None]
    return bg


def _pixel_colours(frame: np.ndarray) -> np.ndarray:
    """Per-pixel index into ``COLOURS`` (nearest hue) of a float RGB frame, -1 where the pixel is grey or dark."""
    mx, mn = frame.max(axis=-1), frame.min(axis=-1)
    chroma = np.maximum(mx - mn, 1e-6)
    r, g, b = frame[..., 0], frame[..., 1], frame[..., 2]
    hue = np.where(mx == r, (g - b) / chroma % 6, np.where(mx == g, (b - r) / chroma + 2, (r - g) / chroma + 4))
    hue = hue * 60.0
    hues = np.array(list(_COLOUR_HUES.values()), dtype=np.float32)
    d = np.abs(hue[..., None] - hues) % 360
    idx = np.minimum(d, 360 - d).argmin(axis=-1)
    return np.where(_saturation(frame) >= MIN_OBJECT_SATURATION, idx, -1)


def _segment(frame: np.ndarray, by_colour: bool = False) -> list[dict[str, Any]]:
    """The salient blobs of one uint8 frame, most salient (largest sum of contrast) first.

    Blobs are connected regions far from the background; with ``by_colour`` each region is first split by the
    pixels' nearest ``COLOURS`` hue (two objects of different colours that touch stay two blobs). Each blob:
    ``alpha`` (estimated coverage ``[H, W]`` in [0, 1], zero outside the blob and its 1-px rim), soft ``area``,
    centroid ``cx``/``cy``, ``mass`` (sum of contrast), ``rgb`` (mean colour of its well-covered pixels) and
    ``colour`` (``colour_name`` of ``rgb``; with ``by_colour`` the hue it was split by).
    """
    f = frame.astype(np.float32)
    dist = np.linalg.norm(f - _background(f), axis=-1)
    border = np.concatenate([dist[0], dist[-1], dist[1:-1, 0], dist[1:-1, -1]])
    noise = float(np.percentile(border, BG_NOISE_PERCENTILE))
    fg = dist > noise + FG_MIN_CONTRAST
    if by_colour:
        pixel_colours = _pixel_colours(f)
        groups = [(fg & (pixel_colours == k), name) for k, name in enumerate(COLOURS)]
    else:
        groups = [(fg, None)]
    h, w = dist.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    blobs = []
    for mask, name in groups:
        if not mask.any():
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        for k in range(1, n):
            if stats[k, cv2.CC_STAT_AREA] < MIN_BLOB_AREA:
                continue
            comp = labels == k
            core = float(np.percentile(dist[comp], 90))  # the object's own contrast, robust to odd pixels
            # the rim holds the antialiased edge pixels below the threshold; it never takes another blob's pixels
            rim = cv2.dilate(comp.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & (~fg | comp)
            alpha = np.where(rim, np.clip((dist - noise) / max(core - noise, 1e-6), 0.0, 1.0), 0.0)
            alpha = alpha.astype(np.float32)
            area = float(alpha.sum())
            well = comp & (alpha >= CORE_ALPHA)
            rgb = f[well].mean(axis=0) if well.any() else f[comp].mean(axis=0)
            blobs.append(
                {
                    "alpha": alpha,
                    "area": area,
                    "cx": float((alpha * xs).sum() / area),
                    "cy": float((alpha * ys).sum() / area),
                    "mass": float(dist[comp].sum()),
                    "rgb": rgb,
                    "colour": name if by_colour else colour_name(rgb),
                }
            )
    blobs.sort(key=lambda b: -b["mass"])
    return blobs


def _shape_features(alpha: np.ndarray) -> tuple[float, float] | None:
    """(fill ratio in the minimum-area rectangle, elongation of that rectangle) of a coverage map, or ``None``."""
    ys, xs = np.nonzero(alpha > 0)
    if len(ys) == 0:
        return None
    crop = alpha[max(ys.min() - 1, 0) : ys.max() + 2, max(xs.min() - 1, 0) : xs.max() + 2]
    crop = np.pad(crop, 1)  # an object at the border still gets a closed outline
    up = cv2.resize(crop, None, fx=SHAPE_UPSAMPLE, fy=SHAPE_UPSAMPLE, interpolation=cv2.INTER_LINEAR)
    contours, _ = cv2.findContours((up >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)
    (_, _), (rw, rh), _ = cv2.minAreaRect(c)
    if min(rw, rh) <= 0:
        return None
    return float(cv2.contourArea(c) / (rw * rh)), float(max(rw, rh) / min(rw, rh))


def _classify_shape(blobs: Sequence[dict[str, Any]]) -> tuple[str | None, float | None, float | None]:
    """Shape class of one object tracked over frames: median features of its larger views -> (class, fill,
    elongation). Circle vs square vs triangle by fill ratio, bar by elongation."""
    if not blobs:
        return None, None, None
    biggest = max(b["area"] for b in blobs)
    feats = [_shape_features(b["alpha"]) for b in blobs if b["area"] >= SHAPE_AREA_SHARE * biggest]
    feats = [f for f in feats if f is not None]
    if not feats:
        return None, None, None
    fill, elong = (float(np.median(v)) for v in zip(*feats))
    if elong >= BAR_MIN_ELONGATION:
        shape = "bar"
    elif fill >= SQUARE_MIN_FILL:
        shape = "square"
    elif fill >= CIRCLE_MIN_FILL:
        shape = "circle"
    else:
        shape = "triangle"
    return shape, fill, elong


def _fit_slope(t: np.ndarray, v: np.ndarray) -> float:
    return float(np.polyfit(t, v, 1)[0])


def _nearest_direction(vx: float, vy: float) -> str:
    return max(DIRECTIONS, key=lambda d: DIRECTIONS[d][0] * vx + DIRECTIONS[d][1] * vy)


def _track_motion(track: Sequence[tuple[int, dict]], scale: float) -> dict[str, Any]:
    """Velocity of a centroid track (least-squares line per axis) -> vx, vy, speed, direction name (None if slower
    than ``MIN_SPEED``)."""
    t = np.array([i for i, _ in track], dtype=np.float64)
    vx = _fit_slope(t, np.array([b["cx"] for _, b in track]))
    vy = _fit_slope(t, np.array([b["cy"] for _, b in track]))
    speed = math.hypot(vx, vy)
    direction = _nearest_direction(vx, vy) if speed >= MIN_SPEED * scale else None
    return {"velocity": [vx, vy], "speed": speed, "direction": direction}


def _rotation(track: Sequence[tuple[int, dict]]) -> float | None:
    """Angular speed in deg/frame (positive = clockwise on screen) of a tracked object, from the phase of its
    n-fold angular moment ``sum(alpha * z**n) / sum(alpha * |z|**n)`` about the centroid (n = 2 is the principal
    axis; squares and triangles have none, their 4- and 3-fold moments turn with them). The order with the
    largest mean magnitude is used; its phase, unwrapped, divided by n, gives the angle."""
    if len(track) < 3:
        return None
    t = np.array([i for i, _ in track], dtype=np.float64)
    moments = {n: [] for n in ROTATION_ORDERS}
    for _, b in track:
        alpha = b["alpha"]
        ys, xs = np.nonzero(alpha)
        z = (xs - b["cx"]) + 1j * (ys - b["cy"])
        a = alpha[ys, xs]
        for n in ROTATION_ORDERS:
            moments[n].append((a * z**n).sum() / max((a * np.abs(z) ** n).sum(), 1e-9))
    n = max(ROTATION_ORDERS, key=lambda k: np.mean(np.abs(moments[k])))
    angle = np.unwrap(np.angle(np.array(moments[n]))) / n
    return math.degrees(_fit_slope(t, angle))


def _bounces(ys: np.ndarray, scale: float) -> bool:
    """A fall of >= BOUNCE_MIN_DROP px into a lowest point followed by a rise of >= BOUNCE_MIN_RISE px (y down)."""
    for j in range(1, len(ys) - 1):
        if ys[j] - ys[:j].min() >= BOUNCE_MIN_DROP * scale and ys[j] - ys[j + 1 :].min() >= BOUNCE_MIN_RISE * scale:
            return True
    return False


# ------------------------------------------------------------------------------------------------------------
# Per video


def _as_expected(expected: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(expected, str):
        return parse_caption(expected)
    if "family" not in expected or "objects" not in expected:
        raise ValueError("expected must be a caption or a parse_caption / expected_from_meta dict")
    return dict(expected)


def measure_video(video: np.ndarray, expected: str | Mapping[str, Any]) -> dict[str, Any]:
    """Measure one uint8 ``[T, H, W, 3]`` video against its caption (a string or a ``parse_caption`` /
    ``expected_from_meta`` dict).

    Returns one row: ``family``, ``caption``; ``colour_ok``, ``colour`` (measured name), ``mean_rgb``,
    ``top2pct_saturation``; ``shape_ok``, ``shape``, ``fill``, ``elongation``; ``direction_ok``, ``direction``,
    ``velocity``, ``speed``, ``speed_ratio``; ``rotation_ok``, ``angular_speed``; ``scale_ok``, ``area_ratio``;
    ``bounce_ok``; ``static_ok``, ``changed_share`` (static); ``n_objects``, ``one_object_ok`` (a single-object
    caption shows one object, not a copy or a fragment beside it), ``two_objects_ok``; ``flow_mag``,
    ``flow_mean``; ``found_share`` (frames in which the object was found) and ``motion_ok`` (the family's own motion
    check: direction, rotation sense, scale direction, bounce or stillness). A check that does not apply to the
    family is ``None``.
    """
    video = _check_video(video)
    exp = _as_expected(expected)
    fam = exp["family"]
    t_len, h, w, _ = video.shape
    scale = min(h, w) / REFERENCE_SIDE
    flow_mag, flow_mean = flow_magnitude(video)
    row: dict[str, Any] = {
        "family": fam,
        "caption": exp["caption"],
        "colour_ok": None,
        "colour": None,
        "mean_rgb": None,
        "top2pct_saturation": top_saturation(video),
        "shape_ok": None,
        "shape": None,
        "fill": None,
        "elongation": None,
        "direction_ok": None,
        "direction": None,
        "velocity": None,
        "speed": None,
        "speed_ratio": None,
        "rotation_ok": None,
        "angular_speed": None,
        "scale_ok": None,
        "area_ratio": None,
        "bounce_ok": None,
        "static_ok": None,
        "changed_share": None,
        "n_objects": None,
        "one_object_ok": None,
        "two_objects_ok": None,
        "flow_mag": flow_mag,
        "flow_mean": [float(v) for v in flow_mean],
        "found_share": None,
        "motion_ok": None,
    }
    if fam == "pan":
        # no object: the whole wall moves, opposite to the camera
        vx, vy = (float(v) for v in flow_mean)
        speed = math.hypot(vx, vy)
        direction = _nearest_direction(vx, vy) if speed >= MIN_SPEED * scale else None
        row.update(
            velocity=[vx, vy],
            speed=speed,
            direction=direction,
            direction_ok=direction == exp["content_direction"],
            speed_ratio=speed / exp.get("speed", NOMINAL_SPEED * scale),
        )
        row["motion_ok"] = row["direction_ok"]
        return row

    min_found = max(3, math.ceil(MIN_TRACK_SHARE * t_len))
    if fam == "two_objects":
        _measure_two_objects(row, exp, [_segment(f, by_colour=True) for f in video], min_found, scale)
        return row
    frames = [_segment(f) for f in video]
    row["n_objects"] = int(np.median([sum(b["area"] >= MIN_OBJECT_AREA for b in blobs) for blobs in frames]))
    row["one_object_ok"] = row["n_objects"] == 1

    # one object: the most salient blob of each frame, whatever its colour (so motion is measured even when the
    # colour is wrong)
    track = [(i, b[0]) for i, b in enumerate(frames) if b]
    row["found_share"] = len(track) / t_len
    found = len(track) >= min_found
    if found:
        weights = np.array([b["area"] for _, b in track])
        rgb = np.average(np.stack([b["rgb"] for _, b in track]), axis=0, weights=weights)
        row["mean_rgb"] = [float(c) for c in rgb]
        row["colour"] = colour_name(rgb)
        row["shape"], row["fill"], row["elongation"] = _classify_shape([b for _, b in track])
        row.update(_track_motion(track, scale))
    row["colour_ok"] = found and row["colour"] == exp["colour"]
    row["shape_ok"] = found and row["shape"] == _SHAPE_CLASS[exp["shape"]]

    if fam == "translate":
        row["direction_ok"] = found and row["direction"] == exp["direction"]
        if found:
            row["speed_ratio"] = row["speed"] / exp.get("speed", NOMINAL_SPEED * scale)
        row["motion_ok"] = row["direction_ok"]
    elif fam == "rotate":
        omega = _rotation(track) if found else None
        row["angular_speed"] = omega
        sign = 1 if exp["direction"] == "clockwise" else -1
        row["rotation_ok"] = omega is not None and sign * omega >= MIN_ANGULAR_SPEED
        if omega is not None:
            row["speed_ratio"] = abs(omega) / exp.get("angular_speed", NOMINAL_ANGULAR_SPEED)
        row["motion_ok"] = row["rotation_ok"]
    elif fam == "scale":
        if found:
            t = np.array([i for i, _ in track], dtype=np.float64)
            slope = _fit_slope(t, np.log([b["area"] for _, b in track]))  # log area per frame
            ratio = math.exp(slope * (t_len - 1))
            row["area_ratio"] = ratio
            row["speed_ratio"] = abs(slope) / (2 * math.log(exp.get("size_ratio", NOMINAL_SIZE_RATIO)) / (t_len - 1))
            grows = exp["direction"] == "grows"
            row["scale_ok"] = ratio >= MIN_SCALE_RATIO if grows else ratio <= 1 / MIN_SCALE_RATIO
        else:
            row["scale_ok"] = False
        row["motion_ok"] = row["scale_ok"]
    elif fam == "bounce":
        row["bounce_ok"] = found and _bounces(np.array([b["cy"] for _, b in track]), scale)
        row["motion_ok"] = row["bounce_ok"]
    elif fam == "static":
        drift = row["speed"] if found else 0.0
        row["changed_share"] = changed_share(video)
        row["static_ok"] = drift < STATIC_MAX_DRIFT * scale and row["changed_share"] <= STATIC_MAX_CHANGED
        row["motion_ok"] = row["static_ok"]
    return row


def _measure_two_objects(row: dict, exp: dict, frames: list[list[dict]], min_found: int, scale: float) -> None:
    """Two objects, told apart by colour (``frames`` segmented ``by_colour``): each caption colour's most salient
    blob in a frame is that object there."""
    colours_ok, shapes_ok, dirs_ok, speeds, ratios, found, present = [], [], [], [], [], [], []
    for obj in exp["objects"]:
        track = [
            (i, next(b for b in blobs if b["colour"] == obj["colour"]))
            for i, blobs in enumerate(frames)
            if any(b["colour"] == obj["colour"] for b in blobs)
        ]
        present.append({i for i, _ in track})
        ok = len(track) >= min_found
        found.append(len(track) / len(frames))
        colours_ok.append(ok)
        if not ok:
            shapes_ok.append(False)
            dirs_ok.append(False)
            continue
        shape, _, _ = _classify_shape([b for _, b in track])
        shapes_ok.append(shape == _SHAPE_CLASS[obj["shape"]])
        motion = _track_motion(track, scale)
        dirs_ok.append(motion["direction"] == obj["direction"])
        speeds.append(motion["speed"])
        ratios.append(motion["speed"] / obj.get("speed", NOMINAL_SPEED * scale))
    # objects = distinct colours with a blob of a real object's size (colour fringes where objects touch are small)
    n_objects = int(np.median([len({b["colour"] for b in blobs if b["area"] >= MIN_OBJECT_AREA}) for blobs in frames]))
    together = len(present[0] & present[1]) >= min_found
    row.update(
        colour_ok=all(colours_ok),
        shape_ok=all(shapes_ok),
        direction_ok=all(dirs_ok),
        n_objects=n_objects,
        speed=float(np.mean(speeds)) if speeds else None,
        speed_ratio=float(np.mean(ratios)) if ratios else None,
        found_share=min(found),
        two_objects_ok=together and n_objects == 2,
    )
    row["motion_ok"] = row["direction_ok"]


# ------------------------------------------------------------------------------------------------------------
# Aggregates

# Summary columns: (key, row field, header). Accuracies are means of the booleans where the check applies.
SUMMARY_COLUMNS = [
    ("colour", "colour_ok", "colour"),
    ("shape", "shape_ok", "shape"),
    ("motion", "motion_ok", "motion"),
    ("direction", "direction_ok", "direction"),
    ("rotation", "rotation_ok", "rot.sense"),
    ("scale", "scale_ok", "scale dir"),
    ("bounce", "bounce_ok", "bounce"),
    ("static", "static_ok", "static"),
    ("one_object", "one_object_ok", "1 object"),
    ("two_objects", "two_objects_ok", "2 objects"),
    ("saturation", "top2pct_saturation", "top2% sat"),
    ("flow_mag", "flow_mag", "flow px/f"),
    ("flow_ratio", None, "flow/real"),
    ("speed_ratio", "speed_ratio", "speed ratio"),
]


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(
    rows: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Per-family and overall means of ``measure_video`` rows: ``{family or "overall": {column: value}}``.

    Columns (``SUMMARY_COLUMNS``): colour/shape/motion/direction/rotation/scale/bounce/static/one_object/two_objects
    accuracy (share of videos passing the check, over those it applies to), mean top-2% saturation, mean flow
    magnitude, ``flow_ratio`` (the mean flow magnitude over that of ``reference`` rows of the same family, e.g. the
    real clips; ``None`` without a reference or when the reference hardly moves, as static scenes) and mean
    ``speed_ratio``.
    ``n`` counts the videos. Families in ``FAMILIES`` order.
    """
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r["family"], []).append(r)
    ref_groups: dict[str, list] = {}
    for r in reference or ():
        ref_groups.setdefault(r["family"], []).append(r)
    order = [f for f in FAMILIES if f in groups] + sorted(set(groups) - set(FAMILIES))
    out = {}
    for name, group, ref in [(f, groups[f], ref_groups.get(f)) for f in order] + [
        ("overall", list(rows), list(reference or ()))
    ]:
        entry: dict[str, Any] = {"n": len(group)}
        for key, field, _ in SUMMARY_COLUMNS:
            if field is not None:
                entry[key] = _mean(r[field] for r in group)
        ref_flow = _mean(r["flow_mag"] for r in ref) if ref else None
        still = ref_flow is None or ref_flow < FLOW_RATIO_MIN_REFERENCE
        entry["flow_ratio"] = None if still or entry["flow_mag"] is None else entry["flow_mag"] / ref_flow
        out[name] = entry
    return out


def format_table(
    summary: Mapping[str, Mapping[str, Any]],
    reference: Mapping[str, Mapping[str, Any]] | None = None,
    columns: Sequence[str] | None = None,
) -> str:
    """A plain-text table of ``summarize`` output; with ``reference`` (another summary, e.g. the real clips) each
    cell reads ``value (reference value)``. A dash marks a check that does not apply."""
    cols = [c for c in SUMMARY_COLUMNS if columns is None or c[0] in columns]

    def cell(entry, key):
        v = entry.get(key) if entry else None
        return "-" if v is None else f"{v:.2f}"

    width = 11 if reference is not None else 9
    header = f"{'family':<12} {'n':>3} " + " ".join(f"{h:>{width}}" for _, _, h in cols)
    lines = [header, "-" * len(header)]
    for name, entry in summary.items():
        cells = []
        for key, _, _ in cols:
            text = cell(entry, key)
            if reference is not None:
                text = f"{text} ({cell(reference.get(name), key)})"
            cells.append(f"{text:>{width}}")
        lines.append(f"{name:<12} {entry['n']:>3} " + " ".join(cells))
    return "\n".join(lines)


_SCORE_FIELDS = [
    "colour_ok",
    "shape_ok",
    "motion_ok",
    "direction_ok",
    "rotation_ok",
    "scale_ok",
    "bounce_ok",
    "static_ok",
    "one_object_ok",
    "two_objects_ok",
    "top2pct_saturation",
    "flow_mag",
    "speed",
    "speed_ratio",
    "n_objects",
]


def conformance_scores(videos: Sequence[np.ndarray], captions: Sequence[str]) -> dict[str, list[float | None]]:
    """Per-video conformance metrics for a benchmark runner: ``{metric: [value per video]}`` over ``_SCORE_FIELDS``
    (checks as 1.0 / 0.0, ``None`` where a check does not apply to the caption's family), plus ``family``."""
    videos, captions = list(videos), list(captions)
    if len(videos) != len(captions):
        raise ValueError(f"{len(videos)} videos but {len(captions)} captions")
    out: dict[str, list] = {k: [] for k in _SCORE_FIELDS}
    out["family"] = []
    for video, caption in zip(videos, captions):
        row = measure_video(video, parse_caption(caption))
        for k in _SCORE_FIELDS:
            v = row[k]
            out[k].append(None if v is None else float(v))
        out["family"].append(row["family"])
    return out


def real_reference(n_per_family: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """``measure_video`` rows of real held-out clips of every family: the figures a model's videos are read against."""
    return [
        measure_video(p["video"], expected_from_meta(p["caption"], p["meta"]))
        for p in conformance_prompts(n_per_family, seed)
    ]


RECORD_PREFIX = "conformance/"


def conformance_records(
    model: str, prompt: str, seed: int, video: np.ndarray, extra: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Benchmark records (``evaluator.reports`` shape) of one video's conformance fields that apply to its caption:
    metric ``conformance/<field>``, with the caption's ``family``."""
    scores = conformance_scores([video], [prompt])
    family = scores.pop("family")[0]
    return [
        {
            "model": model,
            "prompt": prompt,
            "seed": int(seed),
            "metric": RECORD_PREFIX + k,
            "value": v[0],
            "backend": "conformance",
            "model_hash": None,
            "evaluator_version": EVALUATOR_VERSION,
            "family": family,
            **(extra or {}),
        }
        for k, v in scores.items()
        if v[0] is not None
    ]


def conformance_report(
    records: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: summarize(...)}`` from ``conformance_records`` (one row per model, prompt and seed); with
    ``reference`` rows (``measure_video`` of real clips) the flow ratio is against them."""
    rows: dict[str, dict[tuple, dict]] = {}
    for r in records:
        if not str(r["metric"]).startswith(RECORD_PREFIX):
            continue
        row = rows.setdefault(r["model"], {}).setdefault((r["prompt"], int(r["seed"])), {"family": r["family"]})
        row[r["metric"][len(RECORD_PREFIX) :]] = r["value"]
    out = {}
    for model, by_video in rows.items():
        full = [{**{f: None for f in _SCORE_FIELDS}, **row} for row in by_video.values()]
        out[model] = summarize(full, reference)
    return out


def compare_reconstruction(original: np.ndarray, recon: np.ndarray) -> dict[str, Any] | None:
    """How well a reconstruction (VAE encode -> decode) keeps the original clip's main object.

    The object is segmented in the original only (its most salient blob per frame, dilated by one pixel so that a
    blurred edge still counts); both clips are then read through that same region: ``colour_error`` is the largest
    per-channel difference of the object's mean colour over the clip (0-255), ``worst_frame_colour_error`` the same
    in the frame where it is largest (a colour that flips for a few frames barely moves the clip's mean),
    ``centre_error`` the mean per-frame distance of the contrast-weighted centroids (px), ``velocity`` /
    ``velocity_rec`` the least-squares centroid velocities (px/frame). ``None`` when the original shows no object.
    """
    orig, rec = _check_video(original).astype(np.float32), _check_video(recon).astype(np.float32)
    if orig.shape != rec.shape:
        raise ValueError(f"original {orig.shape} and reconstruction {rec.shape} differ in shape")
    h, w = orig.shape[1:3]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    colour_o, colour_r, cen_o, cen_r, frames = [], [], [], [], []
    for t, (fo, fr) in enumerate(zip(orig, rec)):
        blobs = _segment(fo.astype(np.uint8))
        if not blobs:
            continue
        core = blobs[0]["alpha"] >= CORE_ALPHA
        region = cv2.dilate((blobs[0]["alpha"] > 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if not core.any():
            continue
        bg = _background(fo)
        colour_o.append(fo[core].mean(axis=0))
        colour_r.append(fr[core].mean(axis=0))
        for f, out in ((fo, cen_o), (fr, cen_r)):
            wgt = np.linalg.norm(f - bg, axis=-1) * region
            s = max(float(wgt.sum()), 1e-6)
            out.append(((wgt * xs).sum() / s, (wgt * ys).sum() / s))
        frames.append(t)
    if len(frames) < max(2, MIN_TRACK_SHARE * len(orig)):
        return None
    t = np.array(frames, dtype=np.float64)
    co, cr = np.array(cen_o), np.array(cen_r)
    return {
        "colour_error": float(np.abs(np.mean(colour_o, axis=0) - np.mean(colour_r, axis=0)).max()),
        "worst_frame_colour_error": float(np.abs(np.array(colour_o) - np.array(colour_r)).max()),
        "centre_error": float(np.linalg.norm(co - cr, axis=1).mean()),
        "velocity": [_fit_slope(t, co[:, 0]), _fit_slope(t, co[:, 1])],
        "velocity_rec": [_fit_slope(t, cr[:, 0]), _fit_slope(t, cr[:, 1])],
    }
