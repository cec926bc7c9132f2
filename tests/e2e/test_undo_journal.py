"""Issue 13, finding 8: an Undo batch never says "undone" when nothing was, and
journal tokens never collide — against real processes.

* A Core that keeps no journal (``undo_journal_batches = 0``, the same as a
  journal evicted or expired before the batch ended): the Activate the Core did
  is answered as a failure saying it was NOT undone, and the key stays Active
  (before: "Operation Undone" while the key stayed Active).
* ``krypton dev --workers 2``: the two gateway processes share one identity and
  number their requests alike; concurrent Undo batches through both must each
  undo exactly their own key (before: with journals named by the request id,
  keys answered "Operation Undone" stayed Active in the Core's registry).
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

from tests.helpers.fixtures import Clusters, DevStacks

from krypton.client.sync import KmipClient, tls_context
from krypton.kmip import client_messages as cm
from krypton.kmip.messages import ResponseItem
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import (
    BatchErrorContinuationOption,
    CryptographicUsageMask,
    Operation,
    ResultReason,
    ResultStatus,
    State,
)
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

V21 = ProtocolVersion(2, 1)
E, D = CryptographicUsageMask.ENCRYPT, CryptographicUsageMask.DECRYPT
S = ResultStatus


def _uid(u: str) -> Item:
    return Item.text(Tag.UNIQUE_IDENTIFIER, u)


def _undo_batch(c: KmipClient, items: list[Item]) -> list[ResponseItem]:
    message = cm.request_message(V21, items, continuation=BatchErrorContinuationOption.UNDO)
    return list(cm.parse_response(decode(c.roundtrip(encode(message)))).items)


def _activate_then_fail(c: KmipClient, key: str) -> list[ResponseItem]:
    """Activate ``key`` (at the Core, journaled), then an item that fails."""
    check = cm.batch_item(
        Operation.CHECK,
        cm.payload(_uid(key), Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, D)),
    )
    return _undo_batch(c, [cm.batch_item(Operation.ACTIVATE, cm.payload(_uid(key))), check])


def _encrypt_only_key(c: KmipClient) -> str:
    [answer] = c.call_ok([cm.create_item(V21, cm.aes_attributes(128, usage=E))]).items
    assert answer.payload is not None
    return cm.unique_identifier(answer.payload)


def _state(c: KmipClient, key: str) -> int:
    r = c.call_ok([cm.batch_item(Operation.GET_ATTRIBUTES, cm.payload(_uid(key)))])
    assert r.items[0].payload is not None
    attrs = r.items[0].payload.find(Tag.ATTRIBUTES)  # 2.x: the Attributes structure
    found = attrs.find(Tag.STATE) if attrs is not None else None
    assert found is not None and isinstance(found.value, int)
    return found.value


def test_an_undo_without_its_journal_says_nothing_was_undone(start_cluster: Clusters) -> None:
    cluster = start_cluster(core_env={"KRYPTON_CORE_UNDO_JOURNAL_BATCHES": "0"})
    with cluster.client(next(iter(cluster.gateways)), version=V21) as c:
        key = _encrypt_only_key(c)
        activate, check = _activate_then_fail(c, key)
        assert check.status is S.OPERATION_FAILED
        assert activate.status is S.OPERATION_FAILED, "claimed undone"
        assert activate.reason is ResultReason.GENERAL_FAILURE
        assert activate.operation == Operation.ACTIVATE
        assert "NOT undone" in (activate.message or "")
        assert "journal is gone" in (activate.message or "")
        assert _state(c, key) == State.ACTIVE  # what the answer says is what happened


def test_concurrent_undo_batches_on_two_workers_undo_only_their_own(
    start_dev: DevStacks,
) -> None:
    srv = start_dev(args=("--workers", "2"))
    ctx = tls_context(srv.pki / "ca.pem", srv.pki / "client.pem", srv.pki / "client-key.pem")

    def client() -> KmipClient:
        return KmipClient(srv.host, srv.port, ctx, version=V21, timeout=10.0).connect()

    with client() as c:
        keys = [_encrypt_only_key(c) for _ in range(48)]

    def run(key: str) -> list[ResultStatus]:
        with client() as c:  # a new connection: either worker, request ids alike
            return [a.status for a in _activate_then_fail(c, key)]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(run, keys))
    assert answers == [[S.OPERATION_UNDONE, S.OPERATION_FAILED]] * len(keys)
    # What the Core did is in its registry (the record of truth; each worker's vault
    # copy follows from the change feed).
    db = sqlite3.connect(f"file:{srv.layout.root / 'core.db'}?mode=ro", uri=True)
    try:
        rows = dict(db.execute("SELECT uid, state FROM objects WHERE tenant = 'demo'"))
    finally:
        db.close()
    active = [k for k in keys if rows[k] != State.PRE_ACTIVE]
    assert active == [], f"{len(active)} of {len(keys)} keys said undone stayed Active"
