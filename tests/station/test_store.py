"""Tests of the traceability store on real SQLite files."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcstation.station.errors import BatchError, ChainBroken, ReleaseError, StoreError
from qcstation.station.store import (
    InspectionRecord,
    Store,
    chain_hash,
    parse_utc,
    utc_iso,
)
from qcstation.station.types import (
    BatchStatus,
    Decision,
    Disposition,
    HoldRaised,
    HoldReleased,
    StationFault,
    Verdict,
)
from station.factories_store import PRODUCT, RECIPE_HASH, T0, Factory, new_id, raw, region

REF = "0f" * 32


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "qcstation.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store.open(db_path, "st-1")
    yield s
    s.close()


def open_b1(store: Store, batch_id: str = "B1") -> BatchStatus:
    return store.open_batch(batch_id, product=PRODUCT, recipe_hash=RECIPE_HASH, at=T0, actor="mes")


def commit(store: Store, *decisions: Decision, refs: dict[str, str | None] | None = None) -> None:
    store.commit(list(decisions), product=PRODUCT, recipe_hash=RECIPE_HASH, image_refs=refs or {})


# -- time format ------------------------------------------------------------------------------------------


def test_utc_iso_is_fixed_width_utc() -> None:
    cet = timezone(timedelta(hours=1))
    assert utc_iso(datetime(2025, 3, 1, 9, 0, tzinfo=cet)) == "2025-03-01T08:00:00.000000Z"
    assert parse_utc("2025-03-01T08:00:00.000000Z") == datetime(2025, 3, 1, 8, tzinfo=UTC)


def test_utc_iso_rejects_naive() -> None:
    with pytest.raises(ValueError, match="naive"):
        utc_iso(datetime(2025, 3, 1, 8, 0))


@given(
    st.datetimes(timezones=st.just(UTC), min_value=datetime(1000, 1, 1)),
    st.datetimes(timezones=st.just(UTC), min_value=datetime(1000, 1, 1)),
)
def test_utc_iso_text_sorts_like_time(a: datetime, b: datetime) -> None:
    assert (utc_iso(a) < utc_iso(b)) == (a < b)
    assert parse_utc(utc_iso(a)) == a


# -- round trip -------------------------------------------------------------------------------------------


def test_round_trip_pass_fail_error(store: Store) -> None:
    # Given a PASS with a sub-threshold region, a FAIL with two regions and an ERROR without inspection
    f = Factory()
    open_b1(store)
    ok = f.decision(Verdict.PASS, regions=(region(score=0.25),), serial="SN1")
    bad = f.decision(Verdict.FAIL, regions=(region(), region("dent", class_id=2, score=0.75)), serial="SN2")
    err = f.decision(Verdict.ERROR)
    # When they are committed together
    commit(store, ok, bad, err, refs={bad.record_id: REF, err.record_id: None})
    # Then each comes back as it went in
    r_ok, r_bad, r_err = (store.get_inspection(d.record_id) for d in (ok, bad, err))
    assert r_ok is not None and r_bad is not None and r_err is not None
    assert r_ok.verdict is Verdict.PASS and r_ok.disposition is Disposition.ACCEPT
    assert r_ok.regions == (region(score=0.25),)
    assert r_ok.serial == "SN1" and r_ok.frame_id == "part_0001.png" and r_ok.source == "cam0"
    assert r_ok.decided_at == utc_iso(ok.decided_at) and r_ok.captured_at == utc_iso(ok.frame.captured_at)
    assert (
        r_ok.model_name == "scratch-net" and r_ok.model_version == "1.2.0" and r_ok.model_sha256 == "ab" * 32
    )
    assert r_ok.timings == {
        "preprocess": 1.5,
        "infer": 12.25,
        "postprocess": 0.75,
        "queue": 0.5,
        "decide": 0.25,
    }
    assert r_ok.image_ref is None and r_ok.error is None
    assert r_ok.product == PRODUCT and r_ok.recipe_hash == RECIPE_HASH and r_ok.station == "st-1"
    assert r_bad.verdict is Verdict.FAIL and r_bad.disposition is Disposition.REJECT
    assert [r.class_name for r in r_bad.regions] == ["scratch", "dent"]
    assert r_bad.class_scores == {"scratch": 0.9, "dent": 0.75}
    assert r_bad.image_score == 0.9 and r_bad.image_ref == REF
    assert r_bad.reasons == ("scratch: score 0.90", "dent: score 0.75")
    assert r_err.verdict is Verdict.ERROR and r_err.error == "cannot decode: truncated"
    assert r_err.regions == () and r_err.image_score is None and r_err.model_name == ""
    assert [r.seq for r in (r_ok, r_bad, r_err)] == [2, 3, 4]  # seq 1 is batch_opened
    assert store.count_inspections() == 3
    assert store.verify().ok


def test_json_columns_parse_as_if_each_were_read_alone(store: Store, db_path: Path) -> None:
    # Given a FAIL whose class name (in reasons, regions and class_scores) holds JSON punctuation and
    # non-ASCII text: from_row parses the four JSON columns in one json.loads
    name = 'sc"],{ratch ≥'
    d = Factory().decision(Verdict.FAIL, regions=(region(name),))
    commit(store, d)
    # When the record is read back
    rec = store.get_inspection(d.record_id)
    # Then each field is what parsing its column alone gives
    con = sqlite3.connect(db_path)
    con.row_factory = sqlite3.Row
    row = con.execute("SELECT * FROM inspections WHERE id = ?", (d.record_id,)).fetchone()
    con.close()
    assert rec is not None
    assert rec.reasons == tuple(json.loads(row["reasons"])) == (f"{name}: score 0.90",)
    assert rec.regions == (region(name),) and [r.to_dict() for r in rec.regions] == json.loads(row["regions"])
    assert rec.class_scores == json.loads(row["class_scores"]) == {"scratch": 0.1, "dent": 0.05, name: 0.9}
    assert rec.timings == json.loads(row["timings"])


def test_every_record_is_queued_in_the_outbox_as_the_api_shows_it(store: Store) -> None:
    f = Factory()
    d1, d2 = f.decision(), f.decision(Verdict.FAIL, regions=(region(),))
    commit(store, d1, d2)
    items = store.outbox_pending()
    assert [(i.topic, i.record_id) for i in items] == [
        ("inspections", d1.record_id),
        ("inspections", d2.record_id),
    ]
    rec = store.get_inspection(d2.record_id)
    assert rec is not None and json.loads(items[1].payload) == rec.to_dict()
    assert store.outbox_mark_delivered([items[0].id], at=T0) == 1
    assert [i.record_id for i in store.outbox_pending()] == [d2.record_id]


def test_commit_of_nothing_writes_nothing(store: Store) -> None:
    commit(store)
    assert store.count_inspections() == 0 and store.events() == []


def test_retried_commit_stores_each_record_once(store: Store) -> None:
    f = Factory()
    open_b1(store)
    rid = new_id()
    d1 = f.decision(Verdict.FAIL, regions=(region(),), record_id=rid, events=(f.hold((rid,)),))
    d2 = f.decision()
    commit(store, d1)
    commit(store, d1, d2)  # the caller could not tell whether the first one landed
    assert [r.id for r in store.inspections()] == [d1.record_id, d2.record_id]
    assert len(store.holds()) == 1 and len(store.events(kind="hold_raised")) == 1
    assert store.verify().ok


def test_decision_with_naive_time_is_refused_before_anything_is_written(store: Store) -> None:
    f = Factory()
    good = f.decision()
    bad = f.decision()
    object.__setattr__(bad, "decided_at", datetime(2025, 3, 1, 8, 0))
    with pytest.raises(ValueError, match="naive"):
        commit(store, good, bad)
    assert store.count_inspections() == 0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"record_id": "not-a-uuid"}, "UUID record id"),
        ({"record_id": "{" + new_id() + "}"}, "UUID record id"),
        ({"batch_id": "B" * 129}, "batch id"),
    ],
)
def test_decision_that_cannot_be_stored_is_refused(store: Store, change: dict[str, str], match: str) -> None:
    d = Factory().decision(**change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        commit(store, d)
    assert store.count_inspections() == 0


def test_bad_image_ref_is_refused(store: Store) -> None:
    d = Factory().decision()
    with pytest.raises(ValueError, match="64 lowercase hex"):
        commit(store, d, refs={d.record_id: "../../etc/passwd"})


# -- holds and events inside a commit ---------------------------------------------------------------------


def test_hold_raised_in_a_commit_is_chained_after_its_record_and_holds_the_batch(store: Store) -> None:
    # Given an open batch and two fails, the second raising a hold
    f = Factory()
    open_b1(store)
    d1 = f.decision(Verdict.FAIL, regions=(region(),))
    rid = new_id()
    d2 = f.decision(Verdict.FAIL, regions=(region(),), record_id=rid, events=(f.hold((d1.record_id, rid)),))
    # When both are committed, with a part decided after the hold
    d3 = f.decision(Verdict.PASS, disposition=Disposition.HOLD)
    commit(store, d1, d2, d3)
    # Then the batch is on hold, the hold names its evidence, and the event follows its record in the chain
    batch = store.get_batch("B1")
    assert batch is not None and batch.status is BatchStatus.HOLD
    (hold,) = store.holds(batch_id="B1", open_only=True)
    assert hold.rule == "consecutive_fails" and hold.evidence == (d1.record_id, d2.record_id)
    assert hold.suspects == (d1.record_id,) and hold.raised_by == "station" and hold.is_open
    (ev,) = store.events(kind="hold_raised")
    assert ev.id == hold.hold_id and ev.batch_id == "B1" and ev.reason == hold.detail
    rec2 = store.get_inspection(d2.record_id)
    rec3 = store.get_inspection(d3.record_id)
    assert rec2 is not None and rec3 is not None
    assert ev.seq == rec2.seq + 1 and rec3.seq == ev.seq + 1
    assert rec3.disposition is Disposition.HOLD
    topics = [(i.topic, i.record_id) for i in store.outbox_pending()]
    assert topics.index(("events", ev.id)) == topics.index(("inspections", d2.record_id)) + 1
    # When a quality engineer releases it
    rel_id = store.record_hold_released(HoldReleased("B1", "qe.anna", "scratches were dust", f.now()))
    # Then the batch is open again and the hold carries its release
    batch = store.get_batch("B1")
    assert batch is not None and batch.status is BatchStatus.OPEN
    (hold,) = store.holds(batch_id="B1")
    assert not hold.is_open and hold.released_by == "qe.anna" and hold.release_reason == "scratches were dust"
    (rel,) = store.events(kind="hold_released")
    assert rel.id == rel_id and rel.data == {"holds": [hold.hold_id]}
    assert store.holds(open_only=True) == []
    assert store.verify().ok


def test_station_fault_and_release_inside_a_commit(store: Store) -> None:
    f = Factory()
    open_b1(store)
    store.record_hold_raised(f.hold((), rule="manual"))
    fault = StationFault("source", "camera lost for 3.2 s", f.now())
    released = HoldReleased("B1", "qe.bo", "checked", f.now())
    d = f.decision(Verdict.ERROR, events=(fault, released))
    commit(store, d)
    kinds = [e.kind for e in store.events()]
    assert kinds == ["batch_opened", "hold_raised", "station_fault", "hold_released"]
    (fault_ev,) = store.events(kind="station_fault")
    assert fault_ev.reason == "camera lost for 3.2 s" and fault_ev.data == {"kind": "source"}
    assert fault_ev.batch_id == "B1"
    batch = store.get_batch("B1")
    assert batch is not None and batch.status is BatchStatus.OPEN
    assert store.verify().ok


def test_manual_hold_and_release_rules(store: Store) -> None:
    f = Factory()
    with pytest.raises(BatchError, match="no batch"):
        store.record_hold_raised(f.hold(()))
    open_b1(store)
    with pytest.raises(ReleaseError, match="not on hold"):
        store.record_hold_released(HoldReleased("B1", "qe", "why", f.now()))
    hold_id = store.record_hold_raised(
        HoldRaised("B1", "manual", "suspicious lot", (), (), f.now(), "qe.anna")
    )
    assert store.holds()[0].hold_id == hold_id and store.holds()[0].raised_by == "qe.anna"
    with pytest.raises(ReleaseError, match="reason"):
        store.record_hold_released(HoldReleased("B1", "qe", "  ", f.now()))
    with pytest.raises(ReleaseError, match="no batch"):
        store.record_hold_released(HoldReleased("B9", "qe", "why", f.now()))
    store.record_hold_released(HoldReleased("B1", "qe", "why", f.now()))
    store.close_batch("B1", at=f.now(), actor="mes")
    with pytest.raises(BatchError, match="closed"):
        store.record_hold_raised(f.hold(()))
    assert store.verify().ok


def test_add_event_is_chained_and_queued(store: Store) -> None:
    eid = store.add_event(
        "review_override",
        at=T0,
        actor="qe.anna",
        batch_id="B1",
        reason="glare, not a scratch",
        data={"record": "r1", "from": "FAIL", "to": "PASS"},
    )
    (ev,) = store.events()
    assert ev.id == eid and ev.kind == "review_override" and ev.actor == "qe.anna" and ev.seq == 1
    assert ev.data == {"record": "r1", "from": "FAIL", "to": "PASS"} and ev.at == utc_iso(T0)
    assert json.loads(store.outbox_pending(topic="events")[0].payload) == ev.to_dict()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "hold_released"}, "record_hold_released"),
        ({"kind": "batch_opened"}, "open_batch"),
        ({"kind": ""}, "non-empty event kind"),
        ({"actor": ""}, "actor"),
        ({"at": datetime(2025, 1, 1)}, "naive"),
        ({"data": {"x": object()}}, "not JSON"),
        ({"data": {"x": float("nan")}}, "not JSON"),
    ],
)
def test_add_event_refuses(store: Store, kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"kind": "model_loaded", "at": T0, "actor": "station", **kwargs}
    kind = args.pop("kind")
    with pytest.raises(ValueError, match=match):
        store.add_event(kind, **args)  # type: ignore[arg-type]
    assert store.events() == []


# -- batches ----------------------------------------------------------------------------------------------


def test_batch_open_resume_close(store: Store) -> None:
    assert store.open_batch(
        "B1", product=PRODUCT, recipe_hash=RECIPE_HASH, at=T0, actor="mes", planned_qty=500
    ) == (BatchStatus.OPEN)
    b = store.get_batch("B1")
    assert b is not None and b.planned_qty == 500 and b.opened_by == "mes" and b.opened_at == utc_iso(T0)
    # a restarted station resumes the batch without a second batch_opened
    assert open_b1(store) is BatchStatus.OPEN
    assert [e.kind for e in store.events()] == ["batch_opened"]
    store.close_batch("B1", at=T0 + timedelta(hours=1), actor="mes")
    b = store.get_batch("B1")
    assert (
        b is not None and b.status is BatchStatus.CLOSED and b.closed_at == utc_iso(T0 + timedelta(hours=1))
    )
    assert store.events(kind="batch_closed")[0].data == {"parts": 0}
    with pytest.raises(BatchError, match="closed"):
        open_b1(store)
    with pytest.raises(BatchError, match="already closed"):
        store.close_batch("B1", at=T0, actor="mes")
    assert store.get_batch("nope") is None
    with pytest.raises(BatchError, match="no batch"):
        store.close_batch("nope", at=T0, actor="mes")


def test_station_restarted_mid_batch_picks_up_the_hold(db_path: Path) -> None:
    f = Factory()
    with Store.open(db_path, "st-1") as first:
        open_b1(first)
        rid = new_id()
        commit(first, f.decision(Verdict.FAIL, record_id=rid, events=(f.hold((rid,)),), regions=(region(),)))
    with Store.open(db_path, "st-1") as second:
        assert open_b1(second) is BatchStatus.HOLD
        with pytest.raises(BatchError, match="HOLD"):
            second.close_batch("B1", at=f.now(), actor="mes")
        assert len(second.holds(open_only=True)) == 1
        assert second.verify().ok


def test_resuming_with_another_product_or_recipe(store: Store) -> None:
    open_b1(store)
    with pytest.raises(BatchError, match="product"):
        store.open_batch("B1", product="other", recipe_hash=RECIPE_HASH, at=T0, actor="mes")
    assert (
        store.open_batch("B1", product=PRODUCT, recipe_hash="ee" * 32, at=T0, actor="qe") is BatchStatus.OPEN
    )
    (ev,) = store.events(kind="recipe_changed")
    assert ev.data == {"old": RECIPE_HASH, "new": "ee" * 32}
    b = store.get_batch("B1")
    assert b is not None and b.recipe_hash == "ee" * 32


def test_batch_summary_counts_yield_and_pareto(store: Store) -> None:
    f = Factory()
    open_b1(store)
    scratch, dent, chip = region(), region("dent", class_id=2), region("chip", class_id=3)
    decisions = [
        f.decision(),
        f.decision(),
        f.decision(),
        f.decision(Verdict.FAIL, regions=(scratch, scratch, dent)),
        f.decision(Verdict.FAIL, regions=(scratch,)),
        f.decision(Verdict.FAIL, regions=(dent, chip)),
        f.decision(Verdict.FAIL, regions=(scratch,)),
        f.decision(Verdict.REVIEW, regions=(chip,)),  # not a FAIL: not in the Pareto
        f.decision(Verdict.ERROR),
        f.decision(Verdict.PASS, batch_id="B2"),  # another batch
    ]
    commit(store, *decisions)
    s = store.batch_summary("B1")
    assert s["total"] == 9
    assert s["verdicts"] == {"PASS": 3, "FAIL": 4, "REVIEW": 1, "ERROR": 1}
    assert s["dispositions"] == {"ACCEPT": 3, "REJECT": 6, "HOLD": 0}
    assert s["yield"] == pytest.approx(3 / 9, abs=1e-6)
    assert [(p["class_name"], p["parts"], p["regions"]) for p in s["pareto"]] == [
        ("scratch", 3, 4),
        ("dent", 2, 2),
        ("chip", 1, 1),
    ]
    assert s["pareto"][0]["share"] == 0.75 and s["pareto"][-1]["cumulative_share"] == 1.5
    assert s["hold"] == {"on_hold": False, "holds_total": 0, "open": []}
    assert s["batch"]["status"] == "OPEN"
    with pytest.raises(BatchError, match="no batch"):
        store.batch_summary("B2")  # records without a batches row


def test_batch_summary_of_an_empty_batch_on_hold(store: Store) -> None:
    open_b1(store)
    store.record_hold_raised(HoldRaised("B1", "manual", "check", (), (), T0, "qe"))
    s = store.batch_summary("B1")
    assert s["total"] == 0 and s["yield"] is None and s["pareto"] == []
    assert s["hold"]["on_hold"] and s["hold"]["holds_total"] == 1 and s["hold"]["open"][0]["rule"] == "manual"


# -- queries ----------------------------------------------------------------------------------------------


@pytest.fixture
def populated(store: Store) -> tuple[Store, list[InspectionRecord]]:
    f = Factory(step=timedelta(minutes=1))
    plan = [
        ("B1", Verdict.PASS, "SN1"),
        ("B1", Verdict.FAIL, "SN2"),
        ("B2", Verdict.PASS, "SN1"),
        ("B1", Verdict.REVIEW, None),
        ("B2", Verdict.ERROR, "SN3"),
        ("B1", Verdict.PASS, "SN4"),
        ("B2", Verdict.FAIL, "SN1"),
        ("B1", Verdict.PASS, None),
    ]
    for batch, verdict, serial in plan:
        regions = (region(),) if verdict in (Verdict.FAIL, Verdict.REVIEW) else ()
        disposition = Disposition.HOLD if serial == "SN4" else None
        commit(
            store,
            f.decision(verdict, regions=regions, serial=serial, batch_id=batch, disposition=disposition),
        )
    return store, store.inspections(limit=1000)


T_MID = T0 + timedelta(minutes=4)  # the 4th record's decided_at


@pytest.mark.parametrize(
    ("kwargs", "keep"),
    [
        ({}, lambda r: True),
        ({"batch_id": "B2"}, lambda r: r.batch_id == "B2"),
        ({"serial": "SN1"}, lambda r: r.serial == "SN1"),
        ({"verdict": "FAIL"}, lambda r: r.verdict is Verdict.FAIL),
        ({"verdict": Verdict.ERROR}, lambda r: r.verdict is Verdict.ERROR),
        ({"disposition": "HOLD"}, lambda r: r.disposition is Disposition.HOLD),
        ({"disposition": "REJECT"}, lambda r: r.disposition is Disposition.REJECT),
        ({"since": T_MID}, lambda r: r.decided_at >= utc_iso(T_MID)),
        ({"until": T_MID}, lambda r: r.decided_at < utc_iso(T_MID)),
        (
            {"batch_id": "B1", "verdict": "PASS", "since": T_MID},
            lambda r: r.batch_id == "B1" and r.verdict == "PASS" and r.decided_at >= utc_iso(T_MID),
        ),
    ],
)
def test_inspection_filters(
    populated: tuple[Store, list[InspectionRecord]], kwargs: dict[str, object], keep: object
) -> None:
    store, everything = populated
    got = store.inspections(**kwargs)  # type: ignore[arg-type]
    expected = [r for r in everything if keep(r)]  # type: ignore[operator]
    assert expected, "the table must select something"
    assert [r.id for r in got] == [r.id for r in expected]


def test_since_is_inclusive_and_until_exclusive(populated: tuple[Store, list[InspectionRecord]]) -> None:
    store, everything = populated
    t = parse_utc(everything[3].decided_at)
    assert store.inspections(since=t)[0].id == everything[3].id
    assert store.inspections(until=t)[-1].id == everything[2].id


def test_cursor_pages_have_no_gaps_or_duplicates_while_records_arrive(store: Store) -> None:
    f = Factory()
    commit(store, *(f.decision() for _ in range(5)))
    seen: list[str] = []
    after: str | None = None
    for page_no in range(20):
        page = store.inspections(after=after, limit=3)
        if not page:
            break
        seen += [r.id for r in page]
        after = page[-1].id
        if page_no < 3:  # the station keeps committing between the pages
            commit(store, f.decision(), f.decision(Verdict.FAIL, regions=(region(),)))
    assert len(seen) == len(set(seen)) == 11
    assert seen == [r.id for r in store.inspections(limit=1000)]


def test_cursor_combines_with_filters(populated: tuple[Store, list[InspectionRecord]]) -> None:
    store, _ = populated
    first = store.inspections(batch_id="B1", limit=2)
    rest = store.inspections(batch_id="B1", after=first[-1].id)
    assert [r.id for r in first + rest] == [r.id for r in store.inspections(batch_id="B1")]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"after": "no-such-id"}, "unknown cursor"),
        ({"verdict": "MAYBE"}, "MAYBE"),
        ({"disposition": "KEEP"}, "KEEP"),
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"since": datetime(2025, 1, 1)}, "naive"),
    ],
)
def test_inspection_query_refuses(store: Store, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        store.inspections(**kwargs)  # type: ignore[arg-type]


def test_events_filters_and_cursor(store: Store) -> None:
    open_b1(store)
    ids = [store.add_event("model_loaded", at=T0, actor="station", data={"n": n}) for n in range(5)]
    store.add_event("station_fault", at=T0, actor="station", batch_id="B1", reason="camera lost")
    assert [e.id for e in store.events(kind="model_loaded")] == ids
    assert [e.kind for e in store.events(batch_id="B1")] == ["batch_opened", "station_fault"]
    page1 = store.events(kind="model_loaded", limit=2)
    page2 = store.events(kind="model_loaded", after=page1[-1].id, limit=10)
    assert [e.id for e in page1 + page2] == ids
    with pytest.raises(ValueError, match="unknown cursor"):
        store.events(after="nope")


def test_serial_history_spans_stations(db_path: Path) -> None:
    with Store.open(db_path, "st-1") as a, Store.open(db_path, "st-2") as b:
        fa, fb = Factory(), Factory(start=T0 + timedelta(seconds=1.5))
        commit(a, fa.decision(serial="SN7"), fa.decision(serial="SN8"))
        commit(b, fb.decision(Verdict.FAIL, regions=(region(),), serial="SN7"))
        commit(a, fa.decision(serial="SN7"))
        hist = a.serial_history("SN7")
        assert [(r.station, r.verdict) for r in hist] == [
            ("st-1", "PASS"),
            ("st-2", "FAIL"),
            ("st-1", "PASS"),
        ]
        assert [r.decided_at for r in hist] == sorted(r.decided_at for r in hist)
        assert [r.serial for r in a.inspections(serial="SN7")] == ["SN7", "SN7"]  # own station only
        assert a.serial_history("none") == []


def test_queries_return_frozen_dataclasses(populated: tuple[Store, list[InspectionRecord]]) -> None:
    _, everything = populated
    rec = everything[0]
    with pytest.raises(AttributeError):
        rec.verdict = Verdict.FAIL  # type: ignore[misc]
    assert type(rec) is InspectionRecord


def test_readers_in_other_threads_while_the_writer_commits(store: Store) -> None:
    f = Factory()
    stop = threading.Event()
    errors: list[BaseException] = []
    counts: list[int] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                counts.append(len(store.inspections(limit=10_000)))
                store.verify().raise_if_broken()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(40):
            commit(store, *(f.decision() for _ in range(5)))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert counts == sorted(counts) or len(threads) > 1  # each reader sees a growing table
    assert store.count_inspections() == 200
    assert store.verify().ok


# -- tamper evidence --------------------------------------------------------------------------------------


@pytest.fixture
def chained(db_path: Path) -> Iterator[tuple[Store, list[str]]]:
    """A store with batch_opened (seq 1), five records (seq 2..6) and an event (seq 7)."""
    s = Store.open(db_path, "st-1")
    f = Factory()
    open_b1(s)
    ds = [
        f.decision(Verdict.FAIL if n % 2 else Verdict.PASS, regions=(region(),) if n % 2 else ())
        for n in range(5)
    ]
    commit(s, *ds)
    s.add_event("model_loaded", at=f.now(), actor="station", data={"model": "scratch-net"})
    yield s, [d.record_id for d in ds]
    s.close()


def test_verify_passes_on_an_intact_chain(chained: tuple[Store, list[str]]) -> None:
    store, _ = chained
    report = store.verify()
    assert report.ok and report.checked == 7 and report.first_break is None and report.stations == ("st-1",)
    assert "7 rows" in report.describe()
    report.raise_if_broken()


def test_chain_hash_definition(chained: tuple[Store, list[str]]) -> None:
    store, ids = chained
    rec = store.get_inspection(ids[0])
    assert rec is not None
    with raw(Path(store.url)) as conn:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM inspections WHERE id = ?", (ids[0],)).fetchone())
    body = {k: v for k, v in row.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    import hashlib

    assert (
        rec.hash
        == hashlib.sha256((row["prev_hash"] + "\n" + canonical).encode()).hexdigest()
        == chain_hash(row)
    )
    first = store.events()[0]
    assert first.seq == 1 and first.prev_hash == "0" * 64 and rec.prev_hash == first.hash


def test_verify_names_an_edited_verdict(chained: tuple[Store, list[str]]) -> None:
    store, ids = chained
    with raw(Path(store.url)) as conn:
        conn.execute(
            "UPDATE inspections SET verdict = 'PASS', disposition = 'ACCEPT' WHERE id = ?", (ids[1],)
        )
    report = store.verify()
    assert not report.ok and report.station == "st-1"
    assert report.first_break == ("inspections", ids[1], 3, "hash mismatch (row edited)")
    with pytest.raises(ChainBroken, match=ids[1]):
        report.raise_if_broken()


def test_verify_names_a_deleted_row(chained: tuple[Store, list[str]]) -> None:
    store, ids = chained
    with raw(Path(store.url)) as conn:
        conn.execute("DELETE FROM inspections WHERE id = ?", (ids[2],))
    b = store.verify().first_break
    assert b is not None
    assert (b.table, b.row_id, b.seq) == ("inspections", ids[3], 5)
    assert b.problem == "seq gap: expected 4, got 5 (row deleted)"


def test_verify_notices_the_newest_row_deleted(chained: tuple[Store, list[str]]) -> None:
    store, _ = chained
    with raw(Path(store.url)) as conn:
        conn.execute("DELETE FROM events WHERE seq = 7")
    b = store.verify().first_break
    assert b is not None and b.table == "chain_head" and b.seq == 7
    assert "last row is seq 6" in b.problem


def test_verify_names_swapped_seqs(chained: tuple[Store, list[str]]) -> None:
    store, ids = chained
    with raw(Path(store.url)) as conn:
        conn.execute("UPDATE inspections SET seq = -1 WHERE id = ?", (ids[0],))
        conn.execute("UPDATE inspections SET seq = 2 WHERE id = ?", (ids[1],))
        conn.execute("UPDATE inspections SET seq = 3 WHERE id = ?", (ids[0],))
    b = store.verify().first_break
    assert b is not None and (b.table, b.row_id, b.seq) == ("inspections", ids[1], 2)
    assert b.problem == "hash mismatch (row edited)"


def test_verify_names_an_edited_event(chained: tuple[Store, list[str]]) -> None:
    store, _ = chained
    ev = store.events(kind="batch_opened")[0]
    with raw(Path(store.url)) as conn:
        conn.execute("UPDATE events SET actor = 'someone-else' WHERE id = ?", (ev.id,))
    assert store.verify().first_break == ("events", ev.id, 1, "hash mismatch (row edited)")


def test_a_rehashed_edit_breaks_the_link_to_the_next_row(chained: tuple[Store, list[str]]) -> None:
    # A forger who recomputes the edited row's hash still breaks the next row's prev_hash.
    store, ids = chained
    with raw(Path(store.url)) as conn:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM inspections WHERE id = ?", (ids[1],)).fetchone())
        row["verdict"] = "PASS"
        conn.execute(
            "UPDATE inspections SET verdict = 'PASS', hash = ? WHERE id = ?", (chain_hash(row), ids[1])
        )
    assert store.verify().first_break == (
        "inspections",
        ids[2],
        4,
        "prev_hash does not match the previous row",
    )


def test_verify_on_an_empty_store(store: Store) -> None:
    report = store.verify()
    assert report.ok and report.checked == 0


def test_two_stations_on_one_file_keep_their_own_chains(db_path: Path) -> None:
    with Store.open(db_path, "st-A") as a, Store.open(db_path, "st-B") as b:
        fa, fb = Factory(batch_id="A1"), Factory(batch_id="B1")
        open_b1(a, "A1")
        open_b1(b, "B1")
        for _ in range(3):
            commit(a, fa.decision(), fa.decision(Verdict.FAIL, regions=(region(),)))
            commit(b, fb.decision())
            b.add_event("model_loaded", at=fb.now(), actor="station")
        # the same batch id at two stations is two batches
        open_b1(b, "A1")
        assert [r.seq for r in a.inspections()] == [2, 3, 4, 5, 6, 7]
        assert [r.seq for r in b.inspections()] == [2, 4, 6]
        assert a.count_inspections() == 6 and b.count_inspections() == 3
        report = a.verify()
        assert report.ok and report.stations == ("st-A", "st-B") and report.checked == 7 + 8
        victim = b.inspections()[1]
        with raw(db_path) as conn:
            conn.execute("UPDATE inspections SET serial = 'X' WHERE id = ?", (victim.id,))
        report = a.verify()
        assert not report.ok and report.station == "st-B"
        assert report.first_break is not None and report.first_break.row_id == victim.id


# -- opening and failing ----------------------------------------------------------------------------------


def test_open_creates_the_directory_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "q.db"
    with Store.open(str(path), "st-1") as s:
        assert s.station_id == "st-1" and s.url == str(path)
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"


@pytest.mark.parametrize(("mode", "level"), [("FULL", 2), ("NORMAL", 1)])
def test_commits_are_synced_as_configured(tmp_path: Path, mode: str, level: int) -> None:
    # FULL (the default) syncs the WAL at every commit, so a signalled record survives a power cut
    kw = {} if mode == "FULL" else {"synchronous": mode}
    with Store.open(tmp_path / "q.db", "st-1", **kw) as s, s.engine.connect() as conn:  # type: ignore[arg-type]
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level


def test_an_unknown_synchronous_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        Store.open(tmp_path / "q.db", "st-1", synchronous="OFF")  # type: ignore[arg-type]


def test_open_accepts_a_sqlalchemy_url(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path}/u.db", "st-1") as s:
        commit(s, Factory().decision())
        assert s.count_inspections() == 1


def test_unwritable_directory_is_a_clear_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory should be")
    with pytest.raises(
        StoreError, match=r"data directory .*not-a-dir/data is not writable: Not a directory"
    ) as e:
        Store.open(blocker / "data" / "q.db", "st-1")
    assert e.value.code == "store"


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"data directory /proc/qcstation-\w+ is not writable"):
        Store.open(Path("/proc/qcstation-test/q.db"), "st-1")


def test_read_only_database_is_refused_at_open(db_path: Path) -> None:
    Store.open(db_path, "st-1").close()
    with pytest.raises(StoreError, match="readonly"):
        Store.open(f"sqlite:///file:{db_path}?mode=ro&uri=true", "st-1")


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a database"):
        Store.open(junk, "st-1")


def test_newer_schema_is_refused(db_path: Path) -> None:
    Store.open(db_path, "st-1").close()
    with raw(db_path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        Store.open(db_path, "st-1")


def test_locked_store_raises_and_the_retry_loses_nothing(db_path: Path) -> None:
    # Given a store with committed records and another process holding the write lock
    f = Factory()
    s = Store.open(db_path, "st-1", busy_timeout_ms=50)
    first = [f.decision(), f.decision()]
    commit(s, *first)
    pending = [f.decision(Verdict.FAIL, regions=(region(),)), f.decision()]
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        # When the writer commits, it fails with StoreError naming the cause
        with pytest.raises(StoreError, match="locked"):
            commit(s, *pending)
        with pytest.raises(StoreError, match="locked"):
            s.add_event("model_loaded", at=T0, actor="station")
        # and readers still see what was committed
        assert [r.id for r in s.inspections()] == [d.record_id for d in first]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # Then the retry of the same decisions succeeds and nothing is lost or doubled
    commit(s, *pending)
    assert [r.id for r in s.inspections()] == [d.record_id for d in first + pending]
    assert s.verify().ok
    s.close()


def test_empty_station_id_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="station id"):
        Store.open(db_path, "")


@pytest.mark.parametrize(
    ("column", "index"),
    [("batch_id", "ix_inspections_station_batch_seq"), ("serial", "ix_inspections_station_serial_seq")],
)
def test_filtered_list_pages_use_an_index_not_a_chain_scan(tmp_path: Path, column: str, index: str) -> None:
    # a list page filtered by batch or serial, in chain order, must be an index range scan (docs/bench-api.md)
    import sqlite3

    Store.open(tmp_path / "s.db", "st-1").close()
    with sqlite3.connect(tmp_path / "s.db") as c:
        plan = " ".join(
            str(row[-1])
            for row in c.execute(
                f"explain query plan select id from inspections where station = ? and {column} = ? "
                "and seq > ? order by seq limit 50",
                ("st-1", "x", 0),
            )
        )
    assert index in plan
    assert "TEMP B-TREE" not in plan
