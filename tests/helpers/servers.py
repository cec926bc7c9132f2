"""Test helpers: run a real Krypton process on loopback and talk raw KMIP to it."""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from krypton.pki.dev import DevLayout, init_dev_dir
from krypton.ttlv.framing import HEADER_SIZE

READY_LINE = "Krypton dev stack is up"


_HANDED_OUT: set[int] = set()


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port that is free now, for a server process to bind soon after.

    Chosen below the kernel's ephemeral range: a port handed out by ``bind(0)``
    is one the kernel also hands to outgoing connections, and under load (a
    flood test's hundreds of client sockets, another suite on the same machine)
    one of them took the port between this check and the server's bind
    ("Address already in use"). Never the same port twice in one process.
    """
    floor = min(_ephemeral_floor(), 65536)
    low = 20000 if floor > 21000 else 1024
    for _ in range(200):
        port = random.randrange(low, floor)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevServer:
    """A `krypton dev` process on a free loopback port."""

    layout: DevLayout
    port: int
    proc: subprocess.Popen[str]
    log_path: Path
    host: str = "127.0.0.1"
    # The admin endpoints (None when the test turned one off).
    admin_port: int | None = None
    core_admin_port: int | None = None

    def admin_url(self, path: str = "/", *, core: bool = False) -> str:
        port = self.core_admin_port if core else self.admin_port
        assert port is not None, "that admin endpoint is off"
        return f"http://{self.host}:{port}{path}"

    def log(self) -> str:
        return self.log_path.read_text()

    @property
    def pki(self) -> Path:
        return self.layout.pki

    def client_context(self, who: str = "client") -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.pki / "ca.pem"))
        ctx.load_cert_chain(str(self.pki / f"{who}.pem"), str(self.pki / f"{who}-key.pem"))
        return ctx

    def connect(self, who: str = "client", timeout: float = 5.0) -> ssl.SSLSocket:
        raw = socket.create_connection((self.host, self.port), timeout=timeout)
        return self.client_context(who).wrap_socket(raw, server_hostname="localhost")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_dev_server(
    root: Path,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
    args: tuple[str, ...] = (),
    nofile: int | None = None,
) -> DevServer:
    """``nofile``: the process's descriptor limit, soft and hard (as ``prlimit --nofile``)."""
    for attempt in range(3):
        try:
            return _start_dev_server_once(root, port, env, timeout, args, nofile)
        except _PortTaken:
            if port is not None or attempt == 2:
                raise
    raise AssertionError("unreachable")


class _PortTaken(RuntimeError):
    """Another process bound a port between free_port() and the server's bind."""


def _start_dev_server_once(
    root: Path,
    port: int | None,
    env: dict[str, str] | None,
    timeout: float,
    args: tuple[str, ...],
    nofile: int | None,
) -> DevServer:
    layout = init_dev_dir(root)
    port = port or free_port()
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["KRYPTON_GATEWAY_LISTEN_PORT"] = str(port)
    full_env.setdefault("KRYPTON_CORE_LISTEN_PORT", str(free_port()))
    full_env.setdefault("KRYPTON_GATEWAY_LOG_LEVEL", "warning")
    # Never the default admin ports (9696, 9697): tests run side by side.
    full_env.setdefault("KRYPTON_GATEWAY_ADMIN_LISTEN", f"127.0.0.1:{free_port()}")
    full_env.setdefault("KRYPTON_CORE_ADMIN_LISTEN", f"127.0.0.1:{free_port()}")
    log_path = root / "server.log"
    limit = [] if nofile is None else ["prlimit", f"--nofile={nofile}:{nofile}", "--"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*limit, sys.executable, "-m", "krypton.cli.main", "dev", "--dir", str(root), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=full_env,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text()
        if READY_LINE in text:
            return DevServer(layout, port, proc, log_path,
                             admin_port=_port_of(full_env["KRYPTON_GATEWAY_ADMIN_LISTEN"]),
                             core_admin_port=_port_of(full_env["KRYPTON_CORE_ADMIN_LISTEN"]))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    text = log_path.read_text()
    if "Address already in use" in text:
        raise _PortTaken("krypton dev did not start:\n" + text)
    raise RuntimeError("krypton dev did not start:\n" + text)


def _port_of(listen: str) -> int | None:
    return int(listen.rpartition(":")[2]) if listen.strip() else None


def rss_kib(pid: int) -> int:
    """A process's resident set (``VmRSS`` of ``/proc/PID/status``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def recv_message(sock: ssl.SSLSocket) -> bytes:
    """One whole TTLV message from a socket (header first, then the body)."""
    header = _recv_exact(sock, HEADER_SIZE)
    length = int.from_bytes(header[4:HEADER_SIZE], "big")  # tag, type, then the length
    return header + _recv_exact(sock, length)


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)
