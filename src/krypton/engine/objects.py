"""What both sides' handlers share: outcomes, payload readers, objects as attributes.

How this works
--------------
A stored object -- the gateway vault's :class:`~krypton.model.record.KeyRecord`
or the Core registry's :class:`~krypton.model.registry.ObjectRecord`, both
:class:`StoredObject` -- keeps a few facts in columns (type, state, algorithm,
length, creation time) and every other attribute in one TTLV ``Attributes``
blob (2.x form). A handler sees it as one list of canonical
:class:`Attribute` values (:func:`all_attributes`): the ones derived from the
columns first, then the stored ones, each multi-valued attribute numbered 0,
1, ... in stored order (the 1.x Attribute Index), then the ones the server
derives from those. :func:`owned` is the one tenant check: another tenant's
object does not exist for the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeGuard, TypeVar

from krypton.engine import server_attrs
from krypton.engine.object_errors import ObjectNotFound
from krypton.errors import InvalidField, InvalidMessage, StorageError
from krypton.kmip.attributes import Attribute, parse_attributes
from krypton.kmip.messages import fields
from krypton.model.context import RequestContext
from krypton.model.registry import StateChange
from krypton.ttlv.codec import decode
from krypton.ttlv.enums import State, UniqueIdentifier
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import TAG_BY_SPEC_NAME, Tag


class StoredObject(Protocol):
    """What a vault key record and a registry object record both have."""

    @property
    def uid(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def object_type(self) -> int: ...
    @property
    def algorithm(self) -> int | None: ...
    @property
    def length(self) -> int | None: ...
    @property
    def state(self) -> int: ...
    @property
    def created(self) -> int: ...
    @property
    def attributes(self) -> bytes: ...


class Tenanted(Protocol):
    """Anything that is a tenant's: a stored object, a state change."""

    @property
    def tenant(self) -> str: ...


Rec = TypeVar("Rec", bound=StoredObject)
Of = TypeVar("Of", bound=Tenanted)


def belongs(rec: Of | None, tenant: str) -> TypeGuard[Of]:
    """The one tenant check: ``rec`` exists and is ``tenant``'s (an object, a change)."""
    return rec is not None and rec.tenant == tenant


def owned(rec: Rec | None, tenant: str, uid: str) -> Rec:
    """``rec`` when it is an object of ``tenant``; another tenant's object, like a
    missing one, is Object Not Found."""
    if rec is None or not belongs(rec, tenant):
        raise ObjectNotFound(f"no object with identifier {uid!r}")
    return rec


@dataclass(frozen=True, slots=True)
class Outcome:
    """A handler's answer: the response payload, the ID Placeholder it sets, and
    the state changes it made (the Core returns them to the gateway, which
    applies them to its vault before relaying the answer)."""

    payload: Item | None
    uid: str | None = None
    changes: tuple[StateChange, ...] = ()
    response: Item | None = None  # a whole response batch item, relayed as it is
    encoded: bytes | None = None  # the payload already written as TTLV (hot path)


def payload_fields(payload: Item | None, operation: str) -> dict[int, Item]:
    if payload is None:
        return {}
    return fields(payload, f"{operation} request payload")


def request_uid(f: dict[int, Item], ctx: RequestContext, *, required: bool = True) -> str | None:
    """The Unique Identifier of a request, or the batch's ID Placeholder."""
    item = f.get(Tag.UNIQUE_IDENTIFIER)
    if item is None or (
        item.type is ItemType.ENUMERATION and item.value == UniqueIdentifier.ID_PLACEHOLDER
    ):
        if ctx.placeholder is None and required:
            raise InvalidField("Unique Identifier is missing and no ID Placeholder is set")
        return ctx.placeholder
    if item.type is not ItemType.TEXT_STRING or not isinstance(item.value, str):
        raise InvalidField("Unique Identifier: this server uses text identifiers")
    return item.value


def numbered(attrs: Iterable[Attribute]) -> list[Attribute]:
    """Give each instance of a multi-valued attribute its index, in list order."""
    seen: dict[str, int] = {}
    out: list[Attribute] = []
    for a in attrs:
        i = seen.get(a.name, 0)
        seen[a.name] = i + 1
        out.append(a if a.index == i else Attribute(a.name, a.value, i))
    return out


def derived_attributes(rec: StoredObject) -> list[Attribute]:
    out = [
        Attribute("Unique Identifier", Item.text(Tag.UNIQUE_IDENTIFIER, rec.uid)),
        Attribute("Object Type", Item.enum(Tag.OBJECT_TYPE, rec.object_type)),
    ]
    if rec.algorithm:  # a vault record keeps 0 for none
        out.append(
            Attribute(
                "Cryptographic Algorithm", Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, rec.algorithm)
            )
        )
    if rec.length:
        out.append(
            Attribute("Cryptographic Length", Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, rec.length))
        )
    out.append(Attribute("State", Item.enum(Tag.STATE, rec.state)))
    out.append(Attribute("Initial Date", Item.datetime(Tag.INITIAL_DATE, rec.created)))
    return out


def all_attributes(rec: StoredObject) -> list[Attribute]:
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


def stored_attributes(rec: StoredObject) -> list[Attribute]:
    if not rec.attributes:
        return []
    try:
        return numbered(parse_attributes(decode(rec.attributes)))
    except (InvalidMessage, InvalidField) as exc:  # our own bytes: corruption
        raise StorageError(f"stored attributes of {rec.uid!r} are unreadable") from exc
