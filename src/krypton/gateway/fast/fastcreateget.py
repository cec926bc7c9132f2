"""The Create + Get fast path: a new key and its bytes in one round trip.

How this works
--------------
A client that wants a data key and the key itself at once sends one message
of two batch items: a ``Create`` of a symmetric key, then a ``Get`` with no
Unique Identifier, which gets the ID Placeholder the Create set (KMIP 1.4
§4, its introduction). ``krypton bench --op createget`` sends it. The generic path decodes
it, runs both handlers -- the Get reading back and unwrapping the record the
Create has just stored -- and encodes both answers.

:func:`scan` reads exactly that shape in place: the header as
:func:`krypton.gateway.fast.fastwire.batch` takes it (Protocol Version, Batch
Count 2, perhaps a Time Stamp and a Maximum Response Size; no Batch Order or
Batch Error Continuation Option), item 1 a Create whose payload
:func:`krypton.gateway.fast.fastcreate.scan_payload` accepts, item 2 a Get
whose payload is empty or holds only a Key Format Type Raw (what
:mod:`~krypton.gateway.fast.fastget` accepts, less the identifier); each item
perhaps with a Unique Batch Item ID. Anything else -- the items the other way
round, a Get naming a uid or the placeholder, asking for wrapping or another
format, a Create the Create fast path declines -- is None: the generic path.

:meth:`FastCreateGet.answer` declines, before anything is made, what the
generic path would answer with an error in either item (a grant without
Create or without Get, an algorithm and length this server does not make, a
version it does not serve as asked, an answer over either Maximum Response
Size). Otherwise it makes the key and its record once
(:func:`~krypton.gateway.fast.fastcreate.make`, as the Create fast path
does), stores the record with one durable ``put`` (the answer waits for it),
wakes the outbox, and writes the whole response with one precompiled
``struct`` per (batch id lengths, identifier length, key length): the
Create's payload, then the Get's Raw key payload
(:class:`~krypton.gateway.engine.rawkey.RawKeyLayout`, its one writer) of
the record just stored, the key copied in from the new key's buffer -- no
read-back, no unwrap. That buffer is wiped once the response bytes exist
(the key lives in it across the ``put``, as the generic path's Get would
unwrap it right after), and the written response too. A wrap the tenant's
L3 refuses or a ``put`` that fails is handed to the generic path, which
makes a key anew and reports the error if it fails again. The tests hold
both paths to the same bytes and the same stored record, under a fixed
clock, uid and entropy.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from krypton.engine.symmetric import key_bytes
from krypton.errors import KryptonError
from krypton.gateway.engine.rawkey import RawKeyLayout
from krypton.gateway.fast import fastcreate
from krypton.gateway.fast import fastwire as fw
from krypton.ttlv.codec import Limits
from krypton.ttlv.enums import KeyFormatType, Operation
from krypton.ttlv.item import ItemType
from krypton.ttlv.tags import Tag

if TYPE_CHECKING:
    from krypton.gateway.engine.services import Services
    from krypton.model.grant import Grant
    from krypton.model.record import KeyRecord

_OPERATIONS = (int(Operation.CREATE), int(Operation.GET))
_FORMAT = fw.word(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION)

# The Create's shape (5 deep, at most 23 items with a batch id) and a Get item
# (Batch Item, Operation, batch id, Request Payload, Key Format Type): a
# dispatcher whose decoder limits refuse that message must not answer it here.
MAX_DEPTH = fastcreate.MAX_DEPTH
MAX_ITEMS = fastcreate.MAX_ITEMS + 5
NEEDS = Limits(
    max_message_size=fw.MAX_SIZE, max_depth=MAX_DEPTH, max_items=MAX_ITEMS, max_batch_items=2
)


@dataclass(frozen=True, slots=True)
class CreateGetRequest:
    """What a plain Create + Get asks: the Create's values and both batch ids."""

    major: int
    minor: int
    max_response_size: int | None
    create_id: bytes | None
    get_id: bytes | None
    algorithm: int
    length: int
    usage_mask: int | None


def scan(frame: bytes | bytearray | memoryview) -> CreateGetRequest | None:
    """The request if ``frame`` is a plain Create of a symmetric key followed by a
    Get of the ID Placeholder, else None (never raises)."""
    found = fw.batch(frame, _OPERATIONS)
    if found is None:
        return None
    create, get = found.items
    if not _placeholder_get(frame, *get.payload):
        return None
    asked = fastcreate.scan_payload(frame, *create.payload)
    if asked is None:
        return None
    return CreateGetRequest(
        found.major, found.minor, found.max_response_size, create.batch_id, get.batch_id, *asked
    )


def _placeholder_get(frame: bytes | bytearray | memoryview, off: int, stop: int) -> bool:
    """A Get payload that is empty or holds only Key Format Type Raw."""
    if off == stop:
        return True
    if off + 16 != stop:
        return False
    word, length, value, pad = fw.WORD4.unpack_from(frame, off)
    return word == _FORMAT and length == 4 and not pad and value == KeyFormatType.RAW


class _Layout:
    """The whole response for one (Create batch id, Get batch id, identifier, key)
    length: header, the Create's item, the Get's item with the key's place left
    zero at ``key_at``."""

    __slots__ = ("create_size", "get_size", "key_at", "key_len", "raw", "size", "st", "zeros")

    def __init__(
        self, create_bid: int | None, get_bid: int | None, uid_len: int, key_len: int
    ) -> None:
        raw = self.raw = RawKeyLayout(uid_len, key_len)
        create = fw.item_head_format(create_bid) + fastcreate.payload_format(uid_len)
        get = fw.item_head_format(get_bid) + raw.fmt
        self.st = struct.Struct(fw.HEADER_FORMAT + create + get)
        n = self.size = self.st.size
        self.create_size = struct.calcsize(">" + create)
        self.get_size = struct.calcsize(">" + get)
        assert fw.ITEM_AT + self.create_size + self.get_size == n
        self.key_len = key_len
        self.key_at = n - raw.size + raw.key_at
        self.zeros = bytes(n)  # to wipe a written response with

    def write(self, req: CreateGetRequest, now: int, uid: bytes, rec: KeyRecord) -> bytearray:
        out = bytearray(self.size)
        self.st.pack_into(
            out, 0,
            *fw.header(self.size, (req.major, req.minor), now, 2),
            *fw.item_head(self.create_size, Operation.CREATE, req.create_id),
            *fastcreate.payload_values(uid),
            *fw.item_head(self.get_size, Operation.GET, req.get_id),
            *self.raw.fields(uid, rec),
        )  # fmt: skip
        return out


class FastCreateGet:
    """The Create + Get fast path of one dispatcher, with its response layouts.
    ``max_response_size``: the server's bound on a response (as for
    :class:`~krypton.gateway.fast.fastcreate.FastCreate`). ``clock``: what
    :meth:`answer` reads when the Create is durable (for the meter)."""

    __slots__ = ("_clock", "_layouts", "_max_response")

    def __init__(
        self,
        *,
        max_response_size: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._layouts = fw.Layouts(_Layout)
        self._max_response = max_response_size
        self._clock = clock

    async def answer(
        self, svc: Services, grant: Grant, frame: bytes | bytearray | memoryview, now: int
    ) -> tuple[bytes, float] | None:
        """The complete response to a plain Create + Get and the clock's reading
        when the key was stored (the Create's end, the Get's start); None: take
        the generic path."""
        req = scan(frame)
        if req is None or not (grant.allows(Operation.CREATE) and grant.allows(Operation.GET)):
            return None
        if (req.major, req.minor) not in fw.VERSIONS:
            return None
        try:
            size = key_bytes(req.algorithm, req.length, "Create")
        except KryptonError:
            return None
        uid = svc.new_uid()
        uid_bytes = uid.encode("utf-8")
        layout = self._layouts.get(
            None if req.create_id is None else len(req.create_id),
            None if req.get_id is None else len(req.get_id),
            len(uid_bytes),
            size,
        )
        for limit in (req.max_response_size, self._max_response):
            if limit is not None and layout.size > limit:
                return None
        made = fastcreate.make(
            svc,
            grant.tenant,
            uid,
            alg=req.algorithm,
            length=req.length,
            usage_mask=req.usage_mask,
            now=now,
        )
        if made is None:
            return None
        record, key = made
        try:
            try:
                await svc.store.put(record)
            except KryptonError:
                return None
            stored = self._clock()
            if svc.upstream is not None:
                svc.upstream.created()
            out = layout.write(req, now, uid_bytes, record)
            out[layout.key_at : layout.key_at + layout.key_len] = key.view()
        finally:
            key.wipe()
        try:
            return bytes(out), stored
        finally:
            out[:] = layout.zeros
