"""Synthetic inspection images: plausible machined or ceramic parts with drawn, masked defects.

The project makes its own demo and test images so that the station, the trainer and the tests can run
without any real plant data. Everything here depends on numpy and OpenCV only and is deterministic
given the random generator (or the seed) it is handed.

A frame shows one part (a rounded plate with brushed or ceramic surface, or a turned disc, with holes)
on a darker fixture, under a lighting gradient and vignetting, with sensor noise and a small pose
jitter. Defect-free parts still carry benign variation - surface grain, faint milling marks, dust
specks, engraved marking, bores - so that "any edge" is not a defect. Requested defects are drawn on
the part surface only, each with its pixel mask (the drawn alpha, thresholded); mask values are indices
into :data:`CLASSES` (0 = good/background).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

CLASSES: tuple[str, ...] = ("good", "scratch", "crack", "pit", "stain")
DEFECT_CLASSES: tuple[str, ...] = CLASSES[1:]
DEMO_SEED = 20261122
DEMO_SIZE = (256, 256)

# The demo replays as: isolated fails among good parts, a run of five fails (parts 26-30, which trips a
# "3 consecutive fails" hold), then mostly good parts again. 1-based part number -> defects.
DEMO_DEFECTS: dict[int, tuple[str, ...]] = {
    6: ("scratch",),
    12: ("pit",),
    17: ("stain",),
    22: ("crack",),
    26: ("crack",),
    27: ("scratch",),
    28: ("pit",),
    29: ("scratch", "pit"),
    30: ("stain",),
    38: ("pit",),
    45: ("scratch",),
    53: ("crack", "stain"),
}
DEMO_COUNT = 60

_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 9]
_MASK_ALPHA = 0.5
_MIN_DEFECT_PIXELS = 8

F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]


@dataclass(frozen=True)
class SyntheticPart:
    """One synthetic frame with its ground truth.

    Attributes:
        image: HxW uint8 grayscale frame.
        mask: HxW uint8 indexed mask, value = index into :data:`CLASSES` (0 = good/background).
        defects: the defect class names drawn, in drawing order (empty for a good part).
    """

    image: U8
    mask: U8
    defects: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 2:
            raise ValueError(f"expected image HxW uint8, got {self.image.dtype} {self.image.shape}")
        if self.mask.dtype != np.uint8 or self.mask.shape != self.image.shape:
            raise ValueError(
                f"expected mask uint8 of shape {self.image.shape}, got {self.mask.dtype} {self.mask.shape}"
            )
        unknown = [d for d in self.defects if d not in DEFECT_CLASSES]
        if unknown:
            raise ValueError(f"expected defects among {DEFECT_CLASSES}, got {unknown}")


@dataclass(frozen=True)
class _Geometry:
    """A part placed in the frame: pixel-to-part coordinates, signed distance and surface."""

    u: F32  # part-frame x of each pixel (part units, before scale)
    v: F32
    dist: F32  # signed distance to the part boundary in pixels (negative inside the material)
    alpha: F32  # anti-aliased coverage of the material
    zone: NDArray[np.bool_]  # where defects may be drawn: material, away from edges and holes
    outer_alpha: F32  # coverage of the outline without holes (for the shadow)
    matrix: NDArray[np.float64]  # 2x3 affine, part canvas -> frame


@dataclass(frozen=True)
class _Drawn:
    """One drawn defect: visual alpha, the pixels its mask claims, signed contrast, extra shading."""

    alpha: F32
    footprint: NDArray[np.bool_]
    contrast: float
    extra: F32 | None = None


def _validate_defects(defects: Sequence[str]) -> tuple[str, ...]:
    if isinstance(defects, str):
        raise TypeError(f"expected a sequence of class names, got the string {defects!r}")
    out = tuple(defects)
    unknown = [d for d in out if d not in DEFECT_CLASSES]
    if unknown:
        raise ValueError(f"expected defects among {DEFECT_CLASSES}, got {unknown}")
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> F32:
    """Low-frequency noise in [-1, 1]-ish: a small random grid upsampled with cubic interpolation."""
    h, w = shape
    grid = rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
    up = np.asarray(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), dtype=np.float32)
    return up


def _place_part(rng: np.random.Generator, size: tuple[int, int], kind: str) -> _Geometry:
    h, w = size
    s_min = float(min(h, w))
    angle = float(rng.uniform(-10.0, 10.0))
    scale = float(rng.uniform(0.9, 1.05))
    cx = w / 2.0 + float(rng.uniform(-0.05, 0.05)) * s_min
    cy = h / 2.0 + float(rng.uniform(-0.05, 0.05)) * s_min

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    th = math.radians(angle)
    dx = (xs - cx) / scale
    dy = (ys - cy) / scale
    u = (math.cos(th) * dx + math.sin(th) * dy).astype(np.float32)
    v = (-math.sin(th) * dx + math.cos(th) * dy).astype(np.float32)

    holes: list[tuple[float, float, float]] = []
    if kind == "plate":
        bx = float(rng.uniform(0.33, 0.38)) * s_min
        by = float(rng.uniform(0.25, 0.34)) * s_min
        r = float(rng.uniform(0.05, 0.11)) * s_min
        qx = np.abs(u) - (bx - r)
        qy = np.abs(v) - (by - r)
        outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
        d_outer = outside + np.minimum(np.maximum(qx, qy), 0.0) - r
        n_holes = int(rng.choice([0, 2, 4], p=[0.3, 0.3, 0.4]))
        hr = float(rng.uniform(0.025, 0.04)) * s_min
        inset = r * 0.3 + hr + 0.04 * s_min
        corners = [(-1, -1), (1, 1), (1, -1), (-1, 1)][:n_holes]
        holes = [(sx * (bx - inset), sy * (by - inset), hr) for sx, sy in corners]
    else:
        radius = float(rng.uniform(0.35, 0.41)) * s_min
        d_outer = np.sqrt(u * u + v * v) - radius
        if rng.random() < 0.75:
            holes = [(0.0, 0.0, float(rng.uniform(0.06, 0.12)) * s_min)]

    d_part = d_outer
    for hx, hy, hr_ in holes:
        d_part = np.maximum(d_part, hr_ - np.sqrt((u - hx) ** 2 + (v - hy) ** 2))
    dist = (d_part * scale).astype(np.float32)
    alpha = np.clip(0.5 - dist, 0.0, 1.0).astype(np.float32)
    outer_alpha = np.clip(0.5 - d_outer * scale, 0.0, 1.0).astype(np.float32)
    zone = dist < -4.0

    canvas_center = (w / 2.0, h / 2.0)
    matrix = cv2.getRotationMatrix2D(canvas_center, -angle, scale).astype(np.float64)
    matrix[0, 2] += cx - w / 2.0
    matrix[1, 2] += cy - h / 2.0
    return _Geometry(u, v, dist, alpha, zone, outer_alpha, matrix)


def _surface(rng: np.random.Generator, geo: _Geometry, kind: str, finish: str) -> F32:
    """Material brightness with grain, milling marks, chamfer highlight and benign specks."""
    h, w = geo.u.shape
    s_min = float(min(h, w))
    base = float(rng.uniform(165.0, 200.0)) if finish == "ceramic" else float(rng.uniform(125.0, 180.0))
    surf = np.full((h, w), base, np.float32)

    if finish == "brushed":
        # Streaks along the part's u axis: noise that varies fast across v and slowly along u.
        streaks = rng.normal(0.0, 1.0, (6, 2048)).astype(np.float32)
        streaks = np.asarray(cv2.GaussianBlur(streaks, (0, 0), sigmaX=1.2, sigmaY=0.01), dtype=np.float32)
        map_x = ((geo.v + 1.2 * s_min) * 4.0).astype(np.float32)
        map_y = ((geo.u + 0.8 * s_min) / (1.6 * s_min) * 5.0).astype(np.float32)
        grain = cv2.remap(streaks, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        surf += grain * float(rng.uniform(3.0, 7.0))
    elif finish == "turned":
        radius = np.sqrt(geo.u**2 + geo.v**2)
        grid = np.arange(0.0, s_min, 0.25, dtype=np.float32)
        profile = cv2.GaussianBlur(rng.normal(0.0, 1.0, (1, grid.size)).astype(np.float32), (0, 0), 1.5)
        rings = np.interp(radius, grid, profile[0]).astype(np.float32)
        period = float(rng.uniform(2.5, 5.0))
        rings += 0.6 * np.sin(2.0 * np.pi * radius / period).astype(np.float32)
        surf += rings * float(rng.uniform(4.0, 8.0))
        # Anisotropic sheen of a turned face: brighter along one diameter.
        phi = np.arctan2(geo.v, geo.u)
        sheen_dir = float(rng.uniform(0.0, np.pi))
        surf += (np.cos(2.0 * (phi - sheen_dir)) * float(rng.uniform(6.0, 14.0))).astype(np.float32)
    else:  # ceramic
        fine = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), 0.8)
        surf += fine * float(rng.uniform(5.0, 9.0))
        speck = rng.random((h, w)).astype(np.float32)
        surf -= (speck > 0.994).astype(np.float32) * float(rng.uniform(8.0, 16.0))
        surf += (speck < 0.004).astype(np.float32) * float(rng.uniform(6.0, 12.0))

    # Low-frequency mottling from finishing and uneven reflectance.
    surf += _smooth_noise(rng, (h, w), 5) * float(rng.uniform(2.0, 6.0))

    if kind == "plate" and finish != "ceramic" and rng.random() < 0.7:
        # Face-milling marks: faint arcs around a centre far outside the part.
        ang = float(rng.uniform(0.0, 2.0 * np.pi))
        far = float(rng.uniform(0.9, 1.6)) * s_min
        cu, cv_ = far * math.cos(ang), far * math.sin(ang)
        arc_r = np.sqrt((geo.u - cu) ** 2 + (geo.v - cv_) ** 2)
        period = float(rng.uniform(5.0, 11.0))
        surf += (np.sin(2.0 * np.pi * arc_r / period) * float(rng.uniform(1.5, 4.0))).astype(np.float32)

    # Chamfer: a bright rim just inside every edge, a darker line at the very edge.
    rim = np.exp(-(((geo.dist + 3.0) / 1.6) ** 2)).astype(np.float32)
    surf += rim * float(rng.uniform(15.0, 35.0))
    surf -= np.exp(-((geo.dist / 0.8) ** 2)).astype(np.float32) * 12.0

    if kind == "plate" and rng.random() < 0.45:
        surf += _engraving(rng, geo, (h, w))
    return surf


def _engraving(rng: np.random.Generator, geo: _Geometry, size: tuple[int, int]) -> F32:
    """A laser-marked part number: legitimate dark text on the part, never a defect."""
    h, w = size
    s_min = min(h, w)
    canvas = np.zeros((h, w), np.uint8)
    text = f"P/N {int(rng.integers(1000, 9999))}-{'ABCDE'[int(rng.integers(0, 5))]}"
    font_scale = 0.28 * s_min / 256.0
    org = (int(w / 2 - 0.08 * s_min), int(h / 2 + 0.2 * s_min))
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 255, 1, cv2.LINE_AA)
    warped = cv2.warpAffine(canvas, geo.matrix, (w, h), flags=cv2.INTER_LINEAR)
    out: F32 = -(warped.astype(np.float32) / 255.0) * float(rng.uniform(18.0, 35.0))
    return out


def _background(rng: np.random.Generator, size: tuple[int, int]) -> F32:
    h, w = size
    level = float(rng.uniform(22.0, 55.0))
    bg = np.full((h, w), level, np.float32)
    bg += _smooth_noise(rng, size, 4) * float(rng.uniform(2.0, 6.0))
    bg += cv2.GaussianBlur(rng.normal(0.0, 1.0, size).astype(np.float32), (0, 0), 1.0) * 3.0
    return bg


def _dust(rng: np.random.Generator, geo: _Geometry, size: tuple[int, int]) -> F32:
    """Tiny specks (1-2 px) below any defect's size: benign, never in the mask."""
    h, w = size
    out = np.zeros((h, w), np.float32)
    ys, xs = np.nonzero(geo.zone)
    if ys.size == 0:
        return out
    for _ in range(int(rng.integers(0, 7))):
        i = int(rng.integers(0, ys.size))
        amp = float(rng.uniform(10.0, 25.0)) * (1.0 if rng.random() < 0.6 else -1.0)
        out[ys[i], xs[i]] += amp
        if rng.random() < 0.4:
            out[ys[i], min(xs[i] + 1, w - 1)] += amp * 0.6
    blurred = np.asarray(cv2.GaussianBlur(out, (0, 0), 0.5), dtype=np.float32)
    return blurred


def _pick_point(rng: np.random.Generator, zone: NDArray[np.bool_]) -> tuple[float, float]:
    ys, xs = np.nonzero(zone)
    i = int(rng.integers(0, ys.size))
    return float(xs[i]) + float(rng.random()), float(ys[i]) + float(rng.random())


def _polyline_alpha(
    size: tuple[int, int], points: F32, weights: F32, thickness: int
) -> tuple[F32, NDArray[np.bool_]]:
    """Draw an anti-aliased polyline with per-segment intensity.

    Returns the visual alpha in [0, 1] and the line's footprint: pixels the line covers by at least
    40% and draws with at least a quarter of full strength. A 1-px anti-aliased line splits its
    coverage over two pixels, so thresholding the weighted alpha alone would leave a dotted mask.
    """
    canvas = np.zeros(size, np.uint8)
    cover = np.zeros(size, np.uint8)
    shift = 4
    pts = np.round(points * (1 << shift)).astype(np.int32)
    for k in range(len(pts) - 1):
        value = int(np.clip(weights[k], 0.0, 1.0) * 255)
        p0 = (int(pts[k, 0]), int(pts[k, 1]))
        p1 = (int(pts[k + 1, 0]), int(pts[k + 1, 1]))
        cv2.line(canvas, p0, p1, value, thickness, cv2.LINE_AA, shift)
        cv2.line(cover, p0, p1, 255, thickness, cv2.LINE_AA, shift)
    alpha = canvas.astype(np.float32) / 255.0
    footprint = (cover > 102) & (alpha > 0.25)
    return alpha, footprint


def _inside(geo: _Geometry, x: float, y: float) -> bool:
    h, w = geo.zone.shape
    return 0 <= int(y) < h and 0 <= int(x) < w and bool(geo.zone[int(y), int(x)])


def _scratch(rng: np.random.Generator, geo: _Geometry, size: tuple[int, int]) -> _Drawn:
    s_min = float(min(size))
    for _ in range(30):
        x0, y0 = _pick_point(rng, geo.zone)
        length = float(rng.uniform(0.18, 0.5)) * s_min
        ang = float(rng.uniform(0.0, 2.0 * np.pi))
        d = np.array([math.cos(ang), math.sin(ang)], np.float32)
        p0 = np.array([x0, y0], np.float32)
        p2 = p0 + d * length
        mid = (p0 + p2) / 2.0
        if _inside(geo, float(p2[0]), float(p2[1])) and _inside(geo, float(mid[0]), float(mid[1])):
            break
    bend = float(rng.uniform(-0.12, 0.12)) * length
    p1 = (p0 + p2) / 2.0 + np.array([-d[1], d[0]], np.float32) * bend
    t = np.linspace(0.0, 1.0, 48, dtype=np.float32)[:, None]
    pts = ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2).astype(np.float32)
    tt = t[:-1, 0] + 0.5 / 47
    fade = np.clip(np.sin(np.pi * tt) * 2.2, 0.0, 1.0)
    weights = (fade * rng.uniform(0.75, 1.0, tt.size)).astype(np.float32)
    thickness = 1 if rng.random() < 0.7 else 2
    alpha, footprint = _polyline_alpha(size, pts, weights, thickness)
    sign = 1.0 if rng.random() < 0.6 else -1.0
    return _Drawn(alpha, footprint, sign * float(rng.uniform(28.0, 65.0)))


def _crack(rng: np.random.Generator, geo: _Geometry, size: tuple[int, int]) -> _Drawn:
    s_min = float(min(size))
    alpha = np.zeros(size, np.float32)
    footprint = np.zeros(size, np.bool_)
    x0, y0 = _pick_point(rng, geo.zone)
    steps0 = int(rng.uniform(0.12, 0.3) * s_min / 1.5)
    branches: list[tuple[float, float, float, int, int]] = [
        (x0, y0, float(rng.uniform(0.0, 2.0 * np.pi)), steps0, 0)
    ]
    while branches:
        x, y, course, steps, depth = branches.pop()
        pts = [(x, y)]
        for _ in range(steps):
            # A crack keeps a general course but zig-zags step by step; the course drifts slowly.
            course += float(rng.normal(0.0, 0.06))
            heading = course + float(rng.normal(0.0, 0.55))
            x += 1.5 * math.cos(heading)
            y += 1.5 * math.sin(heading)
            pts.append((x, y))
            if depth < 2 and rng.random() < 0.03:
                side = 1.0 if rng.random() < 0.5 else -1.0
                turn = side * float(rng.uniform(0.4, 1.0))
                branches.append((x, y, course + turn, int(steps * rng.uniform(0.2, 0.45)), depth + 1))
        arr = np.array(pts, np.float32)
        top = 1.0 if depth == 0 else 0.85
        weights = np.linspace(top, top * 0.6, len(pts) - 1, dtype=np.float32)
        thickness = 2 if depth == 0 and rng.random() < 0.3 else 1
        a, f = _polyline_alpha(size, arr, weights, thickness)
        alpha = np.maximum(alpha, a)
        footprint |= f
    return _Drawn(alpha, footprint, -float(rng.uniform(45.0, 90.0)))


def _pits(rng: np.random.Generator, geo: _Geometry, size: tuple[int, int]) -> _Drawn:
    s_min = float(min(size))
    h, w = size
    canvas = np.zeros(size, np.uint8)
    rim = np.zeros(size, np.uint8)
    cx, cy = _pick_point(rng, geo.zone)
    count = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
    light = float(rng.uniform(0.0, 2.0 * np.pi))
    shift = 4
    for k in range(count):
        px = cx + (float(rng.normal(0.0, 0.05)) * s_min if k else 0.0)
        py = cy + (float(rng.normal(0.0, 0.05)) * s_min if k else 0.0)
        if not (0 <= int(py) < h and 0 <= int(px) < w and geo.zone[int(py), int(px)]):
            continue
        r = float(rng.uniform(1.8, 5.0)) * s_min / 256.0
        axes = (int(r * 16), int(r * float(rng.uniform(0.65, 1.0)) * 16))
        c = (int(px * 16), int(py * 16))
        rot = float(rng.uniform(0.0, 180.0))
        cv2.ellipse(canvas, c, axes, rot, 0.0, 360.0, 255, -1, cv2.LINE_AA, shift)
        rc = (int((px + math.cos(light) * r * 0.9) * 16), int((py + math.sin(light) * r * 0.9) * 16))
        cv2.ellipse(rim, rc, axes, rot, 0.0, 360.0, 255, 1, cv2.LINE_AA, shift)
    alpha = np.asarray(cv2.GaussianBlur(canvas.astype(np.float32) / 255.0, (0, 0), 0.6), dtype=np.float32)
    # The lit far wall of a pit catches light: a faint bright crescent, part of the look, not the mask.
    rim_f = np.clip(rim.astype(np.float32) / 255.0 - alpha, 0.0, 1.0) * float(rng.uniform(10.0, 25.0))
    return _Drawn(alpha, alpha > _MASK_ALPHA, -float(rng.uniform(40.0, 95.0)), rim_f.astype(np.float32))


def _stain(rng: np.random.Generator, geo: _Geometry, size: tuple[int, int]) -> _Drawn:
    s_min = float(min(size))
    h, w = size
    cx, cy = _pick_point(rng, geo.zone)
    radius = float(rng.uniform(0.05, 0.12)) * s_min
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros(size, np.float32)
    for _ in range(int(rng.integers(3, 7))):
        bx = cx + float(rng.normal(0.0, 0.45)) * radius
        by = cy + float(rng.normal(0.0, 0.45)) * radius
        sx = float(rng.uniform(0.3, 0.65)) * radius
        sy = sx * float(rng.uniform(0.5, 1.0))
        field += np.exp(-(((xs - bx) / sx) ** 2 + ((ys - by) / sy) ** 2) / 2.0).astype(np.float32)
    field *= 1.0 + 0.35 * _smooth_noise(rng, size, 12)
    field /= max(float(field.max()), 1e-6)
    alpha = np.clip((field - 0.2) / 0.5, 0.0, 1.0)
    alpha = (alpha * alpha * (3.0 - 2.0 * alpha)).astype(np.float32)
    sign = -1.0 if rng.random() < 0.8 else 1.0
    return _Drawn(alpha, alpha > _MASK_ALPHA, sign * float(rng.uniform(15.0, 28.0)))


_DRAWERS: dict[str, Callable[[np.random.Generator, _Geometry, tuple[int, int]], _Drawn]] = {
    "scratch": _scratch,
    "crack": _crack,
    "pit": _pits,
    "stain": _stain,
}


def make_part(
    rng: np.random.Generator,
    size: tuple[int, int] = (256, 256),
    defects: Sequence[str] = (),
) -> SyntheticPart:
    """Render one synthetic part frame and its indexed defect mask.

    Args:
        rng: the random generator; the result is a pure function of its state.
        size: frame (height, width) in pixels; at least 64 each.
        defects: defect class names to draw (from ``CLASSES[1:]``); repeats draw several of a kind.
            Later defects overwrite earlier ones in the mask where they overlap.

    Returns:
        The frame (HxW uint8), its mask (HxW uint8, value = index into :data:`CLASSES`) and the defects.

    Raises:
        ValueError: a defect name is unknown or the size is too small.
    """
    wanted = _validate_defects(defects)
    h, w = int(size[0]), int(size[1])
    if h < 64 or w < 64:
        raise ValueError(f"expected size of at least (64, 64), got {size}")
    shape = (h, w)

    kind = "plate" if rng.random() < 0.55 else "disc"
    if kind == "plate":
        finish = "brushed" if rng.random() < 0.65 else "ceramic"
    else:
        finish = "turned" if rng.random() < 0.7 else "ceramic"
    geo = _place_part(rng, shape, kind)

    bg = _background(rng, shape)
    shadow = cv2.GaussianBlur(np.roll(geo.outer_alpha, (4, 3), axis=(0, 1)), (0, 0), 4.0)
    bg *= 1.0 - 0.45 * shadow
    surf = _surface(rng, geo, kind, finish) + _dust(rng, geo, shape)
    img = bg * (1.0 - geo.alpha) + surf * geo.alpha

    mask = np.zeros(shape, np.uint8)
    zone_f = geo.zone.astype(np.float32)
    for name in wanted:
        for _attempt in range(50):
            d = _DRAWERS[name](rng, geo, shape)
            footprint = d.footprint & geo.zone
            if int(footprint.sum()) >= _MIN_DEFECT_PIXELS:
                break
        img += d.alpha * zone_f * d.contrast
        if d.extra is not None:
            img += d.extra * zone_f
        mask[footprint] = CLASSES.index(name)

    # Lighting: a linear gradient across the field and vignetting, then sensor noise.
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    g_ang = float(rng.uniform(0.0, 2.0 * np.pi))
    nx = (xs / w - 0.5) * math.cos(g_ang) + (ys / h - 0.5) * math.sin(g_ang)
    gain = 1.0 + float(rng.uniform(0.08, 0.25)) * nx
    rr = ((xs / w - 0.5) ** 2 + (ys / h - 0.5) ** 2) * 2.0
    gain *= 1.0 - float(rng.uniform(0.1, 0.3)) * rr
    img *= gain * float(rng.uniform(0.92, 1.06))
    sigma = float(rng.uniform(1.5, 3.5))
    img += rng.normal(0.0, 1.0, shape).astype(np.float32) * (sigma * np.sqrt(np.maximum(img, 1.0) / 128.0))
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return SyntheticPart(image=image, mask=mask, defects=wanted)


def _write_set(
    out_dir: Path,
    plan: Sequence[tuple[str, ...]],
    seed: int,
    size: tuple[int, int],
    prefix: str,
) -> list[dict[str, str]]:
    out_dir = Path(out_dir)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for i, defects in enumerate(plan, start=1):
        rng = np.random.default_rng([seed, i])
        part = make_part(rng, size, defects)
        name = f"{prefix}_{i:04d}.png"
        for path, array in ((out_dir / name, part.image), (out_dir / "masks" / name, part.mask)):
            if not cv2.imwrite(str(path), array, _PNG_PARAMS):
                raise OSError(f"could not write {path}")
        rows.append({"file": name, "serial": f"SN-{i:04d}", "defects": ";".join(part.defects)})

    with (out_dir / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "serial", "defects"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    yaml_text = (
        "layout: indexed_masks\n"
        f"classes: [{', '.join(CLASSES)}]\n"
        'images: "."\n'
        'masks: "masks"\n'
        f"seed: {seed}\n"
        'generator: "qcstation.synth"\n'
        f"count: {len(rows)}\n"
        f"size: [{size[0]}, {size[1]}]\n"
    )
    (out_dir / "dataset.yaml").write_text(yaml_text, encoding="utf-8")
    return rows


def generate_dataset(
    out_dir: Path,
    count: int,
    seed: int,
    defect_rate: float = 0.5,
    size: tuple[int, int] = (256, 256),
    prefix: str = "part",
) -> list[dict[str, str]]:
    """Write a synthetic dataset in the ``indexed_masks`` layout.

    Files: ``<prefix>_NNNN.png`` (frames, NNNN from 0001), ``masks/<prefix>_NNNN.png`` (indexed masks,
    all zeros for good parts), ``labels.csv`` (file, serial, defects joined by ';') and ``dataset.yaml``.
    The same arguments always give byte-identical files on the same OpenCV build.

    Args:
        out_dir: target folder (created if missing; existing files of the same names are overwritten).
        count: number of frames.
        seed: the seed every frame and the choice of defects derive from.
        defect_rate: probability that a frame carries one or more defects.
        size: frame (height, width).
        prefix: file name prefix.

    Returns:
        One row per frame: ``{"file", "serial", "defects"}`` as written to ``labels.csv``.

    Raises:
        ValueError: count is negative or defect_rate is outside [0, 1].
    """
    if count < 0:
        raise ValueError(f"expected count >= 0, got {count}")
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"expected defect_rate in [0, 1], got {defect_rate}")
    plan_rng = np.random.default_rng([seed, 0])
    plan: list[tuple[str, ...]] = []
    for _ in range(count):
        if plan_rng.random() >= defect_rate:
            plan.append(())
            continue
        n = 1 if plan_rng.random() < 0.75 else 2
        picks = plan_rng.choice(len(DEFECT_CLASSES), size=n, replace=False)
        plan.append(tuple(DEFECT_CLASSES[int(k)] for k in sorted(picks)))
    return _write_set(Path(out_dir), plan, seed, size, prefix)


def demo_plan() -> list[tuple[str, ...]]:
    """The fixed defect sequence of the demo set.

    Returns:
        One tuple of defect names per part, in file-name order (empty tuple = good part).
    """
    return [DEMO_DEFECTS.get(i, ()) for i in range(1, DEMO_COUNT + 1)]


_DEMO_README = """\
# Demo images

{count} synthetic {h}x{w} grayscale part images for demos and tests, made by `qcstation samples --demo`
(`qcstation.synth.generate_demo`, seed {seed}); do not edit by hand - regenerate.
Layout `indexed_masks`: `part_NNNN.png` frames, `masks/part_NNNN.png` masks (value = class index in
`dataset.yaml`, 0 = good), `labels.csv` (file, serial, defects). Replayed in file-name order a station
shows passes, isolated fails, then parts 26-30 failing in a row (a batch hold), then mostly passes.
"""


def generate_demo(out_dir: Path, seed: int = DEMO_SEED) -> list[dict[str, str]]:
    """Write the committed demo set: 60 frames of 256x256 in a fixed pass/fail/hold sequence.

    Parts 1-25 are mostly good with isolated defective parts (never two in a row), parts 26-30 are
    all defective (a "3 consecutive fails" hold trips), the rest are mostly good. All four defect
    classes occur. Also writes a short ``README.md``.

    Args:
        out_dir: target folder (created if missing).
        seed: the seed of the frames; the defect sequence is fixed.

    Returns:
        One row per frame: ``{"file", "serial", "defects"}`` as written to ``labels.csv``.
    """
    out_dir = Path(out_dir)
    rows = _write_set(out_dir, demo_plan(), seed, DEMO_SIZE, "part")
    readme = _DEMO_README.format(count=DEMO_COUNT, h=DEMO_SIZE[0], w=DEMO_SIZE[1], seed=seed)
    (out_dir / "README.md").write_text(readme, encoding="utf-8")
    return rows
