"""The registry schema, as ordered migrations for each backend, side by side.

``SQLITE[i]`` and ``POSTGRES[i]`` take a database from schema version ``i``
to ``i + 1``; the version lives in the one-row ``schema_version`` table.
Keep the two lists in step (same tables, columns and indexes; only the types
differ) and never edit a released step: append a new one.

Tables: ``objects`` (one row per managed object; ``seq`` is the insertion
order Locate sorts by after ``created``), the Locate side tables
``object_names``, ``object_groups`` and ``object_custom`` (rewritten with
their object; ``pos`` keeps the order of the record's tuple), ``keys`` (sealed
tenant keys) and ``audit``; from v2 the change feed ``feed`` (one row per
committed change, ``seq`` in commit order; ``kind`` 'o' is an object: ``name``
its uid, ``number`` its revision; 'k' a tenant key: ``name`` its level,
``number`` its version) and ``feed_floor`` (one row: the highest ``seq``
pruned).


v3 (record MACs, issue 11): ``objects.mac`` holds each object's record MAC
(:mod:`krypton.core.records`). Rows written before have none: their uids go
to ``unsealed_objects``, the only place a row without a MAC is accepted, until
the Core seals them at start. The step is self-contained (one new column, one
new table filled from ``objects``), so it can be renumbered next to other
steps.

v4 (Locate at scale, issue 16): Locate's page is read in the order it is
answered (newest first) with LIMIT, and Located Items is a COUNT, so the
indexes on ``objects`` end in that order: (tenant, [object_type | state,]
created, seq), each followed by the columns a Locate still filters on
(``state`` for the Storage Status Mask, ``object_type``), so that a count
reads the index alone. They replace v1's (tenant, state) and (tenant,
object_type). Self-contained too.

v5 (background re-wrap, issue 12): ``rewrap_jobs``, one row per tenant (the
operator who asked, the target version, progress), and an index on
``objects(tenant, l3_version, uid)`` so the re-wrap finds what an old L3
version still wraps without a scan.

v6 (kept counts, issue 16): ``object_counts (tenant, object_type, state, n)``
and the triggers on ``objects`` that keep it (:mod:`krypton.registry._counts`
says how, and why the two backends differ: a row per key on SQLite, delta rows
summed on PostgreSQL), filled from the objects already there. Self-contained.
"""

from __future__ import annotations

import sqlite3

from krypton.errors import StorageError
from krypton.registry._counts import POSTGRES_STEP, SQLITE_STEP
from krypton.storage.schema import VERSION_TABLE, migrate

__all__ = ["LATEST", "POSTGRES", "SQLITE", "VERSION_TABLE", "migrate_sqlite", "too_new"]

_INDEXES = (
    "CREATE INDEX objects_tenant_state ON objects(tenant, state)",
    "CREATE INDEX objects_tenant_type ON objects(tenant, object_type)",
    "CREATE INDEX object_names_tenant_name ON object_names(tenant, name)",
    "CREATE INDEX object_groups_tenant_name ON object_groups(tenant, name)",
    "CREATE INDEX object_custom_tenant_name_value ON object_custom(tenant, name, value)",
    "CREATE INDEX audit_tenant_time ON audit(tenant, time)",
)

# v4: indexes that serve Locate's order (see the module comment).
_ORDERED = (
    "DROP INDEX objects_tenant_state",
    "DROP INDEX objects_tenant_type",
    "CREATE INDEX objects_tenant_order ON objects(tenant, created, seq, object_type, state)",
    "CREATE INDEX objects_tenant_type_order"
    " ON objects(tenant, object_type, created, seq, state)",
    "CREATE INDEX objects_tenant_state_order ON objects(tenant, state, created, seq)",
)

_FEED_TAIL = (
    "CREATE INDEX feed_tenant_seq ON feed(tenant, seq)",
    "CREATE TABLE feed_floor (pruned BIGINT NOT NULL)",
    "INSERT INTO feed_floor VALUES (0)",
)


def _side_tables(pos_type: str) -> tuple[str, ...]:
    ref = "uid TEXT NOT NULL REFERENCES objects(uid) ON DELETE CASCADE"
    return (
        f"CREATE TABLE object_names ({ref}, pos {pos_type} NOT NULL,"
        " tenant TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (uid, pos))",
        f"CREATE TABLE object_groups ({ref}, pos {pos_type} NOT NULL,"
        " tenant TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (uid, pos))",
        f"CREATE TABLE object_custom ({ref}, pos {pos_type} NOT NULL,"
        " tenant TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,"
        " PRIMARY KEY (uid, pos))",
    )


SQLITE: tuple[tuple[str, ...], ...] = (
    # v1
    (
        "CREATE TABLE objects ("
        " seq INTEGER PRIMARY KEY,"  # the rowid, made explicit so that VACUUM keeps it
        " uid TEXT NOT NULL UNIQUE,"
        " tenant TEXT NOT NULL, object_type INTEGER NOT NULL, state INTEGER NOT NULL,"
        " created INTEGER NOT NULL, algorithm INTEGER, length INTEGER, l3_version INTEGER,"
        " sealed BLOB, attributes BLOB NOT NULL, origin TEXT NOT NULL,"
        " revision INTEGER NOT NULL)",
        *_side_tables("INTEGER"),
        "CREATE TABLE keys ("
        " tenant TEXT NOT NULL, level TEXT NOT NULL, version INTEGER NOT NULL,"
        " state INTEGER NOT NULL, sealed BLOB, created REAL NOT NULL,"
        " PRIMARY KEY (tenant, level, version))",
        "CREATE TABLE audit ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " time REAL NOT NULL, identity TEXT NOT NULL, tenant TEXT NOT NULL,"
        " operation TEXT NOT NULL, uid TEXT, result TEXT NOT NULL,"
        " gateway TEXT, correlation_id TEXT, detail TEXT NOT NULL)",
        *_INDEXES,
    ),
    # v2: the change feed
    (
        "CREATE TABLE feed ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " tenant TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,"
        " number INTEGER NOT NULL, state INTEGER NOT NULL, time REAL NOT NULL)",
        *_FEED_TAIL,
    ),
    # v3: record MACs
    (
        "ALTER TABLE objects ADD COLUMN mac BLOB",
        "CREATE TABLE unsealed_objects (uid TEXT PRIMARY KEY)",
        "INSERT INTO unsealed_objects (uid) SELECT uid FROM objects",
    ),
    # v4: Locate's order
    _ORDERED,
    # v5: background re-wrap
    (
        "CREATE INDEX objects_tenant_l3 ON objects(tenant, l3_version, uid)",
        "CREATE TABLE rewrap_jobs (tenant TEXT PRIMARY KEY, target INTEGER NOT NULL,"
        " operator TEXT NOT NULL, started REAL NOT NULL, total INTEGER NOT NULL,"
        " done INTEGER NOT NULL, updated REAL NOT NULL, finished REAL)",
    ),
    # v6: kept counts (Located Items)
    SQLITE_STEP,
)

POSTGRES: tuple[tuple[str, ...], ...] = (
    # v1
    (
        "CREATE TABLE objects ("
        " uid TEXT PRIMARY KEY,"
        " seq BIGINT GENERATED ALWAYS AS IDENTITY,"
        " tenant TEXT NOT NULL, object_type INTEGER NOT NULL, state INTEGER NOT NULL,"
        " created BIGINT NOT NULL, algorithm INTEGER, length INTEGER, l3_version INTEGER,"
        " sealed BYTEA, attributes BYTEA NOT NULL, origin TEXT NOT NULL,"
        " revision BIGINT NOT NULL)",
        *_side_tables("INTEGER"),
        "CREATE TABLE keys ("
        " tenant TEXT NOT NULL, level TEXT NOT NULL, version INTEGER NOT NULL,"
        " state INTEGER NOT NULL, sealed BYTEA, created DOUBLE PRECISION NOT NULL,"
        " PRIMARY KEY (tenant, level, version))",
        "CREATE TABLE audit ("
        " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " time DOUBLE PRECISION NOT NULL, identity TEXT NOT NULL, tenant TEXT NOT NULL,"
        " operation TEXT NOT NULL, uid TEXT, result TEXT NOT NULL,"
        " gateway TEXT, correlation_id TEXT, detail TEXT NOT NULL)",
        *_INDEXES,
    ),
    # v2: the change feed
    (
        "CREATE TABLE feed ("
        " seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " tenant TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,"
        " number BIGINT NOT NULL, state INTEGER NOT NULL, time DOUBLE PRECISION NOT NULL)",
        *_FEED_TAIL,
    ),
    # v3: record MACs
    (
        "ALTER TABLE objects ADD COLUMN mac BYTEA",
        "CREATE TABLE unsealed_objects (uid TEXT PRIMARY KEY)",
        "INSERT INTO unsealed_objects (uid) SELECT uid FROM objects",
    ),
    # v4: Locate's order
    _ORDERED,
    # v5: background re-wrap
    (
        "CREATE INDEX objects_tenant_l3 ON objects(tenant, l3_version, uid)",
        "CREATE TABLE rewrap_jobs (tenant TEXT PRIMARY KEY, target INTEGER NOT NULL,"
        " operator TEXT NOT NULL, started DOUBLE PRECISION NOT NULL, total BIGINT NOT NULL,"
        " done BIGINT NOT NULL, updated DOUBLE PRECISION NOT NULL,"
        " finished DOUBLE PRECISION)",
    ),
    # v6: kept counts (Located Items)
    POSTGRES_STEP,
)

LATEST = len(SQLITE)
assert len(POSTGRES) == LATEST

def too_new(version: int) -> StorageError:
    return StorageError(f"registry schema version {version} is newer than this Core's ({LATEST})")


def migrate_sqlite(conn: sqlite3.Connection, target: int = LATEST) -> int:
    """Bring the file up to ``target``; returns the version it is at (see
    :mod:`krypton.storage.schema`). ``conn`` must be in autocommit mode
    (``isolation_level=None``)."""
    return migrate(conn, SQLITE, target, too_new)
