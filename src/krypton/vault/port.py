"""What a gateway vault backend is: the one interface the gateway uses.

:class:`VaultStore` lists every vault method the gateway calls (handlers
through :class:`krypton.model.ports.KeyStore`, the uplink's
:class:`krypton.gateway.upstream.Upstream`, the wiring in
:mod:`krypton.gateway.app`). Each backend is checked against it by mypy at
the bottom of this module (``_BACKENDS``): a backend that lacks a method, or
has one with another signature, is a type error, not a runtime surprise. A
new vault operation goes here first, then into every backend.

:class:`SealedL3Store` is the same for the sealed L3 copies of the gateway
seal (:mod:`krypton.gateway.seal`): each backend keeps them beside its
records (a table of the SQLite file, secrets under the OpenBao prefix) and
hands them out through ``VaultStore.sealed_l3``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from krypton.model.record import KeyRecord

if TYPE_CHECKING:
    from krypton.metrics.meter import Histogram
    from krypton.vault.sealed_l3 import SealedL3
    from krypton.vault.sqlite import OutboxPage


class SealedL3Store(Protocol):
    """A vault's sealed L3 copies, one per (tenant, version), durable when a
    write returns (see :mod:`krypton.vault.sealed_l3` for what a copy holds)."""

    async def store(self, row: SealedL3) -> None:
        """Store ``row``, replacing the copy of its (tenant, version)."""
        ...

    async def drop(self, tenant: str, versions: Sequence[int]) -> None:
        """Delete the copies of these versions of ``tenant`` (absent ones are no error)."""
        ...

    async def keep_only(self, tenant: str, versions: Sequence[int]) -> None:
        """Delete every copy of ``tenant`` whose version is not in ``versions``."""
        ...

    async def rows(self) -> list[SealedL3]:
        """Every stored copy, ordered by tenant and version."""
        ...


class VaultStore(Protocol):
    """Wrapped L4 records, their outbox and the change-feed cursor (durable
    when a write returns); see :class:`krypton.vault.sqlite.Vault` for the
    meaning of each method."""

    # -- counters --------------------------------------------------------------
    @property
    def records_written(self) -> int: ...

    @property
    def cached(self) -> int: ...

    @property
    def pending_changes(self) -> int: ...

    @property
    def quarantined(self) -> int: ...

    @property
    def path(self) -> Path | None: ...

    @property
    def commit_stats(self) -> tuple[Histogram, Histogram]: ...

    def unwritable(self) -> str | None: ...

    def outbox_stats(self) -> tuple[int, int | None]: ...

    # -- writes ------------------------------------------------------------------
    def authentic(self, record: KeyRecord) -> KeyRecord: ...

    async def put(self, record: KeyRecord) -> None: ...

    async def put_many(self, records: Iterable[KeyRecord]) -> None: ...

    async def update_state(self, uid: str, state: int) -> bool: ...

    async def update_attributes(self, uid: str, attributes: bytes) -> bool: ...

    async def reinstate(self, record: KeyRecord, *, seq: int = 0) -> bool: ...

    async def apply_change(
        self, uid: str, *, state: int | None = None, attributes: bytes | None = None,
        seq: int = 0,
    ) -> bool: ...

    async def adopt(self, record: KeyRecord, *, seq: int = 0) -> bool: ...

    async def rewrap(self, record: KeyRecord, version: int, wrapped: bytes) -> bool: ...

    async def set_cursor(self, seq: int) -> None: ...

    async def mark_synced(self, uids: Iterable[str]) -> int: ...

    async def quarantine(self, refused: Mapping[str, str]) -> int: ...

    async def seal_legacy(self) -> int: ...

    # -- reads -------------------------------------------------------------------
    def get(self, uid: str) -> KeyRecord | None: ...

    def lookup(self, uid: str) -> KeyRecord | None: ...

    async def read_through(self, uid: str) -> KeyRecord | None: ...

    def warm(self) -> None: ...

    def warmed(self, timeout: float | None = None) -> bool: ...

    @property
    def cached_bytes(self) -> int: ...

    def outbox(
        self, limit: int, *, tenant: str | None = None,
        gone: Callable[[str, int], bool] | None = None,
    ) -> list[KeyRecord]: ...

    def outbox_page(
        self, limit: int, *, tenant: str | None = None, after: int = 0,
        gone: Callable[[str, int], bool] | None = None, checked: bool = True,
    ) -> OutboxPage: ...

    def peek(self, uid: str) -> KeyRecord | None: ...

    def l3_versions(self, tenant: str) -> set[int]: ...

    def under_l3(self, tenant: str, version: int, after: str, limit: int) -> list[str]: ...

    def cursor(self) -> int: ...

    def held(self, tenant: str, after: str, limit: int) -> list[str]: ...

    def holds_keys(self) -> bool: ...

    def sealed_l3(self) -> SealedL3Store: ...

    def close(self) -> None: ...


if TYPE_CHECKING:  # every backend implements the whole interface (checked by mypy)
    from krypton.vault._bao_sealed import BaoSealed
    from krypton.vault.openbao import BaoVault
    from krypton.vault.sealed_l3 import SealedRows
    from krypton.vault.sqlite import Vault

    _BACKENDS: tuple[type[VaultStore], ...] = (Vault, BaoVault)
    _SEALED: tuple[type[SealedL3Store], ...] = (SealedRows, BaoSealed)
