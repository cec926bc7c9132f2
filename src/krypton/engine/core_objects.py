"""What the Core-side handlers share: services, registry records as attributes, updates.

How this works
--------------
A registry :class:`~krypton.model.registry.ObjectRecord` keeps a few facts in
columns (type, state, algorithm, length, creation time) and every other
attribute in one TTLV ``Attributes`` blob (2.x form). A handler sees the
object as one list of canonical :class:`Attribute` values: the ones derived
from the columns first, then the stored ones, each multi-valued attribute
numbered 0, 1, ... in stored order (the 1.x Attribute Index).

Every change goes through :func:`mutate`: read the record, let the handler
compute the new record from it, write it back with the registry's
compare-and-set on ``revision``; when another writer got there first, read
again and recompute (a few times). :func:`rebuild` sets Last Change Date and
recomputes the columns Locate searches (names, groups, custom values) from
the attribute list, so the blob and the indexes never disagree.

Who may set what is one table, :data:`RULES`; attributes it does not list are
read-only when the spec says the server sets them (:data:`SERVER_ONLY`), and
otherwise unknown to this server (ignored on Register, refused on edits).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from krypton.crypto.keyring import KeyRing
from krypton.crypto.secret import SecretBytes
from krypton.engine import server_attrs
from krypton.engine.core_errors import InvalidAttributeValue, NonUniqueName, ObjectNotFound
from krypton.engine.journal import UndoJournal
from krypton.engine.objects import Outcome
from krypton.errors import InvalidField, InvalidMessage, ReadOnlyAttribute, StorageError
from krypton.kmip.attributes import Attribute, attributes_v2, parse_attributes
from krypton.model.context import RequestContext
from krypton.model.record import DESTROYED_STATES
from krypton.model.registry import (
    LocateQuery,
    ObjectRecord,
    Registry,
    RegistryConflict,
    StateChange,
)
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import State
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import TAG_BY_SPEC_NAME, Tag


class Sealer(Protocol):
    """Seals key material for the registry (the tenant's L3 in this deployment)."""

    def seal(self, tenant: str, uid: str, plaintext: SecretBytes) -> tuple[int, bytes]: ...

    def unseal(self, tenant: str, uid: str, l3_version: int, blob: bytes) -> SecretBytes: ...


@dataclass(frozen=True, slots=True)
class KeyRingSealer:
    """A :class:`Sealer` over a key ring: the same AES-GCM wrap as the gateway's L4s."""

    ring: KeyRing

    def seal(self, tenant: str, uid: str, plaintext: SecretBytes) -> tuple[int, bytes]:
        return self.ring.wrap(tenant, uid, plaintext)

    def unseal(self, tenant: str, uid: str, l3_version: int, blob: bytes) -> SecretBytes:
        return self.ring.unwrap(tenant, uid, l3_version, blob)


def _new_uid() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class CoreServices:
    registry: Registry
    sealer: Sealer
    new_uid: Callable[[], str] = _new_uid
    clock: Callable[[], float] = time.time
    journal: UndoJournal = field(default_factory=UndoJournal)


ControlHandler = Callable[[CoreServices, RequestContext, "Item | None"], Awaitable[Outcome]]

_S = ItemType.STRUCTURE
_DATE = ItemType.DATE_TIME
_TEXT = ItemType.TEXT_STRING
_LIVE = frozenset((State.PRE_ACTIVE, State.ACTIVE))


# -- who may set what ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Rule:
    """``editable``: Add/Modify/Set/Delete may touch it after creation (only in
    ``states`` when given); ``deletable``: Delete Attribute may remove it."""

    type: ItemType
    multi: bool = False
    editable: bool = True
    deletable: bool = True
    states: frozenset[int] | None = None


_PRE = frozenset((State.PRE_ACTIVE,))
# From the attribute tables of KMIP 1.4 §3 / 2.1 §4 ("Modifiable by client").
RULES: dict[str, Rule] = {
    "Name": Rule(_S, multi=True),
    "Object Group": Rule(_TEXT, multi=True),
    "Cryptographic Parameters": Rule(_S, multi=True),
    "Link": Rule(_S, multi=True),
    "Application Specific Information": Rule(_S, multi=True),
    "Alternative Name": Rule(_S, multi=True),
    "Key Value Location": Rule(_S, multi=True),
    "Contact Information": Rule(_TEXT),
    "Description": Rule(_TEXT),
    "Comment": Rule(_TEXT),
    "PKCS#12 Friendly Name": Rule(_TEXT),
    "Usage Limits": Rule(_S),
    "Protection Level": Rule(ItemType.ENUMERATION),
    "Protection Period": Rule(ItemType.INTERVAL),
    "Quantum Safe": Rule(ItemType.BOOLEAN),
    "Sensitive": Rule(ItemType.BOOLEAN, deletable=False),
    "Extractable": Rule(ItemType.BOOLEAN, deletable=False),
    "Activation Date": Rule(_DATE, deletable=False, states=_PRE),
    "Process Start Date": Rule(_DATE, deletable=False, states=_LIVE),
    "Protect Stop Date": Rule(_DATE, deletable=False, states=_LIVE),
    "Deactivation Date": Rule(_DATE, deletable=False, states=_LIVE),
    # Set by the client when the object is made, read-only afterwards.
    "Cryptographic Algorithm": Rule(ItemType.ENUMERATION, editable=False, deletable=False),
    "Cryptographic Length": Rule(ItemType.INTEGER, editable=False, deletable=False),
    "Cryptographic Usage Mask": Rule(ItemType.INTEGER, editable=False, deletable=False),
    "Operation Policy Name": Rule(_TEXT, editable=False, deletable=False),
    "Fresh": Rule(ItemType.BOOLEAN, editable=False, deletable=False),
    "Original Creation Date": Rule(_DATE, editable=False, deletable=False),
    "Random Number Generator": Rule(_S, editable=False, deletable=False),
}
CUSTOM_RULE = Rule(_S, multi=True)  # type is not checked for custom attributes

SERVER_ONLY = frozenset((
    "Unique Identifier", "Object Type", "State", "Initial Date", "Last Change Date",
    "Destroy Date", "Compromise Date", "Compromise Occurrence Date", "Revocation Reason",
    "Archive Date", "Digest", "Lease Time", "Key Value Present", "Always Sensitive",
    "Never Extractable", "Certificate Type", "Certificate Length", "Digital Signature Algorithm",
    "Short Unique Identifier", "Rotate Date", "Rotate Generation", "Rotate Latest",
    "Opaque Data Type", "Protection Storage Mask", "Key Format Type", "Certificate Length",
    "X.509 Certificate Identifier", "X.509 Certificate Subject", "X.509 Certificate Issuer",
    *(f"Certificate {who} {part}" for who in ("Subject", "Issuer") for part in (
        "CN", "O", "OU", "Email", "C", "ST", "L", "UID", "Serial Number", "Title", "DC",
        "DN Qualifier",
    )),
))  # fmt: skip


def rule_for(name: str) -> Rule | None:
    """The rule for an attribute a client names; ReadOnlyAttribute for server ones;
    None for one this server does not manage."""
    if name not in TAG_BY_SPEC_NAME:  # a custom attribute
        if name.startswith("y-"):
            raise ReadOnlyAttribute(f"attribute {name!r} is set by the server")
        return CUSTOM_RULE
    if name in SERVER_ONLY:
        raise ReadOnlyAttribute(f"attribute {name!r} is set by the server")
    return RULES.get(name)


def check_type(attr: Attribute, rule: Rule) -> None:
    if rule is not CUSTOM_RULE and attr.value.type is not rule.type:
        raise InvalidAttributeValue(
            f"attribute {attr.name!r} must be {rule.type.name}, got {attr.value.type.name}"
        )


# -- records as attribute lists -------------------------------------------------------
def numbered(attrs: Iterable[Attribute]) -> list[Attribute]:
    """Give each instance of a multi-valued attribute its index, in list order."""
    seen: dict[str, int] = {}
    out: list[Attribute] = []
    for a in attrs:
        i = seen.get(a.name, 0)
        seen[a.name] = i + 1
        out.append(a if a.index == i else Attribute(a.name, a.value, i))
    return out


def stored_attributes(rec: ObjectRecord) -> list[Attribute]:
    if not rec.attributes:
        return []
    try:
        return numbered(parse_attributes(decode(rec.attributes)))
    except (InvalidMessage, InvalidField) as exc:  # our own bytes: corruption
        raise StorageError(f"stored attributes of {rec.uid!r} are unreadable") from exc


def derived_attributes(rec: ObjectRecord) -> list[Attribute]:
    out = [
        Attribute("Unique Identifier", Item.text(Tag.UNIQUE_IDENTIFIER, rec.uid)),
        Attribute("Object Type", Item.enum(Tag.OBJECT_TYPE, rec.object_type)),
    ]
    if rec.algorithm is not None:
        out.append(
            Attribute(
                "Cryptographic Algorithm", Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, rec.algorithm)
            )
        )
    if rec.length is not None:
        out.append(
            Attribute("Cryptographic Length", Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, rec.length))
        )
    out.append(Attribute("State", Item.enum(Tag.STATE, rec.state)))
    out.append(Attribute("Initial Date", Item.datetime(Tag.INITIAL_DATE, rec.created)))
    return out


def all_attributes(rec: ObjectRecord) -> list[Attribute]:
    """Every attribute of an object: server-derived first, then the stored ones."""
    stored = stored_attributes(rec)
    if not any(a.name == "Last Change Date" for a in stored):
        stored.append(
            Attribute("Last Change Date", Item.datetime(Tag.LAST_CHANGE_DATE, rec.created))
        )
    return derived_attributes(rec) + stored + server_attrs.derived(rec.uid, rec.object_type, stored)


def first(attrs: Iterable[Attribute], name: str) -> Item | None:
    return next((a.value for a in attrs if a.name == name), None)


def int_of(item: Item | None) -> int | None:
    if item is None or isinstance(item.value, bool) or not isinstance(item.value, int):
        return None
    return item.value


def without(attrs: Iterable[Attribute], *names: str) -> list[Attribute]:
    drop = frozenset(names)
    return [a for a in attrs if a.name not in drop]


def date_attr(name: str, when: int) -> Attribute:
    return Attribute(name, Item.datetime(TAG_BY_SPEC_NAME[name], when))


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


def date_driven_state(state: int, stored: Iterable[Attribute], now: int) -> int:
    """Apply the transitions a reached Activation / Deactivation Date causes (3.22 4., 6.)."""
    attrs = list(stored)
    activation = int_of(first(attrs, "Activation Date"))
    deactivation = int_of(first(attrs, "Deactivation Date"))
    if state == State.PRE_ACTIVE and activation is not None and activation <= now:
        state = State.ACTIVE
    if state == State.ACTIVE and deactivation is not None and deactivation <= now:
        state = State.DEACTIVATED
    return state


# -- registry access ------------------------------------------------------------------
async def fetch(svc: CoreServices, tenant: str, uid: str) -> ObjectRecord | None:
    """The record as stored (``sealed`` is None once destroyed), or None."""
    return await svc.registry.get_object(tenant, uid)


async def load(svc: CoreServices, ctx: RequestContext, uid: str) -> ObjectRecord:
    """An object of the caller's tenant; another tenant's does not exist for them."""
    rec = await svc.registry.get_object(ctx.tenant, uid)
    if rec is None or rec.tenant != ctx.tenant:
        raise ObjectNotFound(f"no object with identifier {uid!r}")
    return rec


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
        try:
            stored = await svc.registry.update_object(after)
        except RegistryConflict:
            if attempt == CONFLICT_RETRIES - 1:
                raise
            continue
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
