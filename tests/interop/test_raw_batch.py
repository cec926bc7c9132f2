"""What PyKMIP's high-level client cannot send: batches, placeholders, unknown operations.

Requests are built as TTLV trees with our codec and sent over a raw mutual-TLS
socket; each response is read twice, by our decoder and by PyKMIP's own
(``ResponseMessage.read``), so an independent parser confirms what the
gateway answered.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from kmip.core import enums as pk
from kmip.core.messages.messages import ResponseMessage
from kmip.core.utils import BytearrayStream
from tests.helpers.servers import DevServer, recv_message

from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import (
    CryptographicAlgorithm,
    CryptographicUsageMask,
    KeyFormatType,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    UniqueIdentifier,
)
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

OpenClient = Callable[..., Any]
PYKMIP_VERSION = {(1, 2): pk.KMIPVersion.KMIP_1_2, (2, 0): pk.KMIPVersion.KMIP_2_0}
USAGE = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT


# -- building requests -------------------------------------------------------------
def request(version: tuple[int, int], *items: Item) -> bytes:
    header = Item.structure(
        Tag.REQUEST_HEADER,
        Item.structure(
            Tag.PROTOCOL_VERSION,
            Item.integer(Tag.PROTOCOL_VERSION_MAJOR, version[0]),
            Item.integer(Tag.PROTOCOL_VERSION_MINOR, version[1]),
        ),
        Item.integer(Tag.BATCH_COUNT, len(items)),
    )
    return encode(Item.structure(Tag.REQUEST_MESSAGE, header, *items))


def batch_item(operation: int, batch_id: bytes, *fields: Item) -> Item:
    return Item.structure(
        Tag.BATCH_ITEM,
        Item.enum(Tag.OPERATION, operation),
        Item.bytes_(Tag.UNIQUE_BATCH_ITEM_ID, batch_id),
        Item.structure(Tag.REQUEST_PAYLOAD, *fields),
    )


def _v1_attribute(name: str, value: Item) -> Item:
    return Item.structure(
        Tag.ATTRIBUTE,
        Item.text(Tag.ATTRIBUTE_NAME, name),
        Item(Tag.ATTRIBUTE_VALUE, value.type, value.value),
    )


def create_aes(version: tuple[int, int], length: int, *extra_v2: Item) -> tuple[Item, ...]:
    """Create's payload fields: Template-Attribute for 1.x, Attributes for 2.x."""
    attrs = (
        Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
        Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, length),
        Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, USAGE),
    )
    names = ("Cryptographic Algorithm", "Cryptographic Length", "Cryptographic Usage Mask")
    if version[0] >= 2:
        holder = Item.structure(Tag.ATTRIBUTES, *attrs, *extra_v2)
    else:
        holder = Item.structure(
            Tag.TEMPLATE_ATTRIBUTE,
            *(_v1_attribute(n, a) for n, a in zip(names, attrs, strict=True)),
        )
    return (Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY), holder)


PLACEHOLDER_FORMS: dict[str, tuple[Item, ...]] = {
    "uid-omitted": (),
    "uid-placeholder-enum": (Item.enum(Tag.UNIQUE_IDENTIFIER, UniqueIdentifier.ID_PLACEHOLDER),),
}


# -- reading responses --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Answer:
    operation: int | None
    batch_id: bytes | None
    status: int
    reason: int | None
    payload: Item | None


def answers(data: bytes) -> list[Answer]:
    message = decode(data)
    assert message.tag == Tag.RESPONSE_MESSAGE
    header = message.find(Tag.RESPONSE_HEADER)
    assert header is not None
    items = list(message.find_all(Tag.BATCH_ITEM))
    count = header.find(Tag.BATCH_COUNT)
    assert count is not None
    assert count.value == len(items)
    out = []
    for item in items:
        op, bid = item.find(Tag.OPERATION), item.find(Tag.UNIQUE_BATCH_ITEM_ID)
        status, reason = item.find(Tag.RESULT_STATUS), item.find(Tag.RESULT_REASON)
        assert status is not None
        out.append(
            Answer(
                None if op is None else int(op.value),  # type: ignore[arg-type]
                None if bid is None else bytes(bid.value),  # type: ignore[arg-type]
                int(status.value),  # type: ignore[arg-type]
                None if reason is None else int(reason.value),  # type: ignore[arg-type]
                item.find(Tag.RESPONSE_PAYLOAD),
            )
        )
    return out


def text_field(payload: Item | None, tag: int) -> str:
    assert payload is not None
    item = payload.find(tag)
    assert item is not None
    assert isinstance(item.value, str)
    return item.value


def raw_key_material(payload: Item | None) -> bytes:
    assert payload is not None
    node: Item | None = payload
    for tag in (Tag.SYMMETRIC_KEY, Tag.KEY_BLOCK, Tag.KEY_VALUE, Tag.KEY_MATERIAL):
        assert node is not None
        node = node.find(tag)
    assert node is not None
    assert isinstance(node.value, bytes)
    return node.value


def pykmip_read(data: bytes, version: tuple[int, int]) -> Any:
    response = ResponseMessage()
    response.read(BytearrayStream(data), PYKMIP_VERSION[version])
    return response


def roundtrip(sock: ssl.SSLSocket, data: bytes) -> bytes:
    sock.sendall(data)
    return recv_message(sock)


# -- Create + Get in one batch ---------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "placeholder"),
    [((1, 2), "uid-omitted"), ((2, 0), "uid-omitted"), ((2, 0), "uid-placeholder-enum")],
    ids=["1.2-template-attribute", "2.0-attributes", "2.0-attributes-placeholder-enum"],
)
def test_create_and_get_in_one_batch(
    srv: DevServer, version: tuple[int, int], placeholder: str, pykmip: OpenClient
) -> None:
    """The omitted-uid forms are the gateway's Create + Get fast path
    (``krypton.gateway.fast.fastcreateget``), the placeholder enum its generic path."""
    message = request(
        version,
        batch_item(Operation.CREATE, b"\x01", *create_aes(version, 256)),
        batch_item(Operation.GET, b"\x02", *PLACEHOLDER_FORMS[placeholder]),
    )
    with srv.connect() as sock:
        data = roundtrip(sock, message)

    # Our decoder.
    create, get = answers(data)
    assert (create.operation, create.batch_id, create.status) == (
        Operation.CREATE,
        b"\x01",
        ResultStatus.SUCCESS,
    )
    assert (get.operation, get.batch_id, get.status) == (
        Operation.GET,
        b"\x02",
        ResultStatus.SUCCESS,
    )
    uid = text_field(create.payload, Tag.UNIQUE_IDENTIFIER)
    assert text_field(get.payload, Tag.UNIQUE_IDENTIFIER) == uid
    material = raw_key_material(get.payload)
    assert len(material) == 32

    # PyKMIP's decoder, independently.
    response = pykmip_read(data, version)
    assert response.response_header.protocol_version.major == version[0]
    assert response.response_header.protocol_version.minor == version[1]
    assert response.response_header.batch_count.value == 2
    pk_create, pk_get = response.batch_items
    assert pk_create.operation.value == pk.Operation.CREATE
    assert pk_get.operation.value == pk.Operation.GET
    assert pk_create.unique_batch_item_id.value == b"\x01"
    assert pk_get.unique_batch_item_id.value == b"\x02"
    for item in (pk_create, pk_get):
        assert item.result_status.value == pk.ResultStatus.SUCCESS
        assert item.result_reason is None
    assert pk_create.response_payload.object_type == pk.ObjectType.SYMMETRIC_KEY
    assert pk_create.response_payload.unique_identifier == uid
    assert pk_get.response_payload.unique_identifier == uid
    assert pk_get.response_payload.object_type == pk.ObjectType.SYMMETRIC_KEY
    block = pk_get.response_payload.secret.key_block
    assert block.key_format_type.value == pk.KeyFormatType.RAW
    assert block.cryptographic_algorithm.value == pk.CryptographicAlgorithm.AES
    assert block.cryptographic_length.value == 256
    assert block.key_value.key_material.value == material

    # The key is durable and the same when fetched on its own, on a new connection.
    with srv.connect() as sock:
        again = answers(
            roundtrip(
                sock,
                request(
                    version,
                    batch_item(Operation.GET, b"\x03", Item.text(Tag.UNIQUE_IDENTIFIER, uid)),
                ),
            )
        )
    assert [a.status for a in again] == [ResultStatus.SUCCESS]
    assert raw_key_material(again[0].payload) == material
    # And by PyKMIP's own client: the key the batch's Get gave is the key made.
    client = pykmip(PYKMIP_VERSION[version])
    assert client.get(uid).value == material


@pytest.mark.parametrize("version", [(1, 4), (2, 0)], ids=str)
def test_get_as_transparent_symmetric_key_is_the_raw_key(
    srv: DevServer, version: tuple[int, int]
) -> None:
    """Our decoder only: PyKMIP 0.11 cannot read a Transparent Symmetric Key's Key Material."""
    with srv.connect() as sock:
        uid = _create_one(sock, version)
        uid_field = Item.text(Tag.UNIQUE_IDENTIFIER, uid)
        transparent = Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY)
        raw, structured = answers(
            roundtrip(
                sock,
                request(
                    version,
                    batch_item(Operation.GET, b"r", uid_field),
                    batch_item(Operation.GET, b"t", uid_field, transparent),
                ),
            )
        )
    assert (raw.status, structured.status) == (ResultStatus.SUCCESS, ResultStatus.SUCCESS)
    assert structured.payload is not None
    block = structured.payload.find(Tag.SYMMETRIC_KEY)
    assert block is not None
    block = block.find(Tag.KEY_BLOCK)
    assert block is not None
    fmt = block.find(Tag.KEY_FORMAT_TYPE)
    assert fmt is not None
    assert fmt.value == KeyFormatType.TRANSPARENT_SYMMETRIC_KEY
    value = block.find(Tag.KEY_VALUE)
    material = None if value is None else value.find(Tag.KEY_MATERIAL)
    key = None if material is None else material.find(Tag.KEY)
    assert key is not None
    assert key.value == raw_key_material(raw.payload)
    assert len(key.value) == 16


def test_the_placeholder_does_not_outlive_its_message(srv: DevServer) -> None:
    with srv.connect() as sock:
        first = answers(
            roundtrip(
                sock,
                request(
                    (1, 4),
                    batch_item(Operation.CREATE, b"c", *create_aes((1, 4), 128)),
                    batch_item(Operation.GET, b"g"),
                ),
            )
        )
        assert [a.status for a in first] == [ResultStatus.SUCCESS] * 2
        second = answers(roundtrip(sock, request((1, 4), batch_item(Operation.GET, b"g2"))))
    assert len(second) == 1
    assert second[0].status == ResultStatus.OPERATION_FAILED
    assert second[0].payload is None


def test_three_creates_each_set_the_placeholder_for_the_next_get(srv: DevServer) -> None:
    version = (2, 0)
    items = []
    for n in range(3):
        items.append(batch_item(Operation.CREATE, bytes([n, 0]), *create_aes(version, 128)))
        items.append(batch_item(Operation.GET, bytes([n, 1])))
    with srv.connect() as sock:
        data = roundtrip(sock, request(version, *items))
    got = answers(data)
    assert [a.status for a in got] == [ResultStatus.SUCCESS] * 6
    uids = [text_field(a.payload, Tag.UNIQUE_IDENTIFIER) for a in got]
    assert uids[0::2] == uids[1::2]
    assert len(set(uids)) == 3
    pk_items = pykmip_read(data, version).batch_items
    assert [i.response_payload.unique_identifier for i in pk_items] == uids


# -- unserved operations ---------------------------------------------------------------
def _create_one(sock: ssl.SSLSocket, version: tuple[int, int]) -> str:
    (created,) = answers(
        roundtrip(
            sock, request(version, batch_item(Operation.CREATE, b"c", *create_aes(version, 128)))
        )
    )
    assert created.status == ResultStatus.SUCCESS
    return text_field(created.payload, Tag.UNIQUE_IDENTIFIER)


@pytest.mark.parametrize("version", [(1, 0), (1, 4), (2, 0), (2, 1)], ids=str)
@pytest.mark.parametrize(
    "operation", [Operation.ARCHIVE, Operation.MAC, 0xFF], ids=["archive", "mac", "0xFF"]
)
def test_unserved_operation_is_not_supported_and_the_connection_stays_open(
    srv: DevServer, version: tuple[int, int], operation: int
) -> None:
    with srv.connect() as sock:
        uid = _create_one(sock, version)
        uid_field = Item.text(Tag.UNIQUE_IDENTIFIER, uid)
        (refused,) = answers(
            roundtrip(sock, request(version, batch_item(operation, b"x", uid_field)))
        )
        (got,) = answers(
            roundtrip(sock, request(version, batch_item(Operation.GET, b"y", uid_field)))
        )

    assert refused.operation == operation
    assert refused.batch_id == b"x"
    assert refused.status == ResultStatus.OPERATION_FAILED
    assert refused.reason == ResultReason.OPERATION_NOT_SUPPORTED
    assert refused.payload is None
    assert got.status == ResultStatus.SUCCESS
    assert len(raw_key_material(got.payload)) == 16


def test_unserved_operation_decodes_in_pykmip(srv: DevServer) -> None:
    version = (1, 2)
    with srv.connect() as sock:
        uid = _create_one(sock, version)
        data = roundtrip(
            sock,
            request(
                version,
                batch_item(Operation.MAC, b"a", Item.text(Tag.UNIQUE_IDENTIFIER, uid)),
            ),
        )
    (item,) = pykmip_read(data, version).batch_items
    assert item.operation.value == pk.Operation.MAC
    assert item.result_status.value == pk.ResultStatus.OPERATION_FAILED
    assert item.result_reason.value == pk.ResultReason.OPERATION_NOT_SUPPORTED


def test_batch_stops_at_an_unserved_operation(srv: DevServer) -> None:
    """Batch Error Continuation Option defaults to Stop: nothing after the failure runs."""
    version = (1, 4)
    with srv.connect() as sock:
        uid = _create_one(sock, version)
        uid_field = Item.text(Tag.UNIQUE_IDENTIFIER, uid)
        got = answers(
            roundtrip(
                sock,
                request(
                    version,
                    batch_item(Operation.GET, b"1", uid_field),
                    batch_item(Operation.ARCHIVE, b"2", uid_field),
                    batch_item(Operation.GET, b"3", uid_field),
                ),
            )
        )
    assert [(a.batch_id, a.status) for a in got[:2]] == [
        (b"1", ResultStatus.SUCCESS),
        (b"2", ResultStatus.OPERATION_FAILED),
    ]
    assert all(a.batch_id != b"3" or a.status != ResultStatus.SUCCESS for a in got)


# -- 2.x attributes the server does not know ----------------------------------------------
def test_create_with_an_unknown_attribute_tag_is_invalid_field(srv: DevServer) -> None:
    version = (2, 0)
    unknown = Item.text(0x4201FF, "not an attribute")
    with srv.connect() as sock:
        (refused,) = answers(
            roundtrip(
                sock,
                request(
                    version, batch_item(Operation.CREATE, b"c", *create_aes(version, 128, unknown))
                ),
            )
        )
        # The connection is still good.
        _create_one(sock, version)
    assert refused.status == ResultStatus.OPERATION_FAILED
    assert refused.reason == ResultReason.INVALID_FIELD
