#!/usr/bin/env python3
"""What a mutual-TLS handshake costs each side, with no sockets and no event loop.

    .venv/bin/python scripts/tls_cost.py --pki .krypton-dev/pki [--count 300]

Client and server ``SSLObject``s (the gateway's own contexts,
``krypton.tls.contexts``) are joined by memory BIOs and the CPU time of each
side's handshake calls is added up: a full handshake, a resumed one (the
client offers the ticket of the previous connection), both with TLS 1.3 and
with TLS 1.2, and the full TLS 1.3 handshake without issuing a ticket. This
is the part of ``krypton bench --op connect`` that belongs to OpenSSL; the
rest (TCP, the event loop, the connection objects, the Get) is the same
whether the session is resumed or not, which is why ``connect`` with
resumption gains far less than the handshakes alone.
"""

from __future__ import annotations

import argparse
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from krypton.config import TLSConfig
from krypton.tls.contexts import client_context, server_context


@dataclass
class Cost:
    client: float = 0.0
    server: float = 0.0


def _timed(cost: Cost, side: str, call: object) -> bool:
    t = time.process_time()
    try:
        call()  # type: ignore[operator]
        done = True
    except ssl.SSLWantReadError:
        done = False
    setattr(cost, side, getattr(cost, side) + time.process_time() - t)
    return done


def connect(
    sctx: ssl.SSLContext, cctx: ssl.SSLContext, cost: Cost, session: ssl.SSLSession | None
) -> ssl.SSLObject:
    """One handshake plus one small record each way (the client then holds its ticket)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = cctx.wrap_bio(c_in, c_out, server_hostname="localhost", session=session)
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    c_done = s_done = False
    for _ in range(10):
        if not c_done:
            c_done = _timed(cost, "client", client.do_handshake)
        s_in.write(c_out.read())
        if not s_done:
            s_done = _timed(cost, "server", server.do_handshake)
        c_in.write(s_out.read())
        if c_done and s_done:
            break
    _timed(cost, "server", lambda: server.write(b"ping"))
    c_in.write(s_out.read())
    _timed(cost, "client", lambda: client.read(4))
    return client


def measure(sctx: ssl.SSLContext, cctx: ssl.SSLContext, count: int, *, resume: bool) -> Cost:
    cost = Cost()
    first = connect(sctx, cctx, Cost(), None)
    session = first.session if resume else None
    for _ in range(count):
        conn = connect(sctx, cctx, cost, session)
        if resume:
            if not conn.session_reused:
                raise SystemExit("the server did not resume the session")
            session = conn.session
    return Cost(cost.client / count * 1e6, cost.server / count * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pki", type=Path, default=Path(".krypton-dev/pki"))
    ap.add_argument("--count", type=int, default=300)
    args = ap.parse_args()
    pki = args.pki
    tls = TLSConfig(cert=pki / "gateway.pem", key=pki / "gateway-key.pem", ca=pki / "ca.pem")
    rows: list[tuple[str, Cost]] = []
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        sctx = server_context(tls)
        sctx.maximum_version = version
        cctx = client_context(pki / "ca.pem", pki / "client.pem", pki / "client-key.pem")
        name = version.name.replace("v1_", " 1.")
        rows.append((f"{name} full", measure(sctx, cctx, args.count, resume=False)))
        rows.append((f"{name} resumed", measure(sctx, cctx, args.count, resume=True)))
    sctx = server_context(tls)
    sctx.num_tickets = 0
    cctx = client_context(pki / "ca.pem", pki / "client.pem", pki / "client-key.pem")
    rows.append(("TLS 1.3 full, no ticket", measure(sctx, cctx, args.count, resume=False)))
    print(f"{'handshake':<26}{'client us':>10}{'server us':>10}")
    for label, cost in rows:
        print(f"{label:<26}{cost.client:>10.0f}{cost.server:>10.0f}")


if __name__ == "__main__":
    main()
