"""`krypton bench` end to end: real processes, real mutual TLS on loopback.

Against a `krypton dev` gateway and a `krypton bench ceiling`, every operation
type runs a short --count and its --json output is checked for shape and for
zero errors; then servers that answer with failures (missing key, refused
identity, another tenant, malformed bytes) must show up as errors and a
non-zero exit status. No test asserts a time.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.fixtures import DevStacks
from tests.helpers.servers import DevServer, free_port, recv_message

from krypton.bench import plot
from krypton.client.sync import KmipClient, tls_context
from krypton.kmip import client_messages as cm
from krypton.kmip.versions import ProtocolVersion
from krypton.pki.dev import init_dev_dir
from krypton.ttlv.codec import encode

pytestmark = pytest.mark.slow

COUNT = 200
CONNECT_COUNT = 80  # each is a full or resumed TLS handshake: keep it short


def _count(case: str) -> int:
    return CONNECT_COUNT if case.startswith("connect") else COUNT
KEYS = ("op", "target", "connections", "procs", "ops", "errors", "error_reasons",
        "throughput_ops_s", "elapsed_s", "latency_ms", "kpi_under_ms", "cpu", "tls")  # fmt: skip


def bench(port: int, pki: Path, *args: str, timeout: float = 60) -> tuple[int, Any, str]:
    cmd = [sys.executable, "-m", "krypton.cli.main", "bench", "--port", str(port)]
    cmd += ["--pki", str(pki), "--json", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        out = json.loads(done.stdout) if done.stdout.strip() else None
    except json.JSONDecodeError:
        out = None
    return done.returncode, out, done.stderr


def assert_clean(out: Any, *, ops: int = COUNT) -> None:
    assert out is not None
    for key in KEYS:
        assert key in out, key
    assert out["ops"] == ops
    assert out["errors"] == 0 and out["error_reasons"] == {}
    assert out["warmup_errors"] == 0
    lat = out["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    fractions = list(out["kpi_under_ms"].values())
    assert fractions == sorted(fractions) and all(0 <= f <= 1 for f in fractions)
    assert out["throughput_ops_s"] > 0 and out["elapsed_s"] > 0
    assert out["cpu"]["generator_s"] >= 0 and out["cpu"]["generator_us_per_op"] is not None
    assert out["tls"]["version"].startswith("TLSv1")


@pytest.fixture(scope="module")
def gateway(start_module_dev: DevStacks) -> DevServer:
    return start_module_dev()


@pytest.fixture(scope="module")
def ceiling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    root = tmp_path_factory.mktemp("bench-ceiling")
    layout = init_dev_dir(root)
    port = free_port()
    log = root / "ceiling.log"
    with log.open("w") as f:
        cmd = [sys.executable, "-m", "krypton.cli.main", "bench", "ceiling"]
        proc = subprocess.Popen(
            [*cmd, "--port", str(port), "--pki", str(layout.pki)],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while "responder on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port, layout.pki
    finally:
        proc.terminate()
        proc.wait(timeout=10)


CASES = {
    "get": ["--op", "get", "-c", "4"],
    "create": ["--op", "create", "-c", "4"],
    "createget": ["--op", "createget", "-c", "4"],
    "mixed": ["--op", "mixed", "--ratio", "3:1", "-c", "4"],
    "connect": ["--op", "connect", "-c", "2", "--no-resume"],
    "connect-resume": ["--op", "connect", "-c", "2", "--resume"],
    "get-2procs": ["--op", "get", "-c", "4", "--procs", "2", "--check", "full"],
    "createget-2.0": ["--op", "createget", "-c", "2", "--version", "2.0", "--check", "full"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_gateway_every_op_is_clean(gateway: DevServer, case: str) -> None:
    pid, n = str(gateway.proc.pid), _count(case)
    rc, out, err = bench(gateway.port, gateway.pki, "--count", str(n), "--server-pid", pid,
                         *CASES[case])  # fmt: skip
    assert rc == 0, err
    assert_clean(out, ops=n)
    assert out["cpu"]["server_s"] is not None
    if case == "get-2procs":
        assert out["procs"] == 2
    if case == "mixed":
        assert out["by_op"]["get"]["ops"] + out["by_op"]["create"]["ops"] == COUNT
        assert abs(out["by_op"]["create"]["ops"] - COUNT // 4) <= 4
    if case == "connect":
        assert out["tls"]["resumed"] == 0 and out["tls"]["full_handshakes"] == n
    if case == "connect-resume":
        assert out["tls"]["resumed"] > n // 2
        assert out["tls"]["resumed"] + out["tls"]["full_handshakes"] == n


@pytest.mark.parametrize("case", ["get", "createget", "connect-resume", "get-2procs"])
def test_ceiling_is_clean(ceiling: tuple[int, Path], case: str) -> None:
    port, pki = ceiling
    rc, out, err = bench(port, pki, "--count", str(_count(case)), *CASES[case])
    assert rc == 0, err
    assert_clean(out, ops=_count(case))


def test_ceiling_answers_like_the_gateway(gateway: DevServer, ceiling: tuple[int, Path]) -> None:
    """Same-size Get response, and a Create + Get batch both servers answer in full."""
    v = ProtocolVersion(1, 4)
    sizes = []
    for port, pki in ((gateway.port, gateway.pki), ceiling):
        ctx = tls_context(pki / "ca.pem", pki / "client.pem", pki / "client-key.pem")
        with KmipClient("127.0.0.1", port, ctx, version=v) as c:
            uid = c.create()
            sizes.append(len(c.roundtrip(encode(cm.request_message(v, [cm.get_item(uid)])))))
            both = c.call_ok(
                [cm.create_item(v, cm.aes_attributes(), b"\x01"), cm.get_item(batch_id=b"\x02")]
            )
            assert [i.operation for i in both.items] == [1, 10]
            assert [i.batch_id for i in both.items] == [b"\x01", b"\x02"]
            assert both.items[1].payload is not None
            assert len(cm.key_material(both.items[1].payload)) == 32
    assert sizes[0] == sizes[1]


# -- errors are seen ---------------------------------------------------------------
def test_missing_key_is_an_error_per_op(gateway: DevServer) -> None:
    rc, out, _ = bench(gateway.port, gateway.pki, "--count", "50", "-c", "2", "--uid", "nope")
    assert rc == 1
    assert out["ops"] == 50 and out["errors"] == 50
    assert out["error_reasons"] == {"Item Not Found": 50}


def test_other_tenant_cannot_get_the_key(gateway: DevServer) -> None:
    pki = gateway.pki
    ctx = tls_context(pki / "ca.pem", pki / "client.pem", pki / "client-key.pem")
    with KmipClient("127.0.0.1", gateway.port, ctx) as c:
        uid = c.create()
    rc, out, _ = bench(gateway.port, pki, "--count", "20", "--uid", uid,
                       "--cert", str(pki / "other-client.pem"),
                       "--key", str(pki / "other-client-key.pem"))  # fmt: skip
    assert rc == 1 and out["errors"] == 20
    assert out["error_reasons"] == {"Item Not Found": 20}


def test_refused_identity(gateway: DevServer) -> None:
    pki = gateway.pki
    who = ["--cert", str(pki / "gateway.pem"), "--key", str(pki / "gateway-key.pem")]
    rc, out, _ = bench(gateway.port, pki, "--count", "20", "-c", "2", "--uid", "x", *who)
    assert rc == 1
    assert out["errors"] > 0 and out["error_reasons"].get("Permission Denied", 0) >= 1
    assert out["ops"] < 20  # the gateway closes a refused connection
    rc, out, err = bench(gateway.port, pki, "--count", "20", *who)  # setup's Create is refused
    assert rc == 1 and out is None and "PERMISSION_DENIED" in err


def test_unreachable_and_bad_files(tmp_path: Path, gateway: DevServer) -> None:
    rc, out, err = bench(free_port(), gateway.pki, "--count", "5")
    assert rc == 1 and out is None and "cannot reach" in err
    rc, out, err = bench(gateway.port, tmp_path, "--count", "5")
    assert rc == 2 and out is None and "not found" in err


class _Garbage:
    """A mutual-TLS server that answers every request with a malformed response."""

    def __init__(self, pki: Path, answer: bytes) -> None:
        self.answer = answer
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(pki / "gateway.pem"), str(pki / "gateway-key.pem"))
        self.ctx.load_verify_locations(str(pki / "ca.pem"))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as s:
                while True:
                    recv_message(s)
                    s.sendall(self.answer)
        except (OSError, EOFError):
            pass


# A consistent frame whose header item overruns it: counted, the connection goes on.
_BAD_BODY = bytes.fromhex("42007b01 00000010 42007a01 000000ff") + bytes(8)
# Not a Response Message frame at all: counted once, the connection is dropped.
_BAD_FRAME = bytes.fromhex("42007801 00000008") + bytes(8)


@pytest.mark.parametrize(
    ("answer", "ops", "errors"), [(_BAD_BODY, 20, 20), (_BAD_FRAME, 0, 2)], ids=["body", "frame"]
)
def test_malformed_responses_are_errors(
    gateway: DevServer, answer: bytes, ops: int, errors: int
) -> None:
    server = _Garbage(gateway.pki, answer)
    try:
        rc, out, _ = bench(server.port, gateway.pki, "--count", "20", "-c", "2", "--uid", "x")
    finally:
        server.sock.close()
    assert rc == 1
    assert out["ops"] == ops
    assert out["error_reasons"] == {"malformed response": errors}


# -- outputs -----------------------------------------------------------------------
@pytest.mark.skipif(not plot.available(), reason="matplotlib is not installed")
def test_png_and_human_report(gateway: DevServer, tmp_path: Path) -> None:
    png = tmp_path / "hist.png"
    cmd = [sys.executable, "-m", "krypton.cli.main", "bench", "--port", str(gateway.port),
           "--pki", str(gateway.pki), "--count", "100", "--png", str(png)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "p99.9" in done.stdout and "generator" in done.stdout and str(png) in done.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 5000


def test_progress_line_on_stderr(gateway: DevServer) -> None:
    rc, out, err = bench(gateway.port, gateway.pki, "--duration", "1.3", "--warmup", "0")
    assert rc == 0, err
    assert out["count"] is None and out["duration_s"] == 1.3 and out["ops"] > 0
    lines = [line for line in err.splitlines() if "ops/s" in line]
    assert lines and "p99" in lines[0] and "errors 0" in lines[0]


def test_random_gets_over_a_recorded_key_list(gateway: DevServer, tmp_path: Path) -> None:
    """Issue 16: a load phase records the keys it made, then Gets draw from them."""
    keys = tmp_path / "keys.txt"
    rc, out, _ = bench(gateway.port, gateway.pki, "--op", "create", "--count", "60", "-c", "3",
                       "--keys-file", str(keys))  # fmt: skip
    assert rc == 0 and out["keys"] == 60
    rc, out, _ = bench(gateway.port, gateway.pki, "--op", "create", "--count", "20",
                       "--keys-file", str(keys))  # fmt: skip
    made = keys.read_text().split()
    assert rc == 0 and len(made) == len(set(made)) == 80  # appended
    rc, out, _ = bench(gateway.port, gateway.pki, "--count", str(COUNT), "-c", "4",
                       "--keys-file", str(keys), "--check", "full")  # fmt: skip
    assert rc == 0
    assert_clean(out)
    assert out["keys"] == 80 and out["keys_file"] == str(keys)
    keys.write_text("nope-1\nnope-2\n")
    rc, out, _ = bench(gateway.port, gateway.pki, "--count", "30", "--keys-file", str(keys))
    assert rc == 1 and out["error_reasons"] == {"Item Not Found": 30}
