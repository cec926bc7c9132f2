"""The Core's control path: the operation table and one delegated batch item in, one out.

How this works
--------------
A gateway forwards every operation it does not serve itself (DESIGN §4) as
the raw request batch item, with the client's identity, tenant, protocol
version and the batch's ID Placeholder. :func:`execute_item` parses the
item, runs the handler from :data:`CONTROL_HANDLERS` against the registry
and builds the response batch item, ready to encode and relay unchanged:

* the answer is in the request's version: 1.x and 2.x request forms are
  both read, and a failure's Result Reason is mapped to its 1.x equivalent
  (:func:`krypton.kmip.reasons.reason_for`) when the client speaks 1.x;
* the handler's :class:`~krypton.engine.objects.Outcome` comes back too: the
  ID Placeholder it sets and the objects it changed (the gateway applies the
  new states to its vault before relaying the answer);
* every item, successful or not, leaves one audit record: who (identity,
  tenant, gateway, correlation id), what (operation, object) and the result.

Handlers enforce tenant isolation themselves: they read objects only through
``Registry.get_object(ctx.tenant, uid)``, so another tenant's object is
Object Not Found (Item Not Found in 1.x), never a hint that it exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from krypton.core.engine import allocation, attrs_edit, keypair, lifecycle, locate, register, undo
from krypton.core.engine.objects import ControlHandler, CoreServices, KeyRingSealer, fetch
from krypton.core.engine.register import open_object
from krypton.engine.objects import Outcome
from krypton.engine.undo import FORGET, UNDO
from krypton.errors import InvalidMessage, KryptonError, OperationNotSupported, StorageError
from krypton.kmip.messages import OPERATION_NAMES, ResponseItem, fields, response_item
from krypton.kmip.reasons import reason_for
from krypton.model.context import RequestContext
from krypton.model.registry import AuditRecord, AuditSlot
from krypton.ttlv.enums import Operation, ResultReason, ResultStatus
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

log = logging.getLogger("krypton.control")

__all__ = [
    "CONTROL_HANDLERS",
    "AuditContext",
    "ControlHandler",
    "CoreServices",
    "KeyRingSealer",
    "execute_item",
    "fetch",
    "open_object",
]

CONTROL_HANDLERS: dict[int, ControlHandler] = {
    Operation.ACTIVATE: lifecycle.activate,
    Operation.REVOKE: lifecycle.revoke,
    Operation.DESTROY: lifecycle.destroy,
    Operation.CHECK: lifecycle.check,
    Operation.LOCATE: locate.locate,
    Operation.REGISTER: register.register,
    Operation.RE_KEY: register.re_key,
    Operation.ADD_ATTRIBUTE: attrs_edit.add_attribute,
    Operation.MODIFY_ATTRIBUTE: attrs_edit.modify_attribute,
    Operation.DELETE_ATTRIBUTE: attrs_edit.delete_attribute,
    Operation.SET_ATTRIBUTE: attrs_edit.set_attribute,
    Operation.GET_ATTRIBUTES: attrs_edit.get_attributes,
    Operation.GET_ATTRIBUTE_LIST: attrs_edit.get_attribute_list,
    Operation.CREATE_KEY_PAIR: keypair.create_key_pair,
    Operation.GET_USAGE_ALLOCATION: allocation.get_usage_allocation,
}
# A gateway's own operations, for a batch with Undo (krypton.engine.undo).
PRIVATE_HANDLERS: dict[int, ControlHandler] = {UNDO: undo.undo, FORGET: undo.forget}


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Where a delegated item came from, for the audit trail."""

    gateway: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class _Parsed:
    operation: int
    batch_id: bytes | None
    payload: Item | None


def _parse(item: Item) -> _Parsed:
    f = fields(item, "batch item")
    op = f.get(Tag.OPERATION)
    bid = f.get(Tag.UNIQUE_BATCH_ITEM_ID)
    batch_id = bid.value if bid is not None and isinstance(bid.value, bytes) else None
    if op is None or op.type is not ItemType.ENUMERATION or not isinstance(op.value, int):
        raise InvalidMessage("batch item: Operation is missing")
    payload = f.get(Tag.REQUEST_PAYLOAD)
    if payload is not None and payload.type is not ItemType.STRUCTURE:
        raise InvalidMessage("Request Payload: expected a structure")
    return _Parsed(op.value, batch_id, payload)


def _name(operation: int | None) -> str:
    if operation is None:
        return "UNKNOWN"
    return OPERATION_NAMES.get(operation, f"0x{operation:08X}")


def _only_uid(payload: Item | None) -> str | None:
    """The payload's Unique Identifier when it carries exactly one (as text)."""
    found = [] if payload is None else list(payload.find_all(Tag.UNIQUE_IDENTIFIER))
    if len(found) != 1 or not isinstance(found[0].value, str):
        return None
    return found[0].value


def _audited_uid(ctx: RequestContext, request: Item | None, outcome: Outcome | None) -> str | None:
    """The object an item was about: the one it made or answered with, else the one
    named in the request (or by the ID Placeholder)."""
    if outcome is not None:
        return outcome.uid or _only_uid(outcome.payload)
    return _only_uid(request) or ctx.placeholder


async def execute_item(
    svc: CoreServices,
    ctx: RequestContext,
    raw_batch_item: Item,
    audit: AuditContext | None = None,
) -> tuple[Item, Outcome | None]:
    """Run one delegated request batch item; returns the response batch item and,
    on success, the handler's outcome (ID Placeholder set, objects changed)."""
    operation: int | None = None
    batch_id: bytes | None = None
    payload: Item | None = None
    outcome: Outcome | None = None
    try:
        parsed = _parse(raw_batch_item)
        operation, batch_id, payload = parsed.operation, parsed.batch_id, parsed.payload
        journal = undo.token(ctx, (audit or AuditContext()).gateway, raw_batch_item)
        if journal is not None:
            ctx = replace(ctx, undo_token=journal)
            undo.begin(svc, ctx, parsed.operation)
        ctx = replace(ctx, audit=AuditSlot(_record(svc, ctx, audit or AuditContext(),
                                                   _name(operation), uid=None, result="Success",
                                                   detail="")))
        handler = CONTROL_HANDLERS.get(parsed.operation) or PRIVATE_HANDLERS.get(parsed.operation)
        if handler is None:
            raise OperationNotSupported(
                f"operation {_name(parsed.operation)} is not supported by the Krypton Core"
            )
        outcome = await handler(svc, ctx, payload)
        answer = ResponseItem(operation, batch_id, payload=outcome.payload)
    except KryptonError as exc:
        reason = reason_for(ctx.version, exc.reason, operation)
        answer = ResponseItem.failure(operation, batch_id, reason, exc.message)
    except Exception:
        log.exception("request %s: internal error in a delegated operation", ctx.request_id)
        answer = ResponseItem.failure(
            operation,
            batch_id,
            ResultReason.GENERAL_FAILURE,
            f"internal error (request {ctx.request_id})",
        )
    slot = ctx.audit
    if slot is None or not slot.written or answer.status is not ResultStatus.SUCCESS:
        uid = _audited_uid(ctx, payload, outcome)
        await _audit(svc, ctx, audit or AuditContext(), answer, uid)
    return response_item(answer), outcome


def _record(svc: CoreServices, ctx: RequestContext, where: AuditContext, operation: str, *,
            uid: str | None, result: str, detail: str) -> AuditRecord:
    return AuditRecord(
        time=svc.clock(), identity=ctx.identity, tenant=ctx.tenant, operation=operation,
        uid=uid, result=result, gateway=where.gateway, correlation_id=where.correlation_id,
        detail=detail,
    )


async def _audit(
    svc: CoreServices,
    ctx: RequestContext,
    where: AuditContext,
    answer: ResponseItem,
    uid: str | None,
) -> None:
    ok = answer.status is ResultStatus.SUCCESS
    record = _record(
        svc, ctx, where, _name(answer.operation), uid=uid,
        result="Success" if ok else (answer.reason.name if answer.reason else "Failure"),
        detail="" if ok else (answer.message or ""),
    )
    try:
        await svc.registry.append_audit(record)
    except StorageError:
        # The operation has happened (or failed) already; the client is told the
        # truth about it, and the missing audit record is logged loudly.
        log.exception("request %s: the audit record could not be written", ctx.request_id)
