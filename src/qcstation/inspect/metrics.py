"""Image- and pixel-level figures (numpy only): AUROC, AP, recall at a false-reject rate, pixel AP/IoU.

Here, beside the runtime, so training's evaluation and the station's benchmark score models the same way.
"""

from __future__ import annotations

import numpy as np


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"expected as many labels as scores, got {y.shape} and {s.shape}")
    return s, y


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN without both classes.

    Args:
        scores: higher = more likely defective.
        labels: 1 = defective.
    """
    s, y = _check(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average ranks of ties
    _, start, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = start + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision (step PR curve area, as scikit-learn computes it); NaN without positives."""
    s, y = _check(scores, labels)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates, thresholds), thresholds from high to low."""
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    tpr = np.r_[0.0, tp / max(1, y.sum())]
    fpr = np.r_[0.0, fp / max(1, (~y).sum())]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) points from high to low threshold."""
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    return tp / max(1, y.sum()), tp / np.maximum(1, tp + fp)


def threshold_at_frr(good_scores: np.ndarray, frr: float) -> float:
    """Smallest threshold (reject when score >= threshold) that rejects at most ``frr`` of the good scores."""
    g = np.sort(np.asarray(good_scores, np.float64))[::-1]
    if g.size == 0:
        raise ValueError("no good scores")
    allowed = int(np.floor(frr * g.size + 1e-9))
    if allowed >= g.size:
        return float(g[-1])
    # reject the top `allowed` scores: the threshold sits just above the (allowed+1)-th highest
    return float(np.nextafter(g[allowed], np.inf))


def recall_at_frr(scores: np.ndarray, labels: np.ndarray, frr: float) -> tuple[float, float]:
    """(recall, threshold) with a threshold that rejects at most ``frr`` of the good images.

    Args:
        scores: higher = more likely defective.
        labels: 1 = defective.
        frr: allowed false-reject rate on good images, in [0, 1).
    """
    s, y = _check(scores, labels)
    thr = threshold_at_frr(s[~y], frr)
    return float((s[y] >= thr).mean()) if y.any() else float("nan"), thr


def pixel_ap_iou(hist_pos: np.ndarray, hist_neg: np.ndarray, threshold_bin: int) -> tuple[float, float]:
    """Pixel AP and IoU from 256-bin histograms of quantised scores of defect and good pixels.

    Args:
        hist_pos: counts of defect pixels per score bin (0..255).
        hist_neg: counts of good pixels per score bin.
        threshold_bin: pixels in bins >= this are predicted defective (for the IoU).

    Returns:
        (AP, IoU); NaN when there is no defect pixel.
    """
    pos, neg = np.asarray(hist_pos, np.float64), np.asarray(hist_neg, np.float64)
    if pos.sum() == 0:
        return float("nan"), float("nan")
    tp = np.cumsum(pos[::-1])
    fp = np.cumsum(neg[::-1])
    keep = (pos[::-1] + neg[::-1]) > 0
    tp, fp = tp[keep], fp[keep]
    recall = tp / pos.sum()
    precision = tp / np.maximum(tp + fp, 1)
    ap = float(np.sum((recall - np.r_[0.0, recall[:-1]]) * precision))
    tp_t = pos[threshold_bin:].sum()
    fp_t = neg[threshold_bin:].sum()
    fn_t = pos[:threshold_bin].sum()
    return ap, float(tp_t / max(1.0, tp_t + fp_t + fn_t))
