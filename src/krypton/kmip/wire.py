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
    out = bytearray()
    msg = w.begin(out, Tag.RESPONSE_MESSAGE)
    hdr = w.begin(out, Tag.RESPONSE_HEADER)
    pv = w.begin(out, Tag.PROTOCOL_VERSION)
    w.integer(out, Tag.PROTOCOL_VERSION_MAJOR, version.major)
    w.integer(out, Tag.PROTOCOL_VERSION_MINOR, version.minor)
    w.end(out, pv)
    w.datetime(out, Tag.TIME_STAMP, now)
    w.integer(out, Tag.BATCH_COUNT, len(items))
    w.end(out, hdr)
    for item in items:
        if item.raw is not None:
            encode_into(item.raw, out)
            continue
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
    w.end(out, msg)
    return bytes(out)
