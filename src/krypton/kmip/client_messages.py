"""The client's side of the message layer: build requests, read responses (sans-I/O).

Used by our own tools (``krypton bench``, the conformance runner, tests); the
server never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from krypton.errors import InvalidMessage
from krypton.kmip.attributes import Attribute, attributes_v2, to_v1
from krypton.kmip.messages import ResponseItem, fields
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.enums import (
    BatchErrorContinuationOption,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    NameType,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

_S = ItemType.STRUCTURE


def request_message(
    version: ProtocolVersion,
    items: Sequence[Item],
    *,
    continuation: BatchErrorContinuationOption | None = None,
    max_response_size: int | None = None,
    time_stamp: int | None = None,
    batch_count: int | None = None,
) -> Item:
    """``batch_count`` overrides the count of ``items`` (to send a wrong one)."""
    header: list[Item] = [
        Item.structure(
            Tag.PROTOCOL_VERSION,
            Item.integer(Tag.PROTOCOL_VERSION_MAJOR, version.major),
            Item.integer(Tag.PROTOCOL_VERSION_MINOR, version.minor),
        )
    ]
    if max_response_size is not None:
        header.append(Item.integer(Tag.MAXIMUM_RESPONSE_SIZE, max_response_size))
    if continuation is not None:
        header.append(Item.enum(Tag.BATCH_ERROR_CONTINUATION_OPTION, continuation))
    if time_stamp is not None:
        header.append(Item.datetime(Tag.TIME_STAMP, time_stamp))
    count = len(items) if batch_count is None else batch_count
    header.append(Item.integer(Tag.BATCH_COUNT, count))
    return Item(Tag.REQUEST_MESSAGE, _S, (Item(Tag.REQUEST_HEADER, _S, tuple(header)), *items))


def batch_item(operation: Operation, payload: Item | None, batch_id: bytes | None = None) -> Item:
    out = [Item.enum(Tag.OPERATION, operation)]
    if batch_id is not None:
        out.append(Item.bytes_(Tag.UNIQUE_BATCH_ITEM_ID, batch_id))
    if payload is not None:
        out.append(payload)
    return Item(Tag.BATCH_ITEM, _S, tuple(out))


def payload(*children: Item) -> Item:
    return Item(Tag.REQUEST_PAYLOAD, _S, children)


def aes_attributes(
    length: int = 256,
    *,
    name: str | None = None,
    usage: int = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT,
) -> list[Attribute]:
    attrs = [
        Attribute(
            "Cryptographic Algorithm",
            Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
        ),
        Attribute("Cryptographic Length", Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, length)),
        Attribute("Cryptographic Usage Mask", Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, usage)),
    ]
    if name is not None:
        attrs.append(
            Attribute(
                "Name",
                Item.structure(
                    Tag.NAME,
                    Item.text(Tag.NAME_VALUE, name),
                    Item.enum(Tag.NAME_TYPE, NameType.UNINTERPRETED_TEXT_STRING),
                ),
            )
        )
    return attrs


def create_item(
    version: ProtocolVersion, attrs: Sequence[Attribute], batch_id: bytes | None = None
) -> Item:
    if version.v2:
        body = attributes_v2(attrs)
    else:
        body = Item(Tag.TEMPLATE_ATTRIBUTE, _S, tuple(to_v1(a) for a in attrs))
    return batch_item(
        Operation.CREATE,
        payload(Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY), body),
        batch_id,
    )


def get_item(uid: str | None = None, batch_id: bytes | None = None) -> Item:
    children = () if uid is None else (Item.text(Tag.UNIQUE_IDENTIFIER, uid),)
    return batch_item(Operation.GET, payload(*children), batch_id)


@dataclass(frozen=True, slots=True)
class Response:
    version: ProtocolVersion
    time_stamp: int
    items: tuple[ResponseItem, ...]


def _int_of(f: dict[int, Item], tag: int) -> int | None:
    item = f.get(tag)
    return int(item.value) if item is not None and isinstance(item.value, int) else None


def parse_response(message: Item) -> Response:
    if message.tag != Tag.RESPONSE_MESSAGE or not message.children:
        raise InvalidMessage("not a Response Message")
    header = fields(message.children[0], "response header")
    pv = header.get(Tag.PROTOCOL_VERSION)
    if pv is None:
        raise InvalidMessage("response header: no Protocol Version")
    pvf = fields(pv, "Protocol Version")
    version = ProtocolVersion(
        _int_of(pvf, Tag.PROTOCOL_VERSION_MAJOR) or 0, _int_of(pvf, Tag.PROTOCOL_VERSION_MINOR) or 0
    )
    items: list[ResponseItem] = []
    for raw in message.children[1:]:
        f = fields(raw, "response batch item")
        bid = f.get(Tag.UNIQUE_BATCH_ITEM_ID)
        msg = f.get(Tag.RESULT_MESSAGE)
        reason = _int_of(f, Tag.RESULT_REASON)
        items.append(
            ResponseItem(
                operation=_int_of(f, Tag.OPERATION),
                batch_id=bid.value if bid is not None and isinstance(bid.value, bytes) else None,
                status=ResultStatus(_int_of(f, Tag.RESULT_STATUS) or 0),
                reason=ResultReason(reason) if reason is not None else None,
                message=msg.value if msg is not None and isinstance(msg.value, str) else None,
                payload=f.get(Tag.RESPONSE_PAYLOAD),
            )
        )
    return Response(version, _int_of(header, Tag.TIME_STAMP) or 0, tuple(items))


def key_material(get_payload: Item) -> bytes:
    """The key bytes of a Get response payload (Raw or Transparent Symmetric Key)."""
    obj = get_payload.find(Tag.SYMMETRIC_KEY)
    block = obj.find(Tag.KEY_BLOCK) if obj is not None else None
    value = block.find(Tag.KEY_VALUE) if block is not None else None
    material = value.find(Tag.KEY_MATERIAL) if value is not None else None
    if material is not None and material.type is _S:
        material = material.find(Tag.KEY)
    if material is None or not isinstance(material.value, bytes):
        raise InvalidMessage("Get response: no symmetric key material")
    return material.value


def unique_identifier(response_payload: Item) -> str:
    uid = response_payload.find(Tag.UNIQUE_IDENTIFIER)
    if uid is None or not isinstance(uid.value, str):
        raise InvalidMessage("response payload: no Unique Identifier")
    return uid.value
