"""Versioned SQLite schemas: the one migration loop both stores use.

A store's schema is a list of steps (each a list of statements); the file's
``schema_version`` table holds how many have run. :func:`migrate` runs the
missing ones, each in its own ``BEGIN IMMEDIATE`` that re-reads the version
inside it, so two processes opening an old file migrate it once. A file newer
than the code is refused with the store's own error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from krypton.errors import StorageError

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's schema version (0 for a new file)."""
    conn.execute(VERSION_TABLE)
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(
    conn: sqlite3.Connection,
    steps: Sequence[Sequence[str]],
    target: int,
    too_new: Callable[[int], StorageError],
) -> int:
    """Bring the file up to ``target`` of ``steps``; returns the version it is at.

    ``conn`` must be in autocommit mode (``isolation_level=None``)."""
    latest = len(steps)
    if target > latest:
        raise ValueError(f"no migration to schema version {target}")
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = schema_version(conn)
            if version > latest:
                raise too_new(version)
            if version >= target:
                conn.execute("COMMIT")
                return version
            for stmt in steps[version]:
                conn.execute(stmt)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (?)", (version + 1,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
