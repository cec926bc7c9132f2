"""Get Usage Allocation at the Core: the one authoritative Usage Limits counter.

The gateway asks for an allocation before an Encrypt with a key that has Usage
Limits (:func:`krypton.gateway.engine.crypto_ops.allocate`).
"""

from __future__ import annotations

from krypton.core.engine.objects import CoreServices, mutate, rebuild, uid_payload
from krypton.engine.object_errors import ObjectDestroyed
from krypton.engine.objects import (
    Outcome,
    first,
    int_of,
    payload_fields,
    request_uid,
    stored_attributes,
)
from krypton.engine.usable import Use, check_usable
from krypton.errors import IllegalOperation, InvalidField, InvalidMessage, PermissionDenied
from krypton.kmip.attributes import Attribute
from krypton.model.context import RequestContext
from krypton.model.record import DESTROYED_STATES
from krypton.model.registry import ObjectRecord
from krypton.ttlv.enums import ObjectType, UsageLimitsUnit
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

_ALLOCATE = Use("Get Usage Allocation", protects=True)


def _limits_item(total: int, count: int, unit: int) -> Item:
    return Item.structure(
        Tag.USAGE_LIMITS,
        Item(Tag.USAGE_LIMITS_TOTAL, ItemType.LONG_INTEGER, total),
        Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, count),
        Item.enum(Tag.USAGE_LIMITS_UNIT, unit),
    )


async def get_usage_allocation(
    svc: CoreServices, ctx: RequestContext, payload: Item | None
) -> Outcome:
    """KMIP 1.4 §4.18: take ``Usage Limits Count`` units from the object's remaining
    Usage Limits (compare-and-set in the registry), or refuse."""
    f = payload_fields(payload, "Get Usage Allocation")
    uid = request_uid(f, ctx)
    assert uid is not None
    units = int_of(f.get(Tag.USAGE_LIMITS_COUNT))

    def take(rec: ObjectRecord) -> ObjectRecord:
        if units is None:
            raise InvalidMessage("Get Usage Allocation: Usage Limits Count is required")
        if units <= 0:
            raise InvalidField("Get Usage Allocation: Usage Limits Count must be positive")
        if rec.state in DESTROYED_STATES:
            raise ObjectDestroyed(f"object {rec.uid!r} has been destroyed")
        stored = stored_attributes(rec)
        limits = first(stored, "Usage Limits")
        if limits is None or rec.object_type not in (
            ObjectType.SYMMETRIC_KEY, ObjectType.PRIVATE_KEY, ObjectType.PUBLIC_KEY
        ):  # fmt: skip
            raise IllegalOperation(f"Get Usage Allocation: {rec.uid!r} has no Usage Limits")
        check_usable(_ALLOCATE, rec.uid, rec.state, stored, ctx.now)
        total = int_of(limits.find(Tag.USAGE_LIMITS_TOTAL)) or 0
        count = int_of(limits.find(Tag.USAGE_LIMITS_COUNT))
        unit = int_of(limits.find(Tag.USAGE_LIMITS_UNIT)) or UsageLimitsUnit.BYTE
        left = total if count is None else count
        if units > left:
            raise PermissionDenied(
                f"Get Usage Allocation: {units} units asked, {left} left on {rec.uid!r}"
            )
        new = Attribute("Usage Limits", _limits_item(total, left - units, unit))
        return rebuild(rec, [new if a.name == "Usage Limits" else a for a in stored], ctx.now)

    _, _, event = await mutate(svc, ctx, uid, take)
    return Outcome(uid_payload(uid), changes=(event,))
