"""Alembic migrations: the initial revision is exactly the tables ``Store.open`` makes; old stores upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from typer.testing import CliRunner

from qcstation.cli import app
from qcstation.station import db
from qcstation.station.migrations import BASELINE, current, head, upgrade
from qcstation.station.store import Store
from station.factories_store import Factory
from station.test_store import commit, open_b1


def _all_tables() -> sa.MetaData:
    """Every table a store holds: the store's own, the API tokens and the review index."""
    from qcstation.station import review, tokens

    merged = sa.MetaData()
    for md in (db.metadata, tokens.metadata, review.metadata):
        for table in md.tables.values():
            table.to_metadata(merged)
    return merged


def _diff(url: str) -> list[object]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), _all_tables()))
    finally:
        engine.dispose()


def test_upgrade_of_an_empty_sqlite_file_makes_exactly_the_store_tables(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    assert upgrade(path) == (None, head())
    assert _diff(f"sqlite:///{path}") == []
    with Store.open(path, "st-1") as s:  # the store accepts it as its own schema version
        assert s.verify().ok


def test_a_store_made_before_migrations_is_stamped_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with Store.open(path, "st-1") as s:
        open_b1(s)
        f = Factory()
        commit(s, *(f.decision() for _ in range(5)))
    assert current(path) == BASELINE
    assert upgrade(path) == (BASELINE, head())
    assert upgrade(path) == (head(), head())  # again: nothing to do
    with Store.open(path, "st-1") as s:
        assert s.count_inspections() == 5
        assert s.verify().ok


def test_an_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.db"
    Store.open(path, "st-1").close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.update(db.meta).where(db.meta.c.key == "schema_version").values(value="7"))
    engine.dispose()
    from qcstation.station.errors import StoreError

    with pytest.raises(StoreError, match="schema version 7"):
        upgrade(path)


def test_cli_db_upgrade_and_current(tmp_path: Path) -> None:
    runner = CliRunner()
    Store.open(tmp_path / "qcstation.db", "st-1").close()
    res = runner.invoke(app, ["db", "current", "-d", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert f"revision {BASELINE}" in res.output
    res = runner.invoke(app, ["db", "upgrade", "-d", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert f"-> {head()}" in res.output


@pytest.mark.server
def test_upgrade_on_postgresql_makes_exactly_the_store_tables(pg_url: str) -> None:
    assert upgrade(pg_url) == (None, head())
    assert _diff(pg_url) == []
    with Store.open(pg_url, "st-1") as s:
        open_b1(s)
        commit(s, Factory().decision())
        assert s.verify().ok


@pytest.mark.server
def test_a_postgresql_store_made_before_migrations_is_stamped(pg_url: str) -> None:
    Store.open(pg_url, "st-1").close()
    assert upgrade(pg_url) == (BASELINE, head())


def test_store_whose_tables_made_themselves_upgrades_in_place(tmp_path: Path) -> None:
    # given a store from before migrations, where the API already created its token and review tables
    from qcstation.station.review import ReviewStore
    from qcstation.station.tokens import Role, TokenStore

    path = tmp_path / "old.db"
    with Store.open(path, "st-1") as s:
        issued = TokenStore(s).issue("anna", Role.QUALITY, by="test")
        ReviewStore(s)
    # when it is upgraded
    assert upgrade(path) == (BASELINE, head())
    # then it is at head, every table matches, and the token still works
    assert current(path) == head()
    assert _diff(f"sqlite:///{path}") == []
    with Store.open(path, "st-1") as s:
        found = TokenStore(s).lookup(issued.secret)
        assert found is not None
        assert found.role == Role.QUALITY
