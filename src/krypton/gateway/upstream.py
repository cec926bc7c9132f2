"""The gateway's side of the control path: delegation, outbox, read-through, state flow.

How this works
--------------
:class:`Upstream` sits between the dispatcher and the uplink client and keeps
the consistency rules of DESIGN §4:

* **Sync before delegate.** Before an item is sent to the Core, the key it
  names (its Unique Identifier, or the batch's ID Placeholder) is looked up in
  the vault; if that record is still in the outbox it is sent with
  ``SyncKeys`` first, so the Core never sees an operation on a key it does
  not hold. A ``Locate`` flushes the whole outbox first, so it finds every key
  this gateway has made.
* **State flows down.** The Core's answer carries the state changes the
  operation made; they are written to the vault *before* the answer is
  relayed. Changes made through other gateways arrive on the Subscribe
  stream and are applied as they come.
* **Partition.** Nothing is queued: the client fails a delegated call within
  its bound (``UpstreamUnavailable``), and the item fails with it. Keys made
  while the Core was away stay in the outbox; a drainer task sends them in
  batches whenever the uplink is READY (woken by every ``Create``, and when
  the link comes back).
* **Read-through.** A ``Get`` of a key this gateway does not hold asks the
  Core (``FetchKey``) and keeps the wrapped record in the vault, once its
  record MAC checked out (``Vault.authentic``: a wrong or missing MAC is a
  Cryptographic Failure, never stored or served). Concurrent reads of one
  such key share one ``FetchKey`` and one vault write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from krypton.engine.objects import belongs
from krypton.errors import KryptonError
from krypton.model.context import RequestContext
from krypton.model.record import KeyRecord
from krypton.ttlv.codec import Limits, decode, encode
from krypton.ttlv.enums import Operation
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.uplink.client import UplinkClient
from krypton.uplink.types import ConnectionState, ExecuteRequest, StateChange
from krypton.vault.sqlite import Vault

log = logging.getLogger("krypton.upstream")

T = TypeVar("T")

DRAIN_BATCH = 512
DRAIN_INTERVAL = 0.5
DRAIN_LINGER = 0.1


class Upstream:
    def __init__(
        self,
        client: UplinkClient,
        vault: Vault,
        limits: Limits,
        *,
        batch: int = DRAIN_BATCH,
        interval: float = DRAIN_INTERVAL,
        linger: float = DRAIN_LINGER,
    ) -> None:
        self.client = client
        self.vault = vault
        self.limits = limits
        self.batch = batch
        self.interval = interval
        self.linger = linger
        self._wake = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._remove: Callable[[], None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._fetching: dict[tuple[str, str], asyncio.Task[KeyRecord | None]] = {}

    async def start(self) -> None:
        self._remove = self.client.add_listener(
            on_state=self._on_state, on_connection=self._on_connection
        )
        self._drainer = asyncio.create_task(self._drain_forever(), name="outbox-drainer")

    async def close(self) -> None:
        if self._remove is not None:
            self._remove()
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
        for task in [*self._pending, *self._fetching.values()]:
            task.cancel()

    @property
    def ready(self) -> bool:
        return self.client.state is ConnectionState.READY

    def created(self) -> None:
        """A key was added to the outbox: let the drainer run."""
        self._wake.set()

    # -- outbox -------------------------------------------------------------------
    async def _drain_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            if not self.ready:
                continue
            # Let a burst of Creates gather: one SyncKeys (and one vault commit
            # to mark them synced) per batch, not per key. Anything that needs
            # a key at the Core sooner syncs it itself (sync before delegate).
            await asyncio.sleep(self.linger)
            try:
                while await self.drain_once() == self.batch:
                    pass
            except KryptonError as exc:
                log.info("outbox: not drained now: %s", exc.message)

    async def drain_once(self, tenant: str | None = None) -> int:
        records = self.vault.outbox(self.batch)
        if tenant is not None:
            records = [r for r in records if belongs(r, tenant)]
        if not records:
            return 0
        return await self._sync(records)

    async def _sync(self, records: list[KeyRecord]) -> int:
        acked = await self.client.sync_keys(records)
        await self.vault.mark_synced(acked)
        return len(acked)

    # -- delegation ------------------------------------------------------------------
    async def execute(self, ctx: RequestContext, raw_item: Item) -> tuple[Item, str | None]:
        return await _in_task(self._execute(ctx, raw_item))

    async def _execute(self, ctx: RequestContext, raw_item: Item) -> tuple[Item, str | None]:
        await self._sync_before(ctx, raw_item)
        result = await self.client.execute(
            ExecuteRequest(
                batch_item=encode(raw_item),
                identity=ctx.identity,
                tenant=ctx.tenant,
                protocol=(ctx.version.major, ctx.version.minor),
                correlation_id=ctx.request_id,
                placeholder=ctx.placeholder,
            )
        )
        for change in result.changes:
            if belongs(change, ctx.tenant):
                await self._refresh(change)
        return decode(result.batch_item, self.limits), result.placeholder

    async def _sync_before(self, ctx: RequestContext, raw_item: Item) -> None:
        operation = raw_item.find(Tag.OPERATION)
        if operation is not None and operation.value == Operation.LOCATE:
            while await self.drain_once(ctx.tenant) == self.batch:
                pass
            return
        uid = _named_uid(raw_item) or ctx.placeholder
        if uid is None:
            return
        rec = self.vault.get(uid)
        if belongs(rec, ctx.tenant) and not rec.synced:
            await self._sync([rec])

    async def fetch(self, tenant: str, uid: str) -> KeyRecord | None:
        """A key made elsewhere: ask the Core, keep the wrapped record here."""
        key = (tenant, uid)
        task = self._fetching.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(tenant, uid))
            self._fetching[key] = task
            task.add_done_callback(functools.partial(self._fetched, key))
        return await asyncio.shield(task)  # one caller going away leaves it to the others

    async def _fetch(self, tenant: str, uid: str) -> KeyRecord | None:
        rec = await self.client.fetch_key(tenant, uid)
        if rec is None:
            return None
        rec = self.vault.authentic(rec)  # checked before it is stored (and re-MAC'd)
        held = self.vault.get(uid)
        if held is not None:
            return held
        await self.vault.put(rec)
        return rec

    def _fetched(self, key: tuple[str, str], task: asyncio.Task[KeyRecord | None]) -> None:
        self._fetching.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone

    # -- state flowing down ------------------------------------------------------------
    def _on_state(self, change: StateChange) -> None:
        task = asyncio.create_task(self._apply(change))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _apply(self, change: StateChange) -> None:
        try:
            await self._refresh(change)
        except KryptonError as exc:
            log.warning("change of %s not applied: %s", change.uid, exc.message)

    async def _refresh(self, change: StateChange) -> None:
        """Bring a held record up to the Core's: its state, and its attributes when
        the Core can be asked (a change event does not carry them)."""
        rec = self.vault.get(change.uid)
        if not belongs(rec, change.tenant):
            return
        state = change.state
        try:
            fresh = await self.client.fetch_key(change.tenant, change.uid)
            if fresh is not None:
                fresh = self.vault.authentic(fresh)
        except KryptonError:
            fresh = None
        if fresh is not None and fresh.wrapped and not rec.wrapped:
            # The Core undid a Destroy (a batch with Undo: krypton.engine.undo) that
            # erased the key here: take its material back.
            await self.vault.reinstate(fresh)
            return
        if fresh is not None:
            state = fresh.state
            if fresh.attributes and fresh.attributes != rec.attributes:
                await self.vault.update_attributes(change.uid, fresh.attributes)
        if state != rec.state:
            await self.vault.update_state(change.uid, state)

    def _on_connection(self, state: ConnectionState) -> None:
        if state is ConnectionState.READY:
            self._wake.set()


async def _in_task(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` in a task: the listener runs a handler eagerly, outside any
    task, up to its first wait, and the uplink's deadlines (``asyncio.timeout``)
    need one."""
    if asyncio.current_task() is None:
        return await asyncio.ensure_future(work)
    return await work


def _named_uid(raw_item: Item) -> str | None:
    payload = raw_item.find(Tag.REQUEST_PAYLOAD)
    if payload is None:
        return None
    uid = payload.find(Tag.UNIQUE_IDENTIFIER)
    if uid is not None and uid.type is ItemType.TEXT_STRING and isinstance(uid.value, str):
        return uid.value
    return None
