"""The API's handle on the station running in this process: its life cycle, parts, batches and holds.

An uploaded image is handed to the station's decision stage exactly as a captured frame is
(:meth:`Station.submit`), so it is judged, counted by the hold rules, archived, committed in order and
signalled like any other part. A manual hold goes through the station's batch monitor
(:meth:`Station.raise_hold`), so the parts that follow are put in disposition HOLD at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from qcstation.inspect.types import Frame
from qcstation.station.pipeline import RunSummary, Station
from qcstation.station.sources import TriggerSource
from qcstation.station.types import BatchStatus, HoldRaised, HoldReleased

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """How the station's run ended (when it did)."""

    summary: RunSummary | None = None
    error: BaseException | None = None


class StationControl:
    """Starts, stops and talks to one station from the API."""

    def __init__(self, station: Station, *, managed: bool = True) -> None:
        """Wrap ``station``.

        Args:
            station: the station.
            managed: the API starts and stops the station's run (``qcstation serve``); when False the caller
                runs it and the station is taken to be running.
        """
        self.station = station
        self.managed = managed
        self.state = RunState()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- life cycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the station in a background thread (idempotent)."""
        if not self.managed or self._thread is not None:
            return

        def target() -> None:
            try:
                self.state.summary = self.station.run()
            except BaseException as e:  # reported through /status and /ready; never kills the API
                log.exception("the station stopped with an error")
                self.state.error = e

        self._thread = threading.Thread(target=target, name="qc-station", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the run: capture stops, everything captured is committed, then the thread ends."""
        self._stopping.set()
        self.station.stop()
        stop_source = getattr(self.station.source, "stop", None)
        if callable(stop_source):  # a trigger or reconnecting source may be blocked waiting
            stop_source()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the station did not stop within %.0f s", timeout)

    @property
    def running(self) -> bool:
        """True while the station takes frames."""
        if not self.managed:
            return not self._stopping.is_set()
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    # -- parts ------------------------------------------------------------------------------------------

    def submit(self, frame: Frame) -> None:
        """Hand a frame to the decision stage, in order with captured frames."""
        self.station.submit(frame)

    def trigger_source(self) -> TriggerSource | None:
        """The station's trigger source, also when wrapped (``.inner``), or None."""
        src: object = self.station.source
        for _ in range(4):
            if isinstance(src, TriggerSource):
                return src
            src = getattr(src, "inner", None)
            if src is None:
                return None
        return None

    # -- holds ------------------------------------------------------------------------------------------

    def raise_hold(self, *, by: str, reason: str) -> tuple[HoldRaised, str]:
        """Put the station's current batch on hold by hand (see :meth:`Station.raise_hold`)."""
        return self.station.raise_hold(by=by, reason=reason)

    def start_batch(self, batch_id: str, *, actor: str, planned_qty: int | None = None) -> BatchStatus:
        """Switch the station to ``batch_id`` (see :meth:`Station.start_batch`)."""
        return self.station.start_batch(batch_id, actor=actor, planned_qty=planned_qty)

    def release(self, *, by: str, reason: str) -> HoldReleased:
        """Release the current batch's hold through the station (its monitor reopens the batch)."""
        return self.station.release(by=by, reason=reason)

    @property
    def batch_status(self) -> BatchStatus:
        """The current batch's state as the station's monitor sees it."""
        return self.station.monitor.status
