"""The user story of issue 2, first step: PyKMIP creates and reads back a key."""

from __future__ import annotations

from kmip.core import enums
from kmip.pie.client import ProxyKmipClient
from tests.helpers.fixtures import DevStacks


def test_pykmip_create_get_roundtrip(start_dev: DevStacks) -> None:
    srv = start_dev()
    with ProxyKmipClient(
        hostname=srv.host,
        port=srv.port,
        cert=str(srv.pki / "client.pem"),
        key=str(srv.pki / "client-key.pem"),
        ca=str(srv.pki / "ca.pem"),
        config_file="/dev/null",
    ) as client:
        uid = client.create(enums.CryptographicAlgorithm.AES, 256)
        key = client.get(uid)
        assert len(key.value) == 32
