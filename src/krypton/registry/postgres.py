"""The Core registry on PostgreSQL (production; several Core instances, one database).

How this works
--------------
Requests run on a ``psycopg_pool.AsyncConnectionPool`` of autocommit
connections; every write is one explicit transaction. Batches go in as one
statement over ``unnest`` arrays (a ``SyncKeys`` batch is a single round
trip, not one per key).

Change notification: a transaction that changes something also calls
``pg_notify('krypton_state', <json>)`` once per change. PostgreSQL delivers
notifications to every listening session when, and only if, the transaction
commits, in commit order. ``subscribe`` starts (once per instance) a
listener task on a dedicated connection that ``LISTEN``s on that channel and
hands each notification to the fan-out; this includes the changes made
through this instance, so every subscriber of every Core instance on the
database sees the same stream, and none is polled. If the listener loses its
connection it reconnects with a growing delay; changes committed while it
was away are not replayed (it logs that it lost them).

Concurrency between instances: ``update_object`` is ``UPDATE ... WHERE
revision = <expected>`` (a compare-and-set under READ COMMITTED);
``put_keys`` inserts with ``ON CONFLICT DO NOTHING`` and otherwise locks the
existing row (``FOR UPDATE``) before comparing. Migrations run under a
transaction-level advisory lock, so instances starting together migrate once.

Errors: psycopg's become :class:`~krypton.errors.StorageError` here, with
the SQLSTATE and the server's primary message; the DSN and its password are
cut out of every message, and the driver's exception is not chained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from krypton.errors import ItemNotFound, StorageError
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
from krypton.registry._counts import FOLD_EVERY, FOLD_LOCK, FOLD_SQL, FOLD_SURPLUS
from krypton.registry.schema import LATEST, POSTGRES, VERSION_TABLE, too_new

log = logging.getLogger("krypton.registry")

CHANNEL = "krypton_state"
_MIGRATION_LOCK = 0x4B525950  # "KRYP": pg_advisory_xact_lock key for migrations
_FEED_LOCK = 0x4B524644  # "KRFD": serialises change-feed writers (seq in commit order)
_INSERT_FEED = (
    "INSERT INTO feed (tenant, kind, name, number, state, time)"
    " VALUES (%s, %s, %s, %s, %s, %s) RETURNING seq"
)
Conn = psycopg.AsyncConnection[Any]

_OBJECT_TYPES = (
    "text", "text", "int", "int", "int8", "int", "int", "int", "bytea", "bytea", "text", "int8",
    "bytea",
)  # fmt: skip
assert len(_OBJECT_TYPES) == OBJECT_WIDTH
_INSERT_OBJECTS = (
    f"INSERT INTO objects ({OBJECT_COLUMNS})"  # noqa: S608 (constant fragments only)
    f" SELECT * FROM unnest({', '.join(f'%s::{t}[]' for t in _OBJECT_TYPES)})"
    " ON CONFLICT (uid) DO NOTHING RETURNING uid"
)
_INSERT_SIDE = {
    "object_names": "INSERT INTO object_names (uid, pos, tenant, name)"
    " SELECT * FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[])",
    "object_groups": "INSERT INTO object_groups (uid, pos, tenant, name)"
    " SELECT * FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[])",
    "object_custom": "INSERT INTO object_custom (uid, pos, tenant, name, value)"
    " SELECT * FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[], %s::text[])",
}
_GET_OBJECT = (
    f"SELECT {OBJECT_COLUMNS},"  # noqa: S608
    " ARRAY(SELECT n.name FROM object_names n WHERE n.uid = o.uid ORDER BY n.pos),"
    " ARRAY(SELECT g.name FROM object_groups g WHERE g.uid = o.uid ORDER BY g.pos),"
    " ARRAY(SELECT c.name FROM object_custom c WHERE c.uid = o.uid ORDER BY c.pos),"
    " ARRAY(SELECT c.value FROM object_custom c WHERE c.uid = o.uid ORDER BY c.pos)"
    " FROM objects o WHERE o.uid = %s AND o.tenant = %s"
)
_UPDATE_OBJECT = (
    "UPDATE objects SET state = %s, algorithm = %s, length = %s, l3_version = %s, sealed = %s,"
    " attributes = %s, mac = %s, revision = revision + 1"
    " WHERE uid = %s AND tenant = %s AND revision = %s"
    " RETURNING object_type, created, origin, revision"
)
_UNLIST = "DELETE FROM unsealed_objects WHERE uid = %s"
_SEAL_LEGACY = (
    "UPDATE objects SET mac = %s WHERE uid = %s AND tenant = %s AND revision = %s"
    " AND mac IS NULL AND uid IN (SELECT uid FROM unsealed_objects)"
)
_LEGACY = (
    "SELECT o.tenant, o.uid FROM unsealed_objects u JOIN objects o ON o.uid = u.uid"
    " ORDER BY o.seq"
)
_INSERT_AUDIT = (
    f"INSERT INTO audit ({AUDIT_COLUMNS})"  # noqa: S608
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_INSERT_KEY = (
    f"INSERT INTO keys ({KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"  # noqa: S608
    " ON CONFLICT DO NOTHING RETURNING version"
)
_SELECT_KEYS = (
    f"SELECT {KEY_COLUMNS} FROM keys WHERE tenant = %s AND level = %s"  # noqa: S608
    " ORDER BY version"
)
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', p) FROM unnest(%s::text[]) AS p"  # noqa: S608


# -- secrets and errors --------------------------------------------------------------
def dsn_secrets(dsn: str) -> list[str]:
    """What must never appear in a message: the DSN itself and its password."""
    found = [dsn]
    with contextlib.suppress(ValueError):
        parts = urlsplit(dsn)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        found += parse_qs(parts.query).get("password", [])
    for m in re.finditer(r"password\s*=\s*('(?:[^'\\]|\\.)*'|[^\s&]+)", dsn):
        found += [m.group(1), m.group(1).strip("'")]
    return sorted({s for s in found if s}, key=len, reverse=True)


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _storage_error(exc: psycopg.Error, what: str, secrets: Sequence[str]) -> StorageError:
    state = exc.sqlstate
    detail = (exc.diag.message_primary or "") if state else str(exc).strip()
    where = f", SQLSTATE {state}" if state else ""
    return StorageError(
        redact(f"registry {what} failed ({exc.__class__.__name__}{where}: {detail})", secrets)
    )


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows → one list per column (what ``unnest`` takes)."""
    return [[row[i] for row in rows] for i in range(width)]


def _encode(change: Change) -> str:
    if isinstance(change, StateChange):
        return json.dumps(
            ["o", change.tenant, change.uid, change.state, change.revision, change.seq]
        )
    return json.dumps(["k", change.tenant, change.level, change.version, change.state, change.seq])


def decode_change(payload: str) -> Change | None:
    """A notification's change; None for a payload this Core does not understand."""
    try:
        kind, tenant, a, b, c, *rest = json.loads(payload)
        seq = int(rest[0]) if rest else 0
        if kind == "o":
            return StateChange(str(tenant), str(a), int(b), int(c), seq)
        if kind == "k":
            return KeyChange(str(tenant), str(a), int(b), int(c), seq)
    except (ValueError, TypeError, IndexError):
        pass
    return None


async def _to_feed(conn: Conn, changes: Sequence[Change], retention: int) -> list[Change]:
    """Write ``changes`` to the feed in the caller's transaction; them with their seq.

    The transaction-scoped advisory lock makes sequence numbers commit in
    order across Core instances: a reader that has seen seq N never later
    finds a smaller one committed behind it."""
    if not changes:
        return []
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_FEED_LOCK,))
    out: list[Change] = []
    now = time.time()
    for change in changes:
        cur = await conn.execute(_INSERT_FEED, (*feed_row(change), now))
        row = await cur.fetchone()
        assert row is not None
        out.append(replace(change, seq=int(row[0])))
    cut = out[-1].seq - retention
    if retention > 0 and cut > 0:
        cur = await conn.execute("DELETE FROM feed WHERE seq <= %s", (cut,))
        if cur.rowcount:
            await conn.execute("UPDATE feed_floor SET pruned = GREATEST(pruned, %s)", (cut,))
    return out


def _audit_row(r: AuditRecord) -> tuple[Any, ...]:
    return (
        float(r.time), r.identity, r.tenant, r.operation, r.uid, r.result,
        r.gateway, r.correlation_id, r.detail,
    )  # fmt: skip


async def _notify(conn: Conn, changes: Sequence[Change]) -> None:
    if changes:
        await conn.execute(_NOTIFY, ([_encode(c) for c in changes],))


async def _migrate(conn: Conn) -> int:
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(VERSION_TABLE)
            row = await (await conn.execute("SELECT version FROM schema_version")).fetchone()
            version = int(row[0]) if row else 0
            if version > LATEST:
                raise too_new(version)
            if version >= LATEST:
                return version
            for stmt in POSTGRES[version]:
                await conn.execute(stmt)
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version VALUES (%s)", (version + 1,))


class PostgresRegistry:
    """The registry in a PostgreSQL database; see the module comment."""

    def __init__(
        self, dsn: str, pool: AsyncConnectionPool[Conn], secrets: list[str],
        feed_retention: int = DEFAULT_FEED_RETENTION,
    ) -> None:
        self.feed_retention = feed_retention
        self._dsn = dsn
        self._pool = pool
        self._secrets = secrets
        self._fanout = Fanout()
        self._listen_lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._listen_conn: Conn | None = None
        self._closed = False
        self._writes = 0

    @classmethod
    async def open(
        cls, dsn: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 10.0,
        feed_retention: int = DEFAULT_FEED_RETENTION,
    ) -> PostgresRegistry:
        """Connect, migrate the schema, and open the connection pool."""
        secrets = dsn_secrets(dsn)
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=max(1, round(timeout))
            )
            async with conn:
                await _migrate(conn)
            pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
                dsn, min_size=min_size, max_size=max_size, open=False, timeout=timeout,
                kwargs={"autocommit": True}, check=AsyncConnectionPool.check_connection,
                name="krypton-registry",
            )  # fmt: skip
            await pool.open(wait=True, timeout=timeout)
        except psycopg.Error as exc:
            raise _storage_error(exc, "open", secrets) from None
        return cls(dsn, pool, secrets, feed_retention)

    def __repr__(self) -> str:
        return f"PostgresRegistry({redact(self._dsn, self._secrets[1:])!r})"

    # -- the Registry interface ------------------------------------------------------
    async def put_objects(self, records: Sequence[ObjectRecord]) -> None:
        if not records:
            return
        async with self._transaction("put") as conn:
            cur = await conn.execute(
                _INSERT_OBJECTS,
                _columns([object_row(r) for r in records], len(_OBJECT_TYPES)),
            )
            inserted = {row[0] for row in await cur.fetchall()}
            sides: dict[str, list[tuple[Any, ...]]] = {t: [] for t in _INSERT_SIDE}
            for r in records:
                if r.uid in inserted:
                    inserted.discard(r.uid)  # a uid twice in one batch: its first record won
                    for table, rows in side_rows(r).items():
                        sides[table] += rows
            await self._insert_sides(conn, sides)
            cur = await conn.execute(
                "SELECT uid, tenant FROM objects WHERE uid = ANY(%s)",
                ([r.uid for r in records],),
            )
            owners = dict(await cur.fetchall())
            for r in records:
                if owners.get(r.uid) != r.tenant:
                    raise conflict_owner(r.uid)
        await self._wrote()

    async def get_object(self, tenant: str, uid: str) -> ObjectRecord | None:
        async with self._connection("read") as conn:
            cur = await conn.execute(_GET_OBJECT, (uid, tenant))
            row = await cur.fetchone()
        if row is None:
            return None
        w = OBJECT_WIDTH
        custom = list(zip(row[w + 2], row[w + 3], strict=True))
        return record_from_row(row[:w], row[w], row[w + 1], custom)

    async def update_object(
        self, record: ObjectRecord, audit: AuditRecord | None = None
    ) -> ObjectRecord:
        r = record
        async with self._transaction("update") as conn:
            cur = await conn.execute(
                _UPDATE_OBJECT,
                (
                    int(r.state), r.algorithm, r.length, r.l3_version, r.sealed,
                    bytes(r.attributes), r.mac, r.uid, r.tenant, r.revision,
                ),
            )  # fmt: skip
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(
                    "SELECT revision FROM objects WHERE uid = %s AND tenant = %s", (r.uid, r.tenant)
                )
                now = await cur.fetchone()
                if now is None:
                    raise ItemNotFound(f"no object with identifier {r.uid!r}")
                raise RegistryConflict(
                    f"object {r.uid!r} has changed (revision {now[0]}, not {r.revision})"
                )
            new = ObjectRecord(
                uid=r.uid, tenant=r.tenant, object_type=int(row[0]), state=int(r.state),
                created=int(row[1]), algorithm=r.algorithm, length=r.length,
                l3_version=r.l3_version, sealed=r.sealed, attributes=bytes(r.attributes),
                origin=row[2], names=r.names, groups=r.groups, custom=r.custom,
                revision=int(row[3]), mac=r.mac,
            )  # fmt: skip
            await conn.execute(_UNLIST, (r.uid,))
            for table in _INSERT_SIDE:
                await conn.execute(
                    sql.SQL("DELETE FROM {} WHERE uid = %s").format(sql.Identifier(table)),
                    (r.uid,),
                )
            await self._insert_sides(conn, side_rows(new))
            change = StateChange(new.tenant, new.uid, new.state, new.revision)
            if audit is not None:
                await conn.execute(_INSERT_AUDIT, _audit_row(audit))
            await _notify(conn, await _to_feed(conn, [change], self.feed_retention))
        await self._wrote()
        return new

    async def legacy_objects(self) -> list[tuple[str, str]]:
        async with self._connection("read") as conn:
            cur = await conn.execute(_LEGACY)
            return [(t, u) for t, u in await cur.fetchall()]

    async def is_legacy(self, uid: str) -> bool:
        async with self._connection("read") as conn:
            cur = await conn.execute("SELECT 1 FROM unsealed_objects WHERE uid = %s", (uid,))
            return await cur.fetchone() is not None

    async def seal_legacy(self, tenant: str, uid: str, revision: int, mac: bytes) -> bool:
        async with self._transaction("seal") as conn:
            cur = await conn.execute(_SEAL_LEGACY, (bytes(mac), uid, tenant, int(revision)))
            if cur.rowcount <= 0:
                return False
            await conn.execute(_UNLIST, (uid,))
            return True

    async def locate(self, query: LocateQuery) -> list[str]:
        text, params = locate_sql(query, "postgresql")
        async with self._connection("locate") as conn:
            cur = await conn.execute(text, params)
            return [row[0] for row in await cur.fetchall()]

    async def locate_count(self, query: LocateQuery) -> int:
        text, params = locate_count_sql(query, "postgresql")
        async with self._connection("locate") as conn:
            cur = await conn.execute(text, params)
            row = await cur.fetchone()
        if row is None:
            return 0
        if len(row) > 1 and int(row[1]) > FOLD_SURPLUS:  # kept count: too many delta rows
            await self._fold_quietly(query.tenant)
        return int(row[0])

    async def fold_counts(self, tenant: str | None = None) -> bool:
        """Fold the kept counts' delta rows of ``tenant`` (None: of all tenants)
        into one row per key (:mod:`krypton.registry._counts`); False if another
        fold held the lock, so this one did nothing."""
        async with self._transaction("fold counts") as conn:
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (FOLD_LOCK,))
            row = await cur.fetchone()
            if row is None or not row[0]:
                return False
            await conn.execute(FOLD_SQL, {"tenant": tenant})
        return True

    async def _wrote(self) -> None:
        """After a committed write of objects: every FOLD_EVERY, fold every tenant's
        counts."""
        self._writes += 1
        if self._writes % FOLD_EVERY == 0:
            await self._fold_quietly(None)

    async def _fold_quietly(self, tenant: str | None) -> None:
        """A failed fold loses nothing (the delta rows stay for the next one), so
        it is logged, not raised: the write or count it follows is done."""
        try:
            await self.fold_counts(tenant)
        except StorageError as exc:
            log.warning("registry: folding the kept counts failed: %s", exc)

    async def l3_usage(self, tenant: str) -> dict[int, int]:
        async with self._connection("L3 usage") as conn:
            cur = await conn.execute(L3_USAGE_SQL.replace("?", "%s"), (tenant,))
            return {int(v): int(n) for v, n in await cur.fetchall()}

    async def l3_objects(self, tenant: str, version: int, after: str, limit: int) -> list[str]:
        async with self._connection("L3 objects") as conn:
            cur = await conn.execute(L3_OBJECTS_SQL.replace("?", "%s"),
                                     (tenant, int(version), after, max(0, limit)))
            return [row[0] for row in await cur.fetchall()]

    async def rewrap_jobs(self, tenant: str | None = None) -> list[RewrapJob]:
        sql = f"SELECT {REWRAP_COLUMNS} FROM rewrap_jobs"  # noqa: S608
        params: tuple[str, ...] = ()
        if tenant is not None:
            sql, params = sql + " WHERE tenant = %s", (tenant,)
        async with self._connection("re-wrap jobs") as conn:
            cur = await conn.execute(sql + " ORDER BY tenant", params)
            return [rewrap_job(r) for r in await cur.fetchall()]

    async def put_rewrap_job(self, job: RewrapJob) -> None:
        async with self._connection("re-wrap job write") as conn:
            await conn.execute(REWRAP_UPSERT.replace("?", "%s"), rewrap_row(job))

    async def append_audit(self, record: AuditRecord) -> None:
        async with self._connection("audit write") as conn:
            await conn.execute(_INSERT_AUDIT, _audit_row(record))

    async def audit(
        self, tenant: str | None = None, limit: int = 1000, *, since: float | None = None
    ) -> list[AuditRecord]:
        where: list[str] = []
        params: list[Any] = []
        if tenant is not None:
            where.append("tenant = %s")
            params.append(tenant)
        if since is not None:
            where.append("time >= %s")
            params.append(float(since))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        text = f"SELECT {AUDIT_COLUMNS} FROM audit{clause} ORDER BY id DESC LIMIT %s"  # noqa: S608
        async with self._connection("audit read") as conn:
            cur = await conn.execute(text, (*params, max(0, limit)))
            rows = await cur.fetchall()
        return [AuditRecord(*row) for row in reversed(rows)]

    async def put_keys(self, keys: Sequence[SealedKey]) -> None:
        if not keys:
            return
        changes: list[Change] = []
        async with self._transaction("key write") as conn:
            for k in keys:
                where = (k.tenant, k.level, int(k.version))
                cur = await conn.execute(
                    _INSERT_KEY,
                    (*where, int(k.state), k.sealed, float(k.created)),
                )
                if await cur.fetchone() is None:
                    cur = await conn.execute(
                        "SELECT state, sealed FROM keys WHERE tenant = %s AND level = %s"
                        " AND version = %s FOR UPDATE",
                        where,
                    )
                    row = await cur.fetchone()
                    assert row is not None  # ON CONFLICT found it; nothing deletes keys
                    if not key_changed(k, row[0], row[1]):
                        continue
                    await conn.execute(
                        "UPDATE keys SET state = %s, sealed = %s WHERE tenant = %s AND level = %s"
                        " AND version = %s",
                        (int(k.state), k.sealed, *where),
                    )
                changes.append(KeyChange(k.tenant, k.level, int(k.version), int(k.state)))
            await _notify(conn, await _to_feed(conn, changes, self.feed_retention))

    async def put_key(self, key: SealedKey) -> None:
        await self.put_keys((key,))

    async def reseal_keys(self, moves: Sequence[tuple[SealedKey, bytes]]) -> None:
        if not moves:
            return
        async with self._transaction("key reseal") as conn:
            for key, sealed in moves:
                cur = await conn.execute(
                    "UPDATE keys SET sealed = %s WHERE tenant = %s AND level = %s"
                    " AND version = %s AND sealed = %s",
                    (sealed, key.tenant, key.level, int(key.version), key.sealed),
                )
                if cur.rowcount != 1:
                    raise reseal_conflict(key)

    async def keys(self, tenant: str, level: str) -> list[SealedKey]:
        async with self._connection("key read") as conn:
            cur = await conn.execute(
                _SELECT_KEYS,
                (tenant, level),
            )
            rows = await cur.fetchall()
        return [
            SealedKey(t, lv, v, s, None if b is None else bytes(b), float(c))
            for t, lv, v, s, b, c in rows
        ]

    async def subscribe(self, callback: Callback) -> Callable[[], None]:
        await self._ensure_listener()
        return self._fanout.add(callback)

    async def feed_since(self, tenants: Sequence[str], after: int, limit: int) -> list[Change]:
        wanted = sorted(set(tenants))
        if not wanted or limit <= 0:
            return []
        async with self._connection("feed read") as conn:
            cur = await conn.execute(feed_sql(len(wanted), "postgresql"), (after, *wanted, limit))
            rows = await cur.fetchall()
        return [change_from_feed(r) for r in rows]

    async def feed_bounds(self) -> tuple[int, int]:
        async with self._connection("feed read") as conn:
            cur = await conn.execute(
                "SELECT (SELECT max(pruned) FROM feed_floor), (SELECT max(seq) FROM feed)"
            )
            row = await cur.fetchone()
        pruned = int(row[0] or 0) if row else 0
        head = int(row[1] or 0) if row else 0
        return pruned, max(pruned, head)

    async def object_states(self, tenant: str, uids: Sequence[str]) -> dict[str, tuple[int, int]]:
        if not uids:
            return {}
        async with self._connection("state read") as conn:
            cur = await conn.execute(
                "SELECT uid, state, revision FROM objects WHERE tenant = %s AND uid = ANY(%s)",
                (tenant, list(uids)),
            )
            rows = await cur.fetchall()
        return {uid: (int(state), int(revision)) for uid, state, revision in rows}

    async def key_fingerprint(self, levels: Sequence[str]) -> KeyFingerprint | None:
        """Nothing to poll: ``subscribe`` hears every instance (LISTEN/NOTIFY)."""
        return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._listen_conn is not None:
            await self._listen_conn.close()
        await self._pool.close()
        await self._fanout.close()

    # -- plumbing --------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[Conn]:
        if self._closed:
            raise StorageError("the registry is closed")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise _storage_error(exc, what, self._secrets) from None

    @contextlib.asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[Conn]:
        async with self._connection(what) as conn, conn.transaction():
            yield conn

    @staticmethod
    async def _insert_sides(conn: Conn, sides: dict[str, list[tuple[Any, ...]]]) -> None:
        for table, rows in sides.items():
            if rows:
                await conn.execute(
                    _INSERT_SIDE[table], _columns(rows, len(rows[0]))
                )

    async def _listen_connect(self) -> Conn:
        try:
            conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
            except BaseException:
                await conn.close()
                raise
        except psycopg.Error as exc:
            raise _storage_error(exc, "listen", self._secrets) from None
        return conn

    async def _ensure_listener(self) -> None:
        async with self._listen_lock:
            if self._closed:
                raise StorageError("the registry is closed")
            if self._listener is None:
                self._listen_conn = await self._listen_connect()
                self._listener = asyncio.create_task(self._listen(), name="registry-listener")

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            conn = self._listen_conn
            if conn is not None:
                try:
                    async for note in conn.notifies():
                        delay = 0.1
                        change = decode_change(note.payload)
                        if change is None:
                            log.warning("registry: ignored a notification on %s", CHANNEL)
                        else:
                            self._fanout.publish((change,))
                except psycopg.Error as exc:
                    log.warning(
                        "registry listener lost its connection (%s); changes committed until it"
                        " is back are not delivered",
                        _storage_error(exc, "listen", self._secrets),
                    )
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
                self._listen_conn = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                self._listen_conn = await self._listen_connect()
            except StorageError as exc:
                log.warning("registry listener: %s", exc)
