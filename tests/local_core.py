"""Test helper: a gateway dispatcher and the Core's engine in one process and one loop.

:class:`LocalCore` is the gateway's ``Upstream`` with the uplink's gRPC hop
left out: delegated items run through the Core's real ``execute_item`` over a
real SQLite registry, keys the gateway made reach the registry first (the
outbox rule), the state and attributes an operation changed are written back
to the vault before the answer is relayed, and a key the gateway does not
hold is read through from the registry. Gateway and Core share one key ring,
as they share the tenant's L3 versions in a deployment. The real uplink is
exercised by the end-to-end and interop tests (``krypton dev``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from krypton.core.engine.control import execute_item
from krypton.core.engine.objects import CoreServices, KeyRingSealer, index_fields
from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import generate_key
from krypton.gateway.engine.dispatch import Dispatcher, Session
from krypton.gateway.engine.services import Services
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import parse_attributes
from krypton.model import ObjectRecord, Registry
from krypton.model.context import RequestContext
from krypton.model.grant import Grant
from krypton.model.record import KeyRecord
from krypton.registry import open_registry
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.item import Item
from krypton.uplink.types import WrappedKey
from krypton.vault.sqlite import Vault

T = TypeVar("T")
TENANTS = ("demo", "other")


class LocalCore:
    def __init__(self, core: CoreServices, vault: Vault) -> None:
        self.core = core
        self.vault = vault

    async def execute(self, ctx: RequestContext, raw_item: Item) -> tuple[Item, str | None]:
        await self._sync(ctx.tenant)
        answer, outcome = await execute_item(self.core, ctx, raw_item)
        if outcome is None:
            return answer, None
        for change in outcome.changes:
            fresh = await self.core.registry.get_object(change.tenant, change.uid)
            held = self.vault.get(change.uid)
            if fresh is not None and held is not None:
                if fresh.sealed and not held.wrapped:  # an undone Destroy
                    await self.vault.reinstate(self._record(fresh))
                await self.vault.update_state(change.uid, fresh.state)
                await self.vault.update_attributes(change.uid, fresh.attributes)
        return answer, outcome.uid

    async def fetch(self, tenant: str, uid: str) -> KeyRecord | None:
        rec = await self.core.registry.get_object(tenant, uid)
        if rec is None:
            return None
        record = self._record(rec)
        await self.vault.put(record)
        return record

    @staticmethod
    def _record(rec: ObjectRecord) -> KeyRecord:
        return WrappedKey.from_object(rec).record(synced=True)

    def created(self) -> None:
        """Keys are synced before each delegated item instead."""

    async def _sync(self, tenant: str) -> None:
        records = [r for r in self.vault.outbox(10_000) if r.tenant == tenant]
        if not records:
            return
        objects = []
        for r in records:
            names, groups, custom = index_fields(
                parse_attributes(decode(r.attributes)) if r.attributes else []
            )
            objects.append(
                ObjectRecord(
                    uid=r.uid,
                    tenant=r.tenant,
                    object_type=r.object_type,
                    state=r.state,
                    created=r.created,
                    algorithm=r.algorithm or None,
                    length=r.length or None,
                    l3_version=r.l3_version,
                    sealed=r.wrapped,
                    attributes=r.attributes,
                    origin="gw-test",
                    names=names,
                    groups=groups,
                    custom=custom,
                )
            )
        await self.core.registry.put_objects(objects)
        await self.vault.mark_synced(r.uid for r in records)


@dataclass
class Stack:
    loop: asyncio.AbstractEventLoop
    ring: KeyRing
    vault: Vault
    registry: Registry
    core: CoreServices
    dispatcher: Dispatcher

    def wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def roundtrip(self, data: bytes, tenant: str = "demo") -> bytes:
        """One whole request message in, one response message out (a conformance
        runner transport)."""
        session = Session(f"spiffe://test/{tenant}", Grant(tenant, None), 1)
        return self.wait(self.dispatcher.handle(data, session))

    def send(self, message: Item, tenant: str = "demo") -> cm.Response:
        return cm.parse_response(decode(self.roundtrip(encode(message), tenant)))

    def record(self, uid: str, tenant: str = "demo") -> ObjectRecord:
        rec = self.wait(self.registry.get_object(tenant, uid))
        assert rec is not None
        return rec


@contextmanager
def local_stack(tmp_path: Path) -> Iterator[Stack]:
    loop = asyncio.new_event_loop()
    ring = KeyRing()
    for tenant in TENANTS:
        ring.install(tenant, 1, generate_key(256), L3State.ACTIVE, ring.lease_deadline(3600))
    registry = loop.run_until_complete(open_registry(f"sqlite:{tmp_path / 'registry.db'}"))
    vault = Vault.open(tmp_path / "vault.db", sealer=ring.record_mac)
    core = CoreServices(registry=registry, sealer=KeyRingSealer(ring))
    services = Services(store=vault, keyring=ring, upstream=LocalCore(core, vault))
    try:
        yield Stack(loop, ring, vault, registry, core, Dispatcher(services))
    finally:
        vault.close()
        loop.run_until_complete(registry.close())
        loop.close()
