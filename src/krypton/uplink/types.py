"""What travels on the uplink, as the rest of Krypton sees it: frozen dataclasses,
never protobuf objects (those stay inside :mod:`krypton.uplink.convert`).

An L3 key pushed by the Core is a :class:`krypton.crypto.keyring.L3Grant`: its
material is a wipeable :class:`~krypton.crypto.secret.SecretBytes` from the
moment it leaves the protobuf message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from krypton.crypto.keyring import L3Grant
from krypton.model.record import KeyRecord
from krypton.model.registry import ObjectRecord, StateChange

__all__ = [
    "ConnectionState",
    "CoreEvent",
    "ExecuteRequest",
    "ExecuteResult",
    "Heartbeat",
    "Liveness",
    "StateChange",
    "WrappedKey",
]


class ConnectionState(Enum):
    """The gateway's view of its uplink."""

    CONNECTING = "connecting"  # no stream yet, or one not yet in sync
    READY = "ready"  # subscribed and in sync with the Core
    DOWN = "down"  # the last attempt failed; retrying after a backoff


@dataclass(frozen=True, slots=True)
class Liveness:
    """How fast a dead link is noticed (``gateway.uplink.*``, in seconds)."""

    keepalive: float = 2.0
    keepalive_timeout: float = 2.0
    connect_timeout: float = 2.0

    def __post_init__(self) -> None:
        if min(self.keepalive, self.keepalive_timeout, self.connect_timeout) <= 0:
            raise ValueError("keepalive, keepalive_timeout and connect_timeout must be > 0")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent by the Core after each stream's initial snapshot and when a stream is quiet."""

    time_ms: int

    @classmethod
    def now(cls) -> Heartbeat:
        return cls(time.time_ns() // 1_000_000)


CoreEvent = L3Grant | StateChange | Heartbeat


@dataclass(frozen=True, slots=True, repr=False)
class WrappedKey:
    """An L4 record as the Core holds it (a :class:`KeyRecord` without the outbox flag)."""

    uid: str
    tenant: str
    object_type: int
    algorithm: int
    length: int
    state: int
    l3_version: int
    wrapped: bytes
    attributes: bytes = b""
    created: int = 0

    @classmethod
    def of(cls, record: KeyRecord) -> WrappedKey:
        return cls(
            record.uid,
            record.tenant,
            record.object_type,
            record.algorithm,
            record.length,
            record.state,
            record.l3_version,
            record.wrapped,
            record.attributes,
            record.created,
        )

    @classmethod
    def from_object(cls, rec: ObjectRecord) -> WrappedKey:
        """A registry object as a gateway holds it (no material once destroyed)."""
        return cls(
            rec.uid,
            rec.tenant,
            rec.object_type,
            rec.algorithm or 0,
            rec.length or 0,
            rec.state,
            rec.l3_version or 0,
            rec.sealed or b"",
            rec.attributes,
            rec.created,
        )

    def record(self, *, synced: bool = True) -> KeyRecord:
        return KeyRecord(
            uid=self.uid,
            tenant=self.tenant,
            object_type=self.object_type,
            algorithm=self.algorithm,
            length=self.length,
            state=self.state,
            l3_version=self.l3_version,
            wrapped=self.wrapped,
            attributes=self.attributes,
            created=self.created,
            synced=synced,
        )

    def __repr__(self) -> str:
        return (
            f"WrappedKey(uid={self.uid!r}, tenant={self.tenant!r}, state={self.state}, "
            f"l3_version={self.l3_version}, wrapped=<{len(self.wrapped)} bytes>, "
            f"attributes=<{len(self.attributes)} bytes>)"
        )


@dataclass(frozen=True, slots=True, repr=False)
class ExecuteRequest:
    """One delegated KMIP request batch item (raw TTLV) and the context it runs in.

    ``identity`` is the KMIP client's identity as the gateway authenticated it;
    ``placeholder`` the batch's current ID Placeholder, if any.
    """

    batch_item: bytes
    identity: str
    tenant: str
    protocol: tuple[int, int]
    correlation_id: str = ""
    placeholder: str | None = None

    def __repr__(self) -> str:
        return (
            f"ExecuteRequest(<{len(self.batch_item)} bytes>, identity={self.identity!r}, "
            f"tenant={self.tenant!r}, protocol={self.protocol}, "
            f"correlation_id={self.correlation_id!r})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class ExecuteResult:
    """The response batch item (raw TTLV), the state changes it made, and the new
    ID Placeholder if the operation set one."""

    batch_item: bytes
    changes: tuple[StateChange, ...] = ()
    placeholder: str | None = None

    def __repr__(self) -> str:
        return (
            f"ExecuteResult(<{len(self.batch_item)} bytes>, changes={self.changes!r}, "
            f"placeholder={self.placeholder!r})"
        )
