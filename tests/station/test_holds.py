"""Batch holds: each rule at its boundary, evidence and suspects, dispositions, release, and invariants."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcstation.station.errors import BatchError, ReleaseError
from qcstation.station.holds import BatchMonitor
from qcstation.station.recipe import FailRateRule, HoldRules, PChartRule
from qcstation.station.types import (
    BatchStatus,
    Disposition,
    HoldRaised,
    Judgement,
    StationFault,
    Verdict,
)

T0 = datetime(2024, 5, 6, 8, 0, 0, tzinfo=UTC)

# -- factories ------------------------------------------------------------------------------------------


def passed() -> Judgement:
    return Judgement(Verdict.PASS)


def failed(critical: bool = False) -> Judgement:
    return Judgement(Verdict.FAIL, ("crack: 1 region",), ("crack",), critical)


def review() -> Judgement:
    return Judgement(Verdict.REVIEW, ("pit: class score 0.42 in review band [0.35, 0.50)",))


def error(msg: str = "cannot decode") -> Judgement:
    return Judgement(Verdict.ERROR, (msg,))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class Feeder:
    """Feeds judgements one second apart with record ids r0, r1, ...; remembers every result."""

    monitor: BatchMonitor
    n: int = 0

    def feed(self, *judgements: Judgement) -> list[tuple[str, Disposition, list[HoldRaised]]]:
        out = []
        for j in judgements:
            rid = f"r{self.n}"
            disposition, holds = self.monitor.observe(rid, j, at(self.n))
            self.n += 1
            out.append((rid, disposition, holds))
        return out

    def holds(self, *judgements: Judgement) -> list[HoldRaised]:
        return [h for _, _, hs in self.feed(*judgements) for h in hs]


def monitor(**rules: object) -> Feeder:
    rules.setdefault("critical_class", False)
    return Feeder(BatchMonitor("B1", HoldRules.model_validate(rules)))


def ids(rng: Iterable[int]) -> tuple[str, ...]:
    return tuple(f"r{i}" for i in rng)


# -- consecutive fails -----------------------------------------------------------------------------------


def test_k_minus_one_consecutive_fails_do_not_hold() -> None:
    f = monitor(consecutive_fails=3)
    assert f.holds(failed(), failed()) == []
    assert f.monitor.status is BatchStatus.OPEN


def test_k_consecutive_fails_hold_with_the_k_fails_as_evidence() -> None:
    # given k=3 and a pass then three fails
    f = monitor(consecutive_fails=3)
    # when fed
    holds = f.holds(passed(), failed(), failed(), failed())
    # then one hold fires on the third fail
    assert len(holds) == 1
    h = holds[0]
    assert (h.rule, h.evidence, h.batch_id, h.actor) == ("consecutive_fails", ids([1, 2, 3]), "B1", "station")
    assert h.at == at(3)
    assert "3 consecutive fails" in h.detail
    assert f.monitor.status is BatchStatus.HOLD
    assert f.monitor.hold == h


def test_a_pass_breaks_the_streak() -> None:
    f = monitor(consecutive_fails=3)
    assert f.holds(failed(), failed(), passed(), failed(), failed()) == []


def test_error_neither_counts_nor_breaks_the_streak() -> None:
    # given fails with an ERROR part between them
    f = monitor(consecutive_fails=3)
    holds = f.holds(failed(), failed(), error(), failed())
    # then the ERROR is skipped: the three fails hold, and the ERROR is not evidence
    assert [h.evidence for h in holds] == [ids([0, 1, 3])]


@pytest.mark.parametrize(("counts", "expected"), [(True, 1), (False, 0)])
def test_review_counts_as_fail_when_configured(counts: bool, expected: int) -> None:
    f = monitor(consecutive_fails=2, review_counts_as_fail=counts)
    assert len(f.holds(review(), failed())) == expected


# -- fail rate -------------------------------------------------------------------------------------------


def test_fail_rate_not_evaluated_before_the_window_is_full() -> None:
    f = monitor(fail_rate=FailRateRule(window=10, max_rate=0.3))
    assert f.holds(*[failed()] * 9) == []


def test_fail_rate_exactly_max_rate_does_not_hold() -> None:
    f = monitor(fail_rate=FailRateRule(window=10, max_rate=0.3))
    assert f.holds(*[failed()] * 3, *[passed()] * 7) == []


def test_fail_rate_above_max_rate_holds_with_the_fails_as_evidence() -> None:
    # given a window of 10 and 4 fails in it (0.4 > 0.3)
    f = monitor(fail_rate=FailRateRule(window=10, max_rate=0.3))
    results = f.feed(*[passed()] * 5, failed(), passed(), failed(), failed(), failed())
    holds = [h for _, _, hs in results for h in hs]
    # then it fires when the window fills, with the four fails as evidence
    assert len(holds) == 1
    assert holds[0].rule == "fail_rate"
    assert holds[0].evidence == ids([5, 7, 8, 9])
    assert "4/10" in holds[0].detail


def test_fail_rate_window_slides() -> None:
    # given 3 fails in the first 10 parts (no hold), then one more fail while the oldest fail is still inside
    f = monitor(fail_rate=FailRateRule(window=10, max_rate=0.3))
    assert f.holds(*[passed()] * 4, *[failed()] * 3, *[passed()] * 3) == []
    holds = f.holds(failed())
    assert [h.evidence for h in holds] == [ids([4, 5, 6, 10])]


def test_fail_rate_can_fire_on_a_passing_part_which_is_then_held() -> None:
    # given 4 fails among the first 9 parts: the 10th (a PASS) fills the window
    f = monitor(fail_rate=FailRateRule(window=10, max_rate=0.3))
    f.feed(*[failed()] * 4, *[passed()] * 5)
    [(_, disposition, holds)] = f.feed(passed())
    # then the hold fires on it and the part itself is held
    assert [h.rule for h in holds] == ["fail_rate"]
    assert disposition is Disposition.HOLD


# -- critical class --------------------------------------------------------------------------------------


def test_critical_fail_holds_at_once() -> None:
    f = monitor(critical_class=True)
    holds = f.holds(passed(), failed(critical=True))
    assert [(h.rule, h.evidence) for h in holds] == [("critical_class", ids([1]))]
    assert "crack" in holds[0].detail


def test_critical_rule_off() -> None:
    f = monitor(critical_class=False)
    assert f.holds(failed(critical=True)) == []


def test_non_critical_fail_does_not_trigger_critical_rule() -> None:
    f = monitor(critical_class=True)
    assert f.holds(failed(), failed()) == []


# -- p-chart ---------------------------------------------------------------------------------------------

PCHART = PChartRule(baseline_rate=0.1, subgroup=25, sigma=3.0)  # UCL = 0.1 + 3 * 0.06 = 0.28 = 7/25


def test_p_chart_fraction_on_ucl_does_not_signal() -> None:
    f = monitor(p_chart=PCHART)
    assert f.holds(*[failed()] * 7, *[passed()] * 18) == []


def test_p_chart_fraction_above_ucl_signals_at_subgroup_end() -> None:
    # given 8 fails in a subgroup of 25 (0.32 > 0.28)
    f = monitor(p_chart=PCHART)
    results = f.feed(*[failed()] * 8, *[passed()] * 17)
    # then nothing before the subgroup is complete, and the hold at its last part with the 8 fails
    assert all(not hs for _, _, hs in results[:-1])
    holds = results[-1][2]
    assert [(h.rule, h.evidence) for h in holds] == [("p_chart", ids(range(8)))]
    assert "UCL 0.28" in holds[0].detail


def test_p_chart_subgroups_do_not_overlap() -> None:
    # given 7 fails at the end of one subgroup and 7 at the start of the next
    f = monitor(p_chart=PCHART)
    # then neither subgroup signals, though a sliding window would
    assert f.holds(*[passed()] * 18, *[failed()] * 14, *[passed()] * 18) == []


# -- station fault ---------------------------------------------------------------------------------------


def test_error_fault_just_under_limit_does_not_hold() -> None:
    m = BatchMonitor("B1", HoldRules(station_fault_s=10))
    assert m.observe("e0", error(), at(0))[1] == []
    assert m.observe("e1", error(), at(9.999))[1] == []
    assert m.status is BatchStatus.OPEN


def test_error_fault_at_limit_holds_with_the_error_parts_as_evidence() -> None:
    # given ERROR parts over 10 s with a limit of 10 s
    m = BatchMonitor("B1", HoldRules(station_fault_s=10))
    m.observe("e0", error(), at(0))
    m.observe("e1", error(), at(5))
    disposition, holds = m.observe("e2", error("model crashed"), at(10))
    # then the third holds, and is still REJECTed
    assert [(h.rule, h.evidence) for h in holds] == [("station_fault", ("e0", "e1", "e2"))]
    assert disposition is Disposition.REJECT
    assert T0.isoformat() in holds[0].detail


def test_a_non_error_part_ends_the_fault() -> None:
    m = BatchMonitor("B1", HoldRules(station_fault_s=10))
    m.observe("e0", error(), at(0))
    m.observe("p1", passed(), at(6))
    assert m.observe("e2", error(), at(12))[1] == []
    assert m.tick(at(21.9)) == []
    assert [h.evidence for h in m.tick(at(22))] == [("e2",)]


def test_camera_fault_holds_on_tick_with_no_frames() -> None:
    # given the camera is lost at T0 and no frames arrive
    m = BatchMonitor("B1", HoldRules(station_fault_s=30))
    assert m.fault(StationFault("source", "camera lost: /dev/video0", at(0))) == []
    # when time passes
    assert m.tick(at(29.5)) == []
    holds = m.tick(at(30))
    # then the batch goes on hold, with no evidence and a detail saying what and since when
    assert len(holds) == 1
    h = holds[0]
    assert (h.rule, h.evidence, h.at) == ("station_fault", (), at(30))
    assert "camera lost: /dev/video0" in h.detail
    assert T0.isoformat() in h.detail
    assert m.status is BatchStatus.HOLD


def test_repeated_fault_report_does_not_restart_the_clock_and_can_fire() -> None:
    m = BatchMonitor("B1", HoldRules(station_fault_s=30))
    m.fault(StationFault("source", "camera lost", at(0)))
    holds = m.fault(StationFault("source", "camera lost", at(31)))
    assert [h.rule for h in holds] == ["station_fault"]


def test_recovered_fault_ends_it() -> None:
    m = BatchMonitor("B1", HoldRules(station_fault_s=30))
    m.fault(StationFault("source", "camera lost", at(0)))
    assert m.fault(StationFault("source", "camera back", at(10), recovered=True)) == []
    assert m.tick(at(100)) == []


def test_an_inspected_part_does_not_end_a_store_or_camera_fault() -> None:
    # given the store cannot be written since T0 while parts are still inspected (kept in memory)
    m = BatchMonitor("B1", HoldRules(station_fault_s=30))
    m.fault(StationFault("store", "disk I/O error", at(0)))
    m.observe("p1", passed(), at(10))
    # then the fault goes on and holds at its limit, while an ERROR-verdict fault of its own ended
    m.observe("e2", error(), at(12))
    m.observe("p3", passed(), at(14))
    holds = m.tick(at(30))
    assert [h.rule for h in holds] == ["station_fault"]
    assert "store fault: disk I/O error" in holds[0].detail and holds[0].evidence == ()


def test_the_oldest_ongoing_fault_is_the_one_reported() -> None:
    m = BatchMonitor("B1", HoldRules(station_fault_s=30))
    m.fault(StationFault("source", "camera lost", at(0)))
    m.fault(StationFault("store", "disk full", at(20)))
    m.fault(StationFault("source", "camera back", at(25), recovered=True))
    assert m.tick(at(49)) == []  # the store fault alone has lasted 29 s
    assert ["disk full" in h.detail for h in m.tick(at(50))] == [True]


def test_tick_without_fault_rule_never_holds() -> None:
    m = BatchMonitor("B1", HoldRules())
    m.fault(StationFault("source", "camera lost", at(0)))
    assert m.tick(at(10_000)) == []


# -- several rules, suspects, dispositions ---------------------------------------------------------------


def test_several_rules_at_once_first_in_order_wins_and_others_are_mentioned() -> None:
    # given a critical fail that is also the third consecutive fail
    f = monitor(critical_class=True, consecutive_fails=3)
    holds = f.holds(failed(), failed(), failed(critical=True))
    # then one hold, critical_class, mentioning consecutive_fails
    assert len(holds) == 1
    assert holds[0].rule == "critical_class"
    assert holds[0].evidence == ids([2])
    assert "consecutive_fails" in holds[0].detail


def test_suspects_are_the_last_parts_before_the_trigger_oldest_first() -> None:
    f = monitor(consecutive_fails=2, suspect_last=3)
    holds = f.holds(passed(), passed(), passed(), failed(), failed())
    assert holds[0].suspects == ids([1, 2, 3])


def test_suspects_fewer_than_k_when_few_parts_seen() -> None:
    f = monitor(consecutive_fails=1, suspect_last=5)
    assert f.holds(passed(), failed())[0].suspects == ids([0])


def test_no_suspects_by_default() -> None:
    f = monitor(consecutive_fails=1)
    assert f.holds(passed(), failed())[0].suspects == ()


def test_dispositions_before_and_after_hold() -> None:
    # given k=2
    f = monitor(consecutive_fails=2)
    results = f.feed(passed(), review(), failed(), failed(), passed(), review(), error(), passed())
    dispositions = [d for _, d, _ in results]
    # then passes before are accepted, rejects are rejected, passes after the hold are held
    assert dispositions == [
        Disposition.ACCEPT,
        Disposition.REJECT,
        Disposition.REJECT,
        Disposition.REJECT,
        Disposition.HOLD,
        Disposition.REJECT,
        Disposition.REJECT,
        Disposition.HOLD,
    ]
    # and only one hold was raised
    assert sum(len(hs) for _, _, hs in results) == 1


def test_counts_per_verdict() -> None:
    f = monitor()
    f.feed(passed(), passed(), failed(), review(), error())
    assert f.monitor.counts == {Verdict.PASS: 2, Verdict.FAIL: 1, Verdict.REVIEW: 1, Verdict.ERROR: 1}


def test_monitor_started_on_hold_holds_parts_and_can_be_released() -> None:
    m = BatchMonitor("B1", HoldRules(), status=BatchStatus.HOLD)
    assert m.observe("p0", passed(), T0) == (Disposition.HOLD, [])
    assert m.hold is None
    m.release("qe", "checked", at(1))
    assert m.status is BatchStatus.OPEN


# -- release, manual hold, close -------------------------------------------------------------------------


def test_release_not_on_hold_is_refused() -> None:
    m = BatchMonitor("B1", HoldRules())
    with pytest.raises(ReleaseError, match="not on hold"):
        m.release("qe", "all good", T0)


@pytest.mark.parametrize(("by", "reason"), [("qe", ""), ("qe", "   "), ("", "checked"), (" ", "checked")])
def test_release_needs_who_and_why(by: str, reason: str) -> None:
    f = monitor(consecutive_fails=1)
    f.holds(failed())
    with pytest.raises(ReleaseError):
        f.monitor.release(by, reason, at(5))
    assert f.monitor.status is BatchStatus.HOLD


def test_release_reopens_and_returns_event() -> None:
    f = monitor(consecutive_fails=1)
    f.holds(failed())
    ev = f.monitor.release("alice", "tool changed, parts re-checked", at(60))
    assert (ev.batch_id, ev.by, ev.reason, ev.at) == ("B1", "alice", "tool changed, parts re-checked", at(60))
    assert f.monitor.status is BatchStatus.OPEN
    assert f.monitor.hold is None
    assert f.feed(passed())[0][1] is Disposition.ACCEPT


def test_release_resets_consecutive_streak() -> None:
    f = monitor(consecutive_fails=3)
    f.holds(failed(), failed(), failed(), failed())
    f.monitor.release("qe", "checked", at(10))
    assert f.holds(failed(), failed()) == []
    assert [h.evidence for h in f.holds(failed())] == [ids([4, 5, 6])]


def test_release_resets_fail_rate_window() -> None:
    f = monitor(fail_rate=FailRateRule(window=4, max_rate=0.5))
    assert len(f.holds(failed(), failed(), failed(), passed())) == 1
    f.monitor.release("qe", "checked", at(10))
    # the window must fill again before it is evaluated
    assert f.holds(failed(), failed(), failed()) == []
    assert len(f.holds(passed())) == 1


def test_release_resets_p_chart_subgroup() -> None:
    f = monitor(p_chart=PChartRule(baseline_rate=0.1, subgroup=4, sigma=1.0))
    # given 3 fails of an unfinished subgroup of 4 (UCL 0.25), then a manual hold and its release
    assert f.holds(failed(), failed(), failed()) == []
    f.monitor.raise_manual("qe", "look", at(3))
    f.monitor.release("qe", "ok", at(4))
    # then the 3 fails are forgotten: the next 4 passes make a fresh subgroup that does not signal
    assert f.holds(*[passed()] * 4) == []


def test_release_restarts_an_ongoing_fault_clock() -> None:
    # given a camera lost long enough to hold
    m = BatchMonitor("B1", HoldRules(station_fault_s=30))
    m.fault(StationFault("source", "camera lost", at(0)))
    assert len(m.tick(at(30))) == 1
    # when released while the camera is still gone
    m.release("qe", "camera being replaced", at(100))
    # then the same fault does not re-fire at once, but does after another 30 s
    assert m.tick(at(101)) == []
    holds = m.tick(at(130))
    assert [(h.rule, h.evidence) for h in holds] == [("station_fault", ())]


def test_manual_hold() -> None:
    f = monitor(suspect_last=2)
    f.feed(passed(), passed(), passed())
    h = f.monitor.raise_manual("bob", "scratches seen by eye", at(5))
    assert (h.rule, h.actor, h.at, h.evidence, h.suspects) == ("manual", "bob", at(5), (), ids([1, 2]))
    assert "scratches seen by eye" in h.detail
    assert f.monitor.status is BatchStatus.HOLD
    assert f.monitor.hold == h


def test_manual_hold_refused_when_held_or_closed_or_no_reason() -> None:
    m = BatchMonitor("B1", HoldRules())
    with pytest.raises(BatchError, match="reason"):
        m.raise_manual("bob", " ", T0)
    m.raise_manual("bob", "look", T0)
    with pytest.raises(BatchError, match="HOLD"):
        m.raise_manual("bob", "again", T0)
    m.release("qe", "ok", at(1))
    m.close(at(2))
    with pytest.raises(BatchError, match="CLOSED"):
        m.raise_manual("bob", "late", at(3))


def test_close_while_held_is_refused() -> None:
    f = monitor(consecutive_fails=1)
    f.holds(failed())
    with pytest.raises(BatchError, match="release the hold first"):
        f.monitor.close(at(9))
    assert f.monitor.status is BatchStatus.HOLD


def test_closed_batch_refuses_parts_and_release() -> None:
    m = BatchMonitor("B1", HoldRules())
    m.close(T0)
    assert m.status is BatchStatus.CLOSED
    with pytest.raises(BatchError, match="closed"):
        m.observe("p0", passed(), at(1))
    with pytest.raises(ReleaseError):
        m.release("qe", "why", at(1))
    assert m.tick(at(2)) == []


# -- properties ------------------------------------------------------------------------------------------

judgements_st = st.sampled_from([passed(), failed(), failed(critical=True), review(), error()])
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("observe"), judgements_st, st.floats(0.0, 20.0)),
        st.tuples(st.just("tick"), st.none(), st.floats(0.0, 60.0)),
        st.tuples(st.just("fault"), st.booleans(), st.floats(0.0, 20.0)),
    ),
    max_size=80,
)
rules_st = st.builds(
    HoldRules,
    consecutive_fails=st.none() | st.integers(1, 5),
    fail_rate=st.none() | st.builds(FailRateRule, window=st.integers(2, 10), max_rate=st.floats(0.05, 0.95)),
    critical_class=st.booleans(),
    p_chart=st.none()
    | st.builds(
        PChartRule,
        baseline_rate=st.floats(0.01, 0.5),
        subgroup=st.integers(2, 10),
        sigma=st.floats(0.5, 3.0),
    ),
    station_fault_s=st.none() | st.floats(1.0, 100.0),
    suspect_last=st.integers(0, 4),
    review_counts_as_fail=st.booleans(),
)


def run_ops(m: BatchMonitor, ops: list[tuple[str, object, float]]) -> None:
    """Apply ops, checking after each that a hold never clears itself and held parts are never accepted."""
    t = T0
    for i, (op, arg, dt) in enumerate(ops):
        t += timedelta(seconds=dt)
        held_before = m.status is BatchStatus.HOLD
        if op == "observe":
            assert isinstance(arg, Judgement)
            disposition, holds = m.observe(f"r{i}", arg, t)
            if held_before:
                assert disposition in (Disposition.HOLD, Disposition.REJECT)
                assert holds == []
        elif op == "tick":
            holds = m.tick(t)
        else:
            assert isinstance(arg, bool)
            holds = m.fault(StationFault("source", "camera", t, recovered=arg))
        assert len(holds) <= 1
        if held_before:
            assert m.status is BatchStatus.HOLD
        if holds:
            assert m.status is BatchStatus.HOLD
            assert m.hold == holds[0]


@settings(max_examples=300, deadline=None)
@given(rules=rules_st, ops=ops_st)
def test_hold_never_clears_itself_and_held_parts_are_never_accepted(
    rules: HoldRules, ops: list[tuple[str, object, float]]
) -> None:
    run_ops(BatchMonitor("B1", rules), ops)


@settings(max_examples=200, deadline=None)
@given(rules=rules_st, before=ops_st, after=ops_st)
def test_invariants_hold_across_a_release(
    rules: HoldRules, before: list[tuple[str, object, float]], after: list[tuple[str, object, float]]
) -> None:
    m = BatchMonitor("B1", rules)
    run_ops(m, before)
    if m.status is BatchStatus.HOLD:
        m.release("qe", "checked", T0 + timedelta(days=1))
        assert m.status is BatchStatus.OPEN
    run_ops(m, after)


@settings(max_examples=200, deadline=None)
@given(
    ops=ops_st,
    suspect_last=st.integers(0, 4),
    review_counts_as_fail=st.booleans(),
)
def test_no_rules_no_holds(
    ops: list[tuple[str, object, float]], suspect_last: int, review_counts_as_fail: bool
) -> None:
    # given no hold rule at all (critical class and station fault off)
    m = BatchMonitor(
        "B1",
        HoldRules(
            critical_class=False, suspect_last=suspect_last, review_counts_as_fail=review_counts_as_fail
        ),
    )
    t = T0
    for i, (op, arg, dt) in enumerate(ops):
        t += timedelta(seconds=dt)
        if op == "observe":
            assert isinstance(arg, Judgement)
            disposition, holds = m.observe(f"r{i}", arg, t)
            if arg.verdict is Verdict.PASS:
                assert disposition is Disposition.ACCEPT
        elif op == "tick":
            holds = m.tick(t)
        else:
            assert isinstance(arg, bool)
            holds = m.fault(StationFault("source", "camera", t, recovered=arg))
        # then nothing ever holds the batch
        assert holds == []
        assert m.status is BatchStatus.OPEN
