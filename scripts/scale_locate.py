#!/usr/bin/env python3
"""Locate at scale: the Core's Locate handler over a registry holding a million keys.

    .venv/bin/python scripts/scale_locate.py --registry sqlite --db /tmp/scale/registry.db
    .venv/bin/python scripts/scale_locate.py --registry postgresql       # a throw-away server
    .venv/bin/python scripts/scale_locate.py --registry postgresql --url postgresql://...

Fills the registry (once: a file or database that already holds the keys is
reused) with ``--keys`` L4 keys of tenant ``demo`` (symmetric keys, one in
fifty destroyed, one in a hundred a secret of another type) plus a thousand
of tenant ``other``, straight through the registry API
(``Registry.put_objects`` in batches, as ``SyncKeys`` stores them). Then it
runs the Core's own Locate handler (``krypton.core.engine.locate``) in this
process, ``--repeat`` times per request, and prints p50 / p90 and how this
process's resident memory (``VmRSS``, and its peak ``VmHWM``) moved across
the runs:

* ``type+max16 v2.1``: Object Type Symmetric Key, Maximum Items 16 (KMIP 2.1:
  Located Items, the count of every match, is in the answer);
* ``type+max16 v1.2``: the same in KMIP 1.2 (no Located Items);
* ``type+offset+max16``: the same from Offset Items half-way down;
* ``state+max16``: State Active, Maximum Items 16 (KMIP 2.1).

Located Items of these requests is read from the registry's kept counts
(schema v6, ``krypton.registry._counts``); a registry file of an older schema
is migrated when it is opened (the time it took is printed).

``--postgres-root`` / the throw-away server: when ``--registry postgresql`` is
given without ``--url``, a server is started for the run (``tests/helpers/pg.py``,
durability off) and removed at the end, so the keys are loaded every time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.helpers.pg for the throw-away PostgreSQL server

from krypton.core.engine.locate import locate  # noqa: E402
from krypton.core.engine.objects import CoreServices, KeyRingSealer  # noqa: E402
from krypton.crypto.keyring import KeyRing  # noqa: E402
from krypton.kmip.attributes import Attribute, attributes_v2, to_v1  # noqa: E402
from krypton.kmip.versions import ProtocolVersion  # noqa: E402
from krypton.model.context import RequestContext  # noqa: E402
from krypton.model.registry import ObjectRecord, Registry  # noqa: E402
from krypton.registry import open_registry  # noqa: E402
from krypton.ttlv.enums import ObjectType, State  # noqa: E402
from krypton.ttlv.item import Item  # noqa: E402
from krypton.ttlv.tags import Tag  # noqa: E402

V12, V21 = ProtocolVersion(1, 2), ProtocolVersion(2, 1)
BATCH = 5000
OTHERS = 1000


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _objects(start: int, count: int, tenant: str) -> list[ObjectRecord]:
    out = []
    for i in range(start, start + count):
        kind = ObjectType.SECRET_DATA if i % 100 == 7 else ObjectType.SYMMETRIC_KEY
        state = State.DESTROYED if i % 50 == 3 else State.ACTIVE
        out.append(ObjectRecord(
            uid=f"{tenant}-{i:08d}-{os.urandom(8).hex()}", tenant=tenant, object_type=int(kind),
            state=int(state), created=1_700_000_000 + i // 10, algorithm=3, length=256,
            l3_version=1, sealed=None if state == State.DESTROYED else os.urandom(60),
            attributes=os.urandom(180), origin="gw-scale", mac=os.urandom(32),
        ))  # fmt: skip
    return out


async def _count(reg: Registry, tenant: str) -> int:
    from krypton.model.registry import LocateQuery

    return len(await reg.locate(LocateQuery(tenant)))


async def load(reg: Registry, keys: int) -> float:
    """Put the keys (unless they are there already); seconds taken, 0 if reused."""
    if await _count(reg, "other") >= OTHERS:
        return 0.0
    started = time.perf_counter()
    for at in range(0, keys, BATCH):
        await reg.put_objects(_objects(at, min(BATCH, keys - at), "demo"))
        if at % 100_000 == 0:
            print(f"  loaded {at:,} keys", file=sys.stderr)
    await reg.put_objects(_objects(0, OTHERS, "other"))
    return time.perf_counter() - started


def _payload(version: ProtocolVersion, attrs: list[Attribute], *extra: Item) -> Item:
    body = (attributes_v2(attrs),) if version.v2 else tuple(to_v1(a) for a in attrs)
    return Item.structure(Tag.REQUEST_PAYLOAD, *extra, *body)


def requests(keys: int) -> dict[str, tuple[ProtocolVersion, Item]]:
    kind = Attribute("Object Type", Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY))
    active = Attribute("State", Item.enum(Tag.STATE, State.ACTIVE))
    most = Item.integer(Tag.MAXIMUM_ITEMS, 16)
    return {
        "type+max16 v2.1": (V21, _payload(V21, [kind], most)),
        "type+max16 v1.2": (V12, _payload(V12, [kind], most)),
        "type+offset+max16": (
            V21, _payload(V21, [kind], most, Item.integer(Tag.OFFSET_ITEMS, keys // 2))),
        "state+max16": (V21, _payload(V21, [active], most)),
    }


async def measure(reg: Registry, keys: int, repeat: int) -> list[dict[str, Any]]:
    svc = CoreServices(registry=reg, sealer=KeyRingSealer(KeyRing()))
    rows = []
    for label, (version, payload) in requests(keys).items():
        ctx = RequestContext("spiffe://krypton.dev/scale", "demo", version, int(time.time()), "s")
        gc.collect()
        rss0, hwm0 = _kb("VmRSS"), _kb("VmHWM")
        times, found, located = [], 0, None
        for _ in range(repeat):
            started = time.perf_counter()
            outcome = await locate(svc, ctx, payload)
            times.append(time.perf_counter() - started)
            answer = outcome.payload
            assert answer is not None
            found = sum(c.tag == Tag.UNIQUE_IDENTIFIER for c in answer.children)
            count = answer.find(Tag.LOCATED_ITEMS)
            located = None if count is None else count.value
            del outcome
        rows.append({
            "label": label, "p50_ms": statistics.median(times) * 1000,
            "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))] * 1000,
            "rss_mb": (_kb("VmRSS") - rss0) / 1024, "hwm_mb": (_kb("VmHWM") - hwm0) / 1024,
            "found": found, "located": located,
        })  # fmt: skip
    return rows


@contextlib.contextmanager
def _registry_url(args: argparse.Namespace) -> Iterator[str]:
    if args.registry == "sqlite":
        Path(args.db).parent.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:{args.db}"
    elif args.url:
        yield args.url
    else:
        from tests.helpers.pg import postgres_server

        with postgres_server() as server:
            yield server.create_database("scale")


async def main_async(args: argparse.Namespace, url: str) -> None:
    started = time.perf_counter()
    reg = await open_registry(url)
    opened = time.perf_counter() - started
    try:
        took = await load(reg, args.keys)
        print(f"registry {args.registry}: opened (and migrated) in {opened:.2f} s; "
              + (f"{args.keys:,} keys loaded in {took:.1f} s" if took else "keys already there"))
        rows = await measure(reg, args.keys, args.repeat)
    finally:
        await reg.close()
    print(f"{'request':20} {'p50 ms':>9} {'p90 ms':>9} {'RSS +MB':>8} {'peak +MB':>9}"
          f" {'found':>6} {'located':>9}")
    for r in rows:
        located = "-" if r["located"] is None else f"{r['located']:,}"
        print(f"{r['label']:20} {r['p50_ms']:9.2f} {r['p90_ms']:9.2f} {r['rss_mb']:8.1f}"
              f" {r['hwm_mb']:9.1f} {r['found']:6d} {located:>9}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--db", default="/tmp/krypton-scale/registry.db", help="SQLite file")
    ap.add_argument("--url", help="PostgreSQL URL (default: a throw-away server)")
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args(argv)
    with _registry_url(args) as url:
        asyncio.run(main_async(args, url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
