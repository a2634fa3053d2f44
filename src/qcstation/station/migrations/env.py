"""Alembic environment of the traceability store.

Run through :func:`qcstation.station.migrations.upgrade` (``qcstation db upgrade``), which hands over an open
connection in ``config.attributes["connection"]``; a plain ``alembic`` call with ``sqlalchemy.url`` set works
too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection

from qcstation.station import db


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=db.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    config = context.config
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("expected a connection in config.attributes or sqlalchemy.url in the config")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


_main()
