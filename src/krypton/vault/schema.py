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
from krypton.storage.schema import migrate as storage_migrate
from krypton.storage.schema import schema_version

__all__ = ["LATEST", "MIGRATIONS", "migrate", "schema_version"]

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
    # v3: authenticated records (issue 11). Each row carries the MAC of its
    # covered columns under its L3 version (krypton.vault.auth). Rows written
    # before have none: their uids go to ``unsealed``, the only place an empty
    # MAC is accepted, until Vault.seal_legacy MACs them once the L3 is held.
    (
        "ALTER TABLE keys ADD COLUMN mac BLOB NOT NULL DEFAULT X''",
        "CREATE TABLE unsealed (uid TEXT PRIMARY KEY)",
        "INSERT INTO unsealed (uid) SELECT uid FROM keys",
    ),
    # v4: the change-feed cursor (the last Core change applied here; one row),
    # written in the transaction that applies a change.
    (
        "CREATE TABLE feed_cursor (seq INTEGER NOT NULL)",
        "INSERT INTO feed_cursor VALUES (0)",
    ),
    # v5: outbox rows that do not decode are quarantined (keys.synced = 2) and
    # listed here (``krypton gateway --config F outbox``); the rest keeps syncing.
    (
        "CREATE TABLE quarantine ("
        " row INTEGER PRIMARY KEY,"
        " uid TEXT NOT NULL,"
        " reason TEXT NOT NULL,"
        " at INTEGER NOT NULL)",
    ),
    # v6: one tenant's outbox in order (the flush before a delegated Locate) without
    # walking the other tenants' waiting rows; entries are (tenant, rowid).
    (
        "CREATE INDEX keys_outbox_tenant ON keys(tenant) WHERE synced = 0",
    ),
    # v7: L3 versions sealed by the gateway's seal ([gateway.seal],
    # krypton.vault.sealed_l3), so a restart during a partition keeps serving
    # until each lease ends (absolute wall-clock lease end and time stored).
    (
        "CREATE TABLE sealed_l3 ("
        " tenant TEXT NOT NULL,"
        " version INTEGER NOT NULL,"
        " state INTEGER NOT NULL,"
        " lease_end REAL NOT NULL,"
        " stored_at REAL NOT NULL,"
        " kind TEXT NOT NULL,"
        " sealed BLOB NOT NULL,"
        " PRIMARY KEY (tenant, version))",
    ),
)

LATEST = len(MIGRATIONS)


def _too_new(version: int) -> StorageError:
    return StorageError(f"vault schema version {version} is newer than this gateway's ({LATEST})")


def migrate(conn: sqlite3.Connection, target: int = LATEST) -> int:
    """Bring the file up to ``target``; returns the version it is at.

    ``conn`` must be in autocommit mode (``isolation_level=None``)."""
    return storage_migrate(conn, MIGRATIONS, target, _too_new)
