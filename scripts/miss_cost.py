#!/usr/bin/env python3
"""What a cache hit and a cache miss cost the gateway, with no sockets.

    .venv/bin/python scripts/miss_cost.py [--keys 5000]

A SQLite vault in a temporary folder, a key ring with a test L3 and the
gateway's dispatcher: the time of ``Dispatcher.answer_now`` for a plain Get
whose record is cached (the hot path), then, on the vault reopened cold each
time, a miss read by ``Vault.get`` on the caller's thread, by
``Vault.read_through`` one at a time, and by ``read_through`` with 16
waiting together (as 16 connections missing at once would).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import timeit
from collections.abc import Callable, Coroutine
from pathlib import Path

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import SecretBytes
from krypton.gateway.engine.dispatch import Dispatcher, Session
from krypton.gateway.engine.services import Services
from krypton.kmip import client_messages as cm
from krypton.kmip.versions import ProtocolVersion
from krypton.model import KeyRecord, new_uid
from krypton.model.grant import Grant
from krypton.ttlv.codec import decode, encode
from krypton.vault.sqlite import Vault

V14 = ProtocolVersion(1, 4)
SESSION = Session("spiffe://t/demo", Grant("demo", None), 1)


def _ring() -> KeyRing:
    ring = KeyRing()
    ring.install("demo", 1, SecretBytes.adopt(bytearray(range(32))), L3State.ACTIVE,
                 ring.lease_deadline(3600))  # fmt: skip
    return ring


def hit(folder: Path, ring: KeyRing) -> float:
    """Seconds per cached plain Get answered by ``answer_now`` (best of 7)."""
    vault = Vault.open(folder / "hit.db", sealer=ring.record_mac)
    try:
        dispatcher = Dispatcher(Services(store=vault, keyring=ring))
        create = encode(cm.request_message(V14, [cm.create_item(V14, cm.aes_attributes(256))]))
        item = cm.parse_response(decode(asyncio.run(dispatcher.handle(create, SESSION)))).items[0]
        assert item.payload is not None
        frame = encode(cm.request_message(V14, [cm.get_item(cm.unique_identifier(item.payload))]))
        assert dispatcher.answer_now(frame, SESSION) is not None
        n = 20_000
        return min(timeit.repeat(lambda: dispatcher.answer_now(frame, SESSION), number=n,
                                 repeat=7)) / n  # fmt: skip
    finally:
        vault.close()


def misses(folder: Path, ring: KeyRing, keys: int) -> dict[str, float]:
    """Seconds per miss, each way (best of 3, a cold vault each time)."""
    path = folder / "miss.db"
    vault = Vault.open(path, sealer=ring.record_mac)
    records = [KeyRecord(uid=new_uid(), tenant="demo", object_type=2, algorithm=3, length=256,
                         state=1, l3_version=1, wrapped=os.urandom(60)) for _ in range(keys)]
    asyncio.run(vault.put_many(records))
    vault.close()
    uids = [r.uid for r in records]

    def timed(read: Callable[[Vault], Coroutine[None, None, None]]) -> float:
        best = float("inf")
        for _ in range(3):
            cold = Vault.open(path, sealer=ring.record_mac)
            began = time.perf_counter()
            asyncio.run(read(cold))
            best = min(best, time.perf_counter() - began)
            cold.close()
        return best / len(uids)

    async def sync(v: Vault) -> None:
        for uid in uids:
            v.get(uid)

    async def one_by_one(v: Vault) -> None:
        for uid in uids:
            await v.read_through(uid)

    async def sixteen(v: Vault) -> None:
        async def one(i: int) -> None:
            for uid in uids[i::16]:
                await v.read_through(uid)

        await asyncio.gather(*(one(i) for i in range(16)))

    return {"get (caller's thread)": timed(sync), "read_through, one at a time":
            timed(one_by_one), "read_through, 16 waiting": timed(sixteen)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=5000)
    args = parser.parse_args()
    ring = _ring()
    with tempfile.TemporaryDirectory() as folder:
        print(f"answer_now, cached plain Get      {hit(Path(folder), ring) * 1e6:8.1f} µs")
        for name, seconds in misses(Path(folder), ring, args.keys).items():
            print(f"miss: {name:28} {seconds * 1e6:8.1f} µs")


if __name__ == "__main__":
    main()
