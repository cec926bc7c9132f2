"""``krypton pki issue``: a certificate for a new workload, gateway or Core from
the development CA (``krypton dev init`` makes it), by role."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from krypton.pki.dev import LOOPBACK_DNS, LOOPBACK_IPS, ROLES, issue_role

DEFAULT_DEV_DIR = Path(".krypton-dev")


def cmd_issue(args: argparse.Namespace) -> int:
    issued = issue_role(
        Path(args.dir), args.spiffe_id, args.role, name=args.name,
        dns=tuple(args.dns) or LOOPBACK_DNS, ips=tuple(args.ip) or LOOPBACK_IPS,
        days=args.days, force=args.force,
    )
    print(f"{args.role} {issued.spiffe_id}\n  certificate  {issued.cert}\n  key          "
          f"{issued.key} (0600)\nnext: {ROLES[args.role].next_step}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pki = sub.add_parser("pki", help="certificates from the development CA")
    actions = pki.add_subparsers(dest="action", required=True)
    issue = actions.add_parser("issue", help="issue a certificate for a workload, gateway or Core")
    issue.add_argument("--dir", default=os.environ.get("KRYPTON_DEV_DIR", str(DEFAULT_DEV_DIR)),
                       help="the dev folder whose pki/ holds ca.pem and ca-key.pem")
    issue.add_argument("--spiffe-id", required=True, help="spiffe://trust-domain/path")
    issue.add_argument("--role", required=True, choices=tuple(ROLES))
    issue.add_argument("--name", default=None,
                       help="file name stem in pki/ (default <role>-<last path segment>)")
    issue.add_argument("--dns", action="append", default=[],
                       help="a DNS name for a server role (repeatable; default localhost)")
    issue.add_argument("--ip", action="append", default=[],
                       help="an IP address for a server role (repeatable; default loopback)")
    issue.add_argument("--days", type=int, default=None, help="validity (default 825 days)")
    issue.add_argument("--force", action="store_true", help="replace an existing pair")
    issue.set_defaults(func=cmd_issue)
