"""Fixtures for the plant tests (real PostgreSQL, real Mosquitto)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from station.plant.servers import Mosquitto, PgCluster, pg_schema, shared_pg_available


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL to a fresh schema of the machine's PostgreSQL (database ``test``), dropped after."""
    why = shared_pg_available()
    if why is not None:
        pytest.skip(why)
    with pg_schema() as url:
        yield url


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private Mosquitto on a free port, started."""
    b = Mosquitto(tmp_path)
    try:
        b.start()
    except FileNotFoundError as e:
        pytest.skip(f"mosquitto not installed: {e}")
    yield b
    b.stop()


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster on a free port, started, destroyed after."""
    try:
        c = PgCluster()
    except Exception as e:
        pytest.skip(f"cannot make a throw-away PostgreSQL cluster with initdb: {e}")
    c.start()
    yield c
    c.destroy()
