"""How ``vault-v2.db`` was made: run with the code of main before records were
authenticated (schema v2, commit 12fa364), e.g.

    PYTHONPATH=/path/to/main/src python tests/data/make_vault_v2.py tests/data/vault-v2.db

One Sensitive and one plain AES-256 key of tenant ``demo``, wrapped under the
test-only L3 ``bytes(range(32))`` (version 1), created through the gateway
dispatcher; then the WAL is folded into the file. Not a test; kept so the
fixture can be made again and checked.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import SecretBytes
from krypton.gateway.engine.dispatch import Dispatcher, Session
from krypton.gateway.engine.services import Services
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute
from krypton.kmip.versions import ProtocolVersion
from krypton.model.grant import Grant
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag
from krypton.vault.sqlite import Vault


def main(out: Path) -> None:
    v14 = ProtocolVersion(1, 4)
    loop = asyncio.new_event_loop()
    vault = Vault.open(out)
    ring = KeyRing()
    material = SecretBytes.adopt(bytearray(range(32)))
    ring.install("demo", 1, material, L3State.ACTIVE, ring.lease_deadline(3600))
    d = Dispatcher(Services(store=vault, keyring=ring), fast=False, clock=lambda: 1_700_000_000)
    session = Session("spiffe://t/demo", Grant("demo", None), 1)
    for extra in ([Attribute("Sensitive", Item.boolean(Tag.SENSITIVE, True))], []):
        msg = encode(
            cm.request_message(v14, [cm.create_item(v14, [*cm.aes_attributes(256), *extra])])
        )
        r = cm.parse_response(decode(loop.run_until_complete(d.handle(msg, session))))
        assert r.items[0].payload is not None
        print(cm.unique_identifier(r.items[0].payload))
    vault.close()
    db = sqlite3.connect(out)
    for pragma in ("PRAGMA wal_checkpoint(TRUNCATE)", "PRAGMA journal_mode=DELETE", "VACUUM"):
        db.execute(pragma)
    db.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
