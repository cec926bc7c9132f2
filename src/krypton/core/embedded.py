"""An :class:`~krypton.crypto.keyring.L3Source` backed by a
:class:`~krypton.core.keystore.CoreKeyStore` in the same process (the
embedded dev stack).

At start it makes sure each served tenant exists, installs every usable L3
version into the gateway's ring, and listens to the store: a rotation or
state change is pushed into the ring as soon as the store reports it, which
is before ``rotate_l3``/``set_l3_state`` return for changes made through this
store, and within the store watcher's delay for changes made by another
process (start the watcher with :meth:`CoreKeyStore.start_watching`; the
owner of the store does that, not this source). A renewal task re-grants
every version at half the lease, as the uplink's heartbeats will. Nothing
about L3 is written to the gateway's own files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from krypton.core.keystore import CoreKeyStore
from krypton.crypto.keyring import KeyRing, L3Grant, L3State

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 24 * 3600.0


class EmbeddedL3Source:
    """Feeds a key ring from a CoreKeyStore of this process."""

    def __init__(
        self,
        store: CoreKeyStore,
        tenants: Iterable[str],
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self._store = store
        self._tenants = frozenset(tenants)
        self._lease = float(lease_seconds)
        self._ring: KeyRing | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def start(self, ring: KeyRing) -> None:
        self._ring = ring
        self._unsubscribe = self._store.add_listener(self._on_change)
        try:
            await self._grant_all(create=True)
        except BaseException:
            await self.close()
            raise
        self._renewer = asyncio.create_task(self._renew_forever(), name="l3-lease-renewal")

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        self._ring = None

    async def _grant_all(self, create: bool = False) -> None:
        if create:
            for tenant in sorted(self._tenants):
                await self._store.ensure_tenant(tenant)
        self._install(await self._store.grants(sorted(self._tenants), self._lease))

    def _install(self, grants: list[L3Grant]) -> None:
        ring = self._ring
        for grant in grants:
            if ring is None:
                grant.material.wipe()
            else:
                ring.install_grant(grant)

    async def _on_change(self, tenant: str, version: int, state: L3State) -> None:
        if self._ring is None or tenant not in self._tenants:
            return
        if state not in (L3State.ACTIVE, L3State.DEACTIVATED):
            self._ring.drop(tenant, version)
            return
        grant = await self._store.grant(tenant, version, self._lease)
        if grant is not None:
            self._install([grant])  # wipes it if we were closed while reading

    async def _renew_forever(self) -> None:
        period = max(self._lease / 2, 0.05)
        while True:
            await asyncio.sleep(period)
            try:
                await self._grant_all()
            except Exception:
                log.exception("renewing L3 leases from the embedded Core failed")
