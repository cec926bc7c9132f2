"""``krypton``: one entry point, sub-commands dispatched by table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from krypton.config import load_core_config, load_gateway_config
from krypton.core.dev import EmbeddedStack
from krypton.errors import ConfigError, KryptonError
from krypton.pki.dev import DevLayout, init_dev_dir

DEFAULT_DEV_DIR = Path(".krypton-dev")

log = logging.getLogger("krypton")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _run(coro_fn: Callable[[], object]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(coro_fn())  # type: ignore[arg-type]
        return
    uvloop.run(coro_fn())  # type: ignore[arg-type]


def _connect_help(layout: DevLayout, host: str, port: int) -> str:
    pki = layout.pki.resolve()
    return f"""
Krypton dev stack is up: KMIP over mutual TLS on {host}:{port}
  CA                {pki / "ca.pem"}
  client (demo)     {pki / "client.pem"}  key {pki / "client-key.pem"}
  client (other)    {pki / "other-client.pem"}  key {pki / "other-client-key.pem"}

Connect with PyKMIP, for example:
  from kmip.pie.client import ProxyKmipClient
  from kmip.core import enums
  with ProxyKmipClient(hostname="{host}", port={port},
                       cert="{pki / "client.pem"}", key="{pki / "client-key.pem"}",
                       ca="{pki / "ca.pem"}") as c:
      uid = c.create(enums.CryptographicAlgorithm.AES, 256)
      print(uid, c.get(uid))
Stop with Ctrl-C; keys persist in {layout.root.resolve()}.
"""


def _stack(layout: DevLayout) -> EmbeddedStack:
    core = load_core_config(layout.core_config)
    gateway = load_gateway_config(layout.gateway_config)
    _setup_logging(gateway.log_level)
    return EmbeddedStack(core, gateway)


def cmd_dev(args: argparse.Namespace) -> int:
    layout = init_dev_dir(Path(args.dir))
    if args.action == "init":
        print(f"development PKI and configs in {layout.root.resolve()}")
        return 0
    stack = _stack(layout)

    async def main() -> None:
        await stack.start()
        cfg = stack.gateway.config
        print(_connect_help(layout, cfg.listen_host, stack.gateway.port), flush=True)
        try:
            await _wait_for_signal()
        finally:
            await stack.close()

    _run(main)
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    gateway = load_gateway_config(args.config)
    _setup_logging(gateway.log_level)
    if not args.embedded_core:
        raise ConfigError(
            "--embedded-core: a gateway needs an L3 source; until the Core uplink lands, "
            "pass the Core's config to run its key store in this process"
        )
    core = load_core_config(args.embedded_core)
    stack = EmbeddedStack(core, gateway)

    async def main() -> None:
        await stack.start()
        print(
            f"gateway {gateway.name}: KMIP on {gateway.listen_host}:{stack.gateway.port}",
            flush=True,
        )
        try:
            await _wait_for_signal()
        finally:
            await stack.close()

    _run(main)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="krypton", description="Krypton KMIP key gateway")
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the embedded development stack (Core + Gateway)")
    dev.add_argument("action", nargs="?", choices=["init"], help="only write PKI and configs")
    dev.add_argument("--dir", default=os.environ.get("KRYPTON_DEV_DIR", str(DEFAULT_DEV_DIR)))
    dev.set_defaults(func=cmd_dev)

    gw = sub.add_parser("gateway", help="run a gateway")
    gw.add_argument("--config", required=True, type=Path)
    gw.add_argument(
        "--embedded-core",
        type=Path,
        default=None,
        help="a core.toml whose key store runs in this process",
    )
    gw.set_defaults(func=cmd_gateway)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"krypton: configuration error: {exc}", file=sys.stderr)
        return 2
    except KryptonError as exc:
        print(f"krypton: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
