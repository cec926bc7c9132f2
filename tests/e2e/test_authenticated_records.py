"""Issue 11, finding 4: a record whose covered columns were changed in the gateway's
vault file is refused with Cryptographic Failure, never exported.

A real `krypton dev` stack and a client over real mTLS: Sensitive keys are
created, the process is stopped, one covered column of each key's row is
changed in the SQLite file (one flipped bit where the column allows it), the
stack restarts on the same directory (an empty record cache) and every Get —
Raw (the fast path's shape) and Transparent Symmetric Key (the generic path) —
must fail with Cryptographic Failure, and the log must name the uid.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.helpers.fixtures import DevStacks
from tests.helpers.servers import DevServer

from krypton.client.sync import KmipClient, tls_context
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute
from krypton.kmip.messages import ResponseItem
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.enums import KeyFormatType, Operation, ResultReason, ResultStatus
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

V14 = ProtocolVersion(1, 4)
SENSITIVE = Attribute("Sensitive", Item.boolean(Tag.SENSITIVE, True))
# Tag Sensitive (0x420120), type Boolean, length 8, value True.
SENSITIVE_TRUE = bytes.fromhex("42012006000000080000000000000001")
USAGE_MASK = bytes.fromhex("42002c0200000004")  # Cryptographic Usage Mask, Integer


def _flip_sensitive(blob: bytes) -> bytes:
    at = blob.index(SENSITIVE_TRUE) + len(SENSITIVE_TRUE) - 1
    return blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]  # True -> False


def _flip_usage(blob: bytes) -> bytes:
    at = blob.index(USAGE_MASK) + len(USAGE_MASK) + 3
    return blob[:at] + bytes([blob[at] ^ 0x40]) + blob[at + 1 :]  # + Wrap Key


def _flip_last(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 1])


def _int(v: object) -> int:
    assert isinstance(v, int)
    return v


def _blob(v: object) -> bytes:
    assert isinstance(v, bytes)
    return v


def _text(v: object) -> str:
    assert isinstance(v, str)
    return v[:-1] + chr(ord(v[-1]) ^ 1)


# column -> how to change it (the old value in, the new value out)
TAMPER: dict[str, Callable[[object], object]] = {
    "attributes": lambda v: _flip_sensitive(_blob(v)),
    "attributes ": lambda v: _flip_usage(_blob(v)),
    "wrapped": lambda v: _flip_last(_blob(v)),
    "object_type": lambda v: _int(v) ^ 1,
    "algorithm": lambda v: _int(v) ^ 1,
    "length": lambda v: _int(v) ^ 128,
    "state": lambda v: _int(v) ^ 3,  # Pre-Active -> Active
    "l3_version": lambda v: _int(v) ^ 2,
    "tenant": _text,
}


def _client(srv: DevServer) -> KmipClient:
    ctx = tls_context(srv.pki / "ca.pem", srv.pki / "client.pem", srv.pki / "client-key.pem")
    return KmipClient(srv.host, srv.port, ctx, version=V14, timeout=10.0)


def _get(c: KmipClient, uid: str, fmt: int | None) -> ResponseItem:
    children = [Item.text(Tag.UNIQUE_IDENTIFIER, uid)]
    if fmt is not None:
        children.append(Item.enum(Tag.KEY_FORMAT_TYPE, fmt))
    [answer] = c.call([cm.batch_item(Operation.GET, cm.payload(*children))]).items
    return answer


def test_a_tampered_record_fails_closed(tmp_path: Path, start_dev: DevStacks) -> None:
    srv = start_dev(tmp_path)
    with _client(srv) as c:
        made = c.call_ok(
            [cm.create_item(V14, [*cm.aes_attributes(256), SENSITIVE]) for _ in TAMPER]
        )
        uids = [cm.unique_identifier(i.payload) for i in made.items]  # type: ignore[arg-type]
        control = c.create(256)
        before = c.get(control)
        for uid in uids:
            assert _get(c, uid, None).reason is ResultReason.SENSITIVE
    srv.stop()

    [vault] = [p for p in tmp_path.rglob("gateway.db")]
    with sqlite3.connect(vault) as db:
        for uid, column in zip(uids, TAMPER, strict=True):
            name = column.strip()
            (value,) = db.execute(f"SELECT {name} FROM keys WHERE uid = ?", (uid,)).fetchone()
            db.execute(f"UPDATE keys SET {name} = ? WHERE uid = ?", (TAMPER[column](value), uid))
    db.close()

    restarted = start_dev(tmp_path, port=srv.port)
    with _client(restarted) as c:
        assert c.get(control) == before  # untouched records still read
        for uid, column in zip(uids, TAMPER, strict=True):
            for fmt in (None, KeyFormatType.RAW, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY):
                answer = _get(c, uid, fmt)
                assert answer.status is ResultStatus.OPERATION_FAILED, (column, fmt)
                assert answer.reason is ResultReason.CRYPTOGRAPHIC_FAILURE, (column, answer)
                assert answer.payload is None
    log = restarted.log()
    for uid in uids:
        assert uid in log, f"no log line names {uid}"
