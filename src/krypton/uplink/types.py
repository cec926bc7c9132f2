"""What travels on the uplink, as the rest of Krypton sees it: frozen dataclasses,
never protobuf objects (those stay inside :mod:`krypton.uplink.convert`).

A wrapped L4 key travels as the model's :class:`krypton.model.record.KeyRecord`
(the record the gateway vault stores); its ``synced`` flag does not travel.

An L3 key pushed by the Core is a :class:`krypton.crypto.keyring.L3Grant`: its
material is a wipeable :class:`~krypton.crypto.secret.SecretBytes` from the
moment it leaves the protobuf message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from krypton.crypto.keyring import L3Grant
from krypton.model.registry import StateChange

__all__ = [
    "ConnectionState",
    "CoreEvent",
    "ExecuteRequest",
    "ExecuteResult",
    "Heartbeat",
    "L3Versions",
    "Liveness",
    "StateChange",
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
    """Sent by the Core after each stream's initial snapshot and when a stream is quiet.

    The first one of a stream carries ``feed_seq``, the change-feed position
    the Core replayed through, and ``reconcile`` when the gateway's position
    was older than the feed the Core keeps."""

    time_ms: int
    feed_seq: int = 0
    reconcile: bool = False

    @classmethod
    def now(cls, feed_seq: int = 0, *, reconcile: bool = False) -> Heartbeat:
        return cls(time.time_ns() // 1_000_000, feed_seq, reconcile)


@dataclass(frozen=True, slots=True)
class L3Versions:
    """Every usable L3 version of a tenant (end of a snapshot): drop any other."""

    tenant: str
    versions: frozenset[int]


CoreEvent = L3Grant | L3Versions | StateChange | Heartbeat


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
