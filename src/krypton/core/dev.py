"""The embedded development stack: the Core's key store and a Gateway in one process.

Until the uplink lands, the gateway's L3 keys come from the Core side of the
same process through :class:`EmbeddedL3Source` — the same ``L3Source``
interface the uplink client will implement. The Core's files (its master
key, its SQLite key store) are the Core's; the gateway's vault holds wrapped
L4 keys only.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from krypton.config import CoreConfig, GatewayConfig
from krypton.core.embedded import EmbeddedL3Source
from krypton.core.keystore import CoreKeyStore, load_master_key
from krypton.errors import ConfigError
from krypton.gateway.app import Gateway

log = logging.getLogger("krypton.dev")


def registry_path(core: CoreConfig) -> Path:
    scheme, _, rest = core.registry.partition(":")
    if scheme != "sqlite":
        raise ConfigError(
            f"core.registry: the embedded stack needs a sqlite: registry, got {scheme!r}"
        )
    return Path(rest)


def open_store(core: CoreConfig) -> CoreKeyStore:
    master = load_master_key(core.master_key_file)
    try:
        return CoreKeyStore.open(registry_path(core), master)
    finally:
        master.wipe()


def prepare_tenants(core: CoreConfig) -> None:
    """Create every tenant's L2 and first L3 once, before workers start (no race)."""
    store = open_store(core)
    try:
        for tenant in core.tenants:
            store.ensure_tenant(tenant)
    finally:
        store.close()


class EmbeddedStack:
    """A Core key store feeding a Gateway in one process."""

    def __init__(
        self, core: CoreConfig, gateway: GatewayConfig, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.core_config = core
        self.store = open_store(core)
        source = EmbeddedL3Source(self.store, core.tenants, core.l3_lease_seconds)
        self.gateway = Gateway(gateway, source, ssl_context)

    async def start(self) -> None:
        await self.gateway.start()

    async def close(self) -> None:
        await self.gateway.close()
        self.store.close()
