"""Hand-written factories for store and archive tests: real Frame, Inspection and Decision objects."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import uuid6

from qcstation.inspect.types import Frame, Inspection, ModelInfo, Region
from qcstation.station.types import (
    Decision,
    Disposition,
    HoldRaised,
    HoldReleased,
    Judgement,
    StationFault,
    Verdict,
)

T0 = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)
MODEL = ModelInfo(name="scratch-net", version="1.2.0", sha256="ab" * 32)
RECIPE_HASH = "cd" * 32
PRODUCT = "bracket-A"


def new_id() -> str:
    """A fresh UUIDv7 string."""
    return str(uuid6.uuid7())


def region(
    class_name: str = "scratch",
    *,
    class_id: int = 1,
    score: float = 0.9,
    bbox: tuple[int, int, int, int] = (4, 5, 10, 3),
    area_px: float = 21.0,
    area_mm2: float | None = 0.84,
) -> Region:
    """A defect region whose values survive ``to_dict`` rounding unchanged."""
    return Region(
        class_id=class_id,
        class_name=class_name,
        score=score,
        bbox=bbox,
        area_px=area_px,
        area_mm2=area_mm2,
        centroid=(9.0, 6.5),
    )


def frame(
    frame_id: str = "part_0001.png",
    *,
    at: datetime = T0,
    serial: str | None = None,
    fault: str | None = None,
) -> Frame:
    """A small gray frame (or a faulted one)."""
    image = None if fault else np.full((16, 16), 200, np.uint8)
    return Frame(frame_id=frame_id, captured_at=at, image=image, fault=fault, serial=serial, source="cam0")


def inspection(regions: tuple[Region, ...] = (), *, image_score: float | None = None) -> Inspection:
    """The detector's output for ``regions``."""
    scores: dict[str, float] = {"scratch": 0.1, "dent": 0.05}
    for r in regions:
        scores[r.class_name] = max(scores.get(r.class_name, 0.0), r.score)
    return Inspection(
        regions=regions,
        class_scores=scores,
        image_score=max(scores.values()) if image_score is None else image_score,
        timings_ms={"preprocess": 1.5, "infer": 12.25, "postprocess": 0.75},
        model=MODEL,
        frame_shape=(16, 16),
    )


@dataclass
class Factory:
    """Makes decisions with increasing times and frame numbers, like a running station."""

    batch_id: str = "B1"
    start: datetime = T0
    step: timedelta = timedelta(seconds=1)
    n: int = field(default=0, init=False)

    def now(self) -> datetime:
        """The time of the latest decision."""
        return self.start + self.step * self.n

    def decision(
        self,
        verdict: Verdict = Verdict.PASS,
        *,
        regions: tuple[Region, ...] = (),
        serial: str | None = None,
        disposition: Disposition | None = None,
        events: tuple[HoldRaised | HoldReleased | StationFault, ...] = (),
        batch_id: str | None = None,
        record_id: str | None = None,
    ) -> Decision:
        """One decision; ERROR decisions have a faulted frame and no inspection."""
        self.n += 1
        at = self.now()
        fid = f"part_{self.n:04d}.png"
        if disposition is None:
            disposition = Disposition.ACCEPT if verdict is Verdict.PASS else Disposition.REJECT
        if verdict is Verdict.ERROR:
            fr = frame(
                fid, at=at - timedelta(milliseconds=50), serial=serial, fault="cannot decode: truncated"
            )
            insp = None
            error: str | None = "cannot decode: truncated"
            reasons: tuple[str, ...] = ("frame fault",)
        else:
            fr = frame(fid, at=at - timedelta(milliseconds=50), serial=serial)
            insp = inspection(regions)
            error = None
            reasons = (
                tuple(f"{r.class_name}: score {r.score:.2f}" for r in regions) if verdict != "PASS" else ()
            )
        return Decision(
            record_id=record_id or new_id(),
            frame=fr,
            inspection=insp,
            judgement=Judgement(verdict, reasons, tuple({r.class_name for r in regions})),
            disposition=disposition,
            batch_id=batch_id or self.batch_id,
            decided_at=at,
            error=error,
            events=events,
            keep_image=verdict is not Verdict.PASS,
            timings_ms={"queue": 0.5, "decide": 0.25},
        )

    def hold(self, evidence: tuple[str, ...], *, rule: str = "consecutive_fails") -> HoldRaised:
        """A hold raised now on the factory's batch."""
        return HoldRaised(
            batch_id=self.batch_id,
            rule=rule,
            detail=f"{len(evidence)} consecutive fails",
            evidence=evidence,
            suspects=evidence[:1],
            at=self.now(),
        )


@contextmanager
def raw(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A raw sqlite3 connection that commits on success: the tamperer's tool."""
    conn = sqlite3.connect(db_path)
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()
