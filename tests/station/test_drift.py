"""Score drift: passing parts' scores against the card's validation scores of good parts."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_factory import build_model
from qcstation.inspect.detector import Detector
from qcstation.station.archive import ImageArchive
from qcstation.station.drift import DriftMonitor, ScoreDrift
from qcstation.station.errors import RecipeError
from qcstation.station.pipeline import Station
from qcstation.station.recipe import DriftRule, Recipe, load_recipe
from qcstation.station.sources import ListSource
from qcstation.station.store import Store

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
REFS = {0.5: 0.10, 0.9: 0.40}  # good validation parts: half above 0.10, a tenth above 0.40


def good_like(n: int) -> list[float]:
    """Scores spread like the reference: a tenth above 0.40, four tenths in (0.10, 0.40], half below."""
    pattern = [0.05, 0.2, 0.05, 0.3, 0.05, 0.2, 0.05, 0.25, 0.05, 0.6]
    return [pattern[i % 10] for i in range(n)]


def feed(mon: DriftMonitor, scores: list[float], passed: bool = True) -> list[ScoreDrift]:
    out = []
    for i, s in enumerate(scores):
        ev = mon.observe(s, passed, T0 + timedelta(seconds=i))
        if ev is not None:
            out.append(ev)
    return out


def test_scores_like_the_validation_never_signal() -> None:
    mon = DriftMonitor(REFS, DriftRule(window=100))
    assert feed(mon, good_like(1000)) == []
    # and once the window filled, each quantile sits where the card says
    assert [round(c.observed, 2) for c in mon.checks] == [0.5, 0.1]
    assert all(abs(c.z) < 0.5 for c in mon.checks)


def test_scores_creeping_up_signal_once_then_clear_when_back() -> None:
    # given a line whose passing parts all score above the good p90 (a dirty lens, say)
    mon = DriftMonitor(REFS, DriftRule(window=100, z_limit=4.0))
    assert feed(mon, good_like(100)) == []
    events = feed(mon, [0.45] * 100)
    # then one drift event, naming the quantile, the shares and the z-score
    assert len(events) == 1 and events[0].drifting and mon.drifting
    worst = max(events[0].checks, key=lambda c: abs(c.z))
    assert worst.quantile == 0.9 and worst.observed > worst.expected and worst.z > 4.0
    assert "above its p90 (0.400)" in events[0].detail and "expected 10%" in events[0].detail
    # when the scores come back, the event that clears it comes once, after the window has turned over
    back = feed(mon, good_like(300))
    assert [e.drifting for e in back] == [False] and not mon.drifting


def test_collapsed_scores_signal_too() -> None:
    # e.g. an overexposed or blank view: nothing scores above even the good median
    mon = DriftMonitor(REFS, DriftRule(window=50))
    events = feed(mon, [0.0] * 50)
    assert len(events) == 1 and events[0].drifting
    assert "below" in events[0].detail


def test_only_passing_parts_count() -> None:
    # defective parts score high by design: a bad run of rejects is the hold rules' business, not drift
    mon = DriftMonitor(REFS, DriftRule(window=50))
    assert feed(mon, [0.99] * 500, passed=False) == []
    assert mon.checks == ()


@pytest.mark.parametrize(
    ("above", "signals"),
    [
        (5, False),  # 10 % of 50 above the p90: as expected, z = 0
        (14, False),  # z = (14 - 5) / sqrt(4.5) = 4.24, under the limit of 4.5
        (15, True),  # z = 4.71, over it
    ],
    ids=["expected", "edge", "over"],
)
def test_z_limit_boundary_on_the_p90(above: int, signals: bool) -> None:
    # given a window of 50 where exactly `above` parts exceed the p90 and exactly half exceed the p50
    mon = DriftMonitor({0.5: 0.10, 0.9: 0.40}, DriftRule(window=50, z_limit=4.5))
    scores = [0.5] * above + [0.2] * (25 - above) + [0.05] * 25
    events = feed(mon, scores)
    z = (above - 5) / math.sqrt(50 * 0.1 * 0.9)
    assert (z > 4.5) == signals
    assert bool(events) == signals


def test_reject_share_lowers_what_is_expected_among_passing_parts() -> None:
    # 2 % of good parts are rejected at the threshold, so among passing parts fewer than 10 % exceed p90
    mon = DriftMonitor(REFS, DriftRule(window=50), reject_share=0.02)
    feed(mon, good_like(50))
    p90 = next(c for c in mon.checks if c.quantile == 0.9)
    assert p90.expected == pytest.approx((0.1 - 0.02) / 0.98)


def test_from_card_reads_the_quantiles_and_respects_the_recipe() -> None:
    card = {"quantiles": {"0.5": 0.07, "0.9": 0.46, "0.99": 0.97}, "false_reject_rate": 0.03}
    mon = DriftMonitor.from_card(card, DriftRule())
    assert mon is not None
    feed(mon, [0.5] * 200)
    assert [c.quantile for c in mon.checks] == [0.5, 0.9]  # p99 sits at the threshold: not watched
    assert DriftMonitor.from_card(card, DriftRule(enabled=False)) is None
    assert DriftMonitor.from_card({}, DriftRule()) is None
    assert DriftMonitor.from_card({"quantiles": {"0.99": 0.9}}, DriftRule()) is None
    with pytest.raises(ValueError, match="not a quantile and score"):
        DriftMonitor.from_card({"quantiles": {"median": 0.1}}, DriftRule())
    with pytest.raises(ValueError, match="not a quantile and score"):
        DriftMonitor.from_card({"quantiles": {"0.5": None}}, DriftRule())


def test_recipe_hash_is_unchanged_by_the_default_drift_section() -> None:
    base = {"product": "p", "model": "m.onnx"}
    plain = Recipe.model_validate(base)
    explicit = Recipe.model_validate({**base, "drift": {"enabled": True, "window": 200, "z_limit": 4.0}})
    tuned = Recipe.model_validate({**base, "drift": {"window": 500}})
    assert plain.content_hash == explicit.content_hash
    assert tuned.content_hash != plain.content_hash


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(0.0, 1.0), min_size=0, max_size=400),
    passed=st.lists(st.booleans(), min_size=400, max_size=400),
)
def test_events_alternate_and_match_the_state(scores: list[float], passed: list[bool]) -> None:
    mon = DriftMonitor(REFS, DriftRule(window=30, z_limit=3.0))
    expected_next = True
    for i, s in enumerate(scores):
        ev = mon.observe(s, passed[i], T0)
        if ev is not None:
            assert ev.drifting is expected_next and mon.drifting is ev.drifting
            expected_next = not expected_next


# -- in the running station -----------------------------------------------------------------------------


def _station(tmp_path: Path, frames: list[np.ndarray], drift: dict[str, object]) -> tuple[Station, Store]:
    model = build_model(
        tmp_path / "m.onnx",
        card_overrides={"good_scores": {"quantiles": {"0.5": 0.001, "0.9": 0.01}, "count": 100}},
    )
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(
        f"product: widget\nmodel: {model}\nclasses: {{dark: {{min_area_px: 20}}}}\n"
        f"images: {{keep_pass_every: 0}}\ndrift: {drift}\n".replace("'", "")
    )
    store = Store.open(tmp_path / "qc.db", "st1")
    st_ = Station(
        source=ListSource(frames),
        detector=Detector.from_path(model),
        recipe=load_recipe(recipe_path),
        store=store,
        archive=ImageArchive(tmp_path / "images"),
        batch_id="B1",
    )
    return st_, store


def test_station_records_drift_as_an_event_and_keeps_judging(tmp_path: Path) -> None:
    # given parts a little darker than the model's good validation parts: they pass (dark p ~ 0.2 < 0.5),
    # yet every one scores above the card's good p90 (0.01)
    greyish = np.full((64, 64), 145, np.uint8)
    st_, store = _station(tmp_path, [greyish] * 40, {"window": 30})
    summary = st_.run()
    try:
        # then every part is still PASS (drift is advisory) and one score_drift event is in the chain
        assert summary.verdicts == {"PASS": 40}
        events = store.events(kind="score_drift")
        assert len(events) == 1
        assert events[0].data["window"] == 30 and events[0].data["drifting"] is True
        assert "p90" in (events[0].reason or "") or "p50" in (events[0].reason or "")
        assert st_.stats.drift is not None and st_.stats.drift.drifting
        assert store.verify().ok
    finally:
        store.close()


def test_station_refuses_a_card_with_malformed_quantiles(tmp_path: Path) -> None:
    model = build_model(tmp_path / "m.onnx", card_overrides={"good_scores": {"quantiles": {"half": 0.1}}})
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(f"product: widget\nmodel: {model}\n")
    store = Store.open(tmp_path / "qc.db", "st1")
    try:
        with pytest.raises(RecipeError, match=r"score drift.*drift: \{enabled: false\}"):
            Station(
                source=ListSource([]),
                detector=Detector.from_path(model),
                recipe=load_recipe(recipe_path),
                store=store,
                archive=ImageArchive(tmp_path / "images"),
                batch_id="B1",
            )
    finally:
        store.close()
