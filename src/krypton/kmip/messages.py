"""KMIP request and response messages (sans-I/O).

How this works
--------------
``parse_request`` takes a decoded TTLV tree (``krypton.ttlv.codec.decode``) and
checks it against the message structure of KMIP 1.0-2.1 §6-7: a Request
Message is a Request Header followed by Batch Count batch items. Header fields
become a frozen :class:`RequestHeader`; each batch item keeps its operation,
its Unique Batch Item ID and its payload *as a TTLV item*, untouched, so a
delegated item can be forwarded byte for byte and a local handler reads only
the fields it needs. The Request Payload is required in every batch item
(it may be empty): without it the item cannot be parsed.

Errors follow the spec's error-handling table (1.4 §11.1): a message that
cannot be parsed, or a major version we do not speak, is answered with one
batch item *without* Operation, Result Status Operation Failed and Result
Reason Invalid Message — :func:`error_response` builds exactly that. An error
inside one batch item fails only that item; the dispatcher handles those.

Fields are looked up by a single pass over each structure (a dict from tag to
child), which also detects a field that appears twice where the spec allows
one (Invalid Message). Unknown header fields are ignored: clients of a later
minor version may send them, and the spec says to ignore them.

Responses are built as TTLV trees by :func:`build_response` from frozen
:class:`ResponseItem` values, answering in the request's protocol version.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import cast

from krypton.errors import InvalidMessage, LimitExceeded, UnsupportedVersion
from krypton.kmip.versions import ProtocolVersion, negotiate
from krypton.ttlv.codec import Limits, decode
from krypton.ttlv.enums import BatchErrorContinuationOption, Operation, ResultReason, ResultStatus
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

_S = ItemType.STRUCTURE


@dataclass(frozen=True, slots=True)
class RequestHeader:
    version: ProtocolVersion
    batch_count: int
    max_response_size: int | None = None
    continuation: BatchErrorContinuationOption = BatchErrorContinuationOption.STOP
    batch_order: bool = True
    time_stamp: int | None = None
    client_correlation: str | None = None
    asynchronous: bool = False
    # The version as the client sent it (may be a minor we answer in a lower one).
    requested: ProtocolVersion | None = None


@dataclass(frozen=True, slots=True)
class RequestItem:
    operation: int
    batch_id: bytes | None
    payload: Item
    raw: Item


@dataclass(frozen=True, slots=True)
class Request:
    header: RequestHeader
    items: tuple[RequestItem, ...]


@dataclass(frozen=True, slots=True)
class ResponseItem:
    operation: int | None
    batch_id: bytes | None
    status: ResultStatus = ResultStatus.SUCCESS
    reason: ResultReason | None = None
    message: str | None = None
    payload: Item | None = None
    raw: Item | None = None  # a whole response batch item from the Core, relayed as it is
    encoded: bytes | None = None  # the payload, already TTLV-encoded by a hot-path handler

    @staticmethod
    def relayed(raw: Item) -> ResponseItem:
        status = raw.find(Tag.RESULT_STATUS)
        value = status.value if status is not None and isinstance(status.value, int) else None
        ok = value == ResultStatus.SUCCESS
        return ResponseItem(
            None, None, ResultStatus.SUCCESS if ok else ResultStatus.OPERATION_FAILED, raw=raw
        )

    @staticmethod
    def failure(
        operation: int | None, batch_id: bytes | None, reason: ResultReason, message: str
    ) -> ResponseItem:
        return ResponseItem(
            operation, batch_id, ResultStatus.OPERATION_FAILED, reason, message, None
        )


def fields(item: Item, what: str) -> dict[int, Item]:
    """Map a structure's children by tag; a repeated tag is an Invalid Message."""
    if item.type is not _S:
        raise InvalidMessage(f"{what}: expected a structure")
    out: dict[int, Item] = {}
    for child in item.children:
        if child.tag in out:
            raise InvalidMessage(f"{what}: field 0x{child.tag:06X} appears more than once")
        out[child.tag] = child
    return out


def _int(item: Item | None, what: str, itype: ItemType = ItemType.INTEGER) -> int | None:
    if item is None:
        return None
    if item.type is not itype or not isinstance(item.value, int):
        raise InvalidMessage(f"{what}: wrong type")
    return int(item.value)


def _text(item: Item | None, what: str) -> str | None:
    if item is None:
        return None
    if item.type is not ItemType.TEXT_STRING or not isinstance(item.value, str):
        raise InvalidMessage(f"{what}: wrong type")
    return item.value


def _parse_version(item: Item | None) -> ProtocolVersion:
    if item is None:
        raise InvalidMessage("request header: Protocol Version is missing")
    f = fields(item, "Protocol Version")
    major = _int(f.get(Tag.PROTOCOL_VERSION_MAJOR), "Protocol Version Major")
    minor = _int(f.get(Tag.PROTOCOL_VERSION_MINOR), "Protocol Version Minor")
    if major is None or minor is None:
        raise InvalidMessage("Protocol Version: major and minor are required")
    return ProtocolVersion(major, minor)


def peek_version(message: Item) -> ProtocolVersion | None:
    """Best effort: the protocol version a (possibly malformed) request claims."""
    try:
        header = message.find(Tag.REQUEST_HEADER)
        if header is None:
            return None
        return _parse_version(header.find(Tag.PROTOCOL_VERSION))
    except InvalidMessage:
        return None


def _parse_header(item: Item) -> RequestHeader:
    f = fields(item, "request header")
    requested = _parse_version(f.get(Tag.PROTOCOL_VERSION))
    version = negotiate(requested)
    if version is None:
        raise UnsupportedVersion(f"protocol version {requested} is not supported")
    batch_count = _int(f.get(Tag.BATCH_COUNT), "Batch Count")
    if batch_count is None:
        raise InvalidMessage("request header: Batch Count is missing")
    cont_item = f.get(Tag.BATCH_ERROR_CONTINUATION_OPTION)
    cont = BatchErrorContinuationOption.STOP
    if cont_item is not None:
        raw = _int(cont_item, "Batch Error Continuation Option", ItemType.ENUMERATION)
        try:
            cont = BatchErrorContinuationOption(raw or 0)
        except ValueError:
            raise InvalidMessage("Batch Error Continuation Option: unknown value") from None
    order_item = f.get(Tag.BATCH_ORDER_OPTION)
    if order_item is not None and order_item.type is not ItemType.BOOLEAN:
        raise InvalidMessage("Batch Order Option: wrong type")
    async_item = f.get(Tag.ASYNCHRONOUS_INDICATOR)
    if async_item is not None and async_item.type is not ItemType.BOOLEAN:
        raise InvalidMessage("Asynchronous Indicator: wrong type")
    ts = f.get(Tag.TIME_STAMP)
    return RequestHeader(
        version=version,
        batch_count=batch_count,
        max_response_size=_int(f.get(Tag.MAXIMUM_RESPONSE_SIZE), "Maximum Response Size"),
        continuation=cont,
        batch_order=bool(order_item.value) if order_item is not None else True,
        time_stamp=_int(ts, "Time Stamp", ItemType.DATE_TIME),
        client_correlation=_text(f.get(Tag.CLIENT_CORRELATION_VALUE), "Client Correlation Value"),
        asynchronous=bool(async_item.value) if async_item is not None else False,
        requested=requested,
    )


def _parse_item(item: Item) -> RequestItem:
    f = fields(item, "batch item")
    op = _int(f.get(Tag.OPERATION), "Operation", ItemType.ENUMERATION)
    if op is None:
        raise InvalidMessage("batch item: Operation is missing")
    bid_item = f.get(Tag.UNIQUE_BATCH_ITEM_ID)
    bid: bytes | None = None
    if bid_item is not None:
        if bid_item.type is not ItemType.BYTE_STRING or not isinstance(bid_item.value, bytes):
            raise InvalidMessage("Unique Batch Item ID: wrong type")
        bid = bid_item.value
    payload = f.get(Tag.REQUEST_PAYLOAD)
    if payload is None:
        raise InvalidMessage("batch item: Request Payload is missing")
    if payload.type is not _S:
        raise InvalidMessage("Request Payload: expected a structure")
    return RequestItem(op, bid, payload, item)


def parse_request(message: Item, limits: Limits) -> Request:
    """Validate a decoded Request Message; raises InvalidMessage (or a subclass)."""
    try:
        next(parse_request_in_steps(message, limits, 0))
    except StopIteration as done:
        return cast(Request, done.value)
    raise AssertionError("a parse without steps paused")  # pragma: no cover


def parse_request_in_steps(
    message: Item, limits: Limits, every: int = 64
) -> Generator[None, None, Request]:
    """:func:`parse_request` a step at a time: pauses (yields) after every ``every``
    batch items (0: never) and returns the request, so the caller of a large one
    can let others run between steps."""
    if message.tag != Tag.REQUEST_MESSAGE or message.type is not _S:
        raise InvalidMessage("not a Request Message")
    children = message.children
    if not children or children[0].tag != Tag.REQUEST_HEADER:
        raise InvalidMessage("Request Message: the Request Header must come first")
    header = _parse_header(children[0])
    raw_items = children[1:]
    if any(c.tag != Tag.BATCH_ITEM for c in raw_items):
        raise InvalidMessage("Request Message: unexpected field after the header")
    if not raw_items:
        raise InvalidMessage("Request Message: no batch items")
    if len(raw_items) > limits.max_batch_items:
        raise LimitExceeded(
            f"Request Message: {len(raw_items)} batch items exceed the limit of "
            f"{limits.max_batch_items}"
        )
    if header.batch_count != len(raw_items):
        raise InvalidMessage(
            f"Batch Count is {header.batch_count} but the message has {len(raw_items)} items"
        )
    items = []
    for n, c in enumerate(raw_items, 1):
        items.append(_parse_item(c))
        if every and not n % every:
            yield
    return Request(header, tuple(items))


# -- responses -----------------------------------------------------------------
def _version_item(version: ProtocolVersion) -> Item:
    return Item.structure(
        Tag.PROTOCOL_VERSION,
        Item.integer(Tag.PROTOCOL_VERSION_MAJOR, version.major),
        Item.integer(Tag.PROTOCOL_VERSION_MINOR, version.minor),
    )


def response_item(item: ResponseItem) -> Item:
    if item.raw is not None:
        return item.raw
    out: list[Item] = []
    if item.operation is not None:
        out.append(Item.enum(Tag.OPERATION, item.operation))
    if item.batch_id is not None:
        out.append(Item.bytes_(Tag.UNIQUE_BATCH_ITEM_ID, item.batch_id))
    out.append(Item.enum(Tag.RESULT_STATUS, item.status))
    if item.reason is not None:
        out.append(Item.enum(Tag.RESULT_REASON, item.reason))
    if item.message is not None:
        out.append(Item.text(Tag.RESULT_MESSAGE, item.message))
    if item.encoded is not None:
        out.append(decode(item.encoded))
    elif item.payload is not None:
        out.append(item.payload)
    return Item(Tag.BATCH_ITEM, _S, tuple(out))


def build_response(
    version: ProtocolVersion,
    now: int,
    items: list[ResponseItem] | tuple[ResponseItem, ...],
) -> Item:
    # No Client Correlation Value: the spec (1.4 §6.18, 2.1 §9.9) puts it in a
    # response only for server-to-client operations, which we do not have.
    header: list[Item] = [
        _version_item(version),
        Item.datetime(Tag.TIME_STAMP, now),
        Item.integer(Tag.BATCH_COUNT, len(items)),
    ]
    return Item(
        Tag.RESPONSE_MESSAGE,
        _S,
        (Item(Tag.RESPONSE_HEADER, _S, tuple(header)), *(response_item(i) for i in items)),
    )


def error_response(
    version: ProtocolVersion | None, now: int, reason: ResultReason, message: str
) -> Item:
    """A whole-message failure: one batch item without Operation (1.4 §11.1)."""
    return build_response(
        version or ProtocolVersion(1, 0),
        now,
        [ResponseItem.failure(None, None, reason, message)],
    )


OPERATION_NAMES = {op.value: op.name for op in Operation}
