"""The gateway vault on SQLite, with durable group commit.

How this works
--------------
Writes go through the shared writer thread (:class:`krypton.storage.Writer`),
which owns the write connection: ``await vault.put(record)`` queues an
operation and returns once the transaction holding it has committed (one
fsync of the WAL for every write in the batch). Runs of inserts in a batch
become one ``executemany``. If a statement fails in a batch (say a duplicate
uid), the batch is redone with a savepoint per operation, so only that
caller gets the :class:`~krypton.errors.StorageError`.

An operation is a function ``(conn, payload) -> result`` run on the writer
thread; :data:`_CACHED` says, for each of them, how a committed one changes
the record cache (a function that is not in the table is an error, not a
default).

Records are authenticated (:mod:`krypton.vault.auth`): every write stores a
MAC under the record's L3 version, every row read from the file is checked.

Reads (``get``, ``outbox``) run on the caller's thread, on a per-thread
read-only connection, which sees the last committed state (WAL readers do not
block the writer). ``get`` consults an LRU cache of wrapped records first;
see :mod:`krypton.vault.cache` for how it stays coherent with the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from krypton.errors import KryptonError
from krypton.model.record import KeyRecord
from krypton.storage import Op, Readers, Writer, open_file, translated
from krypton.vault.auth import Sealer, check, log, seal
from krypton.vault.cache import RecordCache
from krypton.vault.schema import migrate

_INSERT = (
    "INSERT INTO keys (uid, tenant, object_type, algorithm, length, state, l3_version,"
    " wrapped, attributes, created, synced, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS = (
    "SELECT uid, tenant, object_type, algorithm, length, state, l3_version,"
    " wrapped, attributes, created, synced, mac FROM keys"
)
_SELECT = _COLUMNS + " WHERE uid = ?"
_OUTBOX = _COLUMNS + " WHERE synced = 0 ORDER BY rowid LIMIT ?"
_UNSEALED = "SELECT 1 FROM unsealed WHERE uid = ?"
_REWRITE: Final = (
    "UPDATE keys SET state=?, l3_version=?, wrapped=?, attributes=?, mac=? WHERE uid=?"
)

# A destroyed key's wrapped material is erased, not just marked (KMIP State
# Destroyed = 5, Destroyed Compromised = 6); secure_delete zeroes freed space.
DESTROYED_STATES: Final = frozenset((5, 6))
_DUPLICATE: Final = "a key with this unique identifier exists"

Work = Callable[[sqlite3.Connection, Any], Any]


def _row(r: KeyRecord) -> tuple[object, ...]:
    return (
        r.uid, r.tenant, r.object_type, r.algorithm, r.length, r.state,
        r.l3_version, r.wrapped, r.attributes, r.created, int(r.synced), r.mac,
    )  # fmt: skip


def _record(row: Sequence[Any]) -> KeyRecord:
    return KeyRecord(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6],
        bytes(row[7]), bytes(row[8]), row[9], bool(row[10]), bytes(row[11]),
    )  # fmt: skip


def _is_unsealed(conn: sqlite3.Connection) -> Callable[[str], bool]:
    return lambda uid: conn.execute(_UNSEALED, (uid,)).fetchone() is not None


# -- operations (writer thread, inside the batch's transaction) ---------------------
def _put(conn: sqlite3.Connection, records: tuple[KeyRecord, ...]) -> None:
    conn.executemany(_INSERT, [_row(r) for r in records])


def _rewrite(
    conn: sqlite3.Connection,
    uid: str,
    change: Callable[[KeyRecord], KeyRecord | None],
    sealer: Sealer | None,
) -> int:
    """Check the stored row, apply ``change`` (None: leave it), store it with a
    fresh MAC; 0 if there is no such row."""
    row = conn.execute(_SELECT, (uid,)).fetchone()
    if row is None:
        return 0
    new = change(check(_record(row), sealer, _is_unsealed(conn)))
    if new is None:
        return 0
    new = seal(new, sealer)
    conn.execute(_REWRITE, (new.state, new.l3_version, new.wrapped, new.attributes, new.mac, uid))
    if sealer is not None:
        conn.execute("DELETE FROM unsealed WHERE uid = ?", (uid,))
    return 1


def _set_state(conn: sqlite3.Connection, payload: tuple[str, int, Sealer | None]) -> int:
    uid, state, sealer = payload
    erase = state in DESTROYED_STATES
    return _rewrite(
        conn, uid, lambda r: replace(r, state=state, wrapped=b"" if erase else r.wrapped), sealer
    )


def _set_attributes(conn: sqlite3.Connection, payload: tuple[str, bytes, Sealer | None]) -> int:
    uid, attrs, sealer = payload
    return _rewrite(conn, uid, lambda r: replace(r, attributes=attrs), sealer)


def _reinstate(conn: sqlite3.Connection, payload: tuple[KeyRecord, Sealer | None]) -> int:
    r, sealer = payload

    def back(old: KeyRecord) -> KeyRecord | None:
        if old.tenant != r.tenant:
            return None
        return replace(
            old, state=r.state, l3_version=r.l3_version, wrapped=r.wrapped, attributes=r.attributes
        )

    return _rewrite(conn, r.uid, back, sealer)


def _seal_legacy(conn: sqlite3.Connection, payload: tuple[str, Sealer]) -> int:
    uid, sealer = payload
    return _rewrite(conn, uid, lambda r: r, sealer)


def _mark_synced(conn: sqlite3.Connection, uids: tuple[str, ...]) -> int:
    return conn.executemany(
        "UPDATE keys SET synced=1 WHERE uid=? AND synced=0", [(u,) for u in uids]
    ).rowcount


def _apply_batch(conn: sqlite3.Connection, batch: list[Op[Work]]) -> None:
    """The batch in order, each run of puts as one executemany."""
    rows: list[tuple[object, ...]] = []
    for op in batch:
        if op.work is _put:
            rows.extend(_row(r) for r in op.payload)
            continue
        if rows:
            conn.executemany(_INSERT, rows)
            rows = []
        op.result = op.work(conn, op.payload)
    if rows:
        conn.executemany(_INSERT, rows)


# -- what a committed operation does to the cache (returns records written) --------
def _change(**fields: Any) -> Callable[[KeyRecord], KeyRecord]:
    return lambda record: replace(record, **fields)


def _cache_put(cache: RecordCache, records: tuple[KeyRecord, ...]) -> int:
    cache.add(records)
    return len(records)


def _cache_state(cache: RecordCache, payload: tuple[str, int, object]) -> int:
    uid, state, _ = payload
    if state in DESTROYED_STATES:
        cache.update((uid,), _change(state=state, wrapped=b""))
    else:
        cache.update((uid,), _change(state=state))
    return 0


def _cache_attributes(cache: RecordCache, payload: tuple[str, bytes, object]) -> int:
    cache.update(payload[:1], _change(attributes=payload[1]))
    return 0


def _cache_reinstate(cache: RecordCache, payload: tuple[KeyRecord, object]) -> int:
    r = payload[0]
    cache.update(
        (r.uid,),
        _change(state=r.state, l3_version=r.l3_version, wrapped=r.wrapped, attributes=r.attributes),
    )
    return 0


def _cache_synced(cache: RecordCache, uids: tuple[str, ...]) -> int:
    cache.update(uids, _change(synced=True))
    return 0


_CACHED: Final[Mapping[Work, Callable[[RecordCache, Any], int]]] = {
    _put: _cache_put,
    _set_state: _cache_state,
    _set_attributes: _cache_attributes,
    _reinstate: _cache_reinstate,
    _mark_synced: _cache_synced,
    _seal_legacy: lambda cache, payload: 0,  # the covered columns do not change
}


class Vault:
    """Wrapped L4 records in one SQLite file; see the module comment."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        cache_size: int,
        max_batch: int,
        sealer: Sealer | None = None,
    ) -> None:
        self.path = path
        self._sealer = sealer
        self._cache = RecordCache(cache_size)
        self._written = 0
        self._readers = Readers(path, "vault")
        self._writer: Writer[Work] = Writer(
            conn, name="vault", max_batch=max_batch, savepoint_each=False,
            apply_batch=_apply_batch, committed=self._committed, duplicate=_DUPLICATE,
        )  # fmt: skip
        self._submit = self._writer.submit

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        cache_size: int = 65536,
        max_batch: int = 4096,
        sealer: Sealer | None = None,
    ) -> Vault:
        """Open (creating and migrating as needed) the vault file at ``path``.

        ``sealer`` (the gateway's ``KeyRing.record_mac``) authenticates records
        (:mod:`krypton.vault.auth`); without one nothing is MAC'd or checked."""
        path = Path(path)
        conn = open_file(
            path, name="vault", migrate=migrate, pragmas=("fullfsync = ON", "secure_delete = ON")
        )
        return cls(path, conn, cache_size, max_batch, sealer)

    # -- counters --------------------------------------------------------------
    @property
    def commits(self) -> int:
        """Transactions committed by the writer (each one fsync of the WAL)."""
        return self._writer.commits

    @property
    def records_written(self) -> int:
        return self._written

    @property
    def largest_batch(self) -> int:
        return self._writer.largest_batch

    @property
    def cached(self) -> int:
        """How many records the read cache holds now (at most ``cache_size``)."""
        return len(self._cache)

    # -- writes (durable when they return) -------------------------------------
    def submit(self, work: Work, payload: Any) -> asyncio.Future[Any]:
        """Queue ``work(conn, payload)`` for the writer thread; the future is done
        once its transaction committed. Every write below is one of these. A
        ``work`` without an entry in the table of cache updates fails with
        StorageError (after its commit) instead of leaving the cache stale."""
        return self._submit(work, payload)

    def authentic(self, record: KeyRecord) -> KeyRecord:
        """``record``, received from the Core (``FetchKey``), if its record MAC is
        right; else RecordTampered (Cryptographic Failure), logged with the uid.
        No legacy exemption: the Core seals its legacy rows before serving them."""
        return check(record, self._sealer, lambda uid: False)

    async def put(self, record: KeyRecord) -> None:
        await self._submit(_put, (seal(record, self._sealer),))

    async def put_many(self, records: Iterable[KeyRecord]) -> None:
        """All of ``records`` in one transaction (all or none)."""
        batch = tuple(seal(r, self._sealer) for r in records)
        if batch:
            await self._submit(_put, batch)

    async def update_state(self, uid: str, state: int) -> bool:
        """Set a key's state; False if there is no such key."""
        return bool(await self._submit(_set_state, (uid, int(state), self._sealer)))

    async def update_attributes(self, uid: str, attributes: bytes) -> bool:
        """Replace a key's attribute blob; False if there is no such key."""
        return bool(await self._submit(_set_attributes, (uid, bytes(attributes), self._sealer)))

    async def reinstate(self, record: KeyRecord) -> bool:
        """Give a held key back its state, wrapped material and attributes (a Destroy
        the Core has undone: krypton.engine.undo); False if there is no such key."""
        return bool(await self._submit(_reinstate, (record, self._sealer)))

    async def mark_synced(self, uids: Iterable[str]) -> int:
        """Take records out of the outbox; how many were marked."""
        batch = tuple(uids)
        return int(await self._submit(_mark_synced, batch)) if batch else 0

    async def seal_legacy(self) -> int:
        """MAC the rows written before records were authenticated (schema v3)
        whose L3 version is held; how many. The others stay listed."""
        sealer = self._sealer
        if sealer is None:
            return 0
        with translated("vault read"):
            uids = [r[0] for r in self._readers.get().execute("SELECT uid FROM unsealed")]
        done = 0
        for at in range(0, len(uids), 1024):  # queued together: the writer batches them
            chunk = uids[at : at + 1024]
            ops = [self._submit(_seal_legacy, (uid, sealer)) for uid in chunk]
            results = await asyncio.gather(*ops, return_exceptions=True)
            for uid, result in zip(chunk, results, strict=True):
                if isinstance(result, KryptonError):
                    log.warning("vault record %r not sealed yet: %s", uid, result)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    done += int(result)
        return done

    # -- reads (caller's thread) -----------------------------------------------
    def get(self, uid: str) -> KeyRecord | None:
        record = self._cache.get(uid)
        if record is not None:
            return record
        generation = self._cache.generation
        with translated("vault read"):
            row = self._readers.get().execute(_SELECT, (uid,)).fetchone()
        if row is None:
            return None
        record = self._checked(row)
        self._cache.fill(record, generation)
        return record

    def outbox(self, limit: int) -> list[KeyRecord]:
        """Up to ``limit`` records the Core has not acknowledged, oldest first;
        records that fail authentication (or cannot be checked yet) are left out."""
        with translated("vault outbox read"):
            rows = self._readers.get().execute(_OUTBOX, (limit,)).fetchall()
        out: list[KeyRecord] = []
        for row in rows:
            try:
                out.append(self._checked(row))
            except KryptonError:
                continue
        return out

    def _checked(self, row: Sequence[Any]) -> KeyRecord:
        conn = self._readers.get()
        return check(_record(row), self._sealer, _is_unsealed(conn))

    # -- shutdown --------------------------------------------------------------
    def close(self) -> None:
        """Finish every queued write, stop the writer and close the file."""
        if not self._writer.stop():
            return
        self._writer.join()
        self._cache.clear()
        self._readers.close()

    # -- after a commit (writer thread, before the callers wake) ---------------
    def _committed(self, ops: list[Op[Work]]) -> None:
        cache = self._cache
        written = 0
        for op in ops:
            written += _CACHED[op.work](cache, op.payload)
        self._written += written
