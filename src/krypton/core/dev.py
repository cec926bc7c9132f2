"""The embedded development stack: the Core's key store and a Gateway in one process.

Until the uplink lands, the gateway's L3 keys come from the Core side of the
same process through :class:`EmbeddedL3Source` — the same ``L3Source``
interface the uplink client will implement. The Core's files (its master
key, its SQLite key store) are the Core's; the gateway's vault holds wrapped
L4 keys only.
"""

from __future__ import annotations

import logging
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


class EmbeddedStack:
    """A Core key store feeding a Gateway in one process."""

    def __init__(self, core: CoreConfig, gateway: GatewayConfig) -> None:
        self.core_config = core
        master = load_master_key(core.master_key_file)
        try:
            self.store = CoreKeyStore.open(registry_path(core), master)
        finally:
            master.wipe()
        source = EmbeddedL3Source(self.store, core.tenants, core.l3_lease_seconds)
        self.gateway = Gateway(gateway, source)

    async def start(self) -> None:
        await self.gateway.start()

    async def close(self) -> None:
        await self.gateway.close()
        self.store.close()
