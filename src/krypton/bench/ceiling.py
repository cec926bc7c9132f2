"""``krypton bench ceiling``: the cheapest KMIP-shaped mutual-TLS responder in Python.

How this works
--------------
Same transport as the gateway -- uvloop, ``BufferedProtocol`` into one
preallocated buffer, the gateway's own server TLS context (mutual TLS, the
same ticket settings) -- but no parsing, no policy and no keys: a request is
cut out by its TTLV length and answered with a ready-made Response Message.
The answer is chosen by the request's Protocol Version (the 32 bytes at a
fixed offset: KMIP puts it first in the header) and the Operation and Unique
Batch Item ID of each batch item (its first two children, by the spec's
field order; the IDs are echoed), so a Get
gets a Get response of a 256-bit key (the size the gateway sends), a Create a
Create response, and Create + Get a valid two-item response. Answers are
built once with the real encoder and cached by that key.

What one Python process can do with this is the ceiling the gateway's
figures are read against: the TLS record layer and the event loop, nothing
else.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import cast

from krypton.bench.wire import HEADER, REQUEST_WORD
from krypton.config import TLSConfig
from krypton.kmip.messages import ResponseItem, build_response, error_response
from krypton.kmip.versions import ProtocolVersion
from krypton.tls.contexts import server_context
from krypton.ttlv.codec import encode
from krypton.ttlv.enums import (
    CryptographicAlgorithm,
    KeyFormatType,
    ObjectType,
    Operation,
    ResultReason,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

_S = ItemType.STRUCTURE
_MAX = (1 << 20) + 8
_BUFFER = 64 * 1024
_OP_WORD = (int(Tag.OPERATION) << 8) | int(ItemType.ENUMERATION)
_PV_WORD = (int(Tag.PROTOCOL_VERSION) << 8) | int(_S)
_ID_WORD = (int(Tag.UNIQUE_BATCH_ITEM_ID) << 8) | int(ItemType.BYTE_STRING)
_I32 = struct.Struct(">i")
_UID = "00000000-0000-4000-8000-000000000000"
_KEY = bytes(range(32))
_TIME = 1_700_000_000
CREATE = int(Operation.CREATE)


def _get_payload() -> Item:
    block = Item.structure(
        Tag.KEY_BLOCK,
        Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
        Item.structure(Tag.KEY_VALUE, Item.bytes_(Tag.KEY_MATERIAL, _KEY)),
        Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
        Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, 256),
    )
    return Item.structure(
        Tag.RESPONSE_PAYLOAD,
        Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        Item.text(Tag.UNIQUE_IDENTIFIER, _UID),
        Item.structure(Tag.SYMMETRIC_KEY, block),
    )


def _create_payload() -> Item:
    return Item.structure(
        Tag.RESPONSE_PAYLOAD,
        Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        Item.text(Tag.UNIQUE_IDENTIFIER, _UID),
    )


def answer(
    version: ProtocolVersion,
    operations: tuple[int, ...],
    batch_ids: tuple[bytes | None, ...] | None = None,
) -> bytes:
    """The fixed response to a request of ``operations`` (Create: created; others: a key)."""
    ids = batch_ids or (None,) * len(operations)
    items = [
        ResponseItem(op, bid, payload=_create_payload() if op == CREATE else _get_payload())
        for op, bid in zip(operations, ids, strict=True)
    ]
    return encode(build_response(version, _TIME, items))


_INVALID = encode(error_response(None, _TIME, ResultReason.INVALID_MESSAGE, "not a request"))


class Responder(asyncio.BufferedProtocol):
    cache: dict[bytes, bytes] = {}

    def __init__(self) -> None:
        self.buf = bytearray(_BUFFER)
        self.view = memoryview(self.buf)
        self.start = self.end = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.end == len(self.buf):
            self._room(0)
        return self.view[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        buf = self.buf
        while self.end - self.start >= 8:
            word, length = HEADER.unpack_from(buf, self.start)
            total = 8 + length
            if word != REQUEST_WORD or length & 7 or total > _MAX:
                self._fail()
                return
            if self.end - self.start < total:
                if total > len(buf) - self.start:
                    self._room(total)
                return
            self.transport.write(self._answer(self.start, total))  # type: ignore[union-attr]
            self.start += total
        if self.start == self.end:
            self.start = self.end = 0

    def _answer(self, start: int, total: int) -> bytes:
        buf = self.buf
        end = start + total
        unpack = HEADER.unpack_from
        hlen = unpack(buf, start + 8)[1]
        if total < 56 or unpack(buf, start + 16)[0] != _PV_WORD:
            return _INVALID
        key = bytearray(buf[start + 24 : start + 56])
        off = start + 16 + hlen
        while off + 24 <= end:
            length = unpack(buf, off)[1]
            if unpack(buf, off + 8)[0] == _OP_WORD:
                key += buf[off + 16 : off + 20]
                word, n = unpack(buf, off + 24) if off + 32 <= end else (0, 0)
                if word == _ID_WORD and 0 < n <= 64 and off + 32 + n <= end:
                    key.append(n)
                    key += buf[off + 32 : off + 32 + n]
                else:
                    key.append(0)
            off += 8 + length
        found = self.cache.get(bytes(key))
        if found is None:
            found = self._build(bytes(key))
        return found

    def _build(self, key: bytes) -> bytes:
        major = _I32.unpack_from(key, 8)[0]
        minor = _I32.unpack_from(key, 24)[0]
        ops: list[int] = []
        ids: list[bytes | None] = []
        i = 32
        while i + 5 <= len(key):
            n = key[i + 4]
            ops.append(_I32.unpack_from(key, i)[0])
            ids.append(key[i + 5 : i + 5 + n] if n else None)
            i += 5 + n
        if not ops:
            return _INVALID
        response = answer(ProtocolVersion(major, minor), tuple(ops), tuple(ids))
        if len(self.cache) < 1024:
            self.cache[key] = response
        return response

    def _room(self, need: int) -> None:
        pending = self.end - self.start
        size = max(len(self.buf) * (2 if pending == len(self.buf) else 1), need)
        new = bytearray(size)
        new[:pending] = self.view[self.start : self.end]
        self.buf, self.view = new, memoryview(new)
        self.start, self.end = 0, pending

    def _fail(self) -> None:
        if self.transport is not None:
            self.transport.write(_INVALID)
            self.transport.close()

    def eof_received(self) -> bool | None:
        return False


async def serve(host: str, port: int, ca: Path, cert: Path, key: Path) -> asyncio.Server:
    ctx = server_context(TLSConfig(cert=cert, key=key, ca=ca))
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        Responder, host, port, ssl=ctx, reuse_address=True, backlog=1024
    )


def bound_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])
