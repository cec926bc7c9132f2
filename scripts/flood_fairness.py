#!/usr/bin/env python3
"""Another tenant's Get latency while one tenant floods the gateway with huge messages.

    .venv/bin/python scripts/flood_fairness.py --dir /tmp/krypton-flood
    .venv/bin/python scripts/flood_fairness.py --dir /tmp/krypton-flood --src /path/to/old/src

Starts ``krypton dev --dir D`` on free loopback ports (the server runs with
``PYTHONPATH=--src``, default this checkout's ``src``, so an older checkout can
be measured the same way), then:

1. tenant ``other`` (``other-client``) creates a key and Gets it over one
   connection, one request at a time, for ``--quiet-seconds``: the latency
   with nobody else on the gateway;
2. tenant ``demo`` (``client``) opens ``--flooders`` connections from a
   separate process, each pipelining the flood message (1,024 Discover
   Versions items of 18 Protocol Versions and a 256-byte batch id each: about
   1 MiB and 60,000 TTLV items, answered by about 1 MiB) as fast as the gateway
   takes them, reading the answers as they come;
3. meanwhile ``other`` keeps Getting its key for ``--seconds``.

The probe is closed-loop (one Get at a time), so a stall of seconds is one
sample: the share of the time spent in Gets that took over 100 ms is printed
too.

Prints p50 / p90 / p99 / max of both phases' Get latency and how many flood
messages the gateway answered (so fairness is not bought by starving the
flood), as text and, with ``--json``, as one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
READY = "Krypton dev stack is up"


# -- the wire (built without krypton, so any checkout's server can be measured) ------
def _item(tag: int, typ: int, value: bytes) -> bytes:
    head = tag.to_bytes(3, "big") + bytes([typ]) + len(value).to_bytes(4, "big")
    return head + value + bytes((-len(value)) % 8)


def _struct(tag: int, *children: bytes) -> bytes:
    return _item(tag, 0x01, b"".join(children))


def _int(tag: int, v: int) -> bytes:
    return _item(tag, 0x02, v.to_bytes(4, "big"))


def _enum(tag: int, v: int) -> bytes:
    return _item(tag, 0x05, v.to_bytes(4, "big"))


def _text(tag: int, v: str) -> bytes:
    return _item(tag, 0x07, v.encode())


def _bytes(tag: int, v: bytes) -> bytes:
    return _item(tag, 0x08, v)


REQUEST_MESSAGE, REQUEST_HEADER, PROTOCOL_VERSION = 0x420078, 0x420077, 0x420069
MAJOR, MINOR, BATCH_COUNT, BATCH_ITEM = 0x42006A, 0x42006B, 0x42000D, 0x42000F
OPERATION, PAYLOAD, BATCH_ID, UID = 0x42005C, 0x420079, 0x420093, 0x420094
OBJECT_TYPE, TEMPLATE_ATTRIBUTE, ATTRIBUTE = 0x420057, 0x420091, 0x420008
ATTRIBUTE_NAME, ATTRIBUTE_VALUE = 0x42000A, 0x42000B
RESULT_STATUS = 0x42007F
CREATE, GET, DISCOVER_VERSIONS = 0x01, 0x0A, 0x1E


def _version(major: int, minor: int) -> bytes:
    return _struct(PROTOCOL_VERSION, _int(MAJOR, major), _int(MINOR, minor))


def _message(*items: bytes) -> bytes:
    header = _struct(REQUEST_HEADER, _version(1, 4), _int(BATCH_COUNT, len(items)))
    return _struct(REQUEST_MESSAGE, header, *items)


def _batch_item(op: int, payload: bytes, batch_id: bytes | None = None) -> bytes:
    bid = _bytes(BATCH_ID, batch_id) if batch_id is not None else b""
    return _struct(BATCH_ITEM, _enum(OPERATION, op), bid, payload)


def flood_message(items: int = 1024, versions: int = 18, batch_id: int = 256) -> bytes:
    payload = _struct(PAYLOAD, *[_version(1, i % 5) for i in range(versions)])
    return _message(*[_batch_item(DISCOVER_VERSIONS, payload, b"x" * batch_id)] * items)


def _attribute(name: str, value: bytes) -> bytes:
    return _struct(ATTRIBUTE, _text(ATTRIBUTE_NAME, name), value)


def create_message() -> bytes:
    attrs = _struct(
        TEMPLATE_ATTRIBUTE,
        _attribute("Cryptographic Algorithm", _enum(ATTRIBUTE_VALUE, 3)),  # AES
        _attribute("Cryptographic Length", _int(ATTRIBUTE_VALUE, 256)),
        _attribute("Cryptographic Usage Mask", _int(ATTRIBUTE_VALUE, 12)),
    )
    return _message(_batch_item(CREATE, _struct(PAYLOAD, _enum(OBJECT_TYPE, 2), attrs)))


def get_message(uid: str) -> bytes:
    return _message(_batch_item(GET, _struct(PAYLOAD, _text(UID, uid))))


def recv_message(sock: ssl.SSLSocket) -> bytes:
    head = _recv_exact(sock, 8)
    return head + _recv_exact(sock, int.from_bytes(head[4:8], "big"))


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError("connection closed")
        out += chunk
    return bytes(out)


def _find(data: bytes, tag: int) -> bytes | None:
    """The value of the first item with ``tag`` (a linear walk of the TTLV)."""
    pos = 0
    while pos + 8 <= len(data):
        t, typ, n = int.from_bytes(data[pos : pos + 3], "big"), data[pos + 3], int.from_bytes(
            data[pos + 4 : pos + 8], "big"
        )
        if t == tag:
            return data[pos + 8 : pos + 8 + n]
        pos += 8 if typ == 0x01 else 8 + n + (-n) % 8
    return None


def succeeded(answer: bytes) -> bool:
    status = _find(answer, RESULT_STATUS)
    return status is not None and int.from_bytes(status, "big") == 0


# -- the server ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    directory: Path,
    src: Path,
    env_extra: dict[str, str],
    nofile: int | None = None,
    args: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], int]:
    port, core = free_port(), free_port()
    env = dict(os.environ)
    env.update(env_extra)
    env["PYTHONPATH"] = str(src)
    env["KRYPTON_GATEWAY_LISTEN_PORT"] = str(port)
    env["KRYPTON_CORE_LISTEN_PORT"] = str(core)
    env["KRYPTON_GATEWAY_UPLINK_CORE_ADDRESS"] = f"127.0.0.1:{core}"
    env.setdefault("KRYPTON_GATEWAY_LOG_LEVEL", "warning")
    # Not the default admin ports (9696, 9697): another stack may hold them.
    env.setdefault("KRYPTON_GATEWAY_ADMIN_LISTEN", f"127.0.0.1:{free_port()}")
    env.setdefault("KRYPTON_CORE_ADMIN_LISTEN", f"127.0.0.1:{free_port()}")
    directory.mkdir(parents=True, exist_ok=True)
    log = (directory / "server.log").open("wb")
    limit = [] if nofile is None else ["prlimit", f"--nofile={nofile}:{nofile}", "--"]
    cmd = [*limit, sys.executable, "-m", "krypton.cli.main", "dev", "--dir", str(directory), *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if READY in (directory / "server.log").read_text(errors="replace"):
            return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("krypton dev did not start:\n" + (directory / "server.log").read_text())


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def connect(pki: Path, port: int, who: str, timeout: float = 10.0) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / f"{who}.pem"), str(pki / f"{who}-key.pem"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


# -- the flood (in its own process: its threads do not hold our GIL) -------------------
def _flood(pki: str, port: int, flooders: int, stop: Any, answered: Any) -> None:
    message = flood_message()
    socks = [connect(Path(pki), port, "client", timeout=60.0) for _ in range(flooders)]

    def send(sock: ssl.SSLSocket) -> None:
        def loop() -> None:
            while not stop.is_set():
                sock.sendall(message)

        with_errors(loop)

    def read(sock: ssl.SSLSocket) -> None:
        def loop() -> None:
            while not stop.is_set():
                recv_message(sock)
                with answered.get_lock():
                    answered.value += 1

        with_errors(loop)

    threads = [
        threading.Thread(target=f, args=(s,), daemon=True) for s in socks for f in (send, read)
    ]
    for t in threads:
        t.start()
    stop.wait()
    for s in socks:
        with_errors(lambda s=s: s.shutdown(socket.SHUT_RDWR))
        s.close()


def with_errors(f: Any) -> None:
    with contextlib.suppress(OSError, EOFError, ValueError):
        f()


# -- the probe ---------------------------------------------------------------------------
def gets(sock: ssl.SSLSocket, message: bytes, seconds: float) -> list[float]:
    took: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        sock.sendall(message)
        answer = recv_message(sock)
        took.append(time.perf_counter() - t)
        if not succeeded(answer):
            raise SystemExit("a Get failed")
    return took


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    s = sorted(samples)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(len(s) * q))] * 1000

    stalled = sum(t for t in s if t > 0.1) / sum(s)  # closed loop: one sample per stall
    return {
        "n": len(s), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": s[-1] * 1000,
        "stalled": stalled,
    }  # fmt: skip


def measure(pki: Path, port: int, seconds: float, quiet: float, flooders: int) -> dict[str, Any]:
    with connect(pki, port, "other-client", timeout=120.0) as sock:
        sock.sendall(create_message())
        uid = _find(recv_message(sock), UID)
        assert uid is not None, "Create failed"
        get = get_message(uid.decode())
        gets(sock, get, 1.0)  # warm
        alone = percentiles(gets(sock, get, quiet))
        ctx = mp.get_context("spawn")
        stop, answered = ctx.Event(), ctx.Value("q", 0)
        flood = ctx.Process(target=_flood, args=(str(pki), port, flooders, stop, answered))
        flood.start()
        time.sleep(1.0)  # the flood under way
        start = answered.value
        flooded = percentiles(gets(sock, get, seconds))
        rate = (answered.value - start) / seconds
        stop.set()
        flood.join(20)
        if flood.is_alive():
            flood.kill()
    return {"alone": alone, "flooded": flooded, "flood_answers_per_s": rate}


def show(name: str, p: dict[str, float]) -> str:
    return (
        f"{name:<8} n={p['n']:<6} p50 {p['p50']:8.2f} ms  p90 {p['p90']:8.2f} ms  "
        f"p99 {p['p99']:8.2f} ms  max {p['max']:8.2f} ms  "
        f"time in Gets over 100 ms {p['stalled']:.0%}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, required=True, help="the dev stack's folder")
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the server's PYTHONPATH")
    ap.add_argument("--seconds", type=float, default=15.0, help="Gets under the flood")
    ap.add_argument("--quiet-seconds", type=float, default=5.0, help="Gets before it")
    ap.add_argument("--flooders", type=int, default=4, help="flooding connections")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    proc, port = start_server(args.dir, args.src, {})
    try:
        result = measure(args.dir / "pki", port, args.seconds, args.quiet_seconds, args.flooders)
    finally:
        stop_server(proc)
    result["src"] = str(args.src)
    result["load_average"] = os.getloadavg()
    print(show("alone", result["alone"]))
    print(show("flooded", result["flooded"]))
    print(f"flood messages answered: {result['flood_answers_per_s']:.1f}/s "
          f"({args.flooders} connections); load average {result['load_average'][0]:.2f}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
