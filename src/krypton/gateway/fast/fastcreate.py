"""The Create fast path: the everyday single-item Create of a symmetric key.

How this works
--------------
Applications ask for data keys with one message shape: a single batch item
``Create`` with Object Type Symmetric Key and the key's Cryptographic
Algorithm and Length, usually its Usage Mask too -- in a 1.x
Template-Attribute (``Attribute`` structures with a name and a value) or a
2.x Attributes structure (the attributes themselves). The generic path
decodes that into an Item tree, parses the header, the batch, the
attributes, checks each against the client attribute table and encodes a
response tree: some 200 microseconds of Python, on top of the vault's
durable write.

:func:`scan` reads that shape in place, after the envelope that
:func:`krypton.gateway.fast.fastwire.envelope` reads for Get: exactly an Object
Type of Symmetric Key followed by one attribute container holding the
Algorithm and the Length (and perhaps the Usage Mask), each once, with the
type the attribute table requires, no Attribute Index. Anything else --
another attribute, a duplicate, a name spelled differently, another order --
returns None, and the dispatcher takes the generic path.

:meth:`FastCreate.answer` then does what ``krypton.gateway.engine.keys.create`` does (the key
from the kernel CSPRNG, its SHA-256 digest, the wrap under the tenant's L3,
the durable ``put``), writes the record's attributes -- the client's Usage
Mask and what ``server_attrs.implied`` adds -- with prepacked items, and the
response message with one precompiled ``struct`` per (batch id, identifier)
length. It declines -- before anything is stored -- whatever the
generic path would answer with an error (a grant without Create, an
algorithm and length this server does not make, no L3 for the tenant, a
Maximum Response Size below the response). A vault write that fails is
handed to the generic path too, which tries once more and reports the
error if it fails again. The tests hold both paths to the same bytes: the
response and the stored record, under a fixed clock and entropy.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from krypton.engine import server_attrs
from krypton.engine.symmetric import generate, key_bytes
from krypton.errors import KryptonError
from krypton.gateway.fast import fastwire as fw
from krypton.gateway.fast.fastwire import Envelope
from krypton.model.record import KeyRecord
from krypton.ttlv.codec import Limits, encode
from krypton.ttlv.enums import (
    HashingAlgorithm,
    KeyFormatType,
    ObjectType,
    Operation,
    State,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

if TYPE_CHECKING:
    from krypton.crypto.secret import SecretBytes
    from krypton.gateway.engine.services import Services
    from krypton.model.grant import Grant

_ATTR_HEAD = struct.Struct(">IIII")  # Attribute header, Attribute Name header
_w = fw.word
_S, _I, _E, _T = ItemType.STRUCTURE, ItemType.INTEGER, ItemType.ENUMERATION, ItemType.TEXT_STRING
_TEMPLATE = _w(Tag.TEMPLATE_ATTRIBUTE, _S)
_ATTRIBUTES = _w(Tag.ATTRIBUTES, _S)
_ATTRIBUTE = _w(Tag.ATTRIBUTE, _S)
_NAME = _w(Tag.ATTRIBUTE_NAME, _T)
_ALGORITHM, _LENGTH, _USAGE = 0, 1, 2
# 1.x: the Attribute Name's bytes -> (slot, the Attribute Value's tag|type word)
_V1: dict[bytes, tuple[int, int]] = {
    b"Cryptographic Algorithm": (_ALGORITHM, _w(Tag.ATTRIBUTE_VALUE, _E)),
    b"Cryptographic Length": (_LENGTH, _w(Tag.ATTRIBUTE_VALUE, _I)),
    b"Cryptographic Usage Mask": (_USAGE, _w(Tag.ATTRIBUTE_VALUE, _I)),
}
# 2.x: the attribute's own tag|type word -> slot
_V2: dict[int, int] = {
    _w(Tag.CRYPTOGRAPHIC_ALGORITHM, _E): _ALGORITHM,
    _w(Tag.CRYPTOGRAPHIC_LENGTH, _I): _LENGTH,
    _w(Tag.CRYPTOGRAPHIC_USAGE_MASK, _I): _USAGE,
}
# The message shape above nests 5 deep in 1.x and has at most 23 items: under
# lower limits the decoder refuses it, so the fast path must not run.
MAX_DEPTH = 5
MAX_ITEMS = 23
NEEDS = Limits(
    max_message_size=fw.MAX_SIZE, max_depth=MAX_DEPTH, max_items=MAX_ITEMS, max_batch_items=1
)


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """What a plain single-item Create asks."""

    envelope: Envelope
    algorithm: int
    length: int
    usage_mask: int | None


def scan(frame: bytes | bytearray | memoryview) -> CreateRequest | None:
    """The request if ``frame`` is a plain single-item Create of a symmetric key."""
    env = fw.envelope(frame, Operation.CREATE)
    if env is None:
        return None
    found = scan_payload(frame, *env.payload)
    if found is None:
        return None
    return CreateRequest(env, *found)


def scan_payload(
    frame: bytes | bytearray | memoryview, off: int, stop: int
) -> tuple[int, int, int | None] | None:
    """The Algorithm, Length and Usage Mask (or None) of a plain Create's Request
    Payload (its children from ``off`` to ``stop``), if it is one."""
    if off + 24 > stop:
        return None
    word, length, value, pad = fw.WORD4.unpack_from(frame, off)
    if word != fw.OBJECT_TYPE or length != 4 or pad or value != ObjectType.SYMMETRIC_KEY:
        return None
    word, length = fw.HDR.unpack_from(frame, off + 16)
    start = off + 24
    if length & 7 or start + length != stop:
        return None
    if word == _TEMPLATE:
        values = _scan_v1(frame, start, stop)
    elif word == _ATTRIBUTES:
        values = _scan_v2(frame, start, stop)
    else:
        return None
    if values is None:
        return None
    alg, length, usage = values
    if alg is None or length is None:
        return None
    # The algorithm is an Enumeration (unsigned); WORD4 read it as a signed int.
    return alg & 0xFFFF_FFFF, length, usage


def _scan_v1(frame: bytes | bytearray | memoryview, off: int, stop: int) -> list[int | None] | None:
    values: list[int | None] = [None, None, None]
    while off < stop:
        if off + 16 > stop:
            return None
        word, length, name_word, name_len = _ATTR_HEAD.unpack_from(frame, off)
        end = off + 8 + length
        if word != _ATTRIBUTE or name_word != _NAME or end > stop or length & 7:
            return None
        name_end = off + 16 + name_len
        value_at = off + 16 + name_len + (-name_len % 8)
        if value_at + 16 != end or any(frame[name_end:value_at]):
            return None
        known = _V1.get(bytes(frame[off + 16 : name_end]))
        if known is None:
            return None
        slot, value_word = known
        vword, vlen, value, pad = fw.WORD4.unpack_from(frame, value_at)
        if vword != value_word or vlen != 4 or pad or values[slot] is not None:
            return None
        values[slot] = value
        off = end
    return values


def _scan_v2(frame: bytes | bytearray | memoryview, off: int, stop: int) -> list[int | None] | None:
    values: list[int | None] = [None, None, None]
    while off < stop:
        if off + 16 > stop:
            return None
        word, length, value, pad = fw.WORD4.unpack_from(frame, off)
        slot = _V2.get(word)
        if slot is None or length != 4 or pad or values[slot] is not None:
            return None
        values[slot] = value
        off += 16
    return values


def payload_format(uid_len: int) -> str:
    """The ``struct`` format (no byte order) of a Create's Response Payload: its
    header, Object Type and Unique Identifier (of ``uid_len`` bytes)."""
    return "II" "IIi4x" f"II{uid_len}s{-uid_len % 8}x"


def payload_values(uid: bytes) -> tuple[int | bytes, ...]:
    """The values :func:`payload_format` packs, for a symmetric key ``uid``."""
    return (
        fw.RESPONSE_PAYLOAD, 24 + len(uid) + (-len(uid) % 8),
        fw.OBJECT_TYPE, 4, ObjectType.SYMMETRIC_KEY,
        fw.UID, len(uid), uid,
    )  # fmt: skip


class _Layout:
    """The whole Create response for one (batch id, identifier) length."""

    __slots__ = ("size", "st")

    def __init__(self, bid_len: int | None, uid_len: int) -> None:
        self.st = struct.Struct(fw.head_format(bid_len) + payload_format(uid_len))
        self.size = self.st.size

    def write(self, version: tuple[int, int], now: int, bid: bytes | None, uid: bytes) -> bytes:
        return self.st.pack(
            *fw.head(self.size, version, now, Operation.CREATE, bid), *payload_values(uid)
        )


# The attributes a new key is stored with, as keys.create stores them (the
# client's Usage Mask, then server_attrs.implied(), then Last Change Date), in
# their 2.x encoding: constant parts encoded once, the rest packed per key.
_USAGE_ITEM = struct.Struct(">IIi4x")
_DIGEST_ITEM = struct.Struct(">IIIIi4xII32sIIi4x")
_DATE_ITEM = struct.Struct(">IIq")
_FRESH = encode(Item.boolean(Tag.FRESH, True))
_RNG = encode(server_attrs.RNG)
_USAGE_WORD = _w(Tag.CRYPTOGRAPHIC_USAGE_MASK, _I)
_ORIGINAL = _w(Tag.ORIGINAL_CREATION_DATE, ItemType.DATE_TIME)
_CHANGED = _w(Tag.LAST_CHANGE_DATE, ItemType.DATE_TIME)
_DIGEST_HEAD = (
    _w(Tag.DIGEST, _S), 72,
    _w(Tag.HASHING_ALGORITHM, _E), 4, HashingAlgorithm.SHA_256,
    _w(Tag.DIGEST_VALUE, ItemType.BYTE_STRING), 32,
)  # fmt: skip
_DIGEST_TAIL = (_w(Tag.KEY_FORMAT_TYPE, _E), 4, KeyFormatType.RAW)


def _attributes(usage_mask: int | None, digest: bytes, now: int) -> bytes:
    body = b"".join(
        (
            b"" if usage_mask is None else _USAGE_ITEM.pack(_USAGE_WORD, 4, usage_mask),
            _DIGEST_ITEM.pack(*_DIGEST_HEAD, digest, *_DIGEST_TAIL),
            _FRESH,
            _DATE_ITEM.pack(_ORIGINAL, 8, now),
            _RNG,
            _DATE_ITEM.pack(_CHANGED, 8, now),
        )
    )
    return fw.HDR.pack(_ATTRIBUTES, len(body)) + body


def make(
    svc: Services,
    tenant: str,
    uid: str,
    *,
    alg: int,
    length: int,
    usage_mask: int | None,
    now: int,
) -> tuple[KeyRecord, SecretBytes] | None:
    """A new key (``alg`` and ``length`` checked by ``key_bytes``) and its record,
    as ``keys.create`` makes them; the caller wipes the key. None if the tenant's
    L3 refuses the wrap (the generic path reports it)."""
    key = generate(alg, length, "Create")
    wrapped = False
    try:
        digest = hashlib.sha256(key.view()).digest()
        l3_version, blob = svc.keyring.wrap(tenant, uid, key)
        wrapped = True
    except KryptonError:
        return None
    finally:
        if not wrapped:
            key.wipe()
    record = KeyRecord(
        uid=uid,
        tenant=tenant,
        object_type=ObjectType.SYMMETRIC_KEY,
        algorithm=alg,
        length=length,
        state=State.PRE_ACTIVE,
        l3_version=l3_version,
        wrapped=blob,
        attributes=_attributes(usage_mask, digest, now),
        created=now,
    )
    return record, key


class FastCreate:
    """The Create fast path of one dispatcher, with its response layouts.
    ``max_response_size``: the server's bound on a response; a Create whose answer
    would exceed it (or the request's own bound) is left to the generic path before
    any key is made."""

    __slots__ = ("_layouts", "_max_response")

    def __init__(self, *, max_response_size: int | None = None) -> None:
        self._layouts = fw.Layouts(_Layout)
        self._max_response = max_response_size

    async def answer(
        self, svc: Services, grant: Grant, frame: bytes | bytearray | memoryview, now: int
    ) -> bytes | None:
        """The complete response to a plain Create, or None: take the generic path."""
        req = scan(frame)
        if req is None or not grant.allows(Operation.CREATE):
            return None
        env = req.envelope
        version = (env.major, env.minor)
        if version not in fw.VERSIONS:
            return None
        alg, length = req.algorithm, req.length
        try:
            key_bytes(alg, length, "Create")
        except KryptonError:
            return None
        uid = svc.new_uid()
        uid_bytes = uid.encode("utf-8")
        layout = self._layouts.get(
            None if env.batch_id is None else len(env.batch_id), len(uid_bytes)
        )
        if env.max_response_size is not None and layout.size > env.max_response_size:
            return None
        if self._max_response is not None and layout.size > self._max_response:
            return None
        made = make(
            svc, grant.tenant, uid, alg=alg, length=length, usage_mask=req.usage_mask, now=now
        )
        if made is None:
            return None
        record, key = made
        key.wipe()
        try:
            await svc.store.put(record)
        except KryptonError:
            return None
        if svc.upstream is not None:
            svc.upstream.created()
        return layout.write(version, now, env.batch_id, uid_bytes)
