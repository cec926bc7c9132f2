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

:meth:`FastGet.scan` reads such a message in place with a few ``struct`` calls and
returns the handful of values that matter (:class:`GetRequest`), or None the
moment anything differs from that shape: another field, another order of
container, a duplicate, a wrong length, non-zero padding, invalid UTF-8. It
accepts a strict subset of what the decoder accepts, so it never answers
something the generic path would refuse.

A client sends the same shape again and again, with only its identifier
(and perhaps batch id, Time Stamp, Maximum Response Size) changing. Once a
message has been scanned in full, its shape is remembered (:class:`_Shape`):
the bytes outside those values, by message length. The next message of that
length whose fixed bytes are the same is read by a few slice comparisons;
any other takes the full scan.

:meth:`FastGet.answer` then serves the request if -- and only if -- it is the plain
case: the caller's grant allows Get, the vault's record cache holds the record
(``KeyStore.lookup``: memory only, never a disk read or a Core round trip) for
the caller's tenant, the object is a symmetric key with default attributes (not
Sensitive, Extractable, kept in Raw), not destroyed, and its L3 version
unwraps it. The response message is written by one precompiled ``struct``
layout per (batch id length, identifier length, key length): envelope and
payload in one buffer, the key copied in from the unwrapped buffer, both
wiped once the response bytes exist.

A request that is the plain case but whose record is not in the cache is
declined and its uid left in :attr:`FastGet.missed`: the dispatcher reads the
record through off the event loop (``KeyStore.read_through``) and asks again.

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

from krypton.engine.objects import belongs
from krypton.errors import KryptonError
from krypton.gateway.engine.rawkey import RawKeyLayout, plain_symmetric
from krypton.gateway.fast import fastwire as fw
from krypton.model.record import DESTROYED_STATES
from krypton.ttlv.codec import Limits
from krypton.ttlv.enums import KeyFormatType, ObjectType, Operation
from krypton.ttlv.item import ItemType
from krypton.ttlv.tags import Tag

if TYPE_CHECKING:
    from krypton.gateway.engine.services import Services
    from krypton.model.grant import Grant
    from krypton.model.record import KeyRecord

_UID = fw.UID
_FORMAT = fw.word(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION)

# The plain Get nests structures 3 deep and has at most 14 items: a dispatcher
# whose decoder limits are lower refuses it, so must its fast path.
MAX_DEPTH = 3
MAX_ITEMS = 14
NEEDS = Limits(
    max_message_size=fw.MAX_SIZE, max_depth=MAX_DEPTH, max_items=MAX_ITEMS, max_batch_items=1
)


@dataclass(frozen=True, slots=True)
class GetCache:
    """How much one dispatcher's Get fast path remembers: message shapes
    (``max_shapes``) and plain-attributes verdicts (``max_memo``)."""

    max_shapes: int = 64
    max_memo: int = 4096


@dataclass(frozen=True, slots=True)
class GetRequest:
    """What a plain single-item Get asks: no key material, nothing secret."""

    major: int
    minor: int
    max_response_size: int | None
    batch_id: bytes | None
    uid: str
    raw_format: bool  # Key Format Type absent or Raw


def scan_in_full(frame: bytes | bytearray | memoryview) -> GetRequest | None:
    """The request if ``frame`` is a plain single-item Get, else None (never raises):
    the full scan, learning nothing."""
    found = _scan(frame)
    return None if found is None else found[0]


def _scan(frame: bytes | bytearray | memoryview) -> tuple[GetRequest, _Shape] | None:
    env = fw.envelope(frame, Operation.GET)
    if env is None:
        return None
    found = _scan_payload(frame, *env.payload)
    if found is None:
        return None
    uid, raw, uid_at = found
    req = GetRequest(env.major, env.minor, env.max_response_size, env.batch_id, uid, raw)
    return req, _Shape(frame, env, uid_at, raw)


def _scan_payload(
    frame: bytes | bytearray | memoryview, off: int, stop: int
) -> tuple[str, bool, tuple[int, int]] | None:
    """The payload's Unique Identifier, whether the Key Format Type is absent or
    Raw, and where the identifier's bytes are."""
    uid: str | None = None
    uid_at = (0, 0)
    fmt: int | None = None
    while off < stop:
        if off + 8 > stop:
            return None
        word, length = fw.HDR.unpack_from(frame, off)
        if word == _UID and uid is None:
            end = off + 8 + length
            pad_end = off + 8 + fw.padded(length)
            if pad_end > stop or frame[end:pad_end] != fw.ZEROS[: pad_end - end]:
                return None
            try:
                uid = bytes(frame[off + 8 : end]).decode("utf-8")
            except UnicodeDecodeError:
                return None
            uid_at = (off + 8, end)
            off = pad_end
        elif word == _FORMAT and fmt is None and off + 16 <= stop:
            _, length, fmt, pad = fw.WORD4.unpack_from(frame, off)
            if length != 4 or pad:
                return None
            off += 16
        else:
            return None
    if uid is None:
        return None
    return uid, fmt is None or fmt == KeyFormatType.RAW, uid_at


class _Shape:
    """A message the full scan accepted, reduced to what another message of the
    same length must repeat byte for byte to be the same kind of request: all
    of it but the identifier, the batch id, the Time Stamp and the Maximum
    Response Size values (lengths included, they are in the fixed bytes). A
    message that matches is one the full scan accepts, with those four values
    read from where the scan found them; clients repeat one shape, so the
    next Get costs a few slice comparisons."""

    __slots__ = ("bid", "fixed", "major", "max_at", "minor", "raw", "uid")

    def __init__(
        self,
        frame: bytes | bytearray | memoryview,
        env: fw.Envelope,
        uid_at: tuple[int, int],
        raw: bool,
    ) -> None:
        holes = [uid_at]
        if env.time_stamp_at is not None:
            holes.append((env.time_stamp_at, env.time_stamp_at + 8))
        if env.max_response_at is not None:
            holes.append((env.max_response_at, env.max_response_at + 4))
        if env.batch_id_at is not None:
            holes.append(env.batch_id_at)
        fixed: list[tuple[int, int, bytes]] = []
        pos = 0
        for start, end in sorted(holes):
            if start > pos:
                fixed.append((pos, start, bytes(frame[pos:start])))
            pos = end
        if pos < len(frame):
            fixed.append((pos, len(frame), bytes(frame[pos:])))
        self.fixed = tuple(fixed)
        self.uid = uid_at
        self.bid = env.batch_id_at
        self.max_at = env.max_response_at
        self.major, self.minor, self.raw = env.major, env.minor, raw

    def match(self, frame: bytes | bytearray | memoryview) -> GetRequest | None:
        for start, end, want in self.fixed:
            if frame[start:end] != want:
                return None
        start, end = self.uid
        try:
            uid = bytes(frame[start:end]).decode("utf-8")
        except UnicodeDecodeError:
            return None
        bid = None if self.bid is None else bytes(frame[self.bid[0] : self.bid[1]])
        at = self.max_at
        max_size = None if at is None else _INT.unpack_from(frame, at)[0]
        return GetRequest(self.major, self.minor, max_size, bid, uid, self.raw)


_INT = struct.Struct(">i")


class _Layout:
    """The whole Get response message for one (batch id, identifier, key) length:
    a single ``struct`` with the envelope's headers and the payload's
    (:class:`~krypton.gateway.engine.rawkey.RawKeyLayout`, the one writer of the
    Raw key payload); the key is copied in afterwards at ``key_at``."""

    __slots__ = ("key_at", "key_len", "payload", "size", "st", "zeros")

    def __init__(self, bid_len: int | None, uid_len: int, key_len: int) -> None:
        payload = self.payload = RawKeyLayout(uid_len, key_len)
        self.st = struct.Struct(fw.head_format(bid_len) + payload.fmt)
        n = self.size = self.st.size
        self.key_len = key_len
        self.zeros = bytes(n)  # to wipe a written response with
        self.key_at = n - payload.size + payload.key_at

    def write(
        self, version: tuple[int, int], now: int, bid: bytes | None, uid: bytes, rec: KeyRecord
    ) -> bytearray:
        out = bytearray(self.size)
        self.st.pack_into(
            out, 0, *fw.head(self.size, version, now, Operation.GET, bid),
            *self.payload.fields(uid, rec),
        )  # fmt: skip
        return out


class FastGet:
    """The Get fast path of one dispatcher, with what it learns as it serves:
    the message shapes it has scanned (at most ``max_shapes``), the
    :func:`plain_symmetric` verdict per attribute blob (blobs repeat per key;
    at most ``max_memo``) and the response layouts. Each table is emptied when
    full, so a client that makes many shapes costs only full scans."""

    __slots__ = ("_layouts", "_max_memo", "_max_shapes", "_plain", "_shapes", "missed")

    def __init__(self, *, max_shapes: int = 64, max_memo: int = 4096) -> None:
        if max_shapes < 1 or max_memo < 1:
            raise ValueError("FastGet: max_shapes and max_memo must be at least 1")
        self._max_shapes = max_shapes
        self._max_memo = max_memo
        self._shapes: dict[int, list[_Shape]] = {}
        self._plain: dict[bytes, bool] = {}
        self._layouts = fw.Layouts(_Layout)
        # The uid of the last plain Get declined only because its record was not
        # cached (the dispatcher takes it, reads it through and asks again).
        self.missed: str | None = None

    def scan(self, frame: bytes | bytearray | memoryview) -> GetRequest | None:
        """:func:`scan_in_full`'s answer, read through a learned shape where one
        matches; a message fully scanned teaches its shape."""
        for shape in self._shapes.get(len(frame), ()):
            req = shape.match(frame)
            if req is not None:
                return req
        found = _scan(frame)
        if found is None:
            return None
        if self.learned() >= self._max_shapes:
            self._shapes.clear()
        self._shapes.setdefault(len(frame), []).append(found[1])
        return found[0]

    def learned(self, size: int | None = None) -> int:
        """How many shapes are remembered (of messages ``size`` bytes long)."""
        if size is None:
            return sum(len(v) for v in self._shapes.values())
        return len(self._shapes.get(size, ()))

    def plain(self, rec: KeyRecord) -> bool:
        """:func:`plain_symmetric`, memoised per attribute blob."""
        a = rec.attributes
        plain = self._plain.get(a)
        if plain is None:
            plain = plain_symmetric(rec)
            if len(self._plain) >= self._max_memo:
                self._plain.clear()
            self._plain[a] = plain
        return plain

    def answer(
        self, svc: Services, grant: Grant, frame: bytes | bytearray | memoryview, now: int
    ) -> bytes | None:
        """The complete response to a plain Get, or None: take the generic path."""
        req = self.scan(frame)
        if req is None or not req.raw_format or not grant.allows(Operation.GET):
            return None
        version = (req.major, req.minor)
        if version not in fw.VERSIONS:
            return None
        try:
            rec = svc.store.lookup(req.uid)
            if rec is None:
                self.missed = req.uid
                return None
            if (
                not belongs(rec, grant.tenant)
                or rec.object_type != ObjectType.SYMMETRIC_KEY
                or rec.state in DESTROYED_STATES
                or not rec.wrapped
                or not self.plain(rec)
            ):
                return None
            secret = svc.keyring.unwrap(rec.tenant, rec.uid, rec.l3_version, rec.wrapped)
        except KryptonError:
            return None
        uid = rec.uid.encode("utf-8")
        try:
            bid_len = None if req.batch_id is None else len(req.batch_id)
            layout = self._layouts.get(bid_len, len(uid), len(secret))
            out = layout.write(version, now, req.batch_id, uid, rec)
            out[layout.key_at : layout.key_at + layout.key_len] = secret.view()
        finally:
            secret.wipe()
        try:
            if req.max_response_size is not None and len(out) > req.max_response_size:
                return None
            return bytes(out)
        finally:
            out[:] = layout.zeros
