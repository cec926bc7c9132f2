"""Issue 11, authenticated records at the Core: a key's record changed in the
Core's registry database is refused, with Cryptographic Failure, to a gateway
that asks for it (``FetchKey``), never served; the Core's log names the uid.

A real ``krypton core`` and two ``krypton gateway`` processes over real mTLS
and gRPC (``start_cluster``). Sensitive keys are made at gateway A (and synced
to the Core); once the registry holds them, one covered column of each row is
changed in the registry's SQLite file (one flipped bit where the column allows
it); gateway B, which has never held them, must refuse every Get. A key left
alone still reads at B.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from tests.helpers.cluster import one, wait_for
from tests.helpers.fixtures import Clusters

from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.enums import KeyFormatType, Operation, ResultReason, ResultStatus
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

A, B = "gw-dev", "gw-b"
V14 = ProtocolVersion(1, 4)
SOON = 10.0
SENSITIVE = Attribute("Sensitive", Item.boolean(Tag.SENSITIVE, True))
SENSITIVE_TRUE = bytes.fromhex("42012006000000080000000000000001")


def _flip_sensitive(blob: bytes) -> bytes:
    at = blob.index(SENSITIVE_TRUE) + len(SENSITIVE_TRUE) - 1
    return blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]  # True -> False


def _flip_last(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 1])


# column -> how to change it (the old value in, the new value out)
TAMPER: dict[str, Callable[[Any], Any]] = {
    "attributes": lambda v: _flip_sensitive(bytes(v)),
    "state": lambda v: v ^ 3,  # Pre-Active -> Active
    "sealed": lambda v: _flip_last(bytes(v)),
    "length": lambda v: v ^ 128,
    "algorithm": lambda v: v ^ 1,
}


def test_a_record_tampered_in_the_registry_is_refused_to_another_gateway(
    start_cluster: Clusters,
) -> None:
    cluster = start_cluster(gateways=(A, B))
    with cluster.client(A, version=V14) as a:
        made = a.call_ok(
            [cm.create_item(V14, [*cm.aes_attributes(256), SENSITIVE]) for _ in TAMPER]
        )
        uids = [cm.unique_identifier(i.payload) for i in made.items]  # type: ignore[arg-type]
        control = a.create(256)
        key = a.get(control)
    everything = {*uids, control}
    wait_for(
        "the registry holding A's keys",
        lambda: cluster.registry_holds("demo", sorted(everything)) == everything or None,
        SOON,
        0.05,
    )

    db = sqlite3.connect(cluster.root / "core.db", timeout=10.0)
    try:
        with db:
            for uid, column in zip(uids, TAMPER, strict=True):
                sql = f"SELECT {column} FROM objects WHERE uid = ?"
                (value,) = db.execute(sql, (uid,)).fetchone()
                db.execute(
                    f"UPDATE objects SET {column} = ? WHERE uid = ?",
                    (TAMPER[column](value), uid),
                )
    finally:
        db.close()

    with cluster.client(B, version=V14) as b:
        assert b.get(control) == key  # an untouched record is fetched and served
        for uid, column in zip(uids, TAMPER, strict=True):
            for fmt in (None, KeyFormatType.RAW):
                children = [Item.text(Tag.UNIQUE_IDENTIFIER, uid)]
                if fmt is not None:
                    children.append(Item.enum(Tag.KEY_FORMAT_TYPE, fmt))
                answer = one(b, cm.batch_item(Operation.GET, cm.payload(*children)))
                assert answer.status is ResultStatus.OPERATION_FAILED, (column, answer)
                assert answer.reason is ResultReason.CRYPTOGRAPHIC_FAILURE, (column, answer)
                assert answer.payload is None
    assert cluster.core is not None
    log = cluster.core.log()
    for uid in uids:
        assert uid in log, f"the Core's log does not name {uid}"
    audited = cluster.core_cli("audit", "--tenant", "demo")
    assert "CRYPTOGRAPHIC_FAILURE" in audited
