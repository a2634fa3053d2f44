"""Initial schema: the tables of schema version 1, exactly as ``Store.open`` created them before Alembic.

Revision ID: 0001
Revises:
Create Date: 2025-03-01

A store made by ``Store.open`` before migrations existed has these tables and no ``alembic_version``;
:func:`qcstation.station.migrations.upgrade` stamps it at this revision instead of running it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_AutoId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = 27


def upgrade() -> None:
    """Create the seven tables and their indexes; record schema_version 1 in ``meta``."""
    op.create_table(
        "inspections",
        sa.Column("id", sa.String(36), primary_key=True, comment="UUIDv7 of the record"),
        sa.Column("seq", sa.BigInteger, nullable=False, comment="position in the station's hash chain"),
        sa.Column("station", sa.String(128), nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("product", sa.Text, nullable=False),
        sa.Column("recipe_hash", sa.String(64), nullable=False),
        sa.Column("serial", sa.Text, nullable=True),
        sa.Column("frame_id", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("captured_at", sa.String(_TS), nullable=False),
        sa.Column("decided_at", sa.String(_TS), nullable=False),
        sa.Column("model_name", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("disposition", sa.String(16), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False, comment="JSON list of strings"),
        sa.Column("regions", sa.Text, nullable=False, comment="JSON list of Region.to_dict()"),
        sa.Column("class_scores", sa.Text, nullable=False, comment="JSON object class -> score"),
        sa.Column("image_score", sa.Double, nullable=True),
        sa.Column("image_ref", sa.String(64), nullable=True, comment="sha256 of the archived image"),
        sa.Column("timings", sa.Text, nullable=False, comment="JSON object stage -> ms"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("station", "seq", name="uq_inspections_station_seq"),
    )
    op.create_index("ix_inspections_batch_decided", "inspections", ["batch_id", "decided_at"])
    op.create_index("ix_inspections_serial", "inspections", ["serial"])
    op.create_index("ix_inspections_verdict", "inspections", ["verdict"])
    op.create_index("ix_inspections_decided", "inspections", ["decided_at"])
    op.create_index("ix_inspections_image_ref", "inspections", ["image_ref"])

    op.create_table(
        "events",
        sa.Column("id", sa.String(36), primary_key=True, comment="UUIDv7 of the event"),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("station", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=True),
        sa.Column("at", sa.String(_TS), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("data", sa.Text, nullable=False, comment="JSON object"),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("station", "seq", name="uq_events_station_seq"),
    )
    op.create_index("ix_events_at", "events", ["at"])
    op.create_index("ix_events_batch", "events", ["batch_id"])

    op.create_table(
        "batches",
        sa.Column("station", sa.String(128), nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("product", sa.Text, nullable=False),
        sa.Column("recipe_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("planned_qty", sa.Integer, nullable=True),
        sa.Column("opened_at", sa.String(_TS), nullable=False),
        sa.Column("closed_at", sa.String(_TS), nullable=True),
        sa.Column("opened_by", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("station", "batch_id", name="pk_batches"),
    )

    op.create_table(
        "holds",
        sa.Column("hold_id", sa.String(36), primary_key=True, comment="id of the hold_raised event"),
        sa.Column("station", sa.String(128), nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("evidence", sa.Text, nullable=False, comment="JSON list of record ids"),
        sa.Column("suspects", sa.Text, nullable=False, comment="JSON list of record ids"),
        sa.Column("raised_at", sa.String(_TS), nullable=False),
        sa.Column("raised_by", sa.Text, nullable=False),
        sa.Column("released_at", sa.String(_TS), nullable=True),
        sa.Column("released_by", sa.Text, nullable=True),
        sa.Column("release_reason", sa.Text, nullable=True),
    )
    op.create_index("ix_holds_station_batch", "holds", ["station", "batch_id"])

    op.create_table(
        "outbox",
        sa.Column("id", _AutoId, primary_key=True, autoincrement=True),
        sa.Column("station", sa.String(128), nullable=False),
        sa.Column("topic", sa.String(32), nullable=False, comment="'inspections' or 'events'"),
        sa.Column("record_id", sa.String(36), nullable=False, comment="idempotency key downstream"),
        sa.Column("payload", sa.Text, nullable=False, comment="JSON of the record as the API shows it"),
        sa.Column("created_at", sa.String(_TS), nullable=False),
        sa.Column("delivered_at", sa.String(_TS), nullable=True),
    )
    op.create_index("ix_outbox_pending", "outbox", ["station", "delivered_at", "id"])

    op.create_table(
        "chain_head",
        sa.Column("station", sa.String(128), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )

    meta = op.create_table(
        "meta",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.bulk_insert(meta, [{"key": "schema_version", "value": "1"}])


def downgrade() -> None:
    """Drop every table of the store (its records too: only for throw-away databases)."""
    for name in ("meta", "chain_head", "outbox", "holds", "batches", "events", "inspections"):
        op.drop_table(name)
