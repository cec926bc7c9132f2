"""Authenticated registry records: the Core's side of the record MAC (issue 11).

How this works
--------------
The gateway's vault MACs each record (:mod:`krypton.vault.auth`); the Core
does the same for its registry, with the same function and the same key, so a
record carries one MAC from the gateway that made it, through ``SyncKeys``,
into the registry and back out through ``FetchKey``:

    mac = HMAC-SHA256(HKDF(L3 of l3_version, "krypton record mac v1"),
                      authenticated_bytes(KeyRecord.from_object(record)))

(:meth:`krypton.crypto.keyring.KeyRing.record_mac`). It covers uid, tenant,
object type, algorithm, length, state, L3 version, the sealed material and
the whole attribute blob; not the Locate indexes (derived from the blob),
``origin``, ``created`` or ``revision``.

:class:`AuthenticatedRegistry` wraps the Core's :class:`Registry`; the engine
and the uplink service only see the wrapper, so no path stores or reads an
object around it:

- ``put_objects`` and ``update_object`` store each record with its MAC
  computed afresh (Register, Create Key Pair, every state or attribute change,
  an Undo's write-back);
- ``get_object`` checks the MAC of what it read: a record whose MAC does not
  match, or that has none without being listed as legacy, is refused with
  :class:`RecordTampered` (Cryptographic Failure) and one log line naming the
  uid. If its L3 version is not held (revoked, destroyed) the check cannot run
  and the read fails closed with Key Unavailable. Everything the Core does to
  an object (FetchKey, Get, Activate, Locate's filters, ...) reads it here
  first, so a change updates only a checked record and never launders a
  tampered one into a freshly MAC'd row.

Records arriving by ``SyncKeys`` are checked by :func:`check_arriving`
before they are stored: a gateway holds its tenants' L3, so it could MAC a
record it chose; this catches corruption on the way, and a gateway MACing
another tenant's record is impossible without that tenant's L3. The MAC is
computed once per synced record: :meth:`AuthenticatedRegistry.arrive` checks
it and makes the registry's object from the checked record alone
(``KeyRecord.to_object``, which keeps every covered field), an
:class:`Arrived`; :meth:`AuthenticatedRegistry.put_arrived` stores those with
the MAC they came with, which is the MAC ``put_objects`` would compute again.

Legacy rows: schema v2 lists every object written before it in
``unsealed_objects``, the one place a row without a MAC is accepted.
:func:`seal_legacy` (the Core runs it at start, once its L3 keys are
installed) MACs them and unlists them; a row under an L3 the Core does not
hold stays listed (and unusable anyway).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from krypton.errors import CryptographicFailure, KeyUnavailable
from krypton.model.record import KeyRecord, authenticated_bytes
from krypton.model.registry import (
    AuditRecord,
    Change,
    KeyFingerprint,
    LocateQuery,
    ObjectRecord,
    Registry,
    RewrapJob,
    SealedKey,
)

log = logging.getLogger("krypton.core")

# (tenant, l3_version, data) -> MAC; KeyRing.record_mac.
MacKey = Callable[[str, int, bytes], bytes]
# An object's Locate indexes: (names, groups, custom), krypton.core.engine.objects.index_fields.
Index = tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]


class RecordTampered(CryptographicFailure):
    """A registry record's covered fields do not match its MAC."""


def record_mac(rec: ObjectRecord, mac_key: MacKey) -> bytes:
    """The MAC ``rec`` should carry (KeyUnavailable if its L3 is not held)."""
    return mac_key(rec.tenant, rec.l3_version or 0, authenticated_bytes(KeyRecord.from_object(rec)))


def _verify(key: KeyRecord, mac_key: MacKey) -> bool:
    try:
        want = mac_key(key.tenant, key.l3_version, authenticated_bytes(key))
    except KeyUnavailable:
        log.warning("record %r cannot be authenticated: its L3 is not held", key.uid)
        raise
    return hmac.compare_digest(want, key.mac)


def _refuse(uid: str, where: str) -> RecordTampered:
    log.error("%s record %r failed authentication: refused", where, uid)
    return RecordTampered(f"stored object {uid!r} failed authentication")


def check_arriving(key: KeyRecord, mac_key: MacKey) -> KeyRecord:
    """A record a gateway sent (``SyncKeys``): it must carry a right MAC."""
    if key.mac and _verify(key, mac_key):
        return key
    raise _refuse(key.uid, "synced")


@dataclass(frozen=True, slots=True, repr=False)
class Arrived:
    """A synced record as the registry stores it, made by
    :meth:`AuthenticatedRegistry.arrive` once its MAC was checked."""

    record: ObjectRecord


class AuthenticatedRegistry:
    """A :class:`Registry` whose objects carry record MACs; see the module comment."""

    def __init__(self, inner: Registry, mac_key: MacKey) -> None:
        self.inner = inner
        self._mac_key = mac_key

    def __repr__(self) -> str:
        return f"AuthenticatedRegistry({self.inner!r})"

    def _sealed(self, rec: ObjectRecord) -> ObjectRecord:
        return replace(rec, mac=record_mac(rec, self._mac_key))

    async def check(self, rec: ObjectRecord) -> ObjectRecord:
        """``rec`` if its MAC is right or it is a listed legacy row; else refused."""
        if rec.mac:
            if _verify(KeyRecord.from_object(rec), self._mac_key):
                return rec
        elif await self.inner.is_legacy(rec.uid):
            return rec
        raise _refuse(rec.uid, "registry")

    def arrive(
        self,
        key: KeyRecord,
        origin: str,
        index: Index,
    ) -> Arrived:
        """A record a gateway synced, checked (:func:`check_arriving`, RecordTampered
        if its MAC is wrong or missing), as the registry's object: made from the
        checked record, with its Locate ``index`` (names, groups, custom)."""
        key = check_arriving(key, self._mac_key)
        names, groups, custom = index
        return Arrived(key.to_object(origin=origin, names=names, groups=groups, custom=custom))

    # -- objects: sealed on the way in, checked on the way out ---------------------
    async def put_objects(self, records: Sequence[ObjectRecord]) -> None:
        await self.inner.put_objects([self._sealed(r) for r in records])

    async def put_arrived(self, arrived: Sequence[Arrived]) -> None:
        """Store synced records with the MAC :meth:`arrive` checked (not computed again)."""
        await self.inner.put_objects([a.record for a in arrived])

    async def get_object(self, tenant: str, uid: str) -> ObjectRecord | None:
        rec = await self.inner.get_object(tenant, uid)
        return None if rec is None else await self.check(rec)

    async def update_object(
        self, record: ObjectRecord, audit: AuditRecord | None = None
    ) -> ObjectRecord:
        return await self.inner.update_object(self._sealed(record), audit)

    async def legacy_objects(self) -> list[tuple[str, str]]:
        return await self.inner.legacy_objects()

    async def is_legacy(self, uid: str) -> bool:
        return await self.inner.is_legacy(uid)

    async def seal_legacy(self, tenant: str, uid: str, revision: int, mac: bytes) -> bool:
        return await self.inner.seal_legacy(tenant, uid, revision, mac)

    # -- the rest is the inner registry's ------------------------------------------
    async def locate(self, query: LocateQuery) -> list[str]:
        return await self.inner.locate(query)

    async def locate_count(self, query: LocateQuery) -> int:
        return await self.inner.locate_count(query)

    async def append_audit(self, record: AuditRecord) -> None:
        await self.inner.append_audit(record)

    async def audit(
        self, tenant: str | None = None, limit: int = 1000, *, since: float | None = None
    ) -> list[AuditRecord]:
        return await self.inner.audit(tenant, limit, since=since)

    async def put_keys(self, keys: Sequence[SealedKey]) -> None:
        await self.inner.put_keys(keys)

    async def reseal_keys(self, moves: Sequence[tuple[SealedKey, bytes]]) -> None:
        await self.inner.reseal_keys(moves)

    # -- the change feed and reads that carry no record: the inner registry's --
    async def l3_usage(self, tenant: str) -> dict[int, int]:
        return await self.inner.l3_usage(tenant)

    async def l3_objects(self, tenant: str, version: int, after: str, limit: int) -> list[str]:
        return await self.inner.l3_objects(tenant, version, after, limit)

    async def rewrap_jobs(self, tenant: str | None = None) -> list[RewrapJob]:
        return await self.inner.rewrap_jobs(tenant)

    async def put_rewrap_job(self, job: RewrapJob) -> None:
        await self.inner.put_rewrap_job(job)

    async def feed_since(self, tenants: Sequence[str], after: int, limit: int) -> list[Change]:
        return await self.inner.feed_since(tenants, after, limit)

    async def feed_bounds(self) -> tuple[int, int]:
        return await self.inner.feed_bounds()

    async def object_states(self, tenant: str, uids: Sequence[str]) -> dict[str, tuple[int, int]]:
        return await self.inner.object_states(tenant, uids)

    async def put_key(self, key: SealedKey) -> None:
        await self.inner.put_key(key)

    async def keys(self, tenant: str, level: str) -> list[SealedKey]:
        return await self.inner.keys(tenant, level)

    async def subscribe(self, callback: Callable[[Change], Awaitable[None]]) -> Callable[[], None]:
        return await self.inner.subscribe(callback)

    async def key_fingerprint(self, levels: Sequence[str]) -> KeyFingerprint | None:
        return await self.inner.key_fingerprint(levels)

    async def close(self) -> None:
        await self.inner.close()


async def seal_legacy(registry: Registry, mac_key: MacKey) -> int:
    """MAC every listed legacy object whose L3 is held; returns how many were sealed."""
    sealed = 0
    for tenant, uid in await registry.legacy_objects():
        rec = await registry.get_object(tenant, uid)
        if rec is None or rec.mac:
            continue
        try:
            mac = record_mac(rec, mac_key)
        except KeyUnavailable:
            log.warning("legacy record %r not sealed: its L3 is not held", uid)
            continue
        if await registry.seal_legacy(tenant, uid, rec.revision, mac):
            sealed += 1
    if sealed:
        log.info("sealed %d legacy registry record(s) with their MAC", sealed)
    return sealed
