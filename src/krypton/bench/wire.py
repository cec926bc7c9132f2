"""What a bench connection sends and how it checks what comes back (sans-I/O).

How this works
--------------
Every request is encoded once, before the run (:func:`build_plan`): an
operation is a cycle of ready-made byte strings, each with the tuple of
operations its response must carry (``(GET,)``, ``(CREATE, GET)``), so the
hot path only writes bytes it already has. The one exception is a Get over a
recorded key list (``--keys-file``, :class:`RandomGets`): each request joins
a ready-made head and tail around an identifier drawn uniformly at random.

:func:`check_status` reads a response without building a tree. It walks the
TTLV headers with one precompiled ``struct`` -- message, response header
(for Batch Count), then each Batch Item's direct children -- and checks that
every length stays inside its parent, that the batch holds exactly the
expected items, that each item is Result Status Success for the expected
Operation and carries a Response Payload. Values it does not need (the key,
the identifier) are skipped by their lengths. The answer is one ``int``:
0 for success, a KMIP Result Reason (> 0) for a failed item, or one of the
negative local codes in :data:`LOCAL_ERRORS` (malformed, wrong batch,
connection lost ...). :func:`check_full` (``--check full``) decodes the whole
message with the real codec instead and also checks the key material length.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path

from krypton.errors import InvalidMessage
from krypton.kmip import client_messages as cm
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.codec import encode
from krypton.ttlv.enums import Operation, ResultReason, ResultStatus
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

HEADER = struct.Struct(">II")
_U32 = struct.Struct(">I")
_UNPACK = HEADER.unpack_from
_U32_UNPACK = _U32.unpack_from
_FAILED = int(ResultStatus.OPERATION_FAILED)
MAX_RESPONSE = (1 << 20) + 8


def _word(tag: int, itype: ItemType) -> int:
    return (int(tag) << 8) | int(itype)


_S, _E, _I = ItemType.STRUCTURE, ItemType.ENUMERATION, ItemType.INTEGER
RESPONSE_WORD = _word(Tag.RESPONSE_MESSAGE, _S)
REQUEST_WORD = _word(Tag.REQUEST_MESSAGE, _S)
_HEADER_WORD = _word(Tag.RESPONSE_HEADER, _S)
_BATCH_COUNT_WORD = _word(Tag.BATCH_COUNT, _I)
_BATCH_ITEM_WORD = _word(Tag.BATCH_ITEM, _S)
_OPERATION_WORD = _word(Tag.OPERATION, _E)
_STATUS_WORD = _word(Tag.RESULT_STATUS, _E)
_REASON_WORD = _word(Tag.RESULT_REASON, _E)
_PAYLOAD_WORD = _word(Tag.RESPONSE_PAYLOAD, _S)

GET, CREATE = int(Operation.GET), int(Operation.CREATE)

# Local error codes (negative, so they never collide with a KMIP Result Reason).
MALFORMED = -1
BATCH_MISMATCH = -2
OP_MISMATCH = -3
NO_PAYLOAD = -4
NO_REASON = -5
NOT_SUCCESS = -6
CONN_LOST = -7
TIMEOUT = -8
CONNECT_FAILED = -9
BAD_KEY = -10
LOCAL_ERRORS = {
    MALFORMED: "malformed response",
    BATCH_MISMATCH: "wrong number of batch items",
    OP_MISMATCH: "response for another operation",
    NO_PAYLOAD: "success without a response payload",
    NO_REASON: "failed without a result reason",
    NOT_SUCCESS: "pending or undone",
    CONN_LOST: "connection lost",
    TIMEOUT: "no response within the timeout",
    CONNECT_FAILED: "connect or TLS handshake failed",
    BAD_KEY: "Get response without the expected key material",
}


def error_name(code: int) -> str:
    if code < 0:
        return LOCAL_ERRORS.get(code, f"local error {code}")
    try:
        return ResultReason(code).name.replace("_", " ").title()
    except ValueError:
        return f"Result Reason 0x{code:08X}"


# -- requests ---------------------------------------------------------------------
OPS = ("get", "create", "createget", "mixed", "connect")


@dataclass(frozen=True, slots=True)
class Plan:
    """The request cycle of one operation type; ``kinds`` index ``kind_names``."""

    requests: Sequence[bytes]
    expects: tuple[tuple[int, ...], ...]
    kinds: tuple[int, ...]
    kind_names: tuple[str, ...]
    key_bytes: int = 32


class RandomGets(Sequence[bytes]):
    """A cycle of one Get whose identifier is drawn, uniformly and with
    replacement, from a recorded key list on every request (so a key cache
    sees the whole list, not a repeating sample). The message is a head and a
    tail made once per identifier length around the identifier's bytes. The
    draw is load shaping, not a secret: ``random``, reseeded in each process."""

    def __init__(self, version: ProtocolVersion, uids: Sequence[str]) -> None:
        if not uids:
            raise ValueError("no key identifiers to Get")
        self.uids = [u.encode() for u in uids]
        self.parts: dict[int, tuple[bytes, bytes]] = {}
        for n in {len(u) for u in self.uids}:
            marker = b"#" * n
            whole = encode(cm.request_message(version, [cm.get_item(marker.decode())]))
            at = whole.index(marker)
            self.parts[n] = (whole[:at], whole[at + n :])
        self._pid = 0
        self._draw = random.Random().randrange

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> bytes:  # type: ignore[override]
        if self._pid != os.getpid():  # a forked worker: its own draws
            self._pid = os.getpid()
            self._draw = random.Random(os.urandom(16)).randrange
        uid = self.uids[self._draw(len(self.uids))]
        head, tail = self.parts[len(uid)]
        return head + uid + tail


def read_keys(path: Path) -> list[str]:
    """The identifiers in a keys file (one per line; blank lines ignored)."""
    return [line for line in path.read_text().split() if line]


def created_uid(response: bytes) -> str | None:
    """The Unique Identifier a successful single-item Create response carries."""
    from krypton.ttlv.codec import decode

    try:
        items = cm.parse_response(decode(response)).items
        payload = items[0].payload if items else None
        return None if payload is None else cm.unique_identifier(payload)
    except (InvalidMessage, ValueError):
        return None


def parse_ratio(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--ratio: expected GET:CREATE such as 9:1, got {text!r}") from None
    if a < 0 or b < 0 or a + b == 0:
        raise ValueError(f"--ratio: need non-negative parts, not both zero, got {text!r}")
    g = gcd(a, b)
    return a // g, b // g


def ratio_pattern(gets: int, creates: int) -> list[int]:
    """``gets + creates`` slots, creates (1) spread evenly among gets (0)."""
    n = gets + creates
    return [1 if (i + 1) * creates // n > i * creates // n else 0 for i in range(n)]


def build_plan(
    op: str,
    version: ProtocolVersion,
    uid: str | None,
    *,
    ratio: tuple[int, int] = (9, 1),
    length: int = 256,
    keys: Sequence[str] | None = None,
) -> Plan:
    """The requests of ``op``; a ``get`` with ``keys`` draws one of them at random
    for every request (:class:`RandomGets`)."""
    attrs = cm.aes_attributes(length)
    if keys is not None:
        if op != "get":
            raise ValueError(f"a key list is for --op get, not {op!r}")
        return Plan(RandomGets(version, keys), ((GET,),), (0,), ("get",), length // 8)

    def msg(*items: Item) -> bytes:
        return encode(cm.request_message(version, list(items)))

    create = msg(cm.create_item(version, attrs))
    get = msg(cm.get_item(uid)) if uid is not None else b""
    if op in ("get", "connect"):
        return Plan((get,), ((GET,),), (0,), ("get",), length // 8)
    if op == "create":
        return Plan((create,), ((CREATE,),), (0,), ("create",), length // 8)
    if op == "createget":
        # KMIP 1.x §7.2: a Unique Batch Item ID is required once Batch Count > 1.
        both = msg(cm.create_item(version, attrs, b"\x01"), cm.get_item(batch_id=b"\x02"))
        return Plan((both,), ((CREATE, GET),), (0,), ("createget",), length // 8)
    if op == "mixed":
        pattern = ratio_pattern(*ratio)
        return Plan(
            tuple(create if k else get for k in pattern),
            tuple((CREATE,) if k else (GET,) for k in pattern),
            tuple(pattern),
            ("get", "create"),
            length // 8,
        )
    raise ValueError(f"unknown operation {op!r}; expected one of {', '.join(OPS)}")


# -- responses --------------------------------------------------------------------
def check_status(buf: bytes | bytearray | memoryview, end: int, expect: Sequence[int]) -> int:
    """0 when ``buf[:end]`` is a well-formed all-Success answer to ``expect``; else a code."""
    unpack = _UNPACK
    u32 = _U32_UNPACK
    try:
        word, length = unpack(buf, 0)
        if word != RESPONSE_WORD or length + 8 != end:
            return MALFORMED
        word, length = unpack(buf, 8)
        off = 16 + length
        if word != _HEADER_WORD or length & 7 or off > end:
            return MALFORMED
        count = -1
        p = 16
        while p < off:
            word, length = unpack(buf, p)
            if word == _BATCH_COUNT_WORD:
                count = u32(buf, p + 8)[0]
            p += 8 + ((length + 7) & -8)
        if p != off:
            return MALFORMED
        n = failure = 0
        expected = len(expect)
        while off < end:
            word, length = unpack(buf, off)
            item_end = off + 8 + length
            if word != _BATCH_ITEM_WORD or length & 7 or item_end > end:
                return MALFORMED
            p = off + 8
            operation = status = reason = -1
            payload = False
            while p < item_end:
                word, length = unpack(buf, p)
                if word == _STATUS_WORD:
                    status = u32(buf, p + 8)[0]
                elif word == _OPERATION_WORD:
                    operation = u32(buf, p + 8)[0]
                elif word == _PAYLOAD_WORD:
                    payload = True
                elif word == _REASON_WORD:
                    reason = u32(buf, p + 8)[0]
                p += 8 + ((length + 7) & -8)
            if p != item_end or status < 0:
                return MALFORMED
            if not failure:
                if status:
                    if reason > 0:
                        failure = reason
                    else:
                        failure = NO_REASON if status == _FAILED else NOT_SUCCESS
                elif n < expected and operation != expect[n]:
                    failure = OP_MISMATCH
                elif not payload:
                    failure = NO_PAYLOAD
            n += 1
            off = item_end
    except struct.error:
        return MALFORMED
    if failure:
        return failure
    return BATCH_MISMATCH if n != expected or count != n else 0


def check_full(data: bytes, expect: Sequence[int], key_bytes: int) -> int:
    """Like :func:`check_status`, through the real decoder, and checks Get's key length."""
    from krypton.ttlv.codec import decode

    try:
        response = cm.parse_response(decode(data))
    except (InvalidMessage, ValueError):
        return MALFORMED
    if len(response.items) != len(expect):
        failed = [i for i in response.items if i.status is not ResultStatus.SUCCESS]
        if failed and failed[0].reason is not None:
            return int(failed[0].reason)
        return BATCH_MISMATCH
    for item, op in zip(response.items, expect, strict=True):
        if item.status is not ResultStatus.SUCCESS:
            if item.reason is not None:
                return int(item.reason)
            return NO_REASON if item.status is ResultStatus.OPERATION_FAILED else NOT_SUCCESS
        if item.operation != op:
            return OP_MISMATCH
        if item.payload is None:
            return NO_PAYLOAD
        if op == GET:
            try:
                if len(cm.key_material(item.payload)) != key_bytes:
                    return BAD_KEY
            except InvalidMessage:
                return BAD_KEY
    return 0
