"""Pass/fail rules: turn one inspection into a verdict with reasons a person can read.

Pure: values in, values out, no I/O and no clock. The verdict is monotone by construction: every test below
only ever looks for *more* (regions above threshold, a higher class score), so a higher score or one more
region can never lower the verdict on the order PASS < REVIEW < FAIL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from qcstation.inspect.types import Inspection, Region
from qcstation.station.recipe import ClassRule, Recipe
from qcstation.station.types import Judgement, Severity, Verdict

DEFAULT_THRESHOLD = 0.5
"""Threshold of a class that neither the recipe nor the model card gives one for."""


def judge(inspection: Inspection, recipe: Recipe, card_thresholds: Mapping[str, float]) -> Judgement:
    """Judge one inspection against a recipe.

    For every defect class that has a class score or a region: a region *qualifies* when its score reaches the
    class threshold and its area reaches the minimum area (pixels, and mm² too when both the rule and the
    region have it). The class FAILs when more than ``max_count`` regions qualify or more than
    ``max_small_count`` regions reach the threshold but are too small. Otherwise it is a REVIEW when the
    class score (the larger of the inspection's class score and its regions' scores) reaches ``review_from``,
    or a region reaches the threshold but is too small while ``review_from`` is set. The part's verdict is the
    worst of its classes'.

    Args:
        inspection: what the detector saw.
        recipe: the product's recipe (per-class rules).
        card_thresholds: the model card's (calibrated) per-class thresholds, used where the recipe has none.

    Returns:
        The verdict, one reason per class that made it FAIL or REVIEW, the failed classes (sorted), and
        whether one of them is critical.
    """
    by_class: dict[str, list[Region]] = {}
    for region in inspection.regions:
        by_class.setdefault(region.class_name, []).append(region)
    names = sorted(set(inspection.class_scores) | set(by_class))

    failed: list[str] = []
    fail_reasons: list[str] = []
    review_reasons: list[str] = []
    critical = False
    for name in names:
        rule = recipe.rule_for(name)
        threshold = (
            rule.threshold if rule.threshold is not None else card_thresholds.get(name, DEFAULT_THRESHOLD)
        )
        regions = by_class.get(name, [])
        fail_reason, review_reason = _judge_class(
            name, rule, threshold, regions, inspection.class_scores.get(name)
        )
        if fail_reason is not None:
            failed.append(name)
            fail_reasons.append(fail_reason)
            critical = critical or rule.severity is Severity.CRITICAL
        elif review_reason is not None:
            review_reasons.append(review_reason)

    if failed:
        return Judgement(Verdict.FAIL, tuple(fail_reasons), tuple(failed), critical)
    if review_reasons:
        return Judgement(Verdict.REVIEW, tuple(review_reasons))
    return Judgement(Verdict.PASS)


def judge_error(message: str) -> Judgement:
    """The judgement of a part that could not be inspected.

    Args:
        message: why (e.g. "part_0007.png: cannot decode: truncated file").

    Returns:
        Verdict ERROR with ``message`` as its only reason.
    """
    return Judgement(Verdict.ERROR, (message.strip() or "inspection failed (no detail given)",))


def _judge_class(
    name: str, rule: ClassRule, threshold: float, regions: Sequence[Region], class_score: float | None
) -> tuple[str | None, str | None]:
    """(fail reason, review reason) of one class; each None when that outcome does not apply."""
    above = [r for r in regions if r.score >= threshold]
    big = [r for r in above if _meets_min_area(r, rule)]
    small = [r for r in above if not _meets_min_area(r, rule)]
    min_area = _min_area_text(rule, regions)

    if len(big) > rule.max_count:
        return _count_sentence(name, big, threshold, f">= {min_area}", rule.max_count, "allowed"), None
    if rule.max_small_count is not None and len(small) > rule.max_small_count:
        sentence = _count_sentence(name, small, threshold, f"under {min_area}", rule.max_small_count, "small")
        return sentence, None

    if rule.review_from is None:
        return None, None
    score = max([class_score or 0.0, *(r.score for r in regions)])
    if score < rule.review_from and not small:
        return None, None
    reason = f"{name}: class score {_num(score)} in review band [{_num(rule.review_from)}, {_num(threshold)})"
    if small:
        worst = max(small, key=lambda r: r.score)
        reason = (
            f"{name}: {_plural(len(small), 'region')} >= {_num(threshold)} but under {min_area} "
            f"(worst score {_num(worst.score)}, {_area(worst.area_px)} px), "
            f"review from {_num(rule.review_from)}"
        )
    return None, reason


def _meets_min_area(region: Region, rule: ClassRule) -> bool:
    if region.area_px < rule.min_area_px:
        return False
    # Without a scale the region has no mm² area; the pixel minimum alone then decides.
    return rule.min_area_mm2 is None or region.area_mm2 is None or region.area_mm2 >= rule.min_area_mm2


def _min_area_text(rule: ClassRule, regions: Sequence[Region]) -> str:
    text = f"{_area(rule.min_area_px)} px"
    if rule.min_area_mm2 is not None and any(r.area_mm2 is not None for r in regions):
        text += f" and {_area(rule.min_area_mm2)} mm²"
    return text


def _count_sentence(
    name: str, regions: Sequence[Region], threshold: float, area_clause: str, limit: int, limit_word: str
) -> str:
    worst = max(regions, key=lambda r: r.score)
    where = f"{_area(worst.area_px)} px"
    if worst.area_mm2 is not None:
        where += f", {_area(worst.area_mm2)} mm²"
    limit_text = f"max {limit} {limit_word}; " if limit > 0 or limit_word == "small" else ""
    return (
        f"{name}: {_plural(len(regions), 'region')} >= {_num(threshold)} and {area_clause} "
        f"({limit_text}worst score {_num(worst.score)}, {where})"
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _num(x: float) -> str:
    """0.5 -> "0.50", 0.93 -> "0.93", 0.4999 -> "0.4999": two decimals unless more are needed to be honest."""
    text = f"{x:.4f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def _area(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"
