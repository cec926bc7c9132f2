"""Fixtures shared by every test folder: the one PostgreSQL server of the session.

Tests that want a registry on PostgreSQL ask for ``pg`` (unit tests through
``keystore_url`` too, end-to-end tests for a Core's registry); the server is
started once, when the first of them needs it, and stopped at the end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.pg import PgServer, postgres_server


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    with postgres_server() as server:
        yield server
