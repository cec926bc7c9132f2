"""Wiring: a configured Krypton Core (root of trust, registry, key store, engine,
uplink server).

A running Core watches its TLS files (:mod:`krypton.tls.reload`) and gives a new
certificate, key or trust bundle to its gRPC server for the next handshake;
``reload`` (SIGHUP) looks at them at once, ``drain`` (SIGTERM) stops accepting
and lets the calls in flight finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import cast

from krypton.admin.checks import Check
from krypton.admin.server import AdminServer
from krypton.config import CoreConfig, RootConfig
from krypton.core._admin import CoreSource, MeteredRegistry
from krypton.core.embedded import EmbeddedL3Source
from krypton.core.engine.journal import UndoJournal
from krypton.core.engine.objects import CoreServices, KeyRingSealer
from krypton.core.keystore import (
    MASTER_KEY_ENV,
    CoreKeyStore,
    MasterKeyFileMissing,
    NotInitialised,
    load_master_key,
)
from krypton.core.records import AuthenticatedRegistry, seal_legacy
from krypton.core.rewrap import Rewrapper
from krypton.core.service import CoreService
from krypton.crypto.keyring import KeyRing
from krypton.crypto.secret import SecretBytes
from krypton.metrics.meter import CONTROL_BUCKETS, KmipMeter
from krypton.model import Registry
from krypton.registry import open_registry
from krypton.roots import RootHealth, RootSealer, open_root
from krypton.tls.contexts import peer_rules
from krypton.tls.identity import Usage
from krypton.tls.material import Material
from krypton.tls.reload import Commit, FileSource, Reloader
from krypton.uplink.service import UplinkServer

log = logging.getLogger("krypton.core")


def init_hint(source: str | Path | None) -> str:
    return f"krypton core --config {source or '<core.toml>'} init"


def check_registry_exists(config: CoreConfig, source: str | Path | None = None) -> None:
    """A ``sqlite:`` registry file that does not exist is a typo until ``init``
    says otherwise: refuse before opening it would create an empty file."""
    path = config.sqlite_path
    if path is not None and not path.exists():
        raise NotInitialised(
            f"core.registry points to {config.registry}, which does not exist: a typo? "
            f"To make a new key hierarchy there, run `{init_hint(source)}`"
        )


async def open_core_root(
    config: CoreConfig, root: RootConfig | None = None, *, create: bool = False,
    source: str | Path | None = None, key_file: Path | None = None,
    setting: str = "core.root",
) -> RootSealer:
    """The Core's root of trust (``root``, by default ``core.root``), reached and
    checked. A ``file`` root's key is ``root.key_file``, else ``key_file``, else
    ``core.master_key_file`` (or ``$KRYPTON_CORE_MASTER_KEY``). Without ``create``
    (every command but ``init``) the key file or the token's key must exist."""
    root = config.root if root is None else root
    path = root.key_file or key_file or config.master_key_file
    named = "core.master_key_file" if root.key_file is None else f"{setting}.key_file"

    def file_key() -> SecretBytes:
        try:
            return load_master_key(path, create=create)
        except MasterKeyFileMissing:
            raise MasterKeyFileMissing(
                f"{named} points to {path}, which does not exist"
                f" (and {MASTER_KEY_ENV} is not set). A Core never makes a new master key by"
                f" itself: fix the setting, or run `{init_hint(source)}` for a new hierarchy"
            ) from None

    sealer = await open_root(root, setting=setting, create=create, file_key=file_key)
    try:
        await sealer.check()  # a root that refuses to seal says so now, not mid-way
    except BaseException:
        await sealer.close()
        raise
    return sealer


async def open_keystore(
    config: CoreConfig, registry: Registry, *, create: bool = False,
    source: str | Path | None = None,
) -> CoreKeyStore:
    """The key store of a configured Core. Without ``create`` (every command but
    ``init``) the root's key and the key hierarchy must exist; the error says
    which setting points where. A root that cannot be reached stops here, before
    anything is written to the registry."""
    root = await open_core_root(config, create=create, source=source)
    try:
        return await CoreKeyStore.open(registry, root, create=create)
    except NotInitialised:
        raise NotInitialised(
            f"core.registry points to {config.registry}, which holds no key hierarchy: a typo?"
            f" To make one there, run `{init_hint(source)}`"
        ) from None


async def initialise(config: CoreConfig) -> list[str]:
    """``krypton core init``: the master key file (unless the key comes from
    ``$KRYPTON_CORE_MASTER_KEY``), the key hierarchy's root in the registry, and
    every configured tenant's L2 and first L3. Idempotent; returns the tenants.
    The root is reached first: a root that cannot serve leaves no registry behind."""
    root = await open_core_root(config, create=True)
    try:
        registry = await open_registry(config.registry)
    except BaseException:
        await root.close()
        raise
    try:
        store = await CoreKeyStore.open(registry, root, create=True)
        try:
            for tenant in config.tenants:
                await store.ensure_tenant(tenant)
            return await store.tenants()
        finally:
            await store.close()
    finally:
        await registry.close()


class Core:
    """One Core process: ``start`` brings it up, ``close`` takes it down cleanly.

    Its admin endpoint (``core.admin``) comes up first; ``checks`` is what
    ``/readyz`` runs (a part that can make the Core unable to serve appends its
    own :class:`krypton.admin.checks.Check`), ``counters`` holds rare events
    for the metrics (``tls_reload_failures``)."""

    def __init__(self, config: CoreConfig, *, source: str | Path | None = None) -> None:
        self.config = config
        self.source = source  # the configuration file, named in errors
        self.registry: Registry | None = None
        self.metered: MeteredRegistry | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.meter = KmipMeter(CONTROL_BUCKETS)
        self.checks: list[Check] = []
        self.admin: AdminServer | None = None
        if config.admin.listen:
            view = CoreSource(self)
            self.checks += view.default_checks()
            self.admin = AdminServer(config.admin, view, setting="core.admin")
        self.keys: CoreKeyStore | None = None
        self.ring = KeyRing()
        self.l3: EmbeddedL3Source | None = None
        self.service: CoreService | None = None
        self.server: UplinkServer | None = None
        # The TLS material, watched; ``tls.failures`` counts material refused, and
        # ``tls.on_failure`` (set before start) is told each time.
        self.tls = Reloader(FileSource(config.tls, "core.tls"),
                            interval=config.tls.reload_interval)
        self._tls_task: asyncio.Task[None] | None = None
        self.rewrapper: Rewrapper | None = None

    async def start(self) -> None:
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        if self.admin is not None:
            self.admin.start()
        check_registry_exists(cfg, self.source)
        self.metered = MeteredRegistry(
            await open_registry(cfg.registry, feed_retention=cfg.feed_retention))
        self.registry = cast(Registry, self.metered)
        self.keys = await open_keystore(cfg, self.registry, source=self.source)
        log.info("core %s: root of trust: %s", cfg.name, self.keys.root.describe())
        for tenant in cfg.tenants:
            await self.keys.ensure_tenant(tenant)
        await self.keys.start_watching()
        # The Core seals registered material under the same L3 keys it hands out.
        self.l3 = EmbeddedL3Source(self.keys, cfg.tenants, cfg.l3_lease_seconds)
        await self.l3.start(self.ring)
        # Objects carry record MACs under the same L3 keys (krypton.core.records):
        # rows from before them are sealed now, and the engine sees only the wrapper.
        await seal_legacy(self.registry, self.ring.record_mac)
        objects = AuthenticatedRegistry(self.registry, self.ring.record_mac)
        journal = UndoJournal(cfg.undo_journal_seconds, cfg.undo_journal_batches)
        services = CoreServices(
            registry=objects, sealer=KeyRingSealer(self.ring), journal=journal
        )
        # Objects left under older L3 versions move to the active one (krypton.core.rewrap).
        self.rewrapper = Rewrapper(objects, self.keys, self.ring, batch=cfg.rewrap_batch,
                                   interval=cfg.rewrap_interval, pause=cfg.rewrap_pause)
        self.service = CoreService(
            objects, self.keys, services, lease_seconds=cfg.l3_lease_seconds,
            mac_key=self.ring.record_mac, meter=self.meter,
            on_old_version=self.rewrapper.reopen,
        )  # fmt: skip
        await self.service.start()
        await self.rewrapper.start()
        material = self.tls.load_first()
        self.server = UplinkServer(
            self.service, cfg.tls, cfg.authorised_gateways(), cfg.listen_host, cfg.listen_port,
            rules=peer_rules(cfg.tls, Usage.CLIENT), audit=self.registry.append_audit,
            material=material,
        )
        port = await self.server.start()
        self.tls.subscribe(self._new_material)
        self._tls_task = asyncio.create_task(self.tls.run(), name="tls-reload")
        log.info("core %s: uplink on %s:%d", cfg.name, cfg.listen_host, port)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def admin_port(self) -> int | None:
        """The admin endpoint's port (None when it is off)."""
        return self.admin.port if self.admin is not None else None

    def _new_material(self, material: Material) -> Commit:
        server = self.server
        assert server is not None
        return lambda: server.rotate(material)

    def certificate_expiry(self) -> float:
        """When the Core's own certificate expires (seconds since the epoch)."""
        return self.tls.certificate_expiry()

    def reload(self) -> None:
        """SIGHUP: look at the TLS files now."""
        self.tls.request()

    async def drain(self, timeout: float | None = None) -> None:
        """SIGTERM: stop accepting, end the Subscribe streams, let the calls in flight
        finish (at most ``timeout`` seconds, default ``core.drain_timeout``)."""
        if self.server is not None:
            await self.server.drain(self.config.drain_timeout if timeout is None else timeout)
    async def root_health(self, timeout: float = 5.0) -> RootHealth:
        """Whether the root of trust answers now (for /readyz and metrics). The
        tenants' L2 keys opened at start-up stay in memory and keep serving while
        it does not; a tenant first needed while it does not fails."""
        assert self.keys is not None, "the Core is not started"
        return await self.keys.root_health(timeout)

    async def close(self) -> None:
        if self._tls_task is not None:
            self._tls_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tls_task
            self._tls_task = None
        if self.admin is not None:
            await asyncio.to_thread(self.admin.close)
        if self.rewrapper is not None:
            await self.rewrapper.close()
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
