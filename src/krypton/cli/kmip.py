"""``krypton kmip``: a small KMIP client for people (table or ``--json`` output).

It connects over mutual TLS with a PKI folder's ``ca.pem`` and a client
certificate (``client.pem`` / ``client-key.pem``, or ``--as NAME`` for
``NAME.pem`` / ``NAME-key.pem``), sends one operation and prints the answer
(:mod:`krypton.client.commands`). A failed operation exits 1 with the KMIP
result reason and message.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
from pathlib import Path

from krypton.client.commands import COMMANDS, REVOCATION_REASONS, VERSIONS, table, version_of
from krypton.client.sync import KmipClient, tls_context
from krypton.errors import ConfigError

DEFAULT_PKI = Path(".krypton-dev/pki")


def _context(args: argparse.Namespace) -> ssl.SSLContext:
    pki = Path(args.pki)
    paths = (pki / "ca.pem", pki / f"{args.who}.pem", pki / f"{args.who}-key.pem")
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"--pki: {p} not found (a folder with ca.pem, {args.who}.pem "
                              f"and {args.who}-key.pem, e.g. krypton dev's .krypton-dev/pki)")
    try:
        return tls_context(*paths)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"--pki: cannot load the certificates in {pki}: {exc}") from None


def _arguments(args: argparse.Namespace) -> dict[str, object]:
    """The keyword arguments of the chosen command's request builder."""
    wanted = {
        "create": ("length", "name"),
        "get": ("uid",),
        "locate": ("name", "state", "object_type", "max_items"),
        "activate": ("uid",),
        "revoke": ("uid", "reason", "message"),
        "destroy": ("uid",),
        "query": (),
        "attributes": ("uid", "names"),
    }[args.operation]
    return {k: getattr(args, k) for k in wanted}


def cmd_kmip(args: argparse.Namespace) -> int:
    version = version_of(args.kmip_version)
    command = COMMANDS[args.operation]
    item = command.request(version, **_arguments(args))
    client = KmipClient(args.host, args.port, _context(args), version=version,
                        timeout=args.timeout, server_hostname=args.server_name or args.host)
    try:
        with client:
            response = client.call_ok([item])
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--host/--port: cannot talk KMIP to {args.host}:{args.port}: "
                          f"{exc}") from None
    rows = command.rows(response.items[0].payload)
    if args.json:
        print(json.dumps(rows if args.operation in ("locate", "query", "attributes")
                         else rows[0], indent=None))
    else:
        print(table(rows))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("kmip", help="a small KMIP client: create, get, locate, activate, "
                       "revoke, destroy, query, attributes")
    p.add_argument("--pki", default=os.environ.get("KRYPTON_KMIP_PKI", str(DEFAULT_PKI)),
                   help="folder with ca.pem and the client certificate (default %(default)s)")
    p.add_argument("--as", dest="who", default="client",
                   help="client certificate NAME.pem / NAME-key.pem in --pki (default client)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5696)
    p.add_argument("--server-name", default=None,
                   help="the name the server's certificate must carry (default: --host)")
    p.add_argument("--kmip-version", choices=VERSIONS, default="1.4")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    ops = p.add_subparsers(dest="operation", required=True)
    c = ops.add_parser("create", help="make an AES key at the gateway")
    c.add_argument("--length", type=int, choices=(128, 192, 256), default=256)
    c.add_argument("--name", default=None)
    for name, what in (("get", "a key and its material (hex)"), ("activate", "activate a key"),
                       ("destroy", "destroy a key")):
        ops.add_parser(name, help=what).add_argument("uid")
    r = ops.add_parser("revoke", help="revoke a key")
    r.add_argument("uid")
    r.add_argument("--reason", choices=REVOCATION_REASONS,
                   default="cessation-of-operation")
    r.add_argument("--message", default=None)
    loc = ops.add_parser("locate", help="unique identifiers of the keys that match")
    loc.add_argument("--name", default=None)
    loc.add_argument("--state", default=None, help="pre-active, active, deactivated, ...")
    loc.add_argument("--object-type", default=None, help="symmetric-key, secret-data, ...")
    loc.add_argument("--max-items", type=int, default=None)
    ops.add_parser("query", help="what the server offers")
    a = ops.add_parser("attributes", help="a key's attributes")
    a.add_argument("uid")
    a.add_argument("names", nargs="*", help="only these (e.g. 'State' 'Name')")
    p.set_defaults(func=cmd_kmip)
