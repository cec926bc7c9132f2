"""Property tests for the TTLV codec: round trips, and hostile bytes only raise KryptonError."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krypton.errors import KryptonError
from krypton.ttlv.codec import Limits, decode, encode
from krypton.ttlv.framing import Framer
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

tags = st.one_of(st.sampled_from(list(Tag)), st.integers(0x540000, 0x54FFFF))
I32 = st.integers(-(1 << 31), (1 << 31) - 1)
U32 = st.integers(0, (1 << 32) - 1)
I64 = st.integers(-(1 << 63), (1 << 63) - 1)

PRIMITIVE_VALUES: dict[ItemType, st.SearchStrategy[object]] = {
    ItemType.INTEGER: I32,
    ItemType.LONG_INTEGER: I64,
    ItemType.BIG_INTEGER: st.integers(-(1 << 600), 1 << 600),
    ItemType.ENUMERATION: U32,
    ItemType.BOOLEAN: st.booleans(),
    ItemType.TEXT_STRING: st.text(max_size=40),
    ItemType.BYTE_STRING: st.binary(max_size=40),
    ItemType.DATE_TIME: I64,
    ItemType.INTERVAL: U32,
    ItemType.DATE_TIME_EXTENDED: I64,
}


@st.composite
def primitives(draw: st.DrawFn) -> Item:
    itype = draw(st.sampled_from(list(PRIMITIVE_VALUES)))
    value = draw(PRIMITIVE_VALUES[itype])
    return Item(draw(tags), itype, value)  # type: ignore[arg-type]


items = st.recursive(
    primitives(),
    lambda children: st.builds(
        lambda tag, kids: Item(tag, ItemType.STRUCTURE, tuple(kids)),
        tags,
        st.lists(children, max_size=5),
    ),
    max_leaves=15,
)


@FAST
@given(items)
def test_decode_encode_round_trip(item: Item) -> None:
    data = encode(item)
    assert len(data) % 8 == 0
    assert decode(data) == item
    assert encode(decode(data)) == data


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_krypton_errors(data: bytes) -> None:
    with contextlib.suppress(KryptonError):
        decode(data, Limits(max_depth=4, max_items=50))


@FAST
@given(st.binary(min_size=8, max_size=200))
def test_arbitrary_bytes_with_valid_looking_header(tail: bytes) -> None:
    # a structure header whose length matches, so decoding gets past the first check
    n = (len(tail) // 8) * 8
    data = bytes.fromhex("42007801") + n.to_bytes(4, "big") + tail[:n]
    with contextlib.suppress(KryptonError):
        decode(data)


@FAST
@given(items, st.data())
def test_mutated_valid_messages_raise_only_krypton_errors(item: Item, data: st.DataObject) -> None:
    wire = bytearray(encode(Item(Tag.REQUEST_MESSAGE, ItemType.STRUCTURE, (item,))))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(wire) - 1, 0)))
        if op == "flip" and wire:
            wire[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and wire:
            wire[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del wire[pos : pos + data.draw(st.integers(1, 16))]
        else:
            wire[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    try:
        decoded = decode(bytes(wire))
    except KryptonError:
        return
    assert decode(encode(decoded)) == decoded


@FAST
@given(st.lists(items, min_size=1, max_size=4), st.lists(st.integers(1, 64), min_size=1))
def test_framer_reassembles_any_chunking(messages: list[Item], cuts: list[int]) -> None:
    frames = [encode(Item(Tag.REQUEST_MESSAGE, ItemType.STRUCTURE, (m,))) for m in messages]
    stream = b"".join(frames)
    framer = Framer(expected_tag=Tag.REQUEST_MESSAGE)
    got: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += framer.feed(stream[pos : pos + step])
        pos += step
        i += 1
    assert got == frames
    assert [decode(f).children[0] for f in got] == messages
