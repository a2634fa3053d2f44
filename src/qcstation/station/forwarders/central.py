"""Central-store sink: copies a station's chained rows, as they are, into the plant's PostgreSQL.

Rows of ``inspections`` and ``events`` are read from the station's own store by the outbox items' record
ids and inserted unchanged (``ON CONFLICT (id) DO NOTHING``: the id is the idempotency key), and the
station's ``chain_head`` in the central database advances to the last copied row in the same transaction.
The outbox delivers in chain order, so after every batch the central copy of each station's chain verifies
on its own (``Store.verify`` on the central database). Batches and holds are derived state and stay local.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from qcstation.station import db
from qcstation.station.errors import StoreError
from qcstation.station.migrations import upgrade
from qcstation.station.outbox import Delivery
from qcstation.station.store import OutboxItem

log = logging.getLogger(__name__)

__all__ = ["CentralSink"]


class CentralSink:
    """Idempotent copy of one station's chain into a central database (PostgreSQL; SQLite for tests)."""

    name = "central"

    def __init__(self, central_url: str, local: Engine, *, station: str) -> None:
        """Copy from the station store's engine ``local`` to ``central_url`` (migrated on first use)."""
        self.central_url = central_url
        self.station = station
        self._local = local
        self._engine: Engine | None = None

    def _central(self) -> Engine:
        if self._engine is None:
            upgrade(self.central_url)
            self._engine = sa.create_engine(self.central_url, pool_pre_ping=True)
        return self._engine

    def _insert(self, conn: Connection, table: sa.Table) -> Any:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing(index_elements=["id"])

    def deliver(self, items: Sequence[OutboxItem]) -> Delivery:
        """Copy the rows of ``items`` in one central transaction (all or nothing)."""
        by_topic: dict[str, list[str]] = {}
        for it in items:
            by_topic.setdefault(it.topic, []).append(it.record_id)
        rows: dict[str, list[dict[str, Any]]] = {}
        try:
            with self._local.connect() as conn:
                for topic, ids in by_topic.items():
                    table = db.CHAINED_TABLES.get(topic)
                    if table is None:
                        continue
                    rows[topic] = [
                        dict(r._mapping) for r in conn.execute(sa.select(table).where(table.c.id.in_(ids)))
                    ]
            with self._central().begin() as conn:
                last: dict[str, Any] | None = None
                for topic, found in rows.items():
                    if found:
                        conn.execute(self._insert(conn, db.CHAINED_TABLES[topic]), found)
                    for r in found:
                        if last is None or int(r["seq"]) > int(last["seq"]):
                            last = r
                if last is not None:
                    self._advance_head(conn, int(last["seq"]), str(last["hash"]))
        except (sa_exc.SQLAlchemyError, StoreError, OSError) as e:
            if self._engine is not None:
                self._engine.dispose()  # drop connections a restarted server has closed
            return Delivery(0, error=f"central store: {e}")
        return Delivery(len(items))

    def _advance_head(self, conn: Connection, seq: int, hash_: str) -> None:
        h = db.chain_head
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(h).values(station=self.station, seq=seq, hash=hash_)
        stmt = stmt.on_conflict_do_update(
            index_elements=["station"],
            set_={"seq": stmt.excluded.seq, "hash": stmt.excluded.hash},
            where=h.c.seq < stmt.excluded.seq,
        )
        conn.execute(stmt)

    def close(self) -> None:
        """Release the central connections."""
        if self._engine is not None:
            self._engine.dispose()
