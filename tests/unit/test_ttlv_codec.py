"""TTLV codec and framing: spec vectors (KMIP 1.4 §9.1.2) and strict-decoding rejections."""

from __future__ import annotations

import struct
import time

import pytest

from krypton.errors import InvalidField, InvalidMessage, LimitExceeded, MessageTooLarge
from krypton.ttlv.codec import (
    DEFAULT_LIMITS,
    DecodeError,
    EncodeError,
    Limits,
    Placeholder,
    decode,
    encode,
    encode_into,
)
from krypton.ttlv.framing import HEADER_SIZE, Framer, FramingError, message_length
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

T = 0x420020


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


# -- KMIP 1.4 §9.1.2 "Examples", byte for byte ------------------------------------
SPEC_VECTORS = [
    pytest.param(
        Item(T, ItemType.INTEGER, 8), "42 00 20 | 02 | 00 00 00 04 | 00 00 00 08 00 00 00 00",
        id="integer-8",
    ),
    pytest.param(
        Item(T, ItemType.LONG_INTEGER, 123456789000000000),
        "42 00 20 | 03 | 00 00 00 08 | 01 B6 9B 4B A5 74 92 00",
        id="long-integer",
    ),
    pytest.param(
        Item(T, ItemType.BIG_INTEGER, 1234567890000000000000000000),
        "42 00 20 | 04 | 00 00 00 10 | 00 00 00 00 03 FD 35 EB 6B C2 DF 46 18 08 00 00",
        id="big-integer",
    ),
    pytest.param(
        Item(T, ItemType.ENUMERATION, 255), "42 00 20 | 05 | 00 00 00 04 | 00 00 00 FF 00 00 00 00",
        id="enumeration-255",
    ),
    pytest.param(
        Item(T, ItemType.BOOLEAN, True), "42 00 20 | 06 | 00 00 00 08 | 00 00 00 00 00 00 00 01",
        id="boolean-true",
    ),
    pytest.param(
        Item(T, ItemType.TEXT_STRING, "Hello World"),
        "42 00 20 | 07 | 00 00 00 0B | 48 65 6C 6C 6F 20 57 6F 72 6C 64 00 00 00 00 00",
        id="text-hello-world",
    ),
    pytest.param(
        Item(T, ItemType.BYTE_STRING, b"\x01\x02\x03"),
        "42 00 20 | 08 | 00 00 00 03 | 01 02 03 00 00 00 00 00",
        id="byte-string",
    ),
    pytest.param(
        # Friday, March 14, 2008, 11:56:40 GMT
        Item(T, ItemType.DATE_TIME, 1205495800),
        "42 00 20 | 09 | 00 00 00 08 | 00 00 00 00 47 DA 67 F8",
        id="date-time",
    ),
    pytest.param(
        Item(T, ItemType.INTERVAL, 10 * 86400),
        "42 00 20 | 0A | 00 00 00 04 | 00 0D 2F 00 00 00 00 00",
        id="interval-10-days",
    ),
    pytest.param(
        Item.structure(T, Item.enum(0x420004, 254), Item.integer(0x420005, 255)),
        "42 00 20 | 01 | 00 00 00 20 | 42 00 04 | 05 | 00 00 00 04 | 00 00 00 FE 00 00 00 00"
        " | 42 00 05 | 02 | 00 00 00 04 | 00 00 00 FF 00 00 00 00",
        id="structure",
    ),
]


@pytest.mark.parametrize(("item", "wire"), SPEC_VECTORS)
def test_spec_example_encodes_byte_exact(item: Item, wire: str) -> None:
    assert encode(item) == h(wire)


@pytest.mark.parametrize(("item", "wire"), SPEC_VECTORS)
def test_spec_example_decodes(item: Item, wire: str) -> None:
    decoded = decode(h(wire))
    assert decoded == item
    assert decoded.type is item.type
    assert type(decoded.value) is type(item.value)


@pytest.mark.parametrize(("item", "wire"), SPEC_VECTORS)
def test_decode_accepts_bytearray_and_memoryview(item: Item, wire: str) -> None:
    raw = h(wire)
    assert decode(bytearray(raw)) == item
    assert decode(memoryview(b"xx" + raw)[2:]) == item


def test_date_time_extended_and_negative_values_round_trip() -> None:
    items = [
        Item(T, ItemType.DATE_TIME_EXTENDED, 1_205_495_800_123_456),
        Item(T, ItemType.INTEGER, -(1 << 31)),
        Item(T, ItemType.LONG_INTEGER, -1),
        Item(T, ItemType.BIG_INTEGER, -1),
        Item(T, ItemType.BIG_INTEGER, 0),
        Item(T, ItemType.BIG_INTEGER, 1 << 63),  # needs a sign byte: 16 bytes
        Item(T, ItemType.ENUMERATION, 0x80000001),
        Item(T, ItemType.BOOLEAN, False),
        Item(T, ItemType.TEXT_STRING, ""),
        Item(T, ItemType.TEXT_STRING, "Grüße 🔑"),
        Item(T, ItemType.BYTE_STRING, b""),
        Item(T, ItemType.BYTE_STRING, bytes(range(16))),
        Item.structure(T),
    ]
    for item in items:
        assert decode(encode(item)) == item
    assert encode(Item(T, ItemType.BIG_INTEGER, -1))[8:] == b"\xff" * 8
    assert len(encode(Item(T, ItemType.BIG_INTEGER, 1 << 63))) == 8 + 16


def test_tag_enum_and_plain_int_encode_the_same() -> None:
    a = Item.text(Tag.UNIQUE_IDENTIFIER, "x")
    b = Item.text(0x420094, "x")
    assert encode(a) == encode(b)
    assert decode(encode(a)).tag == Tag.UNIQUE_IDENTIFIER


def test_encode_into_appends() -> None:
    out = bytearray(b"prefix")
    encode_into(Item.integer(T, 8), out)
    assert bytes(out) == b"prefix" + encode(Item.integer(T, 8))


# -- strict decoding ----------------------------------------------------------------
def hdr(tag: int, typ: int, length: int) -> bytes:
    return struct.pack(">II", tag << 8 | typ, length)


REJECTED: dict[str, tuple[str, bytes]] = {
    "empty": ("shorter than", b""),
    "short-header": ("shorter than", b"\x42\x00\x20\x02"),
    "unknown-type-0": ("unknown item type", hdr(T, 0x00, 0)),
    "unknown-type-0c": ("unknown item type", hdr(T, 0x0C, 0)),
    "integer-length-8": ("length 8, expected 4", hdr(T, 0x02, 8) + bytes(8)),
    "enumeration-length-2": ("length 2, expected 4", hdr(T, 0x05, 2) + bytes(8)),
    "interval-length-0": ("length 0, expected 4", hdr(T, 0x0A, 0)),
    "long-integer-length-4": ("length 4, expected 8", hdr(T, 0x03, 4) + bytes(8)),
    "boolean-length-1": ("length 1, expected 8", hdr(T, 0x06, 1) + b"\x01" + bytes(7)),
    "boolean-value-2": ("neither 0 nor 1", hdr(T, 0x06, 8) + (2).to_bytes(8, "big")),
    "date-time-length-4": ("length 4, expected 8", hdr(T, 0x09, 4) + bytes(8)),
    "date-time-extended-length-16": ("length 16, expected 8", hdr(T, 0x0B, 16) + bytes(16)),
    "big-integer-length-0": ("Big Integer length", hdr(T, 0x04, 0)),
    "big-integer-length-12": ("Big Integer length", hdr(T, 0x04, 12) + bytes(16)),
    "integer-nonzero-pad": ("padding", hdr(T, 0x02, 4) + b"\x00\x00\x00\x08\x00\x00\x00\x01"),
    "text-nonzero-pad": ("padding", hdr(T, 0x07, 3) + b"abc\x00\x00\x00\x00\x01"),
    "bytes-nonzero-pad": ("padding", hdr(T, 0x08, 1) + b"\x01\xff" + bytes(6)),
    "text-invalid-utf8": ("UTF-8", hdr(T, 0x07, 2) + b"\xc3\x28" + bytes(6)),
    "text-surrogate": ("UTF-8", hdr(T, 0x07, 3) + b"\xed\xa0\x80" + bytes(5)),
    "missing-padding": ("does not match", hdr(T, 0x07, 3) + b"abc"),
    "trailing-bytes": ("does not match", hdr(T, 0x02, 4) + bytes(8) + bytes(8)),
    "length-beyond-data": ("does not match", hdr(T, 0x08, 64) + bytes(8)),
    "structure-length-not-multiple-of-8": (
        "multiple of 8",
        hdr(T, 0x01, 12) + hdr(T, 0x02, 4) + bytes(8),
    ),
    # the text item would fit in the message but not in its parent structure
    "child-overruns-structure": (
        "offset 16: value overruns",
        hdr(T, 0x01, 56)
        + hdr(T, 0x01, 16)
        + hdr(T, 0x07, 16)
        + bytes(8)
        + (hdr(T, 0x02, 4) + bytes(8)) * 2,
    ),
    "structure-overruns-parent": (
        "offset 8: structure length overruns",
        hdr(T, 0x01, 16) + hdr(T, 0x01, 24) + bytes(8),
    ),
}


@pytest.mark.parametrize(("why", "data"), REJECTED.values(), ids=list(REJECTED))
def test_strict_decoding_rejects(why: str, data: bytes) -> None:
    with pytest.raises(DecodeError, match=why):
        decode(data)


def test_structure_children_exactly_filling_is_accepted() -> None:
    data = hdr(T, 0x01, 32) + hdr(T, 0x02, 4) + bytes(8) + hdr(T, 0x07, 1) + b"a" + bytes(7)
    item = decode(data)
    assert [c.type for c in item.children] == [ItemType.INTEGER, ItemType.TEXT_STRING]


def nested(depth: int) -> bytes:
    """``depth`` nested empty-ish structures, built without recursion."""
    out = hdr(T, 0x02, 4) + bytes(8)
    for _ in range(depth):
        out = hdr(T, 0x01, len(out)) + out
    return out


def test_depth_limit_allows_exactly_max_depth() -> None:
    item = decode(nested(DEFAULT_LIMITS.max_depth))
    assert item.type is ItemType.STRUCTURE
    with pytest.raises(LimitExceeded):
        decode(nested(DEFAULT_LIMITS.max_depth + 1))


def test_twenty_thousand_deep_nesting_fails_fast() -> None:
    data = nested(20_000)
    limits = Limits(max_message_size=len(data))
    start = time.perf_counter()
    with pytest.raises(LimitExceeded):
        decode(data, limits)
    assert time.perf_counter() - start < 0.5


def test_item_count_limit() -> None:
    child = hdr(T, 0x02, 4) + bytes(8)
    data = hdr(T, 0x01, 10 * 16) + child * 10
    assert len(decode(data, Limits(max_items=11)).children) == 10
    with pytest.raises(LimitExceeded):
        decode(data, Limits(max_items=10))


def test_message_size_limit() -> None:
    data = encode(Item.bytes_(T, bytes(100)))
    assert decode(data, Limits(max_message_size=len(data))).value == bytes(100)
    with pytest.raises(MessageTooLarge):
        decode(data, Limits(max_message_size=len(data) - 1))


def test_limit_errors_are_invalid_message() -> None:
    assert issubclass(LimitExceeded, InvalidMessage)
    assert issubclass(MessageTooLarge, InvalidMessage)
    assert issubclass(DecodeError, InvalidMessage)
    assert issubclass(EncodeError, InvalidField)


# -- encoding validation ---------------------------------------------------------------
BAD_ITEMS = {
    "integer-too-big": Item(T, ItemType.INTEGER, 1 << 31),
    "integer-too-small": Item(T, ItemType.INTEGER, -(1 << 31) - 1),
    "integer-bool": Item(T, ItemType.INTEGER, True),
    "integer-str": Item(T, ItemType.INTEGER, "8"),
    "enumeration-negative": Item(T, ItemType.ENUMERATION, -1),
    "enumeration-too-big": Item(T, ItemType.ENUMERATION, 1 << 32),
    "interval-negative": Item(T, ItemType.INTERVAL, -1),
    "long-too-big": Item(T, ItemType.LONG_INTEGER, 1 << 63),
    "date-time-bytes": Item(T, ItemType.DATE_TIME, b"\x00"),
    "boolean-int": Item(T, ItemType.BOOLEAN, 1),
    "text-bytes": Item(T, ItemType.TEXT_STRING, b"abc"),
    "text-surrogate": Item(T, ItemType.TEXT_STRING, "\ud800"),
    "bytes-str": Item(T, ItemType.BYTE_STRING, "abc"),
    "big-integer-float": Item(T, ItemType.BIG_INTEGER, 1.5),  # type: ignore[arg-type]
    "structure-not-tuple": Item(T, ItemType.STRUCTURE, b""),
    "structure-child-not-item": Item(T, ItemType.STRUCTURE, (1,)),  # type: ignore[arg-type]
    "tag-too-big": Item(0x1000000, ItemType.INTEGER, 1),
    "tag-negative": Item(-1, ItemType.INTEGER, 1),
    "placeholder-text": Item(T, ItemType.TEXT_STRING, Placeholder("$UNIQUE_IDENTIFIER_0")),
    "placeholder-date": Item(T, ItemType.DATE_TIME, Placeholder("$NOW")),
    "placeholder-nested": Item.structure(T, Item(T, ItemType.BYTE_STRING, Placeholder("$DATA"))),
}


@pytest.mark.parametrize("item", BAD_ITEMS.values(), ids=list(BAD_ITEMS))
def test_encode_rejects_values_not_fitting_the_type(item: Item) -> None:
    with pytest.raises(EncodeError):
        encode(item)


def test_unresolved_placeholder_error_names_it() -> None:
    with pytest.raises(EncodeError, match=r"unresolved placeholder \$NOW"):
        encode(Item(T, ItemType.DATE_TIME, Placeholder("$NOW")))


def test_text_starting_with_dollar_is_not_a_placeholder() -> None:
    item = Item.text(T, "$NOW")
    assert decode(encode(item)) == item


# -- framing -------------------------------------------------------------------------
def request_frame(size_of_payload: int = 8) -> bytes:
    payload = Item.bytes_(Tag.DATA, bytes(size_of_payload))
    return encode(Item.structure(Tag.REQUEST_MESSAGE, payload))


def test_message_length_from_header() -> None:
    frame = request_frame(20)
    assert message_length(frame[:HEADER_SIZE]) == len(frame)
    assert message_length(memoryview(frame), expected_tag=Tag.REQUEST_MESSAGE) == len(frame)


def test_two_gib_length_rejected_from_header_alone() -> None:
    header = hdr(Tag.REQUEST_MESSAGE, 0x01, 0x8000_0000)
    with pytest.raises(MessageTooLarge):
        message_length(header, DEFAULT_LIMITS, Tag.REQUEST_MESSAGE)
    with pytest.raises(MessageTooLarge):
        Framer().feed(header)


@pytest.mark.parametrize(
    "header",
    [
        hdr(Tag.REQUEST_MESSAGE, 0x02, 8),  # not a structure
        hdr(Tag.RESPONSE_MESSAGE, 0x01, 8),  # wrong tag
        hdr(Tag.REQUEST_MESSAGE, 0x01, 12),  # not a multiple of 8
        b"\x42\x00\x78",  # short
    ],
    ids=["type", "tag", "length", "short"],
)
def test_message_length_rejects_bad_headers(header: bytes) -> None:
    with pytest.raises(FramingError):
        message_length(header, DEFAULT_LIMITS, Tag.REQUEST_MESSAGE)


def test_message_size_limit_is_inclusive() -> None:
    frame = request_frame(8)
    assert message_length(frame, Limits(max_message_size=len(frame))) == len(frame)
    with pytest.raises(MessageTooLarge):
        message_length(frame, Limits(max_message_size=len(frame) - 1))


def test_framer_splits_a_stream_fed_one_byte_at_a_time() -> None:
    frames = [request_frame(n) for n in (0, 3, 40, 1000)]
    stream = b"".join(frames)
    framer = Framer(expected_tag=Tag.REQUEST_MESSAGE)
    got: list[bytes] = []
    for i in range(len(stream)):
        got += framer.feed(stream[i : i + 1])
    assert got == frames
    assert framer.buffered == 0


def test_framer_returns_several_frames_from_one_chunk() -> None:
    frames = [request_frame(n) for n in range(5)]
    framer = Framer()
    stream = b"".join(frames)
    assert framer.feed(stream[:-3]) == frames[:-1]
    assert framer.buffered == len(frames[-1]) - 3
    assert framer.feed(stream[-3:]) == frames[-1:]


def test_framer_is_unusable_after_error() -> None:
    framer = Framer(expected_tag=Tag.REQUEST_MESSAGE)
    with pytest.raises(FramingError):
        framer.feed(request_frame().replace(b"\x42\x00\x78", b"\x42\x00\x7b", 1))
    with pytest.raises(InvalidMessage):
        framer.feed(request_frame())


def test_framer_large_message_in_small_chunks_is_linear() -> None:
    frame = request_frame(1000 * 1024)
    framer = Framer()
    got: list[bytes] = []
    start = time.perf_counter()
    for i in range(0, len(frame), 256):
        got += framer.feed(frame[i : i + 256])
    assert got == [frame]
    assert time.perf_counter() - start < 2.0


def test_failed_decode_leaves_caller_bytearray_resizable() -> None:
    buf = bytearray(hdr(T, 0x02, 8) + bytes(8))
    with pytest.raises(DecodeError) as info:
        decode(buf)
    assert info.value.__traceback__ is not None  # decode's frames are still alive
    del buf[:8]
    assert len(buf) == 8


def test_decode_non_byte_memoryview() -> None:
    raw = encode(Item.integer(T, 8))
    assert decode(memoryview(raw).cast("I")) == Item.integer(T, 8)
