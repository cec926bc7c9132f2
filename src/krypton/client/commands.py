"""The operations of ``krypton kmip``, for people: requests built and answers
read into rows of text (sans-I/O; :class:`krypton.client.sync.KmipClient`
carries them).

Each command is a :class:`Command`: a function from its arguments to one
request batch item, and a function from the answer's payload to rows (one
``dict[str, str]`` per row, the same keys in every row). Values are shown as
the OASIS XML test cases write them: enumerations and masks by name, dates in
ISO 8601, byte strings in hex. Only ``get`` of a key shows key material, in
hex, since that is what it was asked for; nothing else ever does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from krypton.errors import InvalidField
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import (
    Attribute,
    attributes_v2,
    parse_v1,
    parse_v2,
    reference_v2,
    to_v1,
)
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.enums import (
    NameType,
    ObjectType,
    Operation,
    QueryFunction,
    RevocationReasonCode,
    State,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.ttlv.xml import item_to_element

Row = dict[str, str]
E = TypeVar("E", bound=IntEnum)

_COMPROMISE = frozenset({RevocationReasonCode.KEY_COMPROMISE, RevocationReasonCode.CA_COMPROMISE})


def enum_named(cls: type[E], text: str) -> E:
    """``"pre-active"``, ``"Pre Active"`` or ``"PRE_ACTIVE"`` → the member."""
    key = text.strip().upper().replace("-", "_").replace(" ", "_")
    try:
        return cls[key]
    except KeyError:
        names = ", ".join(m.name.lower().replace("_", "-") for m in cls)
        raise InvalidField(f"{text!r} is not one of: {names}") from None


def choices(cls: type[IntEnum]) -> list[str]:
    return [m.name.lower().replace("_", "-") for m in cls]


VERSIONS = ("1.0", "1.1", "1.2", "1.3", "1.4", "2.0", "2.1")


def version_of(text: str) -> ProtocolVersion:
    """``"1.4"`` → ProtocolVersion(1, 4)."""
    major, _, minor = text.partition(".")
    return ProtocolVersion(int(major), int(minor))


REVOCATION_REASONS = [m.name.lower().replace("_", "-") for m in RevocationReasonCode]


def show(item: Item, attribute_name: str | None = None) -> str:
    """One value as text (a structure as ``Field=value`` pairs)."""
    element = item_to_element(item, attribute_name)
    if item.type is ItemType.STRUCTURE:
        return ", ".join(f"{c.tag}={c.get('value', '')}" for c in element.iter() if c is not
                         element and c.get("value") is not None)
    return element.get("value", "")


def _uid(uid: str) -> Item:
    return Item.text(Tag.UNIQUE_IDENTIFIER, uid)


def _uid_row(payload: Item | None) -> list[Row]:
    uid = payload.find(Tag.UNIQUE_IDENTIFIER) if payload is not None else None
    return [{"uid": str(uid.value) if uid is not None else ""}]


def _name(name: str) -> Attribute:
    return Attribute("Name", Item.structure(
        Tag.NAME, Item.text(Tag.NAME_VALUE, name),
        Item.enum(Tag.NAME_TYPE, NameType.UNINTERPRETED_TEXT_STRING)))


# -- requests ---------------------------------------------------------------------
def create(version: ProtocolVersion, *, length: int = 256, name: str | None = None) -> Item:
    return cm.create_item(version, cm.aes_attributes(length, name=name))


def get(version: ProtocolVersion, *, uid: str) -> Item:
    return cm.get_item(uid)


def locate(version: ProtocolVersion, *, name: str | None = None, state: str | None = None,
           object_type: str | None = None, max_items: int | None = None) -> Item:
    attrs: list[Attribute] = []
    if object_type is not None:
        attrs.append(Attribute("Object Type", Item.enum(
            Tag.OBJECT_TYPE, enum_named(ObjectType, object_type))))
    if state is not None:
        attrs.append(Attribute("State", Item.enum(Tag.STATE, enum_named(State, state))))
    if name is not None:
        attrs.append(_name(name))
    children: list[Item] = []
    if max_items is not None:
        children.append(Item.integer(Tag.MAXIMUM_ITEMS, max_items))
    if version.v2:
        children.append(attributes_v2(attrs))
    else:
        children.extend(to_v1(a) for a in attrs)
    return cm.batch_item(Operation.LOCATE, cm.payload(*children))


def activate(version: ProtocolVersion, *, uid: str) -> Item:
    return cm.batch_item(Operation.ACTIVATE, cm.payload(_uid(uid)))


def revoke(version: ProtocolVersion, *, uid: str, reason: str = "cessation-of-operation",
           message: str | None = None) -> Item:
    code = enum_named(RevocationReasonCode, reason)
    why = [Item.enum(Tag.REVOCATION_REASON_CODE, code)]
    if message:
        why.append(Item.text(Tag.REVOCATION_MESSAGE, message))
    extra = [Item.datetime(Tag.COMPROMISE_OCCURRENCE_DATE, int(time.time()))] \
        if code in _COMPROMISE else []
    return cm.batch_item(Operation.REVOKE, cm.payload(
        _uid(uid), Item.structure(Tag.REVOCATION_REASON, *why), *extra))


def destroy(version: ProtocolVersion, *, uid: str) -> Item:
    return cm.batch_item(Operation.DESTROY, cm.payload(_uid(uid)))


def query(version: ProtocolVersion) -> Item:
    functions = (QueryFunction.QUERY_OPERATIONS, QueryFunction.QUERY_OBJECTS,
                 QueryFunction.QUERY_SERVER_INFORMATION)
    return cm.batch_item(Operation.QUERY, cm.payload(
        *(Item.enum(Tag.QUERY_FUNCTION, f) for f in functions)))


def attributes(version: ProtocolVersion, *, uid: str, names: Sequence[str] = ()) -> Item:
    if version.v2:
        refs = [reference_v2(n) for n in names]
    else:
        refs = [Item.text(Tag.ATTRIBUTE_NAME, n) for n in names]
    return cm.batch_item(Operation.GET_ATTRIBUTES, cm.payload(_uid(uid), *refs))


# -- answers ----------------------------------------------------------------------
def _get_rows(payload: Item | None) -> list[Row]:
    assert payload is not None
    row = _uid_row(payload)[0]
    kind = payload.find(Tag.OBJECT_TYPE)
    row["object_type"] = show(kind) if kind is not None else ""
    key = payload.find(Tag.SYMMETRIC_KEY)
    block = key.find(Tag.KEY_BLOCK) if key is not None else None
    alg = block.find(Tag.CRYPTOGRAPHIC_ALGORITHM) if block is not None else None
    length = block.find(Tag.CRYPTOGRAPHIC_LENGTH) if block is not None else None
    row["algorithm"] = show(alg) if alg is not None else ""
    row["length"] = show(length) if length is not None else ""
    row["key"] = cm.key_material(payload).hex() if key is not None else ""
    return [row]


def _locate_rows(payload: Item | None) -> list[Row]:
    if payload is None:
        return []
    return [{"uid": str(c.value)} for c in payload.children if c.tag == Tag.UNIQUE_IDENTIFIER]


_QUERY_KINDS: Mapping[int, str] = {
    Tag.OPERATION: "operation",
    Tag.OBJECT_TYPE: "object type",
    Tag.VENDOR_IDENTIFICATION: "vendor",
    Tag.SERVER_INFORMATION: "server information",
}


def _query_rows(payload: Item | None) -> list[Row]:
    if payload is None:
        return []
    return [{"kind": _QUERY_KINDS[c.tag], "value": show(c)}
            for c in payload.children if c.tag in _QUERY_KINDS]


def _attribute_rows(payload: Item | None) -> list[Row]:
    if payload is None:
        return []
    found: list[Attribute] = []
    for child in payload.children:
        if child.tag == Tag.ATTRIBUTE:
            found.append(parse_v1(child))
        elif child.tag == Tag.ATTRIBUTES:
            found.extend(parse_v2(c) for c in child.children)
    return [{"name": a.name, "index": str(a.index), "value": show(a.value, a.name)}
            for a in found]


@dataclass(frozen=True, slots=True)
class Command:
    request: Callable[..., Item]
    rows: Callable[[Item | None], list[Row]]


COMMANDS: Mapping[str, Command] = {
    "create": Command(create, _uid_row),
    "get": Command(get, _get_rows),
    "locate": Command(locate, _locate_rows),
    "activate": Command(activate, _uid_row),
    "revoke": Command(revoke, _uid_row),
    "destroy": Command(destroy, _uid_row),
    "query": Command(query, _query_rows),
    "attributes": Command(attributes, _attribute_rows),
}


def table(rows: Sequence[Row]) -> str:
    """Rows as a plain text table with a header line (empty when no rows)."""
    if not rows:
        return "(none)"
    columns = list(rows[0])
    widths = [max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(r.get(c, "").ljust(w) for c, w in zip(columns, widths, strict=True))
              for r in rows]
    return "\n".join(line.rstrip() for line in lines)
