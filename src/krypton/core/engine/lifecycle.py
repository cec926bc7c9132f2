"""Activate, Revoke, Destroy and Check on registry objects (the Core's control path).

The permitted state transitions are the ten of KMIP 1.4 §3.22 / 2.1 §4.57,
written as tables from (state[, compromised]) to the next state; any other
(state, operation) pair is Wrong Key Lifecycle State (Permission Denied in
1.x). Destroy drops the sealed material from the record, so a destroyed
object's key can never be read again, and keeps its metadata.
"""

from __future__ import annotations

from dataclasses import replace

from krypton.core.engine.objects import CoreServices, load, mutate, rebuild, uid_payload
from krypton.engine.object_errors import IncompatibleUsageMask, ObjectDestroyed
from krypton.engine.objects import (
    Outcome,
    all_attributes,
    date_attr,
    first,
    int_of,
    payload_fields,
    request_uid,
    stored_attributes,
    without,
)
from krypton.errors import InvalidField, MissingField, WrongKeyLifecycleState
from krypton.kmip.attributes import Attribute
from krypton.model.context import RequestContext
from krypton.model.record import DESTROYED_STATES
from krypton.model.registry import ObjectRecord
from krypton.ttlv.enums import RevocationReasonCode, State
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

_ACTIVATE: dict[int, State] = {State.PRE_ACTIVE: State.ACTIVE}
_REVOKE: dict[tuple[int, bool], State] = {
    (State.PRE_ACTIVE, True): State.COMPROMISED,
    (State.ACTIVE, True): State.COMPROMISED,
    (State.DEACTIVATED, True): State.COMPROMISED,
    (State.DESTROYED, True): State.DESTROYED_COMPROMISED,
    (State.ACTIVE, False): State.DEACTIVATED,
}
_DESTROY: dict[int, State] = {
    State.PRE_ACTIVE: State.DESTROYED,
    State.DEACTIVATED: State.DESTROYED,
    State.COMPROMISED: State.DESTROYED_COMPROMISED,
}
_COMPROMISE = frozenset((RevocationReasonCode.KEY_COMPROMISE, RevocationReasonCode.CA_COMPROMISE))
_REASON_CODES = frozenset(int(c) for c in RevocationReasonCode)


def _state_name(state: int) -> str:
    try:
        return State(state).name
    except ValueError:
        return str(state)


def _wrong_state(operation: str, rec: ObjectRecord) -> WrongKeyLifecycleState:
    return WrongKeyLifecycleState(f"{operation}: object {rec.uid!r} is {_state_name(rec.state)}")


def _uid(payload: Item | None, ctx: RequestContext, operation: str) -> tuple[dict[int, Item], str]:
    f = payload_fields(payload, operation)
    uid = request_uid(f, ctx)
    assert uid is not None
    return f, uid


async def activate(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    _, uid = _uid(payload, ctx, "Activate")

    def change(rec: ObjectRecord) -> ObjectRecord:
        new_state = _ACTIVATE.get(rec.state)
        if new_state is None:
            raise _wrong_state("Activate", rec)
        stored = without(stored_attributes(rec), "Activation Date")
        stored.append(date_attr("Activation Date", ctx.now))
        return replace(rebuild(rec, stored, ctx.now), state=new_state)

    _, after, event = await mutate(svc, ctx, uid, change)
    return Outcome(uid_payload(after.uid), changes=(event,))


def _revocation(f: dict[int, Item]) -> tuple[int, Item]:
    reason = f.get(Tag.REVOCATION_REASON)
    if reason is None:
        raise MissingField("Revoke: Revocation Reason is required")
    code = reason.find(Tag.REVOCATION_REASON_CODE) if reason.type is ItemType.STRUCTURE else None
    value = code.value if code is not None and code.type is ItemType.ENUMERATION else None
    if not isinstance(value, int) or value not in _REASON_CODES:
        raise InvalidField("Revoke: the Revocation Reason Code is missing or not recognised")
    return value, reason


async def revoke(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    f, uid = _uid(payload, ctx, "Revoke")
    code, reason = _revocation(f)
    compromised = code in _COMPROMISE
    occurred = f.get(Tag.COMPROMISE_OCCURRENCE_DATE)
    if occurred is not None and (occurred.type is not ItemType.DATE_TIME or not compromised):
        if compromised:
            raise InvalidField("Revoke: Compromise Occurrence Date must be a Date-Time")
        occurred = None  # SHALL NOT be sent for other reasons; ignore it rather than fail

    def change(rec: ObjectRecord) -> ObjectRecord:
        new_state = _REVOKE.get((rec.state, compromised))
        if new_state is None:
            raise _wrong_state("Revoke", rec)
        stored = without(stored_attributes(rec), "Revocation Reason")
        stored.append(Attribute("Revocation Reason", reason))
        if compromised:
            when = int_of(occurred)
            stored = without(stored, "Compromise Date", "Compromise Occurrence Date")
            stored.append(date_attr("Compromise Date", ctx.now))
            stored.append(
                date_attr("Compromise Occurrence Date", rec.created if when is None else when)
            )
        else:
            stored = without(stored, "Deactivation Date")
            stored.append(date_attr("Deactivation Date", ctx.now))
        return replace(rebuild(rec, stored, ctx.now), state=new_state)

    _, after, event = await mutate(svc, ctx, uid, change)
    return Outcome(uid_payload(after.uid), changes=(event,))


async def destroy(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    _, uid = _uid(payload, ctx, "Destroy")

    def change(rec: ObjectRecord) -> ObjectRecord:
        if rec.state in DESTROYED_STATES:
            raise ObjectDestroyed(f"Destroy: object {rec.uid!r} is already destroyed")
        new_state = _DESTROY.get(rec.state)
        if new_state is None:
            raise _wrong_state("Destroy", rec)
        stored = without(stored_attributes(rec), "Destroy Date")
        stored.append(date_attr("Destroy Date", ctx.now))
        return replace(rebuild(rec, stored, ctx.now), state=new_state, sealed=None)

    _, after, event = await mutate(svc, ctx, uid, change)
    return Outcome(uid_payload(after.uid), changes=(event,))


async def check(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    """The object exists for this client and allows the usage asked for.

    A Cryptographic Usage Mask in the request must be covered by the object's
    mask (Incompatible Cryptographic Usage Mask otherwise, as the 2.1 baseline
    test cases expect). Usage Limits Count and Lease Time are accepted: this
    server sets no policy on them.
    """
    f, uid = _uid(payload, ctx, "Check")
    rec = await load(svc, ctx, uid)
    if rec.state in DESTROYED_STATES:
        raise ObjectDestroyed(f"Check: object {rec.uid!r} has been destroyed")
    asked = f.get(Tag.CRYPTOGRAPHIC_USAGE_MASK)
    if asked is not None:
        wanted = int_of(asked)
        if wanted is None:
            raise InvalidField("Check: Cryptographic Usage Mask must be an Integer")
        allowed = int_of(first(all_attributes(rec), "Cryptographic Usage Mask"))
        if allowed is not None and wanted & allowed != wanted:
            raise IncompatibleUsageMask(
                f"Check: object {rec.uid!r} may not be used for the requested usage"
            )
    return Outcome(uid_payload(rec.uid), uid=rec.uid)
