"""The Core registry's storage interface: one contract, two backends (SQLite, PostgreSQL).

How this works
--------------
The registry is the Core's authoritative state: every managed object of
every tenant (L4 keys made at gateways arrive through ``SyncKeys``; objects
registered or created at the Core are made here), the tenants' sealed L2 and
L3 keys, and the audit trail. Handlers of the shared KMIP engine see only
this interface; the backends translate their drivers' errors into
``krypton.errors.StorageError`` at their boundary.

Objects carry their key material *sealed*: an L4 made at a gateway is
wrapped by the tenant's L3 (``l3_version`` says which); material registered
at the Core is sealed the same way by the Core before it is stored. The
registry never sees plaintext.

Locate does not scan: names, object groups, state, object type and custom
(``x-``) attribute values are kept in indexed columns / side tables that the
backends maintain from :class:`ObjectRecord`'s ``names``, ``groups`` and
``custom`` fields.

Change notification: ``subscribe`` delivers a :class:`StateChange` for every
committed ``update_object`` and a :class:`KeyChange` for every tenant key
version stored or changed by ``put_keys``, including those made by another
Core instance on the same database (PostgreSQL LISTEN/NOTIFY; in SQLite only
one Core process exists, so in-process delivery suffices). ``put_objects``
publishes nothing: a new object is not a change any gateway holds a copy of.
Each subscriber gets its events in commit order, one callback at a time.

The change feed: every committed ``update_object`` and every key version
``put_keys`` changes is also written, in the same transaction, to the feed
with a sequence number (increasing in commit order; the change events carry
it as ``seq``). A gateway that was away asks for the feed after the last
number it applied (``feed_since``); the feed keeps the newest
``feed_retention`` changes (a backend setting), and ``feed_bounds`` says where
it starts, so a caller further behind knows it must reconcile instead.

Concurrency: ``update_object`` is a compare-and-set on ``revision`` and
``put_keys`` never replaces a version's sealed material, so two Core
instances racing on one object or one L3 rotation get a
:class:`RegistryConflict` instead of silently losing a write.

Refinements of the first sketch of this interface (and why):

- ``KeyChange`` and the ``Change`` union: L3 rotations and revocations made
  through one Core instance must reach the gateways subscribed to the others,
  so tenant keys need change events too; ``StateChange`` keeps its shape
  because the engine's ``Outcome`` carries it.
- ``update_object`` checks ``record.revision`` (a lost update between two
  Core instances would otherwise pass unnoticed) and raises ``ItemNotFound``
  for an unknown uid or another tenant's uid.
- ``put_keys`` (several versions in one transaction): a rotation demotes the
  active L3 and adds the next one atomically. ``put_key`` stays for one key.
- ``audit`` takes ``since`` (what the (tenant, time) index is for) and says
  which records ``limit`` keeps.
- ``RegistryConflict``: a ``StorageError`` the engine can tell apart and retry.
- ``key_fingerprint``: on a SQLite file ``subscribe`` hears only this
  process, so the Core key store watches other processes' key changes by
  polling a cheap summary of the key table, asked of the port (it used to run
  its own SQL on the registry's file).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from krypton.errors import StorageError


class RegistryConflict(StorageError):
    """The write conflicts with what the registry holds (a stale revision, a
    unique identifier owned by another tenant, different material for an
    existing key version). Re-read and retry, or give up."""


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    uid: str
    tenant: str
    object_type: int
    state: int
    created: int
    algorithm: int | None = None
    length: int | None = None
    l3_version: int | None = None
    sealed: bytes | None = None  # wrapped key material; None once destroyed
    attributes: bytes = b""  # TTLV Attributes structure (KMIP 2.x form); no key material
    origin: str = "core"  # the gateway that made it, or "core"
    names: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    custom: tuple[tuple[str, str], ...] = ()  # (x-name, value as text) pairs for Locate
    revision: int = 0  # bumped by every update; lets gateways ignore stale events
    # HMAC-SHA256 of the record's covered fields (krypton.model.record.authenticated_bytes
    # of KeyRecord.from_object) under HKDF(L3 of l3_version, "krypton record mac v1");
    # None for a row written before record MACs (listed as legacy until sealed).
    mac: bytes | None = None

    def __repr__(self) -> str:
        sealed = f"<{len(self.sealed)} bytes>" if self.sealed else None
        return (
            f"ObjectRecord(uid={self.uid!r}, tenant={self.tenant!r}, type={self.object_type}, "
            f"state={self.state}, sealed={sealed})"
        )


@dataclass(frozen=True, slots=True)
class LocateQuery:
    """What a Locate asks the registry: the tenant's objects matching every filter
    given, in creation order (``created``, then insertion order; reversed with
    ``newest_first``), ``offset`` of them skipped, at most ``limit`` returned.
    ``destroyed``: None, any state; False, destroyed objects (KMIP states
    Destroyed and Destroyed Compromised) left out; True, only those."""

    tenant: str
    object_type: int | None = None
    state: int | None = None
    name: str | None = None
    group: str | None = None
    custom: tuple[tuple[str, str], ...] = ()
    offset: int = 0
    limit: int | None = None
    destroyed: bool | None = None
    newest_first: bool = False


@dataclass(frozen=True, slots=True)
class AuditRecord:
    time: float
    identity: str
    tenant: str
    operation: str
    uid: str | None
    result: str  # "Success" or the result reason's name
    gateway: str | None = None
    correlation_id: str | None = None
    detail: str = ""


@dataclass(slots=True, eq=False)
class AuditSlot:
    """The audit record of the operation running, for the first change it
    commits to carry in its transaction (``written`` once it has)."""

    record: AuditRecord
    written: bool = False


@dataclass(frozen=True, slots=True)
class SealedKey:
    """A tenant key (L2 sealed by the master key, L3 sealed by L2) as stored.

    ``level`` is free text. What :class:`~krypton.core.keystore.CoreKeyStore`
    keeps maps onto it as: ``core_l2`` rows → level ``"L2"``, version 1, state
    ACTIVE; ``core_l3`` rows → level ``"L3"``; its sealed master-key check
    constant → tenant ``""``, level ``"MK"``, version 1. ``sealed`` is the
    keystore's wrapped blob (its ``X''`` for a destroyed L3 becomes None)."""

    tenant: str
    level: str  # "L2" or "L3"
    version: int
    state: int
    sealed: bytes | None  # None once destroyed
    created: float = field(default=0.0)

    def __repr__(self) -> str:
        sealed = None if self.sealed is None else f"<{len(self.sealed)} bytes>"
        return (
            f"SealedKey(tenant={self.tenant!r}, level={self.level!r}, version={self.version}, "
            f"state={self.state}, sealed={sealed})"
        )


@dataclass(frozen=True, slots=True)
class RewrapJob:
    """A tenant's background re-wrap (:mod:`krypton.core.rewrap`): move every object
    still wrapped under an older L3 version to the active one. One per tenant;
    a new request replaces it. ``done`` counts objects moved so far; ``finished``
    is set once no object is left under a usable older version."""

    tenant: str
    target: int  # the active version when it was asked for
    operator: str  # whose identity every re-wrap is audited under
    started: float
    total: int  # objects under older versions when it was asked for
    done: int = 0
    updated: float = 0.0
    finished: float | None = None


@dataclass(frozen=True, slots=True)
class StateChange:
    """A managed object was updated (its state, attributes or material)."""

    tenant: str
    uid: str
    state: int
    revision: int
    seq: int = 0  # its place in the registry's change feed (0: not from the feed)


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A tenant key version was stored, changed state or was destroyed."""

    tenant: str
    level: str
    version: int
    state: int
    seq: int = 0  # its place in the registry's change feed (0: not from the feed)


Change: TypeAlias = StateChange | KeyChange

# tenant -> one summary row per level (count, highest version, state checksum,
# rows holding material); equal fingerprints mean no key version changed.
KeyFingerprint: TypeAlias = Mapping[str, tuple[tuple[object, ...], ...]]


class Registry(Protocol):
    """Async on purpose: the PostgreSQL backend is a network database.

    Every method raises :class:`~krypton.errors.StorageError` (or a subclass)
    when the database fails; nothing else leaks from the driver."""

    async def put_objects(self, records: Sequence[ObjectRecord]) -> None:
        """Insert all or none. An existing uid of the same tenant is left as it
        is (idempotent); a uid of another tenant is a :class:`RegistryConflict`."""

    async def get_object(self, tenant: str, uid: str) -> ObjectRecord | None:
        """The object, or None if it does not exist *for this tenant*."""

    async def update_object(
        self, record: ObjectRecord, audit: AuditRecord | None = None
    ) -> ObjectRecord:
        """Replace the mutable fields (state, algorithm, length, l3_version,
        sealed, attributes, names, groups, custom) of the object whose revision
        is ``record.revision``; returns it as stored, with the revision bumped.
        ``ItemNotFound`` if the tenant has no such object; ``RegistryConflict``
        if its revision has moved on. ``audit``, if given, is appended in the
        same transaction (the change and its audit record commit together)."""

    async def legacy_objects(self) -> list[tuple[str, str]]:
        """(tenant, uid) of every object written before record MACs and not yet
        sealed (the registry's ``unsealed_objects`` list)."""

    async def is_legacy(self, uid: str) -> bool:
        """Whether ``uid`` is listed as written before record MACs (and not sealed)."""

    async def seal_legacy(self, tenant: str, uid: str, revision: int, mac: bytes) -> bool:
        """Store the MAC of a listed legacy object still at ``revision`` and
        unlist it; no revision bump, no change event. False if it is not listed,
        has a MAC already or has moved on."""

    async def locate(self, query: LocateQuery) -> list[str]:
        """Unique identifiers matching every given filter, in the query's order,
        ``offset`` and ``limit`` applied by the database (an index serves the
        order: a page costs its size, not the number of matches)."""

    async def locate_count(self, query: LocateQuery) -> int:
        """How many objects match every given filter (``offset`` and ``limit``
        ignored), counted by the database without reading them out."""

    async def l3_usage(self, tenant: str) -> dict[int, int]:
        """How many of the tenant's objects still hold material wrapped under each
        L3 version (versions holding none are absent)."""
        ...

    async def l3_objects(self, tenant: str, version: int, after: str, limit: int) -> list[str]:
        """Up to ``limit`` uids (in order, above ``after``) of the tenant's objects
        holding material wrapped under L3 ``version``: what a re-wrap moves."""
        ...

    async def rewrap_jobs(self, tenant: str | None = None) -> list[RewrapJob]:
        """The re-wrap job of ``tenant`` (or of every tenant), as last stored."""
        ...

    async def put_rewrap_job(self, job: RewrapJob) -> None:
        """Store (insert or replace) the tenant's re-wrap job."""
        ...

    async def append_audit(self, record: AuditRecord) -> None: ...

    async def audit(
        self, tenant: str | None = None, limit: int = 1000, *, since: float | None = None
    ) -> list[AuditRecord]:
        """The newest ``limit`` records (of ``tenant``, at or after ``since``),
        oldest first, in the order they were appended."""

    async def put_keys(self, keys: Sequence[SealedKey]) -> None:
        """Store key versions in one transaction. A new (tenant, level, version)
        is inserted; an existing one takes the new state, and ``sealed=None``
        destroys its material. Different material for an existing version, or
        material for a destroyed one, is a :class:`RegistryConflict`."""

    async def put_key(self, key: SealedKey) -> None:
        """``put_keys([key])``."""

    async def reseal_keys(self, moves: Sequence[tuple[SealedKey, bytes]]) -> None:
        """Replace each key's sealed material with the new bytes, in one
        transaction, only where it is still exactly ``key.sealed`` (a compare and
        swap; else :class:`RegistryConflict` and nothing changes). The same key
        sealed anew (a root of trust moved: ``krypton core rewrap-root``): no
        state changes, nothing enters the change feed."""

    async def keys(self, tenant: str, level: str) -> list[SealedKey]:
        """The tenant's versions at this level, oldest first."""

    async def subscribe(self, callback: Callable[[Change], Awaitable[None]]) -> Callable[[], None]:
        """Deliver every committed change (from now on) to ``callback`` on the
        calling event loop; returns the function that unsubscribes."""

    async def feed_since(
        self, tenants: Sequence[str], after: int, limit: int
    ) -> list[Change]:
        """The change feed: up to ``limit`` changes of ``tenants`` with a sequence
        number above ``after``, in sequence order (each carries its ``seq``)."""

    async def feed_bounds(self) -> tuple[int, int]:
        """(pruned, head): changes up to ``pruned`` are no longer kept; ``head`` is
        the newest sequence number committed (0 for an empty feed)."""

    async def object_states(self, tenant: str, uids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """uid → (state, revision) for those of ``uids`` the tenant has."""

    async def key_fingerprint(self, levels: Sequence[str]) -> KeyFingerprint | None:
        """For a watcher of tenant keys: a summary, per tenant, of the key
        versions at ``levels`` that changes whenever any process changes one of
        them; poll it and re-read a tenant whose summary moved. None when
        ``subscribe`` already hears every process's changes (PostgreSQL's
        LISTEN/NOTIFY; an in-memory database, which only this process sees)."""

    async def close(self) -> None: ...
