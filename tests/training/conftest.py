"""Fixtures of the training tests: tiny hand-made segmentation datasets (numpy + OpenCV, no generator)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

CLASSES = ("good", "dark", "line")


def tiny_sample(rng: np.random.Generator, size: int, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright textured frame with a dark disc (class 1), a bright line (class 2), or nothing (0)."""
    img = np.clip(rng.normal(170.0, 8.0, (size, size)), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    if kind == 1:
        c = (int(rng.integers(size // 4, 3 * size // 4)), int(rng.integers(size // 4, 3 * size // 4)))
        r = int(rng.integers(size // 12, size // 6))
        cv2.circle(img, c, r, 40, -1)
        cv2.circle(mask, c, r, 1, -1)
    elif kind == 2:
        y = int(rng.integers(size // 4, 3 * size // 4))
        cv2.line(img, (size // 8, y), (7 * size // 8, y + size // 8), 250, 2)
        cv2.line(mask, (size // 8, y), (7 * size // 8, y + size // 8), 2, 2)
    return img, mask


def write_tiny_dataset(root: Path, count: int = 12, size: int = 64, seed: int = 0) -> Path:
    """Write an ``indexed_masks`` dataset of ``count`` frames cycling good / dark disc / bright line."""
    rng = np.random.default_rng(seed)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img, mask = tiny_sample(rng, size, i % 3)
        assert cv2.imwrite(str(root / f"part_{i:04d}.png"), img)
        assert cv2.imwrite(str(root / "masks" / f"part_{i:04d}.png"), mask)
    (root / "dataset.yaml").write_text(
        "layout: indexed_masks\nclasses: [" + ", ".join(CLASSES) + "]\n", encoding="utf-8"
    )
    return root


DatasetFactory = Callable[..., Path]


@pytest.fixture
def make_dataset(tmp_path: Path) -> DatasetFactory:
    """Factory: ``make_dataset(name="ds", count=12, size=64, seed=0) -> dataset folder``."""

    def factory(name: str = "ds", count: int = 12, size: int = 64, seed: int = 0) -> Path:
        return write_tiny_dataset(tmp_path / name, count, size, seed)

    return factory
