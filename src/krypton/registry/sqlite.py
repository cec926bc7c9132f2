"""The Core registry on SQLite (a single Core node, development, tests).

How this works
--------------
Writes go through the shared writer thread (:class:`krypton.storage.Writer`,
as in the gateway vault). Each write method queues an operation, a function
``(conn, payload) -> (result, changes)``, and awaits it. The writer runs a
batch in ONE transaction, each operation inside its own ``SAVEPOINT``
(compare-and-sets fail as a matter of course), and commits: one fsync covers
the whole batch. An operation that fails is rolled back to its savepoint and
only its caller gets the error; if the commit fails, every caller in the
batch does. Futures resolve after the commit, and only then do the batch's
changes go to the subscribers.

Reads run in worker threads (``asyncio.to_thread``) on per-thread read-only
connections; each read is one read transaction, so a read of several
statements (``get_object``) sees one committed snapshot. WAL readers never
wait for the writer.

``sqlite::memory:`` (path ``":memory:"``) has a single connection, so its
reads are queued to the writer as well.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from krypton.errors import ItemNotFound
from krypton.model.registry import (
    AuditRecord,
    Change,
    KeyChange,
    KeyFingerprint,
    LocateQuery,
    ObjectRecord,
    RegistryConflict,
    RewrapJob,
    SealedKey,
    StateChange,
)
from krypton.registry._common import (
    AUDIT_COLUMNS,
    DEFAULT_FEED_RETENTION,
    KEY_COLUMNS,
    L3_OBJECTS_SQL,
    L3_USAGE_SQL,
    OBJECT_COLUMNS,
    OBJECT_WIDTH,
    REWRAP_COLUMNS,
    REWRAP_UPSERT,
    Callback,
    Fanout,
    change_from_feed,
    conflict_owner,
    feed_row,
    feed_sql,
    key_changed,
    locate_count_sql,
    locate_sql,
    object_row,
    record_from_row,
    reseal_conflict,
    rewrap_job,
    rewrap_row,
    side_rows,
)
from krypton.registry.schema import migrate_sqlite
from krypton.storage import Op, Readers, Writer, open_file, translated

T = TypeVar("T")
_Work = Callable[[sqlite3.Connection, Any], tuple[Any, Sequence[Change]]]

_ROW = f"({', '.join('?' * OBJECT_WIDTH)})"
_INSERT_OBJECT = (
    f"INSERT INTO objects ({OBJECT_COLUMNS}) VALUES {_ROW}"  # noqa: S608
    " ON CONFLICT(uid) DO NOTHING"
)
# Rows per multi-row INSERT: 64 x 13 parameters stay under 999, the smallest limit
# any SQLite build has. One statement for many rows matters since v6: ``objects``
# has triggers (the kept counts), so each statement runs in a statement journal,
# ~6 us per statement; one statement per row would more than double an insert's CPU.
_CHUNK = 64


@functools.lru_cache(maxsize=8)
def _insert_objects(rows: int) -> str:
    return (
        f"INSERT INTO objects ({OBJECT_COLUMNS}) VALUES {', '.join([_ROW] * rows)}"  # noqa: S608
        " ON CONFLICT(uid) DO NOTHING"
    )


def _insert_all(conn: sqlite3.Connection, records: Sequence[ObjectRecord]) -> int:
    """Insert the records in multi-row statements; how many were new."""
    added = 0
    for at in range(0, len(records), _CHUNK):
        chunk = records[at : at + _CHUNK]
        values = [v for r in chunk for v in object_row(r)]
        added += conn.execute(_insert_objects(len(chunk)), values).rowcount
    return added


_UNLIST = "DELETE FROM unsealed_objects WHERE uid = ?"
_SEAL_LEGACY = (
    "UPDATE objects SET mac = ? WHERE uid = ? AND tenant = ? AND revision = ? AND mac IS NULL"
    " AND uid IN (SELECT uid FROM unsealed_objects)"
)
_LEGACY = (
    "SELECT o.tenant, o.uid FROM unsealed_objects u JOIN objects o ON o.uid = u.uid"
    " ORDER BY o.seq"
)
_FINGERPRINT = (
    "SELECT tenant, level, count(*), max(version), total(state * version), count(sealed)"
    " FROM keys"
)
_SIDE_INSERT = {
    "object_names": "INSERT INTO object_names (uid, pos, tenant, name) VALUES (?, ?, ?, ?)",
    "object_groups": "INSERT INTO object_groups (uid, pos, tenant, name) VALUES (?, ?, ?, ?)",
    "object_custom": (
        "INSERT INTO object_custom (uid, pos, tenant, name, value) VALUES (?, ?, ?, ?, ?)"
    ),
}


# -- operations (run on the writer thread, inside a savepoint) --------------------
def _insert_sides(conn: sqlite3.Connection, r: ObjectRecord) -> None:
    for table, rows in side_rows(r).items():
        if rows:
            conn.executemany(_SIDE_INSERT[table], rows)


def _put_objects(
    conn: sqlite3.Connection, records: Sequence[ObjectRecord]
) -> tuple[None, tuple[()]]:
    # All new (a drain's batch, as a rule): multi-row INSERTs for the objects and
    # one executemany per side table. Otherwise (a uid already stored, or twice in
    # the batch) that is undone and each record goes in on its own, to learn which
    # ones were new.
    # (On an error the writer rolls back to the operation's own savepoint, this
    # one with it.)
    conn.execute("SAVEPOINT put_objects")
    if _insert_all(conn, records) == len(records):
        conn.execute("RELEASE put_objects")
        sides: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _SIDE_INSERT}
        for r in records:
            if r.names or r.groups or r.custom:
                for table, rows in side_rows(r).items():
                    sides[table] += rows
        for table, rows in sides.items():
            if rows:
                conn.executemany(_SIDE_INSERT[table], rows)
        return None, ()
    conn.execute("ROLLBACK TO put_objects")
    conn.execute("RELEASE put_objects")
    for r in records:
        if conn.execute(_INSERT_OBJECT, object_row(r)).rowcount:
            _insert_sides(conn, r)
            continue
        owner = conn.execute("SELECT tenant FROM objects WHERE uid = ?", (r.uid,)).fetchone()
        if owner is None or owner[0] != r.tenant:
            raise conflict_owner(r.uid)
    return None, ()


def _to_feed(conn: sqlite3.Connection, changes: Sequence[Change], retention: int) -> list[Change]:
    """Write ``changes`` to the feed (in the caller's transaction); them with their seq."""
    out: list[Change] = []
    now = time.time()
    for change in changes:
        cur = conn.execute(
            "INSERT INTO feed (tenant, kind, name, number, state, time) VALUES (?, ?, ?, ?, ?, ?)",
            (*feed_row(change), now),
        )
        assert cur.lastrowid is not None
        out.append(replace(change, seq=int(cur.lastrowid)))
    if out and retention > 0:
        cut = out[-1].seq - retention
        if cut > 0 and conn.execute("DELETE FROM feed WHERE seq <= ?", (cut,)).rowcount:
            conn.execute("UPDATE feed_floor SET pruned = max(pruned, ?)", (cut,))
    return out


def _update_object(
    conn: sqlite3.Connection, payload: tuple[ObjectRecord, int, AuditRecord | None]
) -> tuple[ObjectRecord, list[Change]]:
    record, retention, audit = payload
    row = conn.execute(
        f"SELECT {OBJECT_COLUMNS} FROM objects WHERE uid = ?",  # noqa: S608
        (record.uid,),
    ).fetchone()
    if row is None or row[1] != record.tenant:
        raise ItemNotFound(f"no object with identifier {record.uid!r}")
    if row[11] != record.revision:
        raise RegistryConflict(
            f"object {record.uid!r} has changed (revision {row[11]}, not {record.revision})"
        )
    new = replace(record, object_type=row[2], created=row[4], origin=row[10], revision=row[11] + 1)
    conn.execute(
        "UPDATE objects SET state = ?, algorithm = ?, length = ?, l3_version = ?, sealed = ?,"
        " attributes = ?, revision = ?, mac = ? WHERE uid = ?",
        (
            int(new.state), new.algorithm, new.length, new.l3_version, new.sealed,
            bytes(new.attributes), new.revision, new.mac, new.uid,
        ),
    )  # fmt: skip
    conn.execute(_UNLIST, (new.uid,))
    for table in _SIDE_INSERT:
        conn.execute(f"DELETE FROM {table} WHERE uid = ?", (new.uid,))  # noqa: S608
    _insert_sides(conn, new)
    change = StateChange(new.tenant, new.uid, new.state, new.revision)
    if audit is not None:
        _append_audit(conn, audit)
    return new, _to_feed(conn, (change,), retention)


def _seal_legacy(
    conn: sqlite3.Connection, payload: tuple[str, str, int, bytes]
) -> tuple[bool, tuple[()]]:
    tenant, uid, revision, mac = payload
    done = conn.execute(_SEAL_LEGACY, (mac, uid, tenant, revision)).rowcount > 0
    if done:
        conn.execute(_UNLIST, (uid,))
    return done, ()


def _append_audit(conn: sqlite3.Connection, r: AuditRecord) -> tuple[None, tuple[()]]:
    conn.execute(
        f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            float(r.time), r.identity, r.tenant, r.operation, r.uid, r.result,
            r.gateway, r.correlation_id, r.detail,
        ),
    )  # fmt: skip
    return None, ()


def _put_rewrap(conn: sqlite3.Connection, job: RewrapJob) -> tuple[None, tuple[()]]:
    conn.execute(REWRAP_UPSERT, rewrap_row(job))
    return None, ()


def _put_keys(
    conn: sqlite3.Connection, payload: tuple[Sequence[SealedKey], int]
) -> tuple[None, list[Change]]:
    keys, retention = payload
    changes: list[Change] = []
    for k in keys:
        where = (k.tenant, k.level, int(k.version))
        row = conn.execute(
            "SELECT state, sealed FROM keys WHERE tenant = ? AND level = ? AND version = ?", where
        ).fetchone()
        if row is None:
            conn.execute(
                f"INSERT INTO keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
                (*where, int(k.state), k.sealed, float(k.created)),
            )
        elif key_changed(k, row[0], row[1]):
            conn.execute(
                "UPDATE keys SET state = ?, sealed = ? WHERE tenant = ? AND level = ?"
                " AND version = ?",
                (int(k.state), k.sealed, *where),
            )
        else:
            continue
        changes.append(KeyChange(k.tenant, k.level, int(k.version), int(k.state)))
    return None, _to_feed(conn, changes, retention)


def _reseal_keys(
    conn: sqlite3.Connection, moves: Sequence[tuple[SealedKey, bytes]]
) -> tuple[None, list[Change]]:
    for key, sealed in moves:
        cur = conn.execute(
            "UPDATE keys SET sealed = ? WHERE tenant = ? AND level = ? AND version = ?"
            " AND sealed = ?",
            (sealed, key.tenant, key.level, int(key.version), key.sealed),
        )
        if cur.rowcount != 1:
            raise reseal_conflict(key)
    return None, []


# -- reads (one read transaction each) --------------------------------------------
def _get_object(tenant: str, uid: str, conn: sqlite3.Connection) -> ObjectRecord | None:
    row = conn.execute(
        f"SELECT {OBJECT_COLUMNS} FROM objects WHERE uid = ? AND tenant = ?",  # noqa: S608
        (uid, tenant),
    ).fetchone()
    if row is None:
        return None
    names, groups = (
        [r[0] for r in conn.execute(f"SELECT name FROM {t} WHERE uid = ? ORDER BY pos", (uid,))]  # noqa: S608
        for t in ("object_names", "object_groups")
    )
    custom = conn.execute(
        "SELECT name, value FROM object_custom WHERE uid = ? ORDER BY pos", (uid,)
    ).fetchall()
    return record_from_row(row, names, groups, custom)


def _audit(
    tenant: str | None, limit: int, since: float | None, conn: sqlite3.Connection
) -> list[AuditRecord]:
    where: list[str] = []
    params: list[Any] = []
    if tenant is not None:
        where.append("tenant = ?")
        params.append(tenant)
    if since is not None:
        where.append("time >= ?")
        params.append(float(since))
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT {AUDIT_COLUMNS} FROM audit{clause} ORDER BY id DESC LIMIT ?",  # noqa: S608
        (*params, max(0, limit)),
    ).fetchall()
    return [AuditRecord(*row) for row in reversed(rows)]


def _keys(tenant: str, level: str, conn: sqlite3.Connection) -> list[SealedKey]:
    rows = conn.execute(
        f"SELECT {KEY_COLUMNS} FROM keys WHERE tenant = ? AND level = ?"  # noqa: S608
        " ORDER BY version",
        (tenant, level),
    ).fetchall()
    return [
        SealedKey(t, lv, v, s, None if b is None else bytes(b), float(c))
        for t, lv, v, s, b, c in rows
    ]


def _fingerprint(levels: tuple[str, ...], conn: sqlite3.Connection) -> KeyFingerprint:
    marks = ", ".join("?" * len(levels))
    sql = f"{_FINGERPRINT} WHERE level IN ({marks}) GROUP BY tenant, level ORDER BY tenant, level"
    out: dict[str, list[tuple[object, ...]]] = {}
    for tenant, *rest in conn.execute(sql, levels):
        out.setdefault(tenant, []).append(tuple(rest))
    return {t: tuple(summary) for t, summary in out.items()}


def _feed_since(
    tenants: tuple[str, ...], after: int, limit: int, conn: sqlite3.Connection
) -> list[Change]:
    if not tenants or limit <= 0:
        return []
    rows = conn.execute(feed_sql(len(tenants), "sqlite"), (after, *tenants, limit)).fetchall()
    return [change_from_feed(r) for r in rows]


def _feed_bounds(conn: sqlite3.Connection) -> tuple[int, int]:
    pruned = int(conn.execute("SELECT max(pruned) FROM feed_floor").fetchone()[0] or 0)
    head = conn.execute("SELECT max(seq) FROM feed").fetchone()[0]
    return pruned, max(pruned, int(head or 0))


def _object_states(
    tenant: str, uids: tuple[str, ...], conn: sqlite3.Connection
) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for start in range(0, len(uids), 500):
        part = uids[start : start + 500]
        marks = ", ".join("?" * len(part))
        for uid, state, revision in conn.execute(
            f"SELECT uid, state, revision FROM objects WHERE tenant = ? AND uid IN ({marks})",  # noqa: S608
            (tenant, *part),
        ):
            out[uid] = (int(state), int(revision))
    return out


def _as_write(conn: sqlite3.Connection, read: Callable[[sqlite3.Connection], Any]) -> Any:
    """A read queued to the writer (the in-memory database has one connection)."""
    return read(conn), ()


def _changes(ops: list[Op[_Work]]) -> list[Change]:
    changes: list[Change] = []
    for op in ops:
        changes.extend(op.result[1])
    return changes


class SqliteRegistry:
    """The registry in one SQLite file (or in memory); see the module comment."""

    def __init__(
        self, path: str, conn: sqlite3.Connection, max_batch: int,
        feed_retention: int = DEFAULT_FEED_RETENTION,
    ) -> None:
        self.path = path
        self.feed_retention = feed_retention
        self._memory = path == ":memory:"
        self._readers = Readers(path, "registry")
        self._fanout = Fanout()
        self._writer: Writer[_Work] = Writer(
            conn, name="registry", max_batch=max_batch, savepoint_each=True,
            settled=lambda ops: self._fanout.publish(_changes(ops)),
        )  # fmt: skip

    @classmethod
    def open(
        cls, path: str | Path, *, max_batch: int = 1024,
        feed_retention: int = DEFAULT_FEED_RETENTION,
    ) -> SqliteRegistry:
        """Open (creating and migrating as needed) the registry at ``path``."""
        path = str(path)
        conn = open_file(
            path, name="registry", migrate=migrate_sqlite, pragmas=("foreign_keys = ON",)
        )
        return cls(path, conn, max_batch, feed_retention)

    def __repr__(self) -> str:
        return f"SqliteRegistry({self.path!r})"

    @property
    def commits(self) -> int:
        """Transactions committed by the writer (each one fsync of the WAL)."""
        return self._writer.commits

    # -- the Registry interface ----------------------------------------------------
    async def put_objects(self, records: Sequence[ObjectRecord]) -> None:
        batch = tuple(records)
        if batch:
            await self._write(_put_objects, batch)

    async def get_object(self, tenant: str, uid: str) -> ObjectRecord | None:
        return await self._read(lambda conn: _get_object(tenant, uid, conn))

    async def update_object(
        self, record: ObjectRecord, audit: AuditRecord | None = None
    ) -> ObjectRecord:
        result: ObjectRecord = await self._write(
            _update_object, (record, self.feed_retention, audit)
        )
        return result

    async def legacy_objects(self) -> list[tuple[str, str]]:
        return await self._read(lambda conn: [(t, u) for t, u in conn.execute(_LEGACY)])

    async def is_legacy(self, uid: str) -> bool:
        sql = "SELECT 1 FROM unsealed_objects WHERE uid = ?"
        return await self._read(lambda conn: conn.execute(sql, (uid,)).fetchone() is not None)

    async def seal_legacy(self, tenant: str, uid: str, revision: int, mac: bytes) -> bool:
        done: bool = await self._write(_seal_legacy, (tenant, uid, int(revision), bytes(mac)))
        return done

    async def locate(self, query: LocateQuery) -> list[str]:
        sql, params = locate_sql(query, "sqlite")
        return await self._read(lambda conn: [r[0] for r in conn.execute(sql, params)])

    async def locate_count(self, query: LocateQuery) -> int:
        sql, params = locate_count_sql(query, "sqlite")
        return await self._read(lambda conn: int(conn.execute(sql, params).fetchone()[0]))

    async def l3_usage(self, tenant: str) -> dict[int, int]:
        return await self._read(
            lambda conn: {int(v): int(n) for v, n in conn.execute(L3_USAGE_SQL, (tenant,))})

    async def l3_objects(self, tenant: str, version: int, after: str, limit: int) -> list[str]:
        params = (tenant, int(version), after, max(0, limit))
        return await self._read(
            lambda conn: [r[0] for r in conn.execute(L3_OBJECTS_SQL, params)])

    async def rewrap_jobs(self, tenant: str | None = None) -> list[RewrapJob]:
        sql = f"SELECT {REWRAP_COLUMNS} FROM rewrap_jobs"  # noqa: S608
        params: tuple[str, ...] = ()
        if tenant is not None:
            sql, params = sql + " WHERE tenant = ?", (tenant,)
        return await self._read(
            lambda conn: [rewrap_job(r) for r in conn.execute(sql + " ORDER BY tenant", params)])

    async def put_rewrap_job(self, job: RewrapJob) -> None:
        await self._write(_put_rewrap, job)

    async def append_audit(self, record: AuditRecord) -> None:
        await self._write(_append_audit, record)

    async def audit(
        self, tenant: str | None = None, limit: int = 1000, *, since: float | None = None
    ) -> list[AuditRecord]:
        return await self._read(lambda conn: _audit(tenant, limit, since, conn))

    async def put_keys(self, keys: Sequence[SealedKey]) -> None:
        batch = tuple(keys)
        if batch:
            await self._write(_put_keys, (batch, self.feed_retention))

    async def put_key(self, key: SealedKey) -> None:
        await self.put_keys((key,))

    async def reseal_keys(self, moves: Sequence[tuple[SealedKey, bytes]]) -> None:
        if moves:
            await self._write(_reseal_keys, tuple(moves))

    async def keys(self, tenant: str, level: str) -> list[SealedKey]:
        return await self._read(lambda conn: _keys(tenant, level, conn))

    async def subscribe(self, callback: Callback) -> Callable[[], None]:
        return self._fanout.add(callback)

    async def feed_since(self, tenants: Sequence[str], after: int, limit: int) -> list[Change]:
        wanted = tuple(sorted(set(tenants)))
        return await self._read(lambda conn: _feed_since(wanted, after, limit, conn))

    async def feed_bounds(self) -> tuple[int, int]:
        return await self._read(_feed_bounds)

    async def object_states(self, tenant: str, uids: Sequence[str]) -> dict[str, tuple[int, int]]:
        wanted = tuple(uids)
        return await self._read(lambda conn: _object_states(tenant, wanted, conn))

    async def key_fingerprint(self, levels: Sequence[str]) -> KeyFingerprint | None:
        """A file's other users (processes) are not heard by ``subscribe``: poll this."""
        if self._memory:
            return None
        wanted = tuple(levels)
        return await self._read(lambda conn: _fingerprint(wanted, conn))

    async def close(self) -> None:
        """Finish every queued write, stop the writer, close the file."""
        if not self._writer.stop():
            return
        await asyncio.to_thread(self._writer.join)
        self._readers.close()
        await self._fanout.close()

    # -- plumbing ------------------------------------------------------------------
    async def _write(self, work: _Work, payload: Any) -> Any:
        result, _ = await self._writer.submit(work, payload)
        return result

    async def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        if self._memory:
            result: T = await self._write(_as_write, read)
            return result
        return await asyncio.to_thread(self._read_now, read)

    def _read_now(self, read: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._readers.get()
        with translated("registry read"):
            conn.execute("BEGIN")
            try:
                return read(conn)
            finally:
                conn.execute("ROLLBACK")
