"""Handlers that only read: Get Attributes, Get Attribute List, Discover Versions, Query."""

from __future__ import annotations

from krypton.engine.attr_view import (
    attribute_list_payload,
    attributes_payload,
    non_selector_fields,
    pick,
    selected_names,
)
from krypton.engine.context import RequestContext
from krypton.engine.objects import (
    Outcome,
    Services,
    load_through,
    object_attributes,
    payload_fields,
    request_uid,
)
from krypton.errors import InvalidMessage
from krypton.kmip.versions import SUPPORTED, ProtocolVersion
from krypton.ttlv.enums import ObjectType, QueryFunction
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

_S = ItemType.STRUCTURE
_OBJECT_TYPES = (ObjectType.SYMMETRIC_KEY, ObjectType.SECRET_DATA, ObjectType.OPAQUE_OBJECT)


async def get_attributes(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = non_selector_fields(payload)
    uid = request_uid(f, ctx)
    assert uid is not None
    rec = await load_through(svc, ctx, uid)
    attrs = pick(object_attributes(rec), selected_names(payload))
    return Outcome(attributes_payload(ctx, rec.uid, attrs))


async def get_attribute_list(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = payload_fields(payload, "Get Attribute List")
    uid = request_uid(f, ctx)
    assert uid is not None
    rec = await load_through(svc, ctx, uid)
    return Outcome(attribute_list_payload(ctx, rec.uid, object_attributes(rec)))


def _version_item(v: ProtocolVersion) -> Item:
    return Item.structure(
        Tag.PROTOCOL_VERSION,
        Item.integer(Tag.PROTOCOL_VERSION_MAJOR, v.major),
        Item.integer(Tag.PROTOCOL_VERSION_MINOR, v.minor),
    )


def _parse_version(item: Item) -> ProtocolVersion | None:
    major = item.find(Tag.PROTOCOL_VERSION_MAJOR)
    minor = item.find(Tag.PROTOCOL_VERSION_MINOR)
    if major is None or minor is None:
        raise InvalidMessage("Discover Versions: malformed Protocol Version")
    if not isinstance(major.value, int) or not isinstance(minor.value, int):
        raise InvalidMessage("Discover Versions: malformed Protocol Version")
    return ProtocolVersion(major.value, minor.value)


async def discover_versions(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    offered = (
        []
        if payload is None
        else [_parse_version(c) for c in payload.children if c.tag == Tag.PROTOCOL_VERSION]
    )
    if offered:
        ours = set(SUPPORTED)
        versions = [v for v in offered if v in ours]
    else:
        versions = list(SUPPORTED)
    return Outcome(Item(Tag.RESPONSE_PAYLOAD, _S, tuple(_version_item(v) for v in versions if v)))


async def query(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    from krypton.engine.dispatch import supported_operations

    functions: list[int] = []
    for c in payload.children if payload is not None else ():
        if c.tag == Tag.QUERY_FUNCTION:
            if c.type is not ItemType.ENUMERATION or not isinstance(c.value, int):
                raise InvalidMessage("Query: Query Function must be an Enumeration")
            functions.append(c.value)
    out: list[Item] = []
    if QueryFunction.QUERY_OPERATIONS in functions:
        out.extend(Item.enum(Tag.OPERATION, op) for op in supported_operations(svc))
    if QueryFunction.QUERY_OBJECTS in functions:
        types = _OBJECT_TYPES if svc.upstream is not None else _OBJECT_TYPES[:1]
        out.extend(Item.enum(Tag.OBJECT_TYPE, t) for t in types)
    if QueryFunction.QUERY_SERVER_INFORMATION in functions:
        out.append(Item.text(Tag.VENDOR_IDENTIFICATION, svc.info.vendor))
        out.append(
            Item.structure(
                Tag.SERVER_INFORMATION,
                Item.text(Tag.SERVER_NAME, svc.info.product),
                Item.text(Tag.SERVER_VERSION, svc.info.version),
            )
            if ctx.version.v2
            else Item.structure(Tag.SERVER_INFORMATION)
        )
    return Outcome(Item(Tag.RESPONSE_PAYLOAD, _S, tuple(out)))
