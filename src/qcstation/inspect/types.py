"""Typed values passed between the stages of a station.

They are small frozen dataclasses that check themselves on construction, so a bad value is caught where it is
made and not three stages later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from qcstation.inspect.errors import FrameError


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One captured image (or the failure to capture/decode one).

    Exactly one of ``image`` and ``fault`` is set. A frame with a fault still travels through the pipeline so
    that it ends as an ERROR record: nothing that entered the station is lost.

    Attributes:
        frame_id: unique within the source run, e.g. the file name or a sequence number.
        captured_at: timezone-aware UTC capture time.
        image: HxW or HxWxC (C in 1, 3, 4; BGR order), uint8 or uint16.
        fault: why there is no image (e.g. "cannot decode part_0007.png: truncated file").
        serial: the part's serial number, when known.
        source: a human-readable name of the source (folder path, device, URL).
        encoded: the original encoded bytes (file sources), archived as-is instead of re-encoding.
        encoded_ext: file extension of ``encoded`` (".png", ".jpg").
    """

    frame_id: str
    captured_at: datetime
    image: np.ndarray | None = None
    fault: str | None = None
    serial: str | None = None
    source: str = ""
    encoded: bytes | None = field(default=None, repr=False)
    encoded_ext: str = ".png"

    def __post_init__(self) -> None:
        _require(bool(self.frame_id), "expected a non-empty frame_id, got ''")
        _require(
            self.captured_at.tzinfo is not None,
            f"expected a timezone-aware captured_at, got naive {self.captured_at.isoformat()}",
        )
        _require(
            (self.image is None) != (self.fault is None),
            "expected exactly one of image and fault, got "
            + ("both" if self.image is not None else "neither"),
        )
        if self.image is not None:
            check_image(self.image)

    @property
    def ok(self) -> bool:
        """True when the frame carries an image."""
        return self.image is not None


def check_image(image: np.ndarray) -> None:
    """Raise FrameError unless ``image`` is something the detector can take.

    Args:
        image: the array to check.

    Raises:
        FrameError: with an "expected …, got …" message.
    """
    if not isinstance(image, np.ndarray):
        raise FrameError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype not in (np.uint8, np.uint16):
        raise FrameError(f"expected a uint8 or uint16 image, got dtype {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise FrameError(f"expected an HxW or HxWxC image with C in 1, 3, 4, got shape {image.shape}")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise FrameError(f"expected an image at least 8x8 pixels, got shape {image.shape}")


@dataclass(frozen=True, slots=True)
class Region:
    """One connected defect region found in a frame, in frame pixel coordinates.

    Attributes:
        class_id: index into the model's classes (never 0, which is background/good).
        class_name: the class name from the model card.
        score: the maximum class probability inside the region, in [0, 1].
        bbox: (x, y, width, height) in frame pixels.
        area_px: area in frame pixels.
        area_mm2: area in mm², when the recipe gives a scale.
        centroid: (x, y) in frame pixels.
    """

    class_id: int
    class_name: str
    score: float
    bbox: tuple[int, int, int, int]
    area_px: float
    area_mm2: float | None = None
    centroid: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        _require(self.class_id >= 1, f"expected class_id >= 1 (0 is background), got {self.class_id}")
        _require(
            0.0 <= self.score <= 1.0 and not math.isnan(self.score),
            f"expected score in [0, 1], got {self.score}",
        )
        _require(self.area_px >= 0, f"expected area_px >= 0, got {self.area_px}")
        _require(
            self.bbox[2] >= 0 and self.bbox[3] >= 0, f"expected a non-negative bbox size, got {self.bbox}"
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "class_id": self.class_id,
            "class_name": self.class_name,
            "score": round(self.score, 6),
            "bbox": list(self.bbox),
            "area_px": round(self.area_px, 3),
            "area_mm2": None if self.area_mm2 is None else round(self.area_mm2, 6),
            "centroid": [round(self.centroid[0], 2), round(self.centroid[1], 2)],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Region:
        """Inverse of :meth:`to_dict`."""
        bbox = d["bbox"]
        centroid = d.get("centroid") or (0.0, 0.0)
        return cls(
            class_id=int(d["class_id"]),
            class_name=str(d["class_name"]),
            score=float(d["score"]),
            bbox=(int(bbox[0]), int(bbox[1]), int(bbox[2]), int(bbox[3])),
            area_px=float(d["area_px"]),
            area_mm2=None if d.get("area_mm2") is None else float(d["area_mm2"]),
            centroid=(float(centroid[0]), float(centroid[1])),
        )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Identity of the model that made an inspection."""

    name: str
    version: str
    sha256: str


@dataclass(frozen=True, slots=True, eq=False)
class Inspection:
    """What the detector saw in one frame.

    Attributes:
        regions: defect regions at or above their class thresholds.
        class_scores: per defect class, the maximum probability inside the inspected area.
        image_score: the image-level defect score (max over ``class_scores``, or the model's image head).
        timings_ms: stage durations in milliseconds (preprocess, infer, postprocess).
        model: which model produced it.
        defect_map: uint8 map (0-255) of the max defect probability at model resolution, for overlays;
            not persisted.
        frame_shape: (height, width) of the inspected frame.
    """

    regions: tuple[Region, ...]
    class_scores: dict[str, float]
    image_score: float
    timings_ms: dict[str, float]
    model: ModelInfo
    frame_shape: tuple[int, int]
    defect_map: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.image_score <= 1.0 and not math.isnan(self.image_score),
            f"expected image_score in [0, 1], got {self.image_score}",
        )
