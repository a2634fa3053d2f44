"""Image- and pixel-level figures against values worked out by hand (and scikit-learn's definitions)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from qcstation.inspect.metrics import (
    auroc,
    average_precision,
    pixel_ap_iou,
    recall_at_frr,
    roc_curve,
    threshold_at_frr,
)
from qcstation.training.plots import histogram_plot, line_plot, overlay_grid

pytestmark = pytest.mark.train


@pytest.mark.parametrize(
    ("scores", "labels", "auc", "ap"),
    [
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75, 0.8333333),  # scikit-learn's documented example
        ([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], 1.0, 1.0),
        ([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], 0.0, 0.4166667),
        ([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0], 0.5, 0.5),  # ties count half
    ],
)
def test_auroc_and_ap(scores: list[float], labels: list[int], auc: float, ap: float) -> None:
    assert auroc(np.array(scores), np.array(labels)) == pytest.approx(auc)
    assert average_precision(np.array(scores), np.array(labels)) == pytest.approx(ap, abs=1e-6)


def test_auroc_without_both_classes_is_nan() -> None:
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([0, 0])))


def test_recall_at_false_reject_rate() -> None:
    good = np.arange(100) / 100.0  # 0.00 .. 0.99
    bad = np.array([0.995, 0.985, 0.975, 0.955, 0.2])
    scores = np.r_[good, bad]
    labels = np.r_[np.zeros(100), np.ones(5)]
    # 2 % of 100 good may be rejected (0.99 and 0.98): the threshold sits just above 0.97
    recall, thr = recall_at_frr(scores, labels, 0.02)
    assert 0.97 < thr <= 0.98 and recall == pytest.approx(3 / 5)
    assert recall_at_frr(scores, labels, 0.0)[0] == pytest.approx(1 / 5)
    assert recall_at_frr(scores, labels, 0.05)[0] == pytest.approx(4 / 5)
    assert (good >= threshold_at_frr(good, 0.05)).mean() <= 0.05


def test_roc_curve_ends() -> None:
    fpr, tpr, _ = roc_curve(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_pixel_ap_and_iou_from_histograms() -> None:
    pos = np.zeros(256)
    neg = np.zeros(256)
    pos[200] = 10  # all defect pixels score 200
    neg[100] = 80
    neg[200] = 10  # 10 good pixels also score 200
    ap, iou = pixel_ap_iou(pos, neg, 128)
    assert ap == pytest.approx(0.5) and iou == pytest.approx(10 / 20)
    assert np.isnan(pixel_ap_iou(np.zeros(256), neg, 128)[0])


def test_plots_are_written(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 20)
    for p in (
        line_plot(tmp_path / "roc.png", [("a", x, x**0.5)], title="t", xlabel="x", ylabel="y", diagonal=True),
        histogram_plot(tmp_path / "h.png", [("good", x / 2), ("bad", x)], title="h", marker=0.5),
        overlay_grid(
            tmp_path / "g.png",
            [(np.full((30, 40), 90, np.uint8), np.eye(30, 40, dtype=bool), np.zeros((8, 8), np.uint8), "c")],
        ),
    ):
        img = cv2.imread(str(p))
        assert img is not None and img.size > 0


def test_false_rejects_name_the_parts_that_set_each_point() -> None:
    # given 100 good images where one part, photographed three times, scores above every other good
    # image and above half of the defects
    from qcstation.training.evaluate import _false_rejects

    rows = [
        {"file": f"good/g{k}.png", "group": f"part{k}", "defective": 0, "score": k / 1000} for k in range(97)
    ]
    rows += [
        {"file": f"good/a{k}.png", "group": "partA", "defective": 0, "score": 0.9 + k / 100} for k in range(3)
    ]
    rows += [
        {"file": f"bad/d{k}.png", "group": f"d{k}", "defective": 1, "score": 0.8 + k / 20} for k in range(6)
    ]
    score = np.array([r["score"] for r in rows])
    y = np.array([r["defective"] for r in rows])

    # when the false-reject points are broken down by part
    fr = _false_rejects(rows, score, y)

    # then at 1 % the one rejected image is that part's, and the next photo of it sets the threshold;
    # at 2 % two of its photos are rejected and its third sets the threshold: one part, not two images
    assert fr["1%"] == {
        "good_rejected": 1,
        "parts_rejected": 1,
        "set_by": {"file": "good/a1.png", "group": "partA"},
    }
    assert fr["2%"] == {
        "good_rejected": 2,
        "parts_rejected": 1,
        "set_by": {"file": "good/a0.png", "group": "partA"},
    }
    # at 5 % all three photos and two other parts are rejected; the next good image sets the threshold
    assert fr["5%"]["good_rejected"] == 5 and fr["5%"]["parts_rejected"] == 3
    assert fr["5%"]["set_by"] == {"file": "good/g94.png", "group": "part94"}


def test_report_keeps_defect_maps_small() -> None:
    # a tile-mode map is a whole frame; the report's grids keep at most 256 px of it, shape kept
    from qcstation.training.evaluate import _thumbnail

    big = np.zeros((2048, 2448), np.uint8)
    big[1000:1100, 1200:1300] = 255
    small = _thumbnail(big)
    assert small.shape == (214, 256) and small.max() == 255
    model_sized = np.zeros((224, 224), np.uint8)
    assert _thumbnail(model_sized) is model_sized
