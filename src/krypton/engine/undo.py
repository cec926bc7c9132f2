"""Batch Error Continuation Option Undo, across the gateway and the Core.

How this works
--------------
KMIP 1.4 §6.7 / 2.1 §9.2: with Undo, "if any operation in the request fails,
then the server SHALL undo all the previous operations". A batch is accepted
with Undo only when every item but the last can be undone or changes nothing
(:func:`check_batch`); any other batch is refused whole, before anything runs,
with Feature Not Supported. The last item needs no undoing: each operation is
atomic, so if it fails it changed nothing, and if it succeeds nothing after it
can fail.

* Changes nothing: the reading operations (:data:`READ_ONLY`).
* Kept back (:data:`KEPT_BACK`): a Create at the gateway writes its key to a
  batch-local :class:`PendingStore`. The keys reach the vault — durably, before
  the answer — only once the whole batch has succeeded; otherwise they are
  dropped and never existed. An operation the Core runs cannot see such a key,
  so a batch with one after a Create is refused.
* Journaled at the Core (:data:`JOURNALED`): the gateway relays each such item
  with a Krypton Message Extension (:func:`marked`); the Core then keeps, in
  memory, the object's record as it was before the item
  (:class:`~krypton.engine.journal.UndoJournal`; for Destroy the sealed
  material too), under the gateway's request id. If an item fails, the gateway
  sends the private operation :data:`UNDO` and the Core writes the records back,
  newest first, each only if nobody has changed the object since
  (compare-and-set on its revision); if the batch succeeds it sends
  :data:`FORGET` and the Core drops them.

The items undone are answered with Result Status Operation Undone. The private
operations are in KMIP's extension range (8XXXXXXX); a client that sends one, or
an item with the Krypton extension, is answered Operation Not Supported.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable, Sequence
from dataclasses import replace

from krypton.engine.core_objects import CoreServices, load
from krypton.engine.objects import Outcome, payload_fields
from krypton.errors import (
    FeatureNotSupported,
    GeneralFailure,
    InvalidMessage,
    OperationNotSupported,
)
from krypton.kmip.messages import OPERATION_NAMES, RequestItem, ResponseItem
from krypton.model.context import RequestContext
from krypton.model.ports import KeyStore
from krypton.model.record import KeyRecord
from krypton.model.registry import RegistryConflict, StateChange
from krypton.ttlv.enums import Operation, ResultStatus
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

log = logging.getLogger("krypton.undo")

UNDO = 0x8000_4B01  # gateway → Core: write the batch's journaled records back
FORGET = 0x8000_4B02  # gateway → Core: the batch succeeded, drop its journal
PRIVATE = frozenset((UNDO, FORGET))
VENDOR = "Krypton"

_O = Operation
READ_ONLY = frozenset((
    _O.GET, _O.GET_ATTRIBUTES, _O.GET_ATTRIBUTE_LIST, _O.LOCATE, _O.CHECK, _O.QUERY,
    _O.DISCOVER_VERSIONS, _O.RNG_RETRIEVE, _O.LOG, _O.INTEROP,
))  # fmt: skip
KEPT_BACK = frozenset((_O.CREATE,))
JOURNALED = frozenset((
    _O.ACTIVATE, _O.REVOKE, _O.DESTROY, _O.ADD_ATTRIBUTE, _O.MODIFY_ATTRIBUTE,
    _O.DELETE_ATTRIBUTE, _O.SET_ATTRIBUTE,
))  # fmt: skip


def _name(operation: int) -> str:
    return OPERATION_NAMES.get(operation, f"0x{operation:08X}").replace("_", " ").title()


# -- the gateway's side -----------------------------------------------------------------
def check_batch(items: Sequence[RequestItem], local: Container[int]) -> None:
    """Refuse (Feature Not Supported) a batch this server could not undo."""
    kept_back = False
    for i, item in enumerate(items):
        op = item.operation
        if op in KEPT_BACK and op in local:
            kept_back = True
            continue
        if kept_back and op not in local:
            raise FeatureNotSupported(
                f"Undo: {_name(op)} runs at the Core, which cannot see a key made earlier "
                "in the batch"
            )
        if i < len(items) - 1 and op not in READ_ONLY and op not in JOURNALED:
            raise FeatureNotSupported(f"Undo: {_name(op)} cannot be undone")


def refuse_private(item: RequestItem) -> None:
    """A client may neither send the private operations nor the Krypton extension."""
    if item.operation in PRIVATE or is_marked(item.raw):
        raise OperationNotSupported("this operation is not supported")


def _marker() -> Item:
    return Item.structure(
        Tag.MESSAGE_EXTENSION,
        Item.text(Tag.VENDOR_IDENTIFICATION, VENDOR),
        Item.boolean(Tag.CRITICALITY_INDICATOR, False),
        Item.structure(Tag.VENDOR_EXTENSION, Item.text(Tag.ATTRIBUTE_NAME, "undo journal")),
    )


def marked(raw: Item) -> Item:
    """A request batch item with the extension that asks the Core to journal it."""
    return Item(raw.tag, raw.type, (*raw.children, _marker()))


def is_marked(raw: Item) -> bool:
    ext = raw.find(Tag.MESSAGE_EXTENSION)
    vendor = ext.find(Tag.VENDOR_IDENTIFICATION) if ext is not None else None
    return vendor is not None and vendor.value == VENDOR


def private_item(operation: int) -> Item:
    return marked(
        Item.structure(
            Tag.BATCH_ITEM,
            Item.enum(Tag.OPERATION, operation),
            Item.structure(Tag.REQUEST_PAYLOAD),
        )
    )


def undone(result: ResponseItem) -> ResponseItem:
    """A successful answer, now Operation Undone (its payload kept, as 1.4 §6.7 shows)."""
    if result.raw is None:
        return replace(result, status=ResultStatus.OPERATION_UNDONE)
    children = tuple(
        Item.enum(Tag.RESULT_STATUS, ResultStatus.OPERATION_UNDONE)
        if c.tag == Tag.RESULT_STATUS
        else c
        for c in result.raw.children
    )
    return ResponseItem.relayed(Item(result.raw.tag, result.raw.type, children))


class PendingStore:
    """The gateway's key store as one Undo batch sees it: keys it makes stay here
    until :meth:`commit` writes them to the vault."""

    def __init__(self, base: KeyStore) -> None:
        self.base = base
        self.records: dict[str, KeyRecord] = {}

    def get(self, uid: str) -> KeyRecord | None:
        return self.records.get(uid) or self.base.get(uid)

    async def put(self, record: KeyRecord) -> None:
        self.records[record.uid] = record

    async def put_many(self, records: Iterable[KeyRecord]) -> None:
        for record in records:
            self.records[record.uid] = record

    async def commit(self) -> None:
        """Every key of the batch, in one vault transaction (all or none)."""
        await self.base.put_many(self.records.values())
        self.records.clear()


# -- the Core's side ----------------------------------------------------------------------
def token(ctx: RequestContext, gateway: str | None, raw: Item) -> str | None:
    """The journal of the batch a marked item belongs to (None: not an Undo batch)."""
    if not is_marked(raw):
        return None
    return f"{gateway or ''}|{ctx.tenant}|{ctx.request_id}"


def _journal_of(ctx: RequestContext) -> str:
    if ctx.undo_token is None:
        raise InvalidMessage("this operation is for a Krypton gateway only")
    return ctx.undo_token


async def undo(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    """Write the batch's journaled records back, newest first."""
    payload_fields(payload, "Undo")
    entries = svc.journal.take(_journal_of(ctx))
    changes: list[StateChange] = []
    stuck: list[str] = []
    for entry in reversed(entries):
        current = await load(svc, ctx, entry.uid)
        if current.revision != entry.revision:
            stuck.append(entry.uid)  # changed by someone else since: leave it
            continue
        try:
            stored = await svc.registry.update_object(
                replace(entry.before, revision=current.revision)
            )
        except RegistryConflict:
            stuck.append(entry.uid)
            continue
        changes.append(StateChange(stored.tenant, stored.uid, stored.state, stored.revision))
    if stuck:
        log.warning("undo of request %s: %d object(s) changed since", ctx.request_id, len(stuck))
        raise GeneralFailure(f"Undo: {len(stuck)} object(s) changed since, left as they are")
    return Outcome(Item.structure(Tag.RESPONSE_PAYLOAD), changes=tuple(changes))


async def forget(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    payload_fields(payload, "Forget")
    svc.journal.take(_journal_of(ctx))
    return Outcome(Item.structure(Tag.RESPONSE_PAYLOAD))


def succeeded(raw_response: Item) -> bool:
    status = raw_response.find(Tag.RESULT_STATUS)
    return (
        status is not None
        and status.type is ItemType.ENUMERATION
        and status.value == ResultStatus.SUCCESS
    )
