"""Issue 13, finding 8: an Undo batch never says "undone" when nothing was, and
journal tokens never collide — against real processes.

* A Core that keeps no journal (``undo_journal_batches = 0``, the same as a
  journal evicted or expired before the batch ended): the Activate the Core did
  is answered as a failure saying it was NOT undone, and the key stays Active
  (before: "Operation Undone" while the key stayed Active).
* ``krypton dev --workers 2``: the two gateway processes share one identity and
  number their requests alike. Batch A (worker 1) journals an Activate and is
  still running when batch B (worker 2, same request id) succeeds; A then fails
  and must undo its own Activate (before: B's end had dropped the shared
  journal, A answered "Operation Undone" and the key stayed Active at the Core).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def _server_side_owner(c: KmipClient, port: int, pids: list[int]) -> int:
    """The process (of ``pids``) holding the server end of ``c``'s connection."""
    assert c.sock is not None
    mine = c.sock.getsockname()[1]
    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port and int(f[2].split(":")[1], 16) == mine:
            inode = f[9]
    assert inode, "no server end of the connection in /proc/net/tcp"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
    raise AssertionError("no worker holds the connection")


def test_two_workers_alike_requests_never_share_a_journal(start_dev: DevStacks) -> None:
    """Each worker's first connection is its connection 1, and the same requests on
    both give the same request ids. Batch A journals an Activate, then takes a while
    (Locates at the Core); batch B, on the other worker, meanwhile succeeds and ends
    its journal. A's Undo must still find its own journal and undo its Activate
    (before: B's end dropped A's journal, A said "undone" and the key stayed Active)."""
    srv = start_dev(args=("--workers", "2"))
    children = _children(srv.proc.pid)
    ctx = tls_context(srv.pki / "ca.pem", srv.pki / "client.pem", srv.pki / "client-key.pem")
    first: dict[int, KmipClient] = {}  # worker pid -> its first connection
    spare: list[KmipClient] = []
    while len(first) < 2 and len(spare) < 40:
        c = KmipClient(srv.host, srv.port, ctx, version=V21, timeout=30.0).connect()
        owner = _server_side_owner(c, srv.port, children)
        if owner in first:
            spare.append(c)
        else:
            first[owner] = c
    try:
        assert len(first) == 2, "no connection reached one of the workers"
        a, b = (first[p] for p in sorted(first))
        x, y = _encrypt_only_key(a), _encrypt_only_key(b)
        locates = [cm.batch_item(Operation.LOCATE, cm.payload())] * 1000

        def slow_failing_batch() -> list[ResultStatus]:
            check = cm.batch_item(
                Operation.CHECK,
                cm.payload(_uid(x), Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, D)),
            )
            activate = cm.batch_item(Operation.ACTIVATE, cm.payload(_uid(x)))
            return [r.status for r in _undo_batch(a, [activate, *locates, check])]

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(slow_failing_batch)
            wait_until = time.monotonic() + 10.0  # A's Activate done (and journaled)
            while _core_states(srv.layout.root, [x]) != [State.ACTIVE]:
                assert time.monotonic() < wait_until and not pending.done()
                time.sleep(0.01)
            activate_y = cm.batch_item(Operation.ACTIVATE, cm.payload(_uid(y)))
            assert [r.status for r in _undo_batch(b, [activate_y, _get_attrs(y)])] == [
                S.SUCCESS, S.SUCCESS
            ]
            assert not pending.done(), "batch A ended before B: nothing overlapped"
            answers = pending.result(timeout=60)
    finally:
        for c in (*first.values(), *spare):
            c.close()
    assert answers[0] is S.OPERATION_UNDONE and answers[-1] is S.OPERATION_FAILED
    assert _core_states(srv.layout.root, [x, y]) == [State.PRE_ACTIVE, State.ACTIVE]


def _get_attrs(key: str) -> Item:
    return cm.batch_item(Operation.GET_ATTRIBUTES, cm.payload(_uid(key)))


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], check=True,
                         capture_output=True, text=True)  # fmt: skip
    return [int(x) for x in out.stdout.split()]


def _core_states(root: Path, keys: list[str]) -> list[int | None]:
    """What the Core did: its registry, the record of truth (a worker's vault copy
    follows it through the change feed)."""
    db = sqlite3.connect(f"file:{root / 'core.db'}?mode=ro", uri=True)
    try:
        rows = dict(db.execute("SELECT uid, state FROM objects"))
    finally:
        db.close()
    return [rows.get(k) for k in keys]  # None: not synced to the Core yet
