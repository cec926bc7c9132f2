"""What the fast paths share: the envelope of a single-item request, read in place,
and the tag|type words their precompiled response layouts are written with.

A fast path (:mod:`krypton.gateway.fast.fastget`, :mod:`krypton.gateway.fast.fastcreate`)
answers one common message shape straight from the bytes and declines every
other one; :func:`envelope` is the part of that shape every fast path has:
a header with a Protocol Version and a Batch Count of 1 (perhaps a Time Stamp
and a Maximum Response Size, each once) and a single batch item of the
expected operation (perhaps with a Unique Batch Item ID) holding a Request
Payload. It accepts a strict subset of what the decoder accepts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Generic, TypeVar

from krypton.kmip.versions import SUPPORTED
from krypton.ttlv.enums import ResultStatus
from krypton.ttlv.item import ItemType
from krypton.ttlv.tags import Tag

HDR = struct.Struct(">II")  # tag|type, length
WORD4 = struct.Struct(">IIiI")  # tag|type, length, 4-byte value, padding
_VERSION = struct.Struct(">IIIIiIIIiI")  # Protocol Version with Major and Minor


def word(tag: int, itype: ItemType) -> int:
    """An item's first four bytes (tag and type) as one big-endian integer."""
    return tag << 8 | int(itype)


_S, _I, _E, _T = ItemType.STRUCTURE, ItemType.INTEGER, ItemType.ENUMERATION, ItemType.TEXT_STRING
_MESSAGE = word(Tag.REQUEST_MESSAGE, _S)
_HEADER = word(Tag.REQUEST_HEADER, _S)
_PV_HEAD = (
    word(Tag.PROTOCOL_VERSION, _S), 32,
    word(Tag.PROTOCOL_VERSION_MAJOR, _I), 4,
)  # fmt: skip
_MINOR_HEAD = (word(Tag.PROTOCOL_VERSION_MINOR, _I), 4)
_MAX_RESPONSE = word(Tag.MAXIMUM_RESPONSE_SIZE, _I)
_PAYLOAD = word(Tag.REQUEST_PAYLOAD, _S)
ZEROS = bytes(8)
# The shortest message of the envelope's shape (header with PV + Batch Count, an
# item with an empty payload) and a bound well above any request a fast path takes.
_MIN_SIZE = 8 + 8 + 40 + 16 + 8 + 16 + 8
MAX_SIZE = 4096
VERSIONS = frozenset((v.major, v.minor) for v in SUPPORTED)

# Words of the response layouts (and of the request fields both sides share).
RESPONSE_MESSAGE = word(Tag.RESPONSE_MESSAGE, _S)
RESPONSE_HEADER = word(Tag.RESPONSE_HEADER, _S)
PROTOCOL_VERSION = word(Tag.PROTOCOL_VERSION, _S)
MAJOR = word(Tag.PROTOCOL_VERSION_MAJOR, _I)
MINOR = word(Tag.PROTOCOL_VERSION_MINOR, _I)
TIME_STAMP = word(Tag.TIME_STAMP, ItemType.DATE_TIME)
BATCH_COUNT = word(Tag.BATCH_COUNT, _I)
BATCH_ITEM = word(Tag.BATCH_ITEM, _S)
OPERATION = word(Tag.OPERATION, _E)
BATCH_ID = word(Tag.UNIQUE_BATCH_ITEM_ID, ItemType.BYTE_STRING)
RESULT_STATUS = word(Tag.RESULT_STATUS, _E)
RESULT_SUCCESS = int(ResultStatus.SUCCESS)
RESPONSE_PAYLOAD = word(Tag.RESPONSE_PAYLOAD, _S)
OBJECT_TYPE = word(Tag.OBJECT_TYPE, _E)
UID = word(Tag.UNIQUE_IDENTIFIER, _T)


def padded(n: int) -> int:
    return n + (-n % 8)


# What every single-item success response a fast path writes starts with: the
# Response Message and Response Header (Protocol Version, Time Stamp, Batch
# Count 1) headers, then the Batch Item's header, its Operation, [Unique Batch
# Item ID] and Result Status Success. The Batch Item starts at ITEM_AT.
ITEM_AT = 88


HEADER_FORMAT = (
    ">II"  # Response Message
    "II" "II" "IIi4x" "IIi4x"  # Response Header, Protocol Version, Major, Minor
    "IIq" "IIi4x"  # Time Stamp, Batch Count
)  # fmt: skip


def item_head_format(bid_len: int | None) -> str:
    """The ``struct`` format (no byte order) of a success batch item's start: its
    header, Operation, [Unique Batch Item ID of ``bid_len`` bytes] and Result Status."""
    bid = "" if bid_len is None else f"II{bid_len}s{-bid_len % 8}x"
    return "II" "IIi4x" f"{bid}" "IIi4x"


def head_format(bid_len: int | None) -> str:
    """The ``struct`` format of that head, for a batch id of ``bid_len`` (None: none)."""
    return HEADER_FORMAT + item_head_format(bid_len)


def header(size: int, version: tuple[int, int], now: int, count: int) -> tuple[int, ...]:
    """The values of :data:`HEADER_FORMAT`, for a response message of ``size`` bytes
    with ``count`` batch items (the message's first :data:`ITEM_AT` bytes)."""
    return (
        RESPONSE_MESSAGE, size - 8,
        RESPONSE_HEADER, 72, PROTOCOL_VERSION, 32,
        MAJOR, 4, version[0], MINOR, 4, version[1],
        TIME_STAMP, 8, now, BATCH_COUNT, 4, count,
    )  # fmt: skip


def item_head(size: int, operation: int, bid: bytes | None) -> tuple[object, ...]:
    """The values of :func:`item_head_format`, for a batch item of ``size`` bytes."""
    bid_part = () if bid is None else (BATCH_ID, len(bid), bid)
    return (
        BATCH_ITEM, size - 8, OPERATION, 4, operation,
        *bid_part,
        RESULT_STATUS, 4, RESULT_SUCCESS,
    )  # fmt: skip


def head(
    size: int, version: tuple[int, int], now: int, operation: int, bid: bytes | None
) -> tuple[object, ...]:
    """The values of that head, for a response message of ``size`` bytes (what
    :func:`header` and :func:`item_head` give, written out: the Get fast path's)."""
    bid_part = () if bid is None else (BATCH_ID, len(bid), bid)
    return (
        RESPONSE_MESSAGE, size - 8,
        RESPONSE_HEADER, 72, PROTOCOL_VERSION, 32,
        MAJOR, 4, version[0], MINOR, 4, version[1],
        TIME_STAMP, 8, now, BATCH_COUNT, 4, 1,
        BATCH_ITEM, size - ITEM_AT - 8, OPERATION, 4, operation,
        *bid_part,
        RESULT_STATUS, 4, RESULT_SUCCESS,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Envelope:
    """The parts of a plain single-item request message the fast paths need."""

    major: int
    minor: int
    max_response_size: int | None
    batch_id: bytes | None
    payload: tuple[int, int]  # where the Request Payload's children start and end
    # Where the values a client varies from one request to the next sit (for
    # the shapes fastget learns): Time Stamp, Maximum Response Size, batch id.
    time_stamp_at: int | None = None
    max_response_at: int | None = None
    batch_id_at: tuple[int, int] | None = None


def envelope(frame: bytes | bytearray | memoryview, operation: int) -> Envelope | None:
    """``frame`` read as a header with Protocol Version and Batch Count 1 (perhaps a
    Time Stamp, a Maximum Response Size) and one batch item of ``operation`` (perhaps
    a Unique Batch Item ID) with a payload; None for anything else (never raises)."""
    head = _header(frame, 1)
    if head is None:
        return None
    major, minor, max_size, stamp_at, max_at, off = head
    item = _item(frame, off, operation)
    if item is None or item.end != len(frame):
        return None
    return Envelope(
        major, minor, max_size, item.batch_id, item.payload, stamp_at, max_at, item.batch_id_at
    )


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One batch item of a plain request: its batch id, where its Request Payload's
    children start and end, where the item ends."""

    batch_id: bytes | None
    payload: tuple[int, int]
    batch_id_at: tuple[int, int] | None
    end: int


@dataclass(frozen=True, slots=True)
class Batch:
    """The parts of a plain request message of several batch items."""

    major: int
    minor: int
    max_response_size: int | None
    items: tuple[BatchItem, ...]


def batch(frame: bytes | bytearray | memoryview, operations: tuple[int, ...]) -> Batch | None:
    """:func:`envelope` for a Batch Count of ``len(operations)``: the batch items
    of these operations in this order, each perhaps with a Unique Batch Item ID;
    the header's fields as :func:`envelope` takes them (no Batch Order Option, no
    Batch Error Continuation Option); None for anything else (never raises)."""
    head = _header(frame, len(operations))
    if head is None:
        return None
    major, minor, max_size, _, _, off = head
    items: list[BatchItem] = []
    for operation in operations:
        item = _item(frame, off, operation)
        if item is None:
            return None
        items.append(item)
        off = item.end
    if off != len(frame):
        return None
    return Batch(major, minor, max_size, tuple(items))


def _header(
    frame: bytes | bytearray | memoryview, batch_count: int
) -> tuple[int, int, int | None, int | None, int | None, int] | None:
    """The message and header lengths checked, the header read: (major, minor,
    Maximum Response Size, where the Time Stamp and Maximum Response Size values
    sit, where the first batch item starts), if the Batch Count is ``batch_count``."""
    n = len(frame)
    if n < _MIN_SIZE or n > MAX_SIZE:
        return None
    unpack = HDR.unpack_from
    word, length = unpack(frame, 0)
    if word != _MESSAGE or length + 8 != n:
        return None
    word, hlen = unpack(frame, 8)
    hend = 16 + hlen
    if word != _HEADER or hlen & 7 or hend > n:
        return None
    pw, pl, jw, jl, major, jpad, nw, nl, minor, npad = _VERSION.unpack_from(frame, 16)
    if (pw, pl, jw, jl) != _PV_HEAD or (nw, nl) != _MINOR_HEAD or jpad or npad:
        return None
    off = 56
    max_size: int | None = None
    count: int | None = None
    stamp_at: int | None = None
    max_at: int | None = None
    while off < hend:
        if off + 16 > hend:
            return None
        word, length, value, pad = WORD4.unpack_from(frame, off)
        if word == BATCH_COUNT and length == 4 and not pad and count is None:
            count = value
        elif word == _MAX_RESPONSE and length == 4 and not pad and max_at is None:
            max_size = value
            max_at = off + 8
        elif word == TIME_STAMP and length == 8 and stamp_at is None:
            stamp_at = off + 8
        else:
            return None
        off += 16
    if count != batch_count:
        return None
    return major, minor, max_size, stamp_at, max_at, off


def _item(frame: bytes | bytearray | memoryview, off: int, operation: int) -> BatchItem | None:
    """The batch item at ``off``: Operation ``operation``, perhaps a Unique Batch
    Item ID, a Request Payload, each once, in any order."""
    n = len(frame)
    if off + 8 > n:
        return None
    unpack = HDR.unpack_from
    word, length = unpack(frame, off)
    stop = off + 8 + length
    if word != BATCH_ITEM or stop > n:
        return None
    off += 8
    seen_op = False
    batch_id: bytes | None = None
    bid_at: tuple[int, int] | None = None
    payload: tuple[int, int] | None = None
    while off < stop:
        if off + 8 > stop:
            return None
        word, length = unpack(frame, off)
        if word == OPERATION and not seen_op and off + 16 <= stop:
            _, length, value, pad = WORD4.unpack_from(frame, off)
            if length != 4 or pad or value != operation:
                return None
            seen_op = True
            off += 16
        elif word == BATCH_ID and batch_id is None:
            end = off + 8 + length
            pad_end = off + 8 + padded(length)
            if pad_end > stop or frame[end:pad_end] != ZEROS[: pad_end - end]:
                return None
            batch_id = bytes(frame[off + 8 : end])
            bid_at = (off + 8, end)
            off = pad_end
        elif word == _PAYLOAD and payload is None and not length & 7 and off + 8 + length <= stop:
            payload = (off + 8, off + 8 + length)
            off += 8 + length
        else:
            return None
    if not seen_op or payload is None:
        return None
    return BatchItem(batch_id, payload, bid_at, stop)


L = TypeVar("L")


class Layouts(Generic[L]):
    """Precompiled response layouts by shape (lengths of the variable fields).
    Identifiers are ours and batch ids short, so shapes are few; the table is
    emptied if a client manages to make it large."""

    def __init__(self, make: type[L], limit: int = 256) -> None:
        self._make = make
        self._limit = limit
        self._table: dict[tuple[int | None, ...], L] = {}

    def get(self, *shape: int | None) -> L:
        layout = self._table.get(shape)
        if layout is None:
            if len(self._table) >= self._limit:
                self._table.clear()
            layout = self._table[shape] = self._make(*shape)
        return layout
