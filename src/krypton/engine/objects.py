"""What handlers share: services, outcomes, payload readers, object attributes."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from krypton.crypto.keyring import KeyRing
from krypton.engine import server_attrs
from krypton.engine.core_errors import ObjectNotFound
from krypton.errors import InvalidField, InvalidMessage, KryptonError
from krypton.kmip.attributes import Attribute, parse_attributes
from krypton.kmip.messages import fields
from krypton.model.context import RequestContext
from krypton.model.ports import KeyStore, Upstream
from krypton.model.record import KeyRecord
from krypton.model.registry import StateChange
from krypton.ttlv.codec import decode
from krypton.ttlv.enums import UniqueIdentifier
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag


@dataclass(frozen=True, slots=True)
class ServerInfo:
    vendor: str = "OpenKCM Krypton"
    product: str = "Krypton Gateway"
    version: str = "0.1.0"


class NotLocal(Exception):
    """A handler cannot serve this request at the gateway: the Core must.

    ``fallback`` is the error to answer with when there is no Core to ask.
    """

    def __init__(self, fallback: KryptonError) -> None:
        super().__init__(fallback.message)
        self.fallback = fallback


def _new_uid() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Services:
    store: KeyStore
    keyring: KeyRing
    info: ServerInfo = field(default_factory=ServerInfo)
    new_uid: Callable[[], str] = _new_uid
    upstream: Upstream | None = None
    interop: bool = False  # the Interop operation (test servers only: KMIP 2.1 §6.1.26)


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


Handler = Callable[[Services, RequestContext, "Item | None"], Awaitable[Outcome]]

_S = ItemType.STRUCTURE


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


def load(svc: Services, ctx: RequestContext, uid: str) -> KeyRecord:
    """A record of the caller's tenant; another tenant's key does not exist for them."""
    rec = svc.store.get(uid)
    if rec is None or rec.tenant != ctx.tenant:
        raise ObjectNotFound(f"no object with identifier {uid!r}")
    return rec


async def load_through(svc: Services, ctx: RequestContext, uid: str) -> KeyRecord:
    """Like :func:`load`, asking the Core for a key made at another gateway."""
    rec = svc.store.get(uid)
    if rec is None and svc.upstream is not None:
        rec = await svc.upstream.fetch(ctx.tenant, uid)
    if rec is None or rec.tenant != ctx.tenant:
        raise ObjectNotFound(f"no object with identifier {uid!r}")
    return rec


def stored_attributes(rec: KeyRecord) -> list[Attribute]:
    if not rec.attributes:
        return []
    try:
        return parse_attributes(decode(rec.attributes))
    except (InvalidMessage, InvalidField) as exc:  # our own bytes: corruption
        raise InvalidField(f"stored attributes of {rec.uid!r} are unreadable") from exc


def object_attributes(rec: KeyRecord) -> list[Attribute]:
    """Every attribute of an object: server-derived first, then the stored ones."""
    stored = stored_attributes(rec)
    have = {a.name for a in stored}
    derived = [
        Attribute("Unique Identifier", Item.text(Tag.UNIQUE_IDENTIFIER, rec.uid)),
        Attribute("Object Type", Item.enum(Tag.OBJECT_TYPE, rec.object_type)),
    ]
    if rec.algorithm:
        derived.append(
            Attribute(
                "Cryptographic Algorithm", Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, rec.algorithm)
            )
        )
    if rec.length:
        derived.append(
            Attribute("Cryptographic Length", Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, rec.length))
        )
    derived.append(Attribute("State", Item.enum(Tag.STATE, rec.state)))
    derived.append(Attribute("Initial Date", Item.datetime(Tag.INITIAL_DATE, rec.created)))
    if "Last Change Date" not in have:
        derived.append(
            Attribute("Last Change Date", Item.datetime(Tag.LAST_CHANGE_DATE, rec.created))
        )
    return derived + stored + server_attrs.derived(rec.uid, rec.object_type, stored)
