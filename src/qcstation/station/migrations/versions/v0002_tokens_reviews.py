"""API tokens and the review index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

``api_tokens`` (hashed bearer tokens, per station) and ``reviews`` (an index of the chained review events)
first created themselves on use; a store where they already exist keeps them, and this revision records
them under Alembic. The definitions are frozen here: a later change to a table is a later revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = 27


def upgrade() -> None:
    """Create ``api_tokens`` and ``reviews`` with their indexes, unless they exist already."""
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "api_tokens" not in existing:
        op.create_table(
            "api_tokens",
            sa.Column("station", sa.String(128), nullable=False),
            sa.Column(
                "name", sa.String(64), nullable=False, comment="who holds it: a person, the MES, a screen"
            ),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column(
                "token_hash", sa.String(64), nullable=False, unique=True, comment="sha256 hex of the token"
            ),
            sa.Column("created_at", sa.String(_TS), nullable=False),
            sa.Column("created_by", sa.Text, nullable=False),
            sa.Column("revoked_at", sa.String(_TS), nullable=True),
            sa.PrimaryKeyConstraint("station", "name", name="pk_api_tokens"),
        )
    if "reviews" not in existing:
        op.create_table(
            "reviews",
            sa.Column("event_id", sa.String(36), primary_key=True, comment="id of the chained review event"),
            sa.Column(
                "event_seq", sa.BigInteger, nullable=False, comment="the event's position in the chain"
            ),
            sa.Column("station", sa.String(128), nullable=False),
            sa.Column("record_id", sa.String(36), nullable=False),
            sa.Column("decision", sa.String(16), nullable=False),
            sa.Column("original_verdict", sa.String(16), nullable=False),
            sa.Column("verdict", sa.String(16), nullable=False),
            sa.Column("actor", sa.Text, nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("at", sa.String(_TS), nullable=False),
        )
        op.create_index("ix_reviews_record", "reviews", ["record_id", "event_seq"])
        op.create_index("ix_reviews_station_seq", "reviews", ["station", "event_seq"])


def downgrade() -> None:
    """Drop the two tables."""
    op.drop_index("ix_reviews_station_seq", table_name="reviews")
    op.drop_index("ix_reviews_record", table_name="reviews")
    op.drop_table("reviews")
    op.drop_table("api_tokens")
