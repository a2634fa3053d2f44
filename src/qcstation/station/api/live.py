"""The live feed: a station sink that fans committed results and events out to stream (SSE) clients.

The station calls :meth:`LiveFeed.on_committed` and :meth:`LiveFeed.on_event` from its commit thread, after
the commit. The feed never blocks that thread: each client has a bounded queue; when a slow client's queue is
full the oldest message is dropped and the client gets one ``dropped`` message saying how many it missed (it
can catch up through ``GET /inspections?cursor=``).

The feed also lets an upload wait for its own part to be committed (:meth:`LiveFeed.expect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from qcstation.station.pipeline import StationEvent
from qcstation.station.store import utc_iso
from qcstation.station.types import Decision, HoldRaised, HoldReleased, StationFault


@dataclass(frozen=True, slots=True)
class Message:
    """One stream message: SSE ``id``, ``event`` name and JSON ``data``."""

    id: int | None
    event: str
    data: dict[str, Any]

    def sse(self) -> str:
        """The message in text/event-stream framing."""
        head = "" if self.id is None else f"id: {self.id}\n"
        return f"{head}event: {self.event}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n"


@dataclass(eq=False)
class Subscription:
    """One client's bounded queue (drop-oldest)."""

    loop: asyncio.AbstractEventLoop
    size: int
    queue: deque[Message] = field(init=False)
    dropped: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.queue = deque(maxlen=self.size)

    def push(self, msg: Message) -> None:
        """Called from any thread; never blocks for long."""
        with self.lock:
            if len(self.queue) == self.size:
                self.dropped += 1
            self.queue.append(msg)
        with contextlib.suppress(RuntimeError):  # the client's loop is gone: it is being unsubscribed
            self.loop.call_soon_threadsafe(self.wake.set)

    def take(self) -> tuple[list[Message], int]:
        """Everything queued, and how many were dropped since the last take."""
        with self.lock:
            msgs = list(self.queue)
            self.queue.clear()
            dropped, self.dropped = self.dropped, 0
            self.wake.clear()
        return msgs, dropped


class _Waiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.decision: Decision | None = None


class LiveFeed:
    """A :class:`~qcstation.station.pipeline.Sink` feeding the stream endpoint."""

    def __init__(self, *, product: str, recipe_hash: str, station_id: str, queue_size: int = 256) -> None:
        """Describe results with the station's product and recipe; ``queue_size`` bounds each client."""
        self.product = product
        self.recipe_hash = recipe_hash
        self.station_id = station_id
        self.queue_size = queue_size
        self._subs: set[Subscription] = set()
        self._waiters: dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.closed = threading.Event()

    # -- sink -------------------------------------------------------------------------------------------

    def on_committed(self, decision: Decision) -> None:
        """A part was committed: publish it, and wake an upload waiting for it."""
        self.publish("result", self.result_payload(decision))
        with self._lock:
            waiter = self._waiters.pop(decision.frame.frame_id, None)
        if waiter is not None:
            waiter.decision = decision
            waiter.done.set()

    def on_event(self, event: StationEvent) -> None:
        """A hold, release or fault was committed: publish it."""
        if isinstance(event, HoldRaised):
            self.publish(
                "hold_raised",
                {
                    "job_id": event.batch_id,
                    "rule": event.rule,
                    "detail": event.detail,
                    "evidence": list(event.evidence),
                    "suspects": list(event.suspects),
                    "at": utc_iso(event.at),
                    "actor": event.actor,
                },
            )
        elif isinstance(event, HoldReleased):
            self.publish(
                "hold_released",
                {"job_id": event.batch_id, "by": event.by, "reason": event.reason, "at": utc_iso(event.at)},
            )
        elif isinstance(event, StationFault):
            self.publish(
                "station_recovered" if event.recovered else "station_fault",
                {"kind": event.kind, "detail": event.detail, "at": utc_iso(event.at)},
            )

    def result_payload(self, d: Decision) -> dict[str, Any]:
        """The stream's view of a committed part (``GET /inspections/{result_id}`` has every field)."""
        insp = d.inspection
        return {
            "result_id": d.record_id,
            "part_id": d.frame.serial,
            "product_id": self.product,
            "recipe_id": self.recipe_hash,
            "job_id": d.batch_id,
            "measurement_id": d.frame.frame_id,
            "creation_time": utc_iso(d.decided_at),
            "result_state": d.judgement.verdict.value,
            "disposition": d.disposition.value,
            "reasons": list(d.judgement.reasons),
            "regions": [r.to_dict() for r in insp.regions] if insp is not None else [],
            "image_score": None if insp is None else round(float(insp.image_score), 6),
            "error": d.error,
            "station_id": self.station_id,
        }

    # -- fan-out ----------------------------------------------------------------------------------------

    def publish(self, event: str, data: dict[str, Any]) -> None:
        """Queue a message for every client (any thread)."""
        msg = Message(next(self._ids), event, data)
        with self._lock:
            subs = list(self._subs)
        for s in subs:
            s.push(msg)

    def subscribe(self, loop: asyncio.AbstractEventLoop, *, size: int | None = None) -> Subscription:
        """A new client queue."""
        sub = Subscription(loop, size or self.queue_size)
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a client."""
        with self._lock:
            self._subs.discard(sub)

    @property
    def clients(self) -> int:
        """Connected stream clients."""
        with self._lock:
            return len(self._subs)

    def close(self) -> None:
        """End every stream (server shutdown)."""
        self.closed.set()
        with self._lock:
            subs = list(self._subs)
        for s in subs:
            with contextlib.suppress(RuntimeError):
                s.loop.call_soon_threadsafe(s.wake.set)

    async def stream(
        self, sub: Subscription, *, limit: int | None = None, keepalive_s: float = 15.0
    ) -> AsyncIterator[str]:
        """SSE text for one client until it disconnects, the feed closes, or ``limit`` messages were sent."""
        sent = 0
        try:
            yield "retry: 2000\n: connected\n\n"
            while not self.closed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.wake.wait(), keepalive_s)
                msgs, dropped = sub.take()
                if dropped:
                    note = {"dropped": dropped, "hint": "catch up with GET /api/v1/inspections?cursor="}
                    yield Message(None, "dropped", note).sse()
                if not msgs and not dropped:
                    yield ": keep-alive\n\n"
                    continue
                for m in msgs:
                    yield m.sse()
                    sent += 1
                    if limit is not None and sent >= limit:
                        return
        finally:
            self.unsubscribe(sub)

    # -- uploads ----------------------------------------------------------------------------------------

    def expect(self, frame_id: str) -> _Waiter:
        """Register interest in the commit of ``frame_id`` (before the frame is submitted)."""
        w = _Waiter()
        with self._lock:
            self._waiters[frame_id] = w
        return w

    def forget(self, frame_id: str) -> None:
        """Stop waiting for ``frame_id``."""
        with self._lock:
            self._waiters.pop(frame_id, None)
