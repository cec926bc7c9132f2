"""Comparing a server's response with an OASIS test case's expected one (sans-I/O).

How this works
--------------
A :class:`Session` holds what one test-case file has learnt so far: the
*bindings* of its placeholders (``$UNIQUE_IDENTIFIER_0`` -> the item the
server actually returned), the objects the server made, and which of them
the client registered (so their key material, and digest, are known).

``Session.substitute(request, now)`` fills a request before it is sent: a
bound placeholder takes the captured value, ``$NOW`` / ``$NOW-3600`` the
current time (plus or minus that many seconds); an unbound one is a
:class:`CaseError`.

``Session.compare(expected, actual, request, now)`` walks both trees and
returns the first :class:`Difference` (``None`` when they agree). A
placeholder in the expected tree is not compared: an unbound one *captures*
the actual item (same item type required), a bound one must equal what it
captured, and ``$NOW[+-N]`` accepts any time within ``tolerance`` seconds of
``now [+-N]``. Two more values the server chooses are written literally in
the files, as the reference server returned them, and so are read the same
way in every mode:

* times: the KMIP 1.0-1.2 files write the reference run's clock instead of
  ``$NOW``; a literal time in an expected response that no request of the
  file sent (``client_times``) is read as ``$NOW``;
* secrets: key material, digests, cipher text, tags and IVs computed from a
  key the *server* generated (any object the file did not ``Register``),
  and ``RNGRetrieve`` output, are compared by type and length only.

Everything else is compared exactly -- tag, item type, value -- and
structures child by child, in order. New bindings are committed only when
the whole response matched.

Paths use the XML element names; a name that repeats among its siblings
gets a 0-based index (``BatchItem[1]`` is the second batch item). A wrong
``BatchCount`` is reported after the batch item that explains it, a wrong
``ResultStatus`` with the server's Result Reason and Message, and a list
entry that is missing (an Operation in a Query answer) with the others that
are missing too.

Leniencies (all off with ``strict=True``; docs/conformance.md says why):

* ``ResultMessage`` is free text: ignored on both sides.
* ``ServerCorrelationValue`` in the response header is the reference
  server's own log counter: ignored on both sides.
* ``Query`` answers describe the server: their lists (Operation, ObjectType,
  ...) may come in any order and may name more than the test case; the
  contents of ``VendorIdentification`` and ``ServerInformation`` are free.
* ``GetAttributes`` attributes may come in any order; when the request
  selected none (all attributes) the server may return more.
  ``GetAttributeList`` names may come in any order and be more.
* The contents of the ``Random Number Generator`` attribute (the reference
  server's RNG, ANSI X9.31 AES-256) are free; it must be there.

``ignore`` names further tags to drop on both sides, wherever they are.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from krypton.conformance.diff import (
    TYPE_NAME,
    CaseError,
    Difference,
    attribute_name,
    describe,
    format_item,
    scalar_text,
    tag_name,
)
from krypton.ttlv.codec import Placeholder
from krypton.ttlv.enums import Operation
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.ttlv.xml import map_placeholders

__all__ = ["DEFAULT_TOLERANCE", "CaseError", "Difference", "Session", "literal_times"]

DEFAULT_TOLERANCE = 86_400
_NOW = re.compile(r"^\$NOW(?:([+-])(\d+))?$")
_TIME_UNIT = {ItemType.DATE_TIME: 1, ItemType.DATE_TIME_EXTENDED: 1_000_000}

_QUERY_FREE = frozenset((Tag.VENDOR_IDENTIFICATION, Tag.SERVER_INFORMATION))
_RNG_NAME = "Random Number Generator"
# Byte strings that depend on a server-generated key (or are RNG output).
_KEYED = frozenset(
    (
        Tag.KEY_MATERIAL,
        Tag.KEY_VALUE,
        Tag.DIGEST_VALUE,
        Tag.DATA,
        Tag.IV_COUNTER_NONCE,
        Tag.AUTHENTICATED_ENCRYPTION_TAG,
        Tag.MAC_DATA,
        Tag.SIGNATURE_DATA,
    )
)
_SELECTORS = frozenset((Tag.ATTRIBUTE_NAME, Tag.ATTRIBUTE_REFERENCE))
# Operations whose answer names objects the case made (clean-up destroys them).
_MAKERS = frozenset(
    (
        Operation.CREATE,
        Operation.CREATE_KEY_PAIR,
        Operation.REGISTER,
        Operation.RE_KEY,
        Operation.RE_KEY_KEY_PAIR,
        Operation.DERIVE_KEY,
        Operation.CERTIFY,
        Operation.RE_CERTIFY,
        Operation.CREATE_SPLIT_KEY,
        Operation.JOIN_SPLIT_KEY,
        Operation.IMPORT,
    )
)
_UID_TAGS = frozenset(
    (Tag.UNIQUE_IDENTIFIER, Tag.PRIVATE_KEY_UNIQUE_IDENTIFIER, Tag.PUBLIC_KEY_UNIQUE_IDENTIFIER)
)


def literal_times(requests: Iterable[Item]) -> frozenset[tuple[ItemType, int]]:
    """Every concrete time the requests send (a response may echo them exactly)."""
    out: set[tuple[ItemType, int]] = set()
    stack = list(requests)
    while stack:
        item = stack.pop()
        if item.type is ItemType.STRUCTURE:
            stack.extend(item.children)
        elif item.type in _TIME_UNIT and isinstance(item.value, int):
            out.add((item.type, item.value))
    return frozenset(out)


def _offset(match: re.Match[str]) -> int:
    sign, seconds = match.group(1), match.group(2)
    if seconds is None:
        return 0
    return -int(seconds) if sign == "-" else int(seconds)


@dataclass
class Session:
    """The state of one test-case file: captured placeholders, objects made."""

    tolerance: int = DEFAULT_TOLERANCE
    strict: bool = False
    ignore: frozenset[int] = frozenset()
    client_times: frozenset[tuple[ItemType, int]] = frozenset()
    bindings: dict[str, Item] = field(default_factory=dict)
    registered: set[str] = field(default_factory=set)
    made: dict[str, None] = field(default_factory=dict)

    # -- requests ---------------------------------------------------------------------
    def substitute(self, request: Item, now: float) -> Item:
        """``request`` with every placeholder replaced by its captured value or the time."""

        def fill(item: Item) -> Item:
            name = str(item.value)
            when = _NOW.match(name)
            if when is not None:
                unit = _TIME_UNIT.get(item.type)
                if unit is None:
                    raise CaseError(f"{name} in a {TYPE_NAME[item.type]} item")
                return Item(item.tag, item.type, round((now + _offset(when)) * unit))
            bound = self.bindings.get(name)
            if bound is None:
                raise CaseError(f"request uses {name} before any response returned it")
            if bound.type is not item.type:
                raise CaseError(
                    f"{name} was captured as {TYPE_NAME[bound.type]}, "
                    f"the request uses it as {TYPE_NAME[item.type]}"
                )
            return Item(item.tag, item.type, bound.value)

        return map_placeholders(request, fill)

    def made_objects(self) -> list[str]:
        """Identifiers of the objects the server made for this file (for clean-up)."""
        return list(self.made)

    # -- responses --------------------------------------------------------------------
    def compare(
        self, expected: Item, actual: Item, request: Item | None, now: float
    ) -> Difference | None:
        """The first difference between ``expected`` and ``actual``; captures on success."""
        self._note_made(actual)
        matcher = _Matcher(self, dict(self.bindings), now, request)
        ctx = _Ctx(tag_name(expected.tag))
        diff = matcher.item(expected, actual, ctx)
        if diff is not None and diff.path.endswith("/ResponseHeader/BatchCount"):
            # The batch item that is missing or failed says more than the count.
            matcher.bindings = dict(self.bindings)
            batch = matcher.item(_without_count(expected), _without_count(actual), ctx)
            if batch is not None:
                return Difference(batch.path, f"{batch.message} (and BatchCount: {diff.message})")
        if diff is None:
            self.bindings = matcher.bindings
        return diff

    def _note_made(self, response: Item) -> None:
        for batch_item in response.find_all(Tag.BATCH_ITEM):
            op = batch_item.find(Tag.OPERATION)
            payload = batch_item.find(Tag.RESPONSE_PAYLOAD)
            if op is None or op.value not in _MAKERS or payload is None:
                continue
            for child in payload.children:
                if child.tag in _UID_TAGS and isinstance(child.value, str):
                    self.made[child.value] = None
                    if op.value == Operation.REGISTER:
                        self.registered.add(child.value)


def _without_count(message: Item) -> Item:
    children = tuple(
        Item.structure(c.tag, *(x for x in c.children if x.tag != Tag.BATCH_COUNT))
        if c.tag == Tag.RESPONSE_HEADER
        else c
        for c in message.children
    )
    return Item(message.tag, message.type, children)


# -- the tree walk ----------------------------------------------------------------------
class Mode(Enum):
    ORDERED = 0
    UNORDERED = 1
    UNORDERED_MORE_OK = 2


@dataclass(frozen=True, slots=True)
class _Ctx:
    path: str
    index: int = 0
    parents: tuple[int, ...] = ()
    operation: int | None = None
    request: Item | None = None
    batch_item: Item | None = None
    payload_uid: str | None = None
    attribute: str | None = None


def _is_payload(ctx: _Ctx, op: Operation) -> bool:
    return ctx.operation == op and ctx.parents[-1:] == (Tag.RESPONSE_PAYLOAD,)


def _selects_all(request: Item | None) -> bool:
    payload = request.find(Tag.REQUEST_PAYLOAD) if request is not None else None
    return payload is None or not any(c.tag in _SELECTORS for c in payload.children)


class _Matcher:
    """One comparison of an expected tree with an actual one, over trial bindings."""

    def __init__(
        self, session: Session, bindings: dict[str, Item], now: float, request: Item | None
    ) -> None:
        self.session = session
        self.strict = session.strict
        self.bindings = bindings
        self.now = now
        self.request = request

    # -- one item ---------------------------------------------------------------------
    def item(self, exp: Item, act: Item, ctx: _Ctx) -> Difference | None:
        if isinstance(exp.value, Placeholder):
            return self._placeholder(exp, act, ctx)
        if exp.type in _TIME_UNIT and (exp.type, exp.value) not in self.session.client_times:
            return self._time(exp, act, ctx, "$NOW", 0)
        if exp.type is not act.type:
            shown = format_item(act, ctx.attribute)
            return Difference(ctx.path, f"expected {format_item(exp, ctx.attribute)}, got {shown}")
        if exp.type is ItemType.STRUCTURE:
            return self._structure(exp, act, ctx)
        if exp.value == act.value and type(exp.value) is type(act.value):
            return None
        if self._keyed(exp, ctx):
            return self._length(exp, act, ctx)
        if self._free_value(exp, ctx):
            return None
        message = (
            f"expected {format_item(exp, ctx.attribute)}, got {scalar_text(act, ctx.attribute)}"
        )
        if exp.tag == Tag.RESULT_STATUS and ctx.batch_item is not None:
            message += _failure_note(ctx.batch_item)
        return Difference(ctx.path, message)

    def _time(self, exp: Item, act: Item, ctx: _Ctx, name: str, offset: int) -> Difference | None:
        unit = _TIME_UNIT.get(act.type)
        if unit is None or not isinstance(act.value, int):
            return Difference(ctx.path, f"expected a time ({name}), got {format_item(act)}")
        off = act.value / unit - (self.now + offset)
        if abs(off) <= self.session.tolerance:
            return None
        shown = name if isinstance(exp.value, Placeholder) else f"{format_item(exp)} (as $NOW)"
        return Difference(
            ctx.path,
            f"expected {shown} within {self.session.tolerance} s, "
            f"got {scalar_text(act)} ({off:+.0f} s)",
        )

    def _placeholder(self, exp: Item, act: Item, ctx: _Ctx) -> Difference | None:
        name = str(exp.value)
        when = _NOW.match(name)
        if when is not None:
            return self._time(exp, act, ctx, name, _offset(when))
        if act.type is not exp.type:
            return Difference(
                ctx.path, f"expected {TYPE_NAME[exp.type]} {name}, got {format_item(act)}"
            )
        bound = self.bindings.get(name)
        if bound is None:
            self.bindings[name] = Item(act.tag, act.type, act.value)
            return None
        if bound.value != act.value:
            return Difference(
                ctx.path, f"expected {name} = {scalar_text(bound)}, got {scalar_text(act)}"
            )
        return None

    def _keyed(self, exp: Item, ctx: _Ctx) -> bool:
        if exp.type is not ItemType.BYTE_STRING or exp.tag not in _KEYED:
            return False
        return (
            ctx.operation == Operation.RNG_RETRIEVE
            or ctx.payload_uid not in self.session.registered
        )

    def _length(self, exp: Item, act: Item, ctx: _Ctx) -> Difference | None:
        want, got = len(exp.value), len(act.value)  # type: ignore[arg-type]
        if want == got:
            return None
        return Difference(
            ctx.path, f"expected a ByteString of {want} bytes (server-generated), got {got}"
        )

    def _free_value(self, exp: Item, ctx: _Ctx) -> bool:
        return not self.strict and exp.tag in _QUERY_FREE and ctx.operation == Operation.QUERY

    def _free_structure(self, exp: Item, ctx: _Ctx) -> bool:
        if exp.tag in _QUERY_FREE and ctx.operation == Operation.QUERY:
            return True
        if exp.tag == Tag.RANDOM_NUMBER_GENERATOR:
            return True
        return exp.tag == Tag.ATTRIBUTE_VALUE and ctx.attribute == _RNG_NAME

    # -- structures -------------------------------------------------------------------
    def _structure(self, exp: Item, act: Item, ctx: _Ctx) -> Difference | None:
        if not self.strict and self._free_structure(exp, ctx):
            return None
        ctx = self._enter(exp, act, ctx)
        if exp.tag == Tag.BATCH_ITEM:
            status = self._status_first(exp, act, ctx)
            if status is not None:
                return status
        exp_children = self._kept(exp.children, ctx)
        act_children = self._kept(act.children, ctx)
        mode = self._mode(ctx, any(c.tag == Tag.ATTRIBUTES for c in exp_children))
        counts = _repeated(exp_children, act_children)
        if mode is Mode.ORDERED:
            return self._ordered(exp_children, act_children, ctx, counts)
        return self._unordered(exp_children, act_children, ctx, counts, mode)

    def _status_first(self, exp: Item, act: Item, ctx: _Ctx) -> Difference | None:
        """A batch item that failed (or succeeded) unexpectedly: say so, not what is missing."""
        want, got = exp.find(Tag.RESULT_STATUS), act.find(Tag.RESULT_STATUS)
        if want is None or got is None or want.value == got.value:
            return None
        return self.item(want, got, dataclasses.replace(ctx, path=f"{ctx.path}/ResultStatus"))

    def _enter(self, exp: Item, act: Item, ctx: _Ctx) -> _Ctx:
        changes: dict[str, object] = {"parents": (*ctx.parents, exp.tag)}
        if exp.tag == Tag.BATCH_ITEM:
            op = exp.find(Tag.OPERATION)
            changes["operation"] = op.value if op is not None else None
            changes["request"] = self._request_item(ctx.index)
            changes["batch_item"] = act
        elif exp.tag == Tag.RESPONSE_PAYLOAD:
            uid = act.find(Tag.UNIQUE_IDENTIFIER)
            changes["payload_uid"] = uid.value if uid is not None else None
        name = attribute_name(exp.children)
        if name is not None:
            changes["attribute"] = name
        return dataclasses.replace(ctx, **changes)  # type: ignore[arg-type]

    def _request_item(self, index: int) -> Item | None:
        if self.request is None:
            return None
        items = list(self.request.find_all(Tag.BATCH_ITEM))
        return items[index] if index < len(items) else None

    def _kept(self, children: tuple[Item, ...], ctx: _Ctx) -> list[Item]:
        ignore = self.session.ignore
        kept = [c for c in children if c.tag not in ignore] if ignore else list(children)
        if self.strict:
            return kept
        if ctx.parents[-1:] == (Tag.BATCH_ITEM,):
            return [c for c in kept if c.tag != Tag.RESULT_MESSAGE]
        if ctx.parents[-1:] == (Tag.RESPONSE_HEADER,):
            return [c for c in kept if c.tag != Tag.SERVER_CORRELATION_VALUE]
        return kept

    def _mode(self, ctx: _Ctx, has_attributes: bool) -> Mode:
        if self.strict:
            return Mode.ORDERED
        if _is_payload(ctx, Operation.QUERY) or _is_payload(ctx, Operation.GET_ATTRIBUTE_LIST):
            return Mode.UNORDERED_MORE_OK
        in_attributes = ctx.parents[-2:] == (Tag.RESPONSE_PAYLOAD, Tag.ATTRIBUTES)
        # 1.x: the payload holds the Attribute structures; 2.x: one Attributes.
        if (_is_payload(ctx, Operation.GET_ATTRIBUTES) and not has_attributes) or (
            ctx.operation == Operation.GET_ATTRIBUTES and in_attributes
        ):
            return Mode.UNORDERED_MORE_OK if _selects_all(ctx.request) else Mode.UNORDERED
        return Mode.ORDERED

    def _ordered(
        self, exp: list[Item], act: list[Item], ctx: _Ctx, counts: dict[int, int]
    ) -> Difference | None:
        seen: dict[int, int] = {}
        for i, e in enumerate(exp):
            k = seen[e.tag] = seen.get(e.tag, -1) + 1
            if i >= len(act):
                return Difference(_child_path(ctx, e.tag, k, counts), _missing(e, ctx))
            a = act[i]
            if a.tag != e.tag:
                if any(x.tag == e.tag for x in act[i + 1 :]):
                    return _unexpected(act, i, ctx, counts)
                return Difference(
                    _child_path(ctx, e.tag, k, counts),
                    f"{_missing(e, ctx)}; got {tag_name(a.tag)} in its place",
                )
            diff = self.item(e, a, self._child_ctx(ctx, e.tag, k, counts))
            if diff is not None:
                return diff
        if len(act) > len(exp):
            return _unexpected(act, len(exp), ctx, counts)
        return None

    def _unordered(
        self, exp: list[Item], act: list[Item], ctx: _Ctx, counts: dict[int, int], mode: Mode
    ) -> Difference | None:
        used = [False] * len(act)
        seen: dict[int, int] = {}
        missing: list[tuple[Difference, Item]] = []
        for e in exp:
            k = seen[e.tag] = seen.get(e.tag, -1) + 1
            child_ctx = self._child_ctx(ctx, e.tag, k, counts)
            first_diff: Difference | None = None
            for j, a in enumerate(act):
                if used[j] or a.tag != e.tag:
                    continue
                saved = dict(self.bindings)
                diff = self.item(e, a, child_ctx)
                if diff is None:
                    used[j] = True
                    break
                self.bindings = saved
                if first_diff is None and _same_identity(e, a):
                    first_diff = diff
            else:
                if first_diff is not None:
                    return first_diff
                missing.append((Difference(child_ctx.path, _missing(e, ctx)), e))
        if missing:
            # A list (Query, Get Attribute List) is more useful seen whole.
            first, _ = missing[0]
            rest = [_short(e, ctx) for _, e in missing[1:]]
            more = f" (also missing: {', '.join(rest)})" if rest else ""
            return Difference(first.path, first.message + more)
        if mode is Mode.UNORDERED:
            for j in range(len(act)):
                if not used[j]:
                    return _unexpected(act, j, ctx, counts)
        return None

    def _child_ctx(self, ctx: _Ctx, tag: int, k: int, counts: dict[int, int]) -> _Ctx:
        return dataclasses.replace(ctx, path=_child_path(ctx, tag, k, counts), index=k)


def _child_path(ctx: _Ctx, tag: int, k: int, counts: dict[int, int]) -> str:
    name = tag_name(tag)
    return f"{ctx.path}/{name}[{k}]" if counts.get(tag, 0) > 1 else f"{ctx.path}/{name}"


def _missing(item: Item, ctx: _Ctx) -> str:
    return f"missing {describe(item, ctx.attribute)}"


def _short(item: Item, ctx: _Ctx) -> str:
    if item.type is ItemType.STRUCTURE:
        return describe(item, ctx.attribute)
    return scalar_text(item, ctx.attribute)


def _unexpected(act: list[Item], j: int, ctx: _Ctx, counts: dict[int, int]) -> Difference:
    a = act[j]
    k = sum(1 for x in act[:j] if x.tag == a.tag)
    return Difference(
        _child_path(ctx, a.tag, k, counts), f"unexpected {describe(a, ctx.attribute)}"
    )


def _repeated(exp: list[Item], act: list[Item]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for children in (exp, act):
        mine: dict[int, int] = {}
        for c in children:
            mine[c.tag] = mine.get(c.tag, 0) + 1
        for tag, n in mine.items():
            counts[tag] = max(counts.get(tag, 0), n)
    return counts


def _failure_note(batch_item: Item) -> str:
    reason = batch_item.find(Tag.RESULT_REASON)
    message = batch_item.find(Tag.RESULT_MESSAGE)
    parts = [scalar_text(x) for x in (reason, message) if x is not None]
    return f" ({' '.join(parts)})" if parts else ""


_IDENTITY: dict[int, Callable[[Item], object]] = {
    Tag.ATTRIBUTE: lambda item: attribute_name(item.children),
}


def _same_identity(exp: Item, act: Item) -> bool:
    """Whether a failed candidate is worth reporting: the same attribute, say.

    A scalar that found no equal is simply missing; a structure (an attribute)
    is reported by the difference inside it, if it is the same attribute.
    """
    if exp.type is not ItemType.STRUCTURE:
        return False
    key = _IDENTITY.get(exp.tag)
    return key is None or key(exp) == key(act)
