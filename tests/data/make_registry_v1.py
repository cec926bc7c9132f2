"""How ``registry-v1.db`` was made: run with the code of integ before registry
records were authenticated (registry schema v1, commit a724528), from the root
of a checkout of that commit, e.g.

    PYTHONPATH=src:. python /path/to/tests/data/make_registry_v1.py registry-v1.db

Tenant ``demo``, the test-only L3 ``bytes(range(32))`` (version 1). Two
objects: a Sensitive AES-256 key registered at the Core (material
``bytes(range(100, 132))``) through the Core's control handlers, and a key
stored as SyncKeys stores a gateway's record (material
``bytes(range(200, 232))``, state Active). Then the WAL is folded into the
file. Not a test; kept so the fixture can be made again and checked. The uids
are printed (``registered synced``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

from tests.helpers.control_env import Env

from krypton.core.engine.objects import CoreServices, KeyRingSealer
from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import SecretBytes
from krypton.kmip.attributes import Attribute
from krypton.model.record import KeyRecord
from krypton.registry import open_registry
from krypton.ttlv.enums import CryptographicAlgorithm, ObjectType, State
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

L3 = bytes(range(32))
REGISTERED = bytes(range(100, 132))
SYNCED = bytes(range(200, 232))


def main(out: Path) -> None:
    loop = asyncio.new_event_loop()
    registry = loop.run_until_complete(open_registry(f"sqlite:{out}"))
    ring = KeyRing()
    ring.install("demo", 1, SecretBytes(L3), L3State.ACTIVE, ring.lease_deadline(3600))
    env = Env(loop, CoreServices(registry=registry, sealer=KeyRingSealer(ring)), out, ring)
    env.now = 1_700_000_000
    sensitive = Attribute("Sensitive", Item.boolean(Tag.SENSITIVE, True))
    registered = env.register_key([sensitive], key=REGISTERED)
    uid = "synced-by-gw-dev"
    version, wrapped = ring.wrap("demo", uid, SecretBytes(SYNCED))
    record = KeyRecord(
        uid=uid, tenant="demo", object_type=ObjectType.SYMMETRIC_KEY,
        algorithm=CryptographicAlgorithm.AES, length=256, state=State.ACTIVE,
        l3_version=version, wrapped=wrapped, attributes=b"", created=1_700_000_000,
    )  # fmt: skip
    loop.run_until_complete(registry.put_objects([record.to_object(origin="gw-dev")]))
    loop.run_until_complete(registry.close())
    loop.close()
    print(registered, uid)
    db = sqlite3.connect(out)
    for pragma in ("PRAGMA wal_checkpoint(TRUNCATE)", "PRAGMA journal_mode=DELETE", "VACUUM"):
        db.execute(pragma)
    db.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
