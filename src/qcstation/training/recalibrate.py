"""Set a model's thresholds on a plant's own good parts, with the uncertainty the count of parts leaves.

A model's card carries thresholds calibrated on its validation split: often a hundred or two good images, so
a 2 % false-reject target is decided by the two or three highest of them (on magnetic tile two runs of one
command put the card's threshold at 0.75 and 0.88). Before a line trusts a false-reject rate, a quality
engineer scores more good parts from the line itself and sets the thresholds there. :func:`recalibrate_main`
does that the way the station scores a frame (:meth:`qcstation.inspect.Detector.inspect`), and says how
high the line's false-reject rate may really be: the one-sided Clopper-Pearson upper bound on the rate,
given how many of how many good parts the thresholds reject.

The result is a recipe fragment (``classes: {name: {threshold: t}}``) to merge into the product's recipe:
a recipe threshold overrides the card's. A part is rejected when any defect class reaches its threshold, so
the target is split evenly over the classes: the observed combined rate never exceeds it. A recipe's
minimum areas only let more parts pass, so the rate at the line is at most what is reported here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.stats import beta

from qcstation.inspect.detector import Detector
from qcstation.inspect.metrics import threshold_at_frr
from qcstation.training.calibrate import CLIP, decide
from qcstation.training.errors import DatasetError, TrainingError

log = logging.getLogger(__name__)


def frr_upper_bound(rejected: int, good: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a false-reject rate seen as ``rejected`` of ``good`` parts.

    Args:
        rejected: good parts rejected.
        good: good parts scored.
        confidence: in (0, 1).

    Returns:
        The rate that, were it the true one, would show ``rejected`` or fewer rejects with probability
        ``1 - confidence`` only.
    """
    if good <= 0 or not 0 <= rejected <= good:
        raise ValueError(f"expected 0 <= rejected <= good and good > 0, got {rejected} of {good}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"expected a confidence in (0, 1), got {confidence}")
    if rejected == good:
        return 1.0
    return float(beta.ppf(confidence, rejected + 1, good - rejected))


def good_parts_needed(target: float, confidence: float = 0.95) -> int:
    """Good parts a calibration at ``target`` needs before its upper bound is within twice the target.

    The bound is taken at exactly ``target * n`` rejects (the beta quantile takes a fractional count), so
    the count grows smoothly with the target instead of jumping with ``floor(target * n)``.
    """

    def within(n: int) -> bool:
        k = target * n
        return float(beta.ppf(confidence, k + 1.0, n - k)) <= 2.0 * target

    lo, hi = max(1, math.ceil(1.0 / target)), max(2, math.ceil(1.0 / target))
    while not within(hi):
        lo, hi = hi, hi * 2
    while lo < hi:  # the smallest n in (lo, hi] that is within
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if within(mid) else (mid + 1, hi)
    return hi


def _rates(
    scores: np.ndarray, defective: np.ndarray, classes: Sequence[str], thresholds: Mapping[str, float]
) -> tuple[int, float | None]:
    """(good parts rejected, recall on defective parts or None) with these per-class thresholds.

    ``scores`` is N x C per-class scores, column 0 for ``classes[0]`` (good), as training's calibration
    takes them: the reject rule is its :func:`~qcstation.training.calibrate.decide`.
    """
    reject = decide(scores, classes, thresholds)
    recall = float(reject[defective].mean()) if defective.any() else None
    return int(reject[~defective].sum()), recall


def recalibrate_main(
    model: str | Path,
    dataset: str | Path,
    *,
    split: str | None = None,
    target_false_reject: float = 0.02,
    confidence: float = 0.95,
    min_threshold: float = CLIP[0],
    recipe: str | Path | None = None,
) -> dict[str, Any]:
    """Score a dataset's parts as the station does and choose per-class thresholds for a false-reject target.

    Args:
        model: the ``.onnx`` file.
        dataset: a dataset folder of any layout (a folder of good images alone is one), or a name under
            ``$QCSTATION_DATASETS``. Images with labelled defects count as defective: they give the recall
            at the new thresholds and do not move them.
        split: only this side of the dataset's split (None: every image).
        target_false_reject: the share of good parts the line may reject, in (0, 0.5].
        confidence: of the reported upper bound on the false-reject rate, in (0, 1).
        min_threshold: no threshold goes below this (default 0.3, as in training's calibration): where good
            parts never score on a class, the lowest threshold that rejects none of them would be near 0,
            and the line would fail parts on noise no good part happened to show.
        recipe: the product's recipe: its ``roi`` and ``ignore`` areas are applied as the station applies
            them (without it the whole frame is scored). Its model should be ``model``.

    Returns:
        ``thresholds`` (class -> threshold), ``recipe`` (the recipe fragment as YAML text), the counts, the
        observed false-reject rate and its upper bound, the recall where there are defective parts, the same
        figures at the card's thresholds, ``problems`` (unreadable files, skipped) and ``warnings``.

    Raises:
        TrainingError: the target or confidence is out of range.
        DatasetError: the dataset cannot be read, or it has no readable good image on that side.
        RecipeError: ``recipe`` cannot be read or is invalid.
    """
    from qcstation.training.api import resolve_dataset
    from qcstation.training.layouts import open_dataset

    if not 0.0 < target_false_reject <= 0.5:
        raise TrainingError(f"expected a false-reject target in (0, 0.5], got {target_false_reject}")
    if not 0.0 < confidence < 1.0:
        raise TrainingError(f"expected a confidence in (0, 1), got {confidence}")
    if not 0.0 < min_threshold <= 1.0:
        raise TrainingError(f"expected a minimum threshold in (0, 1], got {min_threshold}")
    det = Detector.from_path(model)
    classes = list(det.card.defect_classes)
    roi: list[Any] = []
    ignore: list[Any] = []
    if recipe is not None:
        from qcstation.station.recipe import load_recipe

        rec = load_recipe(recipe)
        roi, ignore = list(rec.recipe.roi), list(rec.recipe.ignore)
        if rec.model_path.resolve() != Path(model).resolve():
            log.warning("recipe %s names model %s, calibrating %s", recipe, rec.model_path, model)
    reader = open_dataset(resolve_dataset(dataset))
    samples = [s for s in reader.samples() if split is None or reader.split_of(s) == split]
    loaded = reader.load(None, samples)
    defective = np.array([bool((s.mask > 0).any()) for s in loaded], bool)
    if not loaded or defective.all():
        raise DatasetError(
            f"{reader.root}: no readable good image"
            + (f" on split side {split!r}" if split is not None else "")
            + " to calibrate on"
        )
    # N x C, column 0 (good) unused: the layout training's calibration and its reject rule take
    scores = np.array(
        [
            [0.0, *(det.inspect(s.image, roi=roi, ignore=ignore).class_scores.get(c, 0.0) for c in classes)]
            for s in loaded
        ],
        np.float64,
    )
    good = scores[~defective, 1:]
    n = int(good.shape[0])
    per_class = target_false_reject / len(classes)
    # rounded up to 6 decimals for the recipe: up, so it rejects no more good parts than chosen
    thresholds = {
        c: min(1.0, max(min_threshold, math.ceil(threshold_at_frr(good[:, k], per_class) * 1e6) / 1e6))
        for k, c in enumerate(classes)
    }
    rejected, recall = _rates(scores, defective, det.card.classes, thresholds)
    card = det.thresholds()
    card_rejected, card_recall = _rates(scores, defective, det.card.classes, card)
    bound = frr_upper_bound(rejected, n, confidence)
    warnings: list[str] = []
    if math.floor(per_class * n + 1e-9) == 0:
        warnings.append(
            f"{n} good part(s) cannot show a {target_false_reject:.1%} false-reject rate: the thresholds sit "
            "above every good score"
        )
    needed = good_parts_needed(target_false_reject, confidence)
    if n < needed:
        warnings.append(
            f"with {n} good parts the false-reject rate may be up to "
            f"{bound:.1%} ({confidence:.0%} upper bound); "
            f"about {needed} good parts bring it within 2 x {target_false_reject:.1%}"
        )
    if any(t >= 1.0 for t in thresholds.values()):
        warnings.append("a good part scored 1.0 on a class: even threshold 1.0 rejects it; look at that part")
    header = (
        f"# qcstation calibrate, {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC: model {det.card.name} "
        f"(sha256 {det.info.sha256[:12]}), {n} good parts of {reader.root}"
        + (f" ({split})" if split is not None else "")
        + f",\n# target {target_false_reject:.1%} false rejects: {rejected} rejected "
        f"({rejected / n:.2%}), {confidence:.0%} upper bound {bound:.2%}."
        "\n# Merge into the recipe's classes (a recipe threshold overrides the card's).\n"
    )
    fragment = {"classes": {c: {"threshold": thresholds[c]} for c in classes}}
    result: dict[str, Any] = {
        "model": det.card.name,
        "model_sha256": det.info.sha256,
        "dataset": str(reader.root),
        "split": split,
        "good_images": n,
        "defective_images": int(defective.sum()),
        "target_false_reject": target_false_reject,
        "confidence": confidence,
        "min_threshold": min_threshold,
        "recipe_file": None if recipe is None else str(recipe),
        "thresholds": thresholds,
        "false_rejects": rejected,
        "false_reject_rate": round(rejected / n, 6),
        "false_reject_upper_bound": round(bound, 6),
        "recall": None if recall is None else round(recall, 6),
        "card": {
            "thresholds": card,
            "false_rejects": card_rejected,
            "false_reject_rate": round(card_rejected / n, 6),
            "false_reject_upper_bound": round(frr_upper_bound(card_rejected, n, confidence), 6),
            "recall": None if card_recall is None else round(card_recall, 6),
        },
        "good_parts_needed": needed,
        "problems": [{"file": f, "reason": r} for f, r in reader.problems],
        "warnings": warnings,
        "recipe": header + yaml.safe_dump(fragment, sort_keys=False),
    }
    for w in warnings:
        log.warning("%s", w)
    return result
