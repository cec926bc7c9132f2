"""The key record: one wrapped L4 key with its metadata, as the gateway vault
stores it and the uplink carries it. Never plaintext.

The Core's registry holds the same key as an
:class:`~krypton.model.registry.ObjectRecord` (with the Core's own fields:
origin, Locate indexes, revision). The two conversions between them are
:meth:`KeyRecord.from_object` and :meth:`KeyRecord.to_object`, and nothing
else converts one into the other.

**Absent values.** A ``KeyRecord`` has no ``None``: an algorithm, length or
L3 version that is not known is ``0`` (no KMIP algorithm, length or L3
version is 0), and a key without material (destroyed) has ``wrapped == b""``,
as the vault's columns and the uplink's protobuf fields store them. An
``ObjectRecord`` says the same with ``None``. So ``0 ⇔ None`` for
``algorithm``, ``length`` and ``l3_version`` and ``b"" ⇔ None`` for
``wrapped``/``sealed`` and ``mac``, in both directions; both round trips are lossless for
the fields the two records share.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field

from krypton.model.registry import ObjectRecord
from krypton.ttlv.enums import State

# The one definition of "destroyed": a key in either state is never served again.
DESTROYED_STATES = frozenset((State.DESTROYED, State.DESTROYED_COMPROMISED))


def uuid7(unix_ms: int, random: bytes) -> str:
    """The UUID version 7 (RFC 9562 §5.7) of a Unix time in milliseconds and 10
    random bytes (of which 74 bits are used), in its canonical text form."""
    if not 0 <= unix_ms < 1 << 48 or len(random) != 10:
        raise ValueError("uuid7: a 48-bit millisecond time and 10 random bytes")
    r = int.from_bytes(random, "big")
    rand_a, rand_b = (r >> 62) & 0xFFF, r & ((1 << 62) - 1)
    h = f"{unix_ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_uid() -> str:
    """A fresh unique identifier for a managed object: a UUID version 7, the time
    in milliseconds then 74 random bits (os.urandom). Time-ordered, so every
    index on the uid (the vault's primary key; the registry's ``uid UNIQUE``
    and re-wrap order) grows at its right edge instead of at a random page:
    an insert costs the same at a million keys as at none, and a batch of
    Creates dirties a few index pages rather than one per key. The uid tells
    anyone who sees it when the object was made, to the millisecond, as the
    object's creation date does to a client allowed to read it."""
    return uuid7(time.time_ns() // 1_000_000, os.urandom(10))


def _none_if_absent(value: int) -> int | None:
    return value or None


@dataclass(frozen=True, slots=True, repr=False)
class KeyRecord:
    """A wrapped L4 key with its metadata. Never holds plaintext key material:
    ``wrapped`` is the L3 blob, ``attributes`` an opaque TTLV blob of the
    client's attributes (no key material). ``synced`` is the vault's outbox
    flag: False until the Core has acknowledged the record.

    Absent values are ``0`` and ``b""``, never None (see the module docstring)."""

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

    @classmethod
    def from_object(cls, rec: ObjectRecord, *, synced: bool = True) -> KeyRecord:
        """The registry's object as a gateway holds it (the Core has it: synced)."""
        return cls(
            uid=rec.uid,
            tenant=rec.tenant,
            object_type=rec.object_type,
            algorithm=rec.algorithm or 0,
            length=rec.length or 0,
            state=rec.state,
            l3_version=rec.l3_version or 0,
            wrapped=rec.sealed or b"",
            attributes=rec.attributes,
            created=rec.created,
            synced=synced,
            mac=rec.mac or b"",
        )

    def to_object(
        self,
        *,
        origin: str,
        names: tuple[str, ...] = (),
        groups: tuple[str, ...] = (),
        custom: tuple[tuple[str, str], ...] = (),
    ) -> ObjectRecord:
        """This record as the registry stores it: ``origin`` is the gateway that made
        it; ``names``, ``groups`` and ``custom`` are the Locate indexes of its
        attributes (the Core computes them)."""
        return ObjectRecord(
            uid=self.uid,
            tenant=self.tenant,
            object_type=self.object_type,
            state=self.state,
            created=self.created,
            algorithm=_none_if_absent(self.algorithm),
            length=_none_if_absent(self.length),
            l3_version=_none_if_absent(self.l3_version),
            sealed=self.wrapped or None,
            attributes=self.attributes,
            origin=origin,
            names=names,
            groups=groups,
            custom=custom,
            mac=self.mac or None,
        )

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
