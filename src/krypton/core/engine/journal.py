"""The Core's undo journal: records as they were before the items of an Undo batch.

Kept in memory only, per batch (the gateway's random token for the batch, under
the gateway's identity and the tenant), newest last, for at most ``seconds`` and ``tokens`` batches:
a gateway that never ends its batch (it crashed) does not make the Core keep a
destroyed object's sealed material around. See :mod:`krypton.engine.undo`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from krypton.model.registry import ObjectRecord

JOURNAL_SECONDS = 60.0
JOURNAL_TOKENS = 1024


@dataclass(frozen=True, slots=True, repr=False)
class JournalEntry:
    """``before`` is to be written back while the object is still at ``revision``."""

    tenant: str
    uid: str
    revision: int
    before: ObjectRecord


class UndoJournal:
    def __init__(
        self,
        seconds: float = JOURNAL_SECONDS,
        tokens: int = JOURNAL_TOKENS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.tokens = tokens
        self.clock = clock
        self._batches: OrderedDict[str, tuple[float, list[JournalEntry]]] = OrderedDict()

    def record(self, token: str, before: ObjectRecord, after: ObjectRecord) -> None:
        self._expire()
        started, entries = self._batches.get(token, (self.clock(), []))
        entries.append(JournalEntry(after.tenant, after.uid, after.revision, before))
        self._batches[token] = (started, entries)
        self._evict()

    def open(self, token: str) -> None:
        """The batch exists from now on, with no entries yet (idempotent)."""
        self._expire()
        if token not in self._batches:
            self._batches[token] = (self.clock(), [])
            self._evict()

    def take(self, token: str) -> list[JournalEntry] | None:
        """The batch's entries, oldest first, and forget them; None if the batch
        is not known (never opened, or expired or evicted since)."""
        self._expire()
        batch = self._batches.pop(token, None)
        return None if batch is None else batch[1]

    def __len__(self) -> int:
        return len(self._batches)

    def _evict(self) -> None:
        while len(self._batches) > self.tokens:
            self._batches.popitem(last=False)

    def _expire(self) -> None:
        deadline = self.clock() - self.seconds
        while self._batches:
            token, (started, _) = next(iter(self._batches.items()))
            if started > deadline:
                break
            del self._batches[token]
