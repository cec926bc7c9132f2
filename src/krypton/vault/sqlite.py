"""The gateway vault on SQLite, with durable group commit.

How this works
--------------
Writes go through one dedicated writer thread that owns the write
connection. ``await vault.put(record)`` puts an operation on a queue and
waits on an asyncio future. The writer takes everything queued (up to
``max_batch`` operations), applies it in ONE transaction and commits; with
``journal_mode=WAL`` and ``synchronous=FULL`` the commit fsyncs the WAL, so a
single fsync covers every caller in the batch. Only then are the futures
resolved, with one ``loop.call_soon_threadsafe`` per batch: when ``put``
returns, the record is on disk. While one commit syncs, the next batch
builds up, so the more concurrent writers, the more each fsync carries.

If a statement fails in a batch (say a duplicate uid), the batch is rolled
back and redone with a savepoint per operation, so only that caller gets the
:class:`~krypton.errors.StorageError`. If the commit itself fails, every
caller in the batch does.

Reads (``get``, ``outbox``) run on the caller's thread, on a per-thread
read-only connection, which sees the last committed state (WAL readers do not
block the writer). ``get`` consults an LRU cache of wrapped records first;
see :mod:`krypton.vault.cache` for how it stays coherent with the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from krypton.errors import StorageError
from krypton.model.record import KeyRecord
from krypton.vault.cache import RecordCache
from krypton.vault.schema import migrate

_INSERT = (
    "INSERT INTO keys (uid, tenant, object_type, algorithm, length, state, l3_version,"
    " wrapped, attributes, created, synced) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = (
    "SELECT uid, tenant, object_type, algorithm, length, state, l3_version,"
    " wrapped, attributes, created, synced FROM keys WHERE uid = ?"
)
_OUTBOX = (
    "SELECT uid, tenant, object_type, algorithm, length, state, l3_version,"
    " wrapped, attributes, created, synced FROM keys WHERE synced = 0 ORDER BY rowid LIMIT ?"
)

# A destroyed key's wrapped material is erased, not just marked (KMIP State
# Destroyed = 5, Destroyed Compromised = 6); secure_delete zeroes freed space.
DESTROYED_STATES: Final = frozenset((5, 6))
_ERASE: Final = "UPDATE keys SET state=?, wrapped=X'' WHERE uid=?"

_PUT: Final = 0
_STATE: Final = 1
_ATTRS: Final = 2
_SYNCED: Final = 3
_REINSTATE: Final = 4
_RESTORE_SQL: Final = (
    "UPDATE keys SET state=?, l3_version=?, wrapped=?, attributes=? WHERE uid=? AND tenant=?"
)


class _Op:
    __slots__ = ("error", "future", "kind", "loop", "payload", "result")

    def __init__(
        self, kind: int, payload: Any, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.kind = kind
        self.payload = payload
        self.future = future
        self.loop = loop
        self.result: Any = None
        self.error: BaseException | None = None


_STOP = object()


def _row(r: KeyRecord) -> tuple[object, ...]:
    return (
        r.uid, r.tenant, r.object_type, r.algorithm, r.length, r.state,
        r.l3_version, r.wrapped, r.attributes, r.created, int(r.synced),
    )  # fmt: skip


def _record(row: Sequence[Any]) -> KeyRecord:
    return KeyRecord(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6],
        bytes(row[7]), bytes(row[8]), row[9], bool(row[10]),
    )  # fmt: skip


def _storage_error(exc: sqlite3.Error, what: str) -> StorageError:
    if isinstance(exc, sqlite3.IntegrityError):
        return StorageError(f"vault {what} failed: a key with this unique identifier exists")
    return StorageError(f"vault {what} failed ({exc.__class__.__name__}: {exc})")


@contextlib.contextmanager
def _translate(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _storage_error(exc, what) from None


def _settle(ops: list[_Op]) -> None:
    for op in ops:
        if op.future.done():
            continue
        if op.error is not None:
            op.future.set_exception(op.error)
        else:
            op.future.set_result(op.result)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"vault {path}: WAL journal mode is not available here")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA fullfsync = ON")
        conn.execute("PRAGMA secure_delete = ON")
    except BaseException:
        conn.close()
        raise
    return conn


class Vault:
    """Wrapped L4 records in one SQLite file; see the module comment."""

    def __init__(
        self, path: Path, conn: sqlite3.Connection, cache_size: int, max_batch: int
    ) -> None:
        self.path = path
        self._wconn = conn
        self._cache = RecordCache(cache_size)
        self._max_batch = max(1, max_batch)
        self._queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._gate = threading.Lock()
        self._closed = False
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._commits = 0
        self._written = 0
        self._largest_batch = 0
        self._writer = threading.Thread(target=self._run, name="vault-writer", daemon=True)
        self._writer.start()

    @classmethod
    def open(
        cls, path: str | Path, *, cache_size: int = 65536, max_batch: int = 4096
    ) -> Vault:
        """Open (creating and migrating as needed) the vault file at ``path``."""
        path = Path(path)
        new = not path.exists()
        with _translate(f"open of {path}"):
            conn = _connect(path)
            try:
                migrate(conn)
            except BaseException:
                conn.close()
                raise
        if new:
            with contextlib.suppress(OSError):
                fd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return cls(path, conn, cache_size, max_batch)

    # -- counters --------------------------------------------------------------
    @property
    def commits(self) -> int:
        """Transactions committed by the writer (each one fsync of the WAL)."""
        return self._commits

    @property
    def records_written(self) -> int:
        return self._written

    @property
    def largest_batch(self) -> int:
        return self._largest_batch

    # -- writes (durable when they return) -------------------------------------
    async def put(self, record: KeyRecord) -> None:
        await self._submit(_PUT, (record,))

    async def put_many(self, records: Iterable[KeyRecord]) -> None:
        """All of ``records`` in one transaction (all or none)."""
        batch = tuple(records)
        if batch:
            await self._submit(_PUT, batch)

    async def update_state(self, uid: str, state: int) -> bool:
        """Set a key's state; False if there is no such key."""
        return bool(await self._submit(_STATE, (uid, int(state))))

    async def update_attributes(self, uid: str, attributes: bytes) -> bool:
        """Replace a key's attribute blob; False if there is no such key."""
        return bool(await self._submit(_ATTRS, (uid, bytes(attributes))))

    async def reinstate(self, record: KeyRecord) -> bool:
        """Give a held key back its state, wrapped material and attributes (a Destroy
        the Core has undone: krypton.engine.undo); False if there is no such key."""
        return bool(await self._submit(_REINSTATE, record))

    async def mark_synced(self, uids: Iterable[str]) -> int:
        """Take records out of the outbox; how many were marked."""
        batch = tuple(uids)
        return int(await self._submit(_SYNCED, batch)) if batch else 0

    def _submit(self, kind: int, payload: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._gate:
            if self._closed:
                raise StorageError("the vault is closed")
            self._queue.put(_Op(kind, payload, future, loop))
        return future

    # -- reads (caller's thread) -----------------------------------------------
    def get(self, uid: str) -> KeyRecord | None:
        record = self._cache.get(uid)
        if record is not None:
            return record
        generation = self._cache.generation
        with _translate("read"):
            row = self._reader().execute(_SELECT, (uid,)).fetchone()
        if row is None:
            return None
        record = _record(row)
        self._cache.fill(record, generation)
        return record

    def outbox(self, limit: int) -> list[KeyRecord]:
        """Up to ``limit`` records the Core has not acknowledged, oldest first."""
        with _translate("outbox read"):
            rows = self._reader().execute(_OUTBOX, (limit,)).fetchall()
        return [_record(r) for r in rows]

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._gate:
                if self._closed:
                    raise StorageError("the vault is closed")
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA query_only = ON")
                conn.execute("PRAGMA busy_timeout = 10000")
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    # -- shutdown --------------------------------------------------------------
    def close(self) -> None:
        """Finish every queued write, stop the writer and close the file."""
        with self._gate:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._writer.join()
        self._cache.clear()
        with self._gate:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._wconn.close()

    # -- the writer thread -----------------------------------------------------
    def _run(self) -> None:
        q = self._queue
        stop = False
        while not stop:
            item = q.get()
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
                    item = q.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    self._commit(batch)
                except BaseException as exc:  # a bug here must not strand callers
                    for op in batch:
                        op.error = op.error or StorageError(f"vault writer failed: {exc!r}")
                self._resolve(batch)

    def _commit(self, batch: list[_Op]) -> None:
        conn = self._wconn
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._apply_all(batch)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not isinstance(exc, sqlite3.Error):
                raise
            if len(batch) == 1:
                batch[0].error = _storage_error(exc, "write")
                return
            self._commit_isolated(batch)
            return
        self._committed(batch)

    def _commit_isolated(self, batch: list[_Op]) -> None:
        """Redo a failed batch with a savepoint per operation."""
        conn = self._wconn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    self._apply(op)
                    conn.execute("RELEASE op")
                except sqlite3.Error as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    op.error = _storage_error(exc, "write")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not isinstance(exc, sqlite3.Error):
                raise
            for op in batch:
                op.error = op.error or _storage_error(exc, "commit")
            return
        self._committed([op for op in batch if op.error is None])

    def _apply_all(self, batch: list[_Op]) -> None:
        rows: list[tuple[object, ...]] = []
        for op in batch:
            if op.kind == _PUT:
                rows.extend(_row(r) for r in op.payload)
                continue
            if rows:
                self._wconn.executemany(_INSERT, rows)
                rows = []
            self._apply(op)
        if rows:
            self._wconn.executemany(_INSERT, rows)

    def _apply(self, op: _Op) -> None:
        conn = self._wconn
        if op.kind == _PUT:
            conn.executemany(_INSERT, [_row(r) for r in op.payload])
        elif op.kind == _STATE:
            uid, state = op.payload
            sql = _ERASE if state in DESTROYED_STATES else "UPDATE keys SET state=? WHERE uid=?"
            op.result = conn.execute(sql, (state, uid)).rowcount
        elif op.kind == _ATTRS:
            uid, attrs = op.payload
            op.result = conn.execute(
                "UPDATE keys SET attributes=? WHERE uid=?", (attrs, uid)
            ).rowcount
        elif op.kind == _REINSTATE:
            r = op.payload
            op.result = conn.execute(
                _RESTORE_SQL, (r.state, r.l3_version, r.wrapped, r.attributes, r.uid, r.tenant)
            ).rowcount
        else:
            op.result = conn.executemany(
                "UPDATE keys SET synced=1 WHERE uid=? AND synced=0", [(u,) for u in op.payload]
            ).rowcount

    def _committed(self, ops: list[_Op]) -> None:
        self._commits += 1
        self._largest_batch = max(self._largest_batch, len(ops))
        cache = self._cache
        for op in ops:
            if op.kind == _PUT:
                self._written += len(op.payload)
                cache.add(op.payload)
            elif op.kind == _STATE:
                state = op.payload[1]
                if state in DESTROYED_STATES:
                    cache.update(op.payload[:1], _change(state=state, wrapped=b""))
                else:
                    cache.update(op.payload[:1], _change(state=state))
            elif op.kind == _ATTRS:
                cache.update(op.payload[:1], _change(attributes=op.payload[1]))
            elif op.kind == _REINSTATE:
                r = op.payload
                cache.update(
                    (r.uid,),
                    _change(
                        state=r.state, l3_version=r.l3_version, wrapped=r.wrapped,
                        attributes=r.attributes,
                    ),
                )  # fmt: skip
            else:
                cache.update(op.payload, _change(synced=True))

    def _resolve(self, batch: list[_Op]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
        for op in batch:
            by_loop.setdefault(op.loop, []).append(op)
        for loop, ops in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has been closed
                loop.call_soon_threadsafe(_settle, ops)


def _change(**fields: Any) -> Callable[[KeyRecord], KeyRecord]:
    return lambda record: replace(record, **fields)
