"""Changes the Core committed that the vault could not store yet, and the
strict decoding of a vault row.

How this works
--------------
A change that comes down from the Core (a Destroy, a state or attribute
change, an undone Destroy) has already happened: the gateway must not drop
it because its disk is full or failing. :class:`Held` keeps such changes in
memory, per key and in order, until the vault has stored them; the vault
overlays them on every read of the key (:meth:`Held.overlay`), so the Get
paths, generic and fast, see the Core's state from memory at the cost of
one dictionary check while nothing is held. A later change of a key with
something held queues behind it, so a retry never overwrites a newer state.

:func:`decode` turns a row into a :class:`KeyRecord`, checking every column's
type and range (what the uplink's message can carry): a row a disk error or a
hand edit left undecodable raises :class:`BadRow` instead of a TypeError deep
in the drainer, and the outbox quarantines it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from krypton.errors import StorageError
from krypton.model.record import KeyRecord

log = logging.getLogger("krypton.vault")
Change = tuple[Callable[..., Any], Any]  # (vault operation, payload)
Effect = Callable[[KeyRecord], KeyRecord]

U32: Final = (1 << 32) - 1
I64: Final = (1 << 63) - 1


class BadRow(ValueError):
    """A vault row that does not decode into a key record."""


class Held:
    """Unstored changes per key uid, oldest first, with their effect on a record."""

    __slots__ = ("_changes",)

    def __init__(self) -> None:
        self._changes: dict[str, list[tuple[Change, Effect]]] = {}

    def __len__(self) -> int:
        return len(self._changes)

    def __contains__(self, uid: object) -> bool:
        return uid in self._changes

    def uids(self) -> list[str]:
        return list(self._changes)

    def add(self, uid: str, change: Change, effect: Effect) -> None:
        self._changes.setdefault(uid, []).append((change, effect))

    def first(self, uid: str) -> Change | None:
        queued = self._changes.get(uid)
        return queued[0][0] if queued else None

    def stored(self, uid: str) -> None:
        """The oldest held change of ``uid`` is in the vault now."""
        queued = self._changes.get(uid)
        if queued:
            queued.pop(0)
            if not queued:
                del self._changes[uid]

    def overlay(self, record: KeyRecord) -> KeyRecord:
        for _, effect in self._changes.get(record.uid, ()):
            record = effect(record)
        return record


async def retry_held(
    held: Held,
    store: Callable[[str, Change], Awaitable[object]],
    settle: Callable[[], Awaitable[None]],
    retry: tuple[float, float],
) -> None:
    """Store every held change (``store(uid, change)``), each key's oldest first,
    backing off from ``retry[0]`` to ``retry[1]`` seconds while the vault still
    fails; ``settle()`` (the feed cursor they owe) once nothing is held."""
    first, cap = retry
    delay = first
    while held:
        await asyncio.sleep(delay)
        try:
            for uid in held.uids():
                while (change := held.first(uid)) is not None:
                    await store(uid, change)
                    held.stored(uid)
                    log.info("vault: the held change of %s is stored now", uid)
            if not held:
                await settle()
            delay = first
        except StorageError as exc:
            delay = min(max(delay, 0.001) * 2, cap)
            log.debug("vault: held changes still not stored: %s", exc.message)


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise BadRow("not a non-empty text")
    return v


def _blob(v: Any) -> bytes:
    if not isinstance(v, bytes | bytearray | memoryview):
        raise BadRow(f"not a blob ({type(v).__name__})")
    return bytes(v)


def _range(hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if type(v) is not int or not 0 <= v <= hi:
            raise BadRow(f"not an integer in 0..{hi}")
        return v

    return check


# Column by column, in the order of the vault's SELECTs.
_COLUMNS: Final = (
    ("uid", _text), ("tenant", _text), ("object_type", _range(U32)), ("algorithm", _range(U32)),
    ("length", _range(U32)), ("state", _range(U32)), ("l3_version", _range(U32)),
    ("wrapped", _blob), ("attributes", _blob), ("created", _range(I64)),
    ("synced", _range(2)),
)  # fmt: skip


def decode(row: Sequence[Any], mac: bytes = b"") -> KeyRecord:
    """The record of a vault row (with ``mac``), or :class:`BadRow` naming the first
    bad column."""
    uid, tenant, kind, algorithm, length, state, version, wrapped, attributes, created, \
        synced = row
    # The same checks as _COLUMNS, inline (every outbox row and cache miss pays
    # them); a row that fails any is decoded column by column for the message.
    if (type(uid) is str and uid and type(tenant) is str and tenant
            and type(kind) is int and 0 <= kind <= U32
            and type(algorithm) is int and 0 <= algorithm <= U32
            and type(length) is int and 0 <= length <= U32
            and type(state) is int and 0 <= state <= U32
            and type(version) is int and 0 <= version <= U32
            and type(wrapped) is bytes and type(attributes) is bytes
            and type(created) is int and 0 <= created <= I64
            and type(synced) is int and 0 <= synced <= 2):  # fmt: skip
        # 1 synced, 2 quarantined: out of the outbox
        return KeyRecord(uid, tenant, kind, algorithm, length, state, version, wrapped,
                         attributes, created, synced != 0, mac)
    return _decode_slowly(row, mac)


def _decode_slowly(row: Sequence[Any], mac: bytes) -> KeyRecord:
    values: list[Any] = []
    for (name, check), value in zip(_COLUMNS, row, strict=True):
        try:
            values.append(check(value))
        except BadRow as bad:
            raise BadRow(f"column {name}: {bad}") from None
    values[-1] = values[-1] != 0  # 1 synced, 2 quarantined: out of the outbox
    values.append(mac)  # the columns, then the MAC
    return KeyRecord(*values)
