"""Real mutual TLS on loopback with the development PKI."""

from __future__ import annotations

import dataclasses
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from krypton.config import GatewayTLSConfig, TLSConfig
from krypton.errors import ConfigError, PermissionDenied
from krypton.pki import (
    DevLayout,
    init_dev_dir,
    issue_ca,
    issue_leaf,
    load_cert_pem,
    load_key_pem,
    write_cert_pem,
    write_key_pem,
)
from krypton.tls.contexts import (
    client_context,
    peer_identity,
    server_context,
    set_listener_rules,
)
from krypton.tls.identity import PeerRules, identity_from_der, identity_from_peercert

DEMO = "spiffe://krypton.dev/tenant/demo/workload/client"


@dataclasses.dataclass
class Seen:
    identity: str | None = None
    der_identity: str | None = None
    version: str | None = None
    cipher: str | None = None
    reused: bool | None = None
    checked: str | BaseException | None = None  # peer_identity: as the listener sees it
    error: BaseException | None = None


class Server:
    """Accepts connections on a thread; records what the server side saw for each."""

    def __init__(self, ctx: ssl.SSLContext, family: socket.AddressFamily = socket.AF_INET) -> None:
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self.ctx = ctx
        self.sock = socket.create_server((host, 0), family=family)
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.seen: list[Seen] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            seen = Seen()
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    seen.identity = identity_from_peercert(tls.getpeercert())
                    seen.der_identity = identity_from_der(tls.getpeercert(binary_form=True))
                    seen.version = tls.version()
                    seen.cipher = (tls.cipher() or ("",))[0]
                    seen.reused = tls.session_reused
                    try:
                        seen.checked = peer_identity(tls, tls.getpeercert(binary_form=True))
                    except PermissionDenied as e:
                        seen.checked = e
                    tls.sendall(b"ok")
                    tls.recv(1)
            except (ssl.SSLError, OSError) as e:
                seen.error = e
            finally:
                conn.close()
            self.seen.append(seen)

    def last(self) -> Seen:
        self.wait(1)
        return self.seen[-1]

    def wait(self, n: int) -> None:
        for _ in range(100):
            if len(self.seen) >= n:
                return
            self.stop.wait(0.05)
        raise AssertionError(f"server saw {len(self.seen)} connections, expected {n}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def talk(ctx: ssl.SSLContext, port: int, host: str = "127.0.0.1",
         session: ssl.SSLSession | None = None) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """Connect, read the server's "ok", hang up; the reply, the session, whether resumed."""
    with socket.create_connection((host, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=host, session=session) as tls:
        data = tls.recv(2)
        return data, tls.session, bool(tls.session_reused)


def outcome(ctx: ssl.SSLContext, port: int) -> bytes | BaseException:
    """What a client gets: the server's reply, or the error (a refused handshake)."""
    try:
        return talk(ctx, port)[0]
    except (ssl.SSLError, OSError) as e:
        return e


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevLayout:
    return init_dev_dir(tmp_path_factory.mktemp("dev"))


def gateway_tls(dev: DevLayout, **changes: object) -> TLSConfig:
    tls = TLSConfig(cert=dev.gateway, key=dev.gateway_key, ca=dev.ca)
    return dataclasses.replace(tls, **changes)  # type: ignore[arg-type]


@pytest.fixture
def server(dev: DevLayout) -> Iterator[Server]:
    s = Server(server_context(gateway_tls(dev)))
    yield s
    s.close()


def demo_client(dev: DevLayout) -> ssl.SSLContext:
    return client_context(dev.ca, dev.client, dev.client_key)


def test_dev_client_handshake_and_identity(dev: DevLayout, server: Server) -> None:
    data, _, _ = talk(demo_client(dev), server.port)
    seen = server.last()
    assert data == b"ok", seen.error
    assert seen.identity == DEMO
    assert seen.der_identity == DEMO
    assert seen.version == "TLSv1.3"


def test_other_tenant_and_gateway_identities(dev: DevLayout, server: Server) -> None:
    talk(client_context(dev.ca, dev.other_client, dev.other_client_key), server.port)
    talk(client_context(dev.ca, dev.gateway, dev.gateway_key), server.port)
    server.wait(2)
    assert [s.identity for s in server.seen] == [
        "spiffe://krypton.dev/tenant/other/workload/client",
        "spiffe://krypton.dev/gateway/gw-dev",
    ]


def test_client_without_certificate_is_refused(dev: DevLayout, server: Server) -> None:
    assert outcome(client_context(dev.ca), server.port) != b"ok"
    seen = server.last()
    assert isinstance(seen.error, ssl.SSLError)
    assert seen.identity is None
    assert "certificate" in str(seen.error).lower()


def test_certificate_from_another_ca_is_refused(dev: DevLayout, server: Server,
                                                tmp_path: Path) -> None:
    ca, ca_key = issue_ca("someone else's CA")
    cert, key = issue_leaf(ca, ca_key, common_name="mallory", spiffe_id=DEMO)
    write_cert_pem(tmp_path / "m.pem", cert)
    write_key_pem(tmp_path / "m-key.pem", key)
    ctx = client_context(dev.ca, tmp_path / "m.pem", tmp_path / "m-key.pem")
    assert outcome(ctx, server.port) != b"ok"
    seen = server.last()
    assert isinstance(seen.error, ssl.SSLError)
    assert "certificate verify failed" in str(seen.error)
    assert seen.identity is None


def old_client(dev: DevLayout, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that can speak TLS 1.1 (OpenSSL 3 needs security level 0 for it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    ctx.maximum_version = maximum
    ctx.load_verify_locations(dev.ca)
    ctx.load_cert_chain(dev.client, dev.client_key)
    return ctx


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls11_client_is_refused(dev: DevLayout, server: Server) -> None:
    data, _, _ = talk(old_client(dev, ssl.TLSVersion.TLSv1_3), server.port)
    assert data == b"ok"  # the same client, allowed 1.3, gets in: only the version differs
    with pytest.raises(ssl.SSLError):
        talk(old_client(dev, ssl.TLSVersion.TLSv1_1), server.port)
    server.wait(2)  # the refused connection's record, not the first one's
    seen = server.seen[-1]
    assert isinstance(seen.error, ssl.SSLError)
    assert "UNSUPPORTED_PROTOCOL" in str(seen.error) or "version" in str(seen.error).lower()


def test_tls12_uses_ecdhe_aead(dev: DevLayout, server: Server) -> None:
    ctx = demo_client(dev)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    data, _, _ = talk(ctx, server.port)
    seen = server.last()
    assert data == b"ok", seen.error
    assert seen.version == "TLSv1.2"
    assert seen.cipher is not None
    assert seen.cipher.startswith("ECDHE-")
    assert "GCM" in seen.cipher or "CHACHA" in seen.cipher


def test_tls12_without_ecdhe_aead_is_refused(dev: DevLayout, server: Server) -> None:
    ctx = demo_client(dev)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA:AES128-GCM-SHA256")
    with pytest.raises(ssl.SSLError):
        talk(ctx, server.port)
    assert isinstance(server.last().error, ssl.SSLError)


def test_min_version_13_refuses_tls12(dev: DevLayout) -> None:
    srv = Server(server_context(gateway_tls(dev, min_version="1.3")))
    try:
        ctx = demo_client(dev)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            talk(ctx, srv.port)
        assert talk(demo_client(dev), srv.port)[0] == b"ok"
        srv.wait(2)
        assert isinstance(srv.seen[0].error, ssl.SSLError)
        assert srv.seen[1].version == "TLSv1.3"
    finally:
        srv.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2],
                         ids=["tls1.3", "tls1.2"])
def test_session_resumption_with_tickets(dev: DevLayout, server: Server,
                                         version: ssl.TLSVersion) -> None:
    ctx = demo_client(dev)
    ctx.maximum_version = version
    _, session, reused = talk(ctx, server.port)
    assert not reused
    assert session is not None
    assert session.has_ticket
    data, _, reused = talk(ctx, server.port, session=session)
    assert data == b"ok"
    assert reused
    server.wait(2)
    assert server.seen[1].reused
    assert server.seen[1].identity == DEMO  # the identity survives resumption


def test_resumed_session_after_the_certificate_expired_is_refused(
        dev: DevLayout, tmp_path: Path) -> None:
    """Issue 11 finding 7: OpenSSL resumes a session without looking at the certificate
    again; the listener's check on every connection refuses it once the certificate
    has expired (a 20 s certificate, a fake clock instead of a sleep)."""
    cert, key = issue_leaf(load_cert_pem(dev.ca), load_key_pem(dev.ca_key),
                           common_name="short", spiffe_id=DEMO, seconds=20)
    write_cert_pem(tmp_path / "short.pem", cert)
    write_key_pem(tmp_path / "short-key.pem", key)
    ctx = server_context(gateway_tls(dev))
    now = [time.time()]
    set_listener_rules(ctx, PeerRules(clock=lambda: now[0]))
    srv = Server(ctx)
    try:
        client = client_context(dev.ca, tmp_path / "short.pem", tmp_path / "short-key.pem")
        data, session, _ = talk(client, srv.port)
        assert data == b"ok"
        assert srv.last().checked == DEMO
        now[0] = cert.not_valid_after_utc.timestamp() + 1
        _, _, reused = talk(client, srv.port, session=session)
        srv.wait(2)
        assert reused and srv.seen[1].reused  # OpenSSL alone would have let it in
        checked = srv.seen[1].checked
        assert isinstance(checked, PermissionDenied)
        assert "certificate expired" in checked.message
    finally:
        srv.close()


def test_session_lifetime_bounds_tickets(dev: DevLayout) -> None:
    """OpenSSL's session timeout (two hours by default) becomes gateway.tls.session_lifetime:
    it refuses older tickets itself, and tells clients in each ticket's lifetime hint."""
    for lifetime, hint in ((60.0, 60), (None, 3600)):
        tls = GatewayTLSConfig(cert=dev.gateway, key=dev.gateway_key, ca=dev.ca)
        if lifetime is not None:
            tls = dataclasses.replace(tls, session_lifetime=lifetime)
        srv = Server(server_context(tls))
        try:
            _, session, _ = talk(demo_client(dev), srv.port)
            assert session is not None
            assert session.ticket_lifetime_hint == hint
        finally:
            srv.close()


def test_client_leaf_without_client_auth_is_refused(dev: DevLayout, tmp_path: Path) -> None:
    cert, key = issue_leaf(load_cert_pem(dev.ca), load_key_pem(dev.ca_key), common_name="srv",
                           spiffe_id=DEMO, server=True, client=False)
    write_cert_pem(tmp_path / "s.pem", cert)
    write_key_pem(tmp_path / "s-key.pem", key)
    srv = Server(server_context(gateway_tls(dev)))
    try:
        talk(client_context(dev.ca, tmp_path / "s.pem", tmp_path / "s-key.pem"), srv.port)
    except (ssl.SSLError, OSError):
        pass  # OpenSSL may refuse it already (its purpose check); either way it is out
    finally:
        srv.wait(1)
        srv.close()
    seen = srv.seen[0]
    assert seen.error is not None or isinstance(seen.checked, PermissionDenied)


def test_deny_list_refuses_a_listed_identity(dev: DevLayout, tmp_path: Path) -> None:
    deny = tmp_path / "deny.txt"
    deny.write_text(f"# revoked\n{DEMO}\n")
    srv = Server(server_context(gateway_tls(dev, deny_list=deny)))
    try:
        talk(demo_client(dev), srv.port)
        talk(client_context(dev.ca, dev.other_client, dev.other_client_key), srv.port)
        srv.wait(2)
        denied, other = srv.seen[0].checked, srv.seen[1].checked
        assert isinstance(denied, PermissionDenied) and "deny list" in denied.message
        assert other == "spiffe://krypton.dev/tenant/other/workload/client"
    finally:
        srv.close()


def test_no_resumption_when_tickets_are_off(dev: DevLayout) -> None:
    srv = Server(server_context(gateway_tls(dev, session_tickets=False)))
    try:
        ctx = demo_client(dev)
        _, session, _ = talk(ctx, srv.port)
        assert session is None or not session.has_ticket
        if session is not None:
            _, _, reused = talk(ctx, srv.port, session=session)
            assert not reused
    finally:
        srv.close()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1"])
def test_server_name_checks_pass_for_loopback_names(dev: DevLayout, host: str) -> None:
    family = socket.AF_INET6 if host == "::1" else socket.AF_INET
    srv = Server(server_context(gateway_tls(dev)), family=family)
    try:
        if host == "localhost":
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw, \
                    demo_client(dev).wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.recv(2) == b"ok"
        else:
            assert talk(demo_client(dev), srv.port, host=host)[0] == b"ok"
    finally:
        srv.close()


def test_client_checks_the_server_name(dev: DevLayout, server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        demo_client(dev).wrap_socket(raw, server_hostname="example.com")


# -- loading errors name the setting --------------------------------------------------
def test_missing_files_name_the_setting(dev: DevLayout, tmp_path: Path) -> None:
    for field in ("cert", "key", "ca"):
        tls = gateway_tls(dev, **{field: tmp_path / "absent.pem"})
        with pytest.raises(ConfigError, match=rf"^core\.tls\.{field}: file not found"):
            server_context(tls, setting="core.tls")


def test_garbage_files_name_the_setting(dev: DevLayout, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a pem\n")
    for field in ("cert", "key", "ca"):
        with pytest.raises(ConfigError, match=rf"^gateway\.tls\.{field}: "):
            server_context(gateway_tls(dev, **{field: junk}))


def test_mismatched_key_names_the_key(dev: DevLayout) -> None:
    with pytest.raises(ConfigError, match=r"^gateway\.tls\.key: does not match gateway\.tls\.cert"):
        server_context(gateway_tls(dev, key=dev.client_key))


def test_leaf_as_ca_is_refused(dev: DevLayout) -> None:
    with pytest.raises(ConfigError, match=r"^gateway\.tls\.ca: .*no CA certificate"):
        server_context(gateway_tls(dev, ca=dev.client))


def test_encrypted_key_is_refused(dev: DevLayout, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from krypton.pki import load_key_pem

    key = load_key_pem(dev.gateway_key)
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(ConfigError, match=r"^gateway\.tls\.key: encrypted"):
        server_context(gateway_tls(dev, key=encrypted))


def test_client_context_errors(dev: DevLayout, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^ca: file not found"):
        client_context(tmp_path / "x.pem")
    with pytest.raises(ConfigError, match="both or neither"):
        client_context(dev.ca, dev.client)


def test_tls_cost_script_resumes_and_prints_every_row(dev: DevLayout) -> None:
    """scripts/tls_cost.py (docs/performance.md): each resumed row really resumed
    (the script exits otherwise) and every row has two positive costs."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "tls_cost.py"
    out = subprocess.run(
        [sys.executable, str(script), "--pki", str(dev.pki), "--count", "3"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert out[0].split() == ["handshake", "client", "us", "server", "us"]
    rows = {line[:26].strip(): line[26:].split() for line in out[1:]}
    assert set(rows) == {
        "TLS 1.3 full", "TLS 1.3 resumed", "TLS 1.2 full", "TLS 1.2 resumed",
        "TLS 1.3 full, no ticket",
    }  # fmt: skip
    assert all(len(v) == 2 and all(float(x) > 0 for x in v) for v in rows.values())
