"""Fixtures shared by unit-test modules.

``keystore_url`` is parametrised over both registry backends; its PostgreSQL
databases live on the session's one server, ``pg`` (``tests/conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers.pg import PgServer


@pytest.fixture(params=["sqlite", "postgresql"])
def keystore_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry: a SQLite file, or a new database on ``pg``."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'core.db'}"
    server: PgServer = request.getfixturevalue("pg")
    return server.create_database("ks")
