"""The OpenBao HTTP client against a real ``bao server -dev``."""

from __future__ import annotations

import base64
import threading

import pytest
from tests.helpers.fixtures import BaoServers
from tests.helpers.openbao import BaoServer
from tests.helpers.servers import free_port

from krypton.errors import OpenBaoError
from krypton.openbao import OpenBaoClient


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_transit_round_trip_on_kept_alive_connections(openbao: BaoServer) -> None:
    key = openbao.transit_key()
    client = openbao.client()
    try:
        blobs = [
            client.post(f"transit/encrypt/{key}",
                        {"plaintext": _b64(b"secret %d" % i), "context": _b64(b"t")})["data"]
            for i in range(20)
        ]
        assert len(client._idle) == 1  # one connection, reused for every request
        for i, data in enumerate(blobs):
            plain = client.post(f"transit/decrypt/{key}",
                                {"ciphertext": data["ciphertext"], "context": _b64(b"t")})
            assert base64.b64decode(plain["data"]["plaintext"]) == b"secret %d" % i
        with pytest.raises(OpenBaoError) as wrong:
            client.post(f"transit/decrypt/{key}",
                        {"ciphertext": blobs[0]["ciphertext"], "context": _b64(b"other")})
        assert wrong.value.http_status == 400
    finally:
        client.close()


def test_concurrent_requests_from_threads(openbao: BaoServer) -> None:
    key = openbao.transit_key()
    client = openbao.client()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                ct = client.post(f"transit/encrypt/{key}",
                                 {"plaintext": _b64(b"x"), "context": _b64(b"c")})
                client.post(f"transit/decrypt/{key}",
                            {"ciphertext": ct["data"]["ciphertext"], "context": _b64(b"c")})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    assert errors == []


def test_approle_login_and_policy(openbao: BaoServer) -> None:
    key = openbao.transit_key()
    policy = openbao.policy([(f"transit/encrypt/{key}", ["update"])])
    role_id, secret_id = openbao.approle([policy])
    client = OpenBaoClient(openbao.address, role_id=role_id, secret_id=secret_id)
    try:
        client.post(f"transit/encrypt/{key}", {"plaintext": _b64(b"x"), "context": _b64(b"c")})
        with pytest.raises(OpenBaoError) as refused:
            client.get(f"transit/keys/{key}")
        assert refused.value.http_status == 403
    finally:
        client.close()
    bad = OpenBaoClient(openbao.address, role_id=role_id, secret_id="wrong")
    with pytest.raises(OpenBaoError, match="AppRole login"):
        bad.get("sys/mounts")
    bad.close()


def test_a_restarted_server_is_reached_on_a_fresh_connection(
    start_openbao: BaoServers,
) -> None:
    port = free_port()
    server = start_openbao(port=port, root_token="root-x")
    client = OpenBaoClient(server.address, token="root-x")
    try:
        client.get("sys/mounts")
        assert len(client._idle) == 1
        server.stop()
        with pytest.raises(OpenBaoError) as down:
            client.get("sys/mounts")
        assert down.value.http_status is None
        assert "root-x" not in down.value.message
        start_openbao(port=port, root_token="root-x")
        assert "transit/" not in client.get("sys/mounts")["data"]
    finally:
        client.close()


def test_bad_settings() -> None:
    with pytest.raises(OpenBaoError, match="expected http"):
        OpenBaoClient("127.0.0.1:8200", token="t")
    with pytest.raises(OpenBaoError, match="no token"):
        OpenBaoClient("http://127.0.0.1:8200")
