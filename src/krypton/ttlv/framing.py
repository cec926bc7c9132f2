"""Finding KMIP message boundaries in a byte stream (sans-I/O).

How this works
--------------
A KMIP message on the wire is one TTLV Structure, so its first 8 bytes (tag,
type 0x01, length) say how long the whole frame is: ``8 + length``. A reader
first collects :data:`HEADER_SIZE` bytes, calls :func:`message_length` -- which
rejects a wrong type, an unexpected tag, a length that is not a multiple of 8
or a frame larger than ``Limits.max_message_size`` *before any body byte is
read* -- and then reads exactly that many bytes and hands them to
:func:`krypton.ttlv.codec.decode`.

:class:`Framer` does the same for push-style input (clients, tests): bytes are
appended to one ``bytearray`` and complete frames are cut from a moving
offset; the consumed prefix is dropped once per :meth:`Framer.feed` call, so
a large message arriving in many small pieces costs linear, not quadratic,
time. A listener that reads into a preallocated buffer can call
:func:`message_length` directly instead.
"""

from __future__ import annotations

import struct

from krypton.errors import InvalidMessage, MessageTooLarge
from krypton.ttlv.codec import DEFAULT_LIMITS, DecodeError, Limits

__all__ = ["HEADER_SIZE", "Framer", "FramingError", "message_length"]

HEADER_SIZE = 8
_HEADER = struct.Struct(">II")


class FramingError(DecodeError):
    """The stream does not start with a valid KMIP message header."""


def message_length(
    header: bytes | bytearray | memoryview,
    limits: Limits = DEFAULT_LIMITS,
    expected_tag: int | None = None,
) -> int:
    """Total frame size (header included) announced by the first 8 bytes of ``header``."""
    if len(header) < HEADER_SIZE:
        raise FramingError(f"need {HEADER_SIZE} header bytes, got {len(header)}")
    word: int
    length: int
    word, length = _HEADER.unpack_from(header, 0)
    if word & 0xFF != 0x01:
        raise FramingError(f"message type 0x{word & 0xFF:02X} is not a Structure")
    tag = word >> 8
    if expected_tag is not None and tag != expected_tag:
        raise FramingError(f"message tag 0x{tag:06X}, expected 0x{expected_tag:06X}")
    if length & 7:
        raise FramingError(f"message length {length} is not a multiple of 8")
    total = HEADER_SIZE + length
    if total > limits.max_message_size:
        raise MessageTooLarge(
            f"message of {total} bytes exceeds the limit of {limits.max_message_size}"
        )
    return total


class Framer:
    """Cut complete frames out of a byte stream.

    ``feed`` returns the frames completed by the new data (each a ``bytes``
    holding one whole message). After an error the framer is unusable: the
    stream position is lost, so the connection should be closed.
    """

    __slots__ = ("_broken", "_buf", "_expected_tag", "_limits", "_need")

    def __init__(self, limits: Limits = DEFAULT_LIMITS, expected_tag: int | None = None) -> None:
        self._limits = limits
        self._expected_tag = expected_tag
        self._buf = bytearray()
        self._need = 0
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._broken:
            raise InvalidMessage("framer is unusable after a framing error")
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        start = 0
        avail = len(buf)
        try:
            while avail - start >= HEADER_SIZE:
                need = self._need
                if not need:
                    need = message_length(
                        buf[start : start + HEADER_SIZE], self._limits, self._expected_tag
                    )
                if avail - start < need:
                    self._need = need
                    break
                frames.append(bytes(buf[start : start + need]))
                start += need
                self._need = 0
        except InvalidMessage:
            self._broken = True
            raise
        if start:
            del buf[:start]
        return frames
