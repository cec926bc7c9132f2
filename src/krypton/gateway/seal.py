"""The gateway seal: L3 versions kept in the vault, sealed, so a gateway
restarted while the Core is unreachable keeps serving until each lease ends.

How this works
--------------
``[gateway.seal] kind = "none"`` (the default) keeps L3 in memory only: a
gateway that restarts during a partition serves nothing until the Core is
back (said in the log at start-up). With ``pkcs11`` or ``openbao`` the seal
is a gateway-local :class:`~krypton.roots.RootSealer`:

* **Storing.** :class:`L3Seal` listens to the uplink beside the key ring's
  source (it gets a copy of each grant's material). Each usable L3 version the
  Core pushes is sealed and stored in the vault (its
  :class:`~krypton.vault.port.SealedL3Store`: the SQLite vault's ``sealed_l3``
  table, :mod:`krypton.vault.sealed_l3`, or secrets beside the OpenBao vault's
  records, :mod:`krypton.vault._bao_sealed`)
  with its state, the *absolute wall-clock* end of its lease (now + the lease,
  cut to ``gateway.uplink.max_lease``) and the wall-clock time it was stored.
  The seal's context binds all of them with the gateway's name, tenant and
  version (``"GWL3"|gateway|tenant|version|state|lease_end|stored_at``), so a
  row edited on disk does not open.
* **Dropping.** A version the Core revokes (COMPROMISED) or destroys, or that
  an L3 snapshot no longer lists, loses its sealed copy at once.
* **Restoring.** At start-up, before the uplink, every row is unsealed into the
  key ring with the lease it has left: ``lease_end - now`` on the wall clock,
  turned into a deadline on the ring's monotonic clock. A restart can
  therefore never extend a lease; a row whose lease has ended is deleted, and
  one stored at a wall-clock time later than now (the clock was set back) is
  refused, since its remaining lease cannot be trusted. When the Core comes
  back its snapshot replaces what was restored.

Events are handled one at a time, in the order the uplink delivered them, by
one task (a seal or unseal may wait on the token or on OpenBao). A failure to
seal or store is logged and does not touch the key ring: the L3 is served
from memory as without a seal; the next grant of that version tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from krypton.config import SealConfig
from krypton.crypto.keyring import KeyRing, L3Grant, L3State
from krypton.crypto.wrap import binding
from krypton.errors import KryptonError
from krypton.roots import RootSealer, kind_of, open_root
from krypton.uplink.client import UplinkClient
from krypton.uplink.types import L3Versions
from krypton.vault.port import SealedL3Store
from krypton.vault.sealed_l3 import SealedL3

log = logging.getLogger("krypton.gateway.seal")

_USABLE = frozenset({L3State.ACTIVE, L3State.DEACTIVATED})
CLOCK_SLACK = 1.0  # seconds a clock may be behind a row's stored_at (a few ms of jitter)


def seal_context(gateway: str, row: SealedL3) -> bytes:
    return binding("GWL3", gateway, row.tenant, str(row.version), str(int(row.state)),
                   repr(float(row.lease_end)), repr(float(row.stored_at)))


@dataclass(frozen=True, slots=True)
class _Grant:
    grant: L3Grant


@dataclass(frozen=True, slots=True)
class _Listed:
    listed: L3Versions


class L3Seal:
    """Sealed L3 copies in ``store`` (a vault's ``sealed_l3()``) under ``root``
    (see the module comment). Owns ``root`` (closed with it)."""

    def __init__(
        self,
        root: RootSealer,
        store: SealedL3Store,
        gateway: str,
        *,
        max_lease: float | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self._copies = store
        self._gateway = gateway
        self._max_lease = max_lease
        self._wall = wall
        self._queue: asyncio.Queue[_Grant | _Listed] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._remove: Callable[[], None] | None = None
        self.stored = 0  # rows written by this process
        self.dropped = 0

    # -- start-up ---------------------------------------------------------------------
    async def restore(self, ring: KeyRing) -> int:
        """Unseal every stored version whose lease holds into ``ring``; how many."""
        now = self._wall()
        restored = 0
        for row in await self._copies.rows():
            what = f"sealed L3 {row.tenant} v{row.version}"
            if now + CLOCK_SLACK < row.stored_at:
                log.error("%s: the clock (%.0f) is earlier than when it was stored (%.0f): "
                          "refused (its lease cannot be measured)", what, now, row.stored_at)
                continue
            if row.lease_end <= now:
                await self._copies.drop(row.tenant, [row.version])
                log.info("%s: its lease ended; dropped", what)
                continue
            if row.kind != self.root.kind:
                log.error("%s was sealed by a %s root, not by this gateway's %s seal: skipped",
                          what, row.kind, self.root.kind)
                continue
            try:
                material = await self.root.unseal(seal_context(self._gateway, row), row.sealed)
            except KryptonError as exc:
                log.error("%s: not restored: %s", what, exc.message)
                continue
            left = row.lease_end - now
            ring.install(row.tenant, row.version, material, L3State(row.state),
                         ring.lease_deadline(left))
            restored += 1
            log.info("%s restored from the vault (%s), lease ends in %.0f s", what,
                     L3State(row.state).name, left)
        return restored

    def attach(self, client: UplinkClient) -> None:
        """Follow the uplink from now on (attach before the client starts)."""
        self._remove = client.add_listener(on_l3=self.heard, on_versions=self.listed)
        self.start()

    def start(self) -> None:
        """Handle what is heard (``attach`` does this)."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="gateway-seal")

    async def close(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
        if self._worker is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.flush(), 5.0)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            event = self._queue.get_nowait()
            if isinstance(event, _Grant):
                event.grant.material.wipe()
        await self.root.close()

    async def flush(self) -> None:
        """Wait until every event heard so far is handled."""
        await self._queue.join()

    # -- events ------------------------------------------------------------------------
    def heard(self, grant: L3Grant) -> None:
        """An L3 version from the Core (this seal owns ``grant.material``)."""
        self._queue.put_nowait(_Grant(grant))

    def listed(self, listed: L3Versions) -> None:
        """The end of an L3 snapshot: versions it does not list lose their copies."""
        self._queue.put_nowait(_Listed(listed))

    async def _work(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                if isinstance(event, _Grant):
                    await self._store(event.grant)
                else:
                    await self._copies.keep_only(event.listed.tenant,
                                                sorted(event.listed.versions))
            except KryptonError as exc:
                log.warning("gateway seal: %s", exc.message)
            except Exception:
                log.exception("gateway seal: an event failed")
            finally:
                self._queue.task_done()

    async def _store(self, grant: L3Grant) -> None:
        with grant.material as material:
            state = L3State(grant.state)
            if state not in _USABLE:
                await self._copies.drop(grant.tenant, [grant.version])
                self.dropped += 1
                log.info("gateway seal: L3 %s v%d is %s: its sealed copy is dropped",
                         grant.tenant, grant.version, state.name)
                return
            lease = grant.lease_seconds
            if self._max_lease is not None:
                lease = min(lease, self._max_lease)
            now = self._wall()
            row = SealedL3(grant.tenant, grant.version, int(state), now + lease, now,
                           self.root.kind, b"")
            blob = await self.root.seal(seal_context(self._gateway, row), material)
            await self._copies.store(SealedL3(
                row.tenant, row.version, row.state, row.lease_end, row.stored_at,
                kind_of(blob), blob))
            self.stored += 1


async def open_seal(
    config: SealConfig, gateway: str, store: SealedL3Store, *,
    max_lease: float | None = None,
) -> L3Seal | None:
    """The configured seal, reached and checked (None for ``kind = "none"``)."""
    if config.kind == "none":
        log.info("gateway seal: none: L3 keys are held in memory only; a gateway restarted "
                 "while the Krypton Core is unreachable serves nothing until it is back "
                 "([gateway.seal] keeps them sealed in the vault)")
        return None
    # A PKCS#11 seal key is made in the token on first use (there is no gateway
    # init); an OpenBao Transit key must exist (the operator makes it, derived).
    root = await open_root(config, setting="gateway.seal", create=True)
    try:
        await root.check()
    except BaseException:
        await root.close()
        raise
    seal = L3Seal(root, store, gateway, max_lease=max_lease)
    log.info("gateway seal: L3 keys are kept in the vault sealed by the %s", root.describe())
    return seal
