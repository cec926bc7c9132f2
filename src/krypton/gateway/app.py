"""Wiring: a configured Gateway (vault, key ring, dispatcher, listener) and its lifecycle."""

from __future__ import annotations

import logging
import ssl

from krypton.config import GatewayConfig
from krypton.crypto.keyring import KeyRing, L3Source
from krypton.engine.dispatch import Dispatcher
from krypton.engine.objects import Services
from krypton.gateway.listener import Listener
from krypton.gateway.policy import Policy
from krypton.gateway.tls import server_context
from krypton.ttlv.codec import Limits
from krypton.vault.sqlite import Vault

log = logging.getLogger("krypton.gateway")


def limits_of(config: GatewayConfig) -> Limits:
    lim = config.limits
    return Limits(
        max_message_size=lim.max_message_size,
        max_depth=lim.max_depth,
        max_items=lim.max_items,
        max_batch_items=lim.max_batch_items,
    )


class Gateway:
    """One gateway process: ``start`` brings it up, ``close`` takes it down cleanly."""

    def __init__(
        self, config: GatewayConfig, l3_source: L3Source, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.config = config
        self.l3_source = l3_source
        self.ssl_context = ssl_context
        self.keyring = KeyRing()
        self.vault: Vault | None = None
        self.listener: Listener | None = None

    async def start(self) -> None:
        cfg = self.config
        policy = Policy.load(cfg.policy_file)
        ssl_ctx = self.ssl_context or server_context(cfg.tls)
        self.vault = Vault.open(cfg.vault_path, cache_size=cfg.cache.records)
        await self.l3_source.start(self.keyring)
        limits = limits_of(cfg)
        dispatcher = Dispatcher(Services(store=self.vault, keyring=self.keyring), limits)
        self.listener = Listener(
            dispatcher,
            policy,
            ssl_ctx,
            limits,
            max_connections=cfg.limits.max_connections,
            read_timeout=cfg.limits.read_timeout,
            idle_timeout=cfg.limits.idle_timeout,
            handshake_timeout=cfg.limits.handshake_timeout,
        )
        await self.listener.start(cfg.listen_host, cfg.listen_port, reuse_port=cfg.workers > 1)
        log.info("gateway %s: KMIP on %s:%d", cfg.name, cfg.listen_host, self.listener.port)

    @property
    def port(self) -> int:
        assert self.listener is not None
        return self.listener.port

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        await self.l3_source.close()
        if self.vault is not None:
            self.vault.close()
