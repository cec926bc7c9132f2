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

Change notification: ``subscribe`` delivers :class:`StateChange` events for
every committed state change, including those made by another Core
instance on the same database (PostgreSQL LISTEN/NOTIFY; in SQLite only one
Core process exists, so in-process delivery suffices).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


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

    def __repr__(self) -> str:
        sealed = f"<{len(self.sealed)} bytes>" if self.sealed else None
        return (
            f"ObjectRecord(uid={self.uid!r}, tenant={self.tenant!r}, type={self.object_type}, "
            f"state={self.state}, sealed={sealed})"
        )


@dataclass(frozen=True, slots=True)
class LocateQuery:
    tenant: str
    object_type: int | None = None
    state: int | None = None
    name: str | None = None
    group: str | None = None
    custom: tuple[tuple[str, str], ...] = ()
    offset: int = 0
    limit: int | None = None


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


@dataclass(frozen=True, slots=True)
class SealedKey:
    """A tenant key (L2 sealed by the master key, L3 sealed by L2) as stored."""

    tenant: str
    level: str  # "L2" or "L3"
    version: int
    state: int
    sealed: bytes | None  # None once destroyed
    created: float = field(default=0.0)


@dataclass(frozen=True, slots=True)
class StateChange:
    tenant: str
    uid: str
    state: int
    revision: int


class Registry(Protocol):
    """Async on purpose: the PostgreSQL backend is a network database."""

    async def put_objects(self, records: Sequence[ObjectRecord]) -> None:
        """Insert, idempotently: an existing uid with the same tenant is left as it is."""

    async def get_object(self, tenant: str, uid: str) -> ObjectRecord | None: ...

    async def update_object(self, record: ObjectRecord) -> ObjectRecord:
        """Replace an object's mutable fields; bumps and returns the new revision."""

    async def locate(self, query: LocateQuery) -> list[str]:
        """Unique identifiers matching every given filter, in creation order."""

    async def append_audit(self, record: AuditRecord) -> None: ...

    async def audit(self, tenant: str | None = None, limit: int = 1000) -> list[AuditRecord]: ...

    async def put_key(self, key: SealedKey) -> None: ...

    async def keys(self, tenant: str, level: str) -> list[SealedKey]: ...

    async def subscribe(
        self, callback: Callable[[StateChange], Awaitable[None]]
    ) -> Callable[[], None]:
        """Deliver every committed state change; returns an unsubscribe function."""

    async def close(self) -> None: ...
