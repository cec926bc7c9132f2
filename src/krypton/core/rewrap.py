"""Background re-wrap: the Core moves registry objects off older L3 versions.

How this works
--------------
After a rotation, objects made before it stay wrapped under the version that
was active then (now DEACTIVATED, still able to unwrap). While any object
needs it, that version cannot be revoked without losing keys
(:mod:`krypton.core.rotation`). The re-wrap moves them to the active version:

* **A job per tenant** (:class:`~krypton.model.registry.RewrapJob`, the
  registry's ``rewrap_jobs`` table): who asked (``rotate-l3`` asks on the
  rotating operator's behalf; ``krypton core l3 rewrap --operator`` asks
  explicitly), the target, how many objects were under older versions then,
  how many have moved. :func:`request` stores it; ``l3 list`` shows it.
* **The worker** (:class:`Rewrapper`, in every Core process) runs unfinished
  jobs: for each older version the Core's key ring still holds, it reads the
  objects under it (``Registry.l3_objects``, in uid order, ``batch`` at a
  time), checks each record's MAC as it reads it (the authenticated
  registry: a tampered record is never laundered into a fresh one), unwraps
  it, wraps it under the active version and stores it with
  ``update_object`` — a compare-and-set on the revision, so a concurrent
  change (a Destroy, another Core re-wrapping the same object) wins and the
  object is looked at again on the next pass; the record MAC is recomputed
  under the new version by the authenticated registry. Each move commits with
  its own audit record (identity: the job's operator; the uid; "L3 version
  a -> b") and its entry in the change feed, so every gateway holding the key
  hears of it (:mod:`krypton.gateway.rewrap` says what a gateway does then).
  A batch's moves are issued together (the SQLite writer commits them with
  one fsync). After each batch the job's progress is stored.
* **Resumable.** What is left is what the registry still holds under older
  versions, so a Core restarted halfway simply carries on (the stored
  ``done`` counter too); a job whose passes stop making progress (records
  that fail their MAC, say) is finished with what is left reported.
* The worker wakes on every L3 change this Core's key store reports (a
  rotation here or in another process), on :meth:`Rewrapper.reopen` (a
  gateway synced a record under an older version after the job finished),
  and every ``interval`` seconds (a job asked for by the command line).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from krypton.core.keystore import CoreKeyStore
from krypton.crypto.keyring import KeyRing, L3State
from krypton.errors import KryptonError, StorageError
from krypton.model.registry import AuditRecord, Registry, RegistryConflict, RewrapJob

log = logging.getLogger("krypton.core.rewrap")

DEFAULT_BATCH = 256
DEFAULT_INTERVAL = 5.0
OPERATION = "RewrapL3"
_USABLE = frozenset({L3State.ACTIVE, L3State.DEACTIVATED})


def _active(states: dict[int, L3State]) -> int | None:
    live = [v for v, s in states.items() if s == L3State.ACTIVE]
    return max(live) if live else None


async def left(registry: Registry, tenant: str, states: dict[int, L3State]) -> int:
    """Objects still wrapped under a usable version other than the active one."""
    active = _active(states)
    usage = await registry.l3_usage(tenant)
    return sum(n for v, n in usage.items() if v != active and states.get(v) in _USABLE)


async def request(keys: CoreKeyStore, registry: Registry, tenant: str, operator: str,
                  *, clock: Callable[[], float] = time.time) -> RewrapJob:
    """Ask for (or restart) the tenant's re-wrap to its active version, audited."""
    states = await keys.l3_states(tenant)
    active = _active(states)
    if active is None:
        raise KryptonError(f"tenant {tenant!r} has no active L3 version to re-wrap to")
    total = await left(registry, tenant, states)
    now = clock()
    job = RewrapJob(tenant, active, operator, now, total, 0, now, None if total else now)
    await registry.put_rewrap_job(job)
    await _audit(registry, job, None, f"requested: {total} key(s) under older versions"
                 f" to move to version {active}")
    return job


async def stop(registry: Registry, tenant: str, operator: str, why: str) -> None:
    """End the tenant's unfinished job, if any (a rotation without a re-wrap:
    the operator keeps the older keys where they are), audited."""
    for job in await registry.rewrap_jobs(tenant):
        if job.finished is None:
            now = time.time()
            await registry.put_rewrap_job(replace(job, finished=now, updated=now))
            await _audit(registry, replace(job, operator=operator), None,
                         f"stopped after {job.done} key(s): {why}")


async def _audit(registry: Registry, job: RewrapJob, uid: str | None, detail: str,
                 result: str = "Success") -> None:
    try:
        await registry.append_audit(AuditRecord(
            time=time.time(), identity=job.operator, tenant=job.tenant, operation=OPERATION,
            uid=uid, result=result, detail=detail))
    except StorageError:
        log.error("audit record of a re-wrap of %s by %s not written", job.tenant, job.operator)


class Rewrapper:
    """Runs re-wrap jobs in a Core process (see the module comment). ``registry``
    must be the authenticated one (:class:`krypton.core.records.AuthenticatedRegistry`)
    and ``ring`` the Core's key ring, which holds every usable L3 version."""

    def __init__(
        self,
        registry: Registry,
        keys: CoreKeyStore,
        ring: KeyRing,
        *,
        batch: int = DEFAULT_BATCH,
        interval: float = DEFAULT_INTERVAL,
        pause: float = 0.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if batch < 1 or interval <= 0 or pause < 0:
            raise ValueError("batch must be ≥ 1, interval > 0, pause ≥ 0")
        self._registry = registry
        self._keys = keys
        self._ring = ring
        self._batch = batch
        self._interval = interval
        self._pause = pause
        self._sleep = sleep
        self._wake = asyncio.Event()
        self._reopen: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._remove: Callable[[], None] | None = None

    async def start(self) -> None:
        self._remove = self._keys.add_listener(lambda *_: self._wake.set())
        self._task = asyncio.create_task(self._forever(), name="core-rewrap")
        self._wake.set()

    async def close(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def reopen(self, tenant: str) -> None:
        """Records under an older version arrived after the tenant's job finished."""
        self._reopen.add(tenant)
        self._wake.set()

    async def _forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.run_pending()
            except KryptonError as exc:
                log.warning("re-wrap: not run now: %s", exc.message)
            except Exception:  # the worker must outlive one bad pass
                log.exception("re-wrap: a pass failed; retried later")

    async def run_pending(self) -> list[RewrapJob]:
        """Run every unfinished job of a tenant this Core serves; the jobs as left."""
        reopen, self._reopen = self._reopen, set()
        out: list[RewrapJob] = []
        for stored in await self._registry.rewrap_jobs():
            if stored.tenant not in self._ring.tenants():
                continue
            if self._ring.active_version(stored.tenant) != stored.target:
                # The rotation was committed by another process (the CLI) and this
                # Core's key ring has not learnt of it yet: a pass now would move
                # nothing and finish the job early. The next look runs it.
                continue
            # a finished job re-opens only for the version it moved keys to
            again = (stored.tenant in reopen
                     and stored.target == self._ring.active_version(stored.tenant))
            if stored.finished is None or again:
                out.append(await self.run(replace(stored, finished=None)))
        return out

    async def run(self, job: RewrapJob) -> RewrapJob:
        """Move the tenant's objects until a pass moves none; the job, finished."""
        while True:
            moved, job = await self._pass(job)
            if not moved:
                break
        states = await self._keys.l3_states(job.tenant)
        remaining = await left(self._registry, job.tenant, states)
        job = replace(job, finished=time.time(), updated=time.time())
        await self._registry.put_rewrap_job(job)
        note = f"; {remaining} could not be moved (see the log)" if remaining else ""
        await _audit(self._registry, job, None,
                     f"finished: {job.done} key(s) moved to version "
                     f"{self._ring.active_version(job.tenant)}{note}")
        log.info("re-wrap of %s finished: %d key(s) moved%s", job.tenant, job.done, note)
        return job

    async def _pass(self, job: RewrapJob) -> tuple[int, RewrapJob]:
        tenant = job.tenant
        active = self._ring.active_version(tenant)
        if active is None:
            return 0, job
        held = self._ring.versions(tenant)
        usage = await self._registry.l3_usage(tenant)
        moved = 0
        for version in sorted(v for v in usage if v != active and v in held):
            after = ""
            while uids := await self._registry.l3_objects(tenant, version, after,
                                                           self._batch):
                done = await asyncio.gather(*(self._move(job, uid, version) for uid in uids))
                n = sum(done)
                moved += n
                job = replace(job, done=job.done + n, updated=time.time())
                await self._registry.put_rewrap_job(job)
                after = uids[-1]
                if self._pause:
                    await self._sleep(self._pause)
        return moved, job

    async def _move(self, job: RewrapJob, uid: str, version: int) -> int:
        tenant = job.tenant
        try:
            rec = await self._registry.get_object(tenant, uid)  # its MAC checked here
            if rec is None or rec.sealed is None or rec.l3_version != version:
                return 0
            with self._ring.unwrap(tenant, uid, version, rec.sealed) as plain:
                target, blob = self._ring.wrap(tenant, uid, plain)
            if target == version:
                return 0
            audit = AuditRecord(
                time=time.time(), identity=job.operator, tenant=tenant, operation=OPERATION,
                uid=uid, result="Success", detail=f"L3 version {version} -> {target}")
            await self._registry.update_object(replace(rec, l3_version=target, sealed=blob),
                                               audit)
        except RegistryConflict:
            return 0  # changed meanwhile: looked at again on the next pass
        except KryptonError as exc:
            log.warning("re-wrap: %s (%s) not moved off L3 version %d: %s",
                        uid, tenant, version, exc.message)
            return 0
        return 1
