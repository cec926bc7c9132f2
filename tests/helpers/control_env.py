"""Test helpers for the Core's control handlers: a real SQLite registry, a real key
ring as sealer, and one call that runs a request batch item like the Core's Execute."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from krypton.core.engine.control import AuditContext, execute_item
from krypton.core.engine.objects import CoreServices, KeyRingSealer
from krypton.core.records import AuthenticatedRegistry
from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import generate_key
from krypton.engine.objects import Outcome
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute, attributes_v2, to_v1
from krypton.kmip.messages import ResponseItem, fields
from krypton.kmip.versions import ProtocolVersion
from krypton.model import ObjectRecord, Registry
from krypton.model.context import RequestContext
from krypton.registry import open_registry
from krypton.ttlv.enums import (
    CryptographicAlgorithm,
    KeyFormatType,
    NameType,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

T = TypeVar("T")
V10 = ProtocolVersion(1, 0)
V12 = ProtocolVersion(1, 2)
V14 = ProtocolVersion(1, 4)
V20 = ProtocolVersion(2, 0)
V21 = ProtocolVersion(2, 1)
TENANTS = ("demo", "other")
_S = ItemType.STRUCTURE


@dataclass(frozen=True, slots=True)
class Answer:
    item: ResponseItem
    raw: Item
    outcome: Outcome | None

    @property
    def ok(self) -> bool:
        return self.item.status is ResultStatus.SUCCESS

    @property
    def payload(self) -> Item:
        assert self.item.payload is not None, (self.item.reason, self.item.message)
        return self.item.payload

    @property
    def uid(self) -> str:
        return cm.unique_identifier(self.payload)

    @property
    def uids(self) -> list[str]:
        return [str(c.value) for c in self.payload.children if c.tag == Tag.UNIQUE_IDENTIFIER]

    def failed(self, reason: ResultReason) -> bool:
        return self.item.status is ResultStatus.OPERATION_FAILED and self.item.reason is reason


def read_response_item(raw: Item) -> ResponseItem:
    f = fields(raw, "response batch item")

    def num(tag: int) -> int | None:
        item = f.get(tag)
        return int(item.value) if item is not None and isinstance(item.value, int) else None

    reason = num(Tag.RESULT_REASON)
    bid = f.get(Tag.UNIQUE_BATCH_ITEM_ID)
    msg = f.get(Tag.RESULT_MESSAGE)
    return ResponseItem(
        operation=num(Tag.OPERATION),
        batch_id=bid.value if bid is not None and isinstance(bid.value, bytes) else None,
        status=ResultStatus(num(Tag.RESULT_STATUS) or 0),
        reason=ResultReason(reason) if reason is not None else None,
        message=msg.value if msg is not None and isinstance(msg.value, str) else None,
        payload=f.get(Tag.RESPONSE_PAYLOAD),
    )


@dataclass
class Env:
    loop: asyncio.AbstractEventLoop
    svc: CoreServices
    path: Path
    ring: KeyRing
    now: int = field(default_factory=lambda: int(time.time()))
    audit_ctx: AuditContext = field(default_factory=lambda: AuditContext("gw-1", "corr-1"))

    @property
    def registry(self) -> Registry:
        return self.svc.registry

    def wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def ctx(
        self, version: ProtocolVersion, tenant: str = "demo", placeholder: str | None = None
    ) -> RequestContext:
        return RequestContext(
            identity=f"spiffe://test/{tenant}",
            tenant=tenant,
            version=version,
            now=self.now,
            request_id="t.1",
            placeholder=placeholder,
        )

    def item(
        self,
        batch_item: Item,
        version: ProtocolVersion = V14,
        tenant: str = "demo",
        placeholder: str | None = None,
    ) -> Answer:
        ctx = self.ctx(version, tenant, placeholder)
        raw, outcome = self.wait(execute_item(self.svc, ctx, batch_item, self.audit_ctx))
        return Answer(read_response_item(raw), raw, outcome)

    def run(
        self,
        op: Operation,
        *children: Item,
        version: ProtocolVersion = V14,
        tenant: str = "demo",
        placeholder: str | None = None,
    ) -> Answer:
        return self.item(cm.batch_item(op, cm.payload(*children)), version, tenant, placeholder)

    def record(self, uid: str, tenant: str = "demo") -> ObjectRecord:
        rec = self.wait(self.registry.get_object(tenant, uid))
        assert rec is not None
        return rec

    def attrs(self, uid: str, version: ProtocolVersion = V21, tenant: str = "demo") -> Item:
        """The Attributes structure Get Attributes answers in 2.x."""
        a = self.run(Operation.GET_ATTRIBUTES, uid_item(uid), version=version, tenant=tenant)
        assert a.ok, a.item
        found = a.payload.find(Tag.ATTRIBUTES)
        assert found is not None
        return found

    def attr(self, uid: str, tag: int) -> Item | None:
        return self.attrs(uid).find(tag)

    def register_key(
        self,
        attrs: Sequence[Attribute] = (),
        *,
        key: bytes = bytes(range(32)),
        version: ProtocolVersion = V21,
        tenant: str = "demo",
    ) -> str:
        a = self.run(
            Operation.REGISTER,
            Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
            attributes_item(version, [*aes(len(key) * 8), *attrs]),
            symmetric_key(key),
            version=version,
            tenant=tenant,
        )
        assert a.ok, a.item
        return a.uid


@contextmanager
def core_env(tmp_path: Path, *, url: str | None = None, macs: bool = False) -> Iterator[Env]:
    """Handlers over a real registry (SQLite in ``tmp_path`` unless ``url``); with
    ``macs`` the registry is wrapped as the Core wraps it (record MACs)."""
    loop = asyncio.new_event_loop()
    path = tmp_path / "registry.db"
    registry: Registry = loop.run_until_complete(open_registry(url or f"sqlite:{path}"))
    ring = KeyRing()
    for tenant in TENANTS:
        ring.install(tenant, 1, generate_key(256), L3State.ACTIVE, ring.lease_deadline(3600))
    if macs:
        registry = AuthenticatedRegistry(registry, ring.record_mac)
    try:
        yield Env(loop, CoreServices(registry=registry, sealer=KeyRingSealer(ring)), path, ring)
    finally:
        loop.run_until_complete(registry.close())
        loop.close()


# -- request builders ---------------------------------------------------------------
def uid_item(uid: str) -> Item:
    return Item.text(Tag.UNIQUE_IDENTIFIER, uid)


def name(text: str) -> Attribute:
    return Attribute(
        "Name",
        Item.structure(
            Tag.NAME,
            Item.text(Tag.NAME_VALUE, text),
            Item.enum(Tag.NAME_TYPE, NameType.UNINTERPRETED_TEXT_STRING),
        ),
    )


def group(text: str) -> Attribute:
    return Attribute("Object Group", Item.text(Tag.OBJECT_GROUP, text))


def custom(attr_name: str, text: str) -> Attribute:
    return Attribute(attr_name, Item.text(Tag.ATTRIBUTE_VALUE, text))


def date(attr_name: str, tag: int, when: int) -> Attribute:
    return Attribute(attr_name, Item.datetime(tag, when))


def aes(length: int) -> list[Attribute]:
    return [
        Attribute(
            "Cryptographic Algorithm",
            Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
        ),
        Attribute("Cryptographic Length", Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, length)),
    ]


def attributes_item(version: ProtocolVersion, attrs: Sequence[Attribute]) -> Item:
    if version.v2:
        return attributes_v2(attrs)
    return Item(Tag.TEMPLATE_ATTRIBUTE, _S, tuple(to_v1(a) for a in attrs))


def symmetric_key(key: bytes, fmt: KeyFormatType = KeyFormatType.RAW) -> Item:
    if fmt == KeyFormatType.RAW:
        material = Item.bytes_(Tag.KEY_MATERIAL, key)
    else:
        material = Item.structure(Tag.KEY_MATERIAL, Item.bytes_(Tag.KEY, key))
    return Item.structure(
        Tag.SYMMETRIC_KEY,
        Item.structure(
            Tag.KEY_BLOCK,
            Item.enum(Tag.KEY_FORMAT_TYPE, fmt),
            Item.structure(Tag.KEY_VALUE, material),
            Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
            Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, len(key) * 8),
        ),
    )


def file_bytes(path: Path) -> bytes:
    """The registry's bytes on disk: the database file and its write-ahead log."""
    out = b""
    for p in (path, path.with_name(path.name + "-wal")):
        if p.exists():
            out += p.read_bytes()
    return out
