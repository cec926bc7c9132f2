"""Issue 11, authenticated records on the Core's side: a registry object whose
covered columns were changed in the database is refused with Cryptographic
Failure (and a log line naming the uid) by everything the Core does with it;
rows from before schema v2 are accepted only while listed as legacy, and the
Core seals them (tested with a registry file written by the code before v2).

Real registries (a SQLite file and a PostgreSQL database), a real key ring,
the Core's real control handlers; the tampering is plain SQL on the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.helpers.control_env import core_env, uid_item
from tests.helpers.pg import PgServer

from krypton.core.records import (
    AuthenticatedRegistry,
    RecordTampered,
    check_arriving,
    seal_legacy,
)
from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import SecretBytes
from krypton.kmip.attributes import Attribute
from krypton.model.record import KeyRecord, authenticated_bytes
from krypton.registry import open_registry
from krypton.registry.schema import LATEST
from krypton.ttlv.enums import Operation, ResultReason
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

DATA = Path(__file__).parent.parent / "data"
SENSITIVE = Attribute("Sensitive", Item.boolean(Tag.SENSITIVE, True))
SENSITIVE_TRUE = bytes.fromhex("42012006000000080000000000000001")


def _sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement straight on the registry's database (``?`` placeholders)."""
    if url.startswith("sqlite:"):
        db = sqlite3.connect(url.removeprefix("sqlite:"))
        try:
            with db:
                return db.execute(statement, params).fetchall()
        finally:
            db.close()
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement.replace("?", "%s"), params)
        return cur.fetchall() if cur.description else []


def _flip_sensitive(blob: bytes) -> bytes:
    at = blob.index(SENSITIVE_TRUE) + len(SENSITIVE_TRUE) - 1
    return blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]


# column -> how to change it (one flipped bit where the column allows it)
TAMPER: dict[str, Callable[[Any], Any]] = {
    "attributes": lambda v: _flip_sensitive(bytes(v)),
    "state": lambda v: v ^ 3,  # Pre-Active -> Active
    "sealed": lambda v: bytes(v)[:-1] + bytes([bytes(v)[-1] ^ 1]),
    "length": lambda v: v ^ 128,
    "mac": lambda v: bytes(v)[:-1] + bytes([bytes(v)[-1] ^ 1]),
}


def _tamper(url: str, uid: str, column: str) -> None:
    [(value,)] = _sql(url, f"SELECT {column} FROM objects WHERE uid = ?", uid)
    _sql(url, f"UPDATE objects SET {column} = ? WHERE uid = ?", TAMPER[column](value), uid)


@pytest.mark.parametrize("column", list(TAMPER))
def test_a_tampered_registry_record_fails_closed(
    tmp_path: Path, keystore_url: str, column: str, caplog: pytest.LogCaptureFixture
) -> None:
    with core_env(tmp_path, url=keystore_url, macs=True) as env:
        uid = env.register_key([SENSITIVE])
        control = env.register_key([SENSITIVE])
        assert env.wait(env.registry.get_object("demo", uid)) is not None  # MAC'd and checked
        _tamper(keystore_url, uid, column)
        caplog.set_level(logging.ERROR, "krypton.core")
        for op in (Operation.GET_ATTRIBUTES, Operation.ACTIVATE, Operation.DESTROY):
            answer = env.run(op, uid_item(uid))
            assert answer.item.reason is ResultReason.CRYPTOGRAPHIC_FAILURE, (op, answer.item)
            assert answer.item.payload is None
        with pytest.raises(RecordTampered):
            env.wait(env.registry.get_object("demo", uid))
        assert any(uid in r.getMessage() for r in caplog.records), "no log line names the uid"
        assert env.run(Operation.ACTIVATE, uid_item(control)).ok  # untouched records still work
        # Nothing was laundered: the row is still refused after the failed changes.
        with pytest.raises(RecordTampered):
            env.wait(env.registry.get_object("demo", uid))


def test_every_write_carries_a_fresh_mac(tmp_path: Path, keystore_url: str) -> None:
    with core_env(tmp_path, url=keystore_url, macs=True) as env:
        uid = env.register_key([SENSITIVE])
        [(first,)] = _sql(keystore_url, "SELECT mac FROM objects WHERE uid = ?", uid)
        assert env.run(Operation.ACTIVATE, uid_item(uid)).ok
        [(second,)] = _sql(keystore_url, "SELECT mac FROM objects WHERE uid = ?", uid)
        assert first and second and bytes(first) != bytes(second)
        assert env.record(uid).mac == bytes(second)


def test_a_row_without_a_mac_is_accepted_only_while_listed(
    tmp_path: Path, keystore_url: str
) -> None:
    with core_env(tmp_path, url=keystore_url, macs=True) as env:
        sealed, updated = env.register_key(), env.register_key()
        for uid in (sealed, updated):
            _sql(keystore_url, "UPDATE objects SET mac = NULL WHERE uid = ?", uid)
            with pytest.raises(RecordTampered):
                env.wait(env.registry.get_object("demo", uid))
            _sql(keystore_url, "INSERT INTO unsealed_objects (uid) VALUES (?)", uid)
            assert env.wait(env.registry.get_object("demo", uid)) is not None
        assert sorted(env.wait(env.registry.legacy_objects())) == sorted(
            [("demo", sealed), ("demo", updated)]
        )
        # An update re-MACs a listed row and takes it off the list ...
        assert env.run(Operation.ACTIVATE, uid_item(updated)).ok
        assert env.wait(env.registry.legacy_objects()) == [("demo", sealed)]
        # ... and the Core's start-up pass seals the rest.
        assert isinstance(env.registry, AuthenticatedRegistry)
        assert env.wait(seal_legacy(env.registry.inner, env.ring.record_mac)) == 1
        assert env.wait(env.registry.legacy_objects()) == []
        for uid in (sealed, updated):
            assert env.record(uid).mac
        # Once sealed, it is covered: clearing the MAC again no longer passes.
        _sql(keystore_url, "UPDATE objects SET mac = NULL WHERE uid = ?", sealed)
        with pytest.raises(RecordTampered):
            env.wait(env.registry.get_object("demo", sealed))


def test_a_registry_written_before_v2_migrates_and_its_keys_still_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``tests/data/registry-v1.db`` was written by the code before record MACs
    (tests/data/make_registry_v1.py)."""
    path = tmp_path / "registry.db"
    shutil.copy(DATA / "registry-v1.db", path)
    [(old,)] = _sql(f"sqlite:{path}", "SELECT version FROM schema_version")
    assert old == 1
    with core_env(tmp_path, macs=True) as env:
        assert LATEST >= 2
        [(now,)] = _sql(f"sqlite:{path}", "SELECT version FROM schema_version")
        assert now == LATEST
        ring = KeyRing()  # the fixture's test-only L3
        ring.install("demo", 1, SecretBytes(bytes(range(32))), L3State.ACTIVE,
                     ring.lease_deadline(3600))  # fmt: skip
        inner = env.registry.inner if isinstance(env.registry, AuthenticatedRegistry) else None
        assert inner is not None
        registry = AuthenticatedRegistry(inner, ring.record_mac)
        legacy = env.wait(registry.legacy_objects())
        uids = [u for _, u in legacy]
        assert len(uids) == 2 and "synced-by-gw-dev" in uids
        for uid in uids:  # listed: read without a MAC
            rec = env.wait(registry.get_object("demo", uid))
            assert rec is not None and rec.mac is None
        assert env.wait(seal_legacy(inner, ring.record_mac)) == 2
        assert env.wait(registry.legacy_objects()) == []
        material = {"synced-by-gw-dev": bytes(range(200, 232))}
        for uid in uids:
            rec = env.wait(registry.get_object("demo", uid))
            assert rec is not None and rec.mac and rec.sealed and rec.l3_version == 1
            plain = ring.unwrap("demo", uid, rec.l3_version, rec.sealed)
            assert plain.reveal() == material.get(uid, bytes(range(100, 132)))
        # Sealed now: the registered (Sensitive) key's attributes are covered.
        registered = next(u for u in uids if u != "synced-by-gw-dev")
        _tamper(f"sqlite:{path}", registered, "attributes")
        with pytest.raises(RecordTampered):
            env.wait(registry.get_object("demo", registered))


def test_the_migration_step_is_the_same_on_both_backends(pg: PgServer, tmp_path: Path) -> None:
    """A fresh registry on each backend has the mac column and the legacy list."""
    for url in (f"sqlite:{tmp_path / 'fresh.db'}", pg.create_database("mig")):
        assert asyncio.run(_open_close(url)) == LATEST
        assert _sql(url, "SELECT count(*) FROM unsealed_objects") == [(0,)]
        assert _sql(url, "SELECT count(mac) FROM objects") == [(0,)]


async def _open_close(url: str) -> int:
    registry = await open_registry(url)
    await registry.close()
    [(version,)] = _sql(url, "SELECT version FROM schema_version")
    return int(version)


def test_records_arriving_by_synckeys_must_carry_their_mac(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The Core checks what a gateway syncs: a right MAC passes; a wrong, missing or
    other-L3 one is refused (Cryptographic Failure, logged with the uid)."""
    ring = KeyRing()
    ring.install("demo", 1, SecretBytes(bytes(range(32))), L3State.ACTIVE,
                 ring.lease_deadline(3600))  # fmt: skip
    ring.install("demo", 2, SecretBytes(bytes(range(1, 33))), L3State.ACTIVE,
                 ring.lease_deadline(3600))  # fmt: skip
    rec = KeyRecord(
        uid="k-1", tenant="demo", object_type=2, algorithm=3, length=256, state=1,
        l3_version=1, wrapped=b"\x01blob", attributes=SENSITIVE_TRUE,
    )  # fmt: skip
    good = dataclasses.replace(rec, mac=ring.record_mac("demo", 1, authenticated_bytes(rec)))
    assert check_arriving(good, ring.record_mac) == good
    under_v2 = ring.record_mac("demo", 2, authenticated_bytes(rec))
    caplog.set_level(logging.ERROR, "krypton.core")
    for bad in (
        rec,
        dataclasses.replace(good, mac=under_v2),
        dataclasses.replace(good, attributes=_flip_sensitive(rec.attributes)),
        dataclasses.replace(good, state=2),
    ):
        with pytest.raises(RecordTampered):
            check_arriving(bad, ring.record_mac)
    assert "'k-1'" in caplog.text
