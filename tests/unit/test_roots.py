"""Roots of trust (krypton.roots) against a real SoftHSM2 token and a real OpenBao."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from tests.helpers.openbao import BaoServer
from tests.helpers.servers import free_port
from tests.helpers.softhsm import PIN_ENV, SoftHsm

from krypton.config import RootConfig
from krypton.crypto.secret import SecretBytes, generate_key
from krypton.errors import ConfigError, RootRefused, RootUnavailable, UnwrapFailed
from krypton.roots import RootSealer, kind_of, open_root, probe

T = TypeVar("T")
SECRET = b"0123456789abcdef0123456789abcdef"


def run(aw: Awaitable[T]) -> T:
    async def main() -> T:
        return await aw

    return asyncio.run(main())


def pkcs11_config(hsm: SoftHsm, token: str = "root", key: str = "krypton-root") -> RootConfig:
    return RootConfig(kind="pkcs11", module=hsm.module, token_label=token, key_label=key,
                      pin_env=PIN_ENV)


def openbao_config(bao: BaoServer, key: str) -> RootConfig:
    return RootConfig(kind="openbao", address=bao.address, transit_key=key,
                      token_env="TEST_BAO_TOKEN")


def bao_env(bao: BaoServer, token: str | None = None) -> dict[str, str]:
    return {"TEST_BAO_TOKEN": token or bao.root_token}


async def _round_trip(root: RootSealer) -> None:
    try:
        blob = await root.seal(b"ctx-a", SecretBytes(SECRET))
        assert SECRET not in blob
        assert kind_of(blob) == root.kind
        with await root.unseal(b"ctx-a", blob) as plain:
            assert plain.reveal() == SECRET
        with pytest.raises(UnwrapFailed):
            await root.unseal(b"ctx-b", blob)  # bound to its context
        tampered = blob[:-2] + bytes([blob[-2] ^ 1]) + blob[-1:]
        with pytest.raises(UnwrapFailed):
            await root.unseal(b"ctx-a", tampered)
        assert (await probe(root)).ok
    finally:
        await root.close()


def test_file_root_round_trip() -> None:
    run(_round_trip(run(open_root(RootConfig(), file_key=lambda: generate_key(256)))))


def test_pkcs11_root_round_trip_and_key_made_by_init(hsm: SoftHsm) -> None:
    hsm.init_token("root")
    cfg = pkcs11_config(hsm)
    with pytest.raises(RootRefused, match="holds no AES key labelled 'krypton-root'"):
        run(open_root(cfg))
    run(_round_trip(run(open_root(cfg, create=True))))
    run(_round_trip(run(open_root(cfg))))  # the key is in the token now


def test_pkcs11_errors_are_clear(hsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> None:
    hsm.init_token("root")
    with pytest.raises(RootUnavailable, match="no PKCS#11 token labelled 'nope'"):
        run(open_root(pkcs11_config(hsm, token="nope"), create=True))
    bad_module = dataclasses.replace(pkcs11_config(hsm), module=hsm.conf)
    with pytest.raises(RootUnavailable, match="cannot be loaded"):
        run(open_root(bad_module))
    monkeypatch.setenv(PIN_ENV, "9999")
    with pytest.raises(RootRefused, match="refused the PIN"):
        run(open_root(pkcs11_config(hsm), create=True))
    monkeypatch.delenv(PIN_ENV)
    with pytest.raises(ConfigError, match=f"\\${PIN_ENV}, which is not set"):
        run(open_root(pkcs11_config(hsm)))


def test_blobs_of_one_root_are_refused_by_another(hsm: SoftHsm, openbao: BaoServer) -> None:
    hsm.init_token("root")

    async def main() -> None:
        roots = [
            await open_root(RootConfig(), file_key=lambda: generate_key(256)),
            await open_root(pkcs11_config(hsm), create=True),
            await open_root(openbao_config(openbao, openbao.transit_key()),
                            environ=bao_env(openbao)),
        ]
        try:
            blobs = [await r.seal(b"ctx", SECRET) for r in roots]
            for i, root in enumerate(roots):
                for j, blob in enumerate(blobs):
                    if i != j:
                        with pytest.raises((UnwrapFailed, RootRefused)):
                            await root.unseal(b"ctx", blob)
        finally:
            for r in roots:
                await r.close()

    run(main())


def test_openbao_root_round_trip(openbao: BaoServer) -> None:
    key = openbao.transit_key()
    run(_round_trip(run(open_root(openbao_config(openbao, key), environ=bao_env(openbao)))))


def test_openbao_root_with_an_approle_allowed_only_encrypt_and_decrypt(
    openbao: BaoServer,
) -> None:
    key = openbao.transit_key()
    policy = openbao.policy([(f"transit/encrypt/{key}", ["update"]),
                             (f"transit/decrypt/{key}", ["update"])])
    role_id, secret_id = openbao.approle([policy])
    cfg = dataclasses.replace(openbao_config(openbao, key), role_id_env="R", secret_id_env="S")
    run(_round_trip(run(open_root(cfg, environ={"R": role_id, "S": secret_id}))))


def test_openbao_missing_key_not_derived_refusing_and_unreachable(
    openbao: BaoServer,
) -> None:
    with pytest.raises(RootRefused, match="has no Transit key transit/keys/missing"):
        run(open_root(openbao_config(openbao, "missing"), environ=bao_env(openbao)))
    plain = openbao.transit_key(derived=False)
    with pytest.raises(RootRefused, match="not derived"):
        run(open_root(openbao_config(openbao, plain), environ=bao_env(openbao)))
    key = openbao.transit_key()
    refusing = openbao.token([openbao.policy([("sys/health", ["read"])])])
    root = run(open_root(openbao_config(openbao, key), environ=bao_env(openbao, refusing)))
    with pytest.raises(RootRefused, match="403"):
        run(root.check())
    run(root.close())
    nowhere = dataclasses.replace(openbao_config(openbao, key),
                                  address=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RootUnavailable, match="unreachable"):
        run(open_root(nowhere, environ=bao_env(openbao)))
    with pytest.raises(ConfigError, match="no OpenBao credentials"):
        run(open_root(openbao_config(openbao, key), environ={}))


def test_probe_reports_a_root_that_went_away(openbao: BaoServer) -> None:
    key = openbao.transit_key()
    root = run(open_root(openbao_config(openbao, key), environ=bao_env(openbao)))
    health = run(probe(root))
    assert health.ok and health.kind == "openbao" and key in health.where
    openbao.delete_transit_key(key)
    health = run(probe(root))
    assert not health.ok and "transit" in health.detail
    run(root.close())
