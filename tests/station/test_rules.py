"""Pass/fail rules: boundary table, reasons, errors, and monotonicity as a property."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcstation.inspect.types import Inspection, ModelInfo, Region
from qcstation.station.recipe import ClassRule, Recipe
from qcstation.station.rules import judge, judge_error
from qcstation.station.types import Severity, Verdict

CLASSES = ("crack", "pit", "stain")
RANK = {Verdict.PASS: 0, Verdict.REVIEW: 1, Verdict.FAIL: 2}


# -- factories ------------------------------------------------------------------------------------------


def region(
    name: str = "crack", score: float = 0.9, area_px: float = 100.0, area_mm2: float | None = None
) -> Region:
    return Region(
        class_id=CLASSES.index(name) + 1,
        class_name=name,
        score=score,
        bbox=(0, 0, 10, 10),
        area_px=area_px,
        area_mm2=area_mm2,
    )


def inspection(*regions: Region, scores: dict[str, float] | None = None) -> Inspection:
    class_scores = dict.fromkeys(CLASSES, 0.0)
    for r in regions:
        class_scores[r.class_name] = max(class_scores[r.class_name], r.score)
    class_scores.update(scores or {})
    return Inspection(
        regions=tuple(regions),
        class_scores=class_scores,
        image_score=max(class_scores.values()),
        timings_ms={},
        model=ModelInfo(name="tiny", version="1", sha256="0" * 64),
        frame_shape=(64, 64),
    )


def recipe(**classes: ClassRule) -> Recipe:
    return Recipe(product="widget", model="m.onnx", classes=classes)


CARD = {"crack": 0.5, "pit": 0.5, "stain": 0.5}


# -- boundary table ---------------------------------------------------------------------------------------

BOUNDARIES: list[Any] = [
    # (id, rule, regions, extra class scores, card thresholds, expected verdict)
    ("score on threshold qualifies", ClassRule(threshold=0.5), [region(score=0.5)], None, CARD, Verdict.FAIL),
    (
        "score just under threshold",
        ClassRule(threshold=0.5),
        [region(score=0.4999)],
        None,
        CARD,
        Verdict.PASS,
    ),
    (
        "area exactly min qualifies",
        ClassRule(threshold=0.5, min_area_px=20),
        [region(area_px=20)],
        None,
        CARD,
        Verdict.FAIL,
    ),
    (
        "area just under min",
        ClassRule(threshold=0.5, min_area_px=20),
        [region(area_px=19.9)],
        None,
        CARD,
        Verdict.PASS,
    ),
    (
        "max_count regions allowed",
        ClassRule(threshold=0.5, max_count=2),
        [region(), region()],
        None,
        CARD,
        Verdict.PASS,
    ),
    (
        "max_count + 1 regions fail",
        ClassRule(threshold=0.5, max_count=2),
        [region(), region(), region()],
        None,
        CARD,
        Verdict.FAIL,
    ),
    (
        "max_small_count small regions allowed",
        ClassRule(threshold=0.5, min_area_px=20, max_small_count=2),
        [region(area_px=5), region(area_px=5)],
        None,
        CARD,
        Verdict.PASS,
    ),
    (
        "max_small_count + 1 small regions fail",
        ClassRule(threshold=0.5, min_area_px=20, max_small_count=2),
        [region(area_px=5), region(area_px=5), region(area_px=5)],
        None,
        CARD,
        Verdict.FAIL,
    ),
    (
        "small regions under threshold never count",
        ClassRule(threshold=0.5, min_area_px=20, max_small_count=0),
        [region(score=0.49, area_px=5)],
        None,
        CARD,
        Verdict.PASS,
    ),
    (
        "class score on review_from is review",
        ClassRule(threshold=0.5, review_from=0.35),
        [],
        {"crack": 0.35},
        CARD,
        Verdict.REVIEW,
    ),
    (
        "class score just under review_from passes",
        ClassRule(threshold=0.5, review_from=0.35),
        [],
        {"crack": 0.3499},
        CARD,
        Verdict.PASS,
    ),
    (
        "class score just under threshold is review",
        ClassRule(threshold=0.5, review_from=0.35),
        [],
        {"crack": 0.4999},
        CARD,
        Verdict.REVIEW,
    ),
    (
        "too-small region above threshold is review when review_from set",
        ClassRule(threshold=0.5, min_area_px=20, review_from=0.35),
        [region(score=0.8, area_px=5)],
        None,
        CARD,
        Verdict.REVIEW,
    ),
    (
        "too-small region above threshold passes without review band",
        ClassRule(threshold=0.5, min_area_px=20),
        [region(score=0.8, area_px=5)],
        None,
        CARD,
        Verdict.PASS,
    ),
    (
        "mm2 minimum met",
        ClassRule(threshold=0.5, min_area_px=10, min_area_mm2=0.5),
        [region(area_px=40, area_mm2=0.5)],
        None,
        CARD,
        Verdict.FAIL,
    ),
    (
        "mm2 minimum not met though px is",
        ClassRule(threshold=0.5, min_area_px=10, min_area_mm2=0.5),
        [region(area_px=40, area_mm2=0.49)],
        None,
        CARD,
        Verdict.PASS,
    ),
    (
        "mm2 met but px minimum not",
        ClassRule(threshold=0.5, min_area_px=50, min_area_mm2=0.5),
        [region(area_px=40, area_mm2=2.0)],
        None,
        CARD,
        Verdict.PASS,
    ),
    (
        "no scale: mm2 minimum falls back to px (met)",
        ClassRule(threshold=0.5, min_area_px=10, min_area_mm2=0.5),
        [region(area_px=10, area_mm2=None)],
        None,
        CARD,
        Verdict.FAIL,
    ),
    (
        "no scale: mm2 minimum falls back to px (not met)",
        ClassRule(threshold=0.5, min_area_px=10, min_area_mm2=0.5),
        [region(area_px=9, area_mm2=None)],
        None,
        CARD,
        Verdict.PASS,
    ),
    (
        "card threshold used when recipe has none (on it)",
        ClassRule(),
        [region(score=0.7)],
        None,
        {"crack": 0.7},
        Verdict.FAIL,
    ),
    (
        "card threshold used when recipe has none (under)",
        ClassRule(),
        [region(score=0.69)],
        None,
        {"crack": 0.7},
        Verdict.PASS,
    ),
    ("default 0.5 when neither gives one (on)", ClassRule(), [region(score=0.5)], None, {}, Verdict.FAIL),
    ("default 0.5 when neither gives one (under)", ClassRule(), [region(score=0.49)], None, {}, Verdict.PASS),
    (
        "recipe threshold wins over card",
        ClassRule(threshold=0.8),
        [region(score=0.7)],
        None,
        {"crack": 0.5},
        Verdict.PASS,
    ),
]


@pytest.mark.parametrize(
    ("rule", "regions", "scores", "card", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in BOUNDARIES],
)
def test_boundaries(
    rule: ClassRule,
    regions: list[Region],
    scores: dict[str, float] | None,
    card: dict[str, float],
    expected: Verdict,
) -> None:
    # given a recipe with one rule for 'crack' and an inspection
    insp = inspection(*regions, scores=scores)
    # when it is judged
    j = judge(insp, recipe(crack=rule), card)
    # then the verdict is on the right side of the boundary
    assert j.verdict is expected, j.reasons
    assert bool(j.reasons) == (expected is not Verdict.PASS)


def test_class_not_in_recipe_fails_on_any_region_at_card_threshold() -> None:
    # given a recipe that does not name 'pit'
    insp = inspection(region("pit", score=0.6, area_px=1))
    # when judged
    j = judge(insp, recipe(), {"pit": 0.6})
    # then the default rule (max_count 0, no minimum area) fails it
    assert j.verdict is Verdict.FAIL
    assert j.failed_classes == ("pit",)


def test_fail_reason_is_readable() -> None:
    # given one crack region above threshold and minimum area
    insp = inspection(region(score=0.93, area_px=41))
    # when judged
    j = judge(insp, recipe(crack=ClassRule(threshold=0.5, min_area_px=20)), CARD)
    # then the reason names the class, the count, the limits and the worst region
    assert j.reasons == ("crack: 1 region >= 0.50 and >= 20 px (worst score 0.93, 41 px)",)


def test_review_reason_names_band() -> None:
    # given a pit class score inside the review band
    insp = inspection(scores={"pit": 0.42})
    # when judged
    j = judge(insp, recipe(pit=ClassRule(threshold=0.5, review_from=0.35)), CARD)
    # then
    assert j.verdict is Verdict.REVIEW
    assert j.reasons == ("pit: class score 0.42 in review band [0.35, 0.50)",)
    assert j.failed_classes == ()
    assert not j.critical


def test_count_and_small_count_reasons_mention_limits() -> None:
    # given three cracks where two are allowed, and four small pits where three are allowed
    insp = inspection(
        region("crack", 0.9, 30),
        region("crack", 0.8, 30),
        region("crack", 0.7, 30),
        *(region("pit", 0.6, 3) for _ in range(4)),
    )
    rules = recipe(
        crack=ClassRule(threshold=0.5, max_count=2),
        pit=ClassRule(threshold=0.5, min_area_px=10, max_small_count=3),
    )
    # when judged
    j = judge(insp, rules, CARD)
    # then both classes fail, sorted, each with its own sentence
    assert j.verdict is Verdict.FAIL
    assert j.failed_classes == ("crack", "pit")
    assert "3 regions" in j.reasons[0]
    assert "max 2 allowed" in j.reasons[0]
    assert "4 regions" in j.reasons[1]
    assert "under 10 px" in j.reasons[1]
    assert "max 3 small" in j.reasons[1]


def test_mm2_reason_mentions_mm2() -> None:
    insp = inspection(region(score=0.9, area_px=40, area_mm2=1.5))
    j = judge(insp, recipe(crack=ClassRule(threshold=0.5, min_area_mm2=0.5)), CARD)
    assert j.verdict is Verdict.FAIL
    assert "0.5 mm²" in j.reasons[0]
    assert "1.5 mm²" in j.reasons[0]


@pytest.mark.parametrize(
    ("severity", "critical"),
    [(Severity.CRITICAL, True), (Severity.MAJOR, False), (Severity.MINOR, False)],
)
def test_critical_flag_follows_failed_class_severity(severity: Severity, critical: bool) -> None:
    # given a failing crack of the given severity
    insp = inspection(region())
    j = judge(insp, recipe(crack=ClassRule(threshold=0.5, severity=severity)), CARD)
    # then
    assert j.verdict is Verdict.FAIL
    assert j.critical is critical


def test_critical_class_that_does_not_fail_is_not_critical() -> None:
    # given a critical crack class only in the review band, and a failing major pit
    insp = inspection(region("pit"), scores={"crack": 0.4})
    rules = recipe(
        crack=ClassRule(threshold=0.5, review_from=0.3, severity=Severity.CRITICAL),
        pit=ClassRule(threshold=0.5),
    )
    # when judged
    j = judge(insp, rules, CARD)
    # then the part fails on pit alone and is not critical
    assert j.verdict is Verdict.FAIL
    assert j.failed_classes == ("pit",)
    assert not j.critical


def test_fail_wins_over_review() -> None:
    insp = inspection(region("pit"), scores={"crack": 0.4})
    rules = recipe(crack=ClassRule(threshold=0.5, review_from=0.3), pit=ClassRule(threshold=0.5))
    assert judge(insp, rules, CARD).verdict is Verdict.FAIL


def test_clean_part_passes_without_reasons() -> None:
    j = judge(inspection(), recipe(crack=ClassRule(threshold=0.5, review_from=0.3)), CARD)
    assert j.verdict is Verdict.PASS
    assert j.reasons == ()
    assert j.failed_classes == ()


def test_judge_error() -> None:
    # when a part could not be inspected
    j = judge_error("part_0007.png: cannot decode: truncated file")
    # then its verdict is ERROR with the message as reason
    assert j.verdict is Verdict.ERROR
    assert j.reasons == ("part_0007.png: cannot decode: truncated file",)
    assert j.failed_classes == ()
    assert not j.critical


def test_judge_error_never_without_a_reason() -> None:
    assert judge_error("  ").reasons[0]


# -- monotonicity -----------------------------------------------------------------------------------------

scores_st = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
regions_st = st.builds(
    region,
    name=st.sampled_from(CLASSES),
    score=scores_st,
    area_px=st.floats(min_value=0.0, max_value=200.0, allow_nan=False),
    area_mm2=st.none() | st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
)
rules_st = st.builds(
    ClassRule,
    threshold=st.none() | st.floats(min_value=0.05, max_value=1.0),
    min_area_px=st.sampled_from([0.0, 10.0, 50.0]),
    min_area_mm2=st.none() | st.sampled_from([0.0, 0.5, 1.0]),
    max_count=st.integers(0, 3),
    max_small_count=st.none() | st.integers(0, 3),
    severity=st.sampled_from(list(Severity)),
).flatmap(
    lambda r: st.builds(
        lambda rf: r.model_copy(update={"review_from": rf}),
        st.none() | st.floats(min_value=0.01, max_value=r.threshold or 1.0),
    )
)
recipes_st = st.dictionaries(st.sampled_from(CLASSES), rules_st).map(lambda c: recipe(**c))
card_st = st.dictionaries(st.sampled_from(CLASSES), st.floats(min_value=0.05, max_value=1.0))


@settings(max_examples=300, deadline=None)
@given(
    rec=recipes_st,
    card=card_st,
    regions=st.lists(regions_st, max_size=6),
    scores=st.dictionaries(st.sampled_from(CLASSES), scores_st),
    data=st.data(),
)
def test_judge_is_monotone(
    rec: Recipe,
    card: dict[str, float],
    regions: list[Region],
    scores: dict[str, float],
    data: st.DataObject,
) -> None:
    # given an inspection and a worse one (one region's score raised, or one region added)
    before = inspection(*regions, scores=scores)
    if regions and data.draw(st.booleans(), label="raise"):
        i = data.draw(st.integers(0, len(regions) - 1), label="index")
        r = regions[i]
        higher = data.draw(st.floats(min_value=r.score, max_value=1.0), label="new score")
        worse = [*regions[:i], region(r.class_name, higher, r.area_px, r.area_mm2), *regions[i + 1 :]]
    else:
        worse = [*regions, data.draw(regions_st, label="added")]
    after = inspection(*worse, scores=scores)
    # when both are judged
    v_before = judge(before, rec, card).verdict
    v_after = judge(after, rec, card).verdict
    # then the verdict never gets better
    assert RANK[v_after] >= RANK[v_before], (v_before, v_after)
