"""The Core registry on SQLite (a single Core node, development, tests).

How this works
--------------
One writer thread owns the write connection. Each write method queues an
operation (a function of that connection) and awaits a future. The writer
takes everything queued (up to ``max_batch`` operations) and runs it in ONE
transaction, each operation inside its own ``SAVEPOINT``, then commits; with
``journal_mode=WAL`` and ``synchronous=FULL`` one fsync covers the whole
batch (group commit, as in the gateway vault). An operation that fails is
rolled back to its savepoint and only its caller gets the error; if the
commit fails, every caller in the batch does. Futures resolve after the
commit, and only then do the batch's changes go to the subscribers.

Reads run in worker threads (``asyncio.to_thread``) on per-thread read-only
connections; each read is one read transaction, so a read of several
statements (``get_object``) sees one committed snapshot. WAL readers never
wait for the writer.

``sqlite::memory:`` (path ``":memory:"``) has a single connection, so its
reads are queued to the writer as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from krypton.errors import ItemNotFound, StorageError
from krypton.model.registry import (
    AuditRecord,
    Change,
    KeyChange,
    LocateQuery,
    ObjectRecord,
    RegistryConflict,
    SealedKey,
    StateChange,
)
from krypton.registry._common import (
    AUDIT_COLUMNS,
    KEY_COLUMNS,
    OBJECT_COLUMNS,
    Callback,
    Fanout,
    conflict_owner,
    key_changed,
    locate_sql,
    object_row,
    record_from_row,
    side_rows,
)
from krypton.registry.schema import migrate_sqlite

T = TypeVar("T")
_Work = Callable[[sqlite3.Connection], tuple[Any, Sequence[Change]]]

_INSERT_OBJECT = (
    f"INSERT INTO objects ({OBJECT_COLUMNS}) VALUES ({', '.join('?' * 12)})"  # noqa: S608
    " ON CONFLICT(uid) DO NOTHING"
)
_SIDE_INSERT = {
    "object_names": "INSERT INTO object_names (uid, pos, tenant, name) VALUES (?, ?, ?, ?)",
    "object_groups": "INSERT INTO object_groups (uid, pos, tenant, name) VALUES (?, ?, ?, ?)",
    "object_custom": (
        "INSERT INTO object_custom (uid, pos, tenant, name, value) VALUES (?, ?, ?, ?, ?)"
    ),
}
_STOP = object()


def _storage_error(exc: sqlite3.Error, what: str) -> StorageError:
    return StorageError(f"registry {what} failed ({exc.__class__.__name__}: {exc})")


@contextlib.contextmanager
def _translate(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _storage_error(exc, what) from None


# -- operations (run on the writer thread, inside a savepoint) --------------------
def _insert_sides(conn: sqlite3.Connection, r: ObjectRecord) -> None:
    for table, rows in side_rows(r).items():
        if rows:
            conn.executemany(_SIDE_INSERT[table], rows)


def _put_objects(
    records: Sequence[ObjectRecord], conn: sqlite3.Connection
) -> tuple[None, tuple[()]]:
    for r in records:
        if conn.execute(_INSERT_OBJECT, object_row(r)).rowcount:
            _insert_sides(conn, r)
            continue
        owner = conn.execute("SELECT tenant FROM objects WHERE uid = ?", (r.uid,)).fetchone()
        if owner is None or owner[0] != r.tenant:
            raise conflict_owner(r.uid)
    return None, ()


def _update_object(
    record: ObjectRecord, conn: sqlite3.Connection
) -> tuple[ObjectRecord, tuple[Change]]:
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
        " attributes = ?, revision = ? WHERE uid = ?",
        (
            int(new.state), new.algorithm, new.length, new.l3_version, new.sealed,
            bytes(new.attributes), new.revision, new.uid,
        ),
    )  # fmt: skip
    for table in _SIDE_INSERT:
        conn.execute(f"DELETE FROM {table} WHERE uid = ?", (new.uid,))  # noqa: S608
    _insert_sides(conn, new)
    return new, (StateChange(new.tenant, new.uid, new.state, new.revision),)


def _append_audit(r: AuditRecord, conn: sqlite3.Connection) -> tuple[None, tuple[()]]:
    conn.execute(
        f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            float(r.time), r.identity, r.tenant, r.operation, r.uid, r.result,
            r.gateway, r.correlation_id, r.detail,
        ),
    )  # fmt: skip
    return None, ()


def _put_keys(keys: Sequence[SealedKey], conn: sqlite3.Connection) -> tuple[None, list[Change]]:
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
    return None, changes


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


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA foreign_keys = ON")
        if path != ":memory:":
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"registry {path}: WAL journal mode is not available here")
            conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


class _Op:
    __slots__ = ("changes", "error", "future", "loop", "result", "work")

    def __init__(
        self, work: _Work, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.work = work
        self.future = future
        self.loop = loop
        self.result: Any = None
        self.changes: Sequence[Change] = ()
        self.error: BaseException | None = None


def _settle(ops: list[_Op]) -> None:
    for op in ops:
        if op.future.done():
            continue
        if op.error is not None:
            op.future.set_exception(op.error)
        else:
            op.future.set_result(op.result)


class SqliteRegistry:
    """The registry in one SQLite file (or in memory); see the module comment."""

    def __init__(self, path: str, conn: sqlite3.Connection, max_batch: int) -> None:
        self.path = path
        self._memory = path == ":memory:"
        self._wconn = conn
        self._max_batch = max(1, max_batch)
        self._queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._gate = threading.Lock()
        self._closed = False
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._fanout = Fanout()
        self.commits = 0
        self._writer = threading.Thread(target=self._run, name="registry-writer", daemon=True)
        self._writer.start()

    @classmethod
    def open(cls, path: str | Path, *, max_batch: int = 1024) -> SqliteRegistry:
        """Open (creating and migrating as needed) the registry at ``path``."""
        path = str(path)
        new = path != ":memory:" and not os.path.exists(path)
        with _translate(f"open of {path}"):
            conn = _connect(path)
            try:
                migrate_sqlite(conn)
            except BaseException:
                conn.close()
                raise
        if new:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return cls(path, conn, max_batch)

    def __repr__(self) -> str:
        return f"SqliteRegistry({self.path!r})"

    # -- the Registry interface ----------------------------------------------------
    async def put_objects(self, records: Sequence[ObjectRecord]) -> None:
        batch = tuple(records)
        if batch:
            await self._write(lambda conn: _put_objects(batch, conn))

    async def get_object(self, tenant: str, uid: str) -> ObjectRecord | None:
        return await self._read(lambda conn: _get_object(tenant, uid, conn))

    async def update_object(self, record: ObjectRecord) -> ObjectRecord:
        return await self._write(lambda conn: _update_object(record, conn))

    async def locate(self, query: LocateQuery) -> list[str]:
        sql, params = locate_sql(query, "sqlite")
        return await self._read(lambda conn: [r[0] for r in conn.execute(sql, params)])

    async def append_audit(self, record: AuditRecord) -> None:
        await self._write(lambda conn: _append_audit(record, conn))

    async def audit(
        self, tenant: str | None = None, limit: int = 1000, *, since: float | None = None
    ) -> list[AuditRecord]:
        return await self._read(lambda conn: _audit(tenant, limit, since, conn))

    async def put_keys(self, keys: Sequence[SealedKey]) -> None:
        batch = tuple(keys)
        if batch:
            await self._write(lambda conn: _put_keys(batch, conn))

    async def put_key(self, key: SealedKey) -> None:
        await self.put_keys((key,))

    async def keys(self, tenant: str, level: str) -> list[SealedKey]:
        return await self._read(lambda conn: _keys(tenant, level, conn))

    async def subscribe(self, callback: Callback) -> Callable[[], None]:
        return self._fanout.add(callback)

    async def close(self) -> None:
        """Finish every queued write, stop the writer, close the file."""
        with self._gate:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        await asyncio.to_thread(self._writer.join)
        with self._gate:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._wconn.close()
        await self._fanout.close()

    # -- plumbing ------------------------------------------------------------------
    async def _write(self, work: Callable[[sqlite3.Connection], tuple[T, Sequence[Change]]]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._gate:
            if self._closed:
                raise StorageError("the registry is closed")
            self._queue.put(_Op(work, future, loop))
        return await future

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._memory:
            return await self._write(lambda conn: (work(conn), ()))
        return await asyncio.to_thread(self._read_now, work)

    def _read_now(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader()
        with _translate("read"):
            conn.execute("BEGIN")
            try:
                return work(conn)
            finally:
                conn.execute("ROLLBACK")

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._gate, _translate("open for reading"):
                if self._closed:
                    raise StorageError("the registry is closed")
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA query_only = ON")
                conn.execute("PRAGMA busy_timeout = 10000")
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch: list[_Op] = []
            while True:
                if item is _STOP:
                    stop = True
                    break
                assert isinstance(item, _Op)
                batch.append(item)
                if len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if not batch:
                continue
            try:
                changes = self._commit(batch)
            except BaseException as exc:  # a bug here must not strand callers
                changes = []
                for op in batch:
                    op.error = op.error or StorageError(f"registry writer failed: {exc!r}")
            self._resolve(batch)
            self._fanout.publish(changes)

    def _commit(self, batch: list[_Op]) -> list[Change]:
        conn = self._wconn
        changes: list[Change] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    op.result, op.changes = op.work(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if isinstance(exc, sqlite3.Error):
                        op.error = _storage_error(exc, "write")
                    else:
                        op.error = exc
                    continue
                conn.execute("RELEASE op")
                changes.extend(op.changes)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = _storage_error(exc, "commit")
            for op in batch:
                op.error = op.error or error
            return []
        self.commits += 1
        return changes

    def _resolve(self, batch: list[_Op]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
        for op in batch:
            by_loop.setdefault(op.loop, []).append(op)
        for loop, ops in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has been closed
                loop.call_soon_threadsafe(_settle, ops)
