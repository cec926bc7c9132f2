"""Handlers that change no object: Get Attributes, Get Attribute List, Discover Versions,
Query, and the two the KMIP test harness uses, Interop and Log."""

from __future__ import annotations

import logging

from krypton.engine.attr_view import (
    attribute_list_payload,
    attributes_payload,
    non_selector_fields,
    pick,
    selected_names,
)
from krypton.engine.objects import Outcome, all_attributes, payload_fields, request_uid
from krypton.errors import FeatureNotSupported, InvalidField, InvalidMessage, OperationNotSupported
from krypton.gateway.engine.operations import supported_operations
from krypton.gateway.engine.services import Services, load_through
from krypton.kmip.versions import SUPPORTED, ProtocolVersion
from krypton.model.context import RequestContext
from krypton.ttlv.enums import InteropFunction, ObjectType, Operation, QueryFunction
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

log = logging.getLogger("krypton.log")

_S = ItemType.STRUCTURE
LOG_MESSAGE_MAX = 1024  # characters of a client's Log Message kept in the server log
_OBJECT_TYPES = (  # the first one made here; the others registered at the Core
    ObjectType.SYMMETRIC_KEY, ObjectType.SECRET_DATA, ObjectType.OPAQUE_OBJECT,
    ObjectType.PRIVATE_KEY, ObjectType.PUBLIC_KEY, ObjectType.CERTIFICATE,
)  # fmt: skip
# The last Operation each 1.x version defines: a 1.x client has no name for a later one.
_LAST_OPERATION = {
    ProtocolVersion(1, 0): Operation.PUT,
    ProtocolVersion(1, 1): Operation.DISCOVER_VERSIONS,
    ProtocolVersion(1, 2): Operation.JOIN_SPLIT_KEY,
    ProtocolVersion(1, 3): Operation.JOIN_SPLIT_KEY,
    ProtocolVersion(1, 4): Operation.EXPORT,
}


async def get_attributes(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = non_selector_fields(payload)
    uid = request_uid(f, ctx)
    assert uid is not None
    rec = await load_through(svc, ctx, uid)
    attrs = pick(all_attributes(rec), selected_names(payload))
    return Outcome(attributes_payload(ctx, rec.uid, attrs))


async def get_attribute_list(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = payload_fields(payload, "Get Attribute List")
    uid = request_uid(f, ctx)
    assert uid is not None
    rec = await load_through(svc, ctx, uid)
    return Outcome(attribute_list_payload(ctx, rec.uid, all_attributes(rec)))


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
    functions: list[int] = []
    for c in payload.children if payload is not None else ():
        if c.tag == Tag.QUERY_FUNCTION:
            if c.type is not ItemType.ENUMERATION or not isinstance(c.value, int):
                raise InvalidMessage("Query: Query Function must be an Enumeration")
            functions.append(c.value)
    out: list[Item] = []
    if QueryFunction.QUERY_OPERATIONS in functions:
        last = _LAST_OPERATION.get(ctx.version)
        ops = [op for op in supported_operations(svc) if last is None or op <= last]
        out.extend(Item.enum(Tag.OPERATION, op) for op in ops)
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


def _text_field(payload: Item | None, tag: int, what: str) -> str:
    f = payload_fields(payload, what)
    item = f.get(tag)
    if item is None or item.type is not ItemType.TEXT_STRING or not isinstance(item.value, str):
        raise InvalidField(f"{what}: a Text String is required")
    return item.value


async def interop(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    """KMIP 2.1 §6.1.26: a test harness says a test case begins or ends. A server
    that allows it (a development one: the operation SHALL NOT be available in
    production) notes it in its log; Reset, which asks the server to forget every
    object since the session began, is not something it can do."""
    if not svc.interop:
        raise OperationNotSupported("Interop is available on test servers only")
    f = payload_fields(payload, "Interop")
    function = f.get(Tag.INTEROP_FUNCTION)
    if function is None or function.type is not ItemType.ENUMERATION:
        raise InvalidField("Interop: Interop Function is missing")
    case = _text_field(payload, Tag.INTEROP_IDENTIFIER, "Interop")
    if function.value == InteropFunction.RESET:
        raise FeatureNotSupported("Interop: Reset is not supported")
    if function.value not in (InteropFunction.BEGIN, InteropFunction.END):
        raise InvalidField("Interop: unknown Interop Function")
    step = "begins" if function.value == InteropFunction.BEGIN else "ends"
    log.info("interop: test case %r %s (%s)", case[:LOG_MESSAGE_MAX], step, ctx.identity)
    return Outcome(Item.structure(Tag.RESPONSE_PAYLOAD))


async def log_message(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    """KMIP 2.1 §6.1.29: write the client's message to the server log (quoted, so it
    cannot forge log lines, and cut at LOG_MESSAGE_MAX characters)."""
    message = _text_field(payload, Tag.LOG_MESSAGE, "Log")
    log.info("client %s: %r", ctx.identity, message[:LOG_MESSAGE_MAX])
    return Outcome(Item.structure(Tag.RESPONSE_PAYLOAD))
