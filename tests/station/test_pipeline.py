"""The whole station pipeline on real files, a real onnxruntime model and a real SQLite store."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from model_factory import part_image
from qcstation.inspect.detector import Detector, Outputs, Prepared
from qcstation.inspect.errors import InferenceError
from qcstation.inspect.types import Frame, Inspection
from qcstation.station.archive import ImageArchive
from qcstation.station.errors import RecipeError, ReleaseError, StoreError
from qcstation.station.pipeline import Station
from qcstation.station.recipe import LoadedRecipe, load_recipe
from qcstation.station.sources import FolderSource, ListSource
from qcstation.station.store import Store
from qcstation.station.types import (
    BatchStatus,
    Decision,
    HoldRaised,
    HoldReleased,
    Judgement,
    StationFault,
    Verdict,
)

GOOD = part_image((96, 96))
BAD = part_image((96, 96), blobs=((48, 48, 8),))


def write_recipe(tmp_path: Path, model: Path, **overrides: Any) -> LoadedRecipe:
    data: dict[str, Any] = {
        "product": "widget",
        "model": str(model),
        "mm_per_px": 0.05,
        "classes": {"dark": {"min_area_px": 20}},
        "holds": {"consecutive_fails": 3, "suspect_last": 2, "station_fault_s": 5},
        "images": {"keep_pass_every": 0},
    }
    data.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path)


class Recorder:
    """A sink that remembers what it was told, and checks each decision is already in the store."""

    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self.committed: list[Decision] = []
        self.events: list[object] = []
        self.missing_at_signal: list[str] = []
        self.on_each: Callable[[Decision], None] | None = None

    def on_committed(self, decision: Decision) -> None:
        with sqlite3.connect(self.store_path) as c:
            found = c.execute(
                "select count(*) from inspections where id = ?", (decision.record_id,)
            ).fetchone()
        if found[0] != 1:
            self.missing_at_signal.append(decision.record_id)
        self.committed.append(decision)
        if self.on_each:
            self.on_each(decision)

    def on_event(self, event: object) -> None:
        self.events.append(event)


@pytest.fixture
def station_factory(tmp_path: Path, tiny_model: Path):  # type: ignore[no-untyped-def]
    made: list[Store] = []

    def make(
        source: Any,
        *,
        recipe: LoadedRecipe | None = None,
        detector: Detector | None = None,
        batch: str = "B1",
        **kw: Any,
    ) -> tuple[Station, Store, Recorder]:
        store = Store.open(tmp_path / "data" / "qc.db", "st1")
        made.append(store)
        rec = Recorder(tmp_path / "data" / "qc.db")
        st = Station(
            source=source,
            detector=detector or Detector.from_path(tiny_model),
            recipe=recipe or write_recipe(tmp_path, tiny_model),
            store=store,
            archive=ImageArchive(tmp_path / "data" / "images"),
            batch_id=batch,
            sinks=[rec],
            **kw,
        )
        return st, store, rec

    yield make
    for s in made:
        s.close()


class Hooked:
    """A source that calls ``hook(n)`` before handing out its n-th frame (0-based)."""

    def __init__(self, inner: ListSource, hook: Callable[[int], None]) -> None:
        self.inner, self.hook, self.n, self.name = inner, hook, 0, "hooked"

    def __enter__(self) -> Hooked:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)

    def read(self) -> Frame | None:
        frame = self.inner.read()
        if frame is not None:
            self.hook(self.n)
            self.n += 1
        return frame


def write_frames(folder: Path, items: list[tuple[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in items:
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            assert cv2.imwrite(str(folder / name), content)
    return folder


def test_every_frame_ends_as_a_record_even_broken_ones(tmp_path: Path, station_factory) -> None:  # type: ignore[no-untyped-def]
    # given a folder with good and bad parts and every kind of broken frame
    png = cv2.imencode(".png", GOOD)[1].tobytes()
    folder = write_frames(
        tmp_path / "frames",
        [
            ("p01.png", GOOD),
            ("p02.png", BAD),
            ("p03.png", png[: len(png) // 2]),  # truncated
            ("p04.png", b""),  # zero bytes
            ("p05.png", b"this is not an image at all"),  # garbage
            ("p06.png", GOOD.astype(np.uint16) * 257),  # 16-bit
            ("p07.png", cv2.cvtColor(BAD, cv2.COLOR_GRAY2BGRA)),  # 4-channel
            ("p08.png", np.zeros((3, 3), np.uint8)),  # too small
            ("p09.png", GOOD),
        ],
    )
    st, store, rec = station_factory(FolderSource(folder))
    # when the station runs over it
    summary = st.run()
    # then every file is a record, broken ones are ERROR/REJECT with a reason, good 16-bit passes
    rows = {r.frame_id: r for r in store.inspections(limit=100)}
    assert summary.parts == 9
    assert sorted(rows) == [f"p0{i}.png" for i in range(1, 10)]
    verdicts = {k: (r.verdict.value, r.disposition.value) for k, r in rows.items()}
    assert verdicts == {
        "p01.png": ("PASS", "ACCEPT"),
        "p02.png": ("FAIL", "REJECT"),
        "p03.png": ("ERROR", "REJECT"),
        "p04.png": ("ERROR", "REJECT"),
        "p05.png": ("ERROR", "REJECT"),
        "p06.png": ("PASS", "ACCEPT"),
        "p07.png": ("FAIL", "REJECT"),
        "p08.png": ("ERROR", "REJECT"),
        "p09.png": ("PASS", "ACCEPT"),
    }
    assert "empty file" in (rows["p04.png"].error or "")
    assert "cannot decode" in (rows["p03.png"].error or "")
    assert "at least 8x8" in (rows["p08.png"].error or "")
    # ERROR records still name the model that was running
    assert rows["p03.png"].model_sha256 == st.detector.info.sha256
    # a FAIL record carries its regions with mm² from the recipe scale
    fail = rows["p02.png"]
    assert fail.regions[0].class_name == "dark"
    assert fail.regions[0].area_mm2 == pytest.approx(fail.regions[0].area_px * 0.0025)
    # rejects keep their image (the original bytes), PASS images are not kept (keep_pass_every: 0)
    archive = ImageArchive(tmp_path / "data" / "images")
    assert fail.image_ref is not None
    assert archive.get(fail.image_ref) == (folder / "p02.png").read_bytes()
    assert rows["p04.png"].image_ref is None or archive.get(rows["p04.png"].image_ref) == b""
    assert rows["p01.png"].image_ref is None
    assert rec.missing_at_signal == []
    assert store.verify().ok


def test_consecutive_fails_hold_the_batch_and_quarantine_later_parts(station_factory) -> None:  # type: ignore[no-untyped-def]
    # given good, good, then three bad parts in a row, then good parts
    seq = [GOOD, GOOD, BAD, BAD, BAD, GOOD, GOOD]
    st, store, rec = station_factory(ListSource(seq, serials=[f"SN{i}" for i in range(7)]))
    summary = st.run()
    rows = store.inspections(limit=100)
    # then the third fail raises the hold, later PASS parts are HOLD, not ACCEPT
    assert [r.disposition.value for r in rows] == [
        "ACCEPT",
        "ACCEPT",
        "REJECT",
        "REJECT",
        "REJECT",
        "HOLD",
        "HOLD",
    ]
    assert summary.batch_status is BatchStatus.HOLD
    (hold,) = store.holds(batch_id="B1")
    assert hold.rule == "consecutive_fails"
    assert list(hold.evidence) == [r.id for r in rows[2:5]]
    assert list(hold.suspects) == [r.id for r in rows[2:4]]
    assert any(isinstance(e, HoldRaised) for e in rec.events)
    assert store.get_batch("B1").status is BatchStatus.HOLD  # type: ignore[union-attr]
    assert store.verify().ok


def test_release_by_quality_reopens_the_batch(station_factory) -> None:  # type: ignore[no-untyped-def]
    st, store, _ = station_factory(ListSource([BAD, BAD, BAD]))
    st.run()
    with pytest.raises(ReleaseError):
        st.release(by="q.eng", reason="   ")
    assert store.get_batch("B1").status is BatchStatus.HOLD  # type: ignore[union-attr]
    ev = st.release(by="q.eng", reason="fixture cleaned, 20 parts re-checked")
    assert ev.reason.startswith("fixture")
    assert store.get_batch("B1").status is BatchStatus.OPEN  # type: ignore[union-attr]
    (hold,) = store.holds(batch_id="B1")
    assert hold.released_by == "q.eng"
    with pytest.raises(ReleaseError, match="not on hold"):
        st.release(by="q.eng", reason="again")


def test_hold_released_elsewhere_is_picked_up_by_a_running_station(tmp_path: Path, station_factory) -> None:  # type: ignore[no-untyped-def]
    # given a running station whose batch goes on hold, then is released through a second store connection
    released = threading.Event()

    def hook(n: int) -> None:
        if n == 3:  # before the 4th part, wait until the release has been seen
            assert released.wait(10)
            import time as _t

            _t.sleep(0.3)  # > release_poll_s, so the decide stage has polled the store

    st, store, rec = station_factory(
        Hooked(ListSource([BAD, BAD, BAD, GOOD, GOOD]), hook), release_poll_s=0.05
    )

    def on_each(d: Decision) -> None:
        if len(rec.committed) == 3:
            from qcstation.station.types import HoldReleased

            other = Store.open(tmp_path / "data" / "qc.db", "st1")
            other.record_hold_released(HoldReleased("B1", "cli.user", "checked", datetime.now(UTC)))
            other.close()
            released.set()

    rec.on_each = on_each
    st.run()
    rows = store.inspections(limit=10)
    # then the parts after the release are accepted again
    assert [r.disposition.value for r in rows[3:]] == ["ACCEPT", "ACCEPT"]


def test_decisions_are_signalled_only_after_commit_even_when_the_store_fails(station_factory) -> None:  # type: ignore[no-untyped-def]
    # given a store whose first two commits fail (disk full)
    st, store, rec = station_factory(ListSource([GOOD, BAD, GOOD]))
    real_commit = store.commit
    failures = {"n": 0}

    def flaky(*a: Any, **kw: Any) -> None:
        if failures["n"] < 2:
            failures["n"] += 1
            raise StoreError("database or disk is full")
        real_commit(*a, **kw)

    store.commit = flaky  # type: ignore[method-assign]
    # when it runs, then nothing is lost and nothing was signalled before it was stored
    summary = st.run()
    assert failures["n"] == 2
    assert summary.parts == 3
    assert store.count_inspections() == 3
    assert len(rec.committed) == 3
    assert rec.missing_at_signal == []


def test_stage_timings_show_where_a_part_spent_its_time(station_factory) -> None:  # type: ignore[no-untyped-def]
    # given a store that takes 40 ms to commit
    st, store, _ = station_factory(ListSource([GOOD, BAD, GOOD, GOOD]))
    real_commit = store.commit

    def slow(*a: Any, **kw: Any) -> None:
        time.sleep(0.04)
        real_commit(*a, **kw)

    store.commit = slow  # type: ignore[method-assign]
    # when the station runs
    st.run()
    # then every committed part has a duration per stage, and the slow commit is where its time went
    stages = st.stats.stages_ms
    assert set(stages) == {"preprocess", "infer", "postprocess", "decide", "commit"}
    assert all(len(v) == 4 for v in stages.values())
    assert min(stages["commit"]) >= 40.0
    assert sum(stages["infer"]) < sum(stages["commit"])
    # and no stage took longer than the part's whole capture-to-commit latency
    for i, latency in enumerate(st.stats.latencies_ms):
        assert stages["commit"][i] <= latency + 1.0


def test_a_store_outage_past_station_fault_s_holds_the_batch(station_factory, tmp_path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    # given a store that cannot be written for about 1.4 s (three tries), while the recipe allows a station
    # fault of 0.3 s: no reject can reach the line meanwhile, so the parts decided then must be held
    recipe = write_recipe(tmp_path, tiny_model, holds={"station_fault_s": 0.3, "suspect_last": 2})
    frames = [GOOD] * 12

    def outage(n: int) -> None:
        if n == 0:
            failures["n"] = 0
        if n == 11:
            time.sleep(2.0)  # the last part comes after the hold went up

    failures = {"n": -1}
    st, store, rec = station_factory(Hooked(ListSource(frames), outage), recipe=recipe)
    real_commit = store.commit

    def flaky(*a: Any, **kw: Any) -> None:
        if 0 <= failures["n"] < 3:
            failures["n"] += 1
            raise StoreError("disk I/O error")
        real_commit(*a, **kw)

    store.commit = flaky  # type: ignore[method-assign]
    # when it runs through the outage
    summary = st.run()
    # then every part is stored, the batch is on HOLD by the station_fault rule, and the chain tells the story
    assert failures["n"] == 3 and summary.parts == 12
    assert summary.batch_status is BatchStatus.HOLD
    holds = store.holds(batch_id="B1")
    assert len(holds) == 1 and holds[0].rule == "station_fault"
    assert "store fault" in holds[0].detail and "disk I/O error" in holds[0].detail
    kinds = [e.kind for e in store.events(limit=100)]
    assert kinds.index("station_fault") < kinds.index("station_recovered")
    fault = store.events(kind="station_fault")[0]
    back = store.events(kind="station_recovered")[0]
    assert fault.data == back.data == {"kind": "store"}
    assert fault.at < holds[0].raised_at < back.at  # raised during the outage, recorded once it ended
    # and the parts decided once the hold was up (at least the last) are quarantined, never ACCEPTed
    dispositions = [r.disposition.value for r in store.inspections(limit=100)]
    first_held = dispositions.index("HOLD")
    assert dispositions == ["ACCEPT"] * first_held + ["HOLD"] * (12 - first_held)
    assert store.verify().ok
    assert rec.missing_at_signal == []
    assert any(isinstance(e, HoldRaised) for e in rec.events)


def test_a_hold_not_yet_stored_is_not_taken_for_a_release(station_factory) -> None:  # type: ignore[no-untyped-def]
    # given a monitor that has just raised a hold the commit stage has not stored yet (store: batch OPEN)
    st, store, _ = station_factory(ListSource([]))
    fail = Judgement(Verdict.FAIL, ("dark: 1 region",), ("dark",))
    holds = [h for n in range(3) for h in st.monitor.observe(f"r{n}", fail, datetime.now(UTC))[1]]
    assert len(holds) == 1 and st.monitor.status is BatchStatus.HOLD
    # when the station polls the store for a release made elsewhere
    st._sync_external_release()
    # then the batch stays on hold
    assert st.monitor.status is BatchStatus.HOLD
    # and once the hold is stored and released through the store (CLI, API), the poll picks that up
    store.record_hold_raised(holds[0])
    store.record_hold_released(HoldReleased("B1", "anna", "re-checked", datetime.now(UTC)))
    st._sync_external_release()
    assert st.monitor.status is BatchStatus.OPEN


class _FailingDetector(Detector):
    """The real detector, except that chosen frames fail in inference or in post-processing (errors
    onnxruntime rarely gives on demand)."""

    fail_run: dict[int, Exception]
    fail_finish: dict[int, Exception]
    calls = 0

    def run(self, prepared: Prepared) -> Outputs:
        n = self.calls
        self.calls += 1
        if n in self.fail_run:
            raise self.fail_run[n]
        out = super().run(prepared)
        return Outputs(prepared, out.raw, float(n))  # the call number travels to finish() in ``ms``

    def finish(self, outputs: Outputs, **kw: Any) -> Inspection:  # type: ignore[override]
        n = int(outputs.ms)
        if n in self.fail_finish:
            raise self.fail_finish[n]
        return super().finish(outputs, **kw)


def test_model_errors_become_error_records_never_a_pass(tiny_model: Path, station_factory) -> None:  # type: ignore[no-untyped-def]
    base = Detector.from_path(tiny_model)
    det = _FailingDetector(base.session, base.card, sha256=base.info.sha256, path=base.path)
    det.fail_run = {1: InferenceError("onnxruntime failed"), 2: RuntimeError("boom")}
    det.fail_finish = {3: ValueError("bad map")}
    st, store, _ = station_factory(ListSource([GOOD, GOOD, GOOD, GOOD, GOOD]), detector=det)
    st.run()
    rows = store.inspections(limit=10)
    assert [r.verdict.value for r in rows] == ["PASS", "ERROR", "ERROR", "ERROR", "PASS"]
    assert "onnxruntime failed" in (rows[1].error or "")
    assert "internal error: RuntimeError: boom" in (rows[2].error or "")
    assert "internal error: ValueError: bad map" in (rows[3].error or "")
    assert all(r.disposition.value == "REJECT" for r in rows[1:4])


def test_stop_drains_everything_already_captured(station_factory) -> None:  # type: ignore[no-untyped-def]
    st, store, rec = station_factory(ListSource([GOOD, BAD], loop=True), queue_size=4)

    def on_each(_: Decision) -> None:
        if len(rec.committed) == 25:
            st.stop()

    rec.on_each = on_each
    summary = st.run()
    assert summary.parts >= 25
    assert st.stats.entered == summary.parts == store.count_inspections()
    kinds = [e.kind for e in store.events(limit=100)]
    assert kinds[0] == "batch_opened"
    assert "station_started" in kinds
    assert kinds[-1] == "station_stopped"
    assert store.verify().ok


def test_recipe_naming_a_class_the_model_lacks_is_refused(
    tmp_path: Path, tiny_model: Path, station_factory
) -> None:  # type: ignore[no-untyped-def]
    recipe = write_recipe(tmp_path, tiny_model, classes={"scratch": {"min_area_px": 1}})
    with pytest.raises(RecipeError, match=r"names class\(es\) \['scratch'\].*defect classes are \['dark'\]"):
        station_factory(ListSource([GOOD]), recipe=recipe)


def test_lost_camera_holds_the_batch_after_the_fault_limit(station_factory) -> None:  # type: ignore[no-untyped-def]
    # given a fake clock and a camera that is lost, with no frames for longer than station_fault_s (5 s)
    now = [datetime(2026, 1, 1, tzinfo=UTC)]

    def hook(n: int) -> None:
        if n == 2:
            st.on_fault(StationFault("source", "camera 0 lost", now[0]))
            now[0] += timedelta(seconds=6)
            import time as _t

            _t.sleep(1.0)  # the decide stage ticks (every 0.5 s) while no frame arrives

    st, store, _ = station_factory(Hooked(ListSource([GOOD, GOOD, GOOD]), hook), clock=lambda: now[0])
    summary = st.run()
    assert summary.batch_status is BatchStatus.HOLD
    (hold,) = store.holds(batch_id="B1")
    assert hold.rule == "station_fault"
    assert "camera 0 lost" in hold.detail
    assert [e.kind for e in store.events(kind="station_fault")] == ["station_fault"]


def test_batch_switch_is_in_order_with_frames(station_factory) -> None:  # type: ignore[no-untyped-def]
    # given a running station; before its third part is handed over, the MES starts batch B2
    def hook(n: int) -> None:
        if n == 2:
            assert st.start_batch("B2", actor="mes", planned_qty=10) is BatchStatus.OPEN

    st, store, _ = station_factory(Hooked(ListSource([GOOD, BAD, GOOD, BAD]), hook))
    st.run()
    # then parts captured before the switch stay in B1, later ones are in B2, and B2 was opened by the MES
    assert [r.batch_id for r in store.inspections(limit=10)] == ["B1", "B1", "B2", "B2"]
    b2 = store.get_batch("B2")
    assert b2 is not None
    assert b2.planned_qty == 10
    assert store.verify().ok


def test_housekeeping_runs_beside_the_station_and_its_failures_do_not_stop_it(station_factory) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def housekeeping() -> None:
        calls.append(1)
        raise OSError("disk guard could not read the archive")

    def hook(n: int) -> None:
        if n == 5:
            import time as _t

            _t.sleep(0.3)  # several housekeeping periods pass while the station runs

    st, store, _ = station_factory(
        Hooked(ListSource([GOOD] * 10), hook), housekeeping=housekeeping, housekeeping_s=0.05
    )
    summary = st.run()
    assert len(calls) >= 2
    assert summary.parts == 10
    assert store.count_inspections() == 10


class _SlowFirst(Detector):
    """The real detector, whose runs take longer the earlier their frame was captured, so that with
    several inference workers later frames finish first; one failure on demand. Records how many runs
    were in flight at once."""

    fail_at: int = -1
    frames = 0
    calls = 0
    busy = 0
    most_busy = 0
    lock = threading.Lock()

    def run(self, prepared: Prepared) -> Outputs:
        with self.lock:
            n = self.calls
            self.calls += 1
            self.busy += 1
            self.most_busy = max(self.most_busy, self.busy)
        try:
            time.sleep(0.002 * (self.frames - n))
            if n == self.fail_at:
                raise InferenceError(f"run {n} failed")
            return super().run(prepared)
        finally:
            with self.lock:
                self.busy -= 1


def test_several_inference_workers_keep_capture_order_and_every_verdict(
    tiny_model: Path, station_factory
) -> None:  # type: ignore[no-untyped-def]
    # given frames whose model runs finish out of order (earlier frames are slower) and one that fails,
    # with a batch switch in the middle, on a station with three inference workers
    base = Detector.from_path(tiny_model)
    det = _SlowFirst(base.session, base.card, sha256=base.info.sha256, path=base.path)
    seq = [GOOD, BAD, GOOD, GOOD, BAD, BAD, BAD, GOOD, GOOD, BAD, GOOD, GOOD]
    det.frames, det.fail_at = len(seq), 3
    serials = [f"SN{i:02d}" for i in range(len(seq))]

    def hook(n: int) -> None:
        if n == 10:
            st.start_batch("B2", actor="mes", planned_qty=2)

    st, store, rec = station_factory(
        Hooked(ListSource(seq, serials=serials), hook), detector=det, inference_workers=3
    )
    summary = st.run()
    # then runs overlapped, yet records, sink signals and the chain are in capture order
    assert det.most_busy >= 2
    rows = store.inspections(limit=100)
    assert summary.parts == len(seq)
    assert [r.serial for r in rows] == serials
    assert [d.frame.serial for d in rec.committed] == serials
    expected = ["FAIL" if im is BAD else "PASS" for im in seq]
    expected[3] = "ERROR"
    assert [r.verdict.value for r in rows] == expected
    assert "run 3 failed" in (rows[3].error or "")
    # the hold (3 fails in a row at SN04-SN06) is raised at the right part; the switch kept its place
    (hold,) = store.holds(batch_id="B1")
    assert list(hold.evidence) == [r.id for r in rows[4:7]]
    assert [r.disposition.value for r in rows[7:10]] == ["HOLD", "HOLD", "REJECT"]
    assert [r.batch_id for r in rows] == ["B1"] * 10 + ["B2"] * 2
    assert rec.missing_at_signal == []
    assert store.verify().ok


def test_inference_workers_below_one_are_refused(station_factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="inference_workers must be at least 1"):
        station_factory(ListSource([GOOD]), inference_workers=0)


def test_a_queue_size_below_one_is_refused(station_factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="queue_size must be at least 1"):
        station_factory(ListSource([GOOD]), queue_size=0)


class _Slow(Detector):
    """The real detector, 5 ms slower per frame: a model the camera outruns."""

    def run(self, prepared: Prepared) -> Outputs:
        time.sleep(0.005)
        return super().run(prepared)


def _commit_groups(store: Store) -> list[int]:
    groups: list[int] = []
    real_commit = store.commit

    def counted(decisions: Any, **kw: Any) -> None:
        groups.append(len(decisions))
        real_commit(decisions, **kw)

    store.commit = counted  # type: ignore[method-assign]
    return groups


@pytest.mark.parametrize(("linger_s", "behind"), [(0.15, True), (0.0, True), (0.15, False)])
def test_a_station_behind_its_camera_commits_many_parts_per_transaction(
    tiny_model: Path, station_factory, linger_s: float, behind: bool
) -> None:  # type: ignore[no-untyped-def]
    # given a model slower than the camera (frames wait), or a camera paced well below the model's rate
    base = Detector.from_path(tiny_model)
    det = _Slow(base.session, base.card, sha256=base.info.sha256, path=base.path)
    seq = [GOOD, BAD, GOOD, GOOD] * 10
    serials = [f"SN{i:02d}" for i in range(len(seq))]
    source: Any = ListSource(seq, serials=serials)
    if not behind:
        source = Hooked(source, lambda n: time.sleep(0.02))
    st, store, rec = station_factory(source, detector=det, linger_s=linger_s)
    groups = _commit_groups(store)
    # when the station runs
    summary = st.run()
    # then every part is recorded once, in capture order, signalled after its commit, the chain intact
    assert summary.parts == len(seq)
    assert [r.serial for r in store.inspections(limit=100)] == serials
    assert [d.frame.serial for d in rec.committed] == serials
    assert rec.missing_at_signal == []
    assert store.verify().ok
    assert sum(groups) == len(seq)
    if behind and linger_s > 0:
        # and a station behind its camera waits for full groups (16 decisions) while frames wait
        assert max(groups) == 16
        assert len(groups) <= 6
    else:
        # and one that keeps up, or does not linger, commits what is there: no group waits to fill
        assert max(groups) < 8


def test_linger_settings_out_of_range_are_refused(station_factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="linger_group must be at least 1"):
        station_factory(ListSource([GOOD]), linger_group=0)
    with pytest.raises(ValueError, match="linger_s not negative"):
        station_factory(ListSource([GOOD]), linger_s=-1.0)
