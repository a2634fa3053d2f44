"""Quality review of verdicts: the review queue, confirm/override as audit events, and the dataset export.

Inspection records are append-only, so a review never changes a record. It is an audit event in the store's
hash chain (kind ``review_confirm`` or ``review_override``, with who, why, the record id, the original and
the final verdict). The chain is the truth; the ``reviews`` table is a derived index of those events (one row
per review event, indexed by record id) so that "the latest review of this record" and "the records not yet
reviewed" are index lookups rather than scans of every event's JSON. The index is written right after its
event and caught up from the chain when a :class:`ReviewStore` is opened (and after a failed index write), so
it can always be rebuilt and the audit trail never depends on it.

:func:`decide` is the pure rule of what a review may say; :func:`export_dataset` turns reviewed records with
kept images into an ``indexed_masks`` dataset the training package reads.
"""

from __future__ import annotations

import csv
import logging
import re
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import sqlalchemy as sa
import yaml
from sqlalchemy import exc as sa_exc

from qcstation.station import db
from qcstation.station.archive import ImageArchive
from qcstation.station.errors import StationError, StoreError
from qcstation.station.store import EventRecord, InspectionRecord, Store, utc_iso
from qcstation.station.types import Verdict

__all__ = [
    "REVIEW_KINDS",
    "ExportSummary",
    "Review",
    "ReviewError",
    "ReviewStore",
    "decide",
    "export_dataset",
    "reviews_for",
]

log = logging.getLogger(__name__)

Decision = Literal["confirm", "override"]
REVIEW_KINDS = ("review_confirm", "review_override")
"""Audit event kinds of a review."""
QUEUE_VERDICTS = (Verdict.REVIEW.value, Verdict.FAIL.value)
"""Verdicts that wait in the review queue until a quality engineer has looked at them."""

metadata = sa.MetaData()

reviews = sa.Table(
    "reviews",
    metadata,
    sa.Column("event_id", sa.String(36), primary_key=True, comment="id of the chained review event"),
    sa.Column("event_seq", sa.BigInteger, nullable=False, comment="the event's position in the chain"),
    sa.Column("station", sa.String(128), nullable=False),
    sa.Column("record_id", sa.String(36), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("original_verdict", sa.String(16), nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.String(27), nullable=False),
)
sa.Index("ix_reviews_record", reviews.c.record_id, reviews.c.event_seq)
sa.Index("ix_reviews_station_seq", reviews.c.station, reviews.c.event_seq)


class ReviewError(StationError):
    """A review contradicts the record (confirming a REVIEW, overriding to the same verdict, …)."""

    code = "review"


@dataclass(frozen=True, slots=True)
class Review:
    """One review of one inspection record (the latest one counts)."""

    event_id: str
    record_id: str
    decision: Decision
    original_verdict: str
    verdict: str
    actor: str
    reason: str
    at: str
    event_seq: int

    @property
    def kind(self) -> str:
        """The audit event kind."""
        return f"review_{self.decision}"

    @classmethod
    def from_event(cls, e: EventRecord) -> Review:
        """From a stored ``review_*`` event."""
        d = e.data
        return cls(
            event_id=e.id,
            record_id=str(d["record_id"]),
            decision="override" if e.kind == "review_override" else "confirm",
            original_verdict=str(d["original_verdict"]),
            verdict=str(d["verdict"]),
            actor=e.actor,
            reason=e.reason or "",
            at=e.at,
            event_seq=e.seq,
        )

    @classmethod
    def from_row(cls, m: Mapping[Any, Any]) -> Review:
        """From a row of the ``reviews`` index."""
        return cls(
            event_id=str(m["event_id"]),
            record_id=str(m["record_id"]),
            decision="override" if m["decision"] == "override" else "confirm",
            original_verdict=str(m["original_verdict"]),
            verdict=str(m["verdict"]),
            actor=str(m["actor"]),
            reason=str(m["reason"]),
            at=str(m["at"]),
            event_seq=int(str(m["event_seq"])),
        )


def decide(original: Verdict | str, decision: Decision, verdict: str | None) -> str:
    """The final verdict of a review, or why the review contradicts the record.

    * ``confirm`` keeps a PASS or FAIL (``verdict`` may be omitted, or must repeat it). A REVIEW part has no
      verdict to confirm: the engineer decides it with ``override`` to PASS or FAIL.
    * ``override`` replaces the verdict with a different one, PASS or FAIL.

    Raises:
        ReviewError: the review contradicts the record.
    """
    orig = Verdict(original).value
    if verdict is not None and verdict not in (Verdict.PASS.value, Verdict.FAIL.value):
        raise ReviewError(f"a review decides PASS or FAIL, not {verdict}")
    if decision == "confirm":
        if orig not in (Verdict.PASS.value, Verdict.FAIL.value):
            raise ReviewError(
                f"the part's verdict is {orig}; there is nothing to confirm: override it to PASS or FAIL"
            )
        if verdict is not None and verdict != orig:
            raise ReviewError(f"confirm keeps the verdict {orig}; to make it {verdict} use override")
        return orig
    if verdict is None:
        raise ReviewError("an override needs the new verdict (PASS or FAIL)")
    if verdict == orig:
        raise ReviewError(f"the verdict already is {orig}; to agree with it use confirm")
    return verdict


class ReviewStore:
    """Reviews of one station's records, in the store's database (get one with :func:`reviews_for`)."""

    def __init__(self, store: Store) -> None:
        """Create the ``reviews`` index if missing and catch it up with the chain.

        Raises:
            StoreError: the table cannot be created or read.
        """
        self.store = store
        self._engine = store.engine
        self._station = store.station_id
        self._lock = threading.Lock()
        self._stale = False
        try:
            metadata.create_all(self._engine)
        except sa_exc.SQLAlchemyError as e:
            raise StoreError(f"cannot create the reviews table in {store.url}: {e}") from e
        self.sync()

    # -- writes -------------------------------------------------------------------------------------------

    def record(
        self,
        rec: InspectionRecord,
        *,
        decision: Decision,
        verdict: str | None,
        actor: str,
        reason: str,
        at: datetime,
    ) -> Review:
        """Record a review of ``rec`` as a chained audit event, then index it.

        Raises:
            ReviewError: the review contradicts the record, or the reason is blank.
            StoreError: the event could not be written (nothing was recorded).
        """
        reason = reason.strip()
        if not reason:
            raise ReviewError("a review needs a reason")
        final = decide(rec.verdict, decision, verdict)
        kind = f"review_{decision}"
        data = {
            "record_id": rec.id,
            "serial": rec.serial,
            "original_verdict": rec.verdict.value,
            "verdict": final,
            "decision": decision,
        }
        with self._lock:
            self.store.add_event(kind, at=at, actor=actor, batch_id=rec.batch_id, reason=reason, data=data)
            # The event is the truth; index what the chain now holds (this review and any missed before).
            self._stale = True
            self._sync_locked()
        found = self.latest(rec.id)
        if found is None:  # pragma: no cover - the event was just written
            raise StoreError(f"the review of {rec.id} was recorded but cannot be read back")
        return found

    def sync(self) -> int:
        """Index every review event of the chain not indexed yet; returns how many were added."""
        with self._lock:
            self._stale = True
            return self._sync_locked()

    def _sync_locked(self) -> int:
        if not self._stale:
            return 0
        r = reviews
        added = 0
        try:
            with self._engine.connect() as conn:
                last = conn.execute(
                    sa.select(r.c.event_id)
                    .where(r.c.station == self._station)
                    .order_by(r.c.event_seq.desc())
                    .limit(1)
                ).scalar()
            for kind in REVIEW_KINDS:
                after = last
                while True:
                    batch = self.store.events(kind=kind, after=after, limit=1000)
                    if not batch:
                        break
                    rows = [self._row(Review.from_event(e)) for e in batch]
                    with self._engine.begin() as conn:
                        known = set(
                            conn.scalars(
                                sa.select(r.c.event_id).where(r.c.event_id.in_([x["event_id"] for x in rows]))
                            )
                        )
                        new = [x for x in rows if x["event_id"] not in known]
                        if new:
                            conn.execute(r.insert(), new)
                    added += len(new)
                    after = batch[-1].id
        except (sa_exc.SQLAlchemyError, OSError, KeyError, ValueError) as e:
            log.error("the reviews index could not be caught up (will retry): %s", e)
            return added
        self._stale = False
        return added

    def _row(self, rv: Review) -> dict[str, object]:
        return {
            "event_id": rv.event_id,
            "event_seq": rv.event_seq,
            "station": self._station,
            "record_id": rv.record_id,
            "decision": rv.decision,
            "original_verdict": rv.original_verdict,
            "verdict": rv.verdict,
            "actor": rv.actor,
            "reason": rv.reason,
            "at": rv.at,
        }

    # -- reads ----------------------------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        if self._stale:
            with self._lock:
                self._sync_locked()
        try:
            with self._engine.connect() as conn:
                yield conn
        except (sa_exc.SQLAlchemyError, OSError) as e:
            raise StoreError(f"cannot read reviews from {self.store.url}: {e}") from e

    def latest(self, record_id: str) -> Review | None:
        """The latest review of a record, or None (one index lookup)."""
        r = reviews
        with self._read() as conn:
            row = conn.execute(
                sa.select(r).where(r.c.record_id == record_id).order_by(r.c.event_seq.desc()).limit(1)
            ).first()
        return None if row is None else Review.from_row(row._mapping)

    def latest_many(self, record_ids: Sequence[str]) -> dict[str, Review]:
        """The latest review of each of ``record_ids`` that has one."""
        if not record_ids:
            return {}
        r = reviews
        out: dict[str, Review] = {}
        with self._read() as conn:
            rows = conn.execute(
                sa.select(r).where(r.c.record_id.in_(list(record_ids))).order_by(r.c.event_seq)
            ).all()
        for row in rows:
            rv = Review.from_row(row._mapping)
            out[rv.record_id] = rv
        return out

    def queue(
        self,
        *,
        before: str | None = None,
        limit: int = 50,
        batch_id: str | None = None,
        include_reviewed: bool = False,
    ) -> list[InspectionRecord]:
        """REVIEW and FAIL records of this station, newest first, not yet reviewed (unless asked).

        Args:
            before: cursor, the id of the last record of the previous page (newer pages come first).
            limit: page size, 1..1000.
            batch_id: only this batch.
            include_reviewed: also the records that have been reviewed already.

        Raises:
            ValueError: a bad limit or an unknown cursor.
            StoreError: the read failed.
        """
        if not 1 <= limit <= 1000:
            raise ValueError(f"expected a limit of 1..1000, got {limit}")
        i, r = db.inspections, reviews
        q = sa.select(i).where(i.c.station == self._station, i.c.verdict.in_(QUEUE_VERDICTS))
        if batch_id is not None:
            q = q.where(i.c.batch_id == batch_id)
        if not include_reviewed:
            q = q.where(~sa.exists().where(r.c.record_id == i.c.id))
        with self._read() as conn:
            if before is not None:
                seq = conn.scalar(sa.select(i.c.seq).where(i.c.id == before, i.c.station == self._station))
                if seq is None:
                    raise ValueError(f"unknown cursor: no record {before!r} at station {self._station}")
                q = q.where(i.c.seq < seq)
            rows = conn.execute(q.order_by(i.c.seq.desc()).limit(limit)).all()
        return [InspectionRecord.from_row(x._mapping) for x in rows]

    def recent(
        self, *, limit: int = 50, batch_id: str | None = None, verdicts: Sequence[str] = ()
    ) -> list[InspectionRecord]:
        """This station's newest records, newest first (what a screen shows after a reload).

        Raises:
            ValueError: a bad limit or verdict.
            StoreError: the read failed.
        """
        if not 1 <= limit <= 1000:
            raise ValueError(f"expected a limit of 1..1000, got {limit}")
        i = db.inspections
        q = sa.select(i).where(i.c.station == self._station)
        if batch_id is not None:
            q = q.where(i.c.batch_id == batch_id)
        if verdicts:
            q = q.where(i.c.verdict.in_([Verdict(v).value for v in verdicts]))
        with self._read() as conn:
            rows = conn.execute(q.order_by(i.c.seq.desc()).limit(limit)).all()
        return [InspectionRecord.from_row(x._mapping) for x in rows]

    def reviewed(self, *, since: datetime | None = None) -> list[tuple[InspectionRecord, Review]]:
        """Every reviewed record of this station with its latest review, oldest review first.

        Args:
            since: only records whose latest review is at or after this time.
        """
        r, i = reviews, db.inspections
        latest = (
            sa.select(r.c.record_id, sa.func.max(r.c.event_seq).label("seq"))
            .where(r.c.station == self._station)
            .group_by(r.c.record_id)
            .subquery()
        )
        q = (
            sa.select(r, i)
            .join(latest, sa.and_(r.c.record_id == latest.c.record_id, r.c.event_seq == latest.c.seq))
            .join(i, i.c.id == r.c.record_id)
            .where(r.c.station == self._station)
            .order_by(r.c.event_seq)
        )
        if since is not None:
            q = q.where(r.c.at >= utc_iso(since))
        out: list[tuple[InspectionRecord, Review]] = []
        with self._read() as conn:
            rows = conn.execute(q).all()
        for row in rows:
            m = row._mapping
            rv = Review.from_row({c.name: m[c] for c in r.columns})
            rec = InspectionRecord.from_row({c.name: m[c] for c in i.columns})
            out.append((rec, rv))
        return out


_BY_STORE: weakref.WeakKeyDictionary[Store, ReviewStore] = weakref.WeakKeyDictionary()
_BY_STORE_LOCK = threading.Lock()


def reviews_for(store: Store) -> ReviewStore:
    """The (one) :class:`ReviewStore` of a store, made on first use."""
    with _BY_STORE_LOCK:
        rs = _BY_STORE.get(store)
        if rs is None:
            rs = ReviewStore(store)
            _BY_STORE[store] = rs
        return rs


# -- dataset export ------------------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ExportSummary:
    """What :func:`export_dataset` wrote and what it left out (file or record id, why)."""

    out_dir: Path
    written: int = 0
    fail: int = 0
    passed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _mask(shape: tuple[int, int], rec: InspectionRecord, classes: Sequence[str]) -> np.ndarray | str:
    """The class-index mask of a FAIL part: each region's bounding box filled with its class index."""
    mask = np.zeros(shape, np.uint8)
    h, w = shape
    for g in sorted(rec.regions, key=lambda g: g.bbox[2] * g.bbox[3], reverse=True):
        if g.class_name in classes:
            idx = classes.index(g.class_name)
        elif 0 < g.class_id < len(classes):
            idx = g.class_id
        else:
            return f"region class {g.class_name!r} (id {g.class_id}) is not in the classes {list(classes)}"
        if idx == 0:
            continue
        x, y, bw, bh = g.bbox
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(w, x + max(bw, 1)), min(h, y + max(bh, 1))
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = idx  # smaller boxes are drawn last, so they stay visible
    return mask


def export_dataset(
    reviews_store: ReviewStore,
    archive: ImageArchive,
    out_dir: Path,
    classes: Sequence[str],
    *,
    since: datetime | None = None,
    model: dict[str, str] | None = None,
) -> ExportSummary:
    """Write reviewed records with kept images as an ``indexed_masks`` dataset.

    Layout (what :mod:`qcstation.training.data` reads)::

        out_dir/<name>.<ext>        the archived image, byte for byte
        out_dir/masks/<name>.png    uint8 class indices (0 = good)
        out_dir/dataset.yaml        layout: indexed_masks, classes (the model card's), provenance
        out_dir/labels.csv          file, record id, serial, batch, verdicts, decision, reviewer, reason

    A part whose final verdict is FAIL gets its regions' bounding boxes filled with their class index (a
    coarse label: boxes, not outlines); a part reviewed to PASS gets an empty mask. Left out, with the reason
    in the summary: records without a kept image (or whose image was pruned), FAIL parts without regions (the
    defect must be drawn by hand), and regions of classes the list lacks.

    Args:
        reviews_store: the station's reviews.
        archive: the image archive.
        out_dir: the dataset folder (created; existing files of the same names are replaced).
        classes: class names, index 0 = good (the model card's ``classes``).
        since: only records reviewed at or after this time.
        model: name/version/sha256 of the model whose card gave the classes (written to dataset.yaml).

    Returns:
        What was written and skipped.
    """
    classes = list(classes)
    if len(classes) < 2:
        raise ReviewError(f"expected at least 2 classes (good + a defect class), got {classes}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(exist_ok=True)
    summary = ExportSummary(out_dir)
    labels: list[dict[str, object]] = []
    for rec, rv in reviews_store.reviewed(since=since):
        if rec.image_ref is None:
            summary.skipped.append((rec.id, "no kept image"))
            continue
        try:
            path = archive.path(rec.image_ref)
            data = path.read_bytes()
        except (FileNotFoundError, OSError):
            summary.skipped.append((rec.id, "image pruned from the archive"))
            continue
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            summary.skipped.append((rec.id, "kept image cannot be decoded"))
            continue
        shape = (int(image.shape[0]), int(image.shape[1]))
        if rv.verdict == Verdict.FAIL.value:
            if not rec.regions:
                summary.skipped.append((rec.id, "FAIL without regions: draw the defect by hand"))
                continue
            mask = _mask(shape, rec, classes)
            if isinstance(mask, str):
                summary.skipped.append((rec.id, mask))
                continue
        else:
            mask = np.zeros(shape, np.uint8)
        serial = _SAFE.sub("-", rec.serial or "")[:60].strip("-.")
        name = f"{serial}_{rec.id}" if serial else rec.id
        ext = path.suffix.lower() or ".png"
        (out_dir / f"{name}{ext}").write_bytes(data)
        if not cv2.imwrite(str(out_dir / "masks" / f"{name}.png"), mask):
            raise StoreError(f"cannot write the mask of {rec.id} to {out_dir / 'masks'}")
        summary.written += 1
        if rv.verdict == Verdict.FAIL.value:
            summary.fail += 1
        else:
            summary.passed += 1
        labels.append(
            {
                "file": f"{name}{ext}",
                "record_id": rec.id,
                "serial": rec.serial or "",
                "batch_id": rec.batch_id,
                "original_verdict": rv.original_verdict,
                "verdict": rv.verdict,
                "decision": rv.decision,
                "reviewer": rv.actor,
                "reason": rv.reason,
                "reviewed_at": rv.at,
                "model_sha256": rec.model_sha256,
            }
        )
    config: dict[str, object] = {
        "layout": "indexed_masks",
        "classes": classes,
        "images": ".",
        "masks": "masks",
        "generator": "qcstation dataset export",
        "station": reviews_store.store.station_id,
        "count": summary.written,
        "labels": "bounding boxes of the reviewed regions (FAIL); empty masks (reviewed to PASS)",
    }
    if model is not None:
        config["model"] = dict(model)
    if since is not None:
        config["since"] = utc_iso(since)
    (out_dir / "dataset.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    fields = [
        "file",
        "record_id",
        "serial",
        "batch_id",
        "original_verdict",
        "verdict",
        "decision",
        "reviewer",
        "reason",
        "reviewed_at",
        "model_sha256",
    ]
    with (out_dir / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(labels)
    return summary
