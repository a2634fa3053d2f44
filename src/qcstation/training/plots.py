"""Small plots drawn with OpenCV (matplotlib is not a dependency): curves, histograms, image grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

W, H = 480, 360
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 36, 50
COLORS = [(200, 80, 30), (40, 40, 220), (40, 160, 40), (150, 60, 150)]


def _canvas(title: str, xlabel: str, ylabel: str) -> np.ndarray:
    img = np.full((H, W, 3), 255, np.uint8)
    cv2.putText(img, title, (LEFT, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (W // 2 - 40, H - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, ylabel, (4, TOP - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, (LEFT, TOP), (W - RIGHT, H - BOTTOM), (0, 0, 0), 1)
    for k in range(6):
        f = k / 5
        x = int(LEFT + f * (W - RIGHT - LEFT))
        y = int(H - BOTTOM - f * (H - BOTTOM - TOP))
        cv2.line(img, (x, TOP), (x, H - BOTTOM), (225, 225, 225), 1)
        cv2.line(img, (LEFT, y), (W - RIGHT, y), (225, 225, 225), 1)
        cv2.putText(img, f"{f:.1f}", (x - 10, H - BOTTOM + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1)
        cv2.putText(img, f"{f:.1f}", (LEFT - 30, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1)
    return img


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(LEFT + x * (W - RIGHT - LEFT)), int(H - BOTTOM - y * (H - BOTTOM - TOP))


def line_plot(
    path: str | Path,
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    diagonal: bool = False,
) -> Path:
    """Draw curves with x and y in [0, 1] into a PNG.

    Args:
        path: the PNG to write.
        curves: (legend, x, y) per curve.
        title: plot title.
        xlabel: x axis label.
        ylabel: y axis label.
        diagonal: draw the chance diagonal.

    Returns:
        The written path.
    """
    img = _canvas(title, xlabel, ylabel)
    if diagonal:
        cv2.line(img, _pt(0, 0), _pt(1, 1), (180, 180, 180), 1, cv2.LINE_AA)
    for k, (name, x, y) in enumerate(curves):
        pts = np.array([_pt(float(a), float(b)) for a, b in zip(x, y, strict=True)], np.int32)
        color = COLORS[k % len(COLORS)]
        cv2.polylines(img, [pts], False, color, 2, cv2.LINE_AA)
        cv2.putText(
            img, name, (LEFT + 10, TOP + 20 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), img)
    return out


def histogram_plot(
    path: str | Path,
    groups: Sequence[tuple[str, np.ndarray]],
    *,
    title: str,
    bins: int = 25,
    marker: float | None = None,
) -> Path:
    """Overlaid, per-group normalised histograms of scores in [0, 1] (with an optional threshold marker)."""
    img = _canvas(title, "score", "share")
    edges = np.linspace(0.0, 1.0, bins + 1)
    hists = [np.histogram(np.clip(v, 0, 1), edges)[0] / max(1, len(v)) for _, v in groups]
    top = max(1e-9, max(float(h.max()) for h in hists))
    for k, ((name, values), h) in enumerate(zip(groups, hists, strict=True)):
        color = COLORS[k % len(COLORS)]
        for b in range(bins):
            if h[b] <= 0:
                continue
            x0, y0 = _pt(edges[b] + 0.1 / bins * k, h[b] / top)
            x1, y1 = _pt(edges[b + 1] - 0.1 / bins * (1 - k), 0)
            cv2.rectangle(img, (x0, y0), (x1, y1), color, 1 if k else -1)
        cv2.putText(
            img,
            f"{name} (n={len(values)})",
            (LEFT + 10, TOP + 20 + 18 * k),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            color,
            1,
            cv2.LINE_AA,
        )
    if marker is not None:
        cv2.line(img, _pt(marker, 0), _pt(marker, 1), (0, 0, 0), 1, cv2.LINE_AA)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), img)
    return out


def overlay_grid(
    path: str | Path,
    tiles: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, str]],
    *,
    side: int = 200,
    cols: int = 4,
) -> Path:
    """A grid of images with the true mask outlined in green and the defect map in red.

    Args:
        path: the PNG to write.
        tiles: (gray image, true mask bool, defect map uint8 at any size, caption) per tile.
        side: tile side in pixels.
        cols: tiles per row.
    """
    cells = []
    for image, mask, dmap, caption in tiles:
        g = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
        heat = cv2.resize(dmap, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        bgr[:, :, 2] = np.clip(bgr[:, :, 2] * (1 - heat) + 255 * heat, 0, 255).astype(np.uint8)
        m = cv2.resize(mask.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(bgr, contours, -1, (0, 220, 0), 1)
        cv2.putText(
            bgr, caption[:28], (3, side - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1, cv2.LINE_AA
        )
        cells.append(bgr)
    while len(cells) % cols:
        cells.append(np.zeros((side, side, 3), np.uint8))
    rows = [np.hstack(cells[i : i + cols]) for i in range(0, len(cells), cols)] or [
        np.zeros((side, side, 3), np.uint8)
    ]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.vstack(rows))
    return out
