"""The vault's SQLite schema as an ordered list of migrations.

``MIGRATIONS[i]`` takes a file from schema version ``i`` to ``i + 1``; the
version lives in the one-row ``schema_version`` table. Each step runs in its
own ``BEGIN IMMEDIATE`` transaction and re-reads the version inside it, so two
processes opening an old file at once migrate it once. Never edit a released
step: append a new one.
"""

from __future__ import annotations

import sqlite3

from krypton.errors import StorageError

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # v1: wrapped L4 keys.
    (
        "CREATE TABLE keys ("
        " uid TEXT PRIMARY KEY,"
        " tenant TEXT NOT NULL,"
        " object_type INTEGER NOT NULL,"
        " algorithm INTEGER NOT NULL,"
        " length INTEGER NOT NULL,"
        " state INTEGER NOT NULL,"
        " l3_version INTEGER NOT NULL,"
        " wrapped BLOB NOT NULL,"
        " attributes BLOB NOT NULL,"
        " created INTEGER NOT NULL)",
        "CREATE INDEX keys_tenant ON keys(tenant)",
    ),
    # v2: the sync outbox (rows the Core has not acknowledged). Existing rows
    # start unsynced: SyncKeys is idempotent, so sending them again is safe.
    (
        "ALTER TABLE keys ADD COLUMN synced INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX keys_outbox ON keys(synced) WHERE synced = 0",
    ),
)

LATEST = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's schema version (0 for a new file)."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection, target: int = LATEST) -> int:
    """Bring the file up to ``target``; returns the version it is at.

    ``conn`` must be in autocommit mode (``isolation_level=None``)."""
    if target > LATEST:
        raise ValueError(f"no migration to schema version {target}")
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = schema_version(conn)
            if version > LATEST:
                raise StorageError(
                    f"vault schema version {version} is newer than this gateway's ({LATEST})"
                )
            if version >= target:
                conn.execute("COMMIT")
                return version
            for stmt in MIGRATIONS[version]:
                conn.execute(stmt)
            if version == 0:
                conn.execute("INSERT INTO schema_version VALUES (1)")
            else:
                conn.execute("UPDATE schema_version SET version = ?", (version + 1,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
