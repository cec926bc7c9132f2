"""What the Core's handlers share: services, registry access, updates.

How this works
--------------
A registry :class:`~krypton.model.registry.ObjectRecord` is read as attributes
by :mod:`krypton.engine.objects` (the same code the gateway uses for its vault
records); who may set what is :mod:`krypton.engine.attr_rules`.

Every change goes through :func:`mutate`: read the record, let the handler
compute the new record from it, write it back with the registry's
compare-and-set on ``revision``; when another writer got there first, read
again and recompute (a few times). :func:`rebuild` sets Last Change Date and
recomputes the columns Locate searches (names, groups, custom values) from
the attribute list, so the blob and the indexes never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace

from krypton.core.engine.journal import UndoJournal
from krypton.crypto.keyring import KeyRing
from krypton.crypto.secret import SecretBytes
from krypton.engine.object_errors import NonUniqueName
from krypton.engine.objects import Outcome, owned, without
from krypton.kmip.attributes import Attribute, attributes_v2
from krypton.model import record
from krypton.model.context import RequestContext
from krypton.model.ports import Sealer
from krypton.model.record import DESTROYED_STATES
from krypton.model.registry import (
    LocateQuery,
    ObjectRecord,
    Registry,
    RegistryConflict,
    StateChange,
)
from krypton.ttlv.codec import encode
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag


@dataclass(frozen=True, slots=True)
class KeyRingSealer:
    """A :class:`~krypton.model.ports.Sealer` over a key ring: the same AES-GCM
    wrap as the gateway's L4s."""

    ring: KeyRing

    def seal(self, tenant: str, uid: str, plaintext: SecretBytes) -> tuple[int, bytes]:
        return self.ring.wrap(tenant, uid, plaintext)

    def unseal(self, tenant: str, uid: str, l3_version: int, blob: bytes) -> SecretBytes:
        return self.ring.unwrap(tenant, uid, l3_version, blob)


@dataclass(frozen=True, slots=True)
class CoreServices:
    registry: Registry
    sealer: Sealer[SecretBytes]
    new_uid: Callable[[], str] = record.new_uid  # the one uid maker
    clock: Callable[[], float] = time.time
    journal: UndoJournal = field(default_factory=UndoJournal)


ControlHandler = Callable[[CoreServices, RequestContext, "Item | None"], Awaitable[Outcome]]

_S = ItemType.STRUCTURE


# -- records as attribute lists -------------------------------------------------------


def name_value(item: Item) -> str | None:
    v = item.find(Tag.NAME_VALUE)
    return v.value if v is not None and isinstance(v.value, str) else None


def custom_text(item: Item) -> str | None:
    """A custom attribute's value as the text the registry indexes (None: not indexed)."""
    v = item.value
    if item.type is _S:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def index_fields(
    attrs: Iterable[Attribute],
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(names, groups, custom) for the registry's Locate indexes."""
    names: list[str] = []
    groups: list[str] = []
    custom: list[tuple[str, str]] = []
    for a in attrs:
        if a.name == "Name":
            text = name_value(a.value)
            if text is not None:
                names.append(text)
        elif a.name == "Object Group" and isinstance(a.value.value, str):
            groups.append(a.value.value)
        elif a.custom:
            text = custom_text(a.value)
            if text is not None:
                custom.append((a.name, text))
    return tuple(names), tuple(groups), tuple(custom)


def rebuild(rec: ObjectRecord, stored: list[Attribute], now: int) -> ObjectRecord:
    """``rec`` with ``stored`` as its attributes, Last Change Date now, indexes recomputed."""
    kept = without(stored, "Last Change Date")
    kept.append(Attribute("Last Change Date", Item.datetime(Tag.LAST_CHANGE_DATE, now)))
    names, groups, custom = index_fields(kept)
    return replace(
        rec,
        attributes=encode(attributes_v2(kept)),
        names=names,
        groups=groups,
        custom=custom,
    )


# -- registry access ------------------------------------------------------------------
async def fetch(svc: CoreServices, tenant: str, uid: str) -> ObjectRecord | None:
    """The record as stored (``sealed`` is None once destroyed), or None."""
    return await svc.registry.get_object(tenant, uid)


async def load(svc: CoreServices, ctx: RequestContext, uid: str) -> ObjectRecord:
    """An object of the caller's tenant; another tenant's does not exist for them."""
    return owned(await svc.registry.get_object(ctx.tenant, uid), ctx.tenant, uid)


CONFLICT_RETRIES = 5


async def mutate(
    svc: CoreServices,
    ctx: RequestContext,
    uid: str,
    change: Callable[[ObjectRecord], ObjectRecord | Awaitable[ObjectRecord]],
) -> tuple[ObjectRecord, ObjectRecord, StateChange]:
    """Read, change and write back one object (compare-and-set, retried on a
    conflict). ``change`` raises to refuse; returns (before, after, event)."""
    for attempt in range(CONFLICT_RETRIES):
        before = await load(svc, ctx, uid)
        computed = change(before)
        after = computed if isinstance(computed, ObjectRecord) else await computed
        slot = ctx.audit
        audit = None if slot is None or slot.written else replace(
            slot.record, time=svc.clock(), uid=uid
        )
        try:
            stored = await svc.registry.update_object(after, audit)
        except RegistryConflict:
            if attempt == CONFLICT_RETRIES - 1:
                raise
            continue
        if slot is not None and audit is not None:
            slot.written = True  # the operation's audit record committed with its change
        if ctx.undo_token is not None:
            svc.journal.record(ctx.undo_token, before, stored)
        return before, stored, StateChange(stored.tenant, stored.uid, stored.state, stored.revision)
    raise AssertionError("unreachable")  # pragma: no cover


async def check_names_free(
    svc: CoreServices,
    tenant: str,
    names: Iterable[str],
    *,
    current: Iterable[str] = (),
    skip: str | None = None,
) -> None:
    """NonUniqueName when ``current`` (the names the object keeps) or a live object
    of the tenant other than ``skip`` has one of ``names``; destroyed objects give
    their names up."""
    wanted = list(names)
    if len(set(wanted)) != len(wanted):
        raise NonUniqueName("the same Name is given more than once")
    kept = frozenset(current)
    for text in wanted:
        if text in kept:
            raise NonUniqueName(f"the object already has the Name {text!r}")
        for uid in await svc.registry.locate(LocateQuery(tenant, name=text)):
            if uid == skip:
                continue
            rec = await svc.registry.get_object(tenant, uid)
            if rec is not None and rec.state not in DESTROYED_STATES:
                raise NonUniqueName(f"another object already has the Name {text!r}")


def uid_payload(uid: str, *extra: Item) -> Item:
    return Item.structure(Tag.RESPONSE_PAYLOAD, Item.text(Tag.UNIQUE_IDENTIFIER, uid), *extra)
