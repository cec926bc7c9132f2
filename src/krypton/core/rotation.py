"""L3 rotation and revocation as an operator runs them: listed, guarded, fenced, audited.

How this works
--------------
:class:`~krypton.core.keystore.CoreKeyStore` changes L3 versions; this module
adds the rules an operator relies on (``krypton core rotate-l3 / revoke-l3 /
l3 list``):

* **List.** Every version of a tenant with its state and how many keys in the
  registry are still wrapped under it (:meth:`Registry.l3_usage`).
* **Guard.** Revoking a version that still wraps keys makes them unreadable
  for good, so it is refused unless ``force`` is given (the refusal changes
  nothing and is audited).
* **Rotate first, then fence.** Revoking the ACTIVE version first commits a
  new ACTIVE version (a rotation, audited as such), waits ``grace`` seconds
  while every connected gateway hears of it and moves its new keys to it
  (the Core pushes the change within milliseconds of seeing it), re-counts
  the keys under the old version (a gateway may have synced some meanwhile)
  and only then commits the revocation. From that commit on, a gateway that
  learns of it drops the version (no Create is acknowledged under it), and
  the Core refuses — and reports — any SyncKeys of a record wrapped under a
  version that is not ACTIVE or DEACTIVATED (:class:`SyncFence`).
* **Audit.** Every rotation, revocation and refused revocation is an audit
  record naming the operator (``operator``, e.g. ``os-user:alice``), the
  versions and the number of keys concerned.

* **Re-wrap.** A rotation asks for the background re-wrap of every object
  under an older version (:mod:`krypton.core.rewrap`, audited as the rotating
  operator); once it is done the old version holds no key and can be revoked
  without ``force``. A record a gateway syncs later under a DEACTIVATED
  version re-opens the tenant's finished job (``on_old_version``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from krypton.core import rewrap as rewrapping
from krypton.core.keystore import CoreKeyStore
from krypton.crypto.keyring import L3State
from krypton.errors import ItemNotFound, KryptonError, StorageError, WrongKeyLifecycleState
from krypton.model.registry import AuditRecord, ObjectRecord, Registry

log = logging.getLogger("krypton.core.keys")

DEFAULT_GRACE = 2.0  # seconds between the rotation and the revocation it precedes
_USABLE = frozenset({L3State.ACTIVE, L3State.DEACTIVATED})

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class L3Version:
    version: int
    state: L3State
    keys: int  # registry objects still wrapped under it


@dataclass(frozen=True, slots=True)
class Revocation:
    tenant: str
    version: int
    state: L3State
    keys: int  # wrapped under it when it was revoked (lost unless forced knowingly)
    rotated_to: int | None  # the new ACTIVE version made first, if it was active


async def list_l3(keys: CoreKeyStore, registry: Registry, tenant: str) -> list[L3Version]:
    states = await keys.l3_states(tenant)
    if not states:
        raise ItemNotFound(f"unknown tenant {tenant!r}")
    usage = await registry.l3_usage(tenant)
    return [L3Version(v, s, usage.get(v, 0)) for v, s in sorted(states.items())]


class SyncFence:
    """The Core's SyncKeys check: a record wrapped under an L3 version that is not
    ACTIVE or DEACTIVATED (revoked, destroyed, unknown) is refused — not stored,
    not acknowledged — and reported: logged and audited the first time this Core
    sees its uid (the gateway offers it again on every outbox drain)."""

    def __init__(self, keys: CoreKeyStore, registry: Registry, *, remember: int = 10_000,
                 on_old_version: Callable[[str], None] | None = None) -> None:
        self._keys = keys
        self._registry = registry
        self._on_old = on_old_version  # a tenant got records under a DEACTIVATED version
        self._remember = remember
        self._reported: OrderedDict[str, None] = OrderedDict()

    async def admit(self, gateway: str, records: Sequence[ObjectRecord]) -> list[ObjectRecord]:
        states: dict[str, dict[int, L3State]] = {}
        for tenant in {r.tenant for r in records}:
            states[tenant] = await self._keys.l3_states(tenant)
        admitted: list[ObjectRecord] = []
        refused: dict[tuple[str, int], list[str]] = {}
        old: set[str] = set()
        for rec in records:
            state = None if rec.l3_version is None else states[rec.tenant].get(rec.l3_version)
            if rec.l3_version is None or state in _USABLE:
                admitted.append(rec)
                if state == L3State.DEACTIVATED:
                    old.add(rec.tenant)
            elif rec.uid not in self._reported:
                refused.setdefault((rec.tenant, rec.l3_version), []).append(rec.uid)
        for (tenant, version), uids in sorted(refused.items()):
            state = states[tenant].get(version)
            why = (f"{len(uids)} record(s) wrapped under L3 version {version} "
                   f"({state.name if state is not None else 'unknown'}) refused: "
                   + ", ".join(uids[:20]) + (" ..." if len(uids) > 20 else ""))
            log.error("SyncKeys from %s, tenant %s: %s", gateway, tenant, why)
            await _Desk(self._registry, gateway, tenant, gateway).audit(
                "SyncKeys", WrongKeyLifecycleState.reason.name, why)
            for uid in uids:
                self._reported[uid] = None
        while len(self._reported) > self._remember:
            self._reported.popitem(last=False)
        for tenant in sorted(old):
            if self._on_old is not None:
                self._on_old(tenant)
        return admitted


async def rotate(keys: CoreKeyStore, registry: Registry, tenant: str, operator: str,
                 *, why: str = "", rewrap: bool = True) -> int:
    """A new ACTIVE version (the old one becomes DEACTIVATED), audited; unless
    ``rewrap`` is False, the background re-wrap of the objects under older
    versions is asked for on ``operator``'s behalf (:mod:`krypton.core.rewrap`)."""
    desk = _Desk(registry, operator, tenant)
    try:
        version = await keys.rotate_l3(tenant)
    except KryptonError as exc:
        await desk.audit("RotateL3", exc.reason.name, exc.message)
        raise
    await desk.audit("RotateL3", "Success",
                     f"version {version} active" + (f" ({why})" if why else ""))
    if rewrap:
        await rewrapping.request(keys, registry, tenant, operator)
    else:
        await rewrapping.stop(registry, tenant, operator, f"version {version} made active"
                              " without a re-wrap")
    return version


async def revoke(
    keys: CoreKeyStore,
    registry: Registry,
    tenant: str,
    version: int,
    operator: str,
    *,
    destroy: bool = False,
    force: bool = False,
    grace: float = DEFAULT_GRACE,
    sleep: Sleep = asyncio.sleep,
) -> Revocation:
    """Compromise (or destroy) one L3 version; see the module comment."""
    target = L3State.DESTROYED if destroy else L3State.COMPROMISED
    states = await keys.l3_states(tenant)
    if version not in states:
        raise ItemNotFound(f"tenant {tenant!r} has no L3 version {version}")
    desk = _Desk(registry, operator, tenant)
    await desk.guard(version, force=force)
    rotated = None
    if states[version] == L3State.ACTIVE:
        rotated = await rotate(keys, registry, tenant, operator,
                               why=f"before revoking version {version}")
        await sleep(grace)  # connected gateways move their new keys to the new version
        await desk.guard(version, force=force, note=f"; version {rotated} is now active")
    held = (await registry.l3_usage(tenant)).get(version, 0)
    try:
        await keys.set_l3_state(tenant, version, target)
    except KryptonError as exc:
        await desk.audit("RevokeL3", exc.reason.name, f"version {version}: {exc.message}")
        raise
    detail = f"version {version} {target.name}; {held} key(s) under it"
    if force and held:
        detail += " (forced: they can no longer be read)"
    await desk.audit("RevokeL3", "Success", detail)
    return Revocation(tenant, version, target, held, rotated)


@dataclass(frozen=True, slots=True)
class _Desk:
    """Who acts on which tenant's keys, and where that is written down."""

    registry: Registry
    operator: str
    tenant: str
    gateway: str | None = None

    async def guard(self, version: int, *, force: bool, note: str = "") -> None:
        held = (await self.registry.l3_usage(self.tenant)).get(version, 0)
        if held and not force:
            message = (f"L3 version {version} of tenant {self.tenant!r} still wraps {held} "
                       "key(s); revoking it makes them unreadable (give --force to do it "
                       "anyway)" + note)
            await self.audit("RevokeL3", WrongKeyLifecycleState.reason.name, message)
            raise WrongKeyLifecycleState(message)

    async def audit(self, operation: str, result: str, detail: str) -> None:
        try:
            await self.registry.append_audit(AuditRecord(
                time=time.time(), identity=self.operator, tenant=self.tenant,
                operation=operation, uid=None, result=result, gateway=self.gateway,
                detail=detail))
        except StorageError:
            log.error("audit record of %s by %s not written", operation, self.operator)
