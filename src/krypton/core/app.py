"""Wiring: a configured Krypton Core (registry, key store, engine, uplink server)."""

from __future__ import annotations

import logging

from krypton.config import CoreConfig
from krypton.core.embedded import EmbeddedL3Source
from krypton.core.engine.journal import UndoJournal
from krypton.core.engine.objects import CoreServices, KeyRingSealer
from krypton.core.keystore import CoreKeyStore, load_master_key
from krypton.core.service import CoreService
from krypton.crypto.keyring import KeyRing
from krypton.model import Registry
from krypton.registry import open_registry
from krypton.tls.contexts import peer_rules
from krypton.tls.identity import Usage
from krypton.uplink.service import UplinkServer

log = logging.getLogger("krypton.core")


async def open_keystore(config: CoreConfig, registry: Registry) -> CoreKeyStore:
    master = load_master_key(config.master_key_file)
    try:
        return await CoreKeyStore.open(registry, master)
    finally:
        master.wipe()


class Core:
    """One Core process: ``start`` brings it up, ``close`` takes it down cleanly."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.registry: Registry | None = None
        self.keys: CoreKeyStore | None = None
        self.ring = KeyRing()
        self.l3: EmbeddedL3Source | None = None
        self.service: CoreService | None = None
        self.server: UplinkServer | None = None

    async def start(self) -> None:
        cfg = self.config
        self.registry = await open_registry(cfg.registry)
        self.keys = await open_keystore(cfg, self.registry)
        for tenant in cfg.tenants:
            await self.keys.ensure_tenant(tenant)
        await self.keys.start_watching()
        # The Core seals registered material under the same L3 keys it hands out.
        self.l3 = EmbeddedL3Source(self.keys, cfg.tenants, cfg.l3_lease_seconds)
        await self.l3.start(self.ring)
        journal = UndoJournal(cfg.undo_journal_seconds, cfg.undo_journal_batches)
        services = CoreServices(
            registry=self.registry, sealer=KeyRingSealer(self.ring), journal=journal
        )
        self.service = CoreService(
            self.registry, self.keys, services, lease_seconds=cfg.l3_lease_seconds
        )
        await self.service.start()
        self.server = UplinkServer(
            self.service, cfg.tls, cfg.authorised_gateways(), cfg.listen_host, cfg.listen_port,
            rules=peer_rules(cfg.tls, Usage.CLIENT), audit=self.registry.append_audit,
        )
        port = await self.server.start()
        log.info("core %s: uplink on %s:%d", cfg.name, cfg.listen_host, port)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.service is not None:
            await self.service.close()
        if self.l3 is not None:
            await self.l3.close()
        if self.keys is not None:
            await self.keys.close()
        if self.registry is not None:
            await self.registry.close()
