"""``krypton conformance``: run OASIS KMIP XML test cases against any KMIP server.

``register(sub)`` adds the sub-command to the ``krypton`` parser. Output is
one line per case, ``PASS name`` or ``FAIL name: step N: path: difference``,
then ``N passed, M failed``; ``--json FILE`` also writes every result and
the per-version, per-profile counts.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from krypton.client.sync import KmipClient, tls_context
from krypton.conformance.cases import CLAIMED_PROFILES, ERRATA, Case, discover, select
from krypton.conformance.diff import redacted
from krypton.conformance.match import DEFAULT_TOLERANCE
from krypton.conformance.oasis import test_cases_dir
from krypton.conformance.runner import (
    CaseResult,
    Connection,
    Options,
    TransportError,
    run_case,
)
from krypton.errors import KryptonError
from krypton.ttlv.tags import TAG_BY_XML_NAME
from krypton.ttlv.xml import item_to_xml

__all__ = [
    "TlsTransport",
    "cmd_conformance",
    "line",
    "register",
    "run_all",
    "summary",
    "summary_line",
]

DEFAULT_PKI = Path(os.environ.get("KRYPTON_DEV_DIR", ".krypton-dev")) / "pki"

EPILOG = f"""\
examples:
  krypton conformance --mandatory --profile claimed   # cases from $KRYPTON_KMIP_CASES
  krypton conformance --cases v2.1/XML/mandatory/SKLC-M-1-21.xml --port 5696 --pki .krypton-dev/pki
  krypton conformance --cases kmip-test-cases --version-dir v1.4,v2.1 --profile QS,BL \\
      --json results.json

--profile takes profile ids (SKLC, CS-BC), suites (CS-BC-M-GCM) or `claimed`
({",".join(CLAIMED_PROFILES)}). Exit status: 0 when every case passed, 1 when
any failed, 2 for bad arguments or no case selected.
"""


class TlsTransport:
    """One TLS connection at a time; it is opened on first use and after any error."""

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, server_name: str, timeout: float
    ) -> None:
        self._client = KmipClient(host, port, context, timeout=timeout, server_hostname=server_name)
        self._open = False

    def roundtrip(self, data: bytes) -> bytes:
        try:
            if not self._open:
                self._client.connect()
                self._open = True
            return self._client.roundtrip(data)
        except (OSError, KryptonError) as exc:
            self.close()
            message = exc.message if isinstance(exc, KryptonError) else str(exc) or repr(exc)
            raise TransportError(message) from None

    def close(self) -> None:
        self._client.close()
        self._open = False


def register(sub: Any) -> None:
    p = sub.add_parser(
        "conformance",
        help="run OASIS KMIP XML test cases against a KMIP server",
        description="Send the requests of OASIS KMIP XML test cases to any KMIP server over "
        "mutual TLS and compare every response with the expected one.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add(
        "--cases",
        nargs="+",
        type=Path,
        default=None,
        metavar="PATH",
        help="case files or folders (searched for *.xml); default: $KRYPTON_KMIP_CASES, "
        "else ../shared/kmip-test-cases beside the repository",
    )
    add("--json", type=Path, default=None, metavar="FILE", help="write a JSON summary")
    add(
        "--verbose",
        "-v",
        action="store_true",
        help="after a FAIL line, show the failing step's expected and actual response "
        "(byte strings as length and fingerprint) on stderr",
    )
    add = p.add_argument_group("selection").add_argument
    add("--profile", default="", help="comma-separated profiles, suites or `claimed`")
    add("--mandatory", action="store_true", help="only mandatory (-M-) cases")
    add(
        "--version-dir",
        default="",
        metavar="DIRS",
        help="only these version folders, e.g. v1.4,v2.1",
    )
    add("--list", action="store_true", help="print the selected cases and stop")
    add = p.add_argument_group("target and TLS").add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=5696)
    add("--server-name", default="localhost", help="name to verify in its certificate")
    add(
        "--pki",
        type=Path,
        default=None,
        help=f"folder with ca.pem, client.pem, client-key.pem (default {DEFAULT_PKI})",
    )
    add("--ca", type=Path, default=None)
    add("--cert", type=Path, default=None, help="client certificate")
    add("--key", type=Path, default=None, help="its private key")
    add("--timeout", type=float, default=10.0, help="seconds per response (10)")
    add(
        "--reuse-connection",
        action="store_true",
        help="one connection for all cases (default: a fresh one per case file)",
    )
    add = p.add_argument_group("comparison").add_argument
    add(
        "--strict",
        action="store_true",
        help="no leniency: order, extra fields, result messages all count",
    )
    add(
        "--time-tolerance",
        type=int,
        default=DEFAULT_TOLERANCE,
        metavar="SECONDS",
        help=f"how far a $NOW time may be off (default {DEFAULT_TOLERANCE})",
    )
    add("--ignore", default="", metavar="NAMES", help="comma-separated XML tag names not compared")
    add(
        "--no-cleanup",
        dest="cleanup",
        action="store_false",
        help="leave the objects of a failed case on the server",
    )
    p.set_defaults(func=cmd_conformance)


def _profiles(text: str) -> list[str]:
    out: list[str] = []
    for word in filter(None, (w.strip() for w in text.split(","))):
        out.extend(CLAIMED_PROFILES if word.lower() == "claimed" else [word])
    return out


def _tag(name: str) -> int:
    name = name.strip()
    return int(name, 16) if name.lower().startswith("0x") else TAG_BY_XML_NAME[name]


def _tls_files(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    pki = args.pki or DEFAULT_PKI
    ca = args.ca or pki / "ca.pem"
    cert = args.cert or pki / "client.pem"
    key = args.key or pki / "client-key.pem"
    for path in (ca, cert, key):
        if not path.is_file():
            raise FileNotFoundError(f"TLS file not found: {path}")
    return ca, cert, key


def summary(results: Sequence[tuple[Case, CaseResult]]) -> dict[str, Any]:
    by: dict[str, dict[str, dict[str, int]]] = {}
    for case, result in results:
        row = by.setdefault(case.version_dir or "-", {}).setdefault(
            case.profile, {"passed": 0, "failed": 0}
        )
        row["passed" if result.passed else "failed"] += 1
    passed = sum(1 for _, r in results if r.passed)
    return {
        "passed": passed,
        "failed": len(results) - passed,
        "by_version": by,
        "cases": [
            {
                "name": r.name,
                "path": str(r.path),
                "version_dir": c.version_dir,
                "profile": c.profile,
                "suite": c.suite,
                "passed": r.passed,
                "steps": r.steps,
                "failed_step": r.failed_step,
                "difference": r.difference,
                "erratum": None if r.passed else ERRATA.get(r.name),
                "seconds": round(r.seconds, 3),
            }
            for c, r in results
        ],
    }


def summary_line(report: dict[str, Any]) -> str:
    return f"{report['passed']} passed, {report['failed']} failed"


def line(result: CaseResult) -> str:
    """``PASS name`` or ``FAIL name: step N: difference`` (and a known erratum)."""
    erratum = None if result.passed else ERRATA.get(result.name)
    return result.line() + (f" [test-case erratum: {erratum}]" if erratum else "")


def explain(result: CaseResult) -> str:
    """The failing step's expected and actual responses as XML, byte strings redacted."""
    parts = [f"--- {result.name} step {result.failed_step}: expected"]
    if result.expected is not None:
        parts.append(item_to_xml(redacted(result.expected)))
    parts.append("--- actual")
    parts.append(item_to_xml(redacted(result.actual)) if result.actual is not None else "(none)")
    return "\n".join(parts)


def run_all(
    cases: Sequence[Case],
    make_transport: Callable[[], Connection],
    options: Options,
    *,
    reuse: bool = False,
    out: Callable[[CaseResult], None] = lambda r: print(line(r)),
) -> list[tuple[Case, CaseResult]]:
    results: list[tuple[Case, CaseResult]] = []
    shared = make_transport() if reuse else None
    try:
        for case in cases:
            transport = shared or make_transport()
            try:
                result = run_case(case.path, transport, options, name=case.name)
            finally:
                if shared is None:
                    transport.close()
            results.append((case, result))
            out(result)
    finally:
        if shared is not None:
            shared.close()
    return results


def cmd_conformance(args: argparse.Namespace) -> int:
    try:
        cases = select(
            discover(args.cases or [test_cases_dir()]),
            profiles=_profiles(args.profile),
            mandatory=args.mandatory,
            version_dirs=[v.strip() for v in args.version_dir.split(",") if v.strip()],
        )
    except FileNotFoundError as exc:
        print(f"krypton conformance: {exc}", file=sys.stderr)
        return 2
    if not cases:
        print("krypton conformance: no test case selected", file=sys.stderr)
        return 2
    if args.list:
        for case in cases:
            print(f"{case.version_dir or '-'} {case.profile} {case.name}")
        return 0
    try:
        context = tls_context(*_tls_files(args))
    except (OSError, ssl.SSLError) as exc:
        print(f"krypton conformance: {exc}", file=sys.stderr)
        return 2
    try:
        ignore = frozenset(_tag(name) for name in args.ignore.split(",") if name.strip())
    except (KeyError, ValueError) as exc:
        print(f"krypton conformance: --ignore: unknown tag {exc}", file=sys.stderr)
        return 2
    options = Options(
        tolerance=args.time_tolerance, strict=args.strict, cleanup=args.cleanup, ignore=ignore
    )

    def make() -> TlsTransport:
        return TlsTransport(args.host, args.port, context, args.server_name, args.timeout)

    def out(result: CaseResult) -> None:
        print(line(result), flush=True)
        if args.verbose and not result.passed:
            print(explain(result), file=sys.stderr, flush=True)

    results = run_all(cases, make, options, reuse=args.reuse_connection, out=out)
    report = summary(results)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(summary_line(report))
    return 0 if report["failed"] == 0 else 1
