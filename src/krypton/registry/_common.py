"""What both registry backends share: the Locate query, row mapping, change fan-out.

The fan-out
-----------
A backend calls :meth:`Fanout.publish` with the changes of one committed
transaction, from any thread (the SQLite writer thread, or the PostgreSQL
listener task). Each subscriber has an ``asyncio.Queue`` and one task on the
event loop it subscribed from; the task awaits the callback for one change
at a time, so a subscriber sees changes in commit order and never twice at
once. A callback that raises is logged and the next change is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from krypton.errors import InvalidField
from krypton.model.registry import (
    Change,
    KeyChange,
    LocateQuery,
    ObjectRecord,
    RegistryConflict,
    RewrapJob,
    SealedKey,
    StateChange,
)
from krypton.registry._counts import count_sql, kept_filters

log = logging.getLogger("krypton.registry")

Callback = Callable[[Change], Awaitable[None]]
Dialect = Literal["sqlite", "postgresql"]

# The objects columns in the order object_row and record_from_row use.
OBJECT_COLUMNS = (
    "uid, tenant, object_type, state, created, algorithm, length,"
    " l3_version, sealed, attributes, origin, revision, mac"
)
OBJECT_WIDTH = 13
AUDIT_COLUMNS = "time, identity, tenant, operation, uid, result, gateway, correlation_id, detail"
KEY_COLUMNS = "tenant, level, version, state, sealed, created"
FEED_COLUMNS = "seq, tenant, kind, name, number, state"
DEFAULT_FEED_RETENTION = 1_000_000


def feed_row(change: Change) -> tuple[str, str, str, int, int]:
    """(tenant, kind, name, number, state) of a change, as the feed table holds it."""
    if isinstance(change, StateChange):
        return change.tenant, "o", change.uid, int(change.revision), int(change.state)
    return change.tenant, "k", change.level, int(change.version), int(change.state)


def change_from_feed(row: Sequence[Any]) -> Change:
    seq, tenant, kind, name, number, state = row
    if kind == "o":
        return StateChange(tenant, name, int(state), int(number), int(seq))
    return KeyChange(tenant, name, int(number), int(state), int(seq))


def feed_sql(count: int, dialect: Dialect) -> str:
    """The feed read: changes of ``count`` tenants after a seq, oldest first, limited."""
    p = "?" if dialect == "sqlite" else "%s"
    tenants = ", ".join([p] * count)
    return (
        f"SELECT {FEED_COLUMNS} FROM feed WHERE seq > {p} AND tenant IN ({tenants})"  # noqa: S608
        f" ORDER BY seq LIMIT {p}"
    )


def object_row(r: ObjectRecord) -> tuple[Any, ...]:
    return (
        r.uid, r.tenant, int(r.object_type), int(r.state), int(r.created), r.algorithm,
        r.length, r.l3_version, r.sealed, bytes(r.attributes), r.origin, int(r.revision),
        r.mac,
    )  # fmt: skip


def record_from_row(
    row: Sequence[Any],
    names: Sequence[str],
    groups: Sequence[str],
    custom: Sequence[tuple[str, str]],
) -> ObjectRecord:
    return ObjectRecord(
        uid=row[0], tenant=row[1], object_type=int(row[2]), state=int(row[3]),
        created=int(row[4]), algorithm=row[5], length=row[6], l3_version=row[7],
        sealed=None if row[8] is None else bytes(row[8]), attributes=bytes(row[9]),
        origin=row[10], revision=int(row[11]), mac=None if row[12] is None else bytes(row[12]),
        names=tuple(names), groups=tuple(groups), custom=tuple((n, v) for n, v in custom),
    )  # fmt: skip


def side_rows(r: ObjectRecord) -> dict[str, list[tuple[Any, ...]]]:
    """Rows of the Locate side tables for one record: table → (uid, pos, tenant, ...)."""
    return {
        "object_names": [(r.uid, i, r.tenant, n) for i, n in enumerate(r.names)],
        "object_groups": [(r.uid, i, r.tenant, g) for i, g in enumerate(r.groups)],
        "object_custom": [(r.uid, i, r.tenant, n, v) for i, (n, v) in enumerate(r.custom)],
    }


_ORDER = {False: " ORDER BY o.created, o.seq", True: " ORDER BY o.created DESC, o.seq DESC"}


def _locate_where(q: LocateQuery, dialect: Dialect) -> tuple[str, list[Any]]:
    """The FROM and WHERE of a Locate: objects of the tenant, narrowed by an
    indexed lookup per filter."""
    p = "?" if dialect == "sqlite" else "%s"
    # With a name, group or custom filter, the side table's (tenant, ...) index
    # must drive the query; SQLite, without statistics, would rather walk all
    # of the tenant's objects by (tenant, ...) and test each against the list.
    # A unary + keeps its planner off that index (the documented idiom); the
    # tenant is still checked on every row. PostgreSQL plans from statistics.
    tenant = "+o.tenant" if _sided(q) and dialect == "sqlite" else "o.tenant"
    where, params = kept_filters("o", q.object_type, q.state, q.destroyed, p)
    where.insert(0, f"{tenant} = {p}")
    params.insert(0, q.tenant)
    for table, text in (("object_names", q.name), ("object_groups", q.group)):
        if text is not None:
            where.append(f"o.uid IN (SELECT uid FROM {table} WHERE tenant = {p} AND name = {p})")  # noqa: S608
            params += [q.tenant, text]
    for name, value in q.custom:
        where.append(
            f"o.uid IN (SELECT uid FROM object_custom WHERE tenant = {p} AND name = {p}"  # noqa: S608
            f" AND value = {p})"
        )
        params += [q.tenant, name, value]
    return " FROM objects o WHERE " + " AND ".join(where), params


def _sided(q: LocateQuery) -> bool:
    """Whether the query filters on a side table (name, group, custom)."""
    return q.name is not None or q.group is not None or bool(q.custom)


def locate_sql(q: LocateQuery, dialect: Dialect) -> tuple[str, list[Any]]:
    """The one Locate statement: the page of matching uids in the query's order,
    which an index (tenant, [type | state,] created, seq) serves, so that
    LIMIT stops the walk. Exposed so that tests can EXPLAIN exactly this."""
    if q.offset < 0 or (q.limit is not None and q.limit < 0):
        raise InvalidField("Locate: offset and limit must not be negative")
    p = "?" if dialect == "sqlite" else "%s"
    where, params = _locate_where(q, dialect)
    sql = "SELECT o.uid" + where + _ORDER[q.newest_first]
    if q.limit is not None:
        sql += f" LIMIT {p}"
        params.append(q.limit)
    elif q.offset and dialect == "sqlite":
        sql += " LIMIT -1"
    if q.offset:
        sql += f" OFFSET {p}"
        params.append(q.offset)
    return sql, params


def locate_count_sql(q: LocateQuery, dialect: Dialect) -> tuple[str, list[Any]]:
    """How many objects match (Located Items). Filtering on the tenant, type,
    state and destroyed flag only, it is read from the kept counts
    (:mod:`krypton.registry._counts`: a handful of rows; on PostgreSQL a second
    column says how many of them a fold would remove); otherwise a COUNT(*)
    over the same index as the Locate, no row read out."""
    if not _sided(q):
        p = "?" if dialect == "sqlite" else "%s"
        return count_sql(q.tenant, q.object_type, q.state, q.destroyed, p,
                         surplus=dialect == "postgresql")  # fmt: skip
    where, params = _locate_where(q, dialect)
    return "SELECT COUNT(*)" + where, params


def reseal_conflict(key: SealedKey) -> RegistryConflict:
    return RegistryConflict(
        f"{key.level} version {key.version} of tenant {key.tenant!r} changed while it was"
        " being sealed anew; nothing was changed"
    )


def key_changed(key: SealedKey, state: int, sealed: bytes | None) -> bool:
    """Whether storing ``key`` over a stored (state, sealed) changes it; raises
    :class:`RegistryConflict` where it may not (both backends use it)."""
    if key.sealed is not None:
        if sealed is None:
            raise RegistryConflict(
                f"{key.level} version {key.version} of tenant {key.tenant!r} is destroyed"
            )
        if not hmac.compare_digest(bytes(sealed), key.sealed):
            raise RegistryConflict(
                f"{key.level} version {key.version} of tenant {key.tenant!r} exists"
                " with other key material"
            )
    return int(key.state) != int(state) or (key.sealed is None and sealed is not None)


def conflict_owner(uid: str) -> RegistryConflict:
    return RegistryConflict(f"unique identifier {uid!r} is already used by another tenant")


# -- fan-out ----------------------------------------------------------------------
@dataclass(slots=True)
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Sequence[Change]]
    task: asyncio.Task[None]


async def _deliver(queue: asyncio.Queue[Sequence[Change]], callback: Callback) -> None:
    while True:
        changes = await queue.get()
        for change in changes:
            try:
                await callback(change)
            except Exception:
                log.exception("registry subscriber failed on %r", change)


def _cancel(sub: _Subscriber) -> None:
    with contextlib.suppress(RuntimeError):  # its loop is closed: nothing left to stop
        sub.loop.call_soon_threadsafe(sub.task.cancel)


class Fanout:
    """Subscribers and their delivery tasks; see the module comment."""

    def __init__(self) -> None:
        self._subs: dict[int, _Subscriber] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._subs)

    def add(self, callback: Callback) -> Callable[[], None]:
        """Subscribe on the running loop; returns the unsubscribe function."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Sequence[Change]] = asyncio.Queue()
        task = loop.create_task(_deliver(queue, callback), name="registry-subscriber")
        key = next(self._ids)
        with self._lock:
            self._subs[key] = _Subscriber(loop, queue, task)

        def unsubscribe() -> None:
            with self._lock:
                sub = self._subs.pop(key, None)
            if sub is not None:
                _cancel(sub)

        return unsubscribe

    def publish(self, changes: Sequence[Change]) -> None:
        """Queue committed changes for every subscriber; callable from any thread."""
        if not changes:
            return
        with self._lock:
            subs = list(self._subs.values())
        for sub in subs:
            with contextlib.suppress(RuntimeError):
                sub.loop.call_soon_threadsafe(sub.queue.put_nowait, changes)

    async def close(self) -> None:
        with self._lock:
            subs = list(self._subs.values())
            self._subs.clear()
        for sub in subs:
            _cancel(sub)
        loop = asyncio.get_running_loop()
        here = [s.task for s in subs if s.loop is loop]
        await asyncio.gather(*here, return_exceptions=True)


# Live objects (material held) per L3 version of one tenant; "?" is the placeholder.
L3_USAGE_SQL = (
    "SELECT l3_version, COUNT(*) FROM objects WHERE tenant = ? AND sealed IS NOT NULL"
    " AND l3_version IS NOT NULL GROUP BY l3_version"
)

# The uids a re-wrap moves off one L3 version ("?" placeholders, uses objects_tenant_l3).
L3_OBJECTS_SQL = (
    "SELECT uid FROM objects WHERE tenant = ? AND l3_version = ? AND sealed IS NOT NULL"
    " AND uid > ? ORDER BY uid LIMIT ?"
)
REWRAP_COLUMNS = "tenant, target, operator, started, total, done, updated, finished"
REWRAP_UPSERT = (
    f"INSERT INTO rewrap_jobs ({REWRAP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
    " ON CONFLICT(tenant) DO UPDATE SET target = excluded.target,"
    " operator = excluded.operator, started = excluded.started, total = excluded.total,"
    " done = excluded.done, updated = excluded.updated, finished = excluded.finished"
)


def rewrap_row(job: RewrapJob) -> tuple[Any, ...]:
    return (job.tenant, job.target, job.operator, job.started, job.total, job.done,
            job.updated, job.finished)


def rewrap_job(row: Sequence[Any]) -> RewrapJob:
    t, target, operator, started, total, done, updated, finished = row
    return RewrapJob(str(t), int(target), str(operator), float(started), int(total), int(done),
                     float(updated), None if finished is None else float(finished))
