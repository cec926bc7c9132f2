"""Wiring: a configured Gateway (vault, key ring, uplink, dispatcher, listener).

Besides start and close, what an operator does to a running gateway: ``reload``
(SIGHUP: the TLS material and the policy file), ``drain`` (SIGTERM: stop
accepting, answer what is in flight, flush the outbox while the Core is up),
and ``certificate_expiry`` (for readiness). The TLS material is watched all the
time (:mod:`krypton.tls.reload`): the KMIP listener and the uplink both take a
new certificate, key or trust bundle for their next handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Final

from krypton.admin.checks import Check
from krypton.admin.peers import WorkerSlot
from krypton.admin.server import AdminServer
from krypton.config import GatewayConfig
from krypton.crypto.keyring import KeyRing
from krypton.engine.ciphers import Streams
from krypton.errors import ConfigError, KryptonError
from krypton.gateway._admin import GatewaySource
from krypton.gateway._admission import Shares
from krypton.gateway._memory import auto_cache_bytes, available_memory
from krypton.gateway.engine.dispatch import Dispatcher
from krypton.gateway.engine.pacing import Collector, Gate
from krypton.gateway.engine.services import Services
from krypton.gateway.listener import Listener
from krypton.gateway.policy import Policy
from krypton.gateway.rewrap import VaultRewrapper
from krypton.gateway.seal import L3Seal, open_seal
from krypton.gateway.upstream import Upstream
from krypton.gateway.workers import DrainOwner
from krypton.metrics.meter import KmipMeter
from krypton.tls.contexts import listener_rules, server_context
from krypton.tls.material import Material
from krypton.tls.reload import Commit, FileSource, Reloader, Source
from krypton.tls.workload import WorkloadSource
from krypton.ttlv.codec import Limits
from krypton.uplink.client import UplinkClient, UplinkL3Source
from krypton.vault.auth import Sealer
from krypton.vault.openbao import BaoVault
from krypton.vault.port import VaultStore
from krypton.vault.sqlite import Vault

log = logging.getLogger("krypton.gateway")

DRAIN_FLUSH_MAX = 5.0  # seconds a draining gateway spends flushing its outbox at most


def tls_source(config: GatewayConfig) -> Source:
    """Where the gateway's TLS material comes from (``gateway.tls.source``)."""
    tls = config.tls
    if tls.source == "spiffe":
        return WorkloadSource(tls.spiffe_socket, timeout=tls.spiffe_timeout)
    return FileSource(tls, "gateway.tls")


def limits_of(config: GatewayConfig) -> Limits:
    lim = config.limits
    return Limits(
        max_message_size=lim.max_message_size,
        max_depth=lim.max_depth,
        max_items=lim.max_items,
        max_batch_items=lim.max_batch_items,
    )


def cache_bytes(cfg: GatewayConfig) -> int:
    """The record cache's bound in bytes: the setting, or its "auto" share."""
    if cfg.cache.bytes is not None:
        return cfg.cache.bytes
    return auto_cache_bytes(cfg.workers, available_memory())


def _sqlite_vault(cfg: GatewayConfig, sealer: Sealer) -> VaultStore:
    """The SQLite vault; a folder that is not there is a configuration error naming the setting."""
    folder = cfg.vault_path.parent
    if not folder.is_dir():
        raise ConfigError(f"gateway.vault_path: the folder {folder} does not exist "
                          f"(the vault file {cfg.vault_path.name} is made in it)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"gateway.vault_path: the folder {folder} is not writable by this "
                          "process (the vault and its -wal and -shm files are made in it)")
    return Vault.open(cfg.vault_path, cache_size=cfg.cache.records,
                      cache_bytes=cache_bytes(cfg), sealer=sealer)  # fmt: skip


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
        cache_size=cfg.cache.records, cache_bytes=cache_bytes(cfg), sealer=sealer,
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

    Its admin endpoint (``gateway.admin``) comes up first, so ``/healthz``
    answers and ``/readyz`` says what is missing while the rest starts;
    ``worker`` makes it one of several worker processes answering together
    (:mod:`krypton.admin.peers`). ``checks`` is what ``/readyz`` runs: a part
    that can make the gateway unable to serve appends its own
    (:class:`krypton.admin.checks.Check`); ``tls.failures`` counts TLS
    material refused (``krypton_tls_reload_failures_total``).
    """

    def __init__(
        self,
        config: GatewayConfig,
        ssl_context: ssl.SSLContext | None = None,
        *,
        core_address: str | None = None,
        worker: WorkerSlot | None = None,
    ) -> None:
        if core_address is not None:
            config = dataclasses.replace(
                config, uplink=dataclasses.replace(config.uplink, core_address=core_address)
            )
        self.config = config
        self.ssl_context = ssl_context
        # the workers share one vault: one of them at a time drains its outbox
        self.drain_owner = None if worker is None else DrainOwner(worker.folder)
        self.keyring = KeyRing()
        self.vault: VaultStore | None = None
        self.client: UplinkClient | None = None
        self.l3_source: UplinkL3Source | None = None
        self.upstream: Upstream | None = None
        self.rewrapper: VaultRewrapper | None = None
        self.listener: Listener | None = None
        # The TLS material, watched; ``tls.failures`` counts material refused, and
        # ``tls.on_failure`` (set before start) is told each time.
        self.tls = Reloader(tls_source(config), interval=config.tls.reload_interval)
        self._tls_tasks: list[asyncio.Task[None]] = []

        self.policy: Policy | None = None
        # Counting KMIP requests costs the hot path a little: only when they are shown.
        self.meter = KmipMeter() if config.admin.listen else None
        self.admin: AdminServer | None = None
        self.checks: list[Check] = []
        if self.meter is not None:
            source = GatewaySource(self, self.meter, None if worker is None else worker.index)
            self.checks += source.default_checks()
            self.admin = AdminServer(config.admin, source, setting="gateway.admin", slot=worker)
        self.seal: L3Seal | None = None

    async def start(self) -> None:
        cfg = self.config
        if self.admin is not None:
            self.admin.start()
        self.policy = policy = Policy.load(cfg.policy_file)
        source = self.tls.source
        if isinstance(source, WorkloadSource):
            await source.start()
        material = self.tls.load_first()
        ssl_ctx = self.ssl_context or server_context(cfg.tls, material=material)
        limits = limits_of(cfg)
        lim = cfg.limits
        self.vault = VAULTS[cfg.vault.backend](cfg, self.keyring.record_mac)
        # The seal first: what it restores serves while the Core is unreachable.
        self.seal = await open_seal(cfg.seal, cfg.name, self.vault.sealed_l3(),
                                    max_lease=cfg.uplink.max_lease)
        if self.seal is not None:
            await self.seal.restore(self.keyring)
        self.client = UplinkClient.from_config(cfg, sorted(policy.tenants), material)
        self.upstream = Upstream(self.client, self.vault, limits, ring=self.keyring,
                                 owner=self.drain_owner)
        await self.upstream.start()
        if self.seal is not None:
            self.seal.attach(self.client)
        self.l3_source = UplinkL3Source(self.client, max_lease=cfg.uplink.max_lease)
        await self.l3_source.start(self.keyring)
        await self.vault.seal_legacy()  # records from before they were authenticated
        # records under an older L3 version move to the active one (after a rotation)
        self.rewrapper = VaultRewrapper(self.vault, self.keyring, sorted(policy.tenants))
        await self.rewrapper.start()
        services = Services(
            store=self.vault,
            keyring=self.keyring,
            upstream=self.upstream,
            interop=cfg.interop,
            streams=Streams(
                limit=lim.max_streams,
                per_tenant=lim.max_streams_per_tenant,
                per_identity=lim.max_streams_per_identity,
            ),
        )
        self.listener = Listener(
            Dispatcher(
                services,
                limits,
                max_response_size=cfg.limits.max_response_size,
                max_rng_bytes=cfg.limits.max_rng_bytes,
                meter=self.meter,
                gate=Gate(
                    lim.max_large_messages,
                    lim.max_large_messages_per_tenant,
                    collector=Collector(),
                ),
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
            refuse_grace=cfg.limits.refuse_grace,
        )
        try:
            await self.listener.start(cfg.listen_host, cfg.listen_port,
                                      reuse_port=cfg.workers > 1)
        except OSError as exc:
            raise ConfigError(
                f"gateway.listen_port: cannot listen on {cfg.listen_host}:{cfg.listen_port} "
                f"({exc.strerror or exc}; see also gateway.listen_host)"
            ) from None
        if cfg.cache.warm:  # the cache fills in the background; requests do not wait
            self.vault.warm()
        self.tls.subscribe(self._new_listener_context)
        self.tls.subscribe(self._new_uplink_material)
        self._tls_tasks.append(asyncio.create_task(self.tls.run(), name="tls-reload"))
        if isinstance(source, WorkloadSource):
            self._tls_tasks.append(asyncio.create_task(
                source.run(cfg.tls.reload_interval), name="spiffe-source"))
        Collector.freeze()  # what start-up made is never walked by a collection again
        log.info("gateway %s: KMIP on %s:%d", cfg.name, cfg.listen_host, self.listener.port)

    # -- operating a running gateway -----------------------------------------------------
    def _new_listener_context(self, material: Material) -> Commit:
        listener = self.listener
        assert listener is not None
        ctx = server_context(self.config.tls, material=material,
                             rules=listener_rules(listener.ssl_context))

        def commit() -> None:
            listener.ssl_context = ctx  # the next handshake's; open ones keep theirs

        return commit

    def _new_uplink_material(self, material: Material) -> Commit:
        client = self.client
        assert client is not None
        return lambda: client.rotate_tls(material)

    def certificate_expiry(self) -> float:
        """When the gateway's own certificate expires (seconds since the epoch)."""
        return self.tls.certificate_expiry()

    def reload(self) -> None:
        """SIGHUP: look at the TLS material now, and read the policy file again."""
        self.tls.request()
        self.reload_policy()

    def reload_policy(self) -> bool:
        """Read the policy file again; a bad one leaves the current policy in use
        (and says why). New connections are judged by the new policy."""
        listener = self.listener
        if listener is None:
            return False
        path = self.config.policy_file
        try:
            policy = Policy.load(path)
        except ConfigError as e:
            log.error("policy %s not reloaded, the current one stays in use: %s", path, str(e))
            return False
        added = sorted(policy.tenants - listener.policy.tenants)
        if added:
            log.warning("policy %s: tenant(s) %s are new: their keys come from the Core after a"
                        " restart", path, ", ".join(added))
        listener.policy = policy
        self.policy = policy
        log.info("policy %s reloaded: %d rule(s)", path, len(policy.rules))
        return True

    async def drain(self, timeout: float | None = None) -> None:
        """SIGTERM: stop accepting, answer the requests in flight (for at most
        ``timeout`` seconds, default ``gateway.drain_timeout``), and send the outbox
        to the Core if it is up. ``close`` follows."""
        if timeout is None:
            timeout = self.config.drain_timeout
        if self.listener is not None:
            late = await self.listener.drain(timeout)
            if late:
                log.warning("drain: %d connection(s) still had a request after %.1f s",
                            late, timeout)
        upstream = self.upstream
        if upstream is None or not upstream.ready:
            return
        try:
            async with asyncio.timeout(DRAIN_FLUSH_MAX):
                await upstream.flush()
        except (KryptonError, TimeoutError) as e:
            log.warning("drain: outbox not flushed: %s", getattr(e, "message", "") or "timed out")

    @property
    def port(self) -> int:
        assert self.listener is not None
        return self.listener.port

    @property
    def admin_port(self) -> int | None:
        """The admin endpoint's port (None when it is off)."""
        return self.admin.port if self.admin is not None else None

    async def close(self) -> None:
        for task in self._tls_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tls_tasks.clear()
        if isinstance(self.tls.source, WorkloadSource):
            self.tls.source.close()
        if self.admin is not None:
            await asyncio.to_thread(self.admin.close)
        if self.listener is not None:
            await self.listener.close()
        if self.rewrapper is not None:
            await self.rewrapper.close()
        if self.upstream is not None:
            await self.upstream.close()
        if self.l3_source is not None:
            await self.l3_source.close()
        if self.seal is not None:
            await self.seal.close()
        if self.client is not None:
            await self.client.close()
        if self.vault is not None:
            self.vault.close()
