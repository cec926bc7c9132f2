"""The hot-path writers produce exactly what the generic encoder would."""

from __future__ import annotations

from krypton.kmip.messages import ResponseItem, build_response
from krypton.kmip.versions import ProtocolVersion
from krypton.kmip.wire import encode_response
from krypton.ttlv import writer as w
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import Operation, ResultReason, ResultStatus
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag


def test_writer_matches_encoder_for_each_type() -> None:
    out = bytearray()
    s = w.begin(out, Tag.KEY_BLOCK)
    w.integer(out, Tag.CRYPTOGRAPHIC_LENGTH, -5)
    w.enum(out, Tag.KEY_FORMAT_TYPE, 0xFFFFFFFF)
    w.datetime(out, Tag.TIME_STAMP, 1_800_000_000)
    for n in range(10):
        w.text(out, Tag.NAME_VALUE, "é" * n)
        w.byte_string(out, Tag.KEY_MATERIAL, memoryview(bytes(range(n))))
    w.end(out, s)
    tree = Item.structure(
        Tag.KEY_BLOCK,
        Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, -5),
        Item.enum(Tag.KEY_FORMAT_TYPE, 0xFFFFFFFF),
        Item.datetime(Tag.TIME_STAMP, 1_800_000_000),
        *(
            x
            for n in range(10)
            for x in (
                Item.text(Tag.NAME_VALUE, "é" * n),
                Item.bytes_(Tag.KEY_MATERIAL, bytes(range(n))),
            )
        ),
    )
    assert bytes(out) == encode(tree)


def test_encode_response_matches_build_response() -> None:
    payload = Item.structure(Tag.RESPONSE_PAYLOAD, Item.text(Tag.UNIQUE_IDENTIFIER, "k-1"))
    relayed = Item.structure(
        Tag.BATCH_ITEM,
        Item.enum(Tag.OPERATION, Operation.DESTROY),
        Item.enum(Tag.RESULT_STATUS, ResultStatus.SUCCESS),
    )
    items = [
        ResponseItem(Operation.CREATE, b"\x01", payload=payload),
        ResponseItem(Operation.GET, None, encoded=encode(payload)),
        ResponseItem.failure(Operation.GET, b"\x03", ResultReason.ITEM_NOT_FOUND, "no such key"),
        ResponseItem.failure(None, None, ResultReason.INVALID_MESSAGE, "bad"),
        ResponseItem.relayed(relayed),
    ]
    for version in (ProtocolVersion(1, 0), ProtocolVersion(1, 4), ProtocolVersion(2, 1)):
        fast = encode_response(version, 1_800_000_000, items)
        assert fast == encode(build_response(version, 1_800_000_000, items))
        assert decode(fast).tag == Tag.RESPONSE_MESSAGE


def test_precompiled_raw_get_payload_matches_the_encoder() -> None:
    """The one writer of the Raw Get payload (gateway.engine.rawkey), as the generic Get
    uses it: the layout packed for the record, the key copied in at ``key_at``."""
    from krypton.gateway.engine.rawkey import raw_key_layout
    from krypton.model.record import KeyRecord
    from krypton.ttlv.enums import CryptographicAlgorithm, KeyFormatType, ObjectType

    for uid, key in (("k", b"\x01" * 16), ("0123456789abcdef" * 2 + "xyz", bytes(range(24)))):
        rec = KeyRecord(
            uid=uid,
            tenant="demo",
            object_type=ObjectType.SYMMETRIC_KEY,
            algorithm=CryptographicAlgorithm.AES,
            length=len(key) * 8,
            state=2,
            l3_version=1,
            wrapped=b"(wrapped)",
        )
        layout = raw_key_layout(len(uid.encode()), len(key))
        out = layout.write(uid.encode(), rec)
        out[layout.key_at : layout.key_at + layout.key_len] = key
        expected = Item.structure(
            Tag.RESPONSE_PAYLOAD,
            Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
            Item.text(Tag.UNIQUE_IDENTIFIER, uid),
            Item.structure(
                Tag.SYMMETRIC_KEY,
                Item.structure(
                    Tag.KEY_BLOCK,
                    Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
                    Item.structure(Tag.KEY_VALUE, Item.bytes_(Tag.KEY_MATERIAL, key)),
                    Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
                    Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, len(key) * 8),
                ),
            ),
        )
        assert bytes(out) == encode(expected)
