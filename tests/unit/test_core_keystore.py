"""The Core key store on both registry backends: a SQLite file and a real
PostgreSQL server (``keystore_url``, tests/unit/conftest.py). Every test runs
its stores inside ``asyncio.run`` (psycopg's connections belong to one loop).
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tests.helpers.keystore_env import (
    Gate,
    Heard,
    materials,
    opened_registry,
    opened_store,
    run_elsewhere,
)
from tests.helpers.pg import PgServer

from krypton.core.keystore import (
    MASTER_KEY_ENV,
    CoreKeyStore,
    MasterKeyFileMissing,
    NotInitialised,
    load_master_key,
)
from krypton.crypto.keyring import L3State
from krypton.crypto.secret import SecretBytes, generate_key
from krypton.crypto.wrap import binding
from krypton.errors import (
    ConfigError,
    InvalidField,
    ItemNotFound,
    MasterKeyMismatch,
    StorageError,
    WrongKeyLifecycleState,
)
from krypton.model import Registry, RegistryConflict

A, D, C, X = L3State.ACTIVE, L3State.DEACTIVATED, L3State.COMPROMISED, L3State.DESTROYED


@pytest.fixture
def master_raw() -> bytes:
    return os.urandom(32)


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await body()

    asyncio.run(main())


# -- master key -----------------------------------------------------------------
def test_master_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    first = load_master_key(path, environ={}, create=True)  # krypton core init
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == first.reveal()
    assert load_master_key(path, environ={}) == first


def test_a_missing_master_key_file_is_an_error_never_a_new_file(tmp_path: Path) -> None:
    """Issue 12 finding 9: only ``init`` (create=True) makes a master key file."""
    path = tmp_path / "mastr.key"
    with pytest.raises(MasterKeyFileMissing, match=r"mastr\.key: no such file"):
        load_master_key(path, environ={})
    assert not path.exists()


def test_a_registry_without_a_hierarchy_is_refused(keystore_url: str, master_raw: bytes) -> None:
    """Issue 12 finding 9: opening never stores the root of a new hierarchy by itself."""
    async def body() -> None:
        async with opened_registry(keystore_url) as reg:
            with pytest.raises(NotInitialised, match="holds no key hierarchy"):
                await CoreKeyStore.open(reg, SecretBytes(master_raw))
            assert await reg.keys("", "MK") == []
            store = await CoreKeyStore.open(reg, SecretBytes(master_raw), create=True)
            await store.close()
            store = await CoreKeyStore.open(reg, SecretBytes(master_raw))
            await store.close()

    run(body)


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
def test_ensure_tenant_creates_l2_and_l3_v1_once(keystore_url: str, master_raw: bytes) -> None:
    async def body() -> None:
        async with opened_store(keystore_url, master_raw) as store:
            assert await store.ensure_tenant("demo") is True
            assert await store.ensure_tenant("demo") is False
            assert await store.ensure_tenant("other") is True
            assert await store.tenants() == ["demo", "other"]
            assert await store.l3_states("demo") == {1: A}
            (grant,) = await store.grants(["demo", "unknown"], 60)
            assert (grant.tenant, grant.version, grant.state, grant.lease_seconds) == (
                "demo", 1, A, 60)  # fmt: skip
            assert len(grant.material) == 32
            with pytest.raises(InvalidField):
                await store.ensure_tenant("")

    run(body)


def test_rotate_and_states(keystore_url: str, master_raw: bytes) -> None:
    async def body() -> None:
        async with opened_store(keystore_url, master_raw) as store:
            await store.ensure_tenant("demo")
            assert await store.rotate_l3("demo") == 2
            assert await store.rotate_l3("demo") == 3
            assert await store.l3_states("demo") == {1: D, 2: D, 3: A}
            assert sorted(await materials(store, "demo")) == [1, 2, 3]
            with pytest.raises(ItemNotFound):
                await store.rotate_l3("nobody")

            await store.set_l3_state("demo", 2, C)
            assert sorted(await materials(store, "demo")) == [1, 3]
            assert await store.grant("demo", 2, 60) is None
            with pytest.raises(WrongKeyLifecycleState):
                await store.set_l3_state("demo", 2, A)
            await store.set_l3_state("demo", 1, A)
            assert await store.l3_states("demo") == {1: A, 2: C, 3: D}
            await store.set_l3_state("demo", 2, X)
            await store.set_l3_state("demo", 2, X)  # already so: allowed, changes nothing
            with pytest.raises(WrongKeyLifecycleState):
                await store.set_l3_state("demo", 2, D)
            with pytest.raises(ItemNotFound):
                await store.set_l3_state("demo", 9, A)
            assert await store.l3_states("demo") == {1: A, 2: X, 3: D}

    run(body)


def test_destroy_erases_the_sealed_key(keystore_url: str, master_raw: bytes) -> None:
    async def body() -> None:
        async with opened_registry(keystore_url) as reg:
            async with opened_store(reg, master_raw) as store:
                await store.ensure_tenant("demo")
                await store.rotate_l3("demo")
                await store.set_l3_state("demo", 1, X)
            v1, v2 = await reg.keys("demo", "L3")
            assert (v1.state, v1.sealed) == (X, None)
            assert v2.sealed is not None

    run(body)


def test_persists_across_reopen_with_the_same_master_key(
    keystore_url: str, master_raw: bytes
) -> None:
    async def body() -> None:
        async with opened_store(keystore_url, master_raw) as store:
            await store.ensure_tenant("demo")
            await store.rotate_l3("demo")
            before = await materials(store, "demo")
        async with opened_store(keystore_url, master_raw) as store:
            assert await materials(store, "demo") == before
            assert await store.l3_states("demo") == {1: D, 2: A}
            assert await store.tenants() == ["demo"]

    run(body)


def test_wrong_master_key_fails_clearly(keystore_url: str, master_raw: bytes) -> None:
    async def body() -> None:
        async with opened_store(keystore_url, master_raw) as store:
            await store.ensure_tenant("demo")
        async with opened_registry(keystore_url) as reg:
            with pytest.raises(MasterKeyMismatch, match="does not open the key store"):
                await CoreKeyStore.open(reg, generate_key(256))

    run(body)


def test_store_keeps_its_own_copy_of_the_master_key(keystore_url: str, master_raw: bytes) -> None:
    async def body() -> None:
        master = SecretBytes(master_raw)
        async with opened_registry(keystore_url) as reg:
            store = await CoreKeyStore.open(reg, master, create=True)
            master.wipe()  # what a careful caller does
            await store.ensure_tenant("demo")
            before = await materials(store, "demo")
            assert len(before) == 1
            await store.close()
            with pytest.raises(StorageError, match="closed"):
                await store.rotate_l3("demo")
        async with opened_store(keystore_url, master_raw) as store:
            assert await materials(store, "demo") == before  # sealed under the real key

    run(body)


def test_listeners_hear_committed_changes(keystore_url: str, master_raw: bytes) -> None:
    async def body() -> None:
        async with opened_store(keystore_url, master_raw) as store:
            heard = Heard()
            awaited: list[tuple[str, int, L3State]] = []

            async def slow(tenant: str, version: int, state: L3State) -> None:
                await asyncio.sleep(0.01)
                awaited.append((tenant, version, state))

            def broken(tenant: str, version: int, state: L3State) -> None:
                raise RuntimeError("a listener bug")

            unsubscribe = store.add_listener(heard)
            store.add_listener(slow)
            store.add_listener(broken)  # logged; the others still hear everything
            await store.ensure_tenant("demo")
            await store.rotate_l3("demo")
            unsubscribe()
            await store.rotate_l3("demo")
            assert heard.events == [("demo", 1, A), ("demo", 2, A), ("demo", 1, D)]
            assert awaited == [*heard.events, ("demo", 3, A), ("demo", 2, D)]

    run(body)


def test_no_l2_or_l3_plaintext_in_the_sqlite_files(tmp_path: Path, master_raw: bytes) -> None:
    path = tmp_path / "core.db"
    tenants = [f"tenant-{i}" for i in range(5)]

    def files() -> bytes:
        return b"".join(p.read_bytes() for p in tmp_path.glob("core.db*"))

    async def body() -> None:
        async with (
            opened_registry(f"sqlite:{path}") as reg,
            opened_store(reg, master_raw) as store,
        ):
            secrets = await _make_and_recover(store, reg_keys(reg), tenants, master_raw)
            while_open = files()
        after_close = files()
        assert secrets[-1] in after_close  # the scan sees what is stored (a sealed blob)
        for secret in secrets[:-1]:
            assert secret not in while_open
            assert secret not in after_close

    run(body)


def test_no_l2_or_l3_plaintext_in_postgresql(pg: PgServer, master_raw: bytes) -> None:
    url = pg.create_database("plain")
    tenants = [f"tenant-{i}" for i in range(5)]

    def files() -> bytes:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # WAL and tables onto disk
        return b"".join(p.read_bytes() for p in (pg.root / "data").rglob("*") if p.is_file())

    async def body() -> None:
        async with opened_registry(url) as reg:
            async with opened_store(reg, master_raw) as store:
                secrets = await _make_and_recover(store, reg_keys(reg), tenants, master_raw)
            stored = files()
        assert secrets[-1] in stored
        for secret in secrets[:-1]:
            assert secret not in stored

    run(body)


def reg_keys(reg: Registry) -> Callable[[str, str], Awaitable[list[bytes]]]:
    async def sealed(tenant: str, level: str) -> list[bytes]:
        return [r.sealed or b"" for r in await reg.keys(tenant, level)]

    return sealed


async def _make_and_recover(
    store: CoreKeyStore,
    sealed: Callable[[str, str], Awaitable[list[bytes]]],
    tenants: list[str],
    master_raw: bytes,
) -> list[bytes]:
    """Make tenants and rotations; recover each L2 independently of the store
    from the documented construction (blob = 01 | key id (4) | nonce (12) |
    ct+tag, AAD = header | binding). Returns every secret, then one sealed blob."""
    for t in tenants:
        await store.ensure_tenant(t)
        await store.rotate_l3(t)
    l3 = [m for t in tenants for m in (await materials(store, t)).values()]
    l2 = []
    for t in tenants:
        (blob,) = await sealed(t, "L2")
        l2.append(AESGCM(master_raw).decrypt(blob[5:17], blob[17:], blob[:5] + binding("L2", t)))
    blob = (await sealed("tenant-0", "L3"))[1]
    plain = AESGCM(l2[0]).decrypt(blob[5:17], blob[17:], blob[:5] + binding("L3", "tenant-0", "2"))
    assert plain in l3
    return [master_raw, *l2, *l3, blob]


# -- other Core instances and processes -------------------------------------------------
def test_changes_through_another_instance_reach_the_listener(
    keystore_url: str, master_raw: bytes
) -> None:
    """Two stores, each on its own registry object (as two Core instances have):
    PostgreSQL delivers by LISTEN/NOTIFY, SQLite by the key-table poll."""

    async def body() -> None:
        async with (
            opened_store(keystore_url, master_raw, watch=True) as one,
            opened_store(keystore_url, master_raw) as two,
        ):
            heard = Heard()
            one.add_listener(heard)
            await two.ensure_tenant("demo")
            await heard.wait_for(("demo", 1, A))
            for change, expect in (
                (lambda: two.rotate_l3("demo"), ("demo", 2, A)),
                (lambda: two.set_l3_state("demo", 1, C), ("demo", 1, C)),
                (lambda: two.set_l3_state("demo", 1, X), ("demo", 1, X)),
            ):
                await change()
                committed = time.time()
                assert await heard.wait_for(expect, timeout=1.0) - committed < 1.0
            await asyncio.sleep(0.6)  # the poll and the notifications have settled
            assert heard.events == [
                ("demo", 1, A), ("demo", 2, A), ("demo", 1, D), ("demo", 1, C), ("demo", 1, X),
            ]  # fmt: skip
            assert await one.l3_states("demo") == {1: X, 2: A}

    run(body)


def test_changes_from_another_process_reach_the_listener(
    keystore_url: str, master_raw: bytes
) -> None:
    """What ``krypton core rotate-l3`` does: a separate process changes the keys."""

    async def body() -> None:
        async with opened_store(keystore_url, master_raw, watch=True) as store:
            await store.ensure_tenant("demo")
            heard = Heard()
            store.add_listener(heard)
            done = await asyncio.to_thread(
                run_elsewhere, keystore_url, master_raw, "rotate", "demo"
            )
            assert done["version"] == 2
            assert await heard.wait_for(("demo", 2, A), timeout=1.5) - done["committed"] < 1.0
            done = await asyncio.to_thread(
                run_elsewhere, keystore_url, master_raw, "state", "demo", "2", "COMPROMISED"
            )
            assert await heard.wait_for(("demo", 2, C), timeout=1.5) - done["committed"] < 1.0
            assert await store.grants(["demo"], 60) != []
            assert [g.version for g in await store.grants(["demo"], 60)] == [1]

    run(body)


def test_concurrent_rotations_one_wins_the_other_is_told(
    keystore_url: str, master_raw: bytes
) -> None:
    async def body() -> None:
        async with (
            opened_registry(keystore_url) as reg_one,
            opened_registry(keystore_url) as reg_two,
        ):
            gate_one, gate_two = Gate(reg_one), Gate(reg_two)
            async with (
                opened_store(gate_one, master_raw, watch=True) as one,
                opened_store(gate_two, master_raw) as two,
            ):
                await one.ensure_tenant("demo")
                heard = Heard()
                one.add_listener(heard)
                barrier = asyncio.Barrier(2)  # both read version 1 before either writes
                gate_one.arm(barrier)
                gate_two.arm(barrier)
                results = await asyncio.gather(
                    one.rotate_l3("demo"), two.rotate_l3("demo"), return_exceptions=True
                )
                assert {type(r) for r in results} == {int, RegistryConflict}
                (error,) = [r for r in results if isinstance(r, RegistryConflict)]
                assert "another Core" in str(error)
                assert 2 in results
                assert await one.l3_states("demo") == {1: D, 2: A}
                (v2,) = [g for g in await two.grants(["demo"], 60) if g.version == 2]
                (v2_one,) = [g for g in await one.grants(["demo"], 60) if g.version == 2]
                assert v2.material == v2_one.material  # one version 2, the winner's
                await heard.wait_for(("demo", 2, A))
                await asyncio.sleep(0.4)
                assert heard.events == [("demo", 2, A), ("demo", 1, D)]  # once, not twice

                # State changes racing each other: the loser re-reads, checks its
                # rules again and retries, so both apply, in some order.
                gate_one.arm(barrier)
                gate_two.arm(barrier)
                writes = gate_one.writes + gate_two.writes
                await asyncio.gather(one.set_l3_state("demo", 2, C), two.set_l3_state("demo", 1, A))
                assert await one.l3_states("demo") == {1: A, 2: C}
                assert gate_one.writes + gate_two.writes == writes + 3  # one retry

                # Two new tenants racing for one directory slot: both are made.
                gate_one.arm(barrier)
                gate_two.arm(barrier)
                writes = gate_one.writes + gate_two.writes
                made = await asyncio.gather(one.ensure_tenant("a"), two.ensure_tenant("b"))
                assert gate_one.writes + gate_two.writes == writes + 3  # one retry
                assert list(made) == [True, True]
                assert await two.tenants() == ["a", "b", "demo"]

    run(body)


def test_the_same_tenant_made_by_two_cores_at_once(keystore_url: str, master_raw: bytes) -> None:
    async def body() -> None:
        async with (
            opened_registry(keystore_url) as reg_one,
            opened_registry(keystore_url) as reg_two,
        ):
            gate_one, gate_two = Gate(reg_one), Gate(reg_two)
            async with (
                opened_store(gate_one, master_raw) as one,
                opened_store(gate_two, master_raw) as two,
            ):
                barrier = asyncio.Barrier(2)
                gate_one.arm(barrier)
                gate_two.arm(barrier)
                made = await asyncio.gather(one.ensure_tenant("demo"), two.ensure_tenant("demo"))
                assert sorted(made) == [False, True]
                assert await one.tenants() == await two.tenants() == ["demo"]
                assert await materials(one, "demo") == await materials(two, "demo")

    run(body)
