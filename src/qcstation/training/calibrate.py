"""Threshold calibration: per-class defaults for a target false-reject rate on good parts.

For each defect class the threshold is the ``1 - target`` quantile of that class's maximum probability over
the good validation images, clipped to ``[0.3, 0.95]``: at most ``target`` of the good parts reach it on
that class. A part is rejected when any class reaches its threshold (as the runtime decides), so the
combined false-reject rate can exceed the per-class target; :class:`Calibration` reports the rate actually
reached on the validation images, and the recall on defective ones.

numpy only: it works on the per-image maxima that :func:`qcstation.training.engine.evaluate` returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcstation.training.errors import TrainingError

CLIP = (0.3, 0.95)
SUMMARY_QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Calibration:
    """Calibrated thresholds and the evidence behind them.

    Attributes:
        thresholds: defect class -> threshold (for the model card).
        good_scores: summary of the good validation images' image-level scores (for the model card).
        false_reject_rate: share of good validation images rejected with ``thresholds``.
        recall: share of defective validation images rejected with ``thresholds`` (None without any).
        image_accuracy: share of validation images judged right with ``thresholds``.
    """

    thresholds: dict[str, float]
    good_scores: dict[str, Any]
    false_reject_rate: float
    recall: float | None
    image_accuracy: float


def decide(max_probs: np.ndarray, classes: Sequence[str], thresholds: Mapping[str, float]) -> np.ndarray:
    """Image-level reject decisions: any defect class at or above its threshold.

    Args:
        max_probs: N x C per-image maximum probability of each class.
        classes: class names, index 0 = good.
        thresholds: defect class -> threshold.

    Returns:
        N booleans, True = reject.
    """
    thr = np.array([thresholds[c] for c in classes[1:]], np.float64)
    return np.asarray((max_probs[:, 1:] >= thr).any(axis=1), bool)


def summarise(scores: np.ndarray) -> dict[str, Any]:
    """Count, mean, std, quantiles and max of a score sample (rounded for the card)."""
    s = np.asarray(scores, np.float64)
    if s.size == 0:
        return {"count": 0}
    return {
        "count": int(s.size),
        "mean": round(float(s.mean()), 6),
        "std": round(float(s.std()), 6),
        "quantiles": {f"{q:g}": round(float(np.quantile(s, q)), 6) for q in SUMMARY_QUANTILES},
        "max": round(float(s.max()), 6),
    }


def calibrate_thresholds(
    max_probs: np.ndarray,
    image_labels: np.ndarray,
    classes: Sequence[str],
    *,
    target_false_reject: float = 0.01,
    clip: tuple[float, float] = CLIP,
) -> Calibration:
    """Choose per-class thresholds on a validation split.

    Args:
        max_probs: N x C per-image maximum probability of each class.
        image_labels: N image labels, 0 = good, 1 = defective.
        classes: class names, index 0 = good.
        target_false_reject: wanted share of good images reaching each class's threshold, in (0, 1).
        clip: lowest and highest allowed threshold.

    Returns:
        The thresholds, the good-score summary and the rates reached on these images.

    Raises:
        TrainingError: shapes disagree, the target is out of range, or there is no good image.
    """
    p = np.asarray(max_probs, np.float64)
    y = np.asarray(image_labels).astype(bool)
    if p.ndim != 2 or p.shape[1] != len(classes) or len(classes) < 2:
        raise TrainingError(f"expected max_probs of shape (N, {len(classes)}), got {p.shape}")
    if y.shape != (p.shape[0],):
        raise TrainingError(f"expected {p.shape[0]} image labels, got shape {y.shape}")
    if not 0.0 < target_false_reject < 1.0:
        raise TrainingError(f"expected target_false_reject in (0, 1), got {target_false_reject}")
    lo, hi = clip
    if not 0.0 < lo <= hi <= 1.0:
        raise TrainingError(f"expected 0 < clip low <= clip high <= 1, got {clip}")
    good = p[~y]
    if good.shape[0] == 0:
        raise TrainingError("calibration needs good images in the validation split; it has none")
    thresholds: dict[str, float] = {}
    per_class: dict[str, Any] = {}
    for k, name in enumerate(classes[1:], start=1):
        q = float(np.quantile(good[:, k], 1.0 - target_false_reject, method="higher"))
        thresholds[name] = round(float(np.clip(q, lo, hi)), 4)
        per_class[name] = {"quantile": round(q, 6), "max": round(float(good[:, k].max()), 6)}
    reject = decide(p, classes, thresholds)
    frr = float(reject[~y].mean())
    recall = float(reject[y].mean()) if y.any() else None
    good_scores = {
        **summarise(good[:, 1:].max(axis=1)),
        "score": "max defect-class probability per image",
        "target_false_reject": target_false_reject,
        "false_reject_rate": round(frr, 6),
        "per_class": per_class,
    }
    return Calibration(thresholds, good_scores, frr, recall, float((reject == y).mean()))
