"""Response messages written straight to bytes (the hot-path twin of ``build_response``).

``encode_response`` produces exactly the bytes of
``encode(build_response(...))`` — the tests compare them — without building
the message as an Item tree: the header and each batch item's fixed fields
are written with :mod:`krypton.ttlv.writer`; a payload is either an Item
(encoded in place) or bytes a handler already wrote (``ResponseItem.encoded``).
"""

from __future__ import annotations

from collections.abc import Sequence

from krypton.kmip.messages import ResponseItem
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv import writer as w
from krypton.ttlv.codec import encode_into
from krypton.ttlv.tags import Tag


def encode_response(
    version: ProtocolVersion,
    now: int,
    items: Sequence[ResponseItem],
) -> bytes:
    out = begin_response(version, now, len(items))
    for item in items:
        encode_item(item, out)
    return end_response(out)


def begin_response(version: ProtocolVersion, now: int, count: int) -> bytearray:
    """A response message's start, up to its first batch item: :func:`encode_item`
    appends each item, :func:`end_response` closes it (for a caller that takes
    turns between items)."""
    out = bytearray()
    w.begin(out, Tag.RESPONSE_MESSAGE)
    hdr = w.begin(out, Tag.RESPONSE_HEADER)
    pv = w.begin(out, Tag.PROTOCOL_VERSION)
    w.integer(out, Tag.PROTOCOL_VERSION_MAJOR, version.major)
    w.integer(out, Tag.PROTOCOL_VERSION_MINOR, version.minor)
    w.end(out, pv)
    w.datetime(out, Tag.TIME_STAMP, now)
    w.integer(out, Tag.BATCH_COUNT, count)
    w.end(out, hdr)
    return out


def encode_item(item: ResponseItem, out: bytearray) -> None:
    if item.raw is not None:
        encode_into(item.raw, out)
        return
    bi = w.begin(out, Tag.BATCH_ITEM)
    if item.operation is not None:
        w.enum(out, Tag.OPERATION, item.operation)
    if item.batch_id is not None:
        w.byte_string(out, Tag.UNIQUE_BATCH_ITEM_ID, item.batch_id)
    w.enum(out, Tag.RESULT_STATUS, item.status)
    if item.reason is not None:
        w.enum(out, Tag.RESULT_REASON, item.reason)
    if item.message is not None:
        w.text(out, Tag.RESULT_MESSAGE, item.message)
    if item.encoded is not None:
        out += item.encoded
    elif item.payload is not None:
        encode_into(item.payload, out)
    w.end(out, bi)


def end_response(out: bytearray) -> bytes:
    w.end(out, 0)
    return bytes(out)
