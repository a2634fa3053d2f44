"""Synthetic anomalies for good-only training, in the spirit of DRAEM (Zavrtanik et al., ICCV 2021).

An irregular region is cut from smoothed ("Perlin-like") noise and filled with foreign content: a patch of
another good image (turned and contrast-changed), the image's own texture shuffled, a dark or bright
intensity offset (holes, stains), or thin dark strokes (cracks). The returned mask is exactly the set of
pixels whose value was changed on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def smooth_noise_mask(
    shape: tuple[int, int], rng: np.random.Generator, *, min_area: float = 0.002, max_area: float = 0.08
) -> np.ndarray:
    """An irregular blob mask from thresholded multi-octave smoothed noise, inside a random window.

    Args:
        shape: (H, W).
        rng: random generator.
        min_area: smallest share of the frame the mask may cover.
        max_area: largest share.

    Returns:
        H x W bool mask with at least one pixel set.
    """
    h, w = shape
    for _ in range(20):
        scale = 2 ** int(rng.integers(1, 4))
        noise = np.zeros((h, w), np.float32)
        amp = 1.0
        for octave in range(2):
            gh, gw = (
                max(2, (h // (16 * scale)) * (octave + 1) + 2),
                max(2, (w // (16 * scale)) * (octave + 1) + 2),
            )
            grid = rng.standard_normal((gh, gw)).astype(np.float32)
            noise += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
            amp *= 0.5
        # keep the anomaly local: weight the noise by a random elliptic window
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        ry, rx = rng.uniform(0.05, 0.35) * h, rng.uniform(0.05, 0.35) * w
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        window = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))
        score = noise * window
        thr = np.quantile(score, 1.0 - rng.uniform(min_area, max_area))
        mask = score > max(thr, 0.05)
        if mask.sum() >= max(4, min_area * h * w / 4):
            return np.asarray(mask, bool)
    mask = np.zeros((h, w), bool)
    cv2.circle(mask.view(np.uint8), (w // 2, h // 2), max(2, min(h, w) // 12), 1, -1)
    return mask


def strokes_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One to three thin random polylines (crack-like)."""
    h, w = shape
    m = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h)))]
        ang = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(3, 9))):
            ang += rng.normal(0, 0.5)
            step = rng.uniform(0.03, 0.1) * max(h, w)
            pts.append((pts[-1][0] + step * np.cos(ang), pts[-1][1] + step * np.sin(ang)))
        cv2.polylines(m, [np.array(pts, np.int32)], False, 1, int(rng.integers(1, 4)))
    return m.astype(bool)


def synthesize_anomaly(
    image: np.ndarray, others: Sequence[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic anomaly onto a gray good image.

    Args:
        image: H x W uint8 good image.
        others: other good images (any size) to take foreign texture from.
        rng: random generator.

    Returns:
        (image with the anomaly, H x W bool mask of exactly the changed pixels).
    """
    h, w = image.shape
    kind = int(rng.integers(0, 4))
    mask = strokes_mask((h, w), rng) if kind == 3 else smooth_noise_mask((h, w), rng)
    src = image.astype(np.float32)
    if kind == 0 and others:
        other = others[int(rng.integers(0, len(others)))]
        patch = cv2.resize(np.rot90(other, int(rng.integers(0, 4))).copy(), (w, h)).astype(np.float32)
        patch = (patch - patch.mean()) * rng.uniform(0.5, 2.0) + patch.mean() + rng.uniform(-60, 60)
        beta = rng.uniform(0.2, 0.8)
        fill = beta * src + (1 - beta) * patch
    elif kind == 1:
        block = int(rng.integers(4, 16))
        gh, gw = h // block, w // block
        tiles = src[: gh * block, : gw * block].reshape(gh, block, gw, block).transpose(0, 2, 1, 3)
        flat = tiles.reshape(gh * gw, block, block)
        shuffled = flat[rng.permutation(len(flat))].reshape(gh, gw, block, block).transpose(0, 2, 1, 3)
        fill = src.copy()
        fill[: gh * block, : gw * block] = shuffled.reshape(gh * block, gw * block)
        fill = fill * rng.uniform(0.6, 1.3)
    else:
        sign = -1.0 if kind == 3 or rng.random() < 0.7 else 1.0
        fill = src + sign * rng.uniform(25, 90)
        fill = cv2.GaussianBlur(fill, (3, 3), 0)
    out = src.copy()
    out[mask] = fill[mask]
    out_u8 = np.clip(out, 0, 255).astype(np.uint8)
    changed = out_u8 != image
    return out_u8, mask & changed


def paste_defect(
    image: np.ndarray, donor: np.ndarray, donor_mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Copy a real labelled defect from a donor image onto a good image, at the same place.

    The labelled pixels are taken whole; a thin rim around them is blended (feathered alpha) so the seam is
    no sharper than the donor's own, and the donor is shifted by the difference of the two images' mean
    brightness on a ring around the defect, so the defect keeps its contrast to its surroundings rather
    than its absolute gray level. The place is kept (both images are at the training size); a defect on the
    frame's border belongs to the part's outline, and :class:`~qcstation.training.defectnet.BatchMaker`
    does not paste those.

    Args:
        image: H x W uint8 good image.
        donor: H x W uint8 image with a defect.
        donor_mask: H x W uint8 class-index mask of ``donor`` (0 = good).
        rng: random generator (the rim's width).

    Returns:
        (the good image with the donor's defect, H x W uint8 class-index mask of the pasted defect).

    Raises:
        ValueError: the three arrays differ in shape.
    """
    if image.shape != donor.shape or donor.shape != donor_mask.shape:
        raise ValueError(
            f"paste_defect needs images and mask of one shape, got {image.shape}, {donor.shape}, "
            f"{donor_mask.shape}"
        )
    region = donor_mask > 0
    if not region.any():
        return image.copy(), np.zeros_like(donor_mask)
    side = min(image.shape)
    rim = int(rng.integers(max(1, side // 128), max(2, side // 40) + 1))
    k = 2 * rim + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    grown = cv2.dilate(region.astype(np.uint8), kernel)
    alpha = cv2.GaussianBlur(grown.astype(np.float32), (k, k), 0)
    alpha[region] = 1.0
    ring = cv2.dilate(grown, kernel, iterations=2).astype(bool) & ~region
    if not ring.any():  # the defect covers (nearly) the whole frame
        ring = np.ones_like(region)
    src, dst = donor.astype(np.float32), image.astype(np.float32)
    shifted = src + (float(dst[ring].mean()) - float(src[ring].mean()))
    out = alpha * shifted + (1.0 - alpha) * dst
    mask = np.where(region, donor_mask, 0).astype(np.uint8)
    return np.clip(out, 0, 255).astype(np.uint8), mask
