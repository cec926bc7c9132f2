from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from krypton.core.embedded import EmbeddedL3Source
from krypton.core.keystore import MASTER_KEY_ENV, CoreKeyStore, load_master_key
from krypton.crypto.keyring import KeyRing, L3Source, L3State
from krypton.crypto.secret import SecretBytes, generate_key
from krypton.crypto.wrap import binding
from krypton.errors import (
    ConfigError,
    ItemNotFound,
    KeyUnavailable,
    MasterKeyMismatch,
    WrongKeyLifecycleState,
)

UID = "9d3f8b7e-0000-4000-8000-00000000c0de"


@pytest.fixture
def master_raw() -> bytes:
    return os.urandom(32)


@pytest.fixture
def store(tmp_path: Path, master_raw: bytes) -> Iterator[CoreKeyStore]:
    s = CoreKeyStore.open(tmp_path / "core.db", SecretBytes(master_raw))
    yield s
    s.close()


def _materials(store: CoreKeyStore, tenant: str) -> dict[int, bytes]:
    out = {}
    for g in store.grants([tenant], 60):
        out[g.version] = g.material.reveal()
        g.material.wipe()
    return out


# -- master key -----------------------------------------------------------------
def test_master_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    first = load_master_key(path, environ={})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == first.reveal()
    assert load_master_key(path, environ={}) == first


def test_master_key_from_environment(tmp_path: Path) -> None:
    raw = os.urandom(32)
    key = load_master_key(tmp_path / "unused", environ={MASTER_KEY_ENV: raw.hex()})
    assert key.reveal() == raw
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize("value", ["zz" * 32, "ab" * 31, "ab" * 33])
def test_bad_master_key_environment_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=MASTER_KEY_ENV):
        load_master_key(None, environ={MASTER_KEY_ENV: value})


def test_master_key_file_checks(tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(os.urandom(32))
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match=r"loose\.key"):
        load_master_key(loose, environ={})
    short = tmp_path / "short.key"
    short.write_bytes(os.urandom(31))
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="32 bytes"):
        load_master_key(short, environ={})
    with pytest.raises(ConfigError, match=MASTER_KEY_ENV):
        load_master_key(None, environ={})


# -- the store ------------------------------------------------------------------
def test_ensure_tenant_creates_l2_and_l3_v1_once(store: CoreKeyStore) -> None:
    assert store.ensure_tenant("demo") is True
    assert store.ensure_tenant("demo") is False
    assert store.tenants() == ["demo"]
    assert store.l3_states("demo") == {1: L3State.ACTIVE}
    (grant,) = store.grants(["demo", "unknown"], 60)
    assert (grant.tenant, grant.version, grant.state, grant.lease_seconds) == (
        "demo", 1, L3State.ACTIVE, 60)  # fmt: skip
    assert len(grant.material) == 32


def test_rotate_and_states(store: CoreKeyStore) -> None:
    store.ensure_tenant("demo")
    assert store.rotate_l3("demo") == 2
    assert store.rotate_l3("demo") == 3
    assert store.l3_states("demo") == {
        1: L3State.DEACTIVATED, 2: L3State.DEACTIVATED, 3: L3State.ACTIVE}  # fmt: skip
    assert sorted(_materials(store, "demo")) == [1, 2, 3]
    with pytest.raises(ItemNotFound):
        store.rotate_l3("nobody")

    store.set_l3_state("demo", 2, L3State.COMPROMISED)
    assert sorted(_materials(store, "demo")) == [1, 3]
    assert store.grant("demo", 2, 60) is None
    with pytest.raises(WrongKeyLifecycleState):
        store.set_l3_state("demo", 2, L3State.ACTIVE)
    store.set_l3_state("demo", 1, L3State.ACTIVE)
    assert store.l3_states("demo")[3] == L3State.DEACTIVATED
    store.set_l3_state("demo", 2, L3State.DESTROYED)
    with pytest.raises(WrongKeyLifecycleState):
        store.set_l3_state("demo", 2, L3State.DEACTIVATED)
    with pytest.raises(ItemNotFound):
        store.set_l3_state("demo", 9, L3State.ACTIVE)


def test_destroy_erases_the_sealed_key(tmp_path: Path, store: CoreKeyStore) -> None:
    store.ensure_tenant("demo")
    store.rotate_l3("demo")
    store.set_l3_state("demo", 1, L3State.DESTROYED)
    with sqlite3.connect(tmp_path / "core.db") as db:
        (blob,) = db.execute("SELECT wrapped FROM core_l3 WHERE version=1").fetchone()
    assert blob == b""


def test_persists_across_reopen_with_the_same_master_key(tmp_path: Path, master_raw: bytes) -> None:
    path = tmp_path / "core.db"
    s = CoreKeyStore.open(path, SecretBytes(master_raw))
    s.ensure_tenant("demo")
    s.rotate_l3("demo")
    before = _materials(s, "demo")
    s.close()
    s = CoreKeyStore.open(path, SecretBytes(master_raw))
    assert _materials(s, "demo") == before
    assert s.l3_states("demo") == {1: L3State.DEACTIVATED, 2: L3State.ACTIVE}
    s.close()


def test_wrong_master_key_fails_clearly(tmp_path: Path, master_raw: bytes) -> None:
    path = tmp_path / "core.db"
    CoreKeyStore.open(path, SecretBytes(master_raw)).close()
    with pytest.raises(MasterKeyMismatch, match="does not open the key store"):
        CoreKeyStore.open(path, generate_key(256))


def test_store_keeps_its_own_copy_of_the_master_key(tmp_path: Path, master_raw: bytes) -> None:
    master = SecretBytes(master_raw)
    store = CoreKeyStore.open(tmp_path / "core.db", master)
    master.wipe()  # what a careful caller does
    store.ensure_tenant("demo")
    assert len(store.grants(["demo"], 60)) == 1
    before = _materials(store, "demo")
    store.close()
    store = CoreKeyStore.open(tmp_path / "core.db", SecretBytes(master_raw))
    assert _materials(store, "demo") == before  # sealed under the real key, not zeros
    store.close()


def test_listeners_hear_committed_changes(store: CoreKeyStore) -> None:
    heard: list[tuple[str, int, L3State]] = []
    unsubscribe = store.add_listener(lambda t, v, s: heard.append((t, v, s)))
    store.ensure_tenant("demo")
    store.rotate_l3("demo")
    unsubscribe()
    store.rotate_l3("demo")
    assert heard == [
        ("demo", 1, L3State.ACTIVE),
        ("demo", 2, L3State.ACTIVE),
        ("demo", 1, L3State.DEACTIVATED),
    ]


def test_no_l2_or_l3_plaintext_in_the_files(tmp_path: Path, master_raw: bytes) -> None:
    path = tmp_path / "core.db"
    store = CoreKeyStore.open(path, SecretBytes(master_raw))
    tenants = [f"tenant-{i}" for i in range(5)]
    for t in tenants:
        store.ensure_tenant(t)
        store.rotate_l3(t)
    l3 = [m for t in tenants for m in _materials(store, t).values()]

    def files() -> bytes:
        return b"".join(p.read_bytes() for p in tmp_path.glob("core.db*"))

    # Recover each L2 independently of the store, from the documented
    # construction: blob = 01 | key id (4) | nonce (12) | ct+tag, AAD = header | binding.
    def l2_of(tenant: str) -> bytes:
        with sqlite3.connect(path) as db:
            (blob,) = db.execute("SELECT wrapped FROM core_l2 WHERE tenant=?", (tenant,)).fetchone()
        return AESGCM(master_raw).decrypt(blob[5:17], blob[17:], blob[:5] + binding("L2", tenant))

    l2 = [l2_of(t) for t in tenants]
    with sqlite3.connect(path) as db:
        (blob,) = db.execute(
            "SELECT wrapped FROM core_l3 WHERE tenant='tenant-0' AND version=2").fetchone()
    assert AESGCM(l2[0]).decrypt(blob[5:17], blob[17:], blob[:5] + binding("L3", "tenant-0", "2"))

    while_open = files()
    store.close()
    after_close = files()
    assert blob in after_close  # the scan sees what is stored
    for secret in [master_raw, *l2, *l3]:
        assert secret not in while_open
        assert secret not in after_close


# -- the embedded L3 source ------------------------------------------------------
def test_embedded_source_feeds_the_ring(store: CoreKeyStore) -> None:
    async def main() -> None:
        ring = KeyRing()
        source: L3Source = EmbeddedL3Source(store, ["demo", "other"], lease_seconds=3600)
        await source.start(ring)
        assert ring.tenants() == ["demo", "other"]
        l4 = generate_key(256)
        version, blob = ring.wrap("demo", UID, l4)
        assert version == 1

        assert store.rotate_l3("demo") == 2  # pushed by the listener, no waiting
        assert ring.active_version("demo") == 2
        assert ring.versions("demo") == {1: L3State.DEACTIVATED, 2: L3State.ACTIVE}
        assert ring.unwrap("demo", UID, 1, blob) == l4

        store.set_l3_state("demo", 1, L3State.COMPROMISED)
        with pytest.raises(KeyUnavailable):
            ring.unwrap("demo", UID, 1, blob)

        store.ensure_tenant("stranger")  # not served by this gateway
        assert "stranger" not in ring.tenants()

        await source.close()
        store.rotate_l3("demo")
        assert ring.active_version("demo") == 2

    asyncio.run(main())


def test_embedded_source_renews_leases(store: CoreKeyStore) -> None:
    async def main() -> None:
        ring = KeyRing()
        source = EmbeddedL3Source(store, ["demo"], lease_seconds=0.6)
        await source.start(ring)
        first = ring.lease_expires_at("demo", 1)
        await asyncio.sleep(0.9)
        ring.wrap("demo", UID, generate_key(256))  # would fail without renewal
        renewed = ring.lease_expires_at("demo", 1)
        assert first is not None
        assert renewed is not None
        assert renewed > first
        await source.close()
        await asyncio.sleep(0.8)
        with pytest.raises(KeyUnavailable, match="expired"):
            ring.wrap("demo", UID, generate_key(256))

    asyncio.run(main())
