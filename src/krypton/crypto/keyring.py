"""The gateway's L3 key ring: per tenant, the service-key versions it holds in
memory, each with a state and a lease.

How this works
--------------
One ACTIVE version per tenant wraps new L4 keys (the highest-numbered ACTIVE
one, should a source briefly push two); DEACTIVATED versions only unwrap. A
version that becomes COMPROMISED or DESTROYED is removed and its bytes
overwritten at once, so every L4 under it is unreadable here from then on.

Leases are deadlines on the ring's clock, ``time.monotonic`` by default: a
lease is a duration the Core grants at delivery time, and a monotonic clock
can neither stretch nor cut it when the wall clock is stepped (NTP, a VM
resume). Sources turn the Core's lease seconds into a deadline with
:meth:`KeyRing.lease_deadline`. Past the deadline the tenant's hot path fails
closed with :class:`~krypton.errors.KeyUnavailable`; :meth:`KeyRing.expire`
also wipes expired versions when the owner calls it.

Concurrency: the asyncio loop reads (wrap, unwrap) without a lock; a source
thread writes. Each tenant's versions are an immutable snapshot
(:class:`_TenantView`); a writer builds a new one under ``_lock`` (writers
only) and publishes it with one dict assignment, which readers see whole or
not at all. A key wiped while a reader still holds the old snapshot either
completes its wrap (the ``AESGCM`` object keeps its own key copy) or raises
``KeyUnavailable``; it never wraps under zeros.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Protocol

from krypton.crypto.secret import SecretBytes
from krypton.crypto.wrap import WrappingKey, unwrap, wrap
from krypton.errors import CryptographicFailure, KeyUnavailable

ROTATE_AFTER = 2**30


class L3State(IntEnum):
    ACTIVE = 1
    DEACTIVATED = 2
    COMPROMISED = 3
    DESTROYED = 4


_DROPPED = frozenset({L3State.COMPROMISED, L3State.DESTROYED})


@dataclass(frozen=True, slots=True)
class L3Grant:
    """One L3 version as a source delivers it. The ring takes ownership of
    ``material`` (it wipes it when the version goes)."""

    tenant: str
    version: int
    material: SecretBytes
    state: L3State
    lease_seconds: float


class L3Source(Protocol):
    """Where L3 versions come from (the uplink, or the embedded Core)."""

    async def start(self, ring: KeyRing) -> None:
        """Install the current grants into ``ring`` and keep it up to date."""

    async def close(self) -> None:
        """Stop pushing into the ring."""


@dataclass(frozen=True, slots=True)
class _Version:
    key: WrappingKey
    state: L3State
    expires_at: float


@dataclass(frozen=True, slots=True)
class _TenantView:
    versions: Mapping[int, _Version]
    active: _Version | None

    @classmethod
    def of(cls, versions: dict[int, _Version]) -> _TenantView:
        live = [v for v in versions.values() if v.state == L3State.ACTIVE]
        active = max(live, key=lambda v: v.key.key_id) if live else None
        return cls(versions, active)


def _lease_expired(tenant: str) -> KeyUnavailable:
    return KeyUnavailable(
        f"the service key (L3) lease of tenant {tenant!r} has expired at this gateway "
        "and the Krypton Core has not renewed it"
    )


class KeyRing:
    """Per-tenant L3 versions with leases; wraps and unwraps L4 keys."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rotate_after: int = ROTATE_AFTER,
        on_rotation_due: Callable[[str, int], None] | None = None,
    ) -> None:
        self._clock = clock
        self._rotate_after = rotate_after
        self._on_rotation_due = on_rotation_due
        self._views: dict[str, _TenantView] = {}
        self._lock = threading.Lock()

    # -- time ------------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    def lease_deadline(self, lease_seconds: float) -> float:
        """The deadline on this ring's clock for a lease granted now."""
        return self._clock() + lease_seconds

    # -- writers ---------------------------------------------------------------
    def install(
        self,
        tenant: str,
        version: int,
        material: SecretBytes,
        state: L3State,
        lease_expires_at: float,
    ) -> None:
        """Add or refresh one version; the ring owns ``material`` from here on.

        Re-installing a held version with the same bytes updates its state and
        lease (its wrap count carries on). Different bytes for a held version
        are refused. COMPROMISED or DESTROYED drops the version at once.
        """
        state = L3State(state)
        if state in _DROPPED:
            material.wipe()
            self.drop(tenant, version)
            return
        with self._lock:
            view = self._views.get(tenant)
            versions = dict(view.versions) if view else {}
            held = versions.get(version)
            if held is not None:
                if not held.key.absorb(material):
                    raise CryptographicFailure(
                        f"conflicting service key (L3) material pushed for tenant {tenant!r}"
                    )
                versions[version] = _Version(held.key, state, lease_expires_at)
            else:
                material.pin()  # kept long: on a page core dumps leave out
                try:
                    key = WrappingKey(version, material)
                except Exception:
                    material.wipe()
                    raise
                versions[version] = _Version(key, state, lease_expires_at)
            self._views[tenant] = _TenantView.of(versions)

    def install_grant(self, grant: L3Grant) -> None:
        self.install(
            grant.tenant,
            grant.version,
            grant.material,
            grant.state,
            self.lease_deadline(grant.lease_seconds),
        )

    def set_state(self, tenant: str, version: int, state: L3State) -> None:
        """Change a held version's state; COMPROMISED/DESTROYED drop and wipe it."""
        state = L3State(state)
        if state in _DROPPED:
            self.drop(tenant, version)
            return
        with self._lock:
            view = self._views.get(tenant)
            held = view.versions.get(version) if view else None
            if view is None or held is None:
                raise KeyUnavailable(f"no such service key (L3) version held for tenant {tenant!r}")
            versions = dict(view.versions)
            versions[version] = replace(held, state=state)
            self._views[tenant] = _TenantView.of(versions)

    def drop(self, tenant: str, version: int) -> None:
        """Forget one version and overwrite its bytes (no-op if not held)."""
        with self._lock:
            view = self._views.get(tenant)
            if view is None or version not in view.versions:
                return
            versions = dict(view.versions)
            gone = versions.pop(version)
            self._publish(tenant, versions)
        gone.key.wipe()

    def drop_tenant(self, tenant: str) -> None:
        with self._lock:
            view = self._views.pop(tenant, None)
        for v in view.versions.values() if view else ():
            v.key.wipe()

    def expire(self) -> int:
        """Drop and wipe every version whose lease has run out; how many went."""
        now = self._clock()
        gone: list[_Version] = []
        with self._lock:
            for tenant, view in list(self._views.items()):
                dead = [n for n, v in view.versions.items() if v.expires_at <= now]
                if dead:
                    versions = dict(view.versions)
                    gone.extend(versions.pop(n) for n in dead)
                    self._publish(tenant, versions)
        for v in gone:
            v.key.wipe()
        return len(gone)

    def _publish(self, tenant: str, versions: dict[int, _Version]) -> None:
        if versions:
            self._views[tenant] = _TenantView.of(versions)
        else:
            self._views.pop(tenant, None)

    # -- readers (hot path) ----------------------------------------------------
    def wrap(self, tenant: str, uid: str, plaintext: SecretBytes) -> tuple[int, bytes]:
        """Wrap an L4 key under the tenant's active L3: ``(l3_version, blob)``."""
        view = self._views.get(tenant)
        entry = view.active if view is not None else None
        if entry is None:
            raise KeyUnavailable(
                f"tenant {tenant!r} has no active service key (L3) at this gateway"
            )
        if self._clock() >= entry.expires_at:
            raise _lease_expired(tenant)
        key = entry.key
        try:
            blob = wrap(key, tenant, uid, plaintext)
        except KeyUnavailable:
            raise KeyUnavailable(
                f"the service key (L3) of tenant {tenant!r} was withdrawn or must be rotated"
            ) from None
        if key.wraps == self._rotate_after and self._on_rotation_due is not None:
            self._on_rotation_due(tenant, key.key_id)
        return key.key_id, blob

    def _held(self, tenant: str, l3_version: int) -> _Version:
        """The named L3 version (active or deactivated) if held and its lease holds."""
        view = self._views.get(tenant)
        entry = view.versions.get(l3_version) if view is not None else None
        if entry is None:
            raise KeyUnavailable(
                f"the service key (L3) for this object is not available at this gateway "
                f"for tenant {tenant!r}"
            )
        if self._clock() >= entry.expires_at:
            raise _lease_expired(tenant)
        return entry

    def unwrap(self, tenant: str, uid: str, l3_version: int, blob: bytes) -> SecretBytes:
        """Unwrap an L4 blob under the named L3 version (active or deactivated)."""
        entry = self._held(tenant, l3_version)
        try:
            return unwrap(entry.key, tenant, uid, blob)
        except KeyUnavailable:
            raise KeyUnavailable(
                f"the service key (L3) for this object was withdrawn for tenant {tenant!r}"
            ) from None

    def record_mac(self, tenant: str, l3_version: int, data: bytes) -> bytes:
        """The record-authentication MAC of ``data`` under the tenant's L3 version
        (:meth:`krypton.crypto.wrap.WrappingKey.mac`); KeyUnavailable if not held."""
        return self._held(tenant, l3_version).key.mac(data)

    # -- inspection ------------------------------------------------------------
    def tenants(self) -> list[str]:
        return sorted(self._views)

    def active_version(self, tenant: str) -> int | None:
        """The version new keys of ``tenant`` are wrapped under, if its lease holds."""
        view = self._views.get(tenant)
        entry = view.active if view is not None else None
        if entry is None or self._clock() >= entry.expires_at:
            return None
        return entry.key.key_id

    def versions(self, tenant: str) -> dict[int, L3State]:
        view = self._views.get(tenant)
        return {n: v.state for n, v in view.versions.items()} if view else {}

    def lease_expires_at(self, tenant: str, version: int) -> float | None:
        view = self._views.get(tenant)
        entry = view.versions.get(version) if view else None
        return entry.expires_at if entry else None

    def wrap_count(self, tenant: str, version: int) -> int:
        """Wraps under one version in this process (0 if not held)."""
        view = self._views.get(tenant)
        entry = view.versions.get(version) if view else None
        return entry.key.wraps if entry else 0
