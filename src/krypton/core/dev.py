"""The embedded development stack: the Core's key store and a Gateway in one process.

Until the uplink lands, the gateway's L3 keys come from the Core side of the
same process through :class:`EmbeddedL3Source` — the same ``L3Source``
interface the uplink client will implement. The Core side is the registry
named by ``CoreConfig.registry`` (``sqlite:core.db`` by default: one file for
objects and keys) and the key store on it, watched so that a rotation or
revocation made by another process (``krypton core rotate-l3``, another
worker) reaches this gateway's key ring. The gateway's vault holds wrapped L4
keys only.

The constructor and :func:`prepare_tenants` are synchronous (the CLI calls
them before its event loop runs, and before forking workers); everything that
talks to the registry happens in :meth:`EmbeddedStack.start`, or inside a
short ``asyncio.run`` in :func:`prepare_tenants`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from krypton.config import CoreConfig, GatewayConfig
from krypton.core.embedded import EmbeddedL3Source
from krypton.core.keystore import CoreKeyStore, load_master_key
from krypton.crypto.keyring import KeyRing
from krypton.gateway.app import Gateway
from krypton.registry import Registry, open_registry

log = logging.getLogger("krypton.dev")


async def open_store(core: CoreConfig, registry: Registry) -> CoreKeyStore:
    """The key store on ``registry``, with the master key ``core`` names."""
    master = load_master_key(core.master_key_file)
    try:
        return await CoreKeyStore.open(registry, master)
    finally:
        master.wipe()


async def ensure_tenants(core: CoreConfig) -> None:
    """Create every configured tenant's L2 and first L3 (idempotent)."""
    registry = await open_registry(core.registry)
    try:
        store = await open_store(core, registry)
        try:
            for tenant in core.tenants:
                await store.ensure_tenant(tenant)
        finally:
            await store.close()
    finally:
        await registry.close()


def prepare_tenants(core: CoreConfig) -> None:
    """:func:`ensure_tenants` once, before workers start (no race between them).
    Runs its own event loop: call it where no loop is running."""
    asyncio.run(ensure_tenants(core))


class _StoreSource:
    """The gateway's L3 source, bound to the stack's store once it is open."""

    def __init__(self) -> None:
        self.inner: EmbeddedL3Source | None = None

    async def start(self, ring: KeyRing) -> None:
        if self.inner is None:
            raise RuntimeError("the embedded Core is not open (start the EmbeddedStack)")
        await self.inner.start(ring)

    async def close(self) -> None:
        if self.inner is not None:
            await self.inner.close()


class EmbeddedStack:
    """A Core key store feeding a Gateway in one process."""

    def __init__(
        self, core: CoreConfig, gateway: GatewayConfig, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.core_config = core
        self.registry: Registry | None = None
        self.store: CoreKeyStore | None = None
        self._source = _StoreSource()
        self.gateway = Gateway(gateway, self._source, ssl_context)

    async def start(self) -> None:
        core = self.core_config
        try:
            self.registry = await open_registry(core.registry)
            self.store = await open_store(core, self.registry)
            await self.store.start_watching()
            self._source.inner = EmbeddedL3Source(self.store, core.tenants, core.l3_lease_seconds)
            await self.gateway.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.gateway.close()
            await self._close_core()
            raise

    async def close(self) -> None:
        try:
            await self.gateway.close()
        finally:
            await self._close_core()

    async def _close_core(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.registry is not None:
            await self.registry.close()
            self.registry = None
