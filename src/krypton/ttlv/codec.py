"""TTLV encode/decode: bytes <-> :class:`~krypton.ttlv.item.Item` trees (sans-I/O).

How this works
--------------
Every TTLV item is an 8-byte header -- tag (3 bytes), type (1 byte), length
(4 bytes, big-endian) -- followed by the value, padded with zero bytes to a
multiple of 8. A Structure's value is its children's encodings back to back.

Decoding is one linear pass over a ``memoryview`` with an offset; the header
is read as two big-endian uint32 (``tag << 8 | type`` and ``length``) with a
precompiled ``struct.Struct``. Structures are handled with an explicit stack
instead of recursion: entering a structure pushes (parent children, parent
end, tag) and the structure closes when the offset reaches its end. So depth
is bounded by ``Limits.max_depth`` (checked before descending), never by the
Python stack, and no item can overrun its parent because every length is
checked against the enclosing end before it is used. Fixed-size types are
decoded from one table (``_FIXED``: expected length, struct, pad check); the
4-byte types carry 4 pad bytes that are unpacked together with the value and
must be zero. Every failure is a :class:`DecodeError` (an ``InvalidMessage``)
or a ``LimitExceeded`` / ``MessageTooLarge``: arbitrary input never escapes as
``struct.error``, ``IndexError``, ``UnicodeDecodeError`` or ``RecursionError``.
The same pass can pause: :func:`decode_in_steps` is a generator that yields
every so many items (its locals are the decoder's whole state), so a server can
decode a large message a slice at a time between other work; :func:`decode`
runs it without pauses.

Encoding appends into one ``bytearray``: a structure writes a placeholder
header, encodes its children, then patches its length with ``pack_into``.
Fixed-size items are packed header-and-value in one ``Struct.pack`` call.
Values are checked against the item type (range, Python type) and anything
wrong is an :class:`EncodeError` (an ``InvalidField``), including an
unresolved test-case :class:`Placeholder`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import cast

from krypton.errors import InvalidField, InvalidMessage, LimitExceeded, MessageTooLarge
from krypton.ttlv.item import Item, ItemType

__all__ = [
    "DEFAULT_LIMITS",
    "DecodeError",
    "EncodeError",
    "Limits",
    "Placeholder",
    "big_integer_size",
    "decode",
    "decode_in_steps",
    "encode",
    "encode_into",
]


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_size: int = 1 << 20
    max_depth: int = 32
    max_items: int = 100_000
    max_batch_items: int = 1024


DEFAULT_LIMITS = Limits()


class DecodeError(InvalidMessage):
    """The message is not valid TTLV."""


class EncodeError(InvalidField):
    """An item's value does not fit its item type."""


class Placeholder(str):
    """An unresolved ``$NAME`` value from an OASIS test case (see ``xml.py``).

    It is a ``str`` so it fits any :class:`Item`; :func:`encode` refuses it.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Placeholder({str(self)!r})"


_HEADER = struct.Struct(">II")
_U32_PAD = struct.Struct(">II")
_I32_PAD = struct.Struct(">iI")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_ZEROS = bytes(8)

_S = ItemType.STRUCTURE
_VARIABLE = frozenset((ItemType.BIG_INTEGER, ItemType.TEXT_STRING, ItemType.BYTE_STRING))

# type -> (item type, value length, struct, kind); kind 0: 4 bytes + 4 pad bytes,
# 1: 8-byte integer, 2: Boolean.
_FIXED: dict[int, tuple[ItemType, int, struct.Struct, int]] = {
    ItemType.INTEGER: (ItemType.INTEGER, 4, _I32_PAD, 0),
    ItemType.ENUMERATION: (ItemType.ENUMERATION, 4, _U32_PAD, 0),
    ItemType.INTERVAL: (ItemType.INTERVAL, 4, _U32_PAD, 0),
    ItemType.LONG_INTEGER: (ItemType.LONG_INTEGER, 8, _I64, 1),
    ItemType.DATE_TIME: (ItemType.DATE_TIME, 8, _I64, 1),
    ItemType.DATE_TIME_EXTENDED: (ItemType.DATE_TIME_EXTENDED, 8, _I64, 1),
    ItemType.BOOLEAN: (ItemType.BOOLEAN, 8, _U64, 2),
}


# Items are built by setting their slots directly: about twice as fast as the
# frozen dataclass __init__, which matters at ~20 items per message.
if Item.__slots__ != ("tag", "type", "value"):
    raise ImportError("krypton.ttlv.codec expects Item slots (tag, type, value)")
_SET_TAG = Item.__dict__["tag"].__set__
_SET_TYPE = Item.__dict__["type"].__set__
_SET_VALUE = Item.__dict__["value"].__set__


def _fail(offset: int, what: str) -> DecodeError:
    return DecodeError(f"invalid TTLV at offset {offset}: {what}")


def decode(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Item:
    """Decode exactly one TTLV item that spans all of ``data``."""
    # The view is released on the way out, even on error, so that a caller's
    # bytearray can be resized while the exception is still being handled.
    with memoryview(data) as mv:
        if mv.format == "B" and mv.ndim == 1 and mv.c_contiguous:
            return _decode(mv, limits)
        with memoryview(mv.tobytes()) as flat:
            return _decode(flat, limits)


def decode_in_steps(
    data: bytes, limits: Limits = DEFAULT_LIMITS, every: int = 1024
) -> Generator[None, None, Item]:
    """:func:`decode` a step at a time: a generator that pauses (yields) after
    every ``every`` items and returns the decoded item. For a large message, so
    that its caller can let others run between steps; the bytes must not change
    meanwhile (hence ``bytes``)."""
    with memoryview(data) as mv:
        return (yield from _steps(mv, limits, every))


def _decode(mv: memoryview, limits: Limits) -> Item:
    try:
        next(_steps(mv, limits, 0))
    except StopIteration as done:
        return cast(Item, done.value)
    raise AssertionError("a decode without steps paused")  # pragma: no cover


def _steps(mv: memoryview, limits: Limits, every: int) -> Generator[None, None, Item]:
    """The decoder: yields after every ``every`` items (0: never)."""
    n = mv.nbytes
    if n > limits.max_message_size:
        raise MessageTooLarge(f"message of {n} bytes exceeds {limits.max_message_size}")
    if n < 8:
        raise _fail(0, "shorter than one item header")
    first_len = _HEADER.unpack_from(mv, 0)[1]
    if 8 + ((first_len + 7) & ~7) != n:
        raise _fail(0, f"item length {first_len} does not match message size {n}")

    unpack_header = _HEADER.unpack_from
    new = object.__new__
    set_tag, set_type, set_value = _SET_TAG, _SET_TYPE, _SET_VALUE
    fixed = _FIXED
    max_depth = limits.max_depth
    max_items = limits.max_items
    pause = every or max_items + 1  # the count after which to yield (beyond the limit: never)
    stack: list[tuple[list[Item], int, int]] = []
    children: list[Item] = []
    root = children
    end = n
    pos = 0
    count = 0
    value: int | bool | str | bytes
    itype: ItemType
    while True:
        while pos == end:
            if not stack:
                return root[0]
            done = new(Item)
            set_value(done, tuple(children))
            children, end, struct_tag = stack.pop()
            set_tag(done, struct_tag)
            set_type(done, _S)
            children.append(done)
        if end - pos < 8:
            raise _fail(pos, "truncated item header")
        word, length = unpack_header(mv, pos)
        tag = word >> 8
        typ = word & 0xFF
        count += 1
        if count > max_items:
            raise LimitExceeded(f"message has more than {max_items} items")
        if count >= pause:
            pause += every
            yield
        body = pos + 8
        room = end - body
        if typ == 1:
            if length > room:
                raise _fail(pos, "structure length overruns its parent")
            if length & 7:
                raise _fail(pos, "structure length is not a multiple of 8")
            if len(stack) >= max_depth:
                raise LimitExceeded(f"structures nested deeper than {max_depth}")
            stack.append((children, end, tag))
            children = []
            end = body + length
            pos = body
            continue
        spec = fixed.get(typ)
        if spec is not None:
            itype, size, st, kind = spec
            if length != size:
                raise _fail(pos, f"{itype.name} length {length}, expected {size}")
            if room < 8:
                raise _fail(pos, "value overruns its parent")
            if kind == 0:
                value, pad = st.unpack_from(mv, body)
                if pad:
                    raise _fail(pos, "non-zero padding")
            elif kind == 1:
                value = st.unpack_from(mv, body)[0]
            else:
                flag: int = st.unpack_from(mv, body)[0]
                if flag > 1:
                    raise _fail(pos, "Boolean value is neither 0 nor 1")
                value = flag == 1
            pos = body + 8
        else:
            if typ not in _VARIABLE:
                raise _fail(pos, f"unknown item type 0x{typ:02X}")
            padded = (length + 7) & ~7
            if padded > room:
                raise _fail(pos, "value overruns its parent")
            stop = body + length
            if padded != length and mv[stop : body + padded] != _ZEROS[: padded - length]:
                raise _fail(pos, "non-zero padding")
            if typ == 7:
                itype = ItemType.TEXT_STRING
                try:
                    value = str(mv[body:stop], "utf-8")
                except UnicodeDecodeError:
                    raise _fail(pos, "Text String is not valid UTF-8") from None
            elif typ == 8:
                itype = ItemType.BYTE_STRING
                value = mv[body:stop].tobytes()
            else:
                if length == 0 or length & 7:
                    raise _fail(pos, "Big Integer length is not a positive multiple of 8")
                itype = ItemType.BIG_INTEGER
                value = int.from_bytes(mv[body:stop], "big", signed=True)
            pos = body + padded
        it = new(Item)
        set_tag(it, tag)
        set_type(it, itype)
        set_value(it, value)
        children.append(it)


# -- encoding ---------------------------------------------------------------------
_MAX_ENCODE_DEPTH = 256
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_U32_MAX = (1 << 32) - 1

_PACK_I32 = struct.Struct(">IIiI").pack
_PACK_U32 = struct.Struct(">IIII").pack
_PACK_I64 = struct.Struct(">IIq").pack
_PACK_U64 = struct.Struct(">IIQ").pack
_PACK_HEADER = _HEADER.pack
_PACK_HEADER_INTO = _HEADER.pack_into
_E = ItemType.ENUMERATION
_I = ItemType.INTEGER
_T = ItemType.TEXT_STRING


def _check_int(item: Item, lo: int, hi: int) -> int:
    v = item.value
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad_value(item, "an int")
    if not lo <= v <= hi:
        raise EncodeError(f"{item.type.name} 0x{item.tag:06X}: value out of range")
    return v


def _bad_value(item: Item, expected: str) -> EncodeError:
    if isinstance(item.value, Placeholder):
        return EncodeError(f"0x{item.tag:06X}: unresolved placeholder {item.value!s}")
    return EncodeError(
        f"{item.type.name} 0x{item.tag:06X}: value must be {expected}, "
        f"not {type(item.value).__name__}"
    )


def _enc_integer(item: Item, out: bytearray) -> None:
    out += _PACK_I32(item.tag << 8 | 0x02, 4, _check_int(item, _I32_MIN, _I32_MAX), 0)


def _enc_u32(item: Item, out: bytearray) -> None:
    v = _check_int(item, 0, _U32_MAX)
    out += _PACK_U32(item.tag << 8 | item.type, 4, v, 0)


def _enc_i64(item: Item, out: bytearray) -> None:
    v = _check_int(item, _I64_MIN, _I64_MAX)
    out += _PACK_I64(item.tag << 8 | item.type, 8, v)


def _enc_boolean(item: Item, out: bytearray) -> None:
    if type(item.value) is not bool:
        raise _bad_value(item, "a bool")
    out += _PACK_U64(item.tag << 8 | 0x06, 8, 1 if item.value else 0)


def _enc_bytes_like(item: Item, out: bytearray, raw: bytes | bytearray) -> None:
    n = len(raw)
    if n > _U32_MAX:
        raise EncodeError(f"{item.type.name} 0x{item.tag:06X}: longer than 4 GiB")
    out += _PACK_HEADER(item.tag << 8 | item.type, n)
    out += raw
    if n & 7:
        out += _ZEROS[: 8 - (n & 7)]


def _enc_text(item: Item, out: bytearray) -> None:
    v = item.value
    if not isinstance(v, str) or isinstance(v, Placeholder):
        raise _bad_value(item, "a str")
    try:
        raw = v.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodeError(f"TEXT_STRING 0x{item.tag:06X}: not encodable as UTF-8") from None
    _enc_bytes_like(item, out, raw)


def _enc_byte_string(item: Item, out: bytearray) -> None:
    v = item.value
    if not isinstance(v, bytes | bytearray):
        raise _bad_value(item, "bytes")
    _enc_bytes_like(item, out, v)


def big_integer_size(v: int) -> int:
    """The bytes a Big Integer takes: its two's complement (sign bit included) in
    whole 8-byte words. A negative value needs as many bits as its complement
    ``~v`` does, plus the sign: -2**63 fits in 8 bytes (``v.bit_length()`` would
    count 64 bits and ask for 16)."""
    return (((v if v >= 0 else ~v).bit_length() + 1 + 63) >> 6) << 3


def _enc_big_integer(item: Item, out: bytearray) -> None:
    v = item.value
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad_value(item, "an int")
    size = big_integer_size(v)
    if size > _U32_MAX:
        raise EncodeError(f"BIG_INTEGER 0x{item.tag:06X}: longer than 4 GiB")
    out += _PACK_HEADER(item.tag << 8 | 0x04, size)
    out += v.to_bytes(size, "big", signed=True)


_ENCODERS: dict[ItemType, Callable[[Item, bytearray], None]] = {
    ItemType.INTEGER: _enc_integer,
    ItemType.LONG_INTEGER: _enc_i64,
    ItemType.BIG_INTEGER: _enc_big_integer,
    ItemType.ENUMERATION: _enc_u32,
    ItemType.BOOLEAN: _enc_boolean,
    ItemType.TEXT_STRING: _enc_text,
    ItemType.BYTE_STRING: _enc_byte_string,
    ItemType.DATE_TIME: _enc_i64,
    ItemType.INTERVAL: _enc_u32,
    ItemType.DATE_TIME_EXTENDED: _enc_i64,
}


def _encode(item: Item, out: bytearray, depth: int) -> None:
    tag = item.tag
    if not isinstance(tag, int) or not 0 <= tag <= 0xFFFFFF:
        raise EncodeError(f"tag {tag!r} does not fit in 3 bytes")
    t = item.type
    v = item.value
    # Fast paths for the common cases; anything unusual goes through _ENCODERS,
    # which validates and explains.
    if t is _S:
        if not isinstance(v, tuple):
            raise _bad_value(item, "a tuple of Items")
        if depth >= _MAX_ENCODE_DEPTH:
            raise EncodeError(f"structures nested deeper than {_MAX_ENCODE_DEPTH}")
        start = len(out)
        out += _PACK_HEADER(tag << 8 | 0x01, 0)
        for child in v:
            if not isinstance(child, Item):
                raise _bad_value(item, "a tuple of Items")
            _encode(child, out, depth + 1)
        size = len(out) - start - 8
        if size > _U32_MAX:
            raise EncodeError(f"STRUCTURE 0x{tag:06X}: longer than 4 GiB")
        _PACK_HEADER_INTO(out, start, tag << 8 | 0x01, size)
    elif t is _E and type(v) is int and 0 <= v <= _U32_MAX:
        out += _PACK_U32(tag << 8 | 0x05, 4, v, 0)
    elif t is _I and type(v) is int and _I32_MIN <= v <= _I32_MAX:
        out += _PACK_I32(tag << 8 | 0x02, 4, v, 0)
    elif t is _T and type(v) is str:
        try:
            raw = v.encode("utf-8")
        except UnicodeEncodeError:
            raise EncodeError(f"TEXT_STRING 0x{tag:06X}: not encodable as UTF-8") from None
        _enc_bytes_like(item, out, raw)
    else:
        encoder = _ENCODERS.get(t)
        if encoder is None:
            raise EncodeError(f"0x{tag:06X}: unknown item type {t!r}")
        encoder(item, out)


def encode_into(item: Item, out: bytearray) -> None:
    """Append the TTLV encoding of ``item`` to ``out``.

    On error ``out`` may hold a partial encoding; callers should discard it.
    """
    _encode(item, out, 0)


def encode(item: Item) -> bytes:
    """The TTLV encoding of ``item``."""
    out = bytearray()
    _encode(item, out, 0)
    return bytes(out)
