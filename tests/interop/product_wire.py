"""Raw KMIP 1.x requests as real products write them, and strict readings of the answers.

Used by the ``test_clients_*`` modules. Every builder writes the fields in the
order, with the types, the product's own encoder uses (libkmip for the Percona
products, kms-message for libmongocrypt, the issue text for the closed
appliances); nothing is normalised. :class:`Session` sends one request message
and reads one response message, on a new TLS connection per call when the
product does that (``per_call=True``) or on one kept connection.

Each :class:`Reply` is read three ways, the way the products read it:

* our decoder, into :class:`Answer` values (status, reason, payload);
* PyKMIP 0.11's decoder in the answer's protocol version
  (``Reply.pykmip()``), which rejects a structure with bytes it does not
  expect: an independent parser, and a stand-in for the products' own
  sequential C decoders;
* :func:`assert_only_tags_of`, which fails on any tag the protocol version
  does not define: a 1.0 client's parser cannot skip a field it has no name for.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kmip.core import enums as pk
from kmip.core.messages.messages import ResponseMessage
from kmip.core.utils import BytearrayStream
from tests.helpers.servers import DevServer, recv_message

from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import (
    NameType,
    ObjectType,
    Operation,
    ResultStatus,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

Version = tuple[int, int]

PYKMIP_VERSION: dict[Version, Any] = {
    (1, 0): pk.KMIPVersion.KMIP_1_0,
    (1, 1): pk.KMIPVersion.KMIP_1_1,
    (1, 2): pk.KMIPVersion.KMIP_1_2,
    (1, 3): pk.KMIPVersion.KMIP_1_3,
    (1, 4): pk.KMIPVersion.KMIP_1_4,
}

# The highest tag each 1.x version defines (KMIP 1.0-1.4 tag tables; PyKMIP's
# Tags enum is sectioned the same way). A 1.x parser has no entry for a later one.
LAST_TAG: dict[Version, int] = {
    (1, 0): 0x4200A1,
    (1, 1): 0x4200B7,
    (1, 2): 0x4200D3,
    (1, 3): 0x4200F7,
    (1, 4): 0x420124,
}


# -- requests ------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    """Request header fields besides Protocol Version and Batch Count, in libkmip's order."""

    max_response_size: int | None = None
    time_stamp: bool = False


def request(version: Version, header: Header, *items: Item) -> bytes:
    fields = [
        Item.structure(
            Tag.PROTOCOL_VERSION,
            Item.integer(Tag.PROTOCOL_VERSION_MAJOR, version[0]),
            Item.integer(Tag.PROTOCOL_VERSION_MINOR, version[1]),
        )
    ]
    if header.max_response_size is not None:
        fields.append(Item.integer(Tag.MAXIMUM_RESPONSE_SIZE, header.max_response_size))
    if header.time_stamp:
        fields.append(Item.datetime(Tag.TIME_STAMP, int(time.time())))
    fields.append(Item.integer(Tag.BATCH_COUNT, len(items)))
    return encode(
        Item.structure(Tag.REQUEST_MESSAGE, Item.structure(Tag.REQUEST_HEADER, *fields), *items)
    )


def op(operation: int, *payload: Item, batch_id: bytes | None = None) -> Item:
    head = [Item.enum(Tag.OPERATION, operation)]
    if batch_id is not None:
        head.append(Item.bytes_(Tag.UNIQUE_BATCH_ITEM_ID, batch_id))
    return Item.structure(Tag.BATCH_ITEM, *head, Item.structure(Tag.REQUEST_PAYLOAD, *payload))


def attr(name: str, value: Item, index: int | None = None) -> Item:
    """A 1.x Attribute: Attribute Name, [Attribute Index], Attribute Value."""
    out = [Item.text(Tag.ATTRIBUTE_NAME, name)]
    if index is not None:
        out.append(Item.integer(Tag.ATTRIBUTE_INDEX, index))
    out.append(Item(Tag.ATTRIBUTE_VALUE, value.type, value.value))
    return Item.structure(Tag.ATTRIBUTE, *out)


def name_value(text: str) -> Item:
    return Item.structure(
        Tag.ATTRIBUTE_VALUE,
        Item.text(Tag.NAME_VALUE, text),
        Item.enum(Tag.NAME_TYPE, NameType.UNINTERPRETED_TEXT_STRING),
    )


def integer(value: int) -> Item:
    return Item.integer(Tag.ATTRIBUTE_VALUE, value)


def enum(value: int) -> Item:
    return Item.enum(Tag.ATTRIBUTE_VALUE, value)


def text(value: str) -> Item:
    return Item.text(Tag.ATTRIBUTE_VALUE, value)


def template(*attributes: Item) -> Item:
    return Item.structure(Tag.TEMPLATE_ATTRIBUTE, *attributes)


def uid_field(uid: str) -> Item:
    return Item.text(Tag.UNIQUE_IDENTIFIER, uid)


def key_block(fmt: int, material: bytes, *tail: Item) -> Item:
    """Key Format Type, Key Value { Key Material } (no attributes inside), then ``tail``."""
    return Item.structure(
        Tag.KEY_BLOCK,
        Item.enum(Tag.KEY_FORMAT_TYPE, fmt),
        Item.structure(Tag.KEY_VALUE, Item.bytes_(Tag.KEY_MATERIAL, material)),
        *tail,
    )


def register(object_type: int, attrs: Item, obj: Item, batch_id: bytes | None = None) -> Item:
    return op(
        Operation.REGISTER, Item.enum(Tag.OBJECT_TYPE, object_type), attrs, obj, batch_id=batch_id
    )


def with_uid(operation: int, uid: str, *rest: Item, batch_id: bytes | None = None) -> Item:
    return op(operation, uid_field(uid), *rest, batch_id=batch_id)


def get_attributes(uid: str, *names: str, batch_id: bytes | None = None) -> Item:
    return with_uid(
        Operation.GET_ATTRIBUTES,
        uid,
        *(Item.text(Tag.ATTRIBUTE_NAME, n) for n in names),
        batch_id=batch_id,
    )


def revoke(uid: str, code: int, message: str | None = None, occurred: int | None = None) -> Item:
    """libkmip's order: Unique Identifier, Revocation Reason, Compromise Occurrence Date."""
    reason = [Item.enum(Tag.REVOCATION_REASON_CODE, code)]
    if message is not None:
        reason.append(Item.text(Tag.REVOCATION_MESSAGE, message))
    tail = [] if occurred is None else [Item.datetime(Tag.COMPROMISE_OCCURRENCE_DATE, occurred)]
    return with_uid(Operation.REVOKE, uid, Item.structure(Tag.REVOCATION_REASON, *reason), *tail)


def locate(
    *attributes: Item,
    maximum: int | None = None,
    offset: int | None = None,
    storage_mask: Item | None = None,
) -> Item:
    """Locate as libkmip writes it: Maximum Items, Offset Items, Storage Status Mask, Attributes."""
    head: list[Item] = []
    if maximum is not None:
        head.append(Item.integer(Tag.MAXIMUM_ITEMS, maximum))
    if offset is not None:
        head.append(Item.integer(Tag.OFFSET_ITEMS, offset))
    if storage_mask is not None:
        head.append(storage_mask)
    return op(Operation.LOCATE, *head, *attributes)


def object_type_attr(object_type: int) -> Item:
    return attr("Object Type", enum(object_type))


# -- responses -----------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    operation: int | None
    batch_id: bytes | None
    status: int
    reason: int | None
    message: str | None
    payload: Item | None

    @property
    def ok(self) -> bool:
        return self.status == ResultStatus.SUCCESS

    def field(self, tag: int) -> Any:
        assert self.payload is not None, f"no payload (status {self.status}, {self.message})"
        item = self.payload.find(tag)
        assert item is not None, f"payload has no 0x{tag:06X}"
        return item.value

    @property
    def uid(self) -> str:
        value = self.field(Tag.UNIQUE_IDENTIFIER)
        assert isinstance(value, str)
        return value

    def all(self, tag: int) -> list[Any]:
        assert self.payload is not None
        return [c.value for c in self.payload.find_all(tag)]


@dataclass
class Reply:
    version: Version
    data: bytes
    message: Item = field(init=False)
    answers: list[Answer] = field(init=False)

    def __post_init__(self) -> None:
        self.message = decode(self.data)
        assert self.message.tag == Tag.RESPONSE_MESSAGE
        header = self.message.children[0]
        assert header.tag == Tag.RESPONSE_HEADER
        pv = header.find(Tag.PROTOCOL_VERSION)
        assert pv is not None
        major, minor = pv.find(Tag.PROTOCOL_VERSION_MAJOR), pv.find(Tag.PROTOCOL_VERSION_MINOR)
        assert major is not None and minor is not None
        assert (major.value, minor.value) == self.version, "answered in another version"
        items = list(self.message.children[1:])
        assert all(c.tag == Tag.BATCH_ITEM for c in items)
        count = header.find(Tag.BATCH_COUNT)
        assert count is not None and count.value == len(items)
        self.answers = [_answer(i) for i in items]

    def one(self) -> Answer:
        """The only batch item: libkmip and kms-message read exactly one."""
        assert len(self.answers) == 1, f"{len(self.answers)} batch items"
        return self.answers[0]

    def ok(self) -> Answer:
        answer = self.one()
        assert answer.ok, f"failed: reason {answer.reason}: {answer.message}"
        return answer

    def pykmip(self) -> Any:
        """The response as PyKMIP's decoder reads it in this version (raises if it cannot)."""
        response = ResponseMessage()
        response.read(BytearrayStream(self.data), PYKMIP_VERSION[self.version])
        return response


def _answer(item: Item) -> Answer:
    def get(tag: int) -> Any:
        found = item.find(tag)
        return None if found is None else found.value

    return Answer(
        get(Tag.OPERATION),
        get(Tag.UNIQUE_BATCH_ITEM_ID),
        get(Tag.RESULT_STATUS),
        get(Tag.RESULT_REASON),
        get(Tag.RESULT_MESSAGE),
        item.find(Tag.RESPONSE_PAYLOAD),
    )


def walk(item: Item) -> Iterator[Item]:
    yield item
    if item.type is ItemType.STRUCTURE:
        for child in item.children:
            yield from walk(child)


def assert_only_tags_of(reply: Reply, version: Version | None = None) -> None:
    """No tag the protocol version does not define, anywhere in the response."""
    last = LAST_TAG[version or reply.version]
    late = sorted({f"0x{i.tag:06X}" for i in walk(reply.message) if i.tag > last})
    assert not late, f"tags a KMIP {reply.version} parser does not know: {late}"


def v1_attributes(answer: Answer) -> dict[str, list[Item]]:
    """A 1.x Get Attributes payload as {name: [values]}."""
    assert answer.payload is not None
    out: dict[str, list[Item]] = {}
    for a in answer.payload.find_all(Tag.ATTRIBUTE):
        name = a.find(Tag.ATTRIBUTE_NAME)
        value = a.find(Tag.ATTRIBUTE_VALUE)
        assert name is not None and value is not None
        out.setdefault(str(name.value), []).append(value)
    return out


def material(answer: Answer, object_tag: int) -> bytes:
    """Key Material (a Byte String) of a Get answer, and its Key Value holds nothing else."""
    obj = answer.payload.find(object_tag) if answer.payload is not None else None
    assert obj is not None, f"no 0x{object_tag:06X} in the Get answer"
    block = obj.find(Tag.KEY_BLOCK)
    assert block is not None
    value = block.find(Tag.KEY_VALUE)
    assert value is not None and value.type is ItemType.STRUCTURE
    assert [c.tag for c in value.children] == [Tag.KEY_MATERIAL], "Key Value holds more"
    key = value.children[0].value
    assert isinstance(key, bytes)
    return key


# -- the connection ------------------------------------------------------------------
class Session:
    """One product's way of talking: its version, header fields, connection habit."""

    def __init__(
        self,
        srv: DevServer,
        version: Version,
        header: Header | None = None,
        *,
        per_call: bool = True,
    ) -> None:
        self.srv, self.version, self.header = srv, version, header or Header()
        self.per_call = per_call
        self._sock: ssl.SSLSocket | None = None
        self.connections = 0

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def shutdown(self) -> None:
        """End the kept connection as Boost.Asio's ``async_shutdown`` does: send a TLS
        close_notify and read the server's (raises if the server just drops the link)."""
        assert self._sock is not None
        self._sock.unwrap().close()
        self._sock = None

    def send(self, *items: Item, version: Version | None = None) -> Reply:
        v = version or self.version
        data = request(v, self.header, *items)
        if self.per_call:
            self.connections += 1
            with self.srv.connect() as sock:
                sock.sendall(data)
                return Reply(v, recv_message(sock))
        if self._sock is None:
            self.connections += 1
            self._sock = self.srv.connect()
        self._sock.sendall(data)
        return Reply(v, recv_message(self._sock))


OBJECT_TAG = {
    ObjectType.SYMMETRIC_KEY: Tag.SYMMETRIC_KEY,
    ObjectType.SECRET_DATA: Tag.SECRET_DATA,
    ObjectType.PRIVATE_KEY: Tag.PRIVATE_KEY,
    ObjectType.PUBLIC_KEY: Tag.PUBLIC_KEY,
}
