"""The station pipeline: capture, inference and storage running concurrently.

Four stages in threads joined by bounded queues::

    capture (read, decode, preprocess) ──▶ infer (session.run only) ──▶ decide (post-process, rules,
    batch monitor) ──▶ commit (archive + store) ──▶ sinks, after commit

The station's throughput is set by its slowest stage, not by the sum of them; on a CPU station that is the
model, so the inference stage does nothing but ``session.run`` back to back and everything else happens on
the other cores while it runs. With ``inference_workers`` above one, that many frames are in ``session.run``
at once (one onnxruntime session takes concurrent runs), each as a future queued in capture order, so the
decide stage still sees frames in the order they were captured. Every frame that enters ends
as a record: a frame that fails anywhere becomes verdict ERROR with disposition REJECT. Sinks (reject output,
live screen, MES) hear of a decision only after it is durably committed. Stopping (Ctrl-C, SIGTERM, end of
source) drains both queues, so nothing captured is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
from uuid6 import uuid7

from qcstation.inspect.detector import Detector, Outputs, Prepared
from qcstation.inspect.errors import InspectError
from qcstation.inspect.types import Frame
from qcstation.station.archive import ImageArchive
from qcstation.station.drift import DriftMonitor, ScoreDrift
from qcstation.station.errors import RecipeError, ReleaseError, StationError, StoreError
from qcstation.station.holds import BatchMonitor
from qcstation.station.recipe import LoadedRecipe
from qcstation.station.rules import judge, judge_error
from qcstation.station.sources import Source
from qcstation.station.store import Store, utc_iso
from qcstation.station.types import (
    BatchStatus,
    Decision,
    Disposition,
    HoldRaised,
    HoldReleased,
    StationFault,
    Verdict,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
StationEvent = HoldRaised | HoldReleased | StationFault | ScoreDrift


def utcnow() -> datetime:
    """The station's default clock."""
    return datetime.now(UTC)


class Sink(Protocol):
    """Something told about every decision after it is committed (reject output, live feed, MES)."""

    def on_committed(self, decision: Decision) -> None:
        """Called from the commit thread; must not block for long."""

    def on_event(self, event: StationEvent) -> None:
        """Called for hold, release and fault events after they are committed."""


@dataclass
class StationStats:
    """Live counters of a run (read by the status line and the API)."""

    started: float = field(default_factory=time.monotonic)
    entered: int = 0
    committed: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    dispositions: Counter[str] = field(default_factory=Counter)
    batch_status: BatchStatus = BatchStatus.OPEN
    hold: HoldRaised | None = None
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2048))
    stages_ms: dict[str, deque[float]] = field(default_factory=dict)
    """Per stage (preprocess, infer, postprocess, decide, commit), its duration for the recent parts:
    what the part spent working in each stage, so that capture-to-commit latency minus their sum is
    time spent waiting in queues. ``commit`` is the part's group commit (image archive, then the store)."""
    store_fault: str | None = None
    source_fault: str | None = None
    drift: ScoreDrift | None = None

    def add_stages(self, timings_ms: dict[str, float]) -> None:
        """Keep one part's stage durations (the commit thread's; the window is the last 2048 parts)."""
        for stage, ms in timings_ms.items():
            window = self.stages_ms.get(stage)
            if window is None:
                window = self.stages_ms[stage] = deque(maxlen=2048)
            window.append(ms)

    @property
    def rate(self) -> float:
        """Committed parts per second since the start."""
        elapsed = time.monotonic() - self.started
        return self.committed / elapsed if elapsed > 0 else 0.0

    @property
    def yield_(self) -> float | None:
        """PASS share of committed parts."""
        return self.verdicts["PASS"] / self.committed if self.committed else None


@dataclass(frozen=True)
class RunSummary:
    """What a finished run did."""

    batch_id: str
    parts: int
    seconds: float
    verdicts: dict[str, int]
    dispositions: dict[str, int]
    batch_status: BatchStatus
    hold: HoldRaised | None

    @property
    def rate(self) -> float:
        return self.parts / self.seconds if self.seconds > 0 else 0.0


_END = object()


@dataclass(slots=True, eq=False)
class _Work:
    """One frame on its way through capture, inference and decision; ``error`` is its first failure."""

    frame: Frame
    prepared: Prepared | None = None
    outputs: Outputs | None = None
    error: str | None = None


@dataclass
class _SwitchBatch:
    """A batch change, queued in order with frames: parts captured before it stay in the old batch."""

    batch_id: str
    actor: str
    planned_qty: int | None
    done: threading.Event = field(default_factory=threading.Event)
    status: BatchStatus | None = None
    error: BaseException | None = None


class Station:
    """A station assembled from ready parts: source, detector, recipe, store, archive and sinks.

    Nothing is built inside: the caller (the CLI, the API app or a test) makes each part and passes it in.
    """

    def __init__(
        self,
        *,
        source: Source,
        detector: Detector,
        recipe: LoadedRecipe,
        store: Store,
        archive: ImageArchive,
        batch_id: str,
        sinks: Sequence[Sink] = (),
        clock: Clock = utcnow,
        queue_size: int = 8,
        inference_workers: int = 1,
        max_group: int = 64,
        linger_group: int = 16,
        linger_s: float = 0.15,
        release_poll_s: float = 1.0,
        housekeeping: Callable[[], None] | None = None,
        housekeeping_s: float = 60.0,
    ) -> None:
        """Assemble a station.

        Args:
            source: where frames come from (opened by :meth:`run`).
            detector: the loaded model.
            recipe: the product's recipe; its classes are checked against the model here.
            store: the traceability store.
            archive: the image archive.
            batch_id: the batch this run inspects (opened, or resumed with its hold state).
            sinks: told of every committed decision and event.
            clock: UTC clock (tests pass a fake).
            queue_size: bound of the frame and decision queues (back-pressure on the camera).
            inference_workers: frames in ``session.run`` at once, each on its own thread; decisions keep
                capture order. Several one-thread runs use the cores of a small PC better than one run on
                several threads (docs/PERFORMANCE.md).
            max_group: the most decisions committed in one transaction.
            linger_group: while frames wait for the model (the frame queue at least half full), the commit
                stage waits for this many decisions before it commits, so that the cores go to the model and
                one transaction carries many parts (docs/PERFORMANCE.md); 1: commit what is there.
            linger_s: the longest such a wait lasts.
            release_poll_s: how often the store is checked for a hold released elsewhere (CLI, API).
            housekeeping: run every ``housekeeping_s`` seconds while the station runs, in its own thread
                (image retention, the disk guard); its failures are logged, never stop the station.
            housekeeping_s: the housekeeping period.
        """
        if inference_workers < 1:
            raise ValueError(f"inference_workers must be at least 1, got {inference_workers}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if linger_group < 1 or linger_s < 0:
            raise ValueError(
                f"linger_group must be at least 1 and linger_s not negative, got {linger_group}, {linger_s}"
            )
        rec = recipe.recipe
        rec.check_classes(detector.card.classes)
        self.source = source
        self.inference_workers = inference_workers
        self.detector = detector
        self.loaded = recipe
        self.recipe = rec
        self.recipe_hash = rec.content_hash
        self.store = store
        self.archive = archive
        self.batch_id = batch_id
        self.sinks = list(sinks)
        self.clock = clock
        self.max_group = max_group
        self.linger_group = min(linger_group, max_group)
        self.linger_s = linger_s
        self.release_poll_s = release_poll_s
        self.housekeeping = housekeeping
        self.housekeeping_s = housekeeping_s
        self.thresholds = detector.thresholds({c: r.threshold for c, r in rec.classes.items()})
        try:
            self.drift = DriftMonitor.from_card(detector.card.good_scores, rec.drift)
        except ValueError as e:
            raise RecipeError(
                f"cannot watch score drift with model {detector.path}: {e} (set drift: {{enabled: false}} in "
                "the recipe to run without it)"
            ) from e
        self.stats = StationStats()
        self._frames: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        # Model outputs wait here for the decide stage, which is far quicker than the model: two are enough,
        # and in tile mode each is every tile's probability maps (130 MB for 99 tiles of 256x256x5).
        self._inferred: queue.Queue[object] = queue.Queue(maxsize=min(queue_size, 2))
        self._decisions: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pass_seen = 0
        self._errors: list[BaseException] = []
        self._running = False
        status = store.open_batch(
            batch_id, product=rec.product, recipe_hash=self.recipe_hash, at=clock(), actor="station"
        )
        self.monitor = BatchMonitor(batch_id, rec.holds, status=status)
        self.stats.batch_status = status

    # -- control ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the run to finish: capture stops, everything already captured is decided and committed."""
        self._stop.set()

    @property
    def running(self) -> bool:
        """True from the start of :meth:`run` until it returns."""
        return self._running

    def submit(self, frame: Frame) -> None:
        """Hand a frame to the decision stage, in order with captured frames (on-demand inspection)."""
        self.stats.entered += 1
        self._put(self._frames, self._prepare(frame))

    def start_batch(
        self, batch_id: str, *, actor: str, planned_qty: int | None = None, timeout: float = 30.0
    ) -> BatchStatus:
        """Make ``batch_id`` the batch that parts captured from now on belong to.

        The batch is opened (or resumed with its hold state). While running, the change travels through the
        frame queue, so parts captured before the call are still decided in the batch they were captured for.

        Returns:
            The new batch's status (OPEN, or HOLD when a held batch is resumed).

        Raises:
            BatchError: the batch exists for another product, or is closed.
            StationError: a running station did not take the change within ``timeout`` seconds.
        """
        if not self._running:
            return self._switch_batch(batch_id, actor, planned_qty)
        cmd = _SwitchBatch(batch_id, actor, planned_qty)
        self._put(self._frames, cmd)
        if not cmd.done.wait(timeout):
            raise StationError(f"the station did not switch to batch {batch_id} within {timeout:.0f} s")
        if cmd.error is not None:
            raise cmd.error
        assert cmd.status is not None
        return cmd.status

    def _switch_batch(self, batch_id: str, actor: str, planned_qty: int | None) -> BatchStatus:
        status = self.store.open_batch(
            batch_id,
            product=self.recipe.product,
            recipe_hash=self.recipe_hash,
            at=self.clock(),
            actor=actor,
            planned_qty=planned_qty,
        )
        with self._lock:
            self.batch_id = batch_id
            self.monitor = BatchMonitor(batch_id, self.recipe.holds, status=status)
            self.stats.batch_status = status
            self.stats.hold = None
            self._pass_seen = 0
        log.info("now inspecting batch %s (%s)", batch_id, status.value)
        return status

    def raise_hold(self, *, by: str, reason: str) -> tuple[HoldRaised, str]:
        """Put the current batch on hold by hand; the next part decided is already quarantined.

        The monitor decides the hold (its suspects are the last parts) and the store records it in one locked
        step, so no part is decided in between. Should the write fail, the monitor stays on HOLD (the safe
        side); the release sync reopens it, since the store still says OPEN.

        Returns:
            The hold and its id in the store.

        Raises:
            BatchError: already on hold or closed, or no reason.
            StoreError: the write failed.
        """
        with self._lock:
            ev = self.monitor.raise_manual(by, reason, self.clock())
            hold_id = self.store.record_hold_raised(ev)
        self._notify_event(ev)
        return ev, hold_id

    def release(self, *, by: str, reason: str) -> HoldReleased:
        """Release the batch's hold (quality role checked by the caller); recorded before it takes effect.

        Raises:
            ReleaseError: not on hold, or no reason.
        """
        with self._lock:
            if self.monitor.status is not BatchStatus.HOLD:
                raise ReleaseError(f"batch {self.batch_id} is {self.monitor.status}, not on hold")
            ev = HoldReleased(self.batch_id, by.strip(), reason.strip(), self.clock())
            self.store.record_hold_released(ev)  # refuses a blank reason; nothing changes unless recorded
            self.monitor.release(ev.by, ev.reason, ev.at)
            self.stats.batch_status = self.monitor.status
            self.stats.hold = None
        self._notify_event(ev)
        return ev

    # -- the run ----------------------------------------------------------------------------------------

    def run(self, *, on_progress: Callable[[StationStats], None] | None = None) -> RunSummary:
        """Run until the source ends or :meth:`stop` is called, then drain and return a summary."""
        self._running = True
        try:
            return self._run(on_progress)
        finally:
            self._running = False

    def _run(self, on_progress: Callable[[StationStats], None] | None) -> RunSummary:
        started = time.monotonic()
        self.store.add_event(
            "station_started",
            at=self.clock(),
            actor="station",
            batch_id=self.batch_id,
            data={
                "model": {
                    "name": self.detector.info.name,
                    "version": self.detector.info.version,
                    "sha256": self.detector.info.sha256,
                },
                "recipe": {
                    "product": self.recipe.product,
                    "hash": self.recipe_hash,
                    "path": str(self.loaded.path),
                },
                "source": getattr(self.source, "name", type(self.source).__name__),
            },
        )
        threads = [
            threading.Thread(target=self._guard(self._capture_loop), name="qc-capture", daemon=True),
            threading.Thread(target=self._guard(self._infer_loop), name="qc-infer", daemon=True),
            threading.Thread(target=self._guard(self._decide_loop), name="qc-decide", daemon=True),
            threading.Thread(target=self._guard(self._commit_loop), name="qc-commit", daemon=True),
        ]
        if self.housekeeping is not None:
            threading.Thread(target=self._housekeeping_loop, name="qc-housekeeping", daemon=True).start()
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                threads[-1].join(timeout=0.25)
                if on_progress is not None:
                    on_progress(self.stats)
        except KeyboardInterrupt:
            self.stop()
            for t in threads:
                t.join()
        self.store.add_event(
            "station_stopped",
            at=self.clock(),
            actor="station",
            batch_id=self.batch_id,
            data={"parts": self.stats.committed, "verdicts": dict(self.stats.verdicts)},
        )
        if self._errors:
            raise self._errors[0]
        return RunSummary(
            batch_id=self.batch_id,
            parts=self.stats.committed,
            seconds=time.monotonic() - started,
            verdicts=dict(self.stats.verdicts),
            dispositions=dict(self.stats.dispositions),
            batch_status=self.monitor.status,
            hold=self.monitor.hold,
        )

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # a dead stage must stop the run loudly, never hang it
                log.exception("%s stopped by an unexpected error", threading.current_thread().name)
                self._errors.append(e)
                self._stop.set()
                for q in (self._frames, self._inferred, self._decisions):
                    _drain_put(q, _END)

        return run

    def _housekeeping_loop(self) -> None:
        assert self.housekeeping is not None
        while not self._stop.wait(self.housekeeping_s) and self._running:
            try:
                self.housekeeping()
            except Exception:  # a full disk or a slow prune must never stop inspection
                log.exception("housekeeping failed")

    # -- stage 1: capture ---------------------------------------------------------------------------------

    def _capture_loop(self) -> None:
        try:
            with self.source as src:
                while not self._stop.is_set():
                    frame = src.read()
                    if frame is None:
                        break
                    self.stats.entered += 1
                    self._put(self._frames, self._prepare(frame))
        finally:
            self._frames.put(_END)

    def on_fault(self, fault: StationFault) -> None:
        """Hand a station fault (camera lost/recovered) to the decision stage, in order with frames."""
        self.stats.source_fault = None if fault.recovered else fault.detail
        self._put(self._frames, fault)

    def _put(self, q: queue.Queue[object], item: object) -> None:
        while True:
            try:
                q.put(item, timeout=0.25)
                return
            except queue.Full:
                if self._errors:
                    return

    def _prepare(self, frame: Frame) -> _Work:
        """Preprocess on the capturing thread (capture, or the API's for on-demand frames)."""
        work = _Work(frame, error=frame.fault)
        if frame.image is not None:
            try:
                work.prepared = self.detector.prepare(frame.image)
            except Exception as e:
                work.error = self._failure(frame, e)
        return work

    def _failure(self, frame: Frame, e: Exception) -> str:
        """The record's error text for a frame whose inspection failed; never a silent PASS."""
        if isinstance(e, InspectError):
            return f"{frame.frame_id}: {e}"
        log.error("inspection of %s failed unexpectedly", frame.frame_id, exc_info=e)
        return f"{frame.frame_id}: internal error: {type(e).__name__}: {e}"

    # -- stage 2: infer -----------------------------------------------------------------------------------

    def _infer_loop(self) -> None:
        """Only ``session.run``: everything else is someone else's thread. Other items pass in order.

        With several workers a frame goes on as the future of its run, in capture order; the bounded queue
        after this stage keeps at most a few frames' outputs waiting, however many workers there are.
        """
        workers = self.inference_workers
        pool = ThreadPoolExecutor(workers, thread_name_prefix="qc-infer") if workers > 1 else None
        try:
            while True:
                item = self._frames.get()
                if item is _END or self._errors:
                    break
                if isinstance(item, _Work):
                    item = pool.submit(self._infer, item) if pool is not None else self._infer(item)
                self._put(self._inferred, item)
        finally:
            self._inferred.put(_END)
            if pool is not None:
                pool.shutdown(wait=True)

    def _infer(self, work: _Work) -> _Work:
        if work.prepared is not None:
            try:
                work.outputs = self.detector.run(work.prepared)
            except Exception as e:
                work.error = self._failure(work.frame, e)
        return work

    # -- stage 3: decide ----------------------------------------------------------------------------------

    def _decide_loop(self) -> None:
        last_poll = time.monotonic()
        try:
            while True:
                try:
                    item = self._inferred.get(timeout=0.5)
                except queue.Empty:
                    self._emit_events(self.monitor.tick(self.clock()))
                    item = None
                if time.monotonic() - last_poll >= self.release_poll_s:
                    self._sync_external_release()
                    last_poll = time.monotonic()
                if item is _END or self._errors:
                    break
                if item is None:
                    continue
                if isinstance(item, Future):
                    item = item.result()  # _infer turns every failure into the frame's error
                if isinstance(item, StationFault):
                    self._emit_events([item, *self.monitor.fault(item)])
                    continue
                if isinstance(item, _SwitchBatch):
                    try:
                        item.status = self._switch_batch(item.batch_id, item.actor, item.planned_qty)
                    except Exception as e:  # handed back to the caller of start_batch
                        item.error = e
                    item.done.set()
                    continue
                assert isinstance(item, _Work)
                self._put(self._decisions, self._decide(item))
        finally:
            self._decisions.put(_END)

    def decide(self, frame: Frame) -> Decision:
        """Inspect, judge and place one frame in its batch, on the calling thread (the run uses three).

        Never raises for a bad frame or a model error: those become verdict ERROR.
        """
        return self._decide(self._infer(self._prepare(frame)))

    def _decide(self, work: _Work) -> Decision:
        t0 = time.perf_counter()
        frame = work.frame
        record_id = str(uuid7())
        inspection = None
        error = work.error
        if work.outputs is not None:
            try:
                inspection = self.detector.finish(
                    work.outputs,
                    thresholds=self.thresholds,
                    mm_per_px=self.recipe.mm_per_px,
                    roi=self.recipe.roi,
                    ignore=self.recipe.ignore,
                    defect_map=False,
                )
            except Exception as e:  # never let a failure turn into a silent PASS
                error = self._failure(frame, e)
        if inspection is None:
            judgement = judge_error(error or f"{frame.frame_id}: not inspected")
        else:
            judgement = judge(inspection, self.recipe, self.thresholds)
        now = self.clock()
        with self._lock:
            disposition, holds = self.monitor.observe(record_id, judgement, now)
        if self.drift is not None and inspection is not None:
            drift = self.drift.observe(inspection.image_score, judgement.verdict is Verdict.PASS, now)
            if drift is not None:
                log.warning("%s", drift.detail)
                self._emit_events([drift])
        keep = self._keep_image(judgement.verdict, disposition)
        return Decision(
            record_id=record_id,
            frame=frame,
            inspection=inspection,
            judgement=judgement,
            disposition=disposition,
            batch_id=self.batch_id,
            decided_at=now,
            error=error if inspection is None else None,
            events=tuple(holds),
            keep_image=keep,
            model=self.detector.info,
            timings_ms={"decide": (time.perf_counter() - t0) * 1e3},
        )

    def _keep_image(self, verdict: Verdict, disposition: Disposition) -> bool:
        if verdict is not Verdict.PASS or disposition is not Disposition.ACCEPT:
            return True
        every = self.recipe.images.keep_pass_every
        self._pass_seen += 1
        return every > 0 and (self._pass_seen - 1) % every == 0

    def _sync_external_release(self) -> None:
        """Pick up a hold released through another process (CLI) or the API store path.

        Only a release of the very hold the monitor is in counts: a hold the monitor has raised but the commit
        stage has not stored yet (or is still retrying to store) leaves the batch OPEN in the store for a
        moment, which is no release.
        """
        if self.monitor.status is not BatchStatus.HOLD:
            return
        batch = self.store.get_batch(self.batch_id)
        if batch is None or batch.status != BatchStatus.OPEN:
            return
        released = [h for h in self.store.holds(batch_id=self.batch_id) if h.released_at is not None]
        current = self.monitor.hold
        if current is not None:  # None: a batch resumed on HOLD, whose hold this run did not raise
            raised_at = utc_iso(current.at)
            released = [h for h in released if h.raised_at == raised_at]
            if not released:
                return
        who, why = (
            (released[-1].released_by or "?", released[-1].release_reason or "?") if released else ("?", "?")
        )
        with self._lock:
            self.monitor.release(who, why, self.clock())
            self.stats.batch_status = self.monitor.status
            self.stats.hold = None
        log.info("hold on %s released elsewhere by %s: %s", self.batch_id, who, why)

    def _emit_events(self, events: Iterable[StationEvent]) -> None:
        events = list(events)
        if events:
            self._put(self._decisions, tuple(events))

    # -- stage 4: commit ----------------------------------------------------------------------------------

    def _commit_loop(self) -> None:
        done = False
        while not done:
            try:
                first = self._decisions.get(timeout=0.5)
            except queue.Empty:
                if self._errors:
                    return
                continue
            group: list[object] = [first]
            while len(group) < self.max_group:
                try:
                    group.append(self._decisions.get_nowait())
                except queue.Empty:
                    break
            self._linger(group)
            if _END in group:
                done = True
                group = [g for g in group if g is not _END]
            if group:
                self._commit_group(group)

    def _linger(self, group: list[object]) -> None:
        """While frames wait for the model, add decisions to ``group`` up to ``linger_group`` or ``linger_s``.

        A station that is behind spends its cores better on the model than on a transaction per part: much
        of a group commit's CPU is the transaction's, not the parts' (the duplicate check, the chain head and
        its move, the commit's fsync, the threads' wake-ups). When frames do not wait, nothing waits here, so
        a station that keeps up commits each decision as soon as it is made.
        """
        deadline = time.monotonic() + self.linger_s
        while (
            len(group) < self.linger_group
            and _END not in group
            and 2 * self._frames.qsize() >= self._frames.maxsize
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                group.append(self._decisions.get(timeout=left))
            except queue.Empty:
                return

    def _commit_group(self, group: list[object]) -> None:
        decisions = [g for g in group if isinstance(g, Decision)]
        pending: list[StationEvent] = [ev for g in group if isinstance(g, tuple) for ev in g]
        events = list(pending)
        stored = not decisions
        backoff = 0.2
        t0 = time.perf_counter()
        fault: StationFault | None = None
        while True:
            try:
                if not stored:
                    refs = {d.record_id: self._archive(d) for d in decisions}
                    self.store.commit(
                        decisions, product=self.recipe.product, recipe_hash=self.recipe_hash, image_refs=refs
                    )
                    stored = True
                    if fault is not None:
                        back = StationFault("store", "the store is writable again", self.clock(), True)
                        with self._lock:
                            self.monitor.fault(back)
                        pending.append(back)
                        events.append(back)
                while pending:
                    self._store_event(pending[0])
                    pending.pop(0)
                break
            except (StoreError, OSError) as e:
                # The store or disk is failing: keep every decision in memory and retry; the bounded queues
                # push back on capture meanwhile. Nothing is signalled until it is committed, so no reject
                # reaches the line either: a fault lasting past the recipe's station_fault_s holds the batch.
                now = self.clock()
                if fault is None:
                    log.error("cannot commit %d decision(s), will retry: %s", len(decisions), e)
                    fault = StationFault("store", f"cannot write the store: {e}", now)
                    pending.insert(0, fault)
                    events.insert(0, fault)
                self.stats.store_fault = str(e)
                with self._lock:
                    holds = self.monitor.fault(StationFault("store", fault.detail, now))
                pending.extend(holds)
                events.extend(holds)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self.stats.store_fault = None
        committed_at = self.clock()
        commit_ms = (time.perf_counter() - t0) * 1e3
        for d in decisions:
            self.stats.add_stages({**d.stage_timings_ms, "commit": commit_ms})
            self.stats.committed += 1
            self.stats.verdicts[d.judgement.verdict.value] += 1
            self.stats.dispositions[d.disposition.value] += 1
            self.stats.latencies_ms.append((committed_at - d.frame.captured_at).total_seconds() * 1e3)
            for s in self.sinks:
                _safe(s.on_committed, d)
            for held in d.events:
                self._notify_event(held)
        for ev in events:
            self._notify_event(ev)

    def _archive(self, d: Decision) -> str | None:
        if not d.keep_image:
            return None
        f = d.frame
        if f.encoded:
            return self.archive.put(f.encoded, f.encoded_ext)
        if f.image is not None:
            return self.archive.put_image(np.ascontiguousarray(f.image))
        return None

    def _store_event(self, ev: StationEvent) -> None:
        if isinstance(ev, HoldRaised):
            self.store.record_hold_raised(ev)
        elif isinstance(ev, HoldReleased):
            self.store.record_hold_released(ev)
        else:
            if isinstance(ev, ScoreDrift):
                kind, data = ("score_drift" if ev.drifting else "score_drift_cleared"), ev.to_dict()
            else:
                kind, data = ("station_recovered" if ev.recovered else "station_fault"), {"kind": ev.kind}
            self.store.add_event(
                kind, at=ev.at, actor="station", batch_id=self.batch_id, reason=ev.detail, data=data
            )

    def _notify_event(self, ev: StationEvent) -> None:
        if isinstance(ev, HoldRaised):
            self.stats.batch_status = BatchStatus.HOLD
            self.stats.hold = ev
        elif isinstance(ev, ScoreDrift):
            self.stats.drift = ev if ev.drifting else None
        for s in self.sinks:
            _safe(s.on_event, ev)


def _safe(fn: Callable[..., None], arg: object) -> None:
    """Best-effort sinks may fail; the traceability record is already committed."""
    try:
        fn(arg)
    except Exception:
        log.exception("sink %r failed", fn)


def _drain_put(q: queue.Queue[object], item: object) -> None:
    with contextlib.suppress(queue.Full):
        q.put_nowait(item)
