"""The gateway's side of the control path: delegation, outbox, read-through, state flow.

How this works
--------------
:class:`Upstream` sits between the dispatcher and the uplink client and keeps
the consistency rules of DESIGN §4:

* **Sync before delegate.** Before an item is sent to the Core, the key it
  names (its Unique Identifier, or the batch's ID Placeholder) is looked up in
  the vault; if that record is still in the outbox it is sent with
  ``SyncKeys`` first, so the Core never sees an operation on a key it does
  not hold. A ``Locate`` flushes the tenant's outbox first (read by tenant,
  page after page), so it finds every key this gateway has made for it.
* **State flows down.** The Core's answer carries the state changes the
  operation made; they are written to the vault *before* the answer is
  relayed. Changes made through other gateways arrive on the Subscribe
  stream and are applied as they come.
* **Refused records.** A record the Core does not acknowledge (its fence
  refuses records under a revoked L3 version) and an outbox record under a
  version this gateway no longer holds (``Vault.outbox(gone=...)``) are
  quarantined — logged with their uids, listed by ``krypton gateway outbox`` —
  instead of being offered again forever.
* **Partition.** Nothing is queued: the client fails a delegated call within
  its bound (``UpstreamUnavailable``), and the item fails with it. Keys made
  while the Core was away stay in the outbox; a drainer task sends them in
  batches whenever the uplink is READY (woken by every ``Create``, and when
  the link comes back).
* **One drain per vault.** The workers of ``--workers N`` share one vault,
  so one outbox: only the worker holding the :class:`DrainOwner` lock drains
  it (the others would send the same keys again); a worker that does not own
  it, woken by a ``Create``, nudges the owner instead, and takes the lock
  when the owner is gone (its next wake or interval). An owner whose uplink
  is down lets it go, for a worker whose uplink is up. Sync before delegate
  is each worker's own, owner or not.
* **The pump.** Draining (and a Locate's flush) reads the outbox page after
  page past a position (``Vault.outbox_page``, MACs unchecked: the Core checks
  each record's MAC and refuses a batch with a wrong one, whose records are
  then checked here, the failing ones left in the outbox, the rest resent)
  and keeps up to ``window`` ``SyncKeys`` batches in flight: a batch's keys
  are marked synced as soon as its answer comes, while the next batches
  travel and the Core stores them (issue 16: one batch at a time left both
  processes mostly waiting). Keys
  the Core refuses stay in the outbox and the pass goes on past them;
  ``SyncKeys`` is idempotent, so a batch sent twice (by the drain and a
  flush, or again after a lost answer) is harmless. The first failed batch
  stops new ones; those in flight finish, then the failure is raised.
* **The change feed.** Changes made through other gateways arrive on the
  Subscribe stream from the Core's durable feed; :meth:`apply` brings a held
  record up to the Core's and writes the feed position in the same vault
  transaction (a change to a key not held only moves the position, written
  with the next change or when the replay ends). When the Core says this
  gateway's position is older than the feed it keeps, :meth:`caught_up`
  reconciles every key held (``KeyStates``, ``RECONCILE_BATCH`` at a time)
  before the uplink reports READY.
* **Failures that teach.** A delegated item that fails on a key held here
  (already destroyed, wrong state, ...) makes the gateway ask the Core for
  that key's record and take its state: the Core may know something the
  feed has not brought yet.
* **Re-wrapped at the Core.** A change whose record the Core re-wrapped under
  another L3 version replaces this gateway's copy when that copy is not under
  the active version here or its version is no longer held
  (:mod:`krypton.gateway.rewrap`).
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

from krypton.crypto.keyring import KeyRing
from krypton.engine.objects import belongs
from krypton.errors import CryptographicFailure, KeyUnavailable, KryptonError, StorageError
from krypton.gateway.workers import DrainOwner
from krypton.model.context import RequestContext
from krypton.model.record import KeyRecord
from krypton.ttlv.codec import Limits, decode, encode
from krypton.ttlv.enums import Operation, ResultStatus
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.uplink.client import UplinkClient
from krypton.uplink.types import ConnectionState, ExecuteRequest, Heartbeat, StateChange
from krypton.vault.port import VaultStore
from krypton.vault.sqlite import DESTROYED_STATES

log = logging.getLogger("krypton.upstream")

T = TypeVar("T")

DRAIN_BATCH = 512
DRAIN_WINDOW = 4  # SyncKeys batches in flight at once
DRAIN_INTERVAL = 0.5
DRAIN_LINGER = 0.1
CLAIM_RETRY = 0.05  # how often a stopping worker tries to take the drain for its flush
RECONCILE_BATCH = 500
CURSOR_FLUSH = 1000  # feed positions skipped (keys not held) before one is written


class Upstream:
    def __init__(
        self,
        client: UplinkClient,
        vault: VaultStore,
        limits: Limits,
        *,
        batch: int = DRAIN_BATCH,
        interval: float = DRAIN_INTERVAL,
        linger: float = DRAIN_LINGER,
        window: int = DRAIN_WINDOW,
        ring: KeyRing | None = None,
        owner: DrainOwner | None = None,
    ) -> None:
        self.client = client
        self.owner = owner  # None: the only process on this vault drains it
        self._stopping = False
        self._ring = ring  # the L3 versions held here
        self.vault = vault
        self.limits = limits
        self.batch = batch
        self.window = max(1, window)
        self.interval = interval
        self.linger = linger
        self._wake = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._remove: Callable[[], None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._fetching: dict[tuple[str, str], asyncio.Task[KeyRecord | None]] = {}
        self._position = 0  # the feed position applied, maybe not yet written
        self._written = 0  # the feed position the vault holds

    async def start(self) -> None:
        self._position = self._written = self.vault.cursor()
        self.client.set_feed(self)
        self._remove = self.client.add_listener(on_connection=self._on_connection)
        self._drainer = asyncio.create_task(self._drain_forever(), name="outbox-drainer")

    async def close(self) -> None:
        if self.owner is not None:
            self.owner.close()  # a sibling takes the drain over
        self.client.set_feed(None)
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
        if self.owner is not None:
            self.owner.on_nudge = self._wake.set
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                await self.drain_once(woken=woken)
            except KryptonError as exc:
                log.info("outbox: not drained now: %s", exc.message)
            except Exception:  # the drainer must outlive any one bad batch
                log.exception("outbox: drain failed; retried on the next wake")

    async def drain_once(self, *, woken: bool = True) -> int | None:
        """One round of the drainer: pump the outbox if this process drains it;
        None if it did not (uplink down, or another worker owns the drain)."""
        owner = self.owner
        if not self.ready:
            if owner is not None:
                owner.release()  # let a worker whose uplink is up drain
            return None
        if owner is not None and (self._stopping or not owner.claim()):
            if woken:
                owner.nudge()  # keys made here: the owner drains them now
            return None
        # Let a burst of Creates gather: one SyncKeys (and one vault commit
        # to mark them synced) per batch, not per key. Anything that needs
        # a key at the Core sooner syncs it itself (sync before delegate).
        await asyncio.sleep(self.linger)
        return await self.pump()

    async def flush(self) -> int:
        """At shutdown: pump the whole outbox once this process owns the drain.
        Workers stopping together take turns (each lets go when done), so the
        first sends what waits and the others only what came after."""
        owner = self.owner
        if owner is None:
            return await self.pump()
        self._stopping = True  # the drainer claims no more
        while not owner.claim():
            await asyncio.sleep(CLAIM_RETRY)
        try:
            return await self.pump()
        finally:
            owner.release()

    async def pump(self, tenant: str | None = None) -> int:
        """Send every key waiting in the outbox (``tenant``'s only, if given: the
        other tenants' rows are not even read), with up to ``window`` batches in
        flight; how many the Core acknowledged. Reads go on past each page, so
        keys the Core refuses, or rows that cannot be sent, never stop it; keys
        made meanwhile are sent too, until a page comes back short."""
        after, more, acked = 0, True, 0
        flight: set[asyncio.Future[int]] = set()
        failure: BaseException | None = None
        try:
            while True:
                while more and failure is None and len(flight) < self.window:
                    page = self.vault.outbox_page(self.batch, tenant=tenant, after=after,
                                                  gone=self._gone, checked=False)
                    after, more = page.position, page.more
                    if page.records:
                        flight.add(asyncio.ensure_future(self._sync(page.records)))
                if not flight:
                    break
                done, flight = await asyncio.wait(flight, return_when=asyncio.FIRST_COMPLETED)
                for batch in done:
                    if batch.exception() is None:
                        acked += batch.result()
                    elif failure is None:
                        failure = batch.exception()
        finally:
            for batch in flight:  # only when this pump itself is cancelled
                batch.cancel()
        if failure is not None:
            raise failure
        return acked

    async def _sync(self, records: list[KeyRecord]) -> int:
        try:
            acked = await self.client.sync_keys(records)
        except CryptographicFailure:
            # The Core checks every record's MAC and refused the batch: find the
            # records that fail here too (logged, left in the outbox, as the
            # outbox read left them out before it trusted the Core's check) and
            # send the others.
            records = [r for r in records if self._authentic(r)]
            acked = await self.client.sync_keys(records)
        taken = set(acked)
        try:
            await self.vault.mark_synced(acked)
            # The Core stores (and acknowledges) every record but those its fence
            # refuses: wrapped under an L3 version it revoked. Offering them again
            # cannot change that; they leave the outbox, reported.
            await self.vault.quarantine({
                r.uid: f"refused by the Krypton Core: wrapped under L3 version {r.l3_version},"
                       " which it no longer accepts" for r in records if r.uid not in taken})
        except StorageError as exc:
            # The keys are at the Core; only the outbox mark is not stored (a full
            # disk, say). Go on: they are offered again later, and SyncKeys is
            # idempotent. 0: none marked.
            log.warning("outbox: %d key(s) reached the Krypton Core but are not marked so"
                        " (%s); they are sent again later", len(acked), exc.message)
            return 0
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
        answer = decode(result.batch_item, self.limits)
        status = answer.find(Tag.RESULT_STATUS)
        if status is not None and status.value != ResultStatus.SUCCESS:
            await self._learn_from_failure(ctx, _named_uid(raw_item) or ctx.placeholder)
        return answer, result.placeholder

    async def _learn_from_failure(self, ctx: RequestContext, uid: str | None) -> None:
        """A failed item on a live key held here: take the Core's state of it."""
        rec = None if uid is None else self.vault.get(uid)
        if rec is None or rec.tenant != ctx.tenant or not rec.synced:
            return
        if rec.state in DESTROYED_STATES:
            return
        try:
            await self._refresh(StateChange(rec.tenant, rec.uid, rec.state, 0))
        except KryptonError as exc:
            log.info("state of %s not refreshed after a failure: %s", rec.uid, exc.message)

    async def _sync_before(self, ctx: RequestContext, raw_item: Item) -> None:
        operation = raw_item.find(Tag.OPERATION)
        if operation is not None and operation.value == Operation.LOCATE:
            await self.pump(ctx.tenant)
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

    # -- the change feed (krypton.uplink.client.FeedSink) --------------------------------
    def cursor(self) -> int | None:
        if self._written == 0 and not self.vault.holds_keys():
            return None  # nothing held: start at the head of the Core's feed
        return self._written

    async def apply(self, change: StateChange) -> None:
        rec, _ = self._local(change.uid)
        if rec is None or rec.tenant != change.tenant:
            self._position = max(self._position, change.seq)
            if self._position - self._written >= CURSOR_FLUSH:
                await self._write_position(self._position)
            return
        await self._refresh(change)

    async def caught_up(self, beat: Heartbeat) -> None:
        if beat.reconcile:
            await self.reconcile()
        position = beat.feed_seq if beat.reconcile else max(beat.feed_seq, self._position)
        await self._write_position(position)

    async def _write_position(self, seq: int) -> None:
        await self.vault.set_cursor(seq)
        self._position = self._written = seq

    async def reconcile(self) -> int:
        """Take the Core's state of every live key held here; how many changed."""
        changed = 0
        for tenant in self.client.tenants:
            after = ""
            while uids := self.vault.held(tenant, after, RECONCILE_BATCH):
                states = await self.client.key_states(tenant, uids)
                for uid in uids:
                    rec, now = self.vault.get(uid), states.get(uid)
                    if now is None:
                        log.warning("reconcile: %s (%s) is not at the Krypton Core", uid, tenant)
                    elif rec is not None and now.state != rec.state:
                        await self._refresh(now)
                        changed += 1
                after = uids[-1]
        log.info("reconcile: %d key(s) brought up to the Krypton Core's state", changed)
        return changed

    async def _refresh(self, change: StateChange) -> None:
        """Bring a held record up to the Core's: its state, and its attributes when
        the Core can be asked (a change event does not carry them); the change's
        feed position is written with it."""
        rec, readable = self._local(change.uid)
        if not belongs(rec, change.tenant):
            return
        state = change.state
        try:
            fresh = await self.client.fetch_key(change.tenant, change.uid)
            if fresh is not None:
                fresh = self.vault.authentic(fresh)
        except KryptonError:
            fresh = None
        seq = change.seq
        if fresh is not None and fresh.wrapped and not rec.wrapped:
            # The Core undid a Destroy (a batch with Undo: krypton.engine.undo) that
            # erased the key here: take its material back.
            await self.vault.reinstate(fresh, seq=seq)
        elif fresh is not None and (not readable or (
                fresh.wrapped and fresh.l3_version != rec.l3_version
                and rec.l3_version != self._active(rec.tenant))):
            # Our copy's L3 version is gone, or is not our active one while the Core
            # re-wrapped it (krypton.gateway.rewrap): take the Core's record whole.
            await self.vault.adopt(fresh, seq=seq)
        elif not readable:
            raise KeyUnavailable(f"the record of {change.uid} cannot be read here and the"
                                 " Krypton Core did not answer for it")
        else:
            # a change the vault cannot store now is held in memory and retried,
            # never dropped (krypton.vault.held)
            attributes = None
            if fresh is not None:
                state = fresh.state
                if fresh.attributes and fresh.attributes != rec.attributes:
                    attributes = fresh.attributes
            if state != rec.state or attributes is not None or seq > 0:
                await self.vault.apply_change(
                    change.uid, state=state if state != rec.state else None,
                    attributes=attributes, seq=seq,
                )
        if seq > 0:
            self._position = max(self._position, seq)
            self._written = max(self._written, seq)

    def _authentic(self, record: KeyRecord) -> bool:
        try:
            self.vault.authentic(record)
        except KryptonError:  # RecordTampered or KeyUnavailable, logged with the uid
            return False
        return True

    def _active(self, tenant: str) -> int | None:
        return None if self._ring is None else self._ring.active_version(tenant)

    def _gone(self, tenant: str, version: int) -> bool:
        """An L3 version not held while the tenant has an active one: after a
        complete snapshot the ring holds exactly the usable versions, so the Core
        revoked or destroyed it."""
        ring = self._ring
        return (ring is not None and ring.active_version(tenant) is not None
                and version not in ring.versions(tenant))

    def _local(self, uid: str) -> tuple[KeyRecord | None, bool]:
        """The held record and whether it can be used here: a row whose L3 version
        is not held cannot be authenticated, so only its unchecked copy is given,
        to decide what to ask the Core (never to serve)."""
        try:
            return self.vault.get(uid), True
        except KeyUnavailable:
            return self.vault.peek(uid), False

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
