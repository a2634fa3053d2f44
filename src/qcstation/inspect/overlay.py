"""Draw what the detector found onto a frame, for the operator screen and archived reject images."""

from __future__ import annotations

import cv2
import numpy as np

from qcstation.inspect.types import Inspection

_PALETTE = [(0, 0, 255), (0, 165, 255), (255, 0, 255), (255, 255, 0), (0, 255, 0), (255, 0, 0)]


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any frame (gray/BGR/BGRA, uint8/uint16) as 8-bit BGR for display."""
    img = image
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img.copy()


def draw_overlay(image: np.ndarray, inspection: Inspection, *, heat_alpha: float = 0.35) -> np.ndarray:
    """Frame with a defect heat map and a labelled box per region.

    Args:
        image: the inspected frame.
        inspection: what the detector found on it.
        heat_alpha: opacity of the heat map where the defect probability is high.

    Returns:
        An 8-bit BGR image the size of the frame.
    """
    out = to_bgr8(image)
    h, w = out.shape[:2]
    if inspection.defect_map is not None:
        heat = cv2.resize(inspection.defect_map, (w, h), interpolation=cv2.INTER_LINEAR)
        colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
        weight = (heat.astype(np.float32) / 255.0 * heat_alpha)[:, :, np.newaxis]
        out = (out * (1.0 - weight) + colour * weight).astype(np.uint8)
    thick = max(1, round(min(h, w) / 200))
    font = max(0.35, min(h, w) / 600)
    for r in inspection.regions:
        colour_r = _PALETTE[(r.class_id - 1) % len(_PALETTE)]
        x, y, bw, bh = r.bbox
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), colour_r, thick)
        label = f"{r.class_name} {r.score:.2f}"
        org = (x, max(10, y - 3))
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, font, colour_r, thick, cv2.LINE_AA)
    return out
