"""The Core's side of the uplink: what a gateway's Subscribe, SyncKeys, Execute and
FetchKey calls do (a :class:`krypton.uplink.service.CoreHandler`).

How this works
--------------
* **Subscribe** — a gateway gets a complete L3 snapshot of its tenants
  (every version: the usable ones opened, the others as drop notices, then
  :class:`L3Versions` naming the usable set, so the gateway drops any version
  not listed), then the registry's change feed after the sequence number the
  gateway last applied (read from the registry in batches, so a Core restart
  or a long absence loses nothing), then one Heartbeat carrying the feed
  position replayed through — or, when the gateway's position is older than
  the feed the registry keeps, a Heartbeat asking it to reconcile — then
  changes as they commit: L3 versions rotated or revoked (from the key
  store's listener, which also sees changes made by other processes) and key
  state changes (from the registry's subscription; one already replayed is
  not sent twice). Each subscriber has its own queue; the snapshot is re-sent
  every half lease on a fixed schedule, whatever else the stream carries, so
  a connected gateway never runs out of lease.
* **SyncKeys** — wrapped L4 records from a gateway's outbox
  (:class:`~krypton.model.record.KeyRecord`) are inserted into the registry
  (``KeyRecord.to_object``), idempotently; the uids stored are acknowledged. A
  record wrapped under a revoked L3 version is refused and reported
  (:class:`krypton.core.rotation.SyncFence`).
  Each must carry a right record MAC (:func:`krypton.core.records.check_arriving`);
  one that does not fails the call with Cryptographic Failure. The MAC is
  computed once (the check) and stored as it came
  (:meth:`krypton.core.records.AuthenticatedRegistry.arrive`), and the
  attribute blob is decoded only when it holds something the Locate indexes
  need (:func:`krypton.core.ingest.index_of`).
* **Execute** — one delegated KMIP batch item is decoded, run by the Core's
  control table (``krypton.core.engine.control``) in the caller's context (identity,
  tenant, protocol version, the batch's ID placeholder), audited, and answered
  with the encoded response batch item and the state changes it made; the
  gateway applies those before relaying the answer.
* **FetchKey** — a wrapped record by uid (``KeyRecord.from_object``, with its
  record MAC), for a key made at another gateway. The registry the service is
  given checks the MAC as it reads (:class:`krypton.core.records.AuthenticatedRegistry`).
* **KeyStates** — the state of a batch of keys (a gateway reconciling).

Every call leaves an audit record naming the gateway (its authenticated
SPIFFE ID): a Subscribe one per tenant, a SyncKeys one per tenant with the
number of records, a FetchKey one with the uid; an Execute's record names
the client identity the gateway vouches for as well. (Refused calls are
audited by the uplink server, before they get here.)

Key material never passes through here in the clear except L3 grants, which
the uplink server wipes once serialised onto the mutual-TLS channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from krypton.core.engine.control import AuditContext, execute_item
from krypton.core.engine.objects import CoreServices
from krypton.core.ingest import index_of
from krypton.core.keystore import CoreKeyStore
from krypton.core.records import AuthenticatedRegistry, MacKey, check_arriving
from krypton.core.rotation import SyncFence
from krypton.crypto.keyring import L3Grant, L3State
from krypton.crypto.secret import SecretBytes
from krypton.errors import CryptographicFailure, StorageError
from krypton.kmip.versions import ProtocolVersion
from krypton.metrics.meter import FAILED, SUCCESS, KmipMeter
from krypton.model.context import RequestContext
from krypton.model.record import KeyRecord
from krypton.model.registry import AuditRecord, Change, ObjectRecord, Registry
from krypton.ttlv.codec import Limits, decode, encode
from krypton.ttlv.enums import ResultStatus
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag
from krypton.uplink.types import (
    CoreEvent,
    ExecuteRequest,
    ExecuteResult,
    Heartbeat,
    L3Versions,
    StateChange,
)

log = logging.getLogger("krypton.core")

DROP_NOTICE_SIZE = 32
REPLAY_BATCH = 1000
_DROPPED = frozenset((L3State.COMPROMISED, L3State.DESTROYED))


@dataclass(eq=False)
class _Subscriber:
    gateway: str
    tenants: frozenset[str]
    queue: asyncio.Queue[CoreEvent | L3Grant | tuple[str, int]] = field(
        default_factory=asyncio.Queue
    )


class CoreService:
    """Implements :class:`krypton.uplink.service.CoreHandler` over a registry and key store."""

    def __init__(
        self,
        registry: Registry,
        keys: CoreKeyStore,
        services: CoreServices,
        *,
        lease_seconds: float,
        limits: Limits | None = None,
        replay_batch: int = REPLAY_BATCH,
        mac_key: MacKey | None = None,
        meter: KmipMeter | None = None,
        on_old_version: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.services = services
        self.lease_seconds = lease_seconds
        self.limits = limits or Limits()
        self._subscribers: set[_Subscriber] = set()
        self._replay_batch = replay_batch
        # no record under a revoked L3 version; one under an older one is re-wrapped
        self._fence = SyncFence(keys, registry, on_old_version=on_old_version)
        self._mac_key = mac_key
        self._unsubscribe: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.meter = meter  # Execute items by operation and result, and their time
        self.synced_keys = 0  # records stored from SyncKeys

    def connected(self) -> dict[str, frozenset[str]]:
        """Each gateway with a Subscribe stream open → its tenants (any thread)."""
        out: dict[str, frozenset[str]] = {}
        for sub in list(self._subscribers):
            out[sub.gateway] = out.get(sub.gateway, frozenset()) | sub.tenants
        return out

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._unsubscribe.append(await self.registry.subscribe(self._on_registry_change))
        self._unsubscribe.append(self.keys.add_listener(self._on_key_change))

    async def close(self) -> None:
        for undo in self._unsubscribe:
            undo()
        self._unsubscribe.clear()

    # -- change fan-out -------------------------------------------------------------
    async def _on_registry_change(self, change: Change) -> None:
        if not isinstance(change, StateChange):
            return  # key-table changes arrive through the key store's listener
        for sub in list(self._subscribers):
            if change.tenant in sub.tenants:
                sub.queue.put_nowait(change)

    def _on_key_change(self, tenant: str, version: int, state: L3State) -> None:
        # Called from the key store (possibly off the loop thread): the grant
        # itself is fetched by each subscriber's task.
        if self._loop is None:
            return
        told = 0
        for sub in list(self._subscribers):
            if tenant in sub.tenants:
                self._loop.call_soon_threadsafe(sub.queue.put_nowait, (tenant, version))
                told += 1
        log.info("L3 %s v%d is %s: sent to %d subscribed gateway(s)", tenant, version,
                 state.name, told)

    async def _grant_event(self, tenant: str, version: int) -> L3Grant | None:
        grant = await self.keys.grant(tenant, version, self.lease_seconds)
        if grant is not None:
            return grant
        # Revoked or destroyed: tell the gateway so it drops the version at once.
        # An uplink L3 message without material is refused by the gateway, so the
        # notice carries zero bytes in place of the key (a dropped state never
        # installs them).
        states = await self.keys.l3_states(tenant)
        state = states.get(version, L3State.DESTROYED)
        return L3Grant(tenant, version, SecretBytes(bytes(DROP_NOTICE_SIZE)), state, 0.0)

    async def _snapshot(self, tenants: frozenset[str]) -> list[CoreEvent]:
        """Every L3 version of ``tenants``: usable ones opened, the others as drop
        notices, then the usable set of each tenant."""
        events: list[CoreEvent] = []
        for tenant in sorted(tenants):
            grants = await self.keys.grants([tenant], self.lease_seconds)
            usable = frozenset(g.version for g in grants)
            events.extend(grants)
            for version, state in sorted((await self.keys.l3_states(tenant)).items()):
                if version not in usable and state in _DROPPED:
                    events.append(L3Grant(tenant, version, SecretBytes(bytes(DROP_NOTICE_SIZE)),
                                          state, 0.0))
            events.append(L3Versions(tenant, usable))
        return events

    async def _replay(self, tenants: frozenset[str], after: int | None
                      ) -> AsyncIterator[StateChange | Heartbeat]:
        """The feed after ``after``, then the Heartbeat that closes the replay."""
        pruned, head = await self.registry.feed_bounds()
        if after is None:
            yield Heartbeat.now(head)
            return
        if after < pruned or after > head:  # too far behind, or ahead of this registry
            log.info("feed: a gateway at %d is outside the feed kept (%d..%d): reconcile",
                     after, pruned + 1, head)
            yield Heartbeat.now(head, reconcile=True)
            return
        last = after
        while True:
            batch = await self.registry.feed_since(sorted(tenants), last, self._replay_batch)
            for change in batch:
                if isinstance(change, StateChange):
                    yield change
            if batch:
                last = batch[-1].seq
            if len(batch) < self._replay_batch:
                break
        yield Heartbeat.now(max(head, last))

    # -- CoreHandler -----------------------------------------------------------------
    async def subscribe(
        self, gateway: str, tenants: frozenset[str], after_seq: int | None = None
    ) -> AsyncIterator[CoreEvent]:
        sub = _Subscriber(gateway, tenants)
        self._subscribers.add(sub)  # before the feed is read: nothing falls in between
        log.info("gateway %s subscribed for %s", gateway, ", ".join(sorted(tenants)))
        for tenant in sorted(tenants):
            await self._audit(gateway, tenant, "Subscribe")
        loop = asyncio.get_running_loop()
        renew = max(self.lease_seconds / 2, 1.0)
        through = 0
        try:
            for event in await self._snapshot(tenants):
                yield event
            next_renew = loop.time() + renew
            async for replayed in self._replay(tenants, after_seq):
                if isinstance(replayed, Heartbeat):
                    through = replayed.feed_seq
                yield replayed
            while True:
                wait = next_renew - loop.time()
                if wait <= 0:  # a fixed schedule: other traffic never postpones it
                    next_renew = loop.time() + renew
                    for event in await self._snapshot(tenants):
                        yield event
                    continue
                try:
                    item = await asyncio.wait_for(sub.queue.get(), timeout=wait)
                except TimeoutError:
                    continue
                if isinstance(item, tuple):
                    grant = await self._grant_event(*item)
                    if grant is not None:
                        yield grant
                elif not (isinstance(item, StateChange) and 0 < item.seq <= through):
                    yield item
        finally:
            self._subscribers.discard(sub)
            log.info("gateway %s unsubscribed", gateway)

    async def sync_keys(self, gateway: str, keys: Sequence[KeyRecord]) -> list[str]:
        registry = self.registry
        if isinstance(registry, AuthenticatedRegistry):
            # every MAC checked (once) before anything is stored, then fenced
            arrived = {}
            for k in keys:
                a = registry.arrive(k, gateway, index_of(k.attributes))
                arrived[id(a.record)] = a
            records = await self._fence.admit(gateway, [a.record for a in arrived.values()])
            await registry.put_arrived([arrived[id(r)] for r in records])
        else:
            if self._mac_key is not None:
                keys = [check_arriving(k, self._mac_key) for k in keys]
            records = await self._fence.admit(gateway, [self._record(gateway, k) for k in keys])
            await registry.put_objects(records)
        self.synced_keys += len(records)
        for tenant, n in sorted(Counter(r.tenant for r in records).items()):
            await self._audit(gateway, tenant, "SyncKeys", detail=f"{n} record(s)")
        return [r.uid for r in records]

    @staticmethod
    def _record(gateway: str, key: KeyRecord) -> ObjectRecord:
        names, groups, custom = index_of(key.attributes)
        return key.to_object(origin=gateway, names=names, groups=groups, custom=custom)

    async def execute(self, gateway: str, request: ExecuteRequest) -> ExecuteResult:
        began = time.perf_counter()
        item = decode(request.batch_item, self.limits)
        ctx = RequestContext(
            identity=request.identity,
            tenant=request.tenant,
            version=ProtocolVersion(*request.protocol),
            now=int(time.time()),
            request_id=request.correlation_id or "core",
            placeholder=request.placeholder,
        )
        answer, outcome = await execute_item(
            self.services, ctx, item, AuditContext(gateway, request.correlation_id or None)
        )
        changes: tuple[StateChange, ...] = ()
        placeholder = None
        if outcome is not None:
            placeholder = outcome.uid
            changes = outcome.changes
        if self.meter is not None:
            self.meter.done(_int_of(answer, Tag.OPERATION, -1), _result_of(answer),
                            time.perf_counter() - began)
        return ExecuteResult(encode(answer), changes, placeholder)

    async def fetch_key(self, gateway: str, tenant: str, uid: str) -> KeyRecord | None:
        try:
            rec = await self.registry.get_object(tenant, uid)
        except CryptographicFailure as exc:  # a record that failed its MAC: refused
            await self._audit(gateway, tenant, "FetchKey", uid, result=exc.reason.name)
            raise
        found = "Success" if rec is not None else "ItemNotFound"
        await self._audit(gateway, tenant, "FetchKey", uid, result=found)
        return None if rec is None else KeyRecord.from_object(rec)

    async def key_states(self, gateway: str, tenant: str, uids: Sequence[str]
                         ) -> list[StateChange]:
        states = await self.registry.object_states(tenant, uids)
        await self._audit(gateway, tenant, "KeyStates", detail=f"{len(uids)} key(s)")
        return [StateChange(tenant, uid, state, rev) for uid, (state, rev) in states.items()]

    async def _audit(self, gateway: str, tenant: str, operation: str, uid: str | None = None, *,
                     result: str = "Success", detail: str = "") -> None:
        record = AuditRecord(time=time.time(), identity=gateway, tenant=tenant,
                             operation=operation, uid=uid, result=result, gateway=gateway,
                             detail=detail)
        try:
            await self.registry.append_audit(record)
        except StorageError:
            log.error("audit record of %s by %s not written", operation, gateway)


def _int_of(item: Item, tag: int, default: int) -> int:
    found = item.find(tag)
    return found.value if found is not None and isinstance(found.value, int) else default


def _result_of(answer: Item) -> int:
    """A response batch item's result: SUCCESS, its Result Reason, or FAILED."""
    if _int_of(answer, Tag.RESULT_STATUS, -1) == ResultStatus.SUCCESS:
        return SUCCESS
    return _int_of(answer, Tag.RESULT_REASON, FAILED)
