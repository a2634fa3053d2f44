"""Check an exported model the way a station uses it: through the runtime's Detector, on a labelled folder.

The decision is the station's simplest rule: a part fails when the detector reports any region (any
class at or above its card threshold). Ground truth is "the mask has defect pixels".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from qcstation.inspect.detector import Detector
from qcstation.training.data import READERS, read_dataset_config
from qcstation.training.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class FolderEvaluation:
    """Image-level results of a model on a labelled folder.

    Attributes:
        images: images evaluated.
        accuracy: share judged right (FAIL for defective, PASS for good).
        false_rejects: good images that failed.
        misses: defective images that passed.
        class_hits: per defect class, (images where the detector reported that class, images having it).
        latency_ms: median detector time per frame (pre-processing + inference + post-processing).
        rows: per image: file, truth, verdict, image score, reported classes.
    """

    images: int
    accuracy: float
    false_rejects: list[str]
    misses: list[str]
    class_hits: dict[str, tuple[int, int]]
    latency_ms: float
    rows: list[dict[str, Any]] = field(default_factory=list)


def evaluate_folder(model: str | Path | Detector, folder: str | Path) -> FolderEvaluation:
    """Run a model over a labelled dataset folder and judge each image PASS/FAIL.

    Args:
        model: an ``.onnx`` path or a loaded detector.
        folder: a dataset folder with ``dataset.yaml`` whose classes match the model's.

    Returns:
        The image-level figures.

    Raises:
        DatasetError: the folder cannot be read, its classes differ from the model's, or an image cannot
            be decoded.
    """
    det = model if isinstance(model, Detector) else Detector.from_path(model)
    root = Path(folder)
    config = read_dataset_config(root)
    reader = READERS[config["layout"]](root, config["classes"], config)
    if tuple(reader.classes) != det.card.classes:
        raise DatasetError(
            f"{root} has classes {list(reader.classes)} but the model has {list(det.card.classes)}"
        )
    rows: list[dict[str, Any]] = []
    times: list[float] = []
    hits = {c: [0, 0] for c in det.card.defect_classes}
    for sample in reader.samples():
        image = cv2.imread(str(sample.image), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DatasetError(f"cannot decode image {sample.image}")
        mask = reader.read_mask(sample, image.shape[:2])
        if mask is None:
            raise DatasetError(f"cannot decode mask {sample.label}")
        inspection = det.inspect(image)
        times.append(sum(inspection.timings_ms.values()))
        truth = {det.card.classes[k] for k in np.unique(mask) if k > 0}
        found = {r.class_name for r in inspection.regions}
        for c in truth:
            hits[c][1] += 1
            hits[c][0] += int(c in found)
        rows.append(
            {
                "file": sample.image.name,
                "truth": "FAIL" if truth else "PASS",
                "verdict": "FAIL" if found else "PASS",
                "defects": sorted(truth),
                "found": sorted(found),
                "image_score": round(inspection.image_score, 4),
            }
        )
    if not rows:
        raise DatasetError(f"{root} has no images")
    right = [r["truth"] == r["verdict"] for r in rows]
    result = FolderEvaluation(
        images=len(rows),
        accuracy=float(np.mean(right)),
        false_rejects=[r["file"] for r in rows if r["truth"] == "PASS" and r["verdict"] == "FAIL"],
        misses=[r["file"] for r in rows if r["truth"] == "FAIL" and r["verdict"] == "PASS"],
        class_hits={c: (h[0], h[1]) for c, h in hits.items()},
        latency_ms=float(np.median(times)),
        rows=rows,
    )
    log.info(
        "%s on %s: accuracy %.3f (%d images), false rejects %s, misses %s",
        det.card.name,
        root,
        result.accuracy,
        result.images,
        result.false_rejects,
        result.misses,
    )
    return result
