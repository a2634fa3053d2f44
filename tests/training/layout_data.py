"""Tiny datasets in every layout the training package reads, drawn with numpy + OpenCV in a test folder.

Each writer makes ``count`` frames cycling good / dark disc (class ``dark``) / bright bar (class ``line``)
and writes the labels the way that layout's tools do: YOLO normalised polygons, labelme polygons and
rectangles, VOC boxes, class folders with same-name masks, or no labels at all (plain good images).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

NAMES = ("dark", "line")


def frame(rng: np.random.Generator, size: int, kind: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(image, K x 2 polygon of the defect in pixels or None for a good frame)."""
    img = np.clip(rng.normal(170.0, 8.0, (size, size)), 0, 255).astype(np.uint8)
    if kind == 1:
        c = (int(rng.integers(size // 4, 3 * size // 4)), int(rng.integers(size // 4, 3 * size // 4)))
        r = int(rng.integers(size // 10, size // 6))
        cv2.circle(img, c, r, 40, -1)
        return img, cv2.ellipse2Poly(c, (r, r), 0, 0, 360, 20).astype(np.float64)
    if kind == 2:
        y = int(rng.integers(size // 4, 3 * size // 4))
        x0, x1 = size // 8, 7 * size // 8
        cv2.rectangle(img, (x0, y), (x1, y + 3), 250, -1)
        return img, np.array([[x0, y], [x1, y], [x1, y + 3], [x0, y + 3]], np.float64)
    return img, None


def _frames(count: int, size: int, seed: int) -> list[tuple[str, int, np.ndarray, np.ndarray | None]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        img, poly = frame(rng, size, i % 3)
        out.append((f"part_{i:04d}", i % 3, img, poly))
    return out


def write_yolo(
    root: Path, count: int = 12, size: int = 64, seed: int = 0, *, sides: bool = False, test: bool = False
) -> Path:
    """``images/[side/]*.png``, ``labels/[side/]*.txt`` (normalised polygons), ``data.yaml`` with names.

    ``sides``: every 4th frame in ``val/``, the others in ``train/``; with ``test``, frames 1, 5, 9… in
    ``test/``.
    """
    for k, (stem, kind, img, poly) in enumerate(_frames(count, size, seed)):
        side = ("val" if k % 4 == 0 else "test" if test and k % 4 == 1 else "train") if sides else ""
        (root / "images" / side).mkdir(parents=True, exist_ok=True)
        (root / "labels" / side).mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / "images" / side / f"{stem}.png"), img)
        if poly is not None:
            coords = " ".join(f"{v / size:.5f}" for v in poly.ravel())
            (root / "labels" / side / f"{stem}.txt").write_text(f"{kind - 1} {coords}\n", encoding="utf-8")
        elif k % 2:
            (root / "labels" / side / f"{stem}.txt").write_text("", encoding="utf-8")
    (root / "data.yaml").write_text("names:\n  0: dark\n  1: line\n", encoding="utf-8")
    return root


def labelme_json(stem: str, size: int, shapes: list[dict[str, object]]) -> str:
    """A labelme file's text for ``<stem>.png``."""
    return json.dumps(
        {
            "version": "5.4.1",
            "flags": {},
            "shapes": shapes,
            "imagePath": f"{stem}.png",
            "imageData": None,
            "imageHeight": size,
            "imageWidth": size,
        }
    )


def write_labelme(root: Path, count: int = 12, size: int = 64, seed: int = 0) -> Path:
    """``<stem>.png`` + ``<stem>.json``: discs as polygons, bars as rectangles; some good ones unlabelled."""
    root.mkdir(parents=True, exist_ok=True)
    for k, (stem, kind, img, poly) in enumerate(_frames(count, size, seed)):
        assert cv2.imwrite(str(root / f"{stem}.png"), img)
        shapes: list[dict[str, object]] = []
        if kind == 1 and poly is not None:
            shapes = [{"label": "dark", "points": poly.tolist(), "shape_type": "polygon", "flags": {}}]
        elif kind == 2 and poly is not None:
            corners = [poly.min(axis=0).tolist(), poly.max(axis=0).tolist()]
            shapes = [{"label": "line", "points": corners, "shape_type": "rectangle", "flags": {}}]
        if shapes or k % 2:
            (root / f"{stem}.json").write_text(labelme_json(stem, size, shapes), encoding="utf-8")
    return root


def voc_xml(stem: str, size: int, boxes: list[tuple[str, float, float, float, float]]) -> str:
    """A Pascal VOC annotation for ``<stem>.png`` with (name, xmin, ymin, xmax, ymax) boxes (1-based)."""
    objects = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x0:g}</xmin><ymin>{y0:g}</ymin>"
        f"<xmax>{x1:g}</xmax><ymax>{y1:g}</ymax></bndbox></object>"
        for n, x0, y0, x1, y1 in boxes
    )
    return (
        f"<annotation><folder>JPEGImages</folder><filename>{stem}.png</filename><size><width>{size}</width>"
        f"<height>{size}</height><depth>1</depth></size>{objects}</annotation>"
    )


def write_voc(root: Path, count: int = 12, size: int = 64, seed: int = 0) -> Path:
    """``JPEGImages/*.png``, ``Annotations/*.xml`` (boxes), ``ImageSets/Main/{train,val}.txt``."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for _stem, kind, img, poly in _frames(count, size, seed):
        assert cv2.imwrite(str(root / "JPEGImages" / f"{_stem}.png"), img)
        boxes = []
        if poly is not None:
            (x0, y0), (x1, y1) = poly.min(axis=0), poly.max(axis=0)
            boxes.append((NAMES[kind - 1], x0 + 1, y0 + 1, x1 + 1, y1 + 1))
        (root / "Annotations" / f"{_stem}.xml").write_text(voc_xml(_stem, size, boxes), encoding="utf-8")
    return root


def write_mask_folders(root: Path, count: int = 12, size: int = 64, seed: int = 0) -> Path:
    """``good/*.png`` and ``dark/``, ``line/`` with ``<stem>.jpg`` images and ``<stem>.png`` 0/255 masks."""
    folders = ("good", *NAMES)
    for stem, kind, img, poly in _frames(count, size, seed):
        d = root / folders[kind]
        d.mkdir(parents=True, exist_ok=True)
        if poly is None:
            assert cv2.imwrite(str(d / f"{stem}.png"), img)
            continue
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32).reshape(-1, 1, 2)], 255)
        assert cv2.imwrite(str(d / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 98])
        assert cv2.imwrite(str(d / f"{stem}.png"), mask)
    return root


def write_plain(root: Path, count: int = 12, size: int = 64, seed: int = 0) -> Path:
    """Good frames only, no labels (for good-only training)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        img, _ = frame(rng, size, 0)
        assert cv2.imwrite(str(root / f"part_{i:04d}.png"), img)
    return root


WRITERS: dict[str, Callable[..., Path]] = {
    "yolo_seg": write_yolo,
    "labelme": write_labelme,
    "voc": write_voc,
    "mask_folders": write_mask_folders,
    "plain_images": write_plain,
}
