"""Fixtures shared by unit-test modules: the one PostgreSQL server of the session.

Modules that want a registry on PostgreSQL ask for ``pg`` (or for
``keystore_url``, which is parametrised over both registry backends); the
server is started once, when the first of them needs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pg import PgServer, postgres_server


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def keystore_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry: a SQLite file, or a new database on ``pg``."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'core.db'}"
    server: PgServer = request.getfixturevalue("pg")
    return server.create_database("ks")
