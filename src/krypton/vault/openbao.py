"""The gateway vault on OpenBao: each wrapped record a KV v2 secret.

How this works
--------------
:class:`BaoVault` has the interface of the SQLite :class:`~krypton.vault.sqlite.Vault`
(:class:`~krypton.vault.port.VaultStore`) and keeps in OpenBao exactly what a
SQLite row holds (:mod:`krypton.vault._kv`): wrapped blobs and metadata, never
plaintext. OpenBao with Raft storage commits a write to its log before it
answers, so a write that returned is durable.

Writes: each vault operation is one function ``(kv, payload) -> result`` run
on a worker thread of a pool as large as the HTTP connection pool, so
concurrent Creates are in flight together over keep-alive connections (there
is no group commit: each is one KV write; Raft batches them). ``await
vault.put(record)`` returns once OpenBao acknowledged the write. Rewrites of
one key (state, attributes, outbox mark) queue on a per-key lock in the order
they were asked for and are check-and-set writes of the version they read.
After an operation, :data:`_INDEXED` says what it does to the in-memory cache
and index (a function not in the table is an error, as in SQLite).

Reads: ``get`` is served from the record cache (:mod:`krypton.vault.cache`);
on a miss it reads the secret through (on the caller's thread) and checks its
MAC. The event loop uses ``lookup`` (the cache alone, no I/O) and
``read_through`` (the miss read on a worker thread of the pool); ``warm``
reads the newest records into the cache's free room on a background thread
after a start. With ``--workers N`` each gateway worker has its
own vault object on the same prefix: a key another worker created is found by
that read-through (an unknown uid costs one KV read). The queries SQLite answers with SQL — the
outbox, a tenant's held uids, quarantine, the cursor, "any keys?" — are
answered from an index (uid -> tenant, state, outbox mark) that
:meth:`BaoVault.open` rebuilds by LISTing and reading every secret. That is
this backend's scale limit: start-up reads every record (~900 a second over
loopback on the 2-core test machine: docs/performance.md) and the index
costs ~200 bytes per key; and the vault assumes it is the only writer of its
prefix.

Changes the Core committed are never dropped (:mod:`krypton.vault.held`):
one OpenBao cannot take (unreachable, sealed) is held in memory, overlaid on
reads and retried, and the feed cursor stays where stored changes put it.
A record change and its feed position are two writes (record first): after
a crash between them the feed replays a change already stored, which sets
the same values again.

Differences from SQLite, by design: ``put_many`` is not atomic (each record
is one write; on a failure the ones written are deleted again, best effort);
there is no legacy (unauthenticated) record, so ``seal_legacy`` has nothing
to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from krypton.errors import KeyUnavailable, KryptonError, StorageError
from krypton.metrics.meter import BATCH_BUCKETS, COMMIT_BUCKETS, Histogram
from krypton.model.record import KeyRecord
from krypton.openbao import OpenBaoClient
from krypton.vault import sqlite
from krypton.vault._bao_sealed import BaoSealed, drop_sealed, put_sealed, sealed_rows
from krypton.vault._kv import DUPLICATE, Conflict, Kv, decoded, translated
from krypton.vault.auth import Sealer, check, seal
from krypton.vault.cache import RecordCache, ended
from krypton.vault.held import BadRow, Change, Effect, Held, retry_held
from krypton.vault.sqlite import (
    DESTROYED_STATES,
    RETRY_CAP,
    RETRY_FIRST,
    OutboxPage,
    Quarantined,
)

log = logging.getLogger("krypton.vault")
Op = Callable[[Kv, Any], Any]
Stored = tuple[KeyRecord, int]  # a record as written, and its KV version


@dataclass(slots=True)
class _Entry:
    """What the index knows of a stored key."""

    tenant: str
    state: int
    synced: int  # 0 outbox, 1 acknowledged, 2 quarantined
    at: int  # write time (ns): the outbox order
    version: int = 0  # the KV version last read or written (0: not known)
    l3: int = 0  # the L3 version the record is wrapped under
    blob: bool = True  # it holds wrapped material (a destroyed key's is erased)

    @classmethod
    def of(cls, record: KeyRecord, synced: int, at: int, version: int) -> _Entry:
        return cls(record.tenant, record.state, synced, at, version, record.l3_version,
                   bool(record.wrapped))  # fmt: skip

    @property
    def live(self) -> bool:
        """In the outbox with wrapped material: what a re-wrap moves."""
        return self.synced == 0 and self.blob and self.state not in DESTROYED_STATES


def _no_legacy(uid: str) -> bool:
    return False  # every record here was written with its MAC


# -- operations (worker threads) ------------------------------------------------------
def _put(kv: Kv, record: KeyRecord) -> tuple[int, int]:
    return kv.create(record)


def _rewrite(kv: Kv, uid: str, change: Callable[[KeyRecord], KeyRecord | None],
             sealer: Sealer | None) -> Stored | None:
    """Check the stored record, apply ``change`` (None: leave it), store it with
    a fresh MAC; the new record and version, None if there is no such key."""
    found = kv.read(uid)
    if found is None:
        return None
    data, version = found
    try:
        old, at, _ = decoded(uid, data)
    except BadRow as bad:
        raise StorageError(f"vault record {uid!r} is unreadable: {bad}") from None
    new = change(check(old, sealer, _no_legacy))
    if new is None:
        return None
    new = seal(new, sealer)
    return new, kv.rewrite(new, at, version, destroy=new.wrapped != old.wrapped)


def _by_effect(effect_of: Callable[[Any], tuple[str, Effect]]) -> Op:
    """An operation that rewrites one key by the effect its payload describes
    (the same effect the cache and the held overlay apply)."""
    def op(kv: Kv, payload: tuple[Any, ...]) -> Stored | None:
        uid, effect = effect_of(payload)
        return _rewrite(kv, uid, effect, payload[-1])

    return op


def _reinstate(kv: Kv, payload: tuple[KeyRecord, int, Sealer | None]) -> Stored | None:
    r, _, sealer = payload
    uid, effect = sqlite._reinstate_effect(payload)

    def back(old: KeyRecord) -> KeyRecord | None:
        return effect(old) if old.tenant == r.tenant else None

    return _rewrite(kv, uid, back, sealer)


def _adopt(kv: Kv, payload: tuple[KeyRecord, int, Sealer | None]) -> Stored | None:
    """The Core's record whole (checked by ``authentic``, its MAC kept): the stored
    one is not checked first (its L3 version may be gone), only its tenant."""
    r = payload[0]
    found = kv.read(r.uid)
    if found is None:
        return None
    data, version = found
    try:
        old, at, _ = decoded(r.uid, data)
    except BadRow as bad:
        raise StorageError(f"vault record {r.uid!r} is unreadable: {bad}") from None
    if old.tenant != r.tenant:
        return None
    new = sqlite._adopt_effect(payload)[1](old)
    return new, kv.rewrite(new, at, version, destroy=new.wrapped != old.wrapped)


def _rewrap(kv: Kv, payload: tuple[str, int, bytes, int, bytes, Sealer | None]) -> Stored | None:
    uid, old_version, old_wrapped, version, wrapped, sealer = payload
    return _rewrite(kv, uid, sqlite._moved(old_version, old_wrapped, version, wrapped), sealer)


_set_state = _by_effect(sqlite._state_effect)
_set_attributes = _by_effect(sqlite._attributes_effect)
_apply_change = _by_effect(sqlite._apply_effect)


def _mark_synced(kv: Kv, payload: tuple[str, tuple[KeyRecord, int, int] | None]
                 ) -> Stored | None:  # fmt: skip
    """Take a key out of the outbox. With ``known`` (the record this process
    cached, its ``at`` and KV version) one check-and-set write, no read; the
    outbox mark is not covered by the MAC. If the secret moved on: a rewrite."""
    uid, known = payload
    if known is not None and not known[0].synced:
        new = replace(known[0], synced=True)
        with contextlib.suppress(Conflict):
            return new, kv.rewrite(new, known[1], known[2], destroy=False)
    return _rewrite(kv, uid, lambda r: None if r.synced else replace(r, synced=True), None)


def _set_cursor(kv: Kv, seq: int) -> None:
    kv.write_state("state", "cursor", {"seq": seq})


def _quarantine(kv: Kv, q: Quarantined) -> None:
    kv.write_state("quarantine", q.uid, {"row": q.row, "reason": q.reason, "at": q.at})


def _delete(kv: Kv, uid: str) -> None:
    with translated("delete"):
        kv.client.delete(f"{kv.mount}/metadata/{kv.path('keys', uid)}")


# -- what a stored operation does to the cache and the index (event loop) ----------
def _ix_put(v: BaoVault, record: KeyRecord, stored: tuple[int, int]) -> None:
    v._cache.add((record,))
    v._index[record.uid] = _Entry.of(record, int(record.synced), *stored)
    if not record.synced:
        v._enqueue(record.uid)
    v._written += 1


def _ix_rewrite(v: BaoVault, payload: Any, stored: Stored | None) -> None:
    if stored is None:
        return
    new, version = stored
    v._cache.update((new.uid,), lambda _: new)
    entry = v._index.get(new.uid)
    if entry is not None:
        entry.state, entry.version = new.state, version
        entry.l3, entry.blob = new.l3_version, bool(new.wrapped)
        if new.synced and entry.synced != 1:
            entry.synced = 1
            v._outbox.pop(new.uid, None)


def _ix_nothing(v: BaoVault, payload: object, result: object) -> None:
    return None


def _ix_quarantine(v: BaoVault, q: Quarantined, _: object) -> None:
    entry = v._index.get(q.uid)
    if entry is not None:
        entry.synced = 2
    v._outbox.pop(q.uid, None)


def _ix_delete(v: BaoVault, uid: str, _: object) -> None:
    v._index.pop(uid, None)
    v._outbox.pop(uid, None)
    v._cache.discard(uid)


_INDEXED: Final[Mapping[Op, Callable[[BaoVault, Any, Any], None]]] = {
    _put: _ix_put,
    _set_state: _ix_rewrite,
    _set_attributes: _ix_rewrite,
    _reinstate: _ix_rewrite,
    _apply_change: _ix_rewrite,
    _mark_synced: _ix_rewrite,
    _adopt: _ix_rewrite,
    _rewrap: _ix_rewrite,
    _set_cursor: _ix_nothing,
    _quarantine: _ix_quarantine,
    _delete: _ix_delete,
    put_sealed: _ix_nothing,  # sealed L3 copies (krypton.vault._bao_sealed): no records
    drop_sealed: _ix_nothing,
    sealed_rows: _ix_nothing,
}
# The key each change from the Core is about, and what it does to a record.
_EFFECTS: Final[Mapping[Op, Callable[[Any], tuple[str, Effect]]]] = {
    _set_state: sqlite._state_effect,
    _set_attributes: sqlite._attributes_effect,
    _reinstate: sqlite._reinstate_effect,
    _apply_change: sqlite._apply_effect,
    _adopt: sqlite._adopt_effect,
}


class BaoVault:
    """Wrapped L4 records as KV v2 secrets of one OpenBao; see the module comment."""

    def __init__(
        self,
        kv: Kv,
        *,
        cache_size: int = 65536,
        connections: int = 16,
        sealer: Sealer | None = None,
        retry: tuple[float, float] = (RETRY_FIRST, RETRY_CAP),
        cache_bytes: int | None = None,
    ) -> None:
        self._kv = kv
        self._sealer = sealer
        self.retry = retry  # held changes: first delay, cap (seconds)
        self._held = Held()
        self._retrier: asyncio.Task[None] | None = None
        self._cursor_due = 0
        self._cursor = 0
        self._cursor_lock = asyncio.Lock()
        self._quarantined = 0
        self._quarantining: set[str] = set()
        self._background: set[asyncio.Future[Any]] = set()
        self._cache = RecordCache(cache_size, cache_bytes)
        self._warmer: threading.Thread | None = None
        self._index: dict[str, _Entry] = {}
        # uids not acknowledged by the Core, oldest first -> their outbox position
        self._outbox: dict[str, int] = {}
        self._positions = 0  # the last outbox position given (positions only grow)
        self._commit_seconds = Histogram(COMMIT_BUCKETS)  # each KV operation
        self._batch_sizes = Histogram(BATCH_BUCKETS)  # always 1: no group commit
        self._failing: str | None = None  # the last write failure, until one succeeds
        self._written = 0
        self._locks: dict[str, list[Any]] = {}  # uid -> [asyncio.Lock, users]
        self._pool = ThreadPoolExecutor(max(1, connections), thread_name_prefix="vault-bao")
        self._closed = False

    @classmethod
    def open(
        cls,
        address: str,
        *,
        mount: str = "kv",
        prefix: str = "krypton/gateway",
        token: str | None = None,
        role_id: str | None = None,
        secret_id: str | None = None,
        ca: Path | None = None,
        connections: int = 16,
        cache_size: int = 65536,
        sealer: Sealer | None = None,
        retry: tuple[float, float] = (RETRY_FIRST, RETRY_CAP),
        cache_bytes: int | None = None,
    ) -> BaoVault:
        """Connect to the OpenBao at ``address`` (a token, or an AppRole's
        ``role_id``/``secret_id``) and rebuild the index from the secrets under
        ``<mount>/<prefix>``; StorageError if it cannot."""
        with translated(f"at {address}"):
            client = OpenBaoClient(address, token=token, role_id=role_id, secret_id=secret_id,
                                   ca=ca, pool=connections)  # fmt: skip
        vault = cls(Kv(client, mount, prefix), cache_size=cache_size, connections=connections,
                    sealer=sealer, retry=retry, cache_bytes=cache_bytes)  # fmt: skip
        try:
            vault._load()
        except BaseException:
            vault.close()
            raise
        return vault

    def _load(self) -> None:
        """The index, the quarantine and the cursor, from what OpenBao holds."""
        kv = self._kv
        quarantined = set(kv.uids("quarantine"))
        found = [e for e in self._pool.map(self._entry_of, kv.uids("keys")) if e is not None]
        for uid, entry in sorted(found, key=lambda e: (e[1].at, e[0])):
            if uid in quarantined:
                entry.synced = 2
            self._index[uid] = entry
            if entry.synced == 0:
                self._enqueue(uid)
        state = kv.read_state("state", "cursor")
        seq = state.get("seq") if isinstance(state, dict) else 0
        self._cursor = seq if type(seq) is int and seq > 0 else 0
        log.info("vault: %d record(s) on OpenBao (%s), %d in the outbox", len(self._index),
                 kv.client.address, len(self._outbox))  # fmt: skip

    def _entry_of(self, uid: str) -> tuple[str, _Entry] | None:
        found = self._kv.read(uid)
        if found is None:
            return None
        try:
            record, at, synced = decoded(uid, found[0])
        except BadRow:
            return uid, _Entry("", 0, 0, 0)  # left in the outbox, which quarantines it
        return uid, _Entry.of(record, synced, at, found[1])

    def _enqueue(self, uid: str) -> None:
        self._positions += 1
        self._outbox[uid] = self._positions

    # -- counters --------------------------------------------------------------
    @property
    def records_written(self) -> int:
        return self._written

    @property
    def cached(self) -> int:
        return len(self._cache)

    @property
    def cached_bytes(self) -> int:
        """The memory the cached records are charged for (:func:`krypton.vault.cache.weight`)."""
        return self._cache.size_bytes

    @property
    def pending_changes(self) -> int:
        return len(self._held)

    @property
    def quarantined(self) -> int:
        return self._quarantined

    @property
    def path(self) -> Path | None:
        return None  # no file: OpenBao holds the records

    @property
    def commit_stats(self) -> tuple[Histogram, Histogram]:
        """Each KV operation's seconds, and its writes (1: there is no group commit)."""
        return self._commit_seconds, self._batch_sizes

    def unwritable(self) -> str | None:
        """Why the vault cannot take writes now (closed, or its last write to
        OpenBao failed and none succeeded since), or None."""
        return "the vault is closed" if self._closed else self._failing

    def outbox_stats(self) -> tuple[int, int | None]:
        """How many keys wait for the Core, and when the oldest was written
        (seconds since the epoch; None when none waits)."""
        first = next(iter(self._outbox), None)
        entry = None if first is None else self._index.get(first)
        return len(self._outbox), (None if entry is None else entry.at // 1_000_000_000)

    # -- running operations -------------------------------------------------------
    async def submit(self, op: Op, payload: Any) -> Any:
        """``op(kv, payload)`` on a worker thread; once it returned, its entry in
        :data:`_INDEXED` updates the cache and index (no entry: StorageError)."""
        if self._closed:
            raise StorageError("vault is closed")
        indexed = _INDEXED.get(op)
        if indexed is None:
            raise StorageError(f"vault: no index update for operation {op.__name__}")
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        try:
            result = await loop.run_in_executor(self._pool, op, self._kv, payload)
        except StorageError as exc:
            if not isinstance(exc, Conflict) and exc.message != DUPLICATE:
                self._failing = exc.message
            raise
        self._failing = None
        self._commit_seconds.observe(time.perf_counter() - began)
        self._batch_sizes.observe(1)
        indexed(self, payload, result)
        return result

    async def _keyed(self, uid: str, op: Op, payload: Any) -> Any:
        """:meth:`submit`, after the operations on ``uid`` asked for before it."""
        entry = self._locks.setdefault(uid, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                return await self.submit(op, payload)
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[uid]

    def _known(self, uid: str) -> tuple[KeyRecord, int, int] | None:
        """The cached record of ``uid`` with its ``at`` and KV version, if known."""
        entry, record = self._index.get(uid), self._cache.get(uid)
        if entry is None or record is None or not entry.version:
            return None
        return record, entry.at, entry.version

    # -- writes (durable when they return) -------------------------------------
    def authentic(self, record: KeyRecord) -> KeyRecord:
        return check(record, self._sealer, _no_legacy)

    async def put(self, record: KeyRecord) -> None:
        await self.submit(_put, seal(record, self._sealer))

    async def put_many(self, records: Iterable[KeyRecord]) -> None:
        """Every record, or none: records written before one failed are deleted."""
        batch = [seal(r, self._sealer) for r in records]
        results = await asyncio.gather(*(self.submit(_put, r) for r in batch),
                                       return_exceptions=True)  # fmt: skip
        failed = [r for r in results if isinstance(r, BaseException)]
        if not failed:
            return
        written = [r.uid for r, res in zip(batch, results, strict=True)
                   if not isinstance(res, BaseException)]  # fmt: skip
        await asyncio.gather(*(self.submit(_delete, uid) for uid in written),
                             return_exceptions=True)  # fmt: skip
        raise failed[0]

    async def update_state(self, uid: str, state: int) -> bool:
        return await self._keyed(uid, _set_state, (uid, int(state), self._sealer)) is not None

    async def update_attributes(self, uid: str, attributes: bytes) -> bool:
        payload = (uid, bytes(attributes), self._sealer)
        return await self._keyed(uid, _set_attributes, payload) is not None

    async def reinstate(self, record: KeyRecord, *, seq: int = 0) -> bool:
        return await self._follow(_reinstate, (record, int(seq), self._sealer), int(seq))

    async def apply_change(
        self, uid: str, *, state: int | None = None, attributes: bytes | None = None,
        seq: int = 0,
    ) -> bool:
        if state is None and attributes is None:
            await self.set_cursor(seq)
            return False
        payload = (uid, None if state is None else int(state),
                   None if attributes is None else bytes(attributes), int(seq), self._sealer)
        return await self._follow(_apply_change, payload, int(seq))

    async def adopt(self, record: KeyRecord, *, seq: int = 0) -> bool:
        """Take the Core's record of a held key whole (see
        :meth:`krypton.vault.sqlite.Vault.adopt`): held and retried if not stored."""
        return await self._follow(_adopt, (record, int(seq), None), int(seq))

    async def rewrap(self, record: KeyRecord, version: int, wrapped: bytes) -> bool:
        """Store ``record`` (as read) re-wrapped under L3 ``version`` if it has not
        changed since it was read; False if it has (or is gone)."""
        payload = (record.uid, record.l3_version, record.wrapped, int(version), bytes(wrapped),
                   self._sealer)  # fmt: skip
        return await self._keyed(record.uid, _rewrap, payload) is not None

    async def quarantine(self, refused: Mapping[str, str]) -> int:
        """Take keys the Core refused (uid -> why) out of the outbox, listed with
        the undecodable ones; logged with their uids. How many were taken."""
        if not refused:
            return 0
        for uid, why in sorted(refused.items()):
            log.error("vault: the Krypton Core refused key %r (%s): quarantined, the other"
                      " keys keep syncing", uid, why)  # fmt: skip
        now = int(time.time())
        todo = [Quarantined(self._index[uid].at, uid, why, now)
                for uid, why in sorted(refused.items()) if uid in self._outbox]  # fmt: skip
        await asyncio.gather(*(self._keyed(q.uid, _quarantine, q) for q in todo))
        self._quarantined += len(todo)
        return len(todo)

    async def set_cursor(self, seq: int) -> None:
        if self._held:
            self._cursor_due = max(self._cursor_due, int(seq))
            return
        await self._store_cursor(int(seq))

    async def _store_cursor(self, seq: int) -> None:
        async with self._cursor_lock:  # never moved back by a slower write
            if seq > self._cursor:
                await self.submit(_set_cursor, seq)
                self._cursor = seq

    # -- changes the Core committed: never dropped --------------------------------
    async def _follow(self, op: Op, payload: tuple[Any, ...], seq: int) -> bool:
        """Store a change (then the feed position); held and retried if OpenBao
        cannot take it now (see krypton.vault.sqlite.Vault._follow)."""
        uid, effect = _EFFECTS[op](payload)
        if not self._held:
            try:
                done = await self._keyed(uid, op, payload) is not None
                await self._store_cursor(seq)
                return done
            except StorageError as exc:
                log.warning(
                    "vault: a change of %s from the Core is not stored (%s); held in"
                    " memory and retried, the key is answered from memory until then",
                    uid, exc.message,
                )  # fmt: skip
        self._cursor_due = max(self._cursor_due, seq)
        self._held.add(uid, (op, payload), effect)
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.create_task(self._retry_held(), name="vault-retry")
        return False

    async def _retry_held(self) -> None:
        async def store(uid: str, change: Change) -> None:
            await self._keyed(uid, *change)

        async def settle() -> None:
            if self._cursor_due:
                await self._store_cursor(self._cursor_due)
                self._cursor_due = 0

        await retry_held(self._held, store, settle, self.retry)

    async def mark_synced(self, uids: Iterable[str]) -> int:
        batch = tuple(dict.fromkeys(u for u in uids if u in self._outbox))
        done = await asyncio.gather(*(self._keyed(u, _mark_synced, (u, self._known(u)))
                                      for u in batch))  # fmt: skip
        return sum(r is not None for r in done)

    async def seal_legacy(self) -> int:
        return 0  # records on OpenBao were always written with their MAC

    # -- reads (caller's thread) -----------------------------------------------
    def get(self, uid: str) -> KeyRecord | None:
        """The key's record (cache, else read through), held changes applied."""
        if self._closed:
            raise StorageError("vault is closed")
        record = self._cache.get(uid)
        if record is None:
            generation = self._cache.generation
            record = self._listed(self._read(uid), generation)
        return self._overlaid(uid, record)

    def lookup(self, uid: str) -> KeyRecord | None:
        """The key's record if the cache holds it, else None; never any I/O."""
        return self._overlaid(uid, self._cache.get(uid))

    async def read_through(self, uid: str) -> KeyRecord | None:
        """Like :meth:`get`, the miss read on a worker thread (the loop does not wait)."""
        if self._closed:
            raise StorageError("vault is closed")
        record = self._cache.get(uid)
        if record is None:
            generation = self._cache.generation
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._pool, self._read, uid)
            record = self._listed(found, generation)
        return self._overlaid(uid, record)

    def _overlaid(self, uid: str, record: KeyRecord | None) -> KeyRecord | None:
        if record is not None and self._held and uid in self._held:
            return self._held.overlay(record)
        return record

    def _read(self, uid: str) -> tuple[KeyRecord, _Entry] | None:
        """The stored record, checked, and its index entry (any thread: changes nothing)."""
        found = self._kv.read(uid)
        if found is None:
            return None
        try:
            record, at, synced = decoded(uid, found[0])
        except BadRow as bad:
            raise StorageError(f"vault record {uid!r} is unreadable: {bad}") from None
        record = check(record, self._sealer, _no_legacy)
        return record, _Entry.of(record, synced, at, found[1])

    def _listed(self, found: tuple[KeyRecord, _Entry] | None, generation: int
                ) -> KeyRecord | None:  # fmt: skip
        """A record read through, cached; one this index does not list (written by
        another gateway worker on the same prefix) is listed from now on."""
        if found is None:
            return None
        record, entry = found
        self._index.setdefault(record.uid, entry)
        self._cache.fill(record, generation)
        return record

    def warm(self) -> None:
        """Start filling the cache's free room with the newest records (by write
        time), on a background thread (returns at once; once per vault)."""
        if self._warmer is not None or self._closed:
            return
        newest = [(uid, e.tenant, e.l3)
                  for uid, e in sorted(self._index.items(), key=lambda i: -i[1].at)]
        self._warmer = threading.Thread(target=self._warm, args=(newest,), name="vault-warm",
                                        daemon=True)  # fmt: skip
        self._warmer.start()

    def warmed(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the warm-up to end: True if it has
        (or never started)."""
        return ended(self._warmer, timeout)

    def _warm(self, keys: list[tuple[str, str, int]]) -> None:
        page = sqlite.WARM_PAGE
        unavailable: set[tuple[str, int]] = set()  # (tenant, L3 version) not held: skipped
        for at in range(0, len(keys), page):
            if self._closed:
                return
            generation = self._cache.generation
            records = []
            for uid, tenant, l3 in keys[at : at + page]:
                if (tenant, l3) in unavailable:
                    continue
                try:
                    found = self._read(uid)
                except KeyUnavailable:
                    unavailable.add((tenant, l3))
                    continue
                except KryptonError:
                    continue  # a request for it gets the error
                if found is not None:
                    records.append(found[0])
            if self._cache.warm(records, generation) is False:
                return

    def outbox(
        self, limit: int, *, tenant: str | None = None,
        gone: Callable[[str, int], bool] | None = None,
    ) -> list[KeyRecord]:
        """The records of the first :meth:`outbox_page` (from the oldest)."""
        return self.outbox_page(limit, tenant=tenant, gone=gone).records

    def outbox_page(
        self, limit: int, *, tenant: str | None = None, after: int = 0,
        gone: Callable[[str, int], bool] | None = None, checked: bool = True,
    ) -> OutboxPage:
        """Up to ``limit`` outbox entries (of ``tenant``, or of all) past position
        ``after``, oldest first, as records (see
        :meth:`krypton.vault.sqlite.Vault.outbox_page`): positions are given in
        write order as keys enter the outbox. Call it on the event loop. Records
        are checked here whatever ``checked`` says (most come from the cache)."""
        records: list[KeyRecord] = []
        read, position = 0, after
        for uid, pos in list(self._outbox.items()):
            if read >= limit:
                break
            entry = self._index.get(uid)
            if pos <= after or (tenant is not None and entry is not None
                               and entry.tenant not in (tenant, "")):  # fmt: skip
                continue
            read, position = read + 1, pos
            if uid in self._quarantining:
                continue
            record = self._outbox_record(uid, gone)
            if record is not None:
                records.append(record)
        return OutboxPage(records, position, read >= limit > 0)

    def _outbox_record(self, uid: str, gone: Callable[[str, int], bool] | None
                       ) -> KeyRecord | None:  # fmt: skip
        """The outbox record, checked; None (quarantined if it cannot be sent
        ever) if it cannot be sent now."""
        record = self._cache.get(uid)
        if record is not None:
            return record
        try:
            record = self.peek(uid)
        except StorageError as exc:
            if "unreadable" in exc.message:
                self._quarantine_one(uid, exc.message)
            return None
        if record is None:
            return None
        try:
            return check(record, self._sealer, _no_legacy)
        except KeyUnavailable:
            if gone is not None and gone(record.tenant, record.l3_version):
                self._quarantine_one(uid, sqlite._gone(record.l3_version),
                                     "cannot reach the Krypton Core")
            return None
        except KryptonError:
            return None

    def _quarantine_one(self, uid: str, reason: str, why: str = "does not decode") -> None:
        log.error("vault: outbox record of key %r %s (%s): quarantined, the"
                  " other keys keep syncing", uid, why, reason)  # fmt: skip
        self._quarantined += 1
        self._quarantining.add(uid)
        entry = self._index.get(uid)
        q = Quarantined(entry.at if entry else 0, uid, reason, int(time.time()))
        done = asyncio.ensure_future(self.submit(_quarantine, q))
        self._background.add(done)

        def finished(f: asyncio.Future[Any]) -> None:
            self._background.discard(f)
            if f.cancelled() or f.exception() is not None:
                self._quarantining.discard(uid)  # not stored: found and tried again

        done.add_done_callback(finished)

    def cursor(self) -> int:
        return self._cursor

    def held(self, tenant: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` uids above ``after`` of the tenant's acknowledged keys
        that are not destroyed (a scan of the index, sorted)."""
        uids = sorted(
            uid for uid, e in self._index.items()
            if e.tenant == tenant and e.synced == 1 and e.state not in DESTROYED_STATES
            and uid > after
        )  # fmt: skip
        return uids[:limit]

    def l3_versions(self, tenant: str) -> set[int]:
        """The L3 versions the tenant's live outbox records are wrapped under."""
        return {e.l3 for e in self._index.values() if e.tenant == tenant and e.live}

    def under_l3(self, tenant: str, version: int, after: str, limit: int) -> list[str]:
        """Up to ``limit`` uids above ``after`` of the tenant's live outbox records
        wrapped under L3 ``version`` (a scan of the index, sorted)."""
        uids = sorted(
            uid for uid, e in self._index.items()
            if e.tenant == tenant and e.live and e.l3 == version and uid > after
        )  # fmt: skip
        return uids[:limit]

    def peek(self, uid: str) -> KeyRecord | None:
        """The stored record, NOT authenticated (never cached, never served)."""
        found = self._kv.read(uid)
        if found is None:
            return None
        try:
            return decoded(uid, found[0])[0]
        except BadRow as bad:
            raise StorageError(f"vault record {uid!r} is unreadable: {bad}") from None

    def holds_keys(self) -> bool:
        return bool(self._index)

    def sealed_l3(self) -> BaoSealed:
        """The gateway seal's sealed L3 copies: secrets under ``<prefix>/sealed_l3/``."""
        return BaoSealed(self)

    def quarantined_rows(self) -> list[Quarantined]:
        """The quarantined outbox records as stored, by outbox position
        (``krypton gateway outbox``)."""
        found: list[Quarantined] = []
        for uid in self._kv.uids("quarantine"):
            d = self._kv.read_state("quarantine", uid)
            if isinstance(d, dict):
                found.append(Quarantined(int(d.get("row") or 0), uid, str(d.get("reason")),
                                         int(d.get("at") or 0)))  # fmt: skip
        return sorted(found, key=lambda q: (q.row, q.uid))

    # -- shutdown --------------------------------------------------------------
    def close(self) -> None:
        """Finish every write in flight, then close the connections."""
        if self._closed:
            return
        if self._retrier is not None:
            self._retrier.cancel()
        if self._held:
            log.warning("vault: closed with changes of %d key(s) not stored", len(self._held))
        self._closed = True
        if self._warmer is not None:
            self._warmer.join()
        self._pool.shutdown(wait=True)
        self._cache.clear()
        self._kv.client.close()
