"""The gateway vault: wrapped L4 records on SQLite, durable group commit, outbox."""

from __future__ import annotations

from krypton.vault.sqlite import Vault

__all__ = ["Vault"]
