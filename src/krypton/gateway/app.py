"""Wiring: a configured Gateway (vault, key ring, uplink, dispatcher, listener)."""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Final

from krypton.config import GatewayConfig
from krypton.crypto.keyring import KeyRing
from krypton.engine.ciphers import STREAMS
from krypton.errors import ConfigError
from krypton.gateway._admission import Shares
from krypton.gateway.engine.dispatch import Dispatcher
from krypton.gateway.engine.services import Services
from krypton.gateway.listener import Listener
from krypton.gateway.policy import Policy
from krypton.gateway.upstream import Upstream
from krypton.tls.contexts import server_context
from krypton.ttlv.codec import Limits
from krypton.uplink.client import UplinkClient, UplinkL3Source
from krypton.vault.auth import Sealer
from krypton.vault.openbao import BaoVault
from krypton.vault.port import VaultStore
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


def _sqlite_vault(cfg: GatewayConfig, sealer: Sealer) -> VaultStore:
    return Vault.open(cfg.vault_path, cache_size=cfg.cache.records, sealer=sealer)


def _openbao_vault(cfg: GatewayConfig, sealer: Sealer) -> VaultStore:
    v = cfg.vault
    token = os.environ.get(v.token_env) or None
    role_id = None if token else os.environ.get(v.role_id_env) or None
    secret_id = None if token else os.environ.get(v.secret_id_env) or None
    if token is None and not (role_id and secret_id):
        raise ConfigError(
            f"gateway.vault: backend 'openbao' needs a token in ${v.token_env} or an AppRole"
            f" in ${v.role_id_env} and ${v.secret_id_env}"
        )
    return BaoVault.open(
        v.address, mount=v.mount, prefix=v.prefix, token=token, role_id=role_id,
        secret_id=secret_id, ca=v.ca, connections=v.connections,
        cache_size=cfg.cache.records, sealer=sealer,
    )  # fmt: skip


# gateway.vault.backend -> how to open it
VAULTS: Final[Mapping[str, Callable[[GatewayConfig, Sealer], VaultStore]]] = {
    "sqlite": _sqlite_vault,
    "openbao": _openbao_vault,
}


class Gateway:
    """One gateway process: ``start`` brings it up, ``close`` takes it down cleanly.

    Its L3 keys come from the Core over the uplink (``core_address`` may be
    given to override the configured one, as the embedded dev stack does once
    its Core has bound a port).
    """

    def __init__(
        self,
        config: GatewayConfig,
        ssl_context: ssl.SSLContext | None = None,
        *,
        core_address: str | None = None,
    ) -> None:
        if core_address is not None:
            config = dataclasses.replace(
                config, uplink=dataclasses.replace(config.uplink, core_address=core_address)
            )
        self.config = config
        self.ssl_context = ssl_context
        self.keyring = KeyRing()
        self.vault: VaultStore | None = None
        self.client: UplinkClient | None = None
        self.l3_source: UplinkL3Source | None = None
        self.upstream: Upstream | None = None
        self.listener: Listener | None = None

    async def start(self) -> None:
        cfg = self.config
        policy = Policy.load(cfg.policy_file)
        ssl_ctx = self.ssl_context or server_context(cfg.tls)
        limits = limits_of(cfg)
        lim = cfg.limits
        STREAMS.configure(
            lim.max_streams, lim.max_streams_per_tenant, lim.max_streams_per_identity
        )
        self.vault = VAULTS[cfg.vault.backend](cfg, self.keyring.record_mac)
        self.client = UplinkClient.from_config(cfg, sorted(policy.tenants))
        self.upstream = Upstream(self.client, self.vault, limits)
        await self.upstream.start()
        self.l3_source = UplinkL3Source(self.client, max_lease=cfg.uplink.max_lease)
        await self.l3_source.start(self.keyring)
        await self.vault.seal_legacy()  # records from before they were authenticated
        services = Services(
            store=self.vault, keyring=self.keyring, upstream=self.upstream, interop=cfg.interop
        )
        self.listener = Listener(
            Dispatcher(
                services,
                limits,
                max_response_size=cfg.limits.max_response_size,
                max_rng_bytes=cfg.limits.max_rng_bytes,
            ),
            policy,
            ssl_ctx,
            limits,
            max_connections=cfg.limits.max_connections,
            descriptor_reserve=cfg.limits.descriptor_reserve,
            max_pending_bytes=cfg.limits.max_pending_bytes,
            shares=Shares(
                connections=lim.max_connections_per_tenant,
                connections_per_identity=lim.max_connections_per_identity,
                pending_bytes=lim.max_pending_bytes_per_tenant,
                pending_bytes_per_identity=lim.max_pending_bytes_per_identity,
            ),
            receive_buffer=cfg.limits.receive_buffer,
            read_timeout=cfg.limits.read_timeout,
            idle_timeout=cfg.limits.idle_timeout,
            handshake_timeout=cfg.limits.handshake_timeout,
            write_timeout=cfg.limits.write_timeout,
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
        if self.upstream is not None:
            await self.upstream.close()
        if self.l3_source is not None:
            await self.l3_source.close()
        if self.client is not None:
            await self.client.close()
        if self.vault is not None:
            self.vault.close()
