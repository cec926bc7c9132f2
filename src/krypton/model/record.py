"""The key record: one wrapped L4 key with its metadata, as the gateway vault
stores it and the uplink carries it. Never plaintext."""

from __future__ import annotations

import struct
import time
import uuid
from dataclasses import dataclass, field

from krypton.ttlv.enums import State

# The one definition of "destroyed": a key in either state is never served again.
DESTROYED_STATES = frozenset((State.DESTROYED, State.DESTROYED_COMPROMISED))


def new_uid() -> str:
    """A fresh unique identifier for an L4 key (random UUID, from os.urandom)."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True, repr=False)
class KeyRecord:
    """A wrapped L4 key with its metadata. Never holds plaintext key material:
    ``wrapped`` is the L3 blob, ``attributes`` an opaque TTLV blob of the
    client's attributes (no key material)."""

    uid: str
    tenant: str
    object_type: int
    algorithm: int
    length: int
    state: int
    l3_version: int
    wrapped: bytes
    attributes: bytes = b""
    created: int = field(default_factory=lambda: int(time.time()))
    synced: bool = False
    # HMAC-SHA256 of authenticated_bytes(self) under the key derived from the
    # record's L3 version (krypton.crypto.wrap.WrappingKey.mac); b"" = not yet.
    mac: bytes = b""

    def __repr__(self) -> str:
        return (
            f"KeyRecord(uid={self.uid!r}, tenant={self.tenant!r}, "
            f"object_type={self.object_type}, algorithm={self.algorithm}, "
            f"length={self.length}, state={self.state}, l3_version={self.l3_version}, "
            f"wrapped=<{len(self.wrapped)} bytes>, attributes=<{len(self.attributes)} bytes>, "
            f"created={self.created}, synced={self.synced}, mac=<{len(self.mac)} bytes>)"
        )


_FIXED = struct.Struct(">Bqqqqq4I")
RECORD_MAC_V1 = 1


def authenticated_bytes(r: KeyRecord) -> bytes:
    """What a record's MAC covers: every column but ``created``, ``synced`` and the
    MAC itself — uid, tenant, object type, algorithm, length, state, L3 version,
    the wrapped blob and the whole attribute blob (usage mask, Sensitive,
    Extractable, dates, ...). Fixed-width numbers and the four lengths first,
    then the four byte strings, so no two records encode alike."""
    uid = r.uid.encode()
    tenant = r.tenant.encode()
    head = _FIXED.pack(
        RECORD_MAC_V1, r.object_type, r.algorithm, r.length, r.state, r.l3_version,
        len(uid), len(tenant), len(r.wrapped), len(r.attributes),
    )  # fmt: skip
    return b"".join((head, uid, tenant, r.wrapped, r.attributes))
