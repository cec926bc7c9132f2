"""``krypton bench`` and ``krypton bench ceiling``: flags, and what each prints.

``register(sub)`` adds the sub-command to the ``krypton`` parser; the rest of
the package is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from krypton.bench.wire import OPS
from krypton.errors import ConfigError

DEFAULT_PKI = Path(os.environ.get("KRYPTON_DEV_DIR", ".krypton-dev")) / "pki"

EPILOG = """\
examples:
  krypton bench --pki .krypton-dev/pki --op get --connections 16 --duration 10
  krypton bench --op mixed --ratio 9:1 --procs 2 --connections 32 --png bench.png
  krypton bench --op connect --resume --count 2000 --json
  krypton bench --op create -c 16 --count 1000000 --keys-file keys.txt   # load phase
  krypton bench --op get -c 16 --duration 10 --keys-file keys.txt        # random keys
  krypton bench ceiling --port 15697 --pki .krypton-dev/pki

Exit status: 0 when every response was a Success, 1 when any error was seen
(warmup included), 2 for bad flags or unusable TLS files.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="load-test a KMIP server over mutual TLS (or serve the ceiling)",
        description="A KMIP load generator over mutual TLS against any KMIP server; "
        "`krypton bench ceiling` serves the cheapest KMIP-shaped responder to compare with.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", nargs="?", choices=["ceiling"], help="serve the ceiling responder")
    t = p.add_argument_group("target and TLS")
    t.add_argument("--host", default="127.0.0.1")
    t.add_argument("--port", type=int, default=5696, help="(ceiling: 0 picks a free port)")
    t.add_argument("--server-name", default="localhost", help="name to verify in its certificate")
    t.add_argument(
        "--pki", type=Path, default=None,
        help=f"directory with ca.pem, client.pem, client-key.pem (default {DEFAULT_PKI}); "
        "the ceiling serves gateway.pem / gateway-key.pem from it",
    )  # fmt: skip
    t.add_argument("--ca", type=Path, default=None)
    t.add_argument("--cert", type=Path, default=None, help="client certificate (ceiling: server's)")
    t.add_argument("--key", type=Path, default=None, help="its private key")
    w = p.add_argument_group("workload")
    w.add_argument("--op", choices=list(OPS), default="get", help="default get")
    w.add_argument("--ratio", default="9:1", help="GET:CREATE for --op mixed (default 9:1)")
    w.add_argument("--connections", "-c", type=int, default=1, help="concurrent connections")
    w.add_argument("--procs", "-p", type=int, default=1, help="worker processes (default 1)")
    span = w.add_mutually_exclusive_group()
    span.add_argument("--duration", "-d", type=float, default=None, help="seconds (default 10)")
    span.add_argument("--count", "-n", type=int, default=None, help="operations in total")
    w.add_argument(
        "--warmup", type=float, default=None,
        help="seconds not measured first (default 1 with --duration, 0 with --count)",
    )  # fmt: skip
    w.add_argument("--version", default="1.4", help="KMIP protocol version (default 1.4)")
    w.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=False,
        help="--op connect: resume TLS sessions (default: a full handshake each time)",
    )  # fmt: skip
    w.add_argument("--uid", default=None, help="Get this key instead of creating one at start")
    w.add_argument(
        "--keys-file", type=Path, default=None,
        help="--op create: append the identifier of every key made to this file; "
        "--op get: Get identifiers drawn uniformly at random from it, one per request",
    )  # fmt: skip
    w.add_argument("--length", type=int, choices=[128, 192, 256], default=256, help="AES bits")
    w.add_argument(
        "--check", choices=["status", "full"], default="status",
        help="status: walk TTLV headers for each item's Result Status (default); "
        "full: decode each response and check the key length",
    )  # fmt: skip
    w.add_argument("--timeout", type=float, default=10.0, help="per request / connect (s)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    o.add_argument("--png", type=Path, default=None, help="write a latency histogram PNG")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress line on stderr")
    o.add_argument(
        "--server-pid", type=int, action="append", default=[],
        help="also report this process tree's CPU per op (repeatable)",
    )  # fmt: skip
    p.set_defaults(func=cmd_bench)


def _tls_paths(args: argparse.Namespace, cert: str, key: str) -> tuple[Path, Path, Path]:
    pki = args.pki if args.pki is not None else DEFAULT_PKI
    return (
        args.ca or pki / "ca.pem",
        args.cert or pki / f"{cert}.pem",
        args.key or pki / f"{key}.pem",
    )


def _version(text: str) -> Any:
    from krypton.kmip.versions import ProtocolVersion

    try:
        major, minor = (int(x) for x in text.split("."))
    except ValueError:
        raise ConfigError(f"--version: expected MAJOR.MINOR such as 1.4, got {text!r}") from None
    return ProtocolVersion(major, minor)


def config_from_args(args: argparse.Namespace) -> Any:
    from krypton.bench.runner import BenchConfig
    from krypton.bench.wire import parse_ratio
    from krypton.bench.worker import Target

    if args.connections < 1 or args.procs < 1:
        raise ConfigError("--connections and --procs must be at least 1")
    if args.count is not None and args.count < 1:
        raise ConfigError("--count must be at least 1")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration must be positive")
    if args.timeout <= 0:
        raise ConfigError("--timeout must be positive")
    if args.keys_file is not None and args.op not in ("get", "create"):
        raise ConfigError("--keys-file is for --op create (record) and --op get (draw)")
    if args.keys_file is not None and args.uid is not None:
        raise ConfigError("--keys-file and --uid: give one")
    try:
        ratio = parse_ratio(args.ratio)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.op == "mixed" and 0 in ratio:
        raise ConfigError("--ratio: --op mixed needs both Gets and Creates (use --op get/create)")
    warmup = args.warmup if args.warmup is not None else (0.0 if args.count else 1.0)
    if warmup < 0:
        raise ConfigError("--warmup must not be negative")
    ca, cert, key = _tls_paths(args, "client", "client-key")
    return BenchConfig(
        target=Target(args.host, args.port, args.server_name, str(ca), str(cert), str(key)),
        op=args.op,
        ratio=ratio,
        version=_version(args.version),
        connections=args.connections,
        procs=args.procs,
        duration=args.duration if args.duration is not None else 10.0,
        count=args.count,
        warmup=warmup,
        resume=args.resume,
        uid=args.uid,
        length=args.length,
        full_check=args.check == "full",
        timeout=args.timeout,
        server_pids=tuple(args.server_pid),
        progress=not args.quiet,
        keys_file=args.keys_file,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    if args.action == "ceiling":
        return cmd_ceiling(args)
    from krypton.bench import plot
    from krypton.bench.runner import run_bench
    from krypton.bench.stats import format_report, summarize

    cfg = config_from_args(args)
    if args.png is not None and not plot.available():
        raise ConfigError("--png needs matplotlib (pip install matplotlib)")
    outcome = run_bench(cfg)
    if cfg.keys_file is not None and cfg.op == "create":
        with cfg.keys_file.open("a") as keys:
            keys.writelines(uid + "\n" for uid in outcome.created)
    summary = summarize(outcome)
    if args.png is not None:
        plot.write_png(args.png, outcome.samples, summary)
        summary["png"] = str(args.png)
    if args.json:
        print(json.dumps(summary, sort_keys=False))
    else:
        print(format_report(summary))
        if args.png is not None:
            print(f"  histogram  {args.png}")
    bad = summary["errors"] or summary["warmup_errors"] or not summary["ops"]
    return 1 if bad else 0


def cmd_ceiling(args: argparse.Namespace) -> int:
    from krypton.bench import ceiling
    from krypton.bench.worker import _run_loop

    ca, cert, key = _tls_paths(args, "gateway", "gateway-key")

    async def main() -> None:
        server = await ceiling.serve(args.host, args.port, ca, cert, key)
        print(
            f"krypton bench ceiling: KMIP-shaped responder on {args.host}:"
            f"{ceiling.bound_port(server)} (mutual TLS, CA {ca})",
            flush=True,
        )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            server.close()

    _run_loop(main())
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="krypton")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["bench", *sys.argv[1:]])
    sys.exit(ns.func(ns))
