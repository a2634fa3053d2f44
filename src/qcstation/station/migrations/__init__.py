"""Alembic migrations of the traceability store, and the functions behind ``qcstation db upgrade|current``.

The scripts ship inside the package (``env.py``, ``versions/``), so an installed station upgrades its
store without an ``alembic.ini``. A store made by ``Store.open`` before migrations existed has the tables
of revision ``0001`` and no ``alembic_version`` table: :func:`upgrade` checks its ``meta.schema_version``
and stamps it at ``0001`` before upgrading, so existing stores upgrade in place.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from qcstation.station import db
from qcstation.station.errors import StoreError

log = logging.getLogger(__name__)

__all__ = ["BASELINE", "alembic_config", "current", "head", "store_engine", "upgrade"]

BASELINE = "0001"
"""The revision whose tables ``Store.open`` creates (schema version 1)."""

_HERE = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts (and at ``connection`` when given)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this qcstation knows."""
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if rev is None:  # pragma: no cover - the package ships revisions
        raise StoreError("no migration scripts found")
    return rev


def store_engine(url: str | Path) -> Engine:
    """An engine for a store given as a file path or a SQLAlchemy URL (as :meth:`Store.open` takes it)."""
    if isinstance(url, Path) or "://" not in url:
        sa_url = sa.URL.create("sqlite", database=str(Path(url).expanduser()))
    else:
        try:
            sa_url = sa.make_url(url)
        except sa_exc.ArgumentError as e:
            raise StoreError(f"invalid store URL {url!r}: {e}") from e
    try:
        return sa.create_engine(sa_url)
    except (sa_exc.SQLAlchemyError, ImportError) as e:
        raise StoreError(f"cannot open store {url}: {e}") from e


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def current(url: str | Path) -> str | None:
    """The store's revision: None for an empty database; :data:`BASELINE` for an unstamped v1 store.

    Raises:
        StoreError: the database cannot be read.
    """
    engine = store_engine(url)
    try:
        with engine.connect() as conn:
            rev = _revision(conn)
            if rev is None and sa.inspect(conn).has_table(db.inspections.name):
                return BASELINE
            return rev
    except sa_exc.SQLAlchemyError as e:
        raise StoreError(f"cannot read the store's revision: {e}") from e
    finally:
        engine.dispose()


def upgrade(url: str | Path, revision: str = "head") -> tuple[str | None, str]:
    """Bring a store's schema to ``revision`` in place (creating it in an empty database).

    Returns:
        (revision before, revision after); before is None for an empty database.

    Raises:
        StoreError: the database cannot be reached, or an unstamped store has an unknown schema version.
    """
    engine = store_engine(url)
    try:
        with engine.begin() as conn:
            before = _revision(conn)
            if before is None and sa.inspect(conn).has_table(db.inspections.name):
                m = db.meta
                version = conn.scalar(sa.select(m.c.value).where(m.c.key == "schema_version"))
                if version is not None and int(version) != db.SCHEMA_VERSION:
                    raise StoreError(
                        f"store has schema version {version} and no migration history; expected "
                        f"{db.SCHEMA_VERSION}"
                    )
                log.info("store made before migrations: stamping it at revision %s", BASELINE)
                command.stamp(alembic_config(conn), BASELINE)
                before = BASELINE
            command.upgrade(alembic_config(conn), revision)
            after = _revision(conn)
    except sa_exc.SQLAlchemyError as e:
        raise StoreError(f"cannot upgrade the store: {e}") from e
    finally:
        engine.dispose()
    return before, after or ""
