"""Indexes for list pages filtered by batch or serial.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

A list page filters by batch or serial and pages in chain order (station, seq). With only the (station, seq)
index, SQLite walked the whole chain and filtered row by row: 0.2-1.9 s a page on a million records
(docs/bench-api.md). These make such a page an index range scan.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the two indexes (a minute or so on a store of millions of records), unless they exist."""
    have = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes("inspections")}
    if "ix_inspections_station_batch_seq" not in have:
        op.create_index("ix_inspections_station_batch_seq", "inspections", ["station", "batch_id", "seq"])
    if "ix_inspections_station_serial_seq" not in have:
        op.create_index("ix_inspections_station_serial_seq", "inspections", ["station", "serial", "seq"])


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_inspections_station_serial_seq", table_name="inspections")
    op.drop_index("ix_inspections_station_batch_seq", table_name="inspections")
