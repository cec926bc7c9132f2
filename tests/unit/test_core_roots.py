"""The Core key store under each root of trust, and a hierarchy moved between
roots (``rewrap_root``): real SoftHSM2, real OpenBao, a real registry."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import pytest
from tests.helpers.openbao import BaoServer
from tests.helpers.softhsm import PIN_ENV, SoftHsm

from krypton.config import RootConfig
from krypton.core.keystore import CoreKeyStore, NotInitialised
from krypton.crypto.secret import SecretBytes, generate_key
from krypton.errors import MasterKeyMismatch, RootRefused, RootUnavailable
from krypton.model import Registry, SealedKey
from krypton.model.registry import RegistryConflict
from krypton.registry import open_registry
from krypton.roots import RootSealer, kind_of, open_root

TENANTS = ("demo", "other")


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


def roots(hsm: SoftHsm, bao: BaoServer) -> dict[str, RootConfig]:
    hsm.init_token("core")
    return {
        "file": RootConfig(kind="file"),
        "pkcs11": RootConfig(kind="pkcs11", module=hsm.module, token_label="core",
                             key_label="root", pin_env=PIN_ENV),
        "openbao": RootConfig(kind="openbao", address=bao.address,
                              transit_key=bao.transit_key(), token_env="BAO_TEST_TOKEN"),
    }


async def opened(cfg: RootConfig, bao: BaoServer, key: bytes, *, create: bool = False
                 ) -> RootSealer:
    return await open_root(cfg, create=create, file_key=lambda: SecretBytes(key),
                           environ={"BAO_TEST_TOKEN": bao.root_token, PIN_ENV: "1234"})


async def root_rows(reg: Registry) -> list[SealedKey]:
    rows = [*await reg.keys("", "MK"), *await reg.keys("", "TENANT")]
    for tenant in TENANTS:
        rows += await reg.keys(tenant, "L2")
    return rows


@pytest.mark.parametrize("kind", ["file", "pkcs11", "openbao"])
def test_a_hierarchy_under_each_root(
    kind: str, hsm: SoftHsm, openbao: BaoServer, keystore_url: str
) -> None:
    cfg = roots(hsm, openbao)[kind]
    key = generate_key(256).reveal()

    async def body() -> None:
        reg = await open_registry(keystore_url)
        try:
            store = await CoreKeyStore.open(reg, await opened(cfg, openbao, key, create=True),
                                            create=True)
            for t in TENANTS:
                await store.ensure_tenant(t)
            before = {g.tenant: g.material.reveal() for g in await store.grants(TENANTS, 60)}
            assert (await store.root_health()).ok
            await store.close()
            assert {kind_of(r.sealed) for r in await root_rows(reg)} == {kind}
            store = await CoreKeyStore.open(reg, await opened(cfg, openbao, key))
            after = {g.tenant: g.material.reveal() for g in await store.grants(TENANTS, 60)}
            assert after == before and await store.tenants() == sorted(TENANTS)
            await store.close()
        finally:
            await reg.close()

    run(body)


def test_rewrap_root_file_to_pkcs11_to_openbao(
    hsm: SoftHsm, openbao: BaoServer, keystore_url: str
) -> None:
    cfgs = roots(hsm, openbao)
    key = generate_key(256).reveal()

    async def body() -> None:
        reg = await open_registry(keystore_url)
        try:
            store = await CoreKeyStore.open(reg, await opened(cfgs["file"], openbao, key),
                                            create=True)
            for t in TENANTS:
                await store.ensure_tenant(t)
            await store.rotate_l3("demo")
            l3_before = {t: await reg.keys(t, "L3") for t in TENANTS}
            grants = {(g.tenant, g.version): g.material.reveal()
                      for g in await store.grants(TENANTS, 60)}
            await store.close()
            for old, new in (("file", "pkcs11"), ("pkcs11", "openbao")):
                store = await CoreKeyStore.open(reg, await opened(cfgs[old], openbao, key))
                target = await opened(cfgs[new], openbao, key, create=True)
                assert await store.rewrap_root(target) == 1 + 2 + 2  # check, directory, L2s
                await target.close()
                await store.close()
                assert {kind_of(r.sealed) for r in await root_rows(reg)} == {new}
                with pytest.raises(MasterKeyMismatch, match=f"sealed by a {new} root"):
                    await CoreKeyStore.open(reg, await opened(cfgs[old], openbao, key))
                store = await CoreKeyStore.open(reg, await opened(cfgs[new], openbao, key))
                now = {(g.tenant, g.version): g.material.reveal()
                       for g in await store.grants(TENANTS, 60)}
                assert now == grants  # every L3 still opens, through the new root
                await store.close()
                assert {t: await reg.keys(t, "L3") for t in TENANTS} == l3_before
        finally:
            await reg.close()

    run(body)


def test_a_root_that_cannot_serve_makes_no_hierarchy(
    hsm: SoftHsm, openbao: BaoServer, keystore_url: str
) -> None:
    cfgs = roots(hsm, openbao)
    refusing = openbao.token([openbao.policy([("sys/health", ["read"])])])

    async def body() -> None:
        reg = await open_registry(keystore_url)
        try:
            no_token = dataclasses.replace(cfgs["pkcs11"], token_label="absent")
            with pytest.raises(RootUnavailable, match="no PKCS#11 token labelled 'absent'"):
                await opened(no_token, openbao, b"", create=True)
            with pytest.raises(RootRefused, match="holds no AES key labelled 'root'"):
                await opened(cfgs["pkcs11"], openbao, b"")
            with pytest.raises(RootRefused, match="has no Transit key"):
                await opened(dataclasses.replace(cfgs["openbao"], transit_key="gone"),
                             openbao, b"", create=True)
            root = await open_root(cfgs["openbao"], environ={"BAO_TEST_TOKEN": refusing})
            with pytest.raises(RootRefused, match="403"):
                await CoreKeyStore.open(reg, root, create=True)
            assert await root_rows(reg) == []
            with pytest.raises(NotInitialised):
                await CoreKeyStore.open(reg, await opened(cfgs["openbao"], openbao, b""))
        finally:
            await reg.close()

    run(body)


def test_reseal_keys_is_one_compare_and_swap(keystore_url: str) -> None:
    async def body() -> None:
        reg = await open_registry(keystore_url)
        try:
            a, b = SealedKey("t", "L2", 1, 1, b"old-a"), SealedKey("t", "L2", 2, 1, b"old-b")
            await reg.put_keys([a, b])
            stale = dataclasses.replace(b, sealed=b"not-what-is-stored")
            with pytest.raises(RegistryConflict, match="changed while it was being sealed"):
                await reg.reseal_keys([(a, b"new-a"), (stale, b"new-b")])
            assert [k.sealed for k in await reg.keys("t", "L2")] == [b"old-a", b"old-b"]
            await reg.reseal_keys([(a, b"new-a"), (b, b"new-b")])
            assert [k.sealed for k in await reg.keys("t", "L2")] == [b"new-a", b"new-b"]
        finally:
            await reg.close()

    run(body)
