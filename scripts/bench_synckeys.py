#!/usr/bin/env python3
"""The Core's SyncKeys handler alone: CPU per synced key, in process.

    .venv/bin/python scripts/bench_synckeys.py --keys 20000
    .venv/bin/python scripts/bench_synckeys.py --keys 20000 --registry postgresql://...
    .venv/bin/python scripts/bench_synckeys.py --keys 20000 --profile 25   # cProfile, top 25

Builds the Core's objects as ``krypton core`` does (a real registry, SQLite in a
temp dir unless ``--registry``; a real key store, key ring and
:class:`~krypton.core.records.AuthenticatedRegistry`) and feeds
``CoreService.sync_keys`` batches of ``--batch`` records shaped like the ones a
gateway's Create fast path makes (the same attribute blob, wrapped material
and record MAC), as a gateway's outbox drain sends them. Prints keys/s and the
process CPU per key (the handler, the registry writes and the audit record).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import os
import pstats
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from krypton.core.engine.objects import CoreServices, KeyRingSealer
from krypton.core.keystore import CoreKeyStore
from krypton.core.records import AuthenticatedRegistry
from krypton.core.service import CoreService
from krypton.crypto.keyring import KeyRing
from krypton.crypto.secret import SecretBytes
from krypton.gateway.fast.fastcreate import _attributes  # the blob a plain Create stores
from krypton.model.record import KeyRecord, authenticated_bytes, new_uid
from krypton.registry import open_registry

TENANT = "demo"


def records(ring: KeyRing, version: int, n: int) -> list[KeyRecord]:
    now = int(time.time())
    out = []
    for _ in range(n):
        attrs = _attributes(12, hashlib.sha256(os.urandom(32)).digest(), now)
        rec = KeyRecord(new_uid(), TENANT, 2, 3, 256, 1, version, os.urandom(60), attrs, now)
        out.append(replace(rec, mac=ring.record_mac(TENANT, version, authenticated_bytes(rec))))
    return out


async def run(url: str, keys: int, batch: int, profile: int) -> None:
    registry = await open_registry(url)
    store = await CoreKeyStore.open(registry, SecretBytes(bytes(range(32))), create=True)
    await store.ensure_tenant(TENANT)
    ring = KeyRing()
    for grant in await store.grants([TENANT], 3600):
        ring.install(grant.tenant, grant.version, grant.material, grant.state,
                     ring.lease_deadline(3600))  # fmt: skip
    objects = AuthenticatedRegistry(registry, ring.record_mac)
    service = CoreService(objects, store, CoreServices(registry=objects,
                                                      sealer=KeyRingSealer(ring)),
                          lease_seconds=3600, mac_key=ring.record_mac)  # fmt: skip
    version = ring.active_version(TENANT)
    assert version is not None
    work = records(ring, version, keys)
    batches = [work[i : i + batch] for i in range(0, len(work), batch)]
    await service.sync_keys("gw", batches.pop(0))  # warm up
    done = batch
    prof = cProfile.Profile() if profile else None
    wall, cpu = time.perf_counter(), time.process_time()
    if prof is not None:
        prof.enable()
    for b in batches:
        done += len(await service.sync_keys("gw", b))
    if prof is not None:
        prof.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = keys - batch
    print(f"{n:,} keys in {len(batches)} SyncKeys of {batch}: {n / wall:,.0f} keys/s, "
          f"{cpu / n * 1e6:.1f} µs CPU per key ({url.split(':', 1)[0]})")
    assert done == keys
    await registry.close()
    if prof is not None:
        pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(profile)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--registry", default=None, help="PostgreSQL URL (default: SQLite)")
    ap.add_argument("--profile", type=int, default=0, help="print the top N of a cProfile")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.registry or f"sqlite:{Path(tmp) / 'registry.db'}"
        asyncio.run(run(url, args.keys, args.batch, args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
