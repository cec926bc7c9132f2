"""A TLS client without a certificate of the gateway's CA gets no KMIP session.

The gateway requires a client certificate. Under TLS 1.2 the server checks it
before its Finished, so the client's handshake fails. Under TLS 1.3 the
client's handshake completes before the server has looked at the
certificate; the refusal (an alert, or the connection closed) arrives at the
client's first read. Either way no KMIP response may ever come back: each
probe sends a valid Query, which a server that accepted the peer would answer.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from kmip.core import enums
from kmip.pie.client import ProxyKmipClient
from tests.helpers.servers import DevServer, recv_message

from krypton.pki.certs import issue_ca, issue_leaf, write_cert_pem, write_key_pem
from krypton.pki.dev import workload_spiffe_id
from krypton.ttlv.codec import encode
from krypton.ttlv.enums import Operation, QueryFunction
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

TLS_VERSIONS = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": ssl.TLSVersion.TLSv1_3}

QUERY = encode(
    Item.structure(
        Tag.REQUEST_MESSAGE,
        Item.structure(
            Tag.REQUEST_HEADER,
            Item.structure(
                Tag.PROTOCOL_VERSION,
                Item.integer(Tag.PROTOCOL_VERSION_MAJOR, 1),
                Item.integer(Tag.PROTOCOL_VERSION_MINOR, 4),
            ),
            Item.integer(Tag.BATCH_COUNT, 1),
        ),
        Item.structure(
            Tag.BATCH_ITEM,
            Item.enum(Tag.OPERATION, Operation.QUERY),
            Item.structure(
                Tag.REQUEST_PAYLOAD,
                Item.enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_OPERATIONS),
            ),
        ),
    )
)

# What a refused client may see: an alert or a reset (both at handshake or first read).
REFUSED = (ssl.SSLError, ConnectionError)


def _context(srv: DevServer, tls: ssl.TLSVersion) -> ssl.SSLContext:
    """Trusts the gateway's CA (so the client side is fine); presents nothing yet."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(srv.pki / "ca.pem"))
    ctx.minimum_version = ctx.maximum_version = tls
    return ctx


def refused_at(srv: DevServer, ctx: ssl.SSLContext) -> str:
    """Where the session was refused: "handshake" or "first read". Fails on any answer."""
    with socket.create_connection((srv.host, srv.port), timeout=5) as raw:
        try:
            sock = ctx.wrap_socket(raw, server_hostname="localhost")
        except REFUSED:
            return "handshake"
        with sock:
            try:
                sock.sendall(QUERY)
                data = sock.recv(8)
            except REFUSED:
                return "first read"
            assert data == b"", f"the gateway answered a client it must refuse: {data!r}"
            return "first read"


def _assert_refused(srv: DevServer, ctx: ssl.SSLContext, tls: ssl.TLSVersion) -> None:
    where = refused_at(srv, ctx)
    if tls is ssl.TLSVersion.TLSv1_2:
        assert where == "handshake"


def _assert_still_serving(srv: DevServer) -> None:
    with srv.connect() as sock:
        sock.sendall(QUERY)
        assert len(recv_message(sock)) > 8


def test_a_client_with_the_right_certificate_gets_a_session(srv: DevServer) -> None:
    """The control: the same probe with client.pem is answered (so the probe can fail)."""
    for tls in TLS_VERSIONS.values():
        ctx = _context(srv, tls)
        ctx.load_cert_chain(str(srv.pki / "client.pem"), str(srv.pki / "client-key.pem"))
        with pytest.raises(AssertionError, match="must refuse"):
            refused_at(srv, ctx)


@pytest.mark.parametrize("tls", TLS_VERSIONS.values(), ids=TLS_VERSIONS.keys())
def test_a_client_without_a_certificate_gets_no_session(
    srv: DevServer, tls: ssl.TLSVersion
) -> None:
    _assert_refused(srv, _context(srv, tls), tls)
    _assert_still_serving(srv)


@pytest.mark.parametrize("tls", TLS_VERSIONS.values(), ids=TLS_VERSIONS.keys())
@pytest.mark.parametrize(
    "ca_name",
    ["Rogue CA", "Krypton development CA"],
    ids=["other-ca", "other-ca-same-name"],
)
def test_a_certificate_from_another_ca_gets_no_session(
    srv: DevServer, tmp_path: Path, tls: ssl.TLSVersion, ca_name: str
) -> None:
    """Even with the demo workload's own SPIFFE ID, and a CA that takes the real one's name."""
    ca_cert, ca_key = issue_ca(ca_name)
    cert, key = issue_leaf(
        ca_cert, ca_key, common_name="demo client", spiffe_id=workload_spiffe_id("demo", "client")
    )
    write_cert_pem(tmp_path / "rogue.pem", cert)
    write_key_pem(tmp_path / "rogue-key.pem", key)
    ctx = _context(srv, tls)
    ctx.load_cert_chain(str(tmp_path / "rogue.pem"), str(tmp_path / "rogue-key.pem"))

    _assert_refused(srv, ctx, tls)
    _assert_still_serving(srv)


def _pykmip_create_without_certificate(srv: DevServer) -> None:
    client = ProxyKmipClient(
        hostname=srv.host, port=srv.port, ca=str(srv.pki / "ca.pem"), config_file="/dev/null"
    )
    try:
        client.open()
        client.create(enums.CryptographicAlgorithm.AES, 128)
    finally:
        client.close()


def test_pykmip_without_a_certificate_gets_nothing(srv: DevServer) -> None:
    # PyKMIP reports the refusal as an SSL error at open (TLS 1.2) or, under
    # TLS 1.3, as the end of the stream when it reads the first response.
    with pytest.raises((EOFError, *REFUSED)):
        _pykmip_create_without_certificate(srv)
    _assert_still_serving(srv)
