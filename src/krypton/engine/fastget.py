"""The Get fast path: the everyday single-item ``Get`` answered straight from bytes.

How this works
--------------
Nearly every request a gateway serves is the same message: a header with a
Protocol Version, a Batch Count of 1 (perhaps a Time Stamp or a Maximum
Response Size), and one batch item ``Get`` of a text Unique Identifier
(perhaps with a Unique Batch Item ID, perhaps asking for Key Format Type
Raw). The generic path decodes that into an Item tree, parses it into
messages, builds a context, runs the handler and encodes the response --
about a hundred microseconds of Python, most of it spent on objects that
live for one request.

:func:`scan` reads such a message in place with a few ``struct`` calls and
returns the handful of values that matter (:class:`GetRequest`), or None the
moment anything differs from that shape: another field, another order of
container, a duplicate, a wrong length, non-zero padding, invalid UTF-8. It
accepts a strict subset of what the decoder accepts, so it never answers
something the generic path would refuse.

:func:`answer` then serves the request if -- and only if -- it is the plain
case: the caller's grant allows Get, the vault holds the record (memory cache
or a synchronous SQLite read, never a Core round trip) for the caller's
tenant, the object is a symmetric key with default attributes (not
Sensitive, Extractable, kept in Raw), not destroyed, and its L3 version
unwraps it. The response message is written by one precompiled ``struct``
layout per (batch id length, identifier length, key length): envelope and
payload in one buffer, the key copied in from the unwrapped buffer, both
wiped once the response bytes exist.

Every other case -- an error to report, a key the Core must supply, a format
to convert, a response over the Maximum Response Size -- returns None and the
dispatcher takes the generic path, which gives the complete answer. The
tests hold the two paths to the same bytes for every request the fast path
accepts, and to the generic path's answer for those it declines.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from krypton.errors import KryptonError
from krypton.kmip.versions import SUPPORTED
from krypton.ttlv.codec import encode
from krypton.ttlv.enums import KeyFormatType, ObjectType, Operation, ResultStatus, State
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

if TYPE_CHECKING:
    from krypton.engine.objects import Services
    from krypton.gateway.policy import Grant
    from krypton.vault.record import KeyRecord

_HDR = struct.Struct(">II")
_WORD4 = struct.Struct(">IIiI")  # tag|type, length, 4-byte value, padding
_VERSION = struct.Struct(">IIIIiIIIiI")  # Protocol Version with Major and Minor


def _w(tag: int, itype: ItemType) -> int:
    return tag << 8 | int(itype)


_S, _I, _E = ItemType.STRUCTURE, ItemType.INTEGER, ItemType.ENUMERATION
_MESSAGE = _w(Tag.REQUEST_MESSAGE, _S)
_HEADER = _w(Tag.REQUEST_HEADER, _S)
_PV_HEAD = (
    _w(Tag.PROTOCOL_VERSION, _S), 32,
    _w(Tag.PROTOCOL_VERSION_MAJOR, _I), 4,
)  # fmt: skip
_MINOR_HEAD = (_w(Tag.PROTOCOL_VERSION_MINOR, _I), 4)
_MAX_RESPONSE = _w(Tag.MAXIMUM_RESPONSE_SIZE, _I)
_BATCH_COUNT = _w(Tag.BATCH_COUNT, _I)
_TIME_STAMP = _w(Tag.TIME_STAMP, ItemType.DATE_TIME)
_BATCH_ITEM = _w(Tag.BATCH_ITEM, _S)
_OPERATION = _w(Tag.OPERATION, _E)
_BATCH_ID = _w(Tag.UNIQUE_BATCH_ITEM_ID, ItemType.BYTE_STRING)
_PAYLOAD = _w(Tag.REQUEST_PAYLOAD, _S)
_UID = _w(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING)
_FORMAT = _w(Tag.KEY_FORMAT_TYPE, _E)
_ZEROS = bytes(8)
# The shortest message of this shape (header with PV + Batch Count, a Get of an
# empty identifier) and a bound well above any identifier we issue.
_MIN_SIZE = 8 + 8 + 40 + 16 + 8 + 16 + 8 + 8
MAX_SIZE = 4096
_VERSIONS = frozenset((v.major, v.minor) for v in SUPPORTED)


@dataclass(frozen=True, slots=True)
class GetRequest:
    """What a plain single-item Get asks: no key material, nothing secret."""

    major: int
    minor: int
    max_response_size: int | None
    batch_id: bytes | None
    uid: str
    raw_format: bool  # Key Format Type absent or Raw


def _padded(n: int) -> int:
    return n + (-n % 8)


def scan(frame: bytes | bytearray | memoryview) -> GetRequest | None:
    """The request if ``frame`` is a plain single-item Get, else None (never raises)."""
    n = len(frame)
    if n < _MIN_SIZE or n > MAX_SIZE:
        return None
    unpack = _HDR.unpack_from
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
    stamped = False
    while off < hend:
        if off + 16 > hend:
            return None
        word, length, value, pad = _WORD4.unpack_from(frame, off)
        if word == _BATCH_COUNT and length == 4 and not pad and count is None:
            count = value
        elif word == _MAX_RESPONSE and length == 4 and not pad and max_size is None:
            max_size = value
        elif word == _TIME_STAMP and length == 8 and not stamped:
            stamped = True
        else:
            return None
        off += 16
    if count != 1 or off + 8 > n:
        return None
    word, length = unpack(frame, off)
    if word != _BATCH_ITEM or off + 8 + length != n:
        return None
    off += 8
    get = False
    batch_id: bytes | None = None
    payload: tuple[int, int] | None = None
    while off < n:
        if off + 8 > n:
            return None
        word, length = unpack(frame, off)
        if word == _OPERATION and not get and off + 16 <= n:
            _, length, value, pad = _WORD4.unpack_from(frame, off)
            if length != 4 or pad or value != Operation.GET:
                return None
            get = True
            off += 16
        elif word == _BATCH_ID and batch_id is None:
            end = off + 8 + length
            stop = off + 8 + _padded(length)
            if stop > n or frame[end:stop] != _ZEROS[: stop - end]:
                return None
            batch_id = bytes(frame[off + 8 : end])
            off = stop
        elif word == _PAYLOAD and payload is None and not length & 7 and off + 8 + length <= n:
            payload = (off + 8, off + 8 + length)
            off += 8 + length
        else:
            return None
    if not get or payload is None:
        return None
    found = _scan_payload(frame, *payload)
    if found is None:
        return None
    return GetRequest(major, minor, max_size, batch_id, *found)


def _scan_payload(
    frame: bytes | bytearray | memoryview, off: int, stop: int
) -> tuple[str, bool] | None:
    """The payload's (Unique Identifier, Key Format Type absent or Raw)."""
    uid: str | None = None
    fmt: int | None = None
    while off < stop:
        if off + 8 > stop:
            return None
        word, length = _HDR.unpack_from(frame, off)
        if word == _UID and uid is None:
            end = off + 8 + length
            pad_end = off + 8 + _padded(length)
            if pad_end > stop or frame[end:pad_end] != _ZEROS[: pad_end - end]:
                return None
            try:
                uid = bytes(frame[off + 8 : end]).decode("utf-8")
            except UnicodeDecodeError:
                return None
            off = pad_end
        elif word == _FORMAT and fmt is None and off + 16 <= stop:
            _, length, fmt, pad = _WORD4.unpack_from(frame, off)
            if length != 4 or pad:
                return None
            off += 16
        else:
            return None
    if uid is None:
        return None
    return uid, fmt is None or fmt == KeyFormatType.RAW


class _Layout:
    """The whole Get response message for one (batch id, identifier, key) length:
    a single ``struct`` with every header and fixed field; the key is copied in
    afterwards at ``key_at``."""

    __slots__ = ("item_len", "key_at", "key_len", "object_len", "payload_len", "size", "st",
                 "zeros")  # fmt: skip

    def __init__(self, bid_len: int | None, uid_len: int, key_len: int) -> None:
        bid = "" if bid_len is None else f"II{bid_len}s{-bid_len % 8}x"
        pu, pk = -uid_len % 8, -key_len % 8
        self.st = struct.Struct(
            ">II"  # Response Message
            "II" "II" "IIi4x" "IIi4x"  # Response Header, Protocol Version, Major, Minor
            "IIq" "IIi4x"  # Time Stamp, Batch Count
            "II" "IIII" f"{bid}" "IIII"  # Batch Item, Operation, [Batch Item ID], Status
            "II" "IIII" f"II{uid_len}s{pu}x"  # Response Payload, Object Type, Identifier
            "II" "II" "IIII"  # Symmetric Key, Key Block, Key Format Type
            "II" "II" f"{key_len + pk}x"  # Key Value, Key Material, (the key)
            "IIII" "IIi4x"  # Cryptographic Algorithm, Cryptographic Length
        )  # fmt: skip
        n = self.size = self.st.size
        self.key_len = key_len
        self.zeros = bytes(n)  # to wipe a written response with
        self.key_at = n - 32 - key_len - pk
        # Structure lengths (each counted from the end of its own header).
        item_at = 8 + 80  # after the message and response headers
        payload_at = item_at + 8 + 16 + (0 if bid_len is None else 8 + _padded(bid_len)) + 16
        object_at = payload_at + 8 + 16 + 8 + _padded(uid_len)
        self.item_len = n - item_at - 8
        self.payload_len = n - payload_at - 8
        self.object_len = n - object_at - 8

    def write(
        self, version: tuple[int, int], now: int, bid: bytes | None, uid: bytes, rec: KeyRecord
    ) -> bytearray:
        n, k = self.size, self.key_len
        bid_part = () if bid is None else (_BATCH_ID, len(bid), bid)
        out = bytearray(n)
        self.st.pack_into(
            out, 0,
            _RESPONSE_MESSAGE, n - 8,
            _RESPONSE_HEADER, 72, _PROTOCOL_VERSION, 32,
            _MAJOR, 4, version[0], _MINOR, 4, version[1],
            _TIME_STAMP, 8, now, _BATCH_COUNT, 4, 1,
            _BATCH_ITEM, self.item_len, _OPERATION, 4, Operation.GET, 0,
            *bid_part,
            _RESULT_STATUS, 4, ResultStatus.SUCCESS, 0,
            _RESPONSE_PAYLOAD, self.payload_len,
            _OBJECT_TYPE, 4, rec.object_type, 0,
            _UID, len(uid), uid,
            _SYMMETRIC_KEY, self.object_len,
            _KEY_BLOCK, self.object_len - 8,
            _FORMAT, 4, KeyFormatType.RAW, 0,
            _KEY_VALUE, 8 + k + (-k % 8),
            _KEY_MATERIAL, k,
            _ALGORITHM, 4, rec.algorithm, 0,
            _LENGTH, 4, rec.length,
        )  # fmt: skip
        return out


_RESPONSE_MESSAGE = _w(Tag.RESPONSE_MESSAGE, _S)
_RESPONSE_HEADER = _w(Tag.RESPONSE_HEADER, _S)
_PROTOCOL_VERSION = _w(Tag.PROTOCOL_VERSION, _S)
_MAJOR = _w(Tag.PROTOCOL_VERSION_MAJOR, _I)
_MINOR = _w(Tag.PROTOCOL_VERSION_MINOR, _I)
_RESULT_STATUS = _w(Tag.RESULT_STATUS, _E)
_RESPONSE_PAYLOAD = _w(Tag.RESPONSE_PAYLOAD, _S)
_OBJECT_TYPE = _w(Tag.OBJECT_TYPE, _E)
_SYMMETRIC_KEY = _w(Tag.SYMMETRIC_KEY, _S)
_KEY_BLOCK = _w(Tag.KEY_BLOCK, _S)
_KEY_VALUE = _w(Tag.KEY_VALUE, _S)
_KEY_MATERIAL = _w(Tag.KEY_MATERIAL, ItemType.BYTE_STRING)
_ALGORITHM = _w(Tag.CRYPTOGRAPHIC_ALGORITHM, _E)
_LENGTH = _w(Tag.CRYPTOGRAPHIC_LENGTH, _I)
_LAYOUTS: dict[tuple[int | None, int, int], _Layout] = {}
_DESTROYED = (State.DESTROYED, State.DESTROYED_COMPROMISED)


def answer(
    svc: Services, grant: Grant, frame: bytes | bytearray | memoryview, now: int
) -> bytes | None:
    """The complete response to a plain Get, or None: take the generic path."""
    req = scan(frame)
    if req is None or not req.raw_format or not grant.allows(Operation.GET):
        return None
    version = (req.major, req.minor)
    if version not in _VERSIONS:
        return None
    try:
        rec = svc.store.get(req.uid)
        if (
            rec is None
            or rec.tenant != grant.tenant
            or rec.object_type != ObjectType.SYMMETRIC_KEY
            or rec.state in _DESTROYED
            or not rec.wrapped
            or not plain_symmetric(rec)
        ):
            return None
        secret = svc.keyring.unwrap(rec.tenant, rec.uid, rec.l3_version, rec.wrapped)
    except KryptonError:
        return None
    uid = rec.uid.encode("utf-8")
    try:
        shape = (None if req.batch_id is None else len(req.batch_id), len(uid), len(secret))
        layout = _LAYOUTS.get(shape)
        if layout is None:
            if len(_LAYOUTS) >= 256:  # identifiers are ours, batch ids short: few shapes
                _LAYOUTS.clear()
            layout = _LAYOUTS[shape] = _Layout(*shape)
        out = layout.write(version, now, req.batch_id, uid, rec)
        out[layout.key_at : layout.key_at + shape[2]] = secret.view()
    finally:
        secret.wipe()
    try:
        if req.max_response_size is not None and len(out) > req.max_response_size:
            return None
        return bytes(out)
    finally:
        out[:] = layout.zeros


# A symmetric key whose attribute blob holds none of these encodings has the
# defaults (Sensitive False, Extractable True, Key Format Type Raw): Get then
# serves it without decoding its attributes. Any of them present (or the same
# bytes inside another value) only means the blob is read.
_NOT_DEFAULT = (
    encode(Item.boolean(Tag.SENSITIVE, True)),
    encode(Item.boolean(Tag.EXTRACTABLE, False)),
    encode(Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY)),
)


_SENSITIVE, _NOT_EXTRACTABLE, _TRANSPARENT = _NOT_DEFAULT


def plain_symmetric(rec: KeyRecord) -> bool:
    """True when a symmetric key's stored attributes cannot change how Get serves it."""
    a = rec.attributes
    return not (_SENSITIVE in a or _NOT_EXTRACTABLE in a or _TRANSPARENT in a)
