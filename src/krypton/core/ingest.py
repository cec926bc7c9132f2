"""SyncKeys ingest: the Locate indexes of a synced record, decoding only what they need.

How this works
--------------
A synced record's attribute blob (a KMIP 2.x ``Attributes`` structure, TTLV)
is stored as the very bytes the gateway MAC'd; the Core reads it again only
when an operation needs the attributes. What the Core needs at once is the
Locate side tables' part of it: the Names, Object Groups and custom
(vendor) attributes (:func:`krypton.core.engine.objects.index_fields`). A
key made by a plain Create carries none of them, yet decoding its blob into
items and attributes was most of the Core's CPU per synced key.

:func:`index_of` walks the blob's top-level item headers only (3-byte tag,
type byte, 4-byte length; every value padded to 8 bytes). When the blob
frames exactly — one structure whose children fill it to the byte, each
with a known type, a fixed-size type with its size, a tag the attribute
tables know — and no child is a ``Name``, an ``Object Group`` or an
``Attribute`` (a custom one), the indexes are empty and nothing is decoded.
Anything else takes the full decode and parse, as every blob did before:
an indexed attribute is read from it, and a blob that does not frame, or
names an attribute the tables do not know, fails the same way it did.

The walk does not check what the full decode checks inside a value (text
as UTF-8, nested structures): the Core does not read those values here, and
the blob is covered by the record MAC checked before it is stored
(:func:`krypton.core.records.check_arriving`), so it is stored exactly as
the gateway made it, and decoded (and checked) when an operation reads it.
"""

from __future__ import annotations

import struct

from krypton.core.engine.objects import index_fields
from krypton.core.records import Index
from krypton.kmip.attributes import parse_attributes
from krypton.ttlv.codec import decode
from krypton.ttlv.item import ItemType
from krypton.ttlv.tags import SPEC_NAME_BY_TAG, Tag

NO_INDEX: Index = ((), (), ())

_HEADER = struct.Struct(">II")  # (tag << 8 | type, length)
_STRUCTURE = int(ItemType.STRUCTURE)
# type -> its value's length (None: any); a type not listed is not TTLV
_SIZE: dict[int, int | None] = {
    ItemType.STRUCTURE: None, ItemType.INTEGER: 4, ItemType.LONG_INTEGER: 8,
    ItemType.BIG_INTEGER: None, ItemType.ENUMERATION: 4, ItemType.BOOLEAN: 8,
    ItemType.TEXT_STRING: None, ItemType.BYTE_STRING: None, ItemType.DATE_TIME: 8,
    ItemType.INTERVAL: 4, ItemType.DATE_TIME_EXTENDED: 8,
}  # fmt: skip
# the children a Locate index is made of: these take the full parse
_INDEXED = frozenset((Tag.NAME, Tag.OBJECT_GROUP, Tag.ATTRIBUTE))
# the top-level tags that need no decoding: every known attribute but those
_STORED_ONLY = frozenset(SPEC_NAME_BY_TAG) - _INDEXED


def index_of(blob: bytes) -> Index:
    """(names, groups, custom) of an attribute blob, as the full parse finds them."""
    if not blob:
        return NO_INDEX
    if _stored_only(blob):
        return NO_INDEX
    return index_fields(parse_attributes(decode(blob)))


def _stored_only(blob: bytes) -> bool:
    """True if ``blob`` frames exactly and has no child an index is made of."""
    end = len(blob)
    if end < 8:
        return False
    unpack, size_of, stored_only = _HEADER.unpack_from, _SIZE.get, _STORED_ONLY
    word, length = unpack(blob, 0)
    if word & 0xFF != _STRUCTURE or 8 + length != end:
        return False
    pos = 8
    while pos < end:
        if end - pos < 8:
            return False
        word, length = unpack(blob, pos)
        kind = word & 0xFF
        if word >> 8 not in stored_only or kind not in _SIZE:
            return False
        size = size_of(kind)
        if size is not None and length != size:
            return False
        pos += 8 + ((length + 7) & ~7)
    return pos == end
