"""An LRU cache of wrapped key records (never plaintext), shared between the
vault's writer thread, its reader threads and the event loop.

Bounded twice: by count (``capacity`` records) and by memory (``max_bytes``,
each record weighed by :func:`weight`: its byte fields plus a measured fixed
cost of the object and its cache entry, ~380 B on CPython 3.12). The least
recently used records go first when either bound is passed.

Readers that miss go to storage and then :meth:`RecordCache.fill` the cache;
the writer changes entries only after its transaction commits. To keep a
reader from putting back a row it read *before* a commit, every update bumps
a generation counter and a fill made under an older generation is dropped.
A small lock guards the dictionary; it is held for a few dict operations.

:meth:`RecordCache.warm` is the background warm-up's fill (after a restart):
it only uses free room, never evicts, and puts what it loads on the *least*
recently used side, so records that requests touched stay longer than the
ones loaded ahead of them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final

from krypton.model.record import KeyRecord

# What a cached record costs beyond its byte fields: the slotted object, its
# int fields, the bytes/str headers and the OrderedDict entry (measured with
# tracemalloc: 374 B for a 36-character uid; rounded up).
RECORD_OVERHEAD: Final = 380


def weight(record: KeyRecord) -> int:
    """The memory one cached record is charged for (bytes, an estimate)."""
    return (
        RECORD_OVERHEAD + len(record.uid) + len(record.tenant) + len(record.wrapped)
        + len(record.attributes) + len(record.mac)
    )  # fmt: skip


def ended(warmer: threading.Thread | None, timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds for a warm-up thread: True once it ended (or none ran)."""
    if warmer is None:
        return True
    warmer.join(timeout)
    return not warmer.is_alive()


class RecordCache:
    __slots__ = ("_bytes", "_capacity", "_entries", "_gen", "_lock", "_max_bytes")

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        """``capacity``: at most this many records (0: cache nothing);
        ``max_bytes``: at most this much memory by :func:`weight` (None: no bound)."""
        self._capacity = max(0, capacity)
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, KeyRecord] = OrderedDict()
        self._bytes = 0
        self._gen = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """The weight of the records held now."""
        return self._bytes

    @property
    def generation(self) -> int:
        return self._gen

    def get(self, uid: str) -> KeyRecord | None:
        with self._lock:
            record = self._entries.get(uid)
            if record is not None:
                self._entries.move_to_end(uid)
            return record

    def fill(self, record: KeyRecord, generation: int) -> None:
        """Insert a record read from storage, unless an update happened since."""
        with self._lock:
            if generation == self._gen:
                self._insert(record)

    def add(self, records: Iterable[KeyRecord]) -> None:
        """Insert freshly committed new records."""
        with self._lock:
            for record in records:
                self._insert(record)

    def warm(self, records: Iterable[KeyRecord], generation: int) -> bool | None:
        """Insert records read ahead of any request into free room only, on the
        least recently used side, each in the order given going colder (so give
        the most wanted first); none already held. None (nothing inserted) if an
        update happened since ``generation``; False once the cache is full."""
        with self._lock:
            if generation != self._gen:
                return None
            entries = self._entries
            for record in records:
                if record.uid in entries:
                    continue
                size = weight(record)
                if len(entries) >= self._capacity or (
                    self._max_bytes is not None and self._bytes + size > self._max_bytes
                ):
                    return False
                entries[record.uid] = record
                entries.move_to_end(record.uid, last=False)
                self._bytes += size
            return len(entries) < self._capacity

    def update(self, uids: Iterable[str], change: Callable[[KeyRecord], KeyRecord],
               *, reweigh: bool = True) -> None:
        """Apply a committed change to the cached copies of ``uids`` (not
        ``reweigh``: the change leaves every byte field as it was)."""
        with self._lock:
            self._gen += 1
            entries = self._entries
            for uid in uids:
                record = entries.get(uid)
                if record is not None:
                    new = entries[uid] = change(record)
                    if reweigh:
                        self._bytes += weight(new) - weight(record)
            self._trim()

    def discard(self, uid: str) -> None:
        """Forget a record that is no longer stored."""
        with self._lock:
            self._gen += 1
            record = self._entries.pop(uid, None)
            if record is not None:
                self._bytes -= weight(record)

    def clear(self) -> None:
        with self._lock:
            self._gen += 1
            self._entries.clear()
            self._bytes = 0

    def _insert(self, record: KeyRecord) -> None:
        if not self._capacity:
            return
        entries = self._entries
        old = entries.get(record.uid)
        if old is not None:
            self._bytes -= weight(old)
        entries[record.uid] = record
        entries.move_to_end(record.uid)
        self._bytes += weight(record)
        self._trim()

    def _trim(self) -> None:
        entries = self._entries
        limit = self._max_bytes
        while len(entries) > self._capacity or (limit is not None and self._bytes > limit):
            _, gone = entries.popitem(last=False)
            self._bytes -= weight(gone)
