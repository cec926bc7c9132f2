"""An LRU cache of wrapped key records (never plaintext), shared between the
vault's writer thread and its readers.

Readers that miss go to SQLite and then :meth:`RecordCache.fill` the cache;
the writer changes entries only after its transaction commits. To keep a
reader from putting back a row it read *before* a commit, every update bumps
a generation counter and a fill made under an older generation is dropped.
A small lock guards the dictionary; it is held for a few dict operations.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from krypton.model.record import KeyRecord


class RecordCache:
    __slots__ = ("_capacity", "_entries", "_gen", "_lock")

    def __init__(self, capacity: int) -> None:
        self._capacity = max(0, capacity)
        self._entries: OrderedDict[str, KeyRecord] = OrderedDict()
        self._gen = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

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

    def update(self, uids: Iterable[str], change: Callable[[KeyRecord], KeyRecord]) -> None:
        """Apply a committed change to the cached copies of ``uids``."""
        with self._lock:
            self._gen += 1
            for uid in uids:
                record = self._entries.get(uid)
                if record is not None:
                    self._entries[uid] = change(record)

    def discard(self, uid: str) -> None:
        """Forget a record that is no longer stored."""
        with self._lock:
            self._gen += 1
            self._entries.pop(uid, None)

    def clear(self) -> None:
        with self._lock:
            self._gen += 1
            self._entries.clear()

    def _insert(self, record: KeyRecord) -> None:
        if not self._capacity:
            return
        entries = self._entries
        entries[record.uid] = record
        entries.move_to_end(record.uid)
        while len(entries) > self._capacity:
            entries.popitem(last=False)
