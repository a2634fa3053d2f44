"""The store's core scenarios on the real PostgreSQL (a fresh schema per test), and many stations at once.

The scenarios are the SQLite tests of ``tests/station/test_store.py`` run unchanged with ``db_path`` pointing
at PostgreSQL; the tamper tests that edit the SQLite file directly have PostgreSQL twins here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from qcstation.station import db
from qcstation.station.store import Store
from station.factories_store import Factory
from station.test_store import (  # noqa: F401  (fixtures and tests collected again, on PostgreSQL)
    chained,
    commit,
    open_b1,
    populated,
    store,
    test_add_event_is_chained_and_queued,
    test_batch_open_resume_close,
    test_batch_summary_counts_yield_and_pareto,
    test_batch_summary_of_an_empty_batch_on_hold,
    test_commit_of_nothing_writes_nothing,
    test_cursor_combines_with_filters,
    test_cursor_pages_have_no_gaps_or_duplicates_while_records_arrive,
    test_events_filters_and_cursor,
    test_every_record_is_queued_in_the_outbox_as_the_api_shows_it,
    test_hold_raised_in_a_commit_is_chained_after_its_record_and_holds_the_batch,
    test_inspection_filters,
    test_manual_hold_and_release_rules,
    test_readers_in_other_threads_while_the_writer_commits,
    test_resuming_with_another_product_or_recipe,
    test_retried_commit_stores_each_record_once,
    test_round_trip_pass_fail_error,
    test_serial_history_spans_stations,
    test_since_is_inclusive_and_until_exclusive,
    test_station_fault_and_release_inside_a_commit,
    test_station_restarted_mid_batch_picks_up_the_hold,
    test_verify_on_an_empty_store,
    test_verify_passes_on_an_intact_chain,
)

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def db_path(pg_url: str) -> str:
    """The store URL of the reused SQLite tests, here a fresh PostgreSQL schema."""
    return pg_url


def test_store_opens_on_postgresql(db_path: str) -> None:
    with Store.open(db_path, "st-1") as s:
        assert s.engine.dialect.name == "postgresql"
        assert s.verify().ok


def test_verify_names_an_edited_verdict_on_postgresql(db_path: str) -> None:
    with Store.open(db_path, "st-1") as s:
        _edit_and_verify(s)


def _edit_and_verify(s: Store) -> None:
    open_b1(s)
    f = Factory()
    ds = [f.decision() for _ in range(5)]
    commit(s, *ds)
    i = db.inspections
    with s.engine.begin() as conn:
        conn.execute(sa.update(i).where(i.c.id == ds[2].record_id).values(verdict="FAIL"))
    report = s.verify()
    assert not report.ok
    assert report.first_break is not None
    assert report.first_break.row_id == ds[2].record_id
    assert "edited" in report.first_break.problem


def test_two_stations_keep_their_own_chains_on_postgresql(db_path: str) -> None:
    with Store.open(db_path, "st-A") as a, Store.open(db_path, "st-B") as b:
        fa, fb = Factory(batch_id="A1"), Factory(batch_id="B1")
        for s, bid in ((a, "A1"), (b, "B1")):
            open_b1(s, bid)
        for _ in range(3):
            commit(a, fa.decision())
            commit(b, fb.decision())
        assert [r.seq for r in a.inspections()] == [2, 3, 4]
        report = a.verify()
        assert report.ok
        assert report.stations == ("st-A", "st-B")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src")])
    return env


@pytest.mark.slow
def test_four_station_processes_writing_one_postgresql(db_path: str) -> None:
    # given a migrated database (concurrent CREATE TABLE from several processes would race)
    from qcstation.station.migrations import upgrade

    upgrade(db_path)
    stations, n = [f"st-{k}" for k in range(4)], 1500
    # when four processes commit at full rate
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "station.plant.workers", "write", db_path, st, str(n)],
            env=_env(),
            cwd=ROOT,
        )
        for st in stations
    ]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    elapsed = time.monotonic() - t0
    # then every record is there, at its own station, in its own order, and every chain verifies
    with Store.open(db_path, "auditor") as s:
        report = s.verify()
        assert report.ok, report.describe()
        i, o = db.inspections, db.outbox
        with s.engine.connect() as conn:
            for st in stations:
                serials = list(conn.scalars(sa.select(i.c.serial).where(i.c.station == st).order_by(i.c.seq)))
                assert serials == [f"{st}-{k:06d}" for k in range(n)]
                batches = set(conn.scalars(sa.select(i.c.batch_id).where(i.c.station == st)))
                assert batches == {f"B-{st}"}
                queued = conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(o)
                    .where(o.c.station == st, o.c.topic == "inspections")
                )
                assert queued == n
    print(f"4 x {n} records in {elapsed:.1f} s ({4 * n / elapsed:.0f}/s)")
