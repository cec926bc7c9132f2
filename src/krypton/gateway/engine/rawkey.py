"""The Get response payload of a symmetric key in Raw format: its one writer.

How this works
--------------
Get of a symmetric key kept with the default attributes (:func:`plain_symmetric`:
not Sensitive, Extractable, kept in Raw) is nearly every request a gateway
serves. Its payload is written by one precompiled ``struct`` per (identifier
length, key length), :class:`RawKeyLayout`: every header and fixed field in one
``pack_into``; the key is then copied in from the unwrapped buffer at
``key_at``. The generic Get (:mod:`krypton.gateway.engine.keys`) packs the
payload alone (:meth:`RawKeyLayout.write`); the Get fast path
(:mod:`krypton.gateway.fast.fastget`) appends the same format and fields to its
response envelope's, so both write the same bytes (the tests compare them with
the ``ttlv.writer`` path and with each other).
"""

from __future__ import annotations

import struct
from functools import lru_cache

from krypton.model.record import KeyRecord
from krypton.ttlv.codec import encode
from krypton.ttlv.enums import KeyFormatType
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag


def _word(tag: int, itype: ItemType) -> int:
    return tag << 8 | itype


_PAYLOAD = _word(Tag.RESPONSE_PAYLOAD, ItemType.STRUCTURE)
_OBJECT_TYPE = _word(Tag.OBJECT_TYPE, ItemType.ENUMERATION)
_UID = _word(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING)
_SYMMETRIC_KEY = _word(Tag.SYMMETRIC_KEY, ItemType.STRUCTURE)
_KEY_BLOCK = _word(Tag.KEY_BLOCK, ItemType.STRUCTURE)
_FORMAT = _word(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION)
_KEY_VALUE = _word(Tag.KEY_VALUE, ItemType.STRUCTURE)
_KEY_MATERIAL = _word(Tag.KEY_MATERIAL, ItemType.BYTE_STRING)
_ALGORITHM = _word(Tag.CRYPTOGRAPHIC_ALGORITHM, ItemType.ENUMERATION)
_LENGTH = _word(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER)


class RawKeyLayout:
    """The Raw symmetric-key Get payload for one (identifier length, key length):
    ``fmt`` (a ``struct`` format without byte order), its ``size``, where the
    key goes (``key_at``, from the payload's start) and :meth:`fields`."""

    __slots__ = ("a", "fmt", "key_at", "key_len", "size", "st")

    def __init__(self, uid_len: int, key_len: int) -> None:
        pu, pk = -uid_len % 8, -key_len % 8
        self.fmt = (
            "II"  # Response Payload
            "IIII"  # Object Type
            f"II{uid_len}s{pu}x"  # Unique Identifier
            "IIII"  # Symmetric Key, Key Block
            "IIII"  # Key Format Type
            "IIII"  # Key Value, Key Material headers
            f"{key_len + pk}x"  # the key, copied in afterwards
            "IIII"  # Cryptographic Algorithm
            "IIi4x"  # Cryptographic Length
        )
        self.st = struct.Struct(">" + self.fmt)
        self.size = self.st.size
        self.key_len = key_len
        self.a = 32 + uid_len + pu  # where the Symmetric Key structure starts
        self.key_at = self.a + 48

    def fields(self, uid: bytes, rec: KeyRecord) -> tuple[int | bytes, ...]:
        """The values :attr:`fmt` packs, for the key record ``rec`` (identifier ``uid``)."""
        n, a, k = self.size, self.a, self.key_len
        return (
            _PAYLOAD, n - 8,
            _OBJECT_TYPE, 4, rec.object_type, 0,
            _UID, len(uid), uid,
            _SYMMETRIC_KEY, n - a - 8,
            _KEY_BLOCK, n - a - 16,
            _FORMAT, 4, KeyFormatType.RAW, 0,
            _KEY_VALUE, 8 + k + (-k % 8),
            _KEY_MATERIAL, k,
            _ALGORITHM, 4, rec.algorithm, 0,
            _LENGTH, 4, rec.length,
        )  # fmt: skip

    def write(self, uid: bytes, rec: KeyRecord) -> bytearray:
        """The payload alone, the key's bytes still zero (copy it in at ``key_at``)."""
        out = bytearray(self.size)
        self.st.pack_into(out, 0, *self.fields(uid, rec))
        return out


@lru_cache(maxsize=64)  # identifiers are ours: a handful of shapes
def raw_key_layout(uid_len: int, key_len: int) -> RawKeyLayout:
    return RawKeyLayout(uid_len, key_len)


# A symmetric key whose attribute blob holds none of these encodings has the
# defaults (Sensitive False, Extractable True, Key Format Type Raw): Get then
# serves it without decoding its attributes. Any of them present (or the same
# bytes inside another value) only means the blob is read.
_SENSITIVE, _NOT_EXTRACTABLE, _TRANSPARENT = (
    encode(Item.boolean(Tag.SENSITIVE, True)),
    encode(Item.boolean(Tag.EXTRACTABLE, False)),
    encode(Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY)),
)


def plain_symmetric(rec: KeyRecord) -> bool:
    """True when a symmetric key's stored attributes cannot change how Get serves it."""
    a = rec.attributes
    return not (_SENSITIVE in a or _NOT_EXTRACTABLE in a or _TRANSPARENT in a)
