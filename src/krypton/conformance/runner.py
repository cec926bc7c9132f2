"""Running one OASIS test-case file against a server (sans-I/O).

How this works
--------------
A case file is a list of (request, expected response) pairs. For each pair
:func:`run_case` fills the request's placeholders from the file's
:class:`~krypton.conformance.match.Session`, encodes it to TTLV, hands the
bytes to a :class:`Transport` (anything with ``roundtrip(bytes) -> bytes``;
the CLI's is a TLS socket, tests may pass a function), decodes the answer and
compares it with the expected tree. The first difference ends the case: the
later steps depend on the state the failed one should have left.

Two defects of the published files are repaired before they run: the KMIP
1.0-1.2 files spell some attribute names with runs of spaces
(``"Cryptographic   Usage Mask"``, a conversion artefact), collapsed to one
here; and a few files use a placeholder in a request that no earlier
response defines (``CS-BC-M-13-14`` decrypts ``$DATA_0`` with
``$IV_COUNTER_NONCE``, but its Encrypt response spells the reference
server's values literally): such a placeholder is bound to the item of the
same tag and type in the latest earlier expected response. (Their literal
time stamps are read as ``$NOW``: see ``match.py``.)

After a failure, and if asked, the objects the server made for this file
are revoked and destroyed (best effort, answers ignored), so that a rerun's
``Locate`` by name does not find the leftovers of this one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from krypton.conformance.match import (
    DEFAULT_TOLERANCE,
    CaseError,
    Difference,
    Session,
    literal_times,
)
from krypton.errors import InvalidMessage, KryptonError
from krypton.ttlv.codec import EncodeError, Placeholder, decode, encode
from krypton.ttlv.enums import Operation, RevocationReasonCode
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.ttlv.xml import parse_case_file

__all__ = [
    "CaseResult",
    "Connection",
    "Options",
    "Transport",
    "TransportError",
    "run_case",
    "steps_of",
]


class TransportError(KryptonError):
    """The server could not be reached, or closed the connection without an answer."""


class Transport(Protocol):
    def roundtrip(self, data: bytes) -> bytes: ...


class Connection(Transport, Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Options:
    tolerance: int = DEFAULT_TOLERANCE
    strict: bool = False
    cleanup: bool = True
    ignore: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    path: Path
    passed: bool
    steps: int
    failed_step: int | None = None
    difference: str | None = None
    seconds: float = 0.0
    # The failing step's expected and actual responses (for --verbose).
    expected: Item | None = None
    actual: Item | None = None

    def line(self) -> str:
        if self.passed:
            return f"PASS {self.name}"
        return f"FAIL {self.name}: step {self.failed_step}: {self.difference}"


def steps_of(messages: list[tuple[str, Item]]) -> list[tuple[Item, Item]]:
    """The (request, expected response) pairs of a parsed case file, repaired."""
    kinds = [kind for kind, _ in messages]
    if not kinds or kinds != ["request", "response"] * (len(kinds) // 2):
        raise CaseError("a case file must alternate RequestMessage and ResponseMessage")
    steps = [
        (_repair(messages[i][1]), _repair(messages[i + 1][1])) for i in range(0, len(messages), 2)
    ]
    return _define_late_placeholders(steps)


def _repair(item: Item) -> Item:
    if item.type is ItemType.STRUCTURE:
        children = item.children
        new = tuple(_repair(c) for c in children)
        if all(a is b for a, b in zip(new, children, strict=True)):
            return item
        return Item(item.tag, item.type, new)
    if item.tag == Tag.ATTRIBUTE_NAME and isinstance(item.value, str) and "  " in item.value:
        return Item(item.tag, item.type, " ".join(item.value.split()))
    return item


def _placeholders(item: Item) -> list[Item]:
    if item.type is ItemType.STRUCTURE:
        return [p for c in item.children for p in _placeholders(c)]
    return [item] if isinstance(item.value, Placeholder) else []


def _bind_first(item: Item, like: Item) -> Item | None:
    """``item`` with its first literal of ``like``'s tag and type made ``like``'s placeholder."""
    if item.type is ItemType.STRUCTURE:
        children = list(item.children)
        for i, child in enumerate(children):
            new = _bind_first(child, like)
            if new is not None:
                children[i] = new
                return Item(item.tag, item.type, tuple(children))
        return None
    if item.tag == like.tag and item.type is like.type and not isinstance(item.value, Placeholder):
        return Item(item.tag, item.type, like.value)
    return None


def _define_late_placeholders(steps: list[tuple[Item, Item]]) -> list[tuple[Item, Item]]:
    defined: set[str] = set()
    for i, (request, expected) in enumerate(steps):
        for used in _placeholders(request):
            name = str(used.value)
            if name in defined or name.startswith("$NOW"):
                continue
            for j in range(i - 1, -1, -1):
                bound = _bind_first(steps[j][1], used)
                if bound is not None:
                    steps[j] = (steps[j][0], bound)
                    defined.add(name)
                    break
        defined.update(str(p.value) for p in _placeholders(expected))
    return steps


def _version(request: Item) -> Item | None:
    header = request.find(Tag.REQUEST_HEADER)
    return header.find(Tag.PROTOCOL_VERSION) if header is not None else None


def _message(version: Item, operation: Operation, *payload: Item) -> Item:
    return Item.structure(
        Tag.REQUEST_MESSAGE,
        Item.structure(Tag.REQUEST_HEADER, version, Item.integer(Tag.BATCH_COUNT, 1)),
        Item.structure(
            Tag.BATCH_ITEM,
            Item.enum(Tag.OPERATION, operation),
            Item.structure(Tag.REQUEST_PAYLOAD, *payload),
        ),
    )


def cleanup_messages(version: Item, uids: list[str]) -> list[Item]:
    """Revoke then Destroy each object (each answer is ignored)."""
    out: list[Item] = []
    for uid in uids:
        ident = Item.text(Tag.UNIQUE_IDENTIFIER, uid)
        reason = Item.structure(
            Tag.REVOCATION_REASON,
            Item.enum(Tag.REVOCATION_REASON_CODE, RevocationReasonCode.CESSATION_OF_OPERATION),
        )
        out.append(_message(version, Operation.REVOKE, ident, reason))
        out.append(_message(version, Operation.DESTROY, ident))
    return out


def run_case(
    path: Path,
    transport: Transport,
    options: Options = Options(),
    *,
    name: str | None = None,
    clock: Callable[[], float] = time.time,
) -> CaseResult:
    """Run every step of one case file; the result names the first difference."""
    name = name or path.stem
    started = time.monotonic()
    try:
        steps = steps_of(parse_case_file(path))
    except KryptonError as exc:
        return CaseResult(name, path, False, 0, 0, f"cannot read the case: {exc.message}")
    session = Session(
        tolerance=options.tolerance,
        strict=options.strict,
        ignore=options.ignore,
        client_times=literal_times(request for request, _ in steps),
    )
    version = _version(steps[0][0])
    for step, (request, expected) in enumerate(steps):
        actual: Item | None = None
        try:
            concrete = session.substitute(request, clock())
            raw = transport.roundtrip(encode(concrete))
            actual = decode(raw)
            diff: Difference | None = session.compare(expected, actual, concrete, clock())
            failure = str(diff) if diff is not None else None
        except (CaseError, EncodeError) as exc:
            failure = f"case error: {exc.message}"
        except TransportError as exc:
            failure = f"no response: {exc.message}"
        except InvalidMessage as exc:
            failure = f"undecodable response: {exc.message}"
        if failure is not None:
            if options.cleanup and version is not None:
                _cleanup(transport, version, session.made_objects())
            seconds = time.monotonic() - started
            return CaseResult(
                name, path, False, len(steps), step, failure, seconds, expected, actual
            )
    return CaseResult(name, path, True, len(steps), seconds=time.monotonic() - started)


def _cleanup(transport: Transport, version: Item, uids: list[str]) -> None:
    for message in cleanup_messages(version, uids):
        try:
            transport.roundtrip(encode(message))
        except KryptonError:
            return
