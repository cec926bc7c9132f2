"""``krypton core``: run a Core, and its key-management commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from krypton.config import CoreConfig, load_core_config
from krypton.core.app import Core, open_keystore
from krypton.crypto.keyring import L3State
from krypton.hardening import harden
from krypton.registry import open_registry

DEFAULT_CONFIG = Path("core.toml")

Runner = Callable[[Callable[[], Awaitable[None]]], None]


def _run_async(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(fn())  # type: ignore[arg-type]


async def _with_keys(config: CoreConfig, action: Callable[[Any], Awaitable[None]]) -> None:
    registry = await open_registry(config.registry)
    try:
        keys = await open_keystore(config, registry)
        try:
            await action(keys)
        finally:
            await keys.close()
    finally:
        await registry.close()


def cmd_serve(args: argparse.Namespace, run: Runner, wait: Callable[[], Awaitable[None]]) -> int:
    config = load_core_config(args.config)
    harden(allow_core_dumps=config.allow_core_dumps, who=f"core {config.name}")
    core = Core(config)

    async def main() -> None:
        await core.start()
        print(f"core {config.name}: uplink on {config.listen_host}:{core.port}", flush=True)
        try:
            await wait()
        finally:
            await core.close()

    run(main)
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    config = load_core_config(args.config)

    async def action(keys: Any) -> None:
        version = await keys.rotate_l3(args.tenant)
        print(f"tenant {args.tenant}: L3 version {version} is now active")

    _run_async(lambda: _with_keys(config, action))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    config = load_core_config(args.config)
    state = L3State.DESTROYED if args.destroy else L3State.COMPROMISED

    async def action(keys: Any) -> None:
        await keys.set_l3_state(args.tenant, args.version, state)
        print(f"tenant {args.tenant}: L3 version {args.version} is {state.name}")

    _run_async(lambda: _with_keys(config, action))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    config = load_core_config(args.config)

    async def main() -> None:
        registry = await open_registry(config.registry)
        try:
            for rec in await registry.audit(args.tenant, args.limit):
                row = {
                    "time": rec.time,
                    "identity": rec.identity,
                    "tenant": rec.tenant,
                    "operation": rec.operation,
                    "uid": rec.uid,
                    "result": rec.result,
                    "gateway": rec.gateway,
                    "correlation_id": rec.correlation_id,
                }
                sys.stdout.write(json.dumps(row) + "\n")
        finally:
            await registry.close()

    _run_async(main)
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    run: Runner,
    wait: Callable[[], Awaitable[None]],
) -> None:
    core = sub.add_parser("core", help="run a Krypton Core, or manage its keys")
    core.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="core.toml")
    core.set_defaults(func=lambda a: cmd_serve(a, run, wait))
    actions = core.add_subparsers(dest="action")

    rotate = actions.add_parser("rotate-l3", help="make a new active L3 version for a tenant")
    rotate.add_argument("--tenant", required=True)
    rotate.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="core.toml")
    rotate.set_defaults(func=cmd_rotate)

    revoke = actions.add_parser("revoke-l3", help="revoke an L3 version: gateways drop it")
    revoke.add_argument("--tenant", required=True)
    revoke.add_argument("--version", required=True, type=int)
    revoke.add_argument("--destroy", action="store_true", help="destroy instead of compromise")
    revoke.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="core.toml")
    revoke.set_defaults(func=cmd_revoke)

    audit = actions.add_parser("audit", help="print the audit trail (JSON lines)")
    audit.add_argument("--tenant", default=None)
    audit.add_argument("--limit", type=int, default=1000)
    audit.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="core.toml")
    audit.set_defaults(func=cmd_audit)
