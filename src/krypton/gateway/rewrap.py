"""A gateway's side of the background re-wrap: its vault follows the active L3.

How this works
--------------
The Core re-wraps the registry's objects after a rotation
(:mod:`krypton.core.rewrap`); each move is a change in its feed. A gateway
keeps copies of keys, and after a rotation two kinds of them may still be
wrapped under the older version. Neither side ever ends up with a record it
cannot unwrap:

* **Keys the Core does not have yet** (the outbox: made under the old version
  before this gateway heard of the rotation) are re-wrapped here
  (:class:`VaultRewrapper`): whenever a tenant's active version differs from
  the one its last pass finished with (a rotation, a restart), it walks the
  vault's live outbox records under every other version the ring holds,
  ``batch`` at a time, unwraps each with the old version and wraps it under
  the active one, and stores it with ``Vault.rewrap`` — a compare-and-set on
  the record as read (a concurrent change wins), the row checked before and
  MAC'd afresh under the new version on the writer thread. They thus reach
  the Core under the active version, so revoking the old one after the
  Core's re-wrap loses none of them. (One synced meanwhile under the old
  version re-opens the Core's job: ``on_old_version``.)
* **Copies of keys the Core holds** follow the registry, the one authority
  for them: when the Core's re-wrap of a key reaches this gateway on the feed,
  :class:`krypton.gateway.upstream.Upstream` takes the Core's record whole
  (``Vault.adopt``, after ``Vault.authentic`` checked its MAC) if the copy
  here is under a version that is not the active one here, or under one no
  longer held (the gateway was away while the old version was revoked). So
  an operator who rotates with ``--no-rewrap`` keeps the old keys where they
  are, at the Core and at every gateway alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from krypton.crypto.keyring import KeyRing
from krypton.errors import KryptonError
from krypton.vault.port import VaultStore

log = logging.getLogger("krypton.gateway.rewrap")

DEFAULT_BATCH = 256
DEFAULT_INTERVAL = 1.0


class VaultRewrapper:
    """Moves a gateway vault's records to each tenant's active L3 version."""

    def __init__(self, vault: VaultStore, ring: KeyRing, tenants: Iterable[str], *,
                 batch: int = DEFAULT_BATCH, interval: float = DEFAULT_INTERVAL) -> None:
        self._vault = vault
        self._ring = ring
        self._tenants = tuple(sorted(set(tenants)))
        self._batch = batch
        self._interval = interval
        self._finished: dict[str, int] = {}  # tenant -> active version of its last full pass
        self._task: asyncio.Task[None] | None = None
        self.moved = 0  # records re-wrapped by this object (a read-only count)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name="vault-rewrap")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except KryptonError as exc:
                log.warning("re-wrap: vault pass not finished: %s", exc.message)
            except Exception:  # the worker must outlive one bad pass
                log.exception("re-wrap: a vault pass failed; retried later")
            await asyncio.sleep(self._interval)

    async def run_once(self) -> int:
        """One pass over every tenant whose active version moved; records moved."""
        moved = 0
        for tenant in self._tenants:
            active = self._ring.active_version(tenant)
            if active is None or self._finished.get(tenant) == active:
                continue
            moved += await self._tenant(tenant, active)
            self._finished[tenant] = active
        if moved:
            log.info("re-wrap: %d vault record(s) moved to the active L3 version", moved)
        return moved

    async def _tenant(self, tenant: str, active: int) -> int:
        held = self._ring.versions(tenant)
        moved = 0
        for version in sorted(self._vault.l3_versions(tenant)):
            if version == active or version not in held:
                continue
            after = ""
            while uids := self._vault.under_l3(tenant, version, after, self._batch):
                done = await asyncio.gather(*(self._move(uid, version) for uid in uids))
                moved += sum(done)
                after = uids[-1]
        self.moved += moved
        return moved

    async def _move(self, uid: str, version: int) -> int:
        try:
            rec = self._vault.get(uid)
            if rec is None or rec.l3_version != version or not rec.wrapped:
                return 0
            with self._ring.unwrap(rec.tenant, uid, version, rec.wrapped) as plain:
                target, blob = self._ring.wrap(rec.tenant, uid, plain)
            if target == version:
                return 0
            return int(await self._vault.rewrap(rec, target, blob))
        except KryptonError as exc:
            log.warning("re-wrap: vault record %s not moved off L3 version %d: %s",
                        uid, version, exc.message)
            return 0
