"""Undo batches, the gateway's side: which batches it accepts, keeping Creates back.

The protocol (what is journaled, the private operations, the marker) is
:mod:`krypton.engine.undo`; the Core's side is :mod:`krypton.core.engine.undo`.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import replace

from krypton.engine.undo import JOURNALED, KEPT_BACK, PRIVATE, READ_ONLY, is_marked, new_token
from krypton.errors import FeatureNotSupported, OperationNotSupported
from krypton.kmip.messages import OPERATION_NAMES, RequestItem, ResponseItem
from krypton.model.ports import KeyStore
from krypton.model.record import KeyRecord
from krypton.ttlv.enums import ResultReason, ResultStatus
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag


def _name(operation: int) -> str:
    return OPERATION_NAMES.get(operation, f"0x{operation:08X}").replace("_", " ").title()


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
    until :meth:`commit` writes them to the vault. ``token`` names the batch's
    journal at the Core (random: :func:`krypton.engine.undo.new_token`)."""

    def __init__(self, base: KeyStore) -> None:
        self.base = base
        self.records: dict[str, KeyRecord] = {}
        self.token = new_token()  # the batch's journal at the Core

    def get(self, uid: str) -> KeyRecord | None:
        return self.records.get(uid) or self.base.get(uid)

    def lookup(self, uid: str) -> KeyRecord | None:
        return self.records.get(uid) or self.base.lookup(uid)

    async def read_through(self, uid: str) -> KeyRecord | None:
        return self.records.get(uid) or await self.base.read_through(uid)

    async def put(self, record: KeyRecord) -> None:
        self.records[record.uid] = record

    async def put_many(self, records: Iterable[KeyRecord]) -> None:
        for record in records:
            self.records[record.uid] = record

    async def commit(self) -> None:
        """Every key of the batch, in one vault transaction (all or none)."""
        await self.base.put_many(self.records.values())
        self.records.clear()


def failure_of(raw_response: Item) -> str | None:
    """None if the Core's answer succeeded, else why not (its Result Message)."""
    status = raw_response.find(Tag.RESULT_STATUS)
    if (
        status is not None
        and status.type is ItemType.ENUMERATION
        and status.value == ResultStatus.SUCCESS
    ):
        return None
    message = raw_response.find(Tag.RESULT_MESSAGE)
    return str(message.value) if message is not None else "the Core refused it"


def ended(result: ResponseItem, undo_failed: str | None) -> ResponseItem:
    """An item's answer once its failed batch was undone (``undo_failed`` None) or
    the Core's Undo failed: what the gateway did alone (kept-back Creates, reads)
    is undone either way; what the Core did is undone only if its Undo was."""
    if result.status is not ResultStatus.SUCCESS:
        return result
    if undo_failed is None or result.raw is None:
        return undone(result)
    return not_undone(result, undo_failed)


def not_undone(result: ResponseItem, why: str) -> ResponseItem:
    """A relayed item that succeeded but could not be undone: a failure saying so
    (never Operation Undone, nor a bare Success in a batch that failed)."""
    assert result.raw is not None
    op = result.raw.find(Tag.OPERATION)
    bid = result.raw.find(Tag.UNIQUE_BATCH_ITEM_ID)
    return ResponseItem.failure(
        op.value if op is not None and isinstance(op.value, int) else None,
        bid.value if bid is not None and isinstance(bid.value, bytes) else None,
        ResultReason.GENERAL_FAILURE,
        f"done, and NOT undone though the batch failed: {why}",
    )
