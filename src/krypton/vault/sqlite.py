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

Changes the Core committed (``follow_*``) are never dropped: one the vault
cannot store is held in memory, overlaid on reads and retried
(:mod:`krypton.vault.held`). An outbox row that does not decode is
quarantined (``keys.synced = 2`` and a row in ``quarantine``) instead of
stopping the outbox.

Reads (``get``, ``outbox``) run on the caller's thread, on a per-thread
read-only connection, which sees the last committed state (WAL readers do not
block the writer). ``get`` consults an LRU cache of wrapped records first;
see :mod:`krypton.vault.cache` for how it stays coherent with the writer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from krypton.errors import StorageError
from krypton.model.record import KeyRecord
from krypton.storage import Op, Readers, Writer, open_file, translated
from krypton.vault.cache import RecordCache
from krypton.vault.held import BadRow, Effect, Held, decode
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
    " wrapped, attributes, created, synced, rowid FROM keys WHERE synced = 0"
    " ORDER BY rowid LIMIT ?"
)
_QUARANTINED = "SELECT row, uid, reason, at FROM quarantine ORDER BY row"
_QUARANTINE_ROW = "UPDATE keys SET synced = 2 WHERE rowid = ?"
_QUARANTINE_NOTE = "INSERT OR REPLACE INTO quarantine (row, uid, reason, at) VALUES (?, ?, ?, ?)"
RETRY_FIRST: Final = 0.05  # seconds before a held change is tried again, doubling
RETRY_CAP: Final = 2.0

# A destroyed key's wrapped material is erased, not just marked (KMIP State
# Destroyed = 5, Destroyed Compromised = 6); secure_delete zeroes freed space.
DESTROYED_STATES: Final = frozenset((5, 6))
_ERASE: Final = "UPDATE keys SET state=?, wrapped=X'' WHERE uid=?"
_RESTORE_SQL: Final = (
    "UPDATE keys SET state=?, l3_version=?, wrapped=?, attributes=? WHERE uid=? AND tenant=?"
)
_DUPLICATE: Final = "a key with this unique identifier exists"

Work = Callable[[sqlite3.Connection, Any], Any]
log = logging.getLogger("krypton.vault")


def _row(r: KeyRecord) -> tuple[object, ...]:
    return (
        r.uid, r.tenant, r.object_type, r.algorithm, r.length, r.state,
        r.l3_version, r.wrapped, r.attributes, r.created, int(r.synced),
    )  # fmt: skip


def _record(row: Sequence[Any]) -> KeyRecord:
    try:
        return decode(row[:11])
    except BadRow as bad:
        raise StorageError(f"vault record {row[0]!r} is unreadable: {bad}") from None


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An outbox row that did not decode, taken out of the outbox."""

    row: int
    uid: str
    reason: str
    at: int


# -- operations (writer thread, inside the batch's transaction) ---------------------
def _put(conn: sqlite3.Connection, records: tuple[KeyRecord, ...]) -> None:
    conn.executemany(_INSERT, [_row(r) for r in records])


def _set_state(conn: sqlite3.Connection, payload: tuple[str, int]) -> int:
    uid, state = payload
    sql = _ERASE if state in DESTROYED_STATES else "UPDATE keys SET state=? WHERE uid=?"
    return conn.execute(sql, (state, uid)).rowcount


def _set_attributes(conn: sqlite3.Connection, payload: tuple[str, bytes]) -> int:
    uid, attrs = payload
    return conn.execute("UPDATE keys SET attributes=? WHERE uid=?", (attrs, uid)).rowcount


def _reinstate(conn: sqlite3.Connection, r: KeyRecord) -> int:
    return conn.execute(
        _RESTORE_SQL, (r.state, r.l3_version, r.wrapped, r.attributes, r.uid, r.tenant)
    ).rowcount


def _mark_synced(conn: sqlite3.Connection, uids: tuple[str, ...]) -> int:
    return conn.executemany(
        "UPDATE keys SET synced=1 WHERE uid=? AND synced=0", [(u,) for u in uids]
    ).rowcount


def _quarantine(conn: sqlite3.Connection, bad: tuple[Quarantined, ...]) -> int:
    conn.executemany(_QUARANTINE_ROW, [(q.row,) for q in bad])
    conn.executemany(_QUARANTINE_NOTE, [(q.row, q.uid, q.reason, q.at) for q in bad])
    return len(bad)


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


# What a change of one key does to its record: (uid, effect). The cache applies
# it after the commit; Held overlays it on reads while it is not stored.
def _state_effect(payload: tuple[str, int]) -> tuple[str, Effect]:
    uid, state = payload
    if state in DESTROYED_STATES:
        return uid, _change(state=state, wrapped=b"")
    return uid, _change(state=state)


def _attributes_effect(payload: tuple[str, bytes]) -> tuple[str, Effect]:
    return payload[0], _change(attributes=payload[1])


def _reinstate_effect(r: KeyRecord) -> tuple[str, Effect]:
    fields = _change(
        state=r.state, l3_version=r.l3_version, wrapped=r.wrapped, attributes=r.attributes
    )
    return r.uid, fields


_EFFECTS: Final[Mapping[Work, Callable[[Any], tuple[str, Effect]]]] = {
    _set_state: _state_effect,
    _set_attributes: _attributes_effect,
    _reinstate: _reinstate_effect,
}


def _cache_effect(work: Work) -> Callable[[RecordCache, Any], int]:
    def apply(cache: RecordCache, payload: Any) -> int:
        uid, effect = _EFFECTS[work](payload)
        cache.update((uid,), effect)
        return 0

    return apply


def _cache_synced(cache: RecordCache, uids: tuple[str, ...]) -> int:
    cache.update(uids, _change(synced=True))
    return 0


_CACHED: Final[Mapping[Work, Callable[[RecordCache, Any], int]]] = {
    _put: _cache_put,
    _set_state: _cache_effect(_set_state),
    _set_attributes: _cache_effect(_set_attributes),
    _reinstate: _cache_effect(_reinstate),
    _mark_synced: _cache_synced,
    _quarantine: lambda cache, bad: 0,  # undecodable rows are never cached
}


class Vault:
    """Wrapped L4 records in one SQLite file; see the module comment."""

    def __init__(
        self, path: Path, conn: sqlite3.Connection, cache_size: int, max_batch: int,
        retry: tuple[float, float] = (RETRY_FIRST, RETRY_CAP),
    ) -> None:
        self.path = path
        self.retry = retry  # held changes: first delay, cap (seconds)
        self._cache = RecordCache(cache_size)
        self._written = 0
        self._readers = Readers(path, "vault")
        self._writer: Writer[Work] = Writer(
            conn, name="vault", max_batch=max_batch, savepoint_each=False,
            apply_batch=_apply_batch, committed=self._committed, duplicate=_DUPLICATE,
        )  # fmt: skip
        self._submit = self._writer.submit
        self._held = Held()
        self._retrier: asyncio.Task[None] | None = None
        self._quarantined = 0
        self._quarantining: set[int] = set()
        self._background: set[asyncio.Future[Any]] = set()

    @classmethod
    def open(cls, path: str | Path, *, cache_size: int = 65536, max_batch: int = 4096) -> Vault:
        """Open (creating and migrating as needed) the vault file at ``path``."""
        path = Path(path)
        conn = open_file(
            path, name="vault", migrate=migrate, pragmas=("fullfsync = ON", "secure_delete = ON")
        )
        return cls(path, conn, cache_size, max_batch)

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

    @property
    def held(self) -> int:
        """Keys with a change from the Core the vault could not store yet."""
        return len(self._held)

    @property
    def quarantined(self) -> int:
        """Outbox rows this vault object took out of the outbox as undecodable."""
        return self._quarantined

    # -- writes (durable when they return) -------------------------------------
    def submit(self, work: Work, payload: Any) -> asyncio.Future[Any]:
        """Queue ``work(conn, payload)`` for the writer thread; the future is done
        once its transaction committed. Every write below is one of these. A
        ``work`` without an entry in the table of cache updates fails with
        StorageError (after its commit) instead of leaving the cache stale."""
        return self._submit(work, payload)

    async def put(self, record: KeyRecord) -> None:
        await self._submit(_put, (record,))

    async def put_many(self, records: Iterable[KeyRecord]) -> None:
        """All of ``records`` in one transaction (all or none)."""
        batch = tuple(records)
        if batch:
            await self._submit(_put, batch)

    async def update_state(self, uid: str, state: int) -> bool:
        """Set a key's state; False if there is no such key."""
        return bool(await self._submit(_set_state, (uid, int(state))))

    async def update_attributes(self, uid: str, attributes: bytes) -> bool:
        """Replace a key's attribute blob; False if there is no such key."""
        return bool(await self._submit(_set_attributes, (uid, bytes(attributes))))

    async def reinstate(self, record: KeyRecord) -> bool:
        """Give a held key back its state, wrapped material and attributes (a Destroy
        the Core has undone: krypton.engine.undo); False if there is no such key."""
        return bool(await self._submit(_reinstate, record))

    # -- changes the Core committed: never dropped --------------------------------
    async def follow_state(self, uid: str, state: int) -> bool:
        """Store a state change the Core made (see :meth:`follow`)."""
        return await self._follow(_set_state, (uid, int(state)))

    async def follow_attributes(self, uid: str, attributes: bytes) -> bool:
        return await self._follow(_set_attributes, (uid, bytes(attributes)))

    async def follow_reinstate(self, record: KeyRecord) -> bool:
        return await self._follow(_reinstate, record)

    async def _follow(self, work: Work, payload: Any) -> bool:
        """A change the Core has committed cannot be refused here: True once
        stored; False if the vault could not store it (disk full, I/O error).
        Then it is held in memory, every read of the key sees it, and it is
        retried (backing off) until stored (krypton.vault.held)."""
        uid, effect = _EFFECTS[work](payload)
        if uid not in self._held:
            try:
                await self._submit(work, payload)
                return True
            except StorageError as exc:
                log.warning(
                    "vault: a change of %s from the Core is not stored (%s); held in"
                    " memory and retried, the key is answered from memory until then",
                    uid, exc.message,
                )
        self._held.add(uid, (work, payload), effect)
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.create_task(self._retry_held(), name="vault-retry")
        return False

    async def _retry_held(self) -> None:
        first, cap = self.retry
        delay = first
        while self._held:
            await asyncio.sleep(delay)
            try:
                for uid in self._held.uids():
                    while (change := self._held.first(uid)) is not None:
                        await self._submit(*change)
                        self._held.stored(uid)
                        log.info("vault: the held change of %s is stored now", uid)
                delay = first
            except StorageError as exc:
                delay = min(max(delay, 0.001) * 2, cap)
                log.debug("vault: held changes still not stored: %s", exc.message)

    async def mark_synced(self, uids: Iterable[str]) -> int:
        """Take records out of the outbox; how many were marked."""
        batch = tuple(uids)
        return int(await self._submit(_mark_synced, batch)) if batch else 0

    # -- reads (caller's thread) -----------------------------------------------
    def get(self, uid: str) -> KeyRecord | None:
        """The key's record, with any change still held in memory applied."""
        record = self._cache.get(uid)
        if record is None:
            generation = self._cache.generation
            with translated("vault read"):
                row = self._readers.get().execute(_SELECT, (uid,)).fetchone()
            if row is None:
                return None
            record = _record(row)
            self._cache.fill(record, generation)
        if self._held and uid in self._held:
            return self._held.overlay(record)
        return record

    def outbox(self, limit: int) -> list[KeyRecord]:
        """Up to ``limit`` records the Core has not acknowledged, oldest first.
        A row that does not decode is logged with its uid, counted and
        quarantined (out of the outbox, listed by :func:`quarantined`); the
        others are returned. Call it on the event loop."""
        with translated("vault outbox read"):
            rows = self._readers.get().execute(_OUTBOX, (limit,)).fetchall()
        records: list[KeyRecord] = []
        bad: list[Quarantined] = []
        for row in rows:
            try:
                records.append(decode(row[:11]))
            except BadRow as exc:
                if row[11] not in self._quarantining:
                    bad.append(Quarantined(row[11], str(row[0]), str(exc), int(time.time())))
        if bad:
            self._quarantine_rows(bad)
        return records

    def _quarantine_rows(self, bad: list[Quarantined]) -> None:
        for q in bad:
            log.error("vault: outbox row of key %r does not decode (%s): quarantined, the"
                      " other keys keep syncing", q.uid, q.reason)
        self._quarantined += len(bad)
        rows = {q.row for q in bad}
        self._quarantining |= rows
        done = self._submit(_quarantine, tuple(bad))
        self._background.add(done)

        def finished(f: asyncio.Future[Any]) -> None:
            self._background.discard(f)
            if f.cancelled() or f.exception() is not None:
                self._quarantining -= rows  # not stored: found and tried again

        done.add_done_callback(finished)

    # -- shutdown --------------------------------------------------------------
    def close(self) -> None:
        """Finish every queued write, stop the writer and close the file."""
        if self._retrier is not None:
            self._retrier.cancel()
        if self._held:
            log.warning("vault: closed with changes of %d key(s) not stored", len(self._held))
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


def quarantined(path: str | Path) -> tuple[int, list[Quarantined]]:
    """How many keys wait in the outbox of the vault file at ``path``, and its
    quarantined rows; read-only, safe while the gateway runs."""
    uri = f"file:{Path(path)}?mode=ro"
    with translated("vault outbox report"):
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            waiting = int(conn.execute("SELECT count(*) FROM keys WHERE synced = 0").fetchone()[0])
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            rows = conn.execute(_QUARANTINED).fetchall() if "quarantine" in tables else []
        finally:
            conn.close()
    return waiting, [Quarantined(int(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]
