"""Authenticated vault records (krypton.vault.auth) on a real SQLite vault, through
the gateway dispatcher with and without the Get fast path.

``tests/data/vault-v2.db`` is a vault written by the code of main before records
were authenticated (schema v2), by ``tests/data/make_vault_v2.py``: one Sensitive
and one plain AES-256 key of tenant ``demo`` under the test-only L3
``bytes(range(32))``, version 1.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.helpers.fastpath import NOW

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import SecretBytes
from krypton.errors import CryptographicFailure, KeyUnavailable
from krypton.gateway.engine.dispatch import Dispatcher, Session
from krypton.gateway.engine.services import Services
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute
from krypton.kmip.versions import ProtocolVersion
from krypton.model.grant import Grant
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import ResultReason, State
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag
from krypton.vault.auth import RecordTampered
from krypton.vault.schema import LATEST, schema_version
from krypton.vault.sqlite import Vault

V14 = ProtocolVersion(1, 4)
V2_FILE = Path(__file__).parent.parent / "data" / "vault-v2.db"
V2_SENSITIVE = "69e53810-d712-494e-83eb-9a9a94e528f7"
V2_PLAIN = "a8be8308-2716-4d57-9296-aea6e3d2d906"
SENSITIVE = Attribute("Sensitive", Item.boolean(Tag.SENSITIVE, True))
SENSITIVE_TRUE = bytes.fromhex("42012006000000080000000000000001")
SESSION = Session("spiffe://t/demo", Grant("demo", None), 1)


def _ring() -> KeyRing:
    ring = KeyRing()
    material = SecretBytes.adopt(bytearray(range(32)))
    ring.install("demo", 1, material, L3State.ACTIVE, ring.lease_deadline(3600))
    return ring


@dataclass
class Gw:
    """A vault file, the key ring and a fast and a generic dispatcher over it."""

    path: Path
    ring: KeyRing
    loop: asyncio.AbstractEventLoop
    vault: Vault
    fast: Dispatcher
    slow: Dispatcher

    def reopen(self) -> None:
        """Close and open the file again: an empty record cache."""
        self.vault.close()
        self.vault = Vault.open(self.path, sealer=self.ring.record_mac)
        svc = Services(store=self.vault, keyring=self.ring)
        self.fast = Dispatcher(svc, clock=lambda: NOW)
        self.slow = Dispatcher(svc, fast=False, clock=lambda: NOW)

    def get(self, uid: str) -> tuple[cm.Response, bool]:
        """The answer to a Raw Get, and whether the fast path answers it once the
        record is read through (the generic answer must be the same bytes either way)."""
        frame = encode(cm.request_message(V14, [cm.get_item(uid)]))
        fast = self.loop.run_until_complete(self.fast.handle(frame, SESSION))
        taken = self.fast.answer_now(frame, SESSION) is not None
        slow = self.loop.run_until_complete(self.slow.handle(frame, SESSION))
        assert fast == slow
        return cm.parse_response(decode(fast)), taken

    def create(self, *extra: Attribute) -> str:
        msg = encode(
            cm.request_message(V14, [cm.create_item(V14, [*cm.aes_attributes(256), *extra])])
        )
        r = cm.parse_response(decode(self.loop.run_until_complete(self.slow.handle(msg, SESSION))))
        assert r.items[0].payload is not None, r.items[0].message
        return cm.unique_identifier(r.items[0].payload)

    def sql(self, statement: str, *args: object) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.path) as db:
            rows = db.execute(statement, args).fetchall()
        db.close()
        return rows


def _gw(path: Path) -> Iterator[Gw]:
    ring = _ring()
    loop = asyncio.new_event_loop()
    vault = Vault.open(path, sealer=ring.record_mac)
    gw = Gw(path, ring, loop, vault, *(2 * [Dispatcher(Services(store=vault, keyring=ring))]))
    gw.reopen()
    try:
        yield gw
    finally:
        gw.vault.close()
        loop.close()


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gw]:
    yield from _gw(tmp_path / "vault.db")


@pytest.fixture
def legacy(tmp_path: Path) -> Iterator[Gw]:
    path = tmp_path / "vault-v2.db"
    shutil.copyfile(V2_FILE, path)
    yield from _gw(path)


def _flip_sensitive(blob: bytes) -> bytes:
    at = blob.index(SENSITIVE_TRUE) + len(SENSITIVE_TRUE) - 1
    return blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]


def _tamper_sensitive(gw: Gw, uid: str) -> None:
    [(blob,)] = gw.sql("SELECT attributes FROM keys WHERE uid = ?", uid)
    assert isinstance(blob, bytes)
    gw.sql("UPDATE keys SET attributes = ? WHERE uid = ?", _flip_sensitive(blob), uid)
    gw.reopen()


def _refused(gw: Gw, uid: str) -> None:
    answer, _ = gw.get(uid)
    assert answer.items[0].reason is ResultReason.CRYPTOGRAPHIC_FAILURE
    assert answer.items[0].payload is None


def test_good_records_take_the_fast_path_unchanged(gw: Gw) -> None:
    uid = gw.create()
    gw.reopen()
    answer, taken = gw.get(uid)
    assert taken and answer.items[0].payload is not None
    rec = gw.vault.get(uid)
    assert rec is not None and len(rec.mac) == 32


def test_a_flipped_sensitive_bit_fails_closed_on_both_paths(
    gw: Gw, caplog: pytest.LogCaptureFixture
) -> None:
    uid = gw.create(SENSITIVE)
    _tamper_sensitive(gw, uid)
    with caplog.at_level("ERROR", logger="krypton.vault"):
        _refused(gw, uid)
    assert uid in caplog.text and "failed authentication" in caplog.text


def test_an_emptied_mac_is_not_taken_for_a_legacy_record(gw: Gw) -> None:
    uid = gw.create(SENSITIVE)
    gw.sql("UPDATE keys SET mac = X'' WHERE uid = ?", uid)
    _tamper_sensitive(gw, uid)
    _refused(gw, uid)


def test_a_core_driven_change_does_not_launder_a_tampered_record(gw: Gw) -> None:
    uid = gw.create(SENSITIVE)
    _tamper_sensitive(gw, uid)
    with pytest.raises(RecordTampered):
        gw.loop.run_until_complete(gw.vault.update_state(uid, State.ACTIVE))
    [(state,)] = gw.sql("SELECT state FROM keys WHERE uid = ?", uid)
    assert state == State.PRE_ACTIVE
    gw.reopen()
    _refused(gw, uid)


def test_changes_applied_by_the_vault_stay_authenticated(gw: Gw) -> None:
    uid = gw.create()
    loop = gw.loop
    assert loop.run_until_complete(gw.vault.update_state(uid, State.ACTIVE))
    rec = gw.vault.get(uid)
    assert rec is not None
    assert loop.run_until_complete(gw.vault.update_attributes(uid, rec.attributes + b""))
    gw.reopen()
    answer, _ = gw.get(uid)
    assert answer.items[0].payload is not None
    assert gw.vault.get(uid).state == State.ACTIVE  # type: ignore[union-attr]


def test_a_record_whose_l3_is_not_held_is_not_served(gw: Gw) -> None:
    uid = gw.create()
    gw.ring.drop("demo", 1)
    gw.reopen()
    with pytest.raises(KeyUnavailable):
        gw.vault.get(uid)
    assert issubclass(KeyUnavailable, CryptographicFailure)


def test_a_vault_written_before_records_were_authenticated_migrates(legacy: Gw) -> None:
    assert schema_version(sqlite3.connect(legacy.path)) == LATEST
    # Read as they were written (listed as legacy), before the gateway seals them.
    answer, _ = legacy.get(V2_PLAIN)
    material = cm.key_material(answer.items[0].payload)  # type: ignore[arg-type]
    assert len(material) == 32
    assert legacy.get(V2_SENSITIVE)[0].items[0].reason is ResultReason.SENSITIVE
    assert legacy.loop.run_until_complete(legacy.vault.seal_legacy()) == 2
    assert legacy.sql("SELECT uid FROM unsealed") == []
    legacy.reopen()
    for uid in (V2_PLAIN, V2_SENSITIVE):
        rec = legacy.vault.get(uid)
        assert rec is not None and len(rec.mac) == 32
    answer, taken = legacy.get(V2_PLAIN)
    assert taken and cm.key_material(answer.items[0].payload) == material  # type: ignore[arg-type]
    # Now authenticated: the flipped bit that exported it before is refused.
    _tamper_sensitive(legacy, V2_SENSITIVE)
    _refused(legacy, V2_SENSITIVE)
