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

The change-feed cursor (the sequence number of the last Core change applied
here) is written by :meth:`Vault.apply_change` in the same transaction as the
change it follows, so after a crash the gateway resumes the feed exactly
where its vault is.

Changes the Core committed (``apply_change``, ``reinstate``) are never
dropped: one the vault cannot store (disk full, I/O error) is held in memory,
overlaid on reads and retried (:mod:`krypton.vault.held`); while anything is
held the feed cursor stays where the stored changes put it, so a restart
replays what memory held. An outbox row that does not decode is quarantined
(``keys.synced = 2`` and a row in ``quarantine``) instead of stopping the
outbox.

Reads (``get``, ``outbox``, ``held``, ``cursor``) run on the caller's thread, on a per-thread
read-only connection, which sees the last committed state (WAL readers do not
block the writer). ``get`` consults an LRU cache of wrapped records first;
see :mod:`krypton.vault.cache` for how it stays coherent with the writer.
The event loop never reads the file for a key: ``lookup`` is the cache alone
(no I/O), and ``read_through`` does a miss's read on one of a few reader
threads (each with its own connection), misses that wait together in one
query (:mod:`krypton.vault._batched`), and fills the cache. ``warm`` loads
the most recently written records into the cache's free room on a background
thread after a start, most recent first, a page at a time.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from krypton.errors import KeyUnavailable, KryptonError, StorageError
from krypton.metrics.meter import Histogram
from krypton.model.record import KeyRecord
from krypton.storage import Op, Readers, Writer, open_file, translated
from krypton.vault._batched import BatchedReads
from krypton.vault.auth import Sealer, check, seal
from krypton.vault.cache import RecordCache, ended
from krypton.vault.held import BadRow, Change, Effect, Held, decode, retry_held
from krypton.vault.schema import migrate
from krypton.vault.sealed_l3 import SealedRows, drop_rows, put_row

_INSERT = (
    "INSERT INTO keys (uid, tenant, object_type, algorithm, length, state, l3_version,"
    " wrapped, attributes, created, synced, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS = (
    "SELECT uid, tenant, object_type, algorithm, length, state, l3_version,"
    " wrapped, attributes, created, synced, mac FROM keys"
)
_SELECT = _COLUMNS + " WHERE uid = ?"
# The warm-up's pages: the newest rows first (rowid order is insertion order).
_NEWEST_BEFORE = (
    "SELECT uid, tenant, object_type, algorithm, length, state, l3_version,"
    " wrapped, attributes, created, synced, mac, rowid FROM keys WHERE rowid < ?"
    " ORDER BY rowid DESC LIMIT ?"
)
WARM_PAGE: Final = 256  # rows the warm-up reads at a time
READERS: Final = 2  # reader threads (batches in flight) for read-through misses
_OUTBOX_ROWS = (
    "SELECT uid, tenant, object_type, algorithm, length, state, l3_version,"
    " wrapped, attributes, created, synced, mac, rowid FROM keys WHERE synced = 0"
)
_OUTBOX_STATS = "SELECT count(*), min(created) FROM keys WHERE synced = 0"
# Past a position (a rowid), oldest first: keys_outbox for all tenants,
# keys_outbox_tenant (tenant, rowid) for one, so neither walks other rows.
_OUTBOX = _OUTBOX_ROWS + " AND rowid > ? ORDER BY rowid LIMIT ?"
_OUTBOX_OF = _OUTBOX_ROWS + " AND tenant = ? AND rowid > ? ORDER BY rowid LIMIT ?"
_QUARANTINED = "SELECT row, uid, reason, at FROM quarantine ORDER BY row"
_QUARANTINE_ROW = "UPDATE keys SET synced = 2 WHERE rowid = ?"
_QUARANTINE_NOTE = "INSERT OR REPLACE INTO quarantine (row, uid, reason, at) VALUES (?, ?, ?, ?)"
RETRY_FIRST: Final = 0.05  # seconds before a held change is tried again, doubling
RETRY_CAP: Final = 2.0
_UNSEALED = "SELECT 1 FROM unsealed WHERE uid = ?"
_REWRITE: Final = (
    "UPDATE keys SET state=?, l3_version=?, wrapped=?, attributes=?, mac=? WHERE uid=?"
)

_HELD = (
    "SELECT uid FROM keys WHERE tenant = ? AND uid > ? AND synced = 1 AND state NOT IN (5, 6)"
    " ORDER BY uid LIMIT ?"
)

_LIVE = "tenant = ? AND synced = 0 AND length(wrapped) > 0 AND state NOT IN (5, 6)"
_VERSIONS = f"SELECT DISTINCT l3_version FROM keys WHERE {_LIVE}"  # noqa: S608
_UNDER = (
    f"SELECT uid FROM keys WHERE {_LIVE} AND l3_version = ? AND uid > ?"  # noqa: S608
    " ORDER BY uid LIMIT ?"
)

# A destroyed key's wrapped material is erased, not just marked (KMIP State
# Destroyed = 5, Destroyed Compromised = 6); secure_delete zeroes freed space.
DESTROYED_STATES: Final = frozenset((5, 6))
_DUPLICATE: Final = "a key with this unique identifier exists"

Work = Callable[[sqlite3.Connection, Any], Any]
log = logging.getLogger("krypton.vault")


def _row(r: KeyRecord) -> tuple[object, ...]:
    return (
        r.uid, r.tenant, r.object_type, r.algorithm, r.length, r.state,
        r.l3_version, r.wrapped, r.attributes, r.created, int(r.synced), r.mac,
    )  # fmt: skip


_BLOBS: Final = (bytes, bytearray, memoryview)


def _decoded(row: Sequence[Any]) -> KeyRecord:
    """A row's record (:class:`BadRow` if a column does not decode), with its MAC."""
    mac = row[11]
    if type(mac) is not bytes:  # as SQLite gives a blob; else checked and copied
        if not isinstance(mac, _BLOBS):
            raise BadRow("column mac: not a blob")
        mac = bytes(mac)
    return decode(row[:11], mac)  # one record made per row


def _record(row: Sequence[Any]) -> KeyRecord:
    try:
        return _decoded(row)
    except BadRow as bad:
        raise StorageError(f"vault record {row[0]!r} is unreadable: {bad}") from None


@dataclass(frozen=True, slots=True)
class OutboxPage:
    """Records waiting for the Core, oldest first, read past a position.

    ``position`` is where the next read goes on from (past every row read,
    sendable or not); ``more`` is False once a read found fewer rows than it
    asked for: nothing was waiting past this page when it was read."""

    records: list[KeyRecord]
    position: int
    more: bool


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An outbox row that did not decode, taken out of the outbox."""

    row: int
    uid: str
    reason: str
    at: int


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


def _reinstate(conn: sqlite3.Connection, payload: tuple[KeyRecord, int, Sealer | None]) -> int:
    r, seq, sealer = payload
    _set_cursor(conn, seq)

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


def _moved(old_version: int, old_wrapped: bytes, version: int, wrapped: bytes
           ) -> Callable[[KeyRecord], KeyRecord | None]:
    """A re-wrap as a compare-and-set: only a record still as it was read moves."""
    def move(r: KeyRecord) -> KeyRecord | None:
        if r.l3_version != old_version or r.wrapped != old_wrapped:
            return None
        return replace(r, l3_version=version, wrapped=wrapped)

    return move


def _rewrap(conn: sqlite3.Connection, payload: tuple[str, int, bytes, int, bytes, Sealer | None]
            ) -> int:
    uid, old_version, old_wrapped, version, wrapped, sealer = payload
    return _rewrite(conn, uid, _moved(old_version, old_wrapped, version, wrapped), sealer)


_ADOPT: Final = (
    "UPDATE keys SET object_type=?, algorithm=?, length=?, state=?, l3_version=?, wrapped=?,"
    " attributes=?, mac=?, synced=1 WHERE uid=? AND tenant=?"
)


def _adopt(conn: sqlite3.Connection, payload: tuple[KeyRecord, int, Sealer | None]) -> int:
    """Every covered column from the Core's record (checked by ``Vault.authentic``,
    MAC included): nothing of the row it replaces is kept, so the row need not be
    checked first (its L3 version may be gone)."""
    r, seq, _ = payload
    _set_cursor(conn, seq)
    n = conn.execute(_ADOPT, (r.object_type, r.algorithm, r.length, r.state, r.l3_version,
                              r.wrapped, r.attributes, r.mac, r.uid, r.tenant)).rowcount
    conn.execute("DELETE FROM unsealed WHERE uid = ?", (r.uid,))
    return int(n)


def _set_cursor(conn: sqlite3.Connection, seq: int) -> int:
    if seq > 0:
        conn.execute("UPDATE feed_cursor SET seq = ?", (seq,))
    return 0


def _apply_change(
    conn: sqlite3.Connection, payload: tuple[str, int | None, bytes | None, int, Sealer | None]
) -> int:
    uid, state, attrs, seq, sealer = payload
    _set_cursor(conn, seq)
    if state is None and attrs is None:
        return 0

    def change(r: KeyRecord) -> KeyRecord:
        if attrs is not None:
            r = replace(r, attributes=attrs)
        if state is not None:
            r = replace(r, state=state, wrapped=b"" if state in DESTROYED_STATES else r.wrapped)
        return r

    return _rewrite(conn, uid, change, sealer)


def _quarantine(conn: sqlite3.Connection, bad: tuple[Quarantined, ...]) -> int:
    conn.executemany(_QUARANTINE_ROW, [(q.row,) for q in bad])
    conn.executemany(_QUARANTINE_NOTE, [(q.row, q.uid, q.reason, q.at) for q in bad])
    return len(bad)


def _quarantine_uids(conn: sqlite3.Connection,
                     payload: tuple[tuple[tuple[str, str], ...], int]) -> int:
    refused, at = payload
    n = 0
    for uid, reason in refused:
        row = conn.execute("SELECT rowid FROM keys WHERE uid = ? AND synced = 0",
                           (uid,)).fetchone()
        if row is not None:
            n += _quarantine(conn, (Quarantined(int(row[0]), uid, reason, at),))
    return n


def _gone(version: int) -> str:
    return (f"wrapped under L3 version {version}, which the Krypton Core no longer serves"
            " (revoked or destroyed)")


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


# What a change of one key does to its record: (uid, effect). The cache applies
# it after the commit; Held overlays it on reads while it is not stored.
def _state_of(state: int) -> Effect:
    if state in DESTROYED_STATES:
        return _change(state=state, wrapped=b"")
    return _change(state=state)


def _state_effect(payload: tuple[str, int, object]) -> tuple[str, Effect]:
    return payload[0], _state_of(payload[1])


def _attributes_effect(payload: tuple[str, bytes, object]) -> tuple[str, Effect]:
    return payload[0], _change(attributes=payload[1])


def _reinstate_effect(payload: tuple[KeyRecord, int, object]) -> tuple[str, Effect]:
    r = payload[0]
    return r.uid, _change(
        state=r.state, l3_version=r.l3_version, wrapped=r.wrapped, attributes=r.attributes
    )


def _rewrap_effect(payload: tuple[str, int, bytes, int, bytes, object]) -> tuple[str, Effect]:
    uid, old_version, old_wrapped, version, wrapped, _ = payload
    move = _moved(old_version, old_wrapped, version, wrapped)
    return uid, lambda record: move(record) or record


def _adopt_effect(payload: tuple[KeyRecord, int, object]) -> tuple[str, Effect]:
    r = payload[0]
    return r.uid, _change(
        object_type=r.object_type, algorithm=r.algorithm, length=r.length, state=r.state,
        l3_version=r.l3_version, wrapped=r.wrapped, attributes=r.attributes, mac=r.mac,
        synced=True,
    )


def _apply_effect(
    payload: tuple[str, int | None, bytes | None, int, object],
) -> tuple[str, Effect]:
    uid, state, attrs, _, _ = payload
    to_state = None if state is None else _state_of(state)

    def effect(record: KeyRecord) -> KeyRecord:
        if attrs is not None:
            record = replace(record, attributes=attrs)
        return record if to_state is None else to_state(record)

    return uid, effect


_EFFECTS: Final[Mapping[Work, Callable[[Any], tuple[str, Effect]]]] = {
    _set_state: _state_effect,
    _set_attributes: _attributes_effect,
    _reinstate: _reinstate_effect,
    _apply_change: _apply_effect,
    _rewrap: _rewrap_effect,
    _adopt: _adopt_effect,
}


def _cache_effect(work: Work) -> Callable[[RecordCache, Any], int]:
    def apply(cache: RecordCache, payload: Any) -> int:
        uid, effect = _EFFECTS[work](payload)
        cache.update((uid,), effect)
        return 0

    return apply


def _synced(r: KeyRecord) -> KeyRecord:
    """``replace(r, synced=True)``, made directly: a drain marks every key it
    sends (``dataclasses.replace`` cost four times as much)."""
    return KeyRecord(r.uid, r.tenant, r.object_type, r.algorithm, r.length, r.state,
                     r.l3_version, r.wrapped, r.attributes, r.created, True, r.mac)


def _cache_synced(cache: RecordCache, uids: tuple[str, ...]) -> int:
    cache.update(uids, _synced, reweigh=False)  # the outbox flag weighs nothing
    return 0


def _cache_refused(cache: RecordCache, payload: tuple[tuple[tuple[str, str], ...], int]) -> int:
    """Out of the outbox: never offered again, not even before a delegation."""
    cache.update(tuple(uid for uid, _ in payload[0]), _change(synced=True))
    return 0


def _cache_nothing(cache: RecordCache, payload: object) -> int:
    return 0


_CACHED: Final[Mapping[Work, Callable[[RecordCache, Any], int]]] = {
    _apply_change: _cache_effect(_apply_change),
    _set_cursor: _cache_nothing,
    _put: _cache_put,
    _set_state: _cache_effect(_set_state),
    _set_attributes: _cache_effect(_set_attributes),
    _reinstate: _cache_effect(_reinstate),
    _rewrap: _cache_effect(_rewrap),
    _adopt: _cache_effect(_adopt),
    _mark_synced: _cache_synced,
    _seal_legacy: _cache_nothing,  # the covered columns do not change
    _quarantine: _cache_nothing,  # undecodable rows are never cached
    _quarantine_uids: _cache_refused,
    put_row: _cache_nothing,  # sealed L3 copies (krypton.vault.sealed_l3): no records
    drop_rows: _cache_nothing,
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
        *,
        retry: tuple[float, float] = (RETRY_FIRST, RETRY_CAP),
        cache_bytes: int | None = None,
        readers: int = READERS,
    ) -> None:
        self.path = path
        self._sealer = sealer
        self.retry = retry  # held changes: first delay, cap (seconds)
        self._held = Held()
        self._retrier: asyncio.Task[None] | None = None
        self._cursor_due = 0  # the feed position held changes still owe the cursor
        self._quarantined = 0
        self._quarantining: set[int] = set()
        self._background: set[asyncio.Future[Any]] = set()
        self._cache = RecordCache(cache_size, cache_bytes)
        self._written = 0
        self._readers = Readers(path, "vault")
        self._read_pool = ThreadPoolExecutor(readers, thread_name_prefix="vault-read")
        self._batched = BatchedReads(self._load_many, self._read_pool, parallel=readers)
        self._warmer: threading.Thread | None = None
        self._stop_warming = threading.Event()
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
        retry: tuple[float, float] = (RETRY_FIRST, RETRY_CAP),
        cache_bytes: int | None = None,
        readers: int = READERS,
    ) -> Vault:
        """Open (creating and migrating as needed) the vault file at ``path``.

        ``sealer`` (the gateway's ``KeyRing.record_mac``) authenticates records
        (:mod:`krypton.vault.auth`); without one nothing is MAC'd or checked."""
        path = Path(path)
        conn = open_file(
            path, name="vault", migrate=migrate, pragmas=("fullfsync = ON", "secure_delete = ON")
        )
        return cls(path, conn, cache_size, max_batch, sealer, retry=retry,
                   cache_bytes=cache_bytes, readers=readers)  # fmt: skip

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
    def cached_bytes(self) -> int:
        """The memory the cached records are charged for (:func:`krypton.vault.cache.weight`)."""
        return self._cache.size_bytes

    @property
    def pending_changes(self) -> int:
        """Keys with a change from the Core the vault could not store yet."""
        return len(self._held)

    @property
    def quarantined(self) -> int:
        """Outbox rows this vault object took out of the outbox as undecodable."""
        return self._quarantined

    @property
    def commit_stats(self) -> tuple[Histogram, Histogram]:
        """Each commit's seconds and operations (read them as copies: the writer
        thread updates them)."""
        return self._writer.commit_seconds, self._writer.batch_sizes

    def unwritable(self) -> str | None:
        """Why the vault cannot take writes now, or None (:meth:`Writer.unwritable`)."""
        return self._writer.unwritable()

    def outbox_stats(self) -> tuple[int, int | None]:
        """How many keys wait for the Core, and when the oldest was made (seconds
        since the epoch; None when none waits). Any thread."""
        with translated("vault outbox read"):
            row = self._readers.get().execute(_OUTBOX_STATS).fetchone()
        return int(row[0]), (None if row[1] is None else int(row[1]))

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

    async def reinstate(self, record: KeyRecord, *, seq: int = 0) -> bool:
        """Give a held key back its state, wrapped material and attributes (a Destroy
        the Core has undone: krypton.engine.undo); False if there is no such key.
        A ``seq`` > 0 becomes the feed cursor in the same transaction."""
        return await self._follow(_reinstate, (record, int(seq), self._sealer), int(seq))

    async def apply_change(
        self, uid: str, *, state: int | None = None, attributes: bytes | None = None,
        seq: int = 0,
    ) -> bool:
        """One change from the Core, in one transaction: the key's new attributes
        and state (a destroyed state erases its material) and, if ``seq`` > 0,
        the feed cursor. False if there is no such key (the cursor moves anyway)
        or if the vault could not store it: then the change is held in memory,
        every read of the key sees it, and it is retried until stored."""
        payload = (uid, None if state is None else int(state),
                   None if attributes is None else bytes(attributes), int(seq), self._sealer)
        return await self._follow(_apply_change, payload, int(seq))

    async def adopt(self, record: KeyRecord, *, seq: int = 0) -> bool:
        """Take the Core's record of a held key whole (material, L3 version, state,
        attributes, MAC), e.g. one the Core re-wrapped while this copy's L3 version
        went away; ``record`` must have passed :meth:`authentic`. A change the Core
        committed: held and retried if it cannot be stored (see :meth:`apply_change`)."""
        return await self._follow(_adopt, (record, int(seq), None), int(seq))

    async def rewrap(self, record: KeyRecord, version: int, wrapped: bytes) -> bool:
        """Store ``record`` (as read) re-wrapped under L3 ``version``, with a fresh MAC,
        if it has not changed since it was read; False if it has (or is gone)."""
        payload = (record.uid, record.l3_version, record.wrapped, int(version), bytes(wrapped),
                   self._sealer)
        return bool(await self._submit(_rewrap, payload))

    async def set_cursor(self, seq: int) -> None:
        """Record that every Core change up to ``seq`` is applied here."""
        if self._held:
            self._cursor_due = max(self._cursor_due, int(seq))
            return
        await self._submit(_set_cursor, int(seq))

    # -- changes the Core committed: never dropped --------------------------------
    async def _follow(self, work: Work, payload: tuple[Any, ...], seq: int) -> bool:
        """Store a change the Core has committed: True once stored, False if
        there is no such key or the vault could not store it (disk full, I/O
        error). Then it is held in memory, every read of the key sees it, and
        it is retried (backing off) until stored. While anything is held the
        cursor does not move: a restart replays from where the disk is."""
        uid, effect = _EFFECTS[work](payload)
        if not self._held:
            try:
                return bool(await self._submit(work, payload))
            except StorageError as exc:
                log.warning(
                    "vault: a change of %s from the Core is not stored (%s); held in"
                    " memory and retried, the key is answered from memory until then",
                    uid, exc.message,
                )  # fmt: skip
        self._cursor_due = max(self._cursor_due, seq)
        self._held.add(uid, (work, _without_cursor(work, payload)), effect)
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.create_task(self._retry_held(), name="vault-retry")
        return False

    async def _retry_held(self) -> None:
        async def store(uid: str, change: Change) -> None:
            await self._submit(*change)

        async def settle() -> None:
            if self._cursor_due:
                await self._submit(_set_cursor, self._cursor_due)
                self._cursor_due = 0

        await retry_held(self._held, store, settle, self.retry)

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
        """The key's record, with any change still held in memory applied (a
        miss reads the file on the caller's thread: not for the event loop)."""
        return self._overlaid(uid, self._load(uid))

    def lookup(self, uid: str) -> KeyRecord | None:
        """The key's record if the cache holds it, else None; never any I/O."""
        record = self._cache.get(uid)  # (inline: the hot path)
        if record is not None and self._held and uid in self._held:
            return self._held.overlay(record)
        return record

    async def read_through(self, uid: str) -> KeyRecord | None:
        """Like :meth:`get`, a miss read on a reader thread (the loop does not wait
        on disk), in a batch with the other misses waiting (:mod:`krypton.vault._batched`)."""
        record = self._cache.get(uid)
        if record is None:
            record = await self._batched.read(uid)
        return self._overlaid(uid, record)

    def _load_many(self, uids: Sequence[str]) -> dict[str, KeyRecord | KryptonError]:
        """The stored records of ``uids`` (reader thread; one query), cached."""
        generation = self._cache.generation
        marks = ",".join("?" * len(uids))
        with translated("vault read"):
            rows = self._readers.get().execute(
                f"{_COLUMNS} WHERE uid IN ({marks})", tuple(uids)
            ).fetchall()  # fmt: skip
        found: dict[str, KeyRecord | KryptonError] = {}
        for row in rows:
            try:
                record = self._checked(_record(row))
            except KryptonError as exc:
                found[row[0]] = exc
                continue
            self._cache.fill(record, generation)
            found[record.uid] = record
        return found

    def _overlaid(self, uid: str, record: KeyRecord | None) -> KeyRecord | None:
        if record is not None and self._held and uid in self._held:
            return self._held.overlay(record)
        return record

    def _load(self, uid: str) -> KeyRecord | None:
        """The stored record from the cache, else from the file (and cached)."""
        record = self._cache.get(uid)
        if record is None:
            generation = self._cache.generation
            with translated("vault read"):
                row = self._readers.get().execute(_SELECT, (uid,)).fetchone()
            if row is None:
                return None
            record = self._checked(_record(row))
            self._cache.fill(record, generation)
        return record

    def warm(self) -> None:
        """Start filling the cache's free room with the newest records, on a
        background thread (returns at once; once per vault)."""
        if self._warmer is not None:
            return
        self._warmer = threading.Thread(target=self._warm, name="vault-warm", daemon=True)
        self._warmer.start()

    def warmed(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the warm-up to end: True if it has
        (or never started)."""
        return ended(self._warmer, timeout)

    def _warm(self) -> None:
        before = 1 << 62
        unavailable: set[tuple[str, int]] = set()  # (tenant, L3 version) not held: skipped
        tries, began = 0, time.monotonic()
        try:
            conn = self._readers.get()
            while not self._stop_warming.is_set():
                generation = self._cache.generation
                rows = conn.execute(_NEWEST_BEFORE, (before, WARM_PAGE)).fetchall()
                if not rows:
                    break
                records = [r for r in (self._warm_one(row, unavailable) for row in rows) if r]
                filled = self._cache.warm(records, generation)
                tries += 1
                if filled is None and tries < 3:
                    continue  # a change raced the page: read it again (then skip it)
                if filled is False:
                    break
                before, tries = rows[-1][12], 0
                time.sleep(0)  # the event loop's turn at the interpreter
        except (sqlite3.Error, KryptonError) as exc:
            log.info("vault: warm-up stopped: %s", exc)
        if not self._stop_warming.is_set():  # closed meanwhile: nobody to tell
            log.info("vault: warm-up done, %d records cached in %.1f s", len(self._cache),
                     time.monotonic() - began)

    def _warm_one(self, row: Sequence[Any], unavailable: set[tuple[str, int]]
                  ) -> KeyRecord | None:  # fmt: skip
        try:
            record = _decoded(row)
            if (record.tenant, record.l3_version) in unavailable:
                return None
            return self._checked(record)
        except KeyUnavailable:
            unavailable.add((str(row[1]), int(row[6])))
        except (BadRow, KryptonError):
            pass  # a request for it gets the error
        return None

    def outbox(
        self, limit: int, *, tenant: str | None = None,
        gone: Callable[[str, int], bool] | None = None,
    ) -> list[KeyRecord]:
        """Up to ``limit`` records (of ``tenant``, or of all tenants) the Core has
        not acknowledged, oldest first: the first :meth:`outbox_page`."""
        return self.outbox_page(limit, tenant=tenant, gone=gone).records

    def outbox_page(
        self, limit: int, *, tenant: str | None = None, after: int = 0,
        gone: Callable[[str, int], bool] | None = None, checked: bool = True,
    ) -> OutboxPage:
        """Up to ``limit`` outbox rows (of ``tenant``, or of all tenants) past
        position ``after`` (0: from the oldest), oldest first, as records.
        Records that fail authentication (or cannot be checked yet) are left out;
        a row that does not decode, or whose L3 version is not held and
        ``gone(tenant, version)`` says will not come back (revoked at the Core),
        is logged with its uid, counted and quarantined (out of the outbox,
        listed by :func:`quarantined`). Call it on the event loop.

        Not ``checked``: the records' MACs are not checked here, only whether
        their L3 version is ``gone`` — for ``SyncKeys`` alone, whose receiver
        checks every MAC and refuses the call if one is wrong (the caller then
        checks that batch's records here: :meth:`authentic`). Such records never
        enter the cache, which only holds records checked or written here."""
        sql, params = (
            (_OUTBOX, (after, limit)) if tenant is None else (_OUTBOX_OF, (tenant, after, limit))
        )
        with translated("vault outbox read"):
            rows = self._readers.get().execute(sql, params).fetchall()
        records: list[KeyRecord] = []
        bad: list[Quarantined] = []
        dead: list[Quarantined] = []
        quarantining = self._quarantining
        verdicts: dict[tuple[str, int], bool] = {}  # (tenant, version) -> gone, asked once
        for row in rows:
            if quarantining and row[12] in quarantining:
                continue
            try:
                rec = _decoded(row)
            except BadRow as exc:
                bad.append(Quarantined(row[12], str(row[0]), str(exc), int(time.time())))
                continue
            if not checked:
                place = (rec.tenant, rec.l3_version)
                lost = verdicts.get(place)
                if lost is None:
                    lost = verdicts[place] = gone is not None and gone(*place)
                if not lost:
                    records.append(rec)
                    continue
                dead.append(Quarantined(row[12], rec.uid, _gone(rec.l3_version),
                                        int(time.time())))
                continue
            try:
                records.append(self._checked(rec))
            except KeyUnavailable:
                if gone is not None and gone(rec.tenant, rec.l3_version):
                    dead.append(Quarantined(row[12], rec.uid, _gone(rec.l3_version),
                                            int(time.time())))
            except KryptonError:
                continue
        if bad:
            self._quarantine_rows(bad)
        if dead:
            self._quarantine_rows(dead, "cannot reach the Krypton Core")
        position = int(rows[-1][12]) if rows else after
        return OutboxPage(records, position, len(rows) >= limit > 0)
        if dead:
            self._quarantine_rows(dead, "cannot reach the Krypton Core")
        return records

    def _quarantine_rows(self, bad: list[Quarantined], why: str = "does not decode") -> None:
        for q in bad:
            log.error("vault: outbox row of key %r %s (%s): quarantined, the"
                      " other keys keep syncing", q.uid, why, q.reason)  # fmt: skip
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

    async def quarantine(self, refused: Mapping[str, str]) -> int:
        """Take keys out of the outbox that the Core refused (uid -> why), listed
        with the undecodable rows; logged with their uids. How many were taken."""
        if not refused:
            return 0
        for uid, why in sorted(refused.items()):
            log.error("vault: the Krypton Core refused key %r (%s): quarantined, the other"
                      " keys keep syncing", uid, why)  # fmt: skip
        n = int(await self._submit(_quarantine_uids, (tuple(refused.items()), int(time.time()))))
        self._quarantined += n
        return n

    def _checked(self, record: KeyRecord) -> KeyRecord:
        return check(record, self._sealer, _is_unsealed(self._readers.get()))

    def cursor(self) -> int:
        """The sequence number of the last Core change applied here (0: none)."""
        with translated("vault cursor read"):
            row = self._readers.get().execute("SELECT max(seq) FROM feed_cursor").fetchone()
        return int(row[0] or 0)

    def held(self, tenant: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` uids (in order, above ``after``) of the tenant's keys the
        Core has acknowledged and that are not destroyed here: what to reconcile."""
        with translated("vault read"):
            rows = self._readers.get().execute(_HELD, (tenant, after, limit)).fetchall()
        return [r[0] for r in rows]

    def l3_versions(self, tenant: str) -> set[int]:
        """The L3 versions the tenant's live outbox records are wrapped under."""
        with translated("vault read"):
            rows = self._readers.get().execute(_VERSIONS, (tenant,)).fetchall()
        return {int(r[0]) for r in rows}

    def under_l3(self, tenant: str, version: int, after: str, limit: int) -> list[str]:
        """Up to ``limit`` uids (in order, above ``after``) of the tenant's live
        outbox records wrapped under L3 ``version``: what a gateway re-wraps."""
        with translated("vault read"):
            rows = self._readers.get().execute(
                _UNDER, (tenant, int(version), after, limit)).fetchall()
        return [r[0] for r in rows]

    def peek(self, uid: str) -> KeyRecord | None:
        """The stored row, NOT authenticated (never cached, never served): for
        deciding what to ask the Core when the row's L3 version is not held."""
        with translated("vault read"):
            row = self._readers.get().execute(_SELECT, (uid,)).fetchone()
        return None if row is None else _record(row)
    def query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """The rows of one read-only statement (the vault's other tables:
        :mod:`krypton.vault.sealed_l3`)."""
        with translated("vault read"):
            return self._readers.get().execute(sql, tuple(params)).fetchall()

    def holds_keys(self) -> bool:
        with translated("vault read"):
            return self._readers.get().execute("SELECT 1 FROM keys LIMIT 1").fetchone() is not None

    def sealed_l3(self) -> SealedRows:
        """The gateway seal's sealed L3 copies: the ``sealed_l3`` table."""
        return SealedRows(self)

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
        self._stop_warming.set()
        if self._warmer is not None:
            self._warmer.join()
        self._read_pool.shutdown(wait=True, cancel_futures=True)
        self._cache.clear()
        self._readers.close()

    # -- after a commit (writer thread, before the callers wake) ---------------
    def _committed(self, ops: list[Op[Work]]) -> None:
        cache = self._cache
        written = 0
        for op in ops:
            written += _CACHED[op.work](cache, op.payload)
        self._written += written


def _without_cursor(work: Work, payload: tuple[Any, ...]) -> tuple[Any, ...]:
    """A held change's payload with its feed position taken out: the cursor
    moves once every held change is stored (Vault._retry_held)."""
    if work is _apply_change:
        return (*payload[:3], 0, *payload[4:])
    if work is _reinstate or work is _adopt:
        return (payload[0], 0, *payload[2:])
    return payload


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
