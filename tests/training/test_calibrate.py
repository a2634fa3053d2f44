"""Threshold calibration on hand-made per-image maxima."""

from __future__ import annotations

import numpy as np
import pytest

from qcstation.training.calibrate import calibrate_thresholds, decide
from qcstation.training.errors import TrainingError

CLASSES = ("good", "a", "b")


def _scores(n_good: int, n_bad: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    good = np.column_stack([np.ones(n_good), rng.uniform(0.2, 0.8, n_good), np.full(n_good, 0.05)])
    bad = np.column_stack([np.ones(n_bad), np.full(n_bad, 0.1), rng.uniform(0.9, 1.0, n_bad)])
    return np.vstack([good, bad]), np.r_[np.zeros(n_good), np.ones(n_bad)]


@pytest.mark.parametrize("target", [0.01, 0.05, 0.1])
def test_threshold_hits_target_false_reject_rate(target: float) -> None:
    # given 1000 good images whose class-a maxima spread over [0.2, 0.8] and class b never fires
    probs, labels = _scores(1000, 50)
    # when calibrated
    cal = calibrate_thresholds(probs, labels, CLASSES, target_false_reject=target)
    # then class a rejects the target share of good images (ties count as rejects) and class b is clipped
    assert cal.false_reject_rate == pytest.approx(target, abs=1.5 / 1000)
    assert cal.thresholds["b"] == 0.3
    assert cal.recall == 1.0
    assert cal.good_scores["count"] == 1000
    assert cal.good_scores["false_reject_rate"] == pytest.approx(cal.false_reject_rate)
    assert set(cal.good_scores["quantiles"]) == {"0.5", "0.9", "0.95", "0.99"}


@pytest.mark.parametrize(("scores", "expected"), [(0.99, 0.95), (0.01, 0.3)])
def test_thresholds_are_clipped(scores: float, expected: float) -> None:
    probs = np.column_stack([np.ones(20), np.full(20, scores), np.full(20, scores)])
    cal = calibrate_thresholds(probs, np.zeros(20), CLASSES)
    assert cal.thresholds == {"a": expected, "b": expected}


def test_decide_counts_a_score_on_the_threshold_as_reject() -> None:
    probs = np.array([[1.0, 0.5, 0.0], [1.0, 0.4999, 0.0]])
    assert decide(probs, CLASSES, {"a": 0.5, "b": 0.5}).tolist() == [True, False]


def test_calibration_without_good_images_is_refused() -> None:
    probs, _ = _scores(0, 5)
    with pytest.raises(TrainingError, match="needs good images"):
        calibrate_thresholds(probs, np.ones(5), CLASSES)


def test_calibration_checks_shapes() -> None:
    with pytest.raises(TrainingError, match=r"expected max_probs of shape \(N, 3\)"):
        calibrate_thresholds(np.zeros((4, 2)), np.zeros(4), CLASSES)
