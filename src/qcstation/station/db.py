"""Tables of the traceability store, as SQLAlchemy Core metadata (portable: SQLite now, PostgreSQL later).

Conventions shared by every table:

- timestamps are TEXT in one fixed ISO-8601 UTC format, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, so the text sorts
  by time on every backend and hashes the same everywhere (see :func:`qcstation.station.store.utc_iso`);
- free text that a camera, an MES or a person supplies is TEXT (unbounded on every backend); ids that
  are keys are bounded and checked by the store before they are written;
- structured values (regions, reasons, scores, timings, event data) are JSON text written by the store in a
  canonical form, so the stored text is exactly what the hash chain covers;
- ``inspections`` and ``events`` are append-only and chained: one hash chain per station across both tables,
  ordered by ``seq``; ``chain_head`` holds each station's last (seq, hash), updated in the same transaction;
- ``batches``, ``holds`` and ``outbox`` are derived, mutable state; every change to them is also a chained
  event, so the audit trail never depends on them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

SCHEMA_VERSION = 1
"""Version of the tables below, stored in ``meta`` under ``schema_version``."""

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first row (seq 1) of every station's chain."""

metadata = MetaData()

# BIGINT on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the autoincrementing rowid.
_AutoId = BigInteger().with_variant(Integer(), "sqlite")

inspections = Table(
    "inspections",
    metadata,
    Column("id", String(36), primary_key=True, comment="UUIDv7 of the record"),
    Column("seq", BigInteger, nullable=False, comment="position in the station's hash chain"),
    Column("station", String(128), nullable=False),
    Column("batch_id", String(128), nullable=False),
    Column("product", Text, nullable=False),
    Column("recipe_hash", String(64), nullable=False),
    Column("serial", Text, nullable=True),
    Column("frame_id", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("captured_at", String(27), nullable=False),
    Column("decided_at", String(27), nullable=False),
    Column("model_name", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("disposition", String(16), nullable=False),
    Column("reasons", Text, nullable=False, comment="JSON list of strings"),
    Column("regions", Text, nullable=False, comment="JSON list of Region.to_dict()"),
    Column("class_scores", Text, nullable=False, comment="JSON object class -> score"),
    Column("image_score", Double, nullable=True),
    Column("image_ref", String(64), nullable=True, comment="sha256 of the archived image"),
    Column("timings", Text, nullable=False, comment="JSON object stage -> ms"),
    Column("error", Text, nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("station", "seq", name="uq_inspections_station_seq"),
)
Index("ix_inspections_batch_decided", inspections.c.batch_id, inspections.c.decided_at)
Index("ix_inspections_serial", inspections.c.serial)
Index("ix_inspections_verdict", inspections.c.verdict)
Index("ix_inspections_decided", inspections.c.decided_at)
Index("ix_inspections_image_ref", inspections.c.image_ref)
# list pages filter by batch or serial and page in chain order: without these, a page scans the whole chain
Index("ix_inspections_station_batch_seq", inspections.c.station, inspections.c.batch_id, inspections.c.seq)
Index("ix_inspections_station_serial_seq", inspections.c.station, inspections.c.serial, inspections.c.seq)

events = Table(
    "events",
    metadata,
    Column("id", String(36), primary_key=True, comment="UUIDv7 of the event"),
    Column("seq", BigInteger, nullable=False),
    Column("station", String(128), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("batch_id", String(128), nullable=True),
    Column("at", String(27), nullable=False),
    Column("actor", Text, nullable=False),
    Column("reason", Text, nullable=True),
    Column("data", Text, nullable=False, comment="JSON object"),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("station", "seq", name="uq_events_station_seq"),
)
Index("ix_events_at", events.c.at)
Index("ix_events_batch", events.c.batch_id)

# A batch belongs to a station: one MES batch may pass several stations writing to one PostgreSQL.
batches = Table(
    "batches",
    metadata,
    Column("station", String(128), nullable=False),
    Column("batch_id", String(128), nullable=False),
    Column("product", Text, nullable=False),
    Column("recipe_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("planned_qty", Integer, nullable=True),
    Column("opened_at", String(27), nullable=False),
    Column("closed_at", String(27), nullable=True),
    Column("opened_by", Text, nullable=False),
    PrimaryKeyConstraint("station", "batch_id", name="pk_batches"),
)

holds = Table(
    "holds",
    metadata,
    Column("hold_id", String(36), primary_key=True, comment="id of the hold_raised event"),
    Column("station", String(128), nullable=False),
    Column("batch_id", String(128), nullable=False),
    Column("rule", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("evidence", Text, nullable=False, comment="JSON list of record ids"),
    Column("suspects", Text, nullable=False, comment="JSON list of record ids"),
    Column("raised_at", String(27), nullable=False),
    Column("raised_by", Text, nullable=False),
    Column("released_at", String(27), nullable=True),
    Column("released_by", Text, nullable=True),
    Column("release_reason", Text, nullable=True),
)
Index("ix_holds_station_batch", holds.c.station, holds.c.batch_id)

outbox = Table(
    "outbox",
    metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("station", String(128), nullable=False),
    Column("topic", String(32), nullable=False, comment="'inspections' or 'events'"),
    Column("record_id", String(36), nullable=False, comment="idempotency key downstream"),
    Column("payload", Text, nullable=False, comment="JSON of the record as the API shows it"),
    Column("created_at", String(27), nullable=False),
    Column("delivered_at", String(27), nullable=True),
)
Index("ix_outbox_pending", outbox.c.station, outbox.c.delivered_at, outbox.c.id)

chain_head = Table(
    "chain_head",
    metadata,
    Column("station", String(128), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
)

CHAINED_TABLES = {"inspections": inspections, "events": events}
"""The tables whose rows are linked by the per-station hash chain."""
