#!/usr/bin/env python3
"""PyKMIP 0.11's own server on the Krypton dev PKI, for side-by-side bench figures.

    .venv/bin/python scripts/pykmip_server.py --port 15698 --pki .krypton-dev/pki

Writes its ``server.conf``, an (empty) operation-policy directory, its log and
its SQLite database into a temporary directory (``--workdir`` to keep them),
serves ``gateway.pem`` from the PKI directory and requires client
certificates signed by its ``ca.pem`` -- so ``krypton bench`` drives it with
exactly the files it uses for the gateway. Prints one ready line, then serves
until SIGINT/SIGTERM.

Two adjustments, both reported on the ready line:

* TLS version: PyKMIP's "TLS1.2" auth suite pins ``PROTOCOL_TLSv1_2`` (and
  "Basic" pins TLS 1.0, which OpenSSL 3 refuses). With ``--tls auto`` (the
  default) the suite's protocol is widened to ``PROTOCOL_TLS_SERVER`` so
  client and server negotiate TLS 1.3 as they do with the gateway; ``--tls
  1.2`` keeps PyKMIP's own choice.
* The listening socket's accept timeout is cut from 10 s to 0.5 s so that a
  signal stops the server promptly (PyKMIP checks its flag between accepts).

PyKMIP's identity is the client certificate's common name ("demo client"
for the dev ``client.pem``); its default operation policy lets the owner Get
what it created, which is all the bench needs. Log level is WARNING: PyKMIP
logs several INFO lines per message, which would be measured too.
"""

from __future__ import annotations

import argparse
import logging
import socket
import ssl
import sys
import tempfile
from pathlib import Path

READY = "PyKMIP server ready on"


def write_config(work: Path, host: str, port: int, pki: Path) -> Path:
    policies = work / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    conf = work / "server.conf"
    conf.write_text(
        "[server]\n"
        f"hostname={host}\n"
        f"port={port}\n"
        f"certificate_path={(pki / 'gateway.pem').resolve()}\n"
        f"key_path={(pki / 'gateway-key.pem').resolve()}\n"
        f"ca_path={(pki / 'ca.pem').resolve()}\n"
        "auth_suite=TLS1.2\n"
        f"policy_path={policies.resolve()}\n"
        "enable_tls_client_auth=True\n"
        "logging_level=WARNING\n"
        f"database_path={(work / 'pykmip.db').resolve()}\n"
    )
    return conf


def serve(work: Path, args: argparse.Namespace) -> int:
    from kmip.services.server import KmipServer

    conf = write_config(work, args.host, args.port, args.pki)
    server = KmipServer(
        config_path=str(conf),
        log_path=str(work / "server.log"),
        logging_level="WARNING",
    )
    if args.tls == "auto":
        server.auth_suite._protocol = ssl.PROTOCOL_TLS_SERVER
    server.start()
    listening: socket.socket = server._socket
    listening.settimeout(0.5)
    tls = "TLS 1.2 only (PyKMIP's suite)" if args.tls == "1.2" else "TLS 1.2-1.3"
    print(f"{READY} {args.host}:{args.port} ({tls}, files in {work})", flush=True)
    try:
        server.serve()
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pki", type=Path, required=True, help="the dev PKI (krypton dev init)")
    p.add_argument("--tls", choices=["auto", "1.2"], default="auto")
    p.add_argument("--workdir", type=Path, default=None, help="keep config, log and database")
    args = p.parse_args(argv)
    for name in ("ca.pem", "gateway.pem", "gateway-key.pem"):
        if not (args.pki / name).is_file():
            print(f"pykmip_server: {args.pki / name} not found", file=sys.stderr)
            return 2
    logging.getLogger("kmip").setLevel(logging.WARNING)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return serve(args.workdir, args)
    with tempfile.TemporaryDirectory(prefix="pykmip-") as tmp:
        return serve(Path(tmp), args)


if __name__ == "__main__":
    sys.exit(main())
