"""Get Attributes / Get Attribute List: reading the selectors, answering in either dialect.

Shared by the gateway's handlers (:mod:`krypton.gateway.engine.info`, vault records)
and the Core's (:mod:`krypton.core.engine.attrs_edit`, registry records): both
turn their record into a list of canonical attributes and let these helpers
pick and shape the answer.
"""

from __future__ import annotations

from krypton.engine.objects import payload_fields
from krypton.errors import InvalidMessage
from krypton.kmip.attr_versions import for_version
from krypton.kmip.attributes import Attribute, attributes_v2, parse_reference, reference_v2, to_v1
from krypton.model.context import RequestContext
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

_S = ItemType.STRUCTURE
SELECTORS = (Tag.ATTRIBUTE_NAME, Tag.ATTRIBUTE_REFERENCE)


def selected_names(payload: Item | None) -> list[str]:
    """The attributes a Get Attributes request names (1.x names or 2.x references)."""
    if payload is None:
        return []
    names = [parse_reference(c) for c in payload.children if c.tag in SELECTORS]
    if len(set(names)) != len(names):
        raise InvalidMessage("Get Attributes: the same attribute is named more than once")
    return names


def non_selector_fields(payload: Item | None) -> dict[int, Item]:
    """The payload's single-valued fields; the selectors may repeat and are read apart."""
    if payload is None:
        return {}
    rest = tuple(c for c in payload.children if c.tag not in SELECTORS)
    return payload_fields(Item(payload.tag, payload.type, rest), "Get Attributes")


def pick(attrs: list[Attribute], wanted: list[str]) -> list[Attribute]:
    """The attributes named in ``wanted`` (all when empty), in the order asked for."""
    if not wanted:
        return attrs
    order = {name: i for i, name in enumerate(wanted)}
    return sorted((a for a in attrs if a.name in order), key=lambda a: order[a.name])


def attributes_payload(ctx: RequestContext, uid: str, attrs: list[Attribute]) -> Item:
    attrs = for_version(attrs, ctx.version)
    uid_item = Item.text(Tag.UNIQUE_IDENTIFIER, uid)
    if ctx.version.v2:
        return Item.structure(Tag.RESPONSE_PAYLOAD, uid_item, attributes_v2(attrs))
    return Item(
        Tag.RESPONSE_PAYLOAD, _S, (uid_item, *(to_v1(a, with_index=a.index > 0) for a in attrs))
    )


def attribute_list_payload(ctx: RequestContext, uid: str, attrs: list[Attribute]) -> Item:
    attrs = for_version(attrs, ctx.version)
    names = list(dict.fromkeys(a.name for a in attrs))
    if ctx.version.v2:
        refs = tuple(reference_v2(n) for n in names)
    else:
        refs = tuple(Item.text(Tag.ATTRIBUTE_NAME, n) for n in names)
    return Item(Tag.RESPONSE_PAYLOAD, _S, (Item.text(Tag.UNIQUE_IDENTIFIER, uid), *refs))
