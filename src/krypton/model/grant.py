"""What a client identity may do at a gateway: its tenant and operations."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Grant"]


@dataclass(frozen=True, slots=True)
class Grant:
    """What an identity may do: its tenant and operations (``None`` = every operation)."""

    tenant: str
    operations: frozenset[int] | None = None

    def allows(self, operation: int) -> bool:
        return self.operations is None or operation in self.operations
