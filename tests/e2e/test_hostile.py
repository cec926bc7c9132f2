"""Hostile input (issue 2): whatever a client sends, the gateway answers or hangs up
within a second, keeps serving everyone else, and never logs key material.

One ``krypton dev`` process serves the whole module (short read and idle
timeouts, a small connection limit, debug logging so that every log line the
server can write is written and scanned). Every malformed message is one row
of ``CASES``: the bytes, the Result Reason the error response must carry, and
whether the server hangs up afterwards (a framing error loses the stream
position) or keeps serving the same connection (a message that was framed but
does not parse). After each row a fresh connection must Create + Get a key;
the keys a test received are looked for in the server's log, in raw, hex,
base64 and escaped form, when that test ends (the ``keys`` fixture).

Every socket has a timeout: a hang fails a test instead of blocking it.
"""

from __future__ import annotations

import base64
import contextlib
import random
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from tests.helpers.fixtures import DevStacks
from tests.helpers.servers import DevServer, recv_message

from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import (
    CryptographicAlgorithm,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

pytestmark = [pytest.mark.slow, pytest.mark.timeout(30)]

READ_TIMEOUT = 1.0
IDLE_TIMEOUT = 2.0
HANDSHAKE_TIMEOUT = 1.0
MAX_CONNECTIONS = 6
MAX_MESSAGE = 1 << 20
SWEEP_SLACK = 0.75  # the listener sweeps every 0.25 s; a loaded CI box needs headroom
ANSWER_WITHIN = 1.0
VENDOR_TAG = 0x540001
V = TypeVar("V")

ENV = {
    "KRYPTON_GATEWAY_LIMITS_READ_TIMEOUT": str(READ_TIMEOUT),
    "KRYPTON_GATEWAY_LIMITS_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
    "KRYPTON_GATEWAY_LIMITS_HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT),
    "KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "KRYPTON_GATEWAY_LIMITS_MAX_MESSAGE_SIZE": str(MAX_MESSAGE),
    "KRYPTON_GATEWAY_LOG_LEVEL": "debug",
}


@pytest.fixture(scope="module")
def srv(start_module_dev: DevStacks) -> DevServer:
    return start_module_dev(env=ENV)


@pytest.fixture
def keys(srv: DevServer) -> Iterator[list[bytes]]:
    """The keys the server hands out during one test; when the test ends, the
    server's log must hold none of them (in any of the forms of ``_forms``)."""
    got: list[bytes] = []
    yield got
    fresh_round_trip(srv, got)  # the server is done with what the test sent
    assert_not_logged(srv, got)


# -- building requests -------------------------------------------------------------
def request(
    *items: Item,
    count: int | None = None,
    version: tuple[int, int] = (1, 4),
    extra: Item | None = None,
) -> Item:
    header = [
        Item.structure(
            Tag.PROTOCOL_VERSION,
            Item.integer(Tag.PROTOCOL_VERSION_MAJOR, version[0]),
            Item.integer(Tag.PROTOCOL_VERSION_MINOR, version[1]),
        ),
    ]
    if extra is not None:
        header.append(extra)
    header.append(Item.integer(Tag.BATCH_COUNT, len(items) if count is None else count))
    return Item.structure(
        Tag.REQUEST_MESSAGE, Item.structure(Tag.REQUEST_HEADER, *header), *items
    )


def batch_item(op: int, payload: Item | None, batch_id: bytes | None = None) -> Item:
    children = [Item.enum(Tag.OPERATION, op)]
    if batch_id is not None:
        children.append(Item.bytes_(Tag.UNIQUE_BATCH_ITEM_ID, batch_id))
    if payload is not None:
        children.append(payload)
    return Item.structure(Tag.BATCH_ITEM, *children)


def payload(*children: Item) -> Item:
    return Item.structure(Tag.REQUEST_PAYLOAD, *children)


def attribute(name: str, value: Item) -> Item:
    return Item.structure(Tag.ATTRIBUTE, Item.text(Tag.ATTRIBUTE_NAME, name), value)


def create_payload(length: int = 256) -> Item:
    return payload(
        Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        Item.structure(
            Tag.TEMPLATE_ATTRIBUTE,
            attribute(
                "Cryptographic Algorithm",
                Item.enum(Tag.ATTRIBUTE_VALUE, CryptographicAlgorithm.AES),
            ),
            attribute("Cryptographic Length", Item.integer(Tag.ATTRIBUTE_VALUE, length)),
        ),
    )


def create_get(batch_prefix: bytes = b"") -> Item:
    """Create + Get in one batch: the Get uses the ID Placeholder the Create set."""
    return request(
        batch_item(Operation.CREATE, create_payload(), batch_prefix + b"create"),
        batch_item(Operation.GET, payload(), batch_prefix + b"get"),
    )


def discover(batch_id: bytes | None = None, extra: Item | None = None) -> Item:
    return request(batch_item(Operation.DISCOVER_VERSIONS, payload(), batch_id), extra=extra)


def header8(tag: int, typ: int, length: int) -> bytes:
    return struct.pack(">II", tag << 8 | typ, length)


def raw_item(tag: int, typ: int, value: bytes, length: int | None = None) -> bytes:
    """One hand-made TTLV item, zero-padded to 8 bytes, with any length field we like."""
    n = len(value) if length is None else length
    return header8(tag, typ, n) + value + bytes(-len(value) % 8)


def fixed4(tag: int, typ: int, value: int, pad: int = 0) -> bytes:
    """An Integer or Enumeration: 4 value bytes and 4 padding bytes (any we like)."""
    fmt = ">iI" if typ == ItemType.INTEGER else ">II"
    return header8(tag, typ, 4) + struct.pack(fmt, value, pad)


def patch(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, f"{old.hex()} occurs {data.count(old)} times"
    return data.replace(old, new)


def envelope(*inner: bytes) -> bytes:
    """A Request Message structure around hand-made children (lengths made to fit)."""
    body = b"".join(inner)
    return header8(Tag.REQUEST_MESSAGE, ItemType.STRUCTURE, len(body)) + body


def nested(depth: int, tag: int = Tag.REQUEST_PAYLOAD) -> bytes:
    """``depth`` structures, each the only child of the one before."""
    return b"".join(header8(tag, ItemType.STRUCTURE, 8 * (depth - 1 - i)) for i in range(depth))


# -- reading responses -------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    operation: int | None
    batch_id: bytes | None
    status: int
    reason: int | None
    message: str | None
    payload: Item | None


def field(item: Item, tag: int, kind: type[V]) -> V | None:
    child = item.find(tag)
    if child is None:
        return None
    assert isinstance(child.value, kind), child
    return child.value


def results(frame: bytes) -> list[Result]:
    """The batch items of one response message (whose header must add up)."""
    msg = decode(frame)
    assert msg.tag == Tag.RESPONSE_MESSAGE
    header = msg.find(Tag.RESPONSE_HEADER)
    assert header is not None
    items = list(msg.find_all(Tag.BATCH_ITEM))
    assert field(header, Tag.BATCH_COUNT, int) == len(items)
    out = []
    for bi in items:
        status = field(bi, Tag.RESULT_STATUS, int)
        assert status is not None
        out.append(
            Result(
                field(bi, Tag.OPERATION, int),
                field(bi, Tag.UNIQUE_BATCH_ITEM_ID, bytes),
                status,
                field(bi, Tag.RESULT_REASON, int),
                field(bi, Tag.RESULT_MESSAGE, str),
                bi.find(Tag.RESPONSE_PAYLOAD),
            )
        )
    return out


def key_of(result: Result) -> bytes:
    node = result.payload
    for tag in (Tag.SYMMETRIC_KEY, Tag.KEY_BLOCK, Tag.KEY_VALUE, Tag.KEY_MATERIAL):
        assert node is not None
        node = node.find(tag)
    assert node is not None
    assert isinstance(node.value, bytes)
    return node.value


def connect(srv: DevServer, timeout: float = 5.0) -> ssl.SSLSocket:
    sock = srv.connect(timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_by(sock: ssl.SSLSocket, deadline: float) -> bytes:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return recv_message(sock)
    except TimeoutError:
        pytest.fail("no response in time")


def assert_closed(sock: ssl.SSLSocket, deadline: float) -> None:
    """The server hangs up (EOF, close_notify or reset) before ``deadline``."""
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        data = sock.recv(4096)
    except TimeoutError:
        pytest.fail("the server did not close the connection in time")
    except (ConnectionError, ssl.SSLError):
        return
    assert data == b"", f"unexpected {len(data)} bytes instead of a close"


def drain_until_closed(sock: socket.socket, deadline: float) -> None:
    """Read whatever is in flight; the server must hang up before ``deadline``."""
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        while sock.recv(65536):
            assert time.monotonic() < deadline, "the server kept sending"
    except TimeoutError:
        pytest.fail("the server did not close the connection in time")
    except (ConnectionError, ssl.SSLError):
        pass


def round_trip(sock: ssl.SSLSocket, keys: list[bytes], within: float = ANSWER_WITHIN) -> None:
    sock.sendall(encode(create_get()))
    create, get = results(recv_by(sock, time.monotonic() + within))
    assert (create.status, get.status) == (ResultStatus.SUCCESS, ResultStatus.SUCCESS), (
        create,
        get,
    )
    key = key_of(get)
    assert len(key) == 32
    keys.append(key)


def fresh_round_trip(srv: DevServer, keys: list[bytes]) -> None:
    with connect(srv) as sock:
        round_trip(sock, keys)


# -- the malformed-message table -----------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    reason: ResultReason
    closes: bool
    operation: int | None = None  # echoed when only a batch item fails

    def param(self) -> object:
        return pytest.param(self, id=self.name)


IM = ResultReason.INVALID_MESSAGE
VALID = encode(discover())
BATCH_COUNT_1 = fixed4(Tag.BATCH_COUNT, ItemType.INTEGER, 1, 0)
VERSION_14 = encode(
    Item.structure(
        Tag.PROTOCOL_VERSION,
        Item.integer(Tag.PROTOCOL_VERSION_MAJOR, 1),
        Item.integer(Tag.PROTOCOL_VERSION_MINOR, 4),
    )
)
DISCOVER_ITEM = encode(batch_item(Operation.DISCOVER_VERSIONS, payload()))
HEADER_OF_HEADER = VALID[8:16]
HEADER_LEN = struct.unpack(">I", VALID[12:16])[0]


def with_header(*fields: bytes) -> bytes:
    body = b"".join(fields)
    return header8(Tag.REQUEST_HEADER, ItemType.STRUCTURE, len(body)) + body


def with_batch_count(count: bytes, *items: bytes) -> bytes:
    return envelope(with_header(VERSION_14, count), *items)


def op_item(op: bytes, *rest: bytes) -> bytes:
    body = op + b"".join(rest)
    return header8(Tag.BATCH_ITEM, ItemType.STRUCTURE, len(body)) + body


def correlation(value: bytes) -> bytes:
    """A Discover Versions request whose header carries a hand-made Client Correlation."""
    return with_batch_count_and(
        raw_item(Tag.CLIENT_CORRELATION_VALUE, ItemType.TEXT_STRING, value)
    )


def with_batch_count_and(extra: bytes) -> bytes:
    return envelope(with_header(VERSION_14, extra, BATCH_COUNT_1), DISCOVER_ITEM)


def _random(seed: int, n: int) -> bytes:
    data = random.Random(seed).randbytes(n)
    assert data[3] != ItemType.STRUCTURE, "this seed happens to start with a structure header"
    return data


ASYNC_ID = Tag.ASYNCHRONOUS_CORRELATION_VALUE
_OP = fixed4(Tag.OPERATION, ItemType.ENUMERATION, Operation.GET, 0)

CASES = [
    # Not a KMIP message at all: the stream cannot be resynchronised, so hang up.
    Case("random bytes", _random(2, 256), IM, closes=True),
    Case("random bytes, small", _random(3, 8), IM, closes=True),
    Case("wrong top-level tag (Response Message)", encode(
        Item.structure(Tag.RESPONSE_MESSAGE, *decode(VALID).children)), IM, closes=True),
    Case("wrong top-level tag (vendor)", b"\x54\x00\x01" + VALID[3:], IM, closes=True),
    Case("top-level item is not a structure",
         fixed4(Tag.REQUEST_MESSAGE, ItemType.INTEGER, 1, 0),
         IM, closes=True),
    Case("length field of 2 GiB (header only)",
         header8(Tag.REQUEST_MESSAGE, ItemType.STRUCTURE, 1 << 31), IM, closes=True),
    Case("length field of 4 GiB - 8 (header only)",
         header8(Tag.REQUEST_MESSAGE, ItemType.STRUCTURE, 0xFFFFFFF8), IM, closes=True),
    Case("message length not a multiple of 8",
         header8(Tag.REQUEST_MESSAGE, ItemType.STRUCTURE, 13) + bytes(16), IM, closes=True),
    # Framed, but the body does not parse: answer, then keep serving the connection.
    Case("random body under a valid header",
         header8(Tag.REQUEST_MESSAGE, ItemType.STRUCTURE, 248) + _random(4, 248), IM, closes=False),
    Case("empty Request Message", envelope(), IM, closes=False),
    Case("inner length overruns its parent", patch(
        VALID, HEADER_OF_HEADER, header8(Tag.REQUEST_HEADER, 1, HEADER_LEN + 64)),
        IM, closes=False),
    Case("inner length shorter than its children", patch(
        VALID, HEADER_OF_HEADER, header8(Tag.REQUEST_HEADER, 1, HEADER_LEN - 16)),
        IM, closes=False),
    Case("text length overruns its parent", envelope(
        with_header(VERSION_14, raw_item(Tag.CLIENT_CORRELATION_VALUE, ItemType.TEXT_STRING,
                                         b"abcdefgh", length=4000), BATCH_COUNT_1),
        DISCOVER_ITEM), IM, closes=False),
    Case("inner length 0xFFFFFFFF", patch(
        VALID, HEADER_OF_HEADER, header8(Tag.REQUEST_HEADER, 1, 0xFFFFFFFF)),
        IM, closes=False),
    Case("unknown type byte 0x00", patch(VALID, BATCH_COUNT_1[:4], b"\x42\x00\x0d\x00"),
         IM, closes=False),
    Case("unknown type byte 0x0C", patch(VALID, BATCH_COUNT_1[:4], b"\x42\x00\x0d\x0c"),
         IM, closes=False),
    Case("unknown type byte 0xFF", patch(VALID, BATCH_COUNT_1[:4], b"\x42\x00\x0d\xff"),
         IM, closes=False),
    Case("Batch Count as a Text String",
         with_batch_count(raw_item(Tag.BATCH_COUNT, ItemType.TEXT_STRING, b"1"), DISCOVER_ITEM),
         IM, closes=False),
    Case("Batch Count as a Long Integer",
         with_batch_count(raw_item(Tag.BATCH_COUNT, ItemType.LONG_INTEGER, struct.pack(">q", 1)),
                          DISCOVER_ITEM), IM, closes=False),
    Case("Protocol Version as an Integer", envelope(with_header(
        fixed4(Tag.PROTOCOL_VERSION, ItemType.INTEGER, 1, 0), BATCH_COUNT_1),
        DISCOVER_ITEM), IM, closes=False),
    Case("Request Header as an Enumeration", envelope(
        fixed4(Tag.REQUEST_HEADER, ItemType.ENUMERATION, 1, 0),
        DISCOVER_ITEM), IM, closes=False),
    Case("Batch Item as a Byte String",
         with_batch_count(BATCH_COUNT_1, raw_item(Tag.BATCH_ITEM, ItemType.BYTE_STRING, b"x" * 16)),
         IM, closes=False),
    Case("Operation as an Integer", with_batch_count(BATCH_COUNT_1, op_item(
        fixed4(Tag.OPERATION, ItemType.INTEGER, 1, 0), encode(payload()))),
        IM, closes=False),
    Case("Unique Batch Item ID as an Integer", with_batch_count(BATCH_COUNT_1, op_item(
        _OP, fixed4(Tag.UNIQUE_BATCH_ITEM_ID, ItemType.INTEGER, 1, 0),
        encode(payload()))), IM, closes=False),
    Case("Request Payload as a Text String", with_batch_count(BATCH_COUNT_1, op_item(
        _OP, raw_item(Tag.REQUEST_PAYLOAD, ItemType.TEXT_STRING, b"payload"))), IM, closes=False),
    Case("Batch Error Continuation Option as a Text String", with_batch_count_and(
        raw_item(Tag.BATCH_ERROR_CONTINUATION_OPTION, ItemType.TEXT_STRING, b"Continue")),
        IM, closes=False),
    Case("Client Correlation Value as an Integer",
         encode(discover(extra=Item.integer(Tag.CLIENT_CORRELATION_VALUE, 7))), IM, closes=False),
    Case("Maximum Response Size as a Text String",
         encode(discover(extra=Item.text(Tag.MAXIMUM_RESPONSE_SIZE, "4096"))), IM, closes=False),
    Case("Template-Attribute as an Integer", encode(request(batch_item(Operation.CREATE, payload(
        Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        Item.integer(Tag.TEMPLATE_ATTRIBUTE, 1))))), IM, closes=False, operation=Operation.CREATE),
    Case("Cryptographic Length as a Text String", encode(request(batch_item(
        Operation.CREATE, payload(*create_payload().children[:1], Item.structure(
            Tag.TEMPLATE_ATTRIBUTE,
            attribute("Cryptographic Algorithm",
                      Item.enum(Tag.ATTRIBUTE_VALUE, CryptographicAlgorithm.AES)),
            attribute("Cryptographic Length", Item.text(Tag.ATTRIBUTE_VALUE, "256"))))))),
        ResultReason.INVALID_FIELD, closes=False, operation=Operation.CREATE),
    Case("Unique Identifier as an Integer (Get)", encode(request(batch_item(
        Operation.GET, payload(Item.integer(Tag.UNIQUE_IDENTIFIER, 7))))),
        ResultReason.INVALID_FIELD, closes=False, operation=Operation.GET),
    Case("Protocol Version as an Integer (Discover Versions)", encode(request(batch_item(
        Operation.DISCOVER_VERSIONS, payload(Item.integer(Tag.PROTOCOL_VERSION, 1))))),
        IM, closes=False, operation=Operation.DISCOVER_VERSIONS),
    Case("Query Function as a Text String", encode(request(batch_item(
        Operation.QUERY, payload(Item.text(Tag.QUERY_FUNCTION, "Query Operations"))))),
        IM, closes=False, operation=Operation.QUERY),
    Case("Batch Count twice", with_batch_count(BATCH_COUNT_1 + BATCH_COUNT_1, DISCOVER_ITEM),
         IM, closes=False),
    Case("Integer with non-zero padding", with_batch_count(
        fixed4(Tag.BATCH_COUNT, ItemType.INTEGER, 1, 1), DISCOVER_ITEM),
        IM, closes=False),
    Case("Enumeration with non-zero padding", with_batch_count(BATCH_COUNT_1, op_item(
        fixed4(Tag.OPERATION, ItemType.ENUMERATION, 0x1E, 0xFF),
        encode(payload()))), IM, closes=False),
    Case("Text String with non-zero padding",
         patch(correlation(b"abc"), b"abc" + bytes(5), b"abc\x00\x00\x00\x00!"),
         IM, closes=False),
    Case("Text String without its padding", envelope(with_header(
        VERSION_14, header8(Tag.CLIENT_CORRELATION_VALUE, ItemType.TEXT_STRING, 3) + b"abc",
        BATCH_COUNT_1, bytes(5)), DISCOVER_ITEM), IM, closes=False),
    Case("Integer of length 8", with_batch_count(
        raw_item(Tag.BATCH_COUNT, ItemType.INTEGER, struct.pack(">q", 1)), DISCOVER_ITEM),
        IM, closes=False),
    Case("Boolean of value 2", with_batch_count_and(
        raw_item(Tag.BATCH_ORDER_OPTION, ItemType.BOOLEAN, struct.pack(">Q", 2))),
        IM, closes=False),
    Case("Batch Count 3 with one batch item",
         patch(VALID, BATCH_COUNT_1, fixed4(Tag.BATCH_COUNT, ItemType.INTEGER, 3)),
         IM, closes=False),
    Case("Batch Count 1 with two batch items", with_batch_count(
        BATCH_COUNT_1, DISCOVER_ITEM, DISCOVER_ITEM), IM, closes=False),
    Case("Batch Count -1", with_batch_count(
        fixed4(Tag.BATCH_COUNT, ItemType.INTEGER, -1, 0), DISCOVER_ITEM),
        IM, closes=False),
    Case("zero batch items (Batch Count 0)", encode(request(count=0)), IM, closes=False),
    Case("zero batch items (Batch Count 1)", encode(request(count=1)), IM, closes=False),
    Case("nesting 20,000 levels deep in a payload", with_batch_count(BATCH_COUNT_1, op_item(
        _OP, nested(20_000))), IM, closes=False),
    Case("nesting 20,000 levels deep at the top", envelope(nested(20_000, Tag.REQUEST_HEADER)),
         IM, closes=False),
    Case("10,000 batch items", encode(request(
        *[batch_item(Operation.DISCOVER_VERSIONS, payload())] * 10_000)), IM, closes=False),
    Case("1,025 batch items (one over the limit)", encode(request(
        *[batch_item(Operation.DISCOVER_VERSIONS, payload())] * 1025)), IM, closes=False),
    Case("invalid UTF-8 (0xFF 0xFE)", correlation(b"\xff\xfe"), IM, closes=False),
    Case("invalid UTF-8 (lone surrogate)", correlation(b"ok\xed\xa0\x80"), IM, closes=False),
    Case("invalid UTF-8 (overlong '/')", correlation(b"\xc0\xaf"), IM, closes=False),
    Case("invalid UTF-8 (truncated sequence)", correlation(b"euro \xe2\x82"), IM, closes=False),
    Case("invalid UTF-8 in an attribute name", patch(
        encode(create_get()), b"Cryptographic Length", b"Cryptographic L\xffngth"),
        IM, closes=False),
    Case("unknown operation 0x7FFF", encode(request(batch_item(0x7FFF, payload(), b"u1"))),
         ResultReason.OPERATION_NOT_SUPPORTED, closes=False, operation=0x7FFF),
    Case("unknown operation 0xFFFFFFFF", encode(request(batch_item(0xFFFFFFFF, payload()))),
         ResultReason.OPERATION_NOT_SUPPORTED, closes=False, operation=0xFFFFFFFF),
    Case("operation served nowhere (Poll)", encode(request(
        batch_item(Operation.POLL, payload(Item.bytes_(ASYNC_ID, b"1"))))),
        ResultReason.OPERATION_NOT_SUPPORTED, closes=False, operation=Operation.POLL),
    Case("missing payload (Create)", encode(request(batch_item(Operation.CREATE, None))),
         IM, closes=False),
    Case("missing payload (Get after Create)", encode(request(
        batch_item(Operation.CREATE, create_payload()), batch_item(Operation.GET, None))),
        IM, closes=False),
    Case("missing Operation", with_batch_count(BATCH_COUNT_1, op_item(
        encode(payload()))), IM, closes=False),
    Case("Request Header missing", envelope(DISCOVER_ITEM), IM, closes=False),
    Case("protocol major version 9", encode(request(
        batch_item(Operation.DISCOVER_VERSIONS, payload()), version=(9, 0))), IM, closes=False),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_hostile_message_is_answered(srv: DevServer, keys: list[bytes], case: Case) -> None:
    with connect(srv) as sock:
        start = time.monotonic()
        deadline = start + ANSWER_WITHIN
        sock.sendall(case.data)
        answers = results(recv_by(sock, deadline))
        assert len(answers) == 1, answers
        (answer,) = answers
        assert answer.status == ResultStatus.OPERATION_FAILED, answer
        assert answer.reason == case.reason, answer
        assert answer.operation == case.operation, answer
        assert answer.payload is None
        if case.closes:
            assert_closed(sock, deadline)
        else:
            round_trip(sock, keys)
        assert time.monotonic() - start < ANSWER_WITHIN + (0 if case.closes else 1.0)
    fresh_round_trip(srv, keys)


def test_message_that_carries_a_served_key_is_not_logged(
    srv: DevServer, keys: list[bytes]
) -> None:
    """Hostile messages built around real key bytes: the scan when the test ends must
    not find them."""
    fresh_round_trip(srv, keys)
    key = keys[-1]
    carriers = [
        # Framed; the key sits in a Byte String whose padding is broken.
        with_batch_count(BATCH_COUNT_1, op_item(
            _OP, raw_item(Tag.KEY_MATERIAL, ItemType.BYTE_STRING, key[:29] + b"\x00\x00\x00",
                          length=29)[:-3] + b"\x01\x02\x03")),
        # Framed; the key rides in a Register whose payload is not a valid object.
        encode(request(batch_item(Operation.REGISTER, payload(
            Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
            Item.bytes_(Tag.KEY_MATERIAL, key))))),
        # Text that is the key itself (not UTF-8) and its hex (valid UTF-8, wrong field).
        correlation(key),
        encode(request(batch_item(Operation.GET, payload(
            Item.text(Tag.UNIQUE_IDENTIFIER, key.hex()))))),
        # Not framed at all: the key bytes are the "header".
        key,
    ]
    for data in carriers:
        with connect(srv) as sock:
            sock.sendall(data)
            (answer,) = results(recv_by(sock, time.monotonic() + ANSWER_WITHIN))
            assert answer.status == ResultStatus.OPERATION_FAILED
    fresh_round_trip(srv, keys)


# -- framing and flow ------------------------------------------------------------------
def test_oversized_header_is_refused_without_the_body(srv: DevServer, keys: list[bytes]) -> None:
    with connect(srv) as sock:
        start = time.monotonic()
        sock.sendall(header8(Tag.REQUEST_MESSAGE, ItemType.STRUCTURE, MAX_MESSAGE))
        (answer,) = results(recv_by(sock, start + ANSWER_WITHIN))
        assert (answer.status, answer.reason) == (ResultStatus.OPERATION_FAILED, IM)
        assert_closed(sock, start + ANSWER_WITHIN)
    fresh_round_trip(srv, keys)


def test_message_of_exactly_max_size_is_served(srv: DevServer) -> None:
    # A vendor field in the header: ignored, and (unlike a correlation value) not echoed.
    small = len(encode(discover(b"big", Item.bytes_(VENDOR_TAG, b""))))
    big = encode(discover(b"big", Item.bytes_(VENDOR_TAG, b"x" * (MAX_MESSAGE - small))))
    assert len(big) == MAX_MESSAGE
    with connect(srv) as sock:
        sock.sendall(big[:8])
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # the header alone is acceptable: the server waits for the body
        sock.sendall(big[8:])
        (answer,) = results(recv_by(sock, time.monotonic() + 2 * ANSWER_WITHIN))
        assert (answer.status, answer.batch_id) == (ResultStatus.SUCCESS, b"big")


def test_pipelined_requests_are_answered_in_order(srv: DevServer, keys: list[bytes]) -> None:
    with connect(srv) as sock:
        sock.sendall(encode(create_get(b"first-")) + encode(create_get(b"second-")))
        deadline = time.monotonic() + ANSWER_WITHIN
        first, second = results(recv_by(sock, deadline)), results(recv_by(sock, deadline))
        assert [r.batch_id for r in first + second] == [
            b"first-create", b"first-get", b"second-create", b"second-get"
        ]
        assert all(r.status == ResultStatus.SUCCESS for r in first + second)
        keys.extend((key_of(first[1]), key_of(second[1])))
        assert key_of(first[1]) != key_of(second[1])


def test_many_pipelined_requests_in_one_write(srv: DevServer) -> None:
    """More than the listener queues before it stops reading (backpressure, then resume)."""
    n = 64
    with connect(srv) as sock:
        sock.sendall(b"".join(encode(discover(b"%d" % i)) for i in range(n)))
        deadline = time.monotonic() + 2 * ANSWER_WITHIN
        got = [results(recv_by(sock, deadline)) for _ in range(n)]
    assert [r.batch_id for (r,) in got] == [b"%d" % i for i in range(n)]
    assert all(r.status == ResultStatus.SUCCESS for (r,) in got)


def test_valid_request_then_garbage_in_one_write(srv: DevServer, keys: list[bytes]) -> None:
    """The request before the garbage is answered first; then the error; then the close."""
    with connect(srv) as sock:
        start = time.monotonic()
        sock.sendall(encode(create_get(b"ok-")) + b"\xde\xad\xbe\xef" * 4)
        first = results(recv_by(sock, start + ANSWER_WITHIN))
        assert [r.status for r in first] == [ResultStatus.SUCCESS, ResultStatus.SUCCESS]
        keys.append(key_of(first[1]))
        (err,) = results(recv_by(sock, start + ANSWER_WITHIN))
        assert (err.status, err.reason, err.operation) == (ResultStatus.OPERATION_FAILED, IM, None)
        assert_closed(sock, start + ANSWER_WITHIN)


def test_message_in_one_byte_writes(srv: DevServer, keys: list[bytes]) -> None:
    data = encode(create_get(b"slow-"))
    with connect(srv) as sock:
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
        create, get = results(recv_by(sock, time.monotonic() + ANSWER_WITHIN))
        assert (create.status, get.status) == (ResultStatus.SUCCESS, ResultStatus.SUCCESS)
        keys.append(key_of(get))


def test_steady_stream_across_frame_boundaries_is_not_a_stall(srv: DevServer) -> None:
    """Writes that always end mid-message, for longer than read_timeout: each message
    completes quickly, so the connection is healthy and must not be cut."""
    msgs = [encode(discover(b"%d" % i)) for i in range(60)]
    stream = b"".join(msgs)
    size = len(msgs[0])
    cuts = [size // 2 + i * size for i in range(len(msgs))]
    with connect(srv) as sock:
        start = time.monotonic()
        prev = 0
        for cut in [*cuts, len(stream)]:
            sock.sendall(stream[prev:cut])
            prev = cut
            time.sleep(0.04)
        assert time.monotonic() - start > READ_TIMEOUT + SWEEP_SLACK
        deadline = time.monotonic() + ANSWER_WITHIN
        got = [results(recv_by(sock, deadline)) for _ in msgs]
    assert [r.batch_id for (r,) in got] == [b"%d" % i for i in range(len(msgs))]


def test_heavy_pipelining_client_does_not_starve_others(
    srv: DevServer, keys: list[bytes]
) -> None:
    """One write holding a large batch and then hundreds of smaller ones: while the
    server is busy with the first, the rest pile up and arrive in one read. They
    must still be worked through one message at a time, interleaved with other
    clients, so a Discover Versions probe from another connection waits for about
    one of the hog's messages, never for the hog's whole backlog."""
    item = batch_item(Operation.DISCOVER_VERSIONS, payload())
    n = 300
    burst = encode(request(*[item] * 300)) + encode(request(*[item] * 40)) * n
    probe = encode(discover(b"probe"))
    frames: list[bytes] = []

    def hog_run(hog: ssl.SSLSocket) -> None:
        hog.sendall(burst)
        for _ in range(n + 1):  # raw frames only: decoding here would hold our GIL
            frames.append(recv_message(hog))

    with connect(srv, timeout=10) as hog, connect(srv) as other:
        round_trip(other, keys)
        hog_thread = threading.Thread(target=hog_run, args=(hog,), daemon=True)
        start = time.monotonic()
        hog_thread.start()
        latencies = []
        # Probe for a second at least, and on until the hog has all its answers (a
        # connection quiet for IDLE_TIMEOUT would rightly be closed meanwhile).
        while time.monotonic() - start < 1.0 or (
            hog_thread.is_alive() and time.monotonic() - start < 10.0
        ):
            t = time.monotonic()
            other.sendall(probe)
            (answer,) = results(recv_by(other, t + ANSWER_WITHIN))
            latencies.append(time.monotonic() - t)
            assert answer.status == ResultStatus.SUCCESS
        hog_thread.join(10)
        round_trip(other, keys)
    assert len(frames) == n + 1, "the hog did not get all its answers"
    assert all(r.status == ResultStatus.SUCCESS for f in frames for r in results(f))
    assert max(latencies) < 0.2, sorted(round(x, 3) for x in latencies)[-5:]


def _push(sock: ssl.SSLSocket, data: bytes, within: float, stalled_after: float) -> int:
    """Write ``data`` over and over without reading; stop after ``within`` seconds or
    once no byte has been accepted for ``stalled_after`` seconds. Bytes accepted."""
    sock.settimeout(0.1)
    start = last = time.monotonic()
    sent = 0
    while time.monotonic() - start < within and time.monotonic() - last < stalled_after:
        offset = sent % len(data)
        try:
            sent += sock.send(data[offset : offset + 65536])
        except TimeoutError:
            continue
        last = time.monotonic()
    return sent


def test_client_that_never_reads_its_answers_is_throttled_then_cut(
    srv: DevServer, keys: list[bytes]
) -> None:
    """Requests pipelined without reading a single answer (each answer as large as
    its request: the Client Correlation Value is echoed). Once answers back up the
    server must stop reading this client instead of buffering answers nobody reads,
    keep serving others, and drop the connection once stuck for idle_timeout."""
    msg = encode(discover(b"x", Item.text(Tag.CLIENT_CORRELATION_VALUE, "c" * 500_000)))
    rss = server_rss_mb(srv)
    raw = socket.create_connection((srv.host, srv.port), timeout=5)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    with srv.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
        sent = _push(sock, msg, within=3.0, stalled_after=0.5)
        blocked = time.monotonic()
        # Kernel buffers on both sides plus a bounded queue: tens of MB at most.
        assert sent < 64 << 20, f"the server kept reading ({sent >> 20} MB) from a stuck client"
        assert server_rss_mb(srv) - rss < 64
        fresh_round_trip(srv, keys)
        time.sleep(max(0.0, blocked + IDLE_TIMEOUT + SWEEP_SLACK - time.monotonic()))
        drain_until_closed(sock, time.monotonic() + ANSWER_WITHIN)
    fresh_round_trip(srv, keys)


def server_rss_mb(srv: DevServer) -> float:
    status = Path(f"/proc/{srv.proc.pid}/status")
    if not status.exists():
        pytest.skip("needs /proc to read the server's memory use")
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.fail("no VmRSS in /proc/<pid>/status")


def _send_until_closed(sock: ssl.SSLSocket, within: float) -> float | None:
    """Keep writing; seconds until the server's hang-up makes a write fail (None: never)."""
    sock.settimeout(0.2)
    start = time.monotonic()
    chunk = bytes(65536)
    try:
        while time.monotonic() - start < within:
            with contextlib.suppress(TimeoutError):
                sock.send(chunk)
    except (ConnectionError, ssl.SSLError):
        return time.monotonic() - start
    return None


@pytest.mark.parametrize(
    "first",
    [header8(Tag.REQUEST_MESSAGE, ItemType.STRUCTURE, 1 << 31), _random(6, 64)],
    ids=["oversized header", "random bytes"],
)
def test_client_that_keeps_sending_after_a_framing_error_is_cut(
    srv: DevServer, keys: list[bytes], first: bytes
) -> None:
    """After the error response the server hangs up; a peer that ignores that and
    keeps sending must not hold the connection open (nor the server's CPU) for long."""
    with connect(srv) as sock:
        sock.sendall(first)
        took = _send_until_closed(sock, within=3.0)
        assert took is not None, "the connection stayed open while the client kept sending"
        assert took < ANSWER_WITHIN + SWEEP_SLACK
    fresh_round_trip(srv, keys)


def closed_now(sock: ssl.SSLSocket) -> bool:
    """Without blocking: has the server hung up? (An answer instead fails the test.)"""
    if not select.select([sock], [], [], 0)[0]:
        return False
    sock.settimeout(0.02)
    try:
        data = sock.recv(4096)
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:  # a TLS record without application data (a session ticket)
        return False
    assert data == b"", "a connection that sent no whole message got an answer"
    return True


@pytest.mark.parametrize("sent", ["half a header", "half a message", "a byte every 0.2 s"])
def test_stalled_client_is_closed_and_delays_nobody(
    srv: DevServer, keys: list[bytes], sent: str
) -> None:
    """read_timeout runs from a message's first byte: neither stopping nor dribbling
    (progress, but no complete message) keeps a connection open."""
    data = encode(create_get(b"stall-"))
    dribble = sent == "a byte every 0.2 s"
    n = 4 if sent == "half a header" else 1 if dribble else len(data) // 2
    with connect(srv) as stalled, connect(srv) as other:
        round_trip(other, keys)
        stalled.sendall(data[:n])
        start = last_drip = time.monotonic()
        closed_at: float | None = None
        latencies = []
        while closed_at is None and time.monotonic() - start < READ_TIMEOUT + 2 * SWEEP_SLACK:
            t = time.monotonic()
            round_trip(other, keys)
            latencies.append(time.monotonic() - t)
            if closed_now(stalled):
                closed_at = time.monotonic()
            elif dribble and t - last_drip > 0.2:
                with contextlib.suppress(OSError):
                    stalled.sendall(data[n : n + 1])
                    n += 1
                last_drip = t
        assert closed_at is not None, "the stalled connection was not closed"
        assert READ_TIMEOUT - 0.1 <= closed_at - start <= READ_TIMEOUT + SWEEP_SLACK
        assert len(latencies) >= 5
        assert max(latencies) < 0.25, latencies
        round_trip(other, keys)


def test_idle_connection_is_closed_and_a_busy_one_is_not(srv: DevServer, keys: list[bytes]) -> None:
    with connect(srv) as silent, connect(srv) as busy:
        round_trip(silent, keys)
        start = last_busy = time.monotonic()
        closed_at: float | None = None
        while closed_at is None and time.monotonic() - start < IDLE_TIMEOUT + 2 * SWEEP_SLACK:
            if time.monotonic() - last_busy > 0.3:
                round_trip(busy, keys)
                last_busy = time.monotonic()
            if closed_now(silent):
                closed_at = time.monotonic()
            time.sleep(0.02)
        assert closed_at is not None, "the idle connection was not closed"
        assert IDLE_TIMEOUT - 0.1 <= closed_at - start <= IDLE_TIMEOUT + SWEEP_SLACK
        round_trip(busy, keys)


def _refused(srv: DevServer) -> bool:
    """Whether a new connection is turned away (closed without an answer)."""
    try:
        sock = connect(srv, timeout=ANSWER_WITHIN)
    except (ConnectionError, ssl.SSLError):
        return True
    with sock:
        try:
            sock.sendall(encode(discover()))
            sock.settimeout(ANSWER_WITHIN)
            data = sock.recv(4096)
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            pytest.fail("an extra connection was neither served nor closed")
        return data == b""


def test_connection_limit(srv: DevServer, keys: list[bytes]) -> None:
    held: list[ssl.SSLSocket] = []
    try:
        deadline = time.monotonic() + 3
        while len(held) < MAX_CONNECTIONS:
            # Connections of earlier tests may take a moment to be reaped.
            sock = connect(srv)
            try:
                round_trip(sock, keys)
            except (ConnectionError, ssl.SSLError, EOFError):
                sock.close()
                assert time.monotonic() < deadline, f"only {len(held)} connections accepted"
                time.sleep(0.1)
                continue
            held.append(sock)
        assert _refused(srv)
        assert _refused(srv)
        for sock in held:
            round_trip(sock, keys)
        held.pop().close()
        deadline = time.monotonic() + ANSWER_WITHIN
        while _refused(srv):
            assert time.monotonic() < deadline, "a freed slot was not reused"
            time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()


def test_plain_tcp_garbage_is_dropped(srv: DevServer, keys: list[bytes]) -> None:
    """Not even TLS: the handshake fails and the connection is closed at once."""
    with socket.create_connection((srv.host, srv.port), timeout=5) as raw:
        start = time.monotonic()
        raw.sendall(random.Random(5).randbytes(512))
        drain_until_closed(raw, start + ANSWER_WITHIN)
    fresh_round_trip(srv, keys)


def test_silent_tcp_client_is_dropped_after_handshake_timeout(
    srv: DevServer, keys: list[bytes]
) -> None:
    with socket.create_connection((srv.host, srv.port), timeout=5) as raw:
        start = time.monotonic()
        fresh_round_trip(srv, keys)
        drain_until_closed(raw, start + HANDSHAKE_TIMEOUT + SWEEP_SLACK)
        assert time.monotonic() - start >= HANDSHAKE_TIMEOUT - 0.1
    fresh_round_trip(srv, keys)


# -- the log and the process ------------------------------------------------------------
def _forms(key: bytes) -> list[bytes]:
    return [
        key,
        key.hex().encode(),
        key.hex().upper().encode(),
        base64.b64encode(key),
        base64.urlsafe_b64encode(key),
        base64.b64encode(key).rstrip(b"="),
        repr(key)[2:-1].encode(),
        # Any 12-byte window of the key, so a partial dump is caught too.
        *(key[i : i + 12].hex().encode() for i in range(0, len(key) - 11, 4)),
    ]


def assert_not_logged(srv: DevServer, keys: list[bytes]) -> None:
    low = Path(srv.log_path).read_bytes().lower()
    leaks = [k.hex()[:8] for k in keys for form in _forms(k) if form.lower() in low]
    assert not leaks, f"key material found in the server log (keys starting {leaks})"


def test_log_holds_no_key_material_and_server_is_alive(srv: DevServer, keys: list[bytes]) -> None:
    fresh_round_trip(srv, keys)
    assert srv.proc.poll() is None, "the server process died"
    assert Path(srv.log_path).read_bytes(), "debug logging should have written something"
    assert_not_logged(srv, keys)
