"""What the fast-path tests share: one-item request messages and mutations of them,
and twin dispatchers (with and without the fast paths) to hold them to the same bytes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import generate_key
from krypton.gateway.engine.dispatch import Dispatcher, Session
from krypton.gateway.engine.services import Services
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute, attributes_v2, to_v1
from krypton.kmip.versions import ProtocolVersion
from krypton.model import KeyRecord
from krypton.model.grant import Grant
from krypton.ttlv.codec import encode
from krypton.ttlv.enums import CryptographicAlgorithm, ObjectType, Operation
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.vault.sqlite import Vault

NOW = 1_790_000_000
V14 = ProtocolVersion(1, 4)
V21 = ProtocolVersion(2, 1)


def single(
    version: ProtocolVersion,
    item: Item,
    *,
    max_response_size: int | None = None,
    time_stamp: bool = False,
    batch_count: int = 1,
) -> bytes:
    """A request message of one batch item (the header's Time Stamp a little before NOW)."""
    return encode(
        cm.request_message(
            version,
            [item],
            max_response_size=max_response_size,
            time_stamp=NOW - 5 if time_stamp else None,
            batch_count=batch_count,
        )
    )


def mutate(data: st.DataObject, frame: bytes) -> bytes | None:
    """``frame`` with 1-3 bit flips, overwrites, cuts or insertions anywhere;
    None when a cut leaves nothing."""
    base = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "byte", "cut", "grow"]))
        at = data.draw(st.integers(0, len(base) - 1))
        if kind == "flip":
            base[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "byte":
            base[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del base[at:]
        else:
            base[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not base:
            return None
    return bytes(base)


# -- twin dispatchers ------------------------------------------------------------
@dataclasses.dataclass
class Twins:
    """Two dispatchers, one with the fast paths and one without, each over its own
    vault, sharing a key ring and a fixed clock; for each request both are given
    the same identifier and the same "entropy" (``os.urandom`` replaced by a
    seeded stream while a request runs, so the key and the wrap nonce repeat).
    ``generic``: how many messages the fast dispatcher left to its generic path."""

    fast: Dispatcher
    slow: Dispatcher
    fast_vault: Vault
    slow_vault: Vault
    loop: asyncio.AbstractEventLoop
    serial: Iterator[int]
    uid: str = ""
    generic: int = 0

    def both(
        self, frame: bytes, session: Session, monkeypatch: pytest.MonkeyPatch
    ) -> tuple[bytes, bytes, KeyRecord | None, KeyRecord | None]:
        """Each dispatcher's answer and the record it stored under this request's uid."""
        self.uid = f"key-{next(self.serial)}"
        out = []
        for dispatcher in (self.fast, self.slow):
            stream = random.Random(self.uid)
            monkeypatch.setattr(os, "urandom", stream.randbytes)
            try:
                out.append(self.loop.run_until_complete(dispatcher.handle(frame, session)))
            finally:
                monkeypatch.undo()
        return out[0], out[1], self.fast_vault.get(self.uid), self.slow_vault.get(self.uid)


def session(tenant: str = "demo", operations: frozenset[int] | None = None) -> Session:
    return Session(f"spiffe://t/{tenant}", Grant(tenant, operations), 1)


@contextlib.contextmanager
def twins(root: Path) -> Iterator[Twins]:
    """:class:`Twins` with vaults in ``root`` and an L3 for tenant ``demo`` only."""
    loop = asyncio.new_event_loop()
    ring = KeyRing()
    ring.install("demo", 1, generate_key(256), L3State.ACTIVE, ring.lease_deadline(3600))
    fast_vault = Vault.open(root / "fast.db", sealer=ring.record_mac)
    slow_vault = Vault.open(root / "slow.db", sealer=ring.record_mac)
    holder: list[Twins] = []

    def next_uid() -> str:
        return holder[0].uid

    fast = Dispatcher(Services(store=fast_vault, keyring=ring, new_uid=next_uid), clock=lambda: NOW)
    slow = Dispatcher(
        Services(store=slow_vault, keyring=ring, new_uid=next_uid), fast=False, clock=lambda: NOW
    )
    generic = fast._generic

    async def counted(*args: Any, **kwargs: Any) -> bytes:
        holder[0].generic += 1
        return await generic(*args, **kwargs)

    fast._generic = counted  # type: ignore[method-assign]
    holder.append(Twins(fast, slow, fast_vault, slow_vault, loop, itertools.count()))
    try:
        yield holder[0]
    finally:
        fast_vault.close()
        slow_vault.close()
        loop.close()


def aes_attrs(
    length: int, usage: bool, algorithm: int = CryptographicAlgorithm.AES
) -> list[Attribute]:
    """Algorithm and Length (and the Usage Mask if ``usage``) of a Create."""
    attrs = cm.aes_attributes(length)
    attrs[0] = Attribute(
        "Cryptographic Algorithm", Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, algorithm)
    )
    return attrs if usage else attrs[:2]


def create_item(
    attrs: list[Attribute],
    *,
    version: ProtocolVersion = V14,
    batch_id: bytes | None = None,
    dialect: str | None = None,  # force "v1" (Template-Attribute) or "v2" (Attributes)
    object_type: int = ObjectType.SYMMETRIC_KEY,
) -> Item:
    dialect = dialect or ("v2" if version.v2 else "v1")
    if dialect == "v2":
        body = attributes_v2(attrs)
    else:
        body = Item(Tag.TEMPLATE_ATTRIBUTE, ItemType.STRUCTURE, tuple(to_v1(a) for a in attrs))
    return cm.batch_item(
        Operation.CREATE, cm.payload(Item.enum(Tag.OBJECT_TYPE, object_type), body), batch_id
    )


def create_request(
    attrs: list[Attribute],
    *,
    version: ProtocolVersion = V14,
    batch_id: bytes | None = None,
    max_response_size: int | None = None,
    time_stamp: bool = False,
    dialect: str | None = None,
    object_type: int = ObjectType.SYMMETRIC_KEY,
    batch_count: int = 1,
) -> bytes:
    item = create_item(
        attrs, version=version, batch_id=batch_id, dialect=dialect, object_type=object_type
    )
    return single(
        version,
        item,
        max_response_size=max_response_size,
        time_stamp=time_stamp,
        batch_count=batch_count,
    )

