"""Live rotation of TLS material (krypton.tls.reload, krypton.tls.material), on real
files and real TLS on loopback, driven by a fake clock: no sleeps.

* a rewritten file is seen at the next look, loaded, and every subscriber
  swaps at once (prepare all, then commit all);
* a half-written file is tried again, and if it stays bad, refused, counted
  once (and the hook told) while the current material stays;
* a key that does not match its certificate is refused the same way;
* SIGHUP (``request``) loads at once; unchanged material is not applied again;
* a new server context from a replaced bundle refuses a client of a CA the
  bundle no longer holds, and accepts one of the new CA.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from krypton.config import GatewayTLSConfig
from krypton.errors import ConfigError
from krypton.pki import issue_ca, issue_leaf, write_cert_pem, write_key_pem
from krypton.pki.certs import Certificate, PrivateKey, cert_pem
from krypton.tls.contexts import server_context
from krypton.tls.material import Material, names_for, read_files
from krypton.tls.reload import Commit, FileSource, Reloader

WORKLOAD = "spiffe://krypton.dev/tenant/demo/workload/client"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class PKI:
    """A CA and a server leaf written where a gateway's config points."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca, self.ca_key = issue_ca("test CA 1")
        self.cert, self.key, self.ca_file = root / "gw.pem", root / "gw-key.pem", root / "ca.pem"
        self.serial = self.issue()
        write_cert_pem(self.ca_file, self.ca)

    def issue(self, ca: tuple[Certificate, PrivateKey] | None = None) -> int:
        ca_cert, ca_key = ca or (self.ca, self.ca_key)
        cert, key = issue_leaf(ca_cert, ca_key, common_name="gw", dns=("localhost",),
                               spiffe_id="spiffe://krypton.dev/gateway/gw", server=True,
                               client=True)
        write_key_pem(self.key, key)
        write_cert_pem(self.cert, cert)
        return cert.serial_number

    @property
    def tls(self) -> GatewayTLSConfig:
        return GatewayTLSConfig(cert=self.cert, key=self.key, ca=self.ca_file)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


def reloader(pki: PKI, clock: Clock, **kw: object) -> tuple[Reloader, list[Material]]:
    r = Reloader(FileSource(pki.tls, "gateway.tls"), interval=1.0, retries=2,
                 retry_delay=0.5, clock=clock, **kw)  # type: ignore[arg-type]
    r.load_first()
    applied: list[Material] = []

    def prepare(m: Material) -> Commit:
        return lambda: applied.append(m)

    r.subscribe(prepare)
    return r, applied


def test_a_rewritten_certificate_is_used_at_the_next_look(pki: PKI) -> None:
    clock = Clock()
    r, applied = reloader(pki, clock)
    assert r.current.serial == pki.serial
    new = pki.issue()
    assert not r.poll(clock.now + 0.5)  # not yet time to look
    assert r.poll(clock.now + 1.0)
    assert [m.serial for m in applied] == [new] and r.current.serial == new
    assert (r.reloads, r.failures) == (1, 0)
    assert r.certificate_expiry() == applied[0].not_after
    assert not r.poll(clock.now + 2.0)  # nothing new


def test_a_half_written_file_is_retried_then_counted_and_the_old_stays(pki: PKI) -> None:
    clock = Clock()
    told: list[str] = []
    r, applied = reloader(pki, clock, on_failure=told.append)
    old = r.current
    new = pki.issue()
    whole = pki.cert.read_bytes()
    pki.cert.write_bytes(whole[: len(whole) // 2])  # the writer is not done
    for t in (1.0, 1.5):  # the first try, then a retry 0.5 s later
        assert not r.poll(clock.now + t)
        assert r.failures == 0 and not told
    assert not r.poll(clock.now + 2.0)  # the second retry, the last
    assert r.failures == 1 and len(told) == 1 and "gateway.tls.cert" in told[0]
    assert r.current is old and not applied
    for t in (3.0, 4.0, 5.0):  # still the same bad file: counted once
        r.poll(clock.now + t)
    assert r.failures == 1
    pki.cert.write_bytes(whole)  # the writer finishes
    assert r.poll(clock.now + 6.0)
    assert r.current.serial == new and r.failures == 1


def test_a_writer_that_finishes_within_the_retries_is_not_counted(pki: PKI) -> None:
    clock = Clock()
    r, applied = reloader(pki, clock)
    new_cert = pki.cert.read_bytes()
    pki.issue()
    good = pki.cert.read_bytes(), pki.key.read_bytes()
    pki.cert.write_bytes(good[0][:100])
    assert not r.poll(clock.now + 1.0)
    pki.cert.write_bytes(good[0])
    assert r.poll(clock.now + 1.5)
    assert r.failures == 0 and applied and applied[0].chain == good[0] != new_cert


def test_a_key_that_does_not_match_is_refused(pki: PKI) -> None:
    clock = Clock()
    r, applied = reloader(pki, clock)
    old_key = pki.key.read_bytes()
    pki.issue()
    pki.key.write_bytes(old_key)  # new certificate, old key
    for t in (1.0, 1.5, 2.0, 2.5):
        r.poll(clock.now + t)
    assert r.failures == 1 and not applied
    assert "does not match" in r.last_error


def test_sighup_loads_at_once_and_unchanged_material_is_not_applied(pki: PKI) -> None:
    clock = Clock()
    r, applied = reloader(pki, clock)
    r.request()
    assert not r.poll(clock.now)  # same bytes: nothing to do
    assert not applied and r.failures == 0
    # A change the stamp cannot see (same size, inode and time restored) is found
    # by SIGHUP.
    new = pki.issue()
    r.request()
    assert r.poll(clock.now + 0.1)
    assert applied[-1].serial == new


def test_all_subscribers_swap_or_none(pki: PKI) -> None:
    clock = Clock()
    r, applied = reloader(pki, clock)

    def refuses(m: Material) -> Commit:
        raise ConfigError("gateway.tls: cannot build the uplink context")

    r.subscribe(refuses)
    pki.issue()
    for t in (1.0, 1.5, 2.0, 2.5):
        r.poll(clock.now + t)
    assert not applied and r.failures == 1


def test_material_errors_name_the_setting(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^core\.tls\.ca: file not found"):
        read_files(GatewayTLSConfig(cert=pki.cert, key=pki.key, ca=tmp_path / "x"), "core.tls")
    with pytest.raises(ConfigError, match=r"^gateway\.tls\.cert: required setting"):
        read_files(GatewayTLSConfig(key=pki.key, ca=pki.ca_file))
    m = read_files(pki.tls)
    assert "BEGIN" not in repr(m)  # no material in a repr
    assert names_for("core.tls").key == "core.tls.key"


# -- a replaced bundle, on real TLS --------------------------------------------------
def client_of(ca: tuple[Certificate, PrivateKey], server_ca: Certificate, tmp: Path,
              name: str) -> ssl.SSLContext:
    cert, key = issue_leaf(ca[0], ca[1], common_name=name, spiffe_id=WORKLOAD, client=True)
    write_cert_pem(tmp / f"{name}.pem", cert)
    write_key_pem(tmp / f"{name}-key.pem", key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=cert_pem(server_ca).decode())
    ctx.load_cert_chain(tmp / f"{name}.pem", tmp / f"{name}-key.pem")
    return ctx


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> bool:
    """One TLS handshake on loopback; whether the server accepted the client."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        port = lsock.getsockname()[1]
        result: list[bool] = []

        def serve() -> None:
            conn, _ = lsock.accept()
            try:
                with server.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
                    result.append(True)
            except (ssl.SSLError, OSError):
                result.append(False)

        t = threading.Thread(target=serve)
        t.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    client.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.recv(2)
        except (ssl.SSLError, OSError):
            pass
        t.join(5)
        return bool(result and result[0])


def test_a_replaced_bundle_refuses_the_old_ca(pki: PKI, tmp_path: Path) -> None:
    clock = Clock()
    r, _ = reloader(pki, clock)
    contexts: list[ssl.SSLContext] = [server_context(pki.tls, material=r.current)]
    r.subscribe(lambda m: lambda: contexts.append(server_context(pki.tls, material=m)))
    ca2 = issue_ca("test CA 2")
    old_client = client_of((pki.ca, pki.ca_key), pki.ca, tmp_path, "old")
    new_client = client_of(ca2, pki.ca, tmp_path, "new")
    assert handshake(contexts[-1], old_client)
    assert not handshake(contexts[-1], new_client)
    # Both CAs in the bundle: both clients.
    pki.ca_file.write_bytes(cert_pem(pki.ca) + cert_pem(ca2[0]))
    assert r.poll(clock.now + 1.0)
    assert handshake(contexts[-1], old_client) and handshake(contexts[-1], new_client)
    # The bundle replaced by the new CA alone: the old CA's client is refused.
    pki.ca_file.write_bytes(cert_pem(ca2[0]))
    assert r.poll(clock.now + 2.0)
    assert handshake(contexts[-1], new_client)
    assert not handshake(contexts[-1], old_client)
