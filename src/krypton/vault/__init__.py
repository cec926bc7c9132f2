"""The gateway vault: wrapped L4 records on SQLite, durable group commit, outbox."""

from __future__ import annotations

from krypton.vault.record import KeyRecord, VaultStore, new_uid
from krypton.vault.sqlite import Vault

__all__ = ["KeyRecord", "Vault", "VaultStore", "new_uid"]
