"""The embedded L3 source and the dev stack, on both registry backends
(``keystore_url``: a SQLite file, or a database on the real PostgreSQL server)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tests.helpers.keystore_env import opened_store

from krypton.config import AdminConfig, load_core_config, load_gateway_config
from krypton.core.embedded import EmbeddedL3Source
from krypton.crypto.keyring import KeyRing, L3Source, L3State
from krypton.crypto.secret import generate_key
from krypton.errors import KeyUnavailable
from krypton.pki.dev import init_dev_dir
from krypton.stack.dev import EmbeddedStack, prepare_tenants

UID = "9d3f8b7e-0000-4000-8000-00000000c0de"
A, D, C = L3State.ACTIVE, L3State.DEACTIVATED, L3State.COMPROMISED


@pytest.fixture
def master_raw() -> bytes:
    return os.urandom(32)


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await body()

    asyncio.run(main())


async def until(check: Callable[[], bool], timeout: float = 1.0) -> float:
    """Wait until ``check()`` holds; how long that took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def test_embedded_source_feeds_the_ring(keystore_url: str, master_raw: bytes) -> None:
    async def body() -> None:
        async with opened_store(keystore_url, master_raw) as store:
            ring = KeyRing()
            source: L3Source = EmbeddedL3Source(store, ["demo", "other"], lease_seconds=3600)
            await source.start(ring)
            assert ring.tenants() == ["demo", "other"]
            l4 = generate_key(256)
            version, blob = ring.wrap("demo", UID, l4)
            assert version == 1

            assert await store.rotate_l3("demo") == 2  # pushed by the listener, no waiting
            assert ring.active_version("demo") == 2
            assert ring.versions("demo") == {1: D, 2: A}
            assert ring.unwrap("demo", UID, 1, blob) == l4

            await store.set_l3_state("demo", 1, C)
            with pytest.raises(KeyUnavailable):
                ring.unwrap("demo", UID, 1, blob)

            await store.ensure_tenant("stranger")  # not served by this gateway
            assert "stranger" not in ring.tenants()

            await source.close()
            await store.rotate_l3("demo")
            assert ring.active_version("demo") == 2

    run(body)


def test_embedded_source_renews_leases(keystore_url: str, master_raw: bytes) -> None:
    async def body() -> None:
        async with opened_store(keystore_url, master_raw) as store:
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

    run(body)


def test_changes_through_another_core_reach_the_ring(keystore_url: str, master_raw: bytes) -> None:
    async def body() -> None:
        async with (
            opened_store(keystore_url, master_raw, watch=True) as mine,
            opened_store(keystore_url, master_raw) as other,
        ):
            ring = KeyRing()
            source = EmbeddedL3Source(mine, ["demo"], lease_seconds=3600)
            await source.start(ring)
            version, blob = ring.wrap("demo", UID, generate_key(256))

            await other.rotate_l3("demo")
            assert await until(lambda: ring.active_version("demo") == 2) < 1.0
            await other.set_l3_state("demo", version, C)
            assert await until(lambda: version not in ring.versions("demo")) < 1.0
            with pytest.raises(KeyUnavailable):
                ring.unwrap("demo", UID, version, blob)
            await source.close()

    run(body)


def test_dev_stack_runs_on_the_configured_registry(
    tmp_path: Path, keystore_url: str, master_raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = init_dev_dir(tmp_path / "dev")
    core = dataclasses.replace(
        load_core_config(layout.core_config), registry=keystore_url, listen_port=0,
        admin=AdminConfig(),
    )
    gateway = dataclasses.replace(load_gateway_config(layout.gateway_config), listen_port=0,
                                  admin=AdminConfig())
    monkeypatch.setenv("KRYPTON_CORE_MASTER_KEY", master_raw.hex())
    prepare_tenants(core)  # synchronous, as the CLI calls it before forking
    stack = EmbeddedStack(core, gateway)

    async def body() -> None:
        async with opened_store(keystore_url, master_raw) as other:
            assert await other.tenants() == sorted(core.tenants)
            await stack.start()
            try:
                assert stack.gateway is not None
                assert stack.gateway.port > 0
                ring = stack.gateway.keyring
                assert ring.tenants() == sorted(core.tenants)
                await other.rotate_l3("demo")  # e.g. `krypton core rotate-l3`
                assert await until(lambda: ring.active_version("demo") == 2) < 1.0
            finally:
                await stack.close()
            assert stack.core.registry is not None  # closed, not forgotten

    run(body)
