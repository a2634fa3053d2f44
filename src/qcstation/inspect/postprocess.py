"""From probability maps to defect regions.

Per defect class: threshold the map, find 8-connected components, and describe each with its class, score
(the maximum probability inside it), bounding box, area in pixels and mm², and centroid. Geometry is measured
on the map and scaled to frame pixels, so a resized model reports in the coordinates of the frame it saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from qcstation.inspect.types import Region

Polygon = Sequence[tuple[float, float]]


def inspection_mask(
    shape: tuple[int, int], roi: Sequence[Polygon] = (), ignore: Sequence[Polygon] = ()
) -> np.ndarray | None:
    """Boolean mask of the pixels to inspect, from polygons in frame fractions (0..1).

    Args:
        shape: (height, width) of the map the mask applies to.
        roi: polygons to inspect; empty means the whole frame.
        ignore: polygons never inspected (they win over ``roi``).

    Returns:
        An HxW bool array, or None when everything is inspected.
    """
    if not roi and not ignore:
        return None
    h, w = shape
    scale = np.array([w, h], dtype=np.float64)

    def fill(polys: Sequence[Polygon], value: int, out: np.ndarray) -> None:
        pts = [np.round(np.asarray(p, dtype=np.float64) * scale).astype(np.int32) for p in polys]
        cv2.fillPoly(out, pts, value)

    mask = np.zeros((h, w), np.uint8) if roi else np.ones((h, w), np.uint8)
    if roi:
        fill(roi, 1, mask)
    if ignore:
        fill(ignore, 0, mask)
    return mask.astype(bool)


def class_scores(
    probs: np.ndarray, classes: Sequence[str], mask: np.ndarray | None = None
) -> dict[str, float]:
    """Maximum probability of every defect class over the inspected pixels.

    Args:
        probs: C x H x W probabilities.
        classes: class names, index 0 = good.
        mask: H x W bool, pixels to consider (None: all).

    Returns:
        Defect class name -> max probability (0.0 when the mask is empty).
    """
    if mask is None:
        peaks = probs[1:].reshape(len(classes) - 1, -1).max(axis=1)  # one pass over all maps
    elif mask.any():
        peaks = probs[1:, mask].max(axis=1)
    else:
        peaks = np.zeros(len(classes) - 1, np.float32)
    return {classes[c]: float(np.clip(peaks[c - 1], 0.0, 1.0)) for c in range(1, len(classes))}


def extract_regions(
    probs: np.ndarray,
    classes: Sequence[str],
    thresholds: Mapping[str, float],
    *,
    scale: tuple[float, float] = (1.0, 1.0),
    mm_per_px: float | None = None,
    mask: np.ndarray | None = None,
    max_regions_per_class: int = 256,
    peaks: Mapping[str, float] | None = None,
) -> list[Region]:
    """Connected regions at or above each class's threshold.

    Args:
        probs: C x H x W probabilities (index 0 = good).
        classes: class names, ``len(classes) == C``.
        thresholds: defect class -> threshold; a class missing here uses 0.5.
        scale: (sx, sy) from map pixels to frame pixels.
        mm_per_px: frame pixel size in mm, for ``area_mm2``.
        mask: H x W bool, pixels to inspect (None: all).
        max_regions_per_class: keep at most this many regions per class (highest scores first).
        peaks: each class's highest probability inside the mask (:func:`class_scores`), when known: a class
            whose peak is under its threshold has no region and its map is not scanned again.

    Returns:
        Regions sorted by class, then score (highest first).
    """
    sx, sy = scale
    regions: list[Region] = []
    for c in range(1, len(classes)):
        name = classes[c]
        threshold = thresholds.get(name, 0.5)
        if peaks is not None and peaks[name] < threshold:
            continue
        pc = probs[c]
        binary = pc >= threshold
        if mask is not None:
            binary &= mask
        if not binary.any():
            continue
        n, labels, stats, centroids = cv2.connectedComponentsWithStats(
            binary.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
        )
        found: list[Region] = []
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            inside = labels[y : y + h, x : x + w] == i
            score = float(np.clip(pc[y : y + h, x : x + w][inside].max(), 0.0, 1.0))
            area_px = area * sx * sy
            found.append(
                Region(
                    class_id=c,
                    class_name=name,
                    score=score,
                    bbox=(
                        int(np.floor(x * sx)),
                        int(np.floor(y * sy)),
                        max(1, round(w * sx)),
                        max(1, round(h * sy)),
                    ),
                    area_px=area_px,
                    area_mm2=None if mm_per_px is None else area_px * mm_per_px * mm_per_px,
                    centroid=(float((centroids[i][0] + 0.5) * sx), float((centroids[i][1] + 0.5) * sy)),
                )
            )
        found.sort(key=lambda r: r.score, reverse=True)
        regions.extend(found[:max_regions_per_class])
    return regions
