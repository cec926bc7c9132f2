"""The embedded development stack: a Core and a Gateway in one process.

They talk exactly as they do apart: the Core serves its uplink (real gRPC,
real mutual TLS) on the configured port, and the Gateway connects to it over
loopback — only the address is taken from the Core once it has bound (so a
port of 0 works for tests). ``krypton dev --workers N`` instead runs the Core
in one process and N gateway processes beside it (see ``krypton.cli.main``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import ssl
from pathlib import Path

from krypton.config import CoreConfig, GatewayConfig
from krypton.core.app import Core, initialise
from krypton.gateway.app import Gateway
from krypton.openbao.server import RaftServer

log = logging.getLogger("krypton.dev")


async def ensure_tenants(core: CoreConfig) -> None:
    """The development stack initialises itself (``krypton core init``: master
    key file, key hierarchy, every configured tenant's L2 and first L3;
    idempotent). A production Core never does: it refuses to start without."""
    await initialise(core)


def prepare_tenants(core: CoreConfig) -> None:
    """:func:`ensure_tenants` before processes start (no race between them).
    Runs its own event loop: call it where no loop is running."""
    asyncio.run(ensure_tenants(core))


def openbao_vault(folder: Path, secrets: Path, gateway: GatewayConfig
                  ) -> tuple[GatewayConfig, RaftServer]:  # fmt: skip
    """``krypton dev --vault openbao``: an OpenBao server with Raft storage in
    ``folder`` (initialised on first use, its unseal key and root token in
    ``secrets`` beside the dev PKI, unsealed on every start), and ``gateway``
    pointed at it. The root token reaches the gateway through its token
    variable in this process's environment — development only."""
    server = RaftServer(folder, secrets, mount=gateway.vault.mount)
    server.start()
    os.environ[gateway.vault.token_env] = server.root_token
    vault = dataclasses.replace(gateway.vault, backend="openbao", address=server.address)
    log.info("dev: the gateway vault is on OpenBao at %s (Raft storage in %s)",
             server.address, folder)  # fmt: skip
    return dataclasses.replace(gateway, vault=vault), server


class EmbeddedStack:
    """A Core and a Gateway in one process, joined by the real uplink."""

    def __init__(
        self, core: CoreConfig, gateway: GatewayConfig, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.core = Core(core)
        self.gateway_config = gateway
        self.ssl_context = ssl_context
        self.gateway: Gateway | None = None

    async def start(self) -> None:
        try:
            await ensure_tenants(self.core.config)
            await self.core.start()
            address = f"{self.core.config.listen_host}:{self.core.port}"
            self.gateway = Gateway(self.gateway_config, self.ssl_context, core_address=address)
            await self.gateway.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.close()
            raise

    @property
    def port(self) -> int:
        assert self.gateway is not None
        return self.gateway.port

    def reload(self) -> None:
        """SIGHUP: both reload their TLS material (and the gateway its policy)."""
        self.core.reload()
        if self.gateway is not None:
            self.gateway.reload()

    async def drain(self) -> None:
        """SIGTERM: the gateway drains first (its outbox reaches the Core) and closes,
        then the Core drains (so the gateway does not see its own Core go, and
        warn that its uplink is down, at every Ctrl-C)."""
        gateway, self.gateway = self.gateway, None
        if gateway is not None:
            try:
                await gateway.drain()
            finally:
                await gateway.close()
        await self.core.drain()

    async def close(self) -> None:
        try:
            if self.gateway is not None:
                await self.gateway.close()
        finally:
            await self.core.close()
