"""Direct TTLV writing for hot paths: values straight into a ``bytearray``.

The generic encoder (:func:`krypton.ttlv.codec.encode`) walks an
:class:`~krypton.ttlv.item.Item` tree, which first has to be built. On the
gateway's hot path (the response to a ``Get``, the header of every response)
the shape is fixed and known, so we write it directly: one ``struct`` call
per primitive, structures opened and closed by patching their length. The
output is byte-for-byte what ``encode`` would produce for the equivalent
tree; the tests check that.
"""

from __future__ import annotations

import struct

_HDR = struct.Struct(">II")
_U32 = struct.Struct(">I")
_INT = struct.Struct(">IIi4x")  # tag|type, length 4, value, padding
_ENUM = struct.Struct(">IIII")  # tag|type, length 4, value, 4 zero bytes (value then pad)
_LONG = struct.Struct(">IIq")
_PAD = (b"", b"\0" * 7, b"\0" * 6, b"\0" * 5, b"\0" * 4, b"\0" * 3, b"\0" * 2, b"\0")

_STRUCTURE = 0x01
_INTEGER = 0x02
_ENUMERATION = 0x05
_TEXT = 0x07
_BYTES = 0x08
_DATE_TIME = 0x09


def begin(out: bytearray, tag: int) -> int:
    """Open a structure; returns the position to pass to :func:`end`."""
    pos = len(out)
    out += _HDR.pack(tag << 8 | _STRUCTURE, 0)
    return pos


def end(out: bytearray, pos: int) -> None:
    """Close the structure opened at ``pos`` by writing its length."""
    _U32.pack_into(out, pos + 4, len(out) - pos - 8)


def integer(out: bytearray, tag: int, value: int) -> None:
    out += _INT.pack(tag << 8 | _INTEGER, 4, value)


def enum(out: bytearray, tag: int, value: int) -> None:
    out += _ENUM.pack(tag << 8 | _ENUMERATION, 4, value, 0)


def datetime(out: bytearray, tag: int, value: int) -> None:
    out += _LONG.pack(tag << 8 | _DATE_TIME, 8, value)


def _variable(out: bytearray, tag: int, itype: int, raw: bytes | memoryview) -> None:
    n = len(raw)
    out += _HDR.pack(tag << 8 | itype, n)
    out += raw
    out += _PAD[n & 7]


def text(out: bytearray, tag: int, value: str) -> None:
    _variable(out, tag, _TEXT, value.encode("utf-8"))


def byte_string(out: bytearray, tag: int, value: bytes | memoryview) -> None:
    _variable(out, tag, _BYTES, value)
