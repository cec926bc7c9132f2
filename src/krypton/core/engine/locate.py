"""Locate on the Core registry.

How this works
--------------
The request's attributes (1.x: ``Attribute`` structures directly in the
payload; 2.x: one ``Attributes`` structure; either is accepted in any
version) are split in two. What the registry indexes — Object Type, State,
one Name, one Object Group, custom attributes with a scalar value — becomes
a :class:`~krypton.model.registry.LocateQuery`, answered from indexes. Every
other attribute (a second Name, Cryptographic Algorithm, Usage Mask, dates,
structures given in part...) is matched against the candidates' records
afterwards, by the spec's rules (KMIP 2.1 §6.1.28): a structure matches when
the fields given match; a Usage Mask matches when the object has every bit
asked for; two instances of a Date attribute are an inclusive range.

Destroyed objects are left out unless the Storage Status Mask asks for them
(it may be an Integer or an Enumeration: clients differ); there is no archive,
so the Archival bit finds nothing more. Object Group Member is accepted and
ignored (there is no fresh/default group policy). The answer lists the most recently
created object first, then applies Offset Items and Maximum Items; Located
Items (1.3+) counts every match and is sent when the client pages. A Locate
that returns exactly one identifier sets the ID Placeholder.

When every filter is indexed (the usual Locate: Object Type, State, a Name...)
the registry does all of it — the Storage Status Mask, the order, Offset
Items and Maximum Items in the statement, Located Items as a COUNT — so a page
costs its size whatever the number of matches (issue 16). Only a filter
matched on the records makes this handler read every candidate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from krypton.core.engine.objects import CoreServices, custom_text, name_value
from krypton.engine.objects import Outcome, all_attributes, int_of, payload_fields
from krypton.errors import InvalidField
from krypton.kmip.attributes import Attribute, parse_attributes, parse_v2
from krypton.kmip.versions import ProtocolVersion
from krypton.model.context import RequestContext
from krypton.model.registry import LocateQuery, ObjectRecord
from krypton.ttlv.enums import StorageStatusMask
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

_S = ItemType.STRUCTURE
_V13 = ProtocolVersion(1, 3)
_END_OF_TIME = 2**63 - 1
_FETCH_CONCURRENCY = 64
_MASK_TYPES = frozenset((ItemType.INTEGER, ItemType.ENUMERATION))
_USAGE = "Cryptographic Usage Mask"


def _count(f: dict[int, Item], tag: int, what: str) -> int | None:
    item = f.get(tag)
    if item is None:
        return None
    value = int_of(item)
    if item.type is not ItemType.INTEGER or value is None or value < 0:
        raise InvalidField(f"Locate: {what} must be a non-negative Integer")
    return value


def _storage_mask(f: dict[int, Item]) -> int:
    item = f.get(Tag.STORAGE_STATUS_MASK)
    if item is None:
        return StorageStatusMask.ON_LINE_STORAGE
    value = int_of(item)
    if item.type not in _MASK_TYPES or value is None:
        raise InvalidField("Locate: Storage Status Mask must be an Integer")
    return value or StorageStatusMask.ON_LINE_STORAGE


def _requested(payload: Item | None) -> tuple[dict[int, Item], list[Attribute]]:
    if payload is None:
        return {}, []
    singles = tuple(c for c in payload.children if c.tag != Tag.ATTRIBUTE)
    f = payload_fields(Item(payload.tag, payload.type, singles), "Locate")
    attrs = [parse_v2(c) for c in payload.children if c.tag == Tag.ATTRIBUTE]
    a2 = f.get(Tag.ATTRIBUTES)
    if a2 is not None:
        attrs.extend(parse_attributes(a2))
    return f, attrs


def _split(tenant: str, attrs: list[Attribute]) -> tuple[LocateQuery, list[Attribute]]:
    """The indexed part of the filters as a query, and the rest."""
    q = LocateQuery(tenant)
    custom: list[tuple[str, str]] = []
    rest: list[Attribute] = []
    for a in attrs:
        v = a.value
        if a.name == "Object Type" and q.object_type is None and v.type is ItemType.ENUMERATION:
            q = replace(q, object_type=int_of(v))
        elif a.name == "State" and q.state is None and v.type is ItemType.ENUMERATION:
            q = replace(q, state=int_of(v))
        elif a.name == "Name" and q.name is None and v.type is _S and name_value(v) is not None:
            q = replace(q, name=name_value(v))
            if any(c.tag != Tag.NAME_VALUE for c in v.children):
                rest.append(a)  # the Name Type is checked on the record
        elif a.name == "Object Group" and q.group is None and isinstance(v.value, str):
            q = replace(q, group=v.value)
        elif a.custom and custom_text(v) is not None:
            custom.append((a.name, custom_text(v) or ""))
        else:
            rest.append(a)
    return replace(q, custom=tuple(custom)), rest


def _item_matches(want: Item, have: Item) -> bool:
    if want.type is _S:
        return have.type is _S and all(
            any(_item_matches(w, h) for h in have.children if h.tag == w.tag) for w in want.children
        )
    return want.type is have.type and want.value == have.value


def _matches(have: list[Attribute], want: dict[str, list[Item]]) -> bool:
    for name, values in want.items():
        cands = [a.value for a in have if a.name == name]
        if not cands:
            return False
        if name == _USAGE:
            masks = [int_of(c) or 0 for c in cands]
            for v in values:
                bits = int_of(v) or 0
                if not any(m & bits == bits for m in masks):
                    return False
        elif len(values) == 2 and all(v.type is ItemType.DATE_TIME for v in values):
            lo, hi = sorted(int_of(v) or 0 for v in values)
            if not any(lo <= (int_of(c) or 0) <= hi for c in cands):
                return False
        elif not all(any(_item_matches(v, c) for c in cands) for v in values):
            return False
    return True


def _grouped(rest: list[Attribute]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for a in rest:
        if a.value.type is ItemType.DATE_TIME and a.value.value == _END_OF_TIME:
            continue  # "set to its largest possible value ... equivalent to an undefined attribute"
        out.setdefault(a.name, []).append(a.value)
    return out


async def _records(svc: CoreServices, tenant: str, uids: Sequence[str]) -> list[ObjectRecord]:
    out: list[ObjectRecord] = []
    for start in range(0, len(uids), _FETCH_CONCURRENCY):
        chunk = uids[start : start + _FETCH_CONCURRENCY]
        got = await asyncio.gather(*(svc.registry.get_object(tenant, u) for u in chunk))
        out.extend(r for r in got if r is not None)
    return out


def _destroyed(mask: int) -> bool | None:
    """Which states the Storage Status Mask asks for: None, any; True, only
    destroyed objects; False, none of them (on-line storage, and a mask of
    bits that find nothing here, Archival)."""
    online = bool(mask & StorageStatusMask.ON_LINE_STORAGE)
    destroyed = bool(mask & StorageStatusMask.DESTROYED_STORAGE)
    return None if online and destroyed else destroyed


async def _matched(
    svc: CoreServices, query: LocateQuery, want: dict[str, list[Item]]
) -> list[str]:
    """Every candidate, newest first, whose record matches ``want`` (the filters
    the registry does not index)."""
    uids = await svc.registry.locate(query)
    records = {r.uid: r for r in await _records(svc, query.tenant, uids)}
    return [u for u in uids if u in records and _matches(all_attributes(records[u]), want)]


async def locate(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    f, attrs = _requested(payload)
    maximum = _count(f, Tag.MAXIMUM_ITEMS, "Maximum Items")
    offset = _count(f, Tag.OFFSET_ITEMS, "Offset Items")
    mask = _storage_mask(f)
    query, rest = _split(ctx.tenant, attrs)
    # most recently created first (2.1 §6.1.28)
    query = replace(query, destroyed=_destroyed(mask), newest_first=True)
    counted = ctx.version >= _V13 and (maximum is not None or offset is not None)
    want = _grouped(rest)
    total = 0
    if want:
        uids = await _matched(svc, query, want)
        total, start = len(uids), offset or 0
        page = uids[start:] if maximum is None else uids[start : start + maximum]
    else:
        page = await svc.registry.locate(replace(query, offset=offset or 0, limit=maximum))
        if counted:
            total = await svc.registry.locate_count(query)
    out: list[Item] = []
    if counted:
        out.append(Item.integer(Tag.LOCATED_ITEMS, total))
    out.extend(Item.text(Tag.UNIQUE_IDENTIFIER, u) for u in page)
    return Outcome(
        Item(Tag.RESPONSE_PAYLOAD, _S, tuple(out)), uid=page[0] if len(page) == 1 else None
    )
