"""What a gateway vault backend is: the one interface the gateway uses.

:class:`VaultStore` lists every vault method the gateway calls (handlers
through :class:`krypton.model.ports.KeyStore`, the uplink's
:class:`krypton.gateway.upstream.Upstream`, the wiring in
:mod:`krypton.gateway.app`). Each backend is checked against it by mypy at
the bottom of this module (``_BACKENDS``): a backend that lacks a method, or
has one with another signature, is a type error, not a runtime surprise. A
new vault operation goes here first, then into every backend.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from krypton.model.record import KeyRecord


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

    async def set_cursor(self, seq: int) -> None: ...

    async def mark_synced(self, uids: Iterable[str]) -> int: ...

    async def seal_legacy(self) -> int: ...

    # -- reads -------------------------------------------------------------------
    def get(self, uid: str) -> KeyRecord | None: ...

    def outbox(self, limit: int) -> list[KeyRecord]: ...

    def cursor(self) -> int: ...

    def held(self, tenant: str, after: str, limit: int) -> list[str]: ...

    def holds_keys(self) -> bool: ...

    def close(self) -> None: ...


if TYPE_CHECKING:  # every backend implements the whole interface (checked by mypy)
    from krypton.vault.openbao import BaoVault
    from krypton.vault.sqlite import Vault

    _BACKENDS: tuple[type[VaultStore], ...] = (Vault, BaoVault)
