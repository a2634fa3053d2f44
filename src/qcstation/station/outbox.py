"""The outbox forwarder: delivers a station's queued records and events to the plant, at least once, in order.

:meth:`Store.commit` queues every chained row in ``outbox`` in the transaction that stores it. A
:class:`Forwarder` (one thread or process per station) reads the pending items in ``outbox.id`` order, hands
them to every configured :class:`Sink` (MQTT, webhook, central database), and marks an item delivered once
every sink has taken it. A sink that fails keeps the items; the forwarder retries them after an exponential
backoff with jitter, so delivery survives broker outages and restarts (after a restart undelivered items are
sent again: downstream de-duplicates on the record id, which is the idempotency key).

A permanent refusal (an HTTP 4xx other than 408/429) is a dead letter: the item counts as handled for that
sink and an ``outbox_dead_letter`` event is chained so the refusal is on record. A backlog older than
``backlog_alert_after`` seconds chains one ``outbox_backlog_old`` event (again after it has cleared).
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from qcstation.station.errors import StoreError
from qcstation.station.store import OutboxItem, Store, parse_utc

log = logging.getLogger(__name__)

__all__ = ["Backlog", "Delivery", "Forwarder", "Sink", "outbox_backlog"]

DEAD_LETTER_KIND = "outbox_dead_letter"
BACKLOG_KIND = "outbox_backlog_old"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a sink did with a run of items.

    Attributes:
        handled: how many items, from the first, are delivered or dead-lettered (the sink is done with them).
        dead: the dead-lettered items among those, with the reason.
        error: why the sink stopped before the end (a transient failure; retry later), or None.
    """

    handled: int
    dead: tuple[tuple[OutboxItem, str], ...] = ()
    error: str | None = None


class Sink(Protocol):
    """A destination of the outbox. ``deliver`` is called from the forwarder's one thread only."""

    name: str

    def deliver(self, items: Sequence[OutboxItem]) -> Delivery:
        """Deliver ``items`` in order; stop at the first transient failure and say how far it got."""
        ...

    def close(self) -> None:
        """Release connections (and say goodbye, where the protocol has a way)."""
        ...


@dataclass(frozen=True, slots=True)
class Backlog:
    """The station's undelivered outbox items: how many and how old the oldest is."""

    size: int
    oldest_created_at: str | None
    age_seconds: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "size": self.size,
            "oldest_created_at": self.oldest_created_at,
            "age_seconds": self.age_seconds,
        }


def outbox_backlog(store: Store, *, now: datetime | None = None) -> Backlog:
    """Size and age of a station's outbox backlog (for ``/status`` and ``/metrics``).

    Raises:
        StoreError: the store cannot be read.
    """
    size = store.count_outbox_pending()
    if size == 0:
        return Backlog(0, None, 0.0)
    first = store.outbox_pending(limit=1)
    if not first:
        return Backlog(0, None, 0.0)
    oldest = first[0].created_at
    age = ((now or datetime.now(UTC)) - parse_utc(oldest)).total_seconds()
    return Backlog(size, oldest, max(age, 0.0))


@dataclass
class _Backoff:
    base: float
    cap: float
    rng: Callable[[], float]
    failures: int = field(default=0)

    def next_delay(self) -> float:
        self.failures += 1
        ceiling = min(self.cap, self.base * 2 ** min(self.failures - 1, 20))
        return float(ceiling / 2 + self.rng() * ceiling / 2)  # "equal jitter": never 0, never in lockstep

    def reset(self) -> None:
        self.failures = 0


class Forwarder:
    """Delivers one station's outbox to its sinks; run it in a thread (:meth:`start`) or call :meth:`run`."""

    def __init__(
        self,
        store: Store,
        sinks: Sequence[Sink],
        *,
        batch: int = 200,
        idle_wait: float = 0.2,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
        backlog_alert_after: float | None = 300.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        """Forward ``store``'s outbox to ``sinks``.

        Args:
            store: the station's store (its station id selects the outbox rows).
            sinks: destinations; an item is delivered when every sink has handled it.
            batch: items read per pass.
            idle_wait: seconds between polls when the outbox is empty.
            retry_base: first backoff after a failure, seconds (doubles up to ``retry_cap``, with jitter).
            retry_cap: longest backoff, seconds.
            backlog_alert_after: chain an ``outbox_backlog_old`` event when the oldest pending item is older
                than this many seconds (None: never).
            rng: random source of the jitter (tests pass a fixed one).
        """
        if not sinks:
            raise ValueError("expected at least one sink, got none")
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"expected sinks with distinct names, got {names}")
        self.store = store
        self.sinks = tuple(sinks)
        self.batch = batch
        self.idle_wait = idle_wait
        self.backlog_alert_after = backlog_alert_after
        self._backoff = _Backoff(retry_base, retry_cap, rng)
        self._cursor: dict[str, int] = {s.name: 0 for s in sinks}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._alerted = False
        self.delivered = 0
        self.last_error: str | None = None

    # -- one pass -----------------------------------------------------------------------------------------

    def step(self) -> int:
        """Deliver one batch of pending items to every sink and mark what all took; returns items marked.

        Raises:
            StoreError: the store cannot be read or written (the items stay pending).
        """
        items = self.store.outbox_pending(limit=self.batch)
        self._check_backlog(items)
        if not items:
            return 0
        error: str | None = None
        for sink in self.sinks:
            todo = [it for it in items if it.id > self._cursor[sink.name]]
            if not todo:
                continue
            try:
                result = sink.deliver(todo)
            except Exception as e:  # a sink bug must not kill the forwarder: retried like an outage
                log.exception("sink %s failed", sink.name)
                result = Delivery(0, error=f"{type(e).__name__}: {e}")
            if result.handled:
                self._cursor[sink.name] = todo[result.handled - 1].id
            for item, why in result.dead:
                self._dead_letter(sink.name, item, why)
            if result.error is not None:
                error = f"{sink.name}: {result.error}"
        low = min(self._cursor.values())
        done = [it.id for it in items if it.id <= low]
        marked = self.store.outbox_mark_delivered(done, at=datetime.now(UTC)) if done else 0
        self.delivered += marked
        self.last_error = error
        if error is not None:
            raise _SinkFailed(error)
        return marked

    def _dead_letter(self, sink: str, item: OutboxItem, why: str) -> None:
        log.error("dead letter at %s: %s %s (%s)", sink, item.topic, item.record_id, why)
        if item.topic == "events" and _kind(item) == DEAD_LETTER_KIND:
            return  # the refusal of a refusal's own event is logged, not chained again (no loop)
        self.store.add_event(
            DEAD_LETTER_KIND,
            at=datetime.now(UTC),
            actor="forwarder",
            reason=why,
            data={"sink": sink, "outbox_id": item.id, "record_id": item.record_id, "topic": item.topic},
        )

    def _check_backlog(self, items: Sequence[OutboxItem]) -> None:
        if self.backlog_alert_after is None:
            return
        age = (datetime.now(UTC) - parse_utc(items[0].created_at)).total_seconds() if items else 0.0
        if age <= self.backlog_alert_after:
            self._alerted = False
            return
        if self._alerted:
            return
        self._alerted = True
        size = self.store.count_outbox_pending()
        log.warning("outbox backlog: %d item(s), oldest %.0f s old", size, age)
        self.store.add_event(
            BACKLOG_KIND,
            at=datetime.now(UTC),
            actor="forwarder",
            reason=f"outbox backlog older than {self.backlog_alert_after:g} s",
            data={"size": size, "age_seconds": round(age, 3), "last_error": self.last_error},
        )

    # -- the loop -----------------------------------------------------------------------------------------

    def run(self, *, until_empty: bool = False) -> None:
        """Forward until :meth:`stop` (or, with ``until_empty``, until nothing is pending)."""
        while not self._stop.is_set():
            try:
                marked = self.step()
            except (StoreError, _SinkFailed) as e:
                delay = self._backoff.next_delay()
                log.warning("outbox delivery failed (%s); retry in %.1f s", e, delay)
                self._stop.wait(delay)
                continue
            self._backoff.reset()
            if marked == 0:
                if until_empty and self.store.count_outbox_pending() == 0:
                    return
                self._stop.wait(self.idle_wait)

    def start(self) -> threading.Thread:
        """Run in a daemon thread named after the station."""
        self._stop.clear()
        t = threading.Thread(target=self.run, name=f"outbox-{self.store.station_id}", daemon=True)
        t.start()
        self._thread = t
        return t

    def request_stop(self) -> None:
        """Ask the loop to end after the current pass (safe from a signal handler)."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop, wait for the thread, close the sinks."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing sink %s", sink.name)

    def backlog(self) -> Backlog:
        """The station's current backlog."""
        return outbox_backlog(self.store)


class _SinkFailed(Exception):
    """A sink stopped on a transient failure (internal: turns into a backoff)."""


def _kind(item: OutboxItem) -> str | None:
    try:
        payload = json.loads(item.payload)
    except ValueError:
        return None
    kind = payload.get("kind") if isinstance(payload, dict) else None
    return kind if isinstance(kind, str) else None
