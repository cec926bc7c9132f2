"""The ports: the storage and upstream interfaces the handlers see.

A gateway handler reads and writes keys through :class:`KeyStore` (the SQLite
vault implements it) and reaches the Core through :class:`Upstream` (the
gateway's uplink client implements it). The Core's handlers see
:class:`krypton.model.registry.Registry`, and seal the key material they store
through a :class:`Sealer` (the Core's key ring, ``core.engine.objects.KeyRingSealer``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from krypton.model.context import RequestContext
from krypton.model.record import KeyRecord
from krypton.ttlv.item import Item

__all__ = ["KeyStore", "Sealer", "Upstream"]

# The secret type a Sealer takes and gives (``crypto.secret.SecretBytes`` in the
# Core): a type parameter, because the model imports no crypto.
S = TypeVar("S")


class KeyStore(Protocol):
    """The storage a gateway handler needs (the SQLite vault implements it)."""

    def get(self, uid: str) -> KeyRecord | None:
        """The record (None: not stored); a miss may read storage on this thread."""
        ...

    def lookup(self, uid: str) -> KeyRecord | None:
        """The record if it is in memory, else None (it may still be stored): no I/O."""
        ...

    async def read_through(self, uid: str) -> KeyRecord | None:
        """Like :meth:`get`, with a storage read done off the event loop."""
        ...

    async def put(self, record: KeyRecord) -> None: ...

    async def put_many(self, records: Iterable[KeyRecord]) -> None:
        """All of ``records`` durably, in one transaction (all or none)."""
        ...


class Upstream(Protocol):
    """The Krypton Core as a gateway handler sees it (``krypton.gateway.upstream``)."""

    async def execute(self, ctx: RequestContext, raw_item: Item) -> tuple[Item, str | None]:
        """Run one request batch item at the Core: its response batch item and new ID
        Placeholder (state changes are applied to the vault before this returns)."""
        ...

    async def fetch(self, tenant: str, uid: str) -> KeyRecord | None:
        """A wrapped record this gateway does not hold, from the Core (and kept)."""
        ...

    def created(self) -> None:
        """A key was added to the outbox."""
        ...


class Sealer(Protocol[S]):
    """Seals key material for the registry (the tenant's L3 in this deployment):
    ``seal`` gives the L3 version used and the sealed blob, ``unseal`` the material."""

    def seal(self, tenant: str, uid: str, plaintext: S) -> tuple[int, bytes]: ...

    def unseal(self, tenant: str, uid: str, l3_version: int, blob: bytes) -> S: ...
