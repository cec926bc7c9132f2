"""Issue 16, the Core's SyncKeys ingest: what it saves and what it keeps.

Each synced record's MAC is computed once (the check) and stored as it came;
its attribute blob is decoded only when it holds something the Locate
indexes need. The security properties stay: a record with a wrong or missing
MAC is refused and nothing of its batch is stored, the stored MAC
authenticates the stored row (tampering with it afterwards is refused), the
fence still refuses records under a revoked L3 version; the indexes are what
the full parse finds.

Real registries (SQLite and PostgreSQL), a real key store and key ring, the
Core's real ``CoreService``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from tests.helpers.control_env import custom, group, name
from tests.helpers.keystore_env import opened_registry, opened_store
from tests.unit.test_registry_records import SENSITIVE, _flip_sensitive, _sql

from krypton.core.engine.objects import CoreServices, KeyRingSealer, index_fields
from krypton.core.ingest import NO_INDEX, index_of
from krypton.core.keystore import CoreKeyStore
from krypton.core.records import AuthenticatedRegistry, RecordTampered, record_mac
from krypton.core.rotation import revoke
from krypton.core.service import CoreService
from krypton.crypto.keyring import KeyRing
from krypton.errors import InvalidField, InvalidMessage, KryptonError
from krypton.gateway.fast.fastcreate import _attributes
from krypton.kmip.attributes import Attribute, attributes_v2, parse_attributes
from krypton.model.record import KeyRecord, authenticated_bytes
from krypton.model.registry import LocateQuery
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

GW = "spiffe://krypton.dev/gateway/gw"
NOW = 1_760_000_000
PLAIN = _attributes(12, hashlib.sha256(b"k").digest(), NOW)  # what a plain Create stores
INDEXED = encode(attributes_v2([SENSITIVE, name("alpha"), group("blue"), custom("x-Team", "ops")]))


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


@dataclass
class Core:
    service: CoreService
    registry: AuthenticatedRegistry
    ring: KeyRing
    store: CoreKeyStore

    def made(self, uid: str, attrs: bytes = PLAIN, version: int = 1,
             tenant: str = "demo") -> KeyRecord:
        """A record as a gateway's Create makes it, with its MAC."""
        rec = KeyRecord(uid, tenant, 2, 3, 256, 1, version, os.urandom(60), attrs, NOW)
        mac = self.ring.record_mac(tenant, version, authenticated_bytes(rec))
        return dataclasses.replace(rec, mac=mac)


@asynccontextmanager
async def core(url: str) -> AsyncIterator[Core]:
    async with opened_registry(url) as inner, opened_store(inner, os.urandom(32)) as store:
        ring = KeyRing()
        for tenant in ("demo", "other"):
            await store.ensure_tenant(tenant)
        for g in await store.grants(["demo", "other"], 3600):
            ring.install(g.tenant, g.version, g.material, g.state, ring.lease_deadline(3600))
        registry = AuthenticatedRegistry(inner, ring.record_mac)
        service = CoreService(registry, store, CoreServices(registry=registry,
                                                            sealer=KeyRingSealer(ring)),
                              lease_seconds=3600, mac_key=ring.record_mac)  # fmt: skip
        yield Core(service, registry, ring, store)


def test_synced_records_are_stored_with_their_mac_and_indexed(keystore_url: str) -> None:
    async def body() -> None:
        async with core(keystore_url) as c:
            plain, indexed = c.made("k-plain"), c.made("k-named", INDEXED)
            assert await c.service.sync_keys(GW, [plain, indexed]) == ["k-plain", "k-named"]
            for key in (plain, indexed):
                stored = await c.registry.get_object("demo", key.uid)  # its MAC checked
                assert stored is not None
                assert stored.mac == key.mac  # stored as it came ...
                assert record_mac(stored, c.ring.record_mac) == key.mac  # ... and it is right
                assert KeyRecord.from_object(stored, synced=False) == key
                assert stored.origin == GW
            named = await c.registry.get_object("demo", "k-named")
            assert named is not None
            assert (named.names, named.groups, named.custom) == (
                ("alpha",), ("blue",), (("x-Team", "ops"),))
            for query in (LocateQuery("demo", name="alpha"), LocateQuery("demo", group="blue"),
                          LocateQuery("demo", custom=(("x-Team", "ops"),))):
                assert await c.registry.locate(query) == ["k-named"]
            # idempotent: offered again, acknowledged again, stored once
            assert await c.service.sync_keys(GW, [plain]) == ["k-plain"]
            assert c.service.synced_keys == 3

    run(body)


def _flip_last(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 0xFF])


# a synced record, changed after its MAC was made
TAMPERED: dict[str, Callable[[KeyRecord], KeyRecord]] = {
    "attributes": lambda k: dataclasses.replace(k, attributes=_flip_sensitive(k.attributes)),
    "state": lambda k: dataclasses.replace(k, state=2),
    "wrapped": lambda k: dataclasses.replace(k, wrapped=_flip_last(k.wrapped)),
    "tenant": lambda k: dataclasses.replace(k, tenant="other"),
    "no mac": lambda k: dataclasses.replace(k, mac=b""),
    "mac": lambda k: dataclasses.replace(k, mac=bytes(32)),
}


@pytest.mark.parametrize("change", list(TAMPERED))
def test_a_tampered_synced_record_is_refused_with_its_batch(keystore_url: str,
                                                            change: str) -> None:
    async def body() -> None:
        async with core(keystore_url) as c:
            good = c.made("k-good", INDEXED)
            bad = TAMPERED[change](c.made("k-bad", INDEXED))
            with pytest.raises(RecordTampered):
                await c.service.sync_keys(GW, [good, bad])
            for tenant in ("demo", "other"):
                for uid in ("k-good", "k-bad"):
                    assert await c.registry.get_object(tenant, uid) is None
            assert c.service.synced_keys == 0

    run(body)


def test_a_synced_row_changed_in_the_database_is_refused(keystore_url: str) -> None:
    """The MAC stored without being computed again still authenticates the row."""
    async def body() -> None:
        async with core(keystore_url) as c:
            await c.service.sync_keys(GW, [c.made("k-1", INDEXED)])
            assert await c.registry.get_object("demo", "k-1") is not None
            [(blob,)] = _sql(keystore_url, "SELECT attributes FROM objects WHERE uid = ?", "k-1")
            _sql(keystore_url, "UPDATE objects SET attributes = ? WHERE uid = ?",
                 _flip_sensitive(bytes(blob)), "k-1")
            with pytest.raises(RecordTampered):
                await c.registry.get_object("demo", "k-1")

    run(body)


def test_the_fence_still_refuses_records_under_a_revoked_version(keystore_url: str) -> None:
    async def body() -> None:
        async with core(keystore_url) as c:
            # the ring still holds version 1 (as a Core's does until it hears of the
            # revocation): the MAC checks, the fence refuses
            await revoke(c.store, c.registry, "demo", 1, "os-user:alice", sleep=_no_wait)
            fresh = await c.store.grant("demo", 2, 3600)
            assert fresh is not None
            c.ring.install("demo", 2, fresh.material, fresh.state, c.ring.lease_deadline(3600))
            old, new = c.made("k-old", version=1), c.made("k-new", version=2)
            assert await c.service.sync_keys(GW, [old, new]) == ["k-new"]
            assert await c.registry.get_object("demo", "k-old") is None
            assert await c.registry.get_object("demo", "k-new") is not None

    run(body)


async def _no_wait(_: float) -> None:
    return None


# -- the attribute blob: indexed as the full parse does, decoded only when needed ----
def _full(blob: bytes) -> tuple[object, ...]:
    return index_fields(parse_attributes(decode(blob)))


@pytest.mark.parametrize("attrs", [
    [SENSITIVE],
    [SENSITIVE, name("alpha")],
    [group("blue"), SENSITIVE],
    [custom("x-Team", "ops")],
    [name("a"), name("b"), group("g"), custom("y-Zone", "z"), SENSITIVE],
    [Attribute("Cryptographic Length", Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, 256)),
     Attribute("Description", Item.text(Tag.DESCRIPTION, "seven"))],
    [],
])  # fmt: skip
def test_the_index_of_a_blob_is_what_the_full_parse_finds(attrs: list[Attribute]) -> None:
    blob = encode(attributes_v2(attrs))
    assert index_of(blob) == _full(blob)
    assert index_of(PLAIN) == _full(PLAIN) == NO_INDEX
    assert index_of(b"") == NO_INDEX


def _item(tag: int, kind: int, value: bytes) -> bytes:
    """One TTLV item, its value padded to 8 bytes."""
    return struct.pack(">II", tag << 8 | kind, len(value)) + value + bytes(-len(value) % 8)


def _structure(*children: bytes) -> bytes:
    return _item(Tag.ATTRIBUTES, 0x01, b"".join(children))


SENSITIVE_ITEM = _item(Tag.SENSITIVE, 0x06, bytes(7) + b"\x01")
MALFORMED = {
    "short": PLAIN[:-8],
    "long": PLAIN + bytes(8),
    "outer length": PLAIN[:4] + struct.pack(">I", len(PLAIN)) + PLAIN[8:],
    "not a structure": _item(Tag.ATTRIBUTES, 0x07, b"text"),
    "a boolean of 4 bytes": _structure(_item(Tag.SENSITIVE, 0x06, bytes(4))),
    "an unknown type": _structure(_item(Tag.SENSITIVE, 0x0F, bytes(8))),
    "an unknown attribute": _structure(SENSITIVE_ITEM, _item(0x54FFFF, 0x02, bytes(4))),
    "a truncated header": PLAIN[:4] + struct.pack(">I", len(PLAIN) - 4) + PLAIN[8:-4],
}


@pytest.mark.parametrize("what", list(MALFORMED))
def test_a_blob_that_does_not_frame_fails_as_the_full_parse_does(what: str) -> None:
    blob = MALFORMED[what]
    with pytest.raises(KryptonError) as full:
        _full(blob)
    with pytest.raises(type(full.value)):
        index_of(blob)
    assert isinstance(full.value, InvalidMessage | InvalidField)


def test_a_blob_without_indexed_attributes_is_not_decoded() -> None:
    """A stored-only attribute is not even decoded: a Description that is not UTF-8
    (which the full decode refuses) does not stop the record's indexing; the blob is
    stored as MAC'd and checked when an operation decodes it."""
    blob = _structure(SENSITIVE_ITEM, _item(Tag.DESCRIPTION, 0x07, b"\xff\xfe"))
    with pytest.raises(KryptonError):
        _full(blob)
    assert index_of(blob) == NO_INDEX
    # the same bytes beside a Name: decoded, so refused as before
    with pytest.raises(KryptonError):
        index_of(_structure(SENSITIVE_ITEM, _item(Tag.DESCRIPTION, 0x07, b"\xff\xfe"),
                            encode(name("alpha").value)))
