"""``krypton core``: run a Core, and its key-management commands.

``init`` makes the key hierarchy under the configured root of trust
(``[core.root]``; a PKCS#11 root key is generated in the token if absent);
``rewrap-root --to <root>`` moves an existing hierarchy to another root (see
:meth:`krypton.core.keystore.CoreKeyStore.rewrap_root`).

``rotate-l3``, ``revoke-l3`` and ``l3 list`` act through
:mod:`krypton.core.rotation` (guarded, fenced, audited with the operator's
identity: ``--operator``, by default ``os-user:<login name>``); ``rotate-l3``
and ``l3 rewrap`` ask for the background re-wrap (:mod:`krypton.core.rewrap`),
which a running Core carries out.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from krypton.config import CoreConfig, load_core_config, load_root_config
from krypton.core import rewrap, rotation
from krypton.core.app import (
    Core,
    check_registry_exists,
    initialise,
    open_core_root,
    open_keystore,
)
from krypton.core.keystore import MASTER_KEY_ENV, CoreKeyStore
from krypton.errors import KryptonError
from krypton.hardening import harden
from krypton.logs import setup as setup_logs
from krypton.registry import open_registry

DEFAULT_CONFIG = Path("core.toml")

Runner = Callable[[Callable[[], Awaitable[None]]], None]


def _run_async(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(fn())  # type: ignore[arg-type]


KeyAction = Callable[[CoreKeyStore, Any], Awaitable[None]]  # (key store, registry)


async def _with_keys(config: CoreConfig, action: KeyAction, source: Path) -> None:
    check_registry_exists(config, source)
    registry = await open_registry(config.registry)
    try:
        keys = await open_keystore(config, registry, source=source)
        try:
            await action(keys, registry)
        finally:
            await keys.close()
    finally:
        await registry.close()


Waiter = Callable[[Callable[[], None]], Awaitable[None]]


def cmd_serve(args: argparse.Namespace, run: Runner, wait: Waiter) -> int:
    config = load_core_config(args.config)
    setup_logs(config.log_level, config.log_format)
    harden(allow_core_dumps=config.allow_core_dumps, who=f"core {config.name}")
    core = Core(config, source=args.config)

    async def main() -> None:
        await core.start()
        assert core.keys is not None
        print(f"core {config.name}: root of trust: {core.keys.root.describe()}", flush=True)
        print(f"core {config.name}: uplink on {config.listen_host}:{core.port}", flush=True)
        try:
            await wait(core.reload)  # SIGHUP reloads; SIGTERM/SIGINT end the wait
            await core.drain()
        finally:
            await core.close()

    run(main)
    return 0


def _operator(args: argparse.Namespace) -> str:
    if args.operator:
        return str(args.operator)
    try:
        return f"os-user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "os-user:unknown"


def cmd_rotate(args: argparse.Namespace) -> int:
    config = load_core_config(args.config)

    async def action(keys: CoreKeyStore, registry: Any) -> None:
        version = await rotation.rotate(keys, registry, args.tenant, _operator(args),
                                        rewrap=args.rewrap)
        print(f"tenant {args.tenant}: L3 version {version} is now active")
        if args.rewrap:
            print(f"tenant {args.tenant}: re-wrap of older keys to version {version} asked for"
                  " (a running Krypton Core does it; `l3 list` shows progress)")

    _run_async(lambda: _with_keys(config, action, args.config))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    config = load_core_config(args.config)

    async def action(keys: CoreKeyStore, registry: Any) -> None:
        done = await rotation.revoke(keys, registry, args.tenant, args.version, _operator(args),
                                     destroy=args.destroy, force=args.force, grace=args.grace)
        if done.rotated_to is not None:
            print(f"tenant {args.tenant}: L3 version {done.rotated_to} is now active")
        print(f"tenant {args.tenant}: L3 version {done.version} is {done.state.name} "
              f"({done.keys} key(s) were wrapped under it)")

    _run_async(lambda: _with_keys(config, action, args.config))
    return 0


def _progress(job: Any) -> dict[str, Any] | None:  # a RewrapJob
    if job is None:
        return None
    return {"operator": job.operator, "started": job.started, "total": job.total,
            "moved": job.done, "updated": job.updated, "finished": job.finished}


def cmd_l3_list(args: argparse.Namespace) -> int:
    config = load_core_config(args.config)

    async def action(keys: CoreKeyStore, registry: Any) -> None:
        versions = await rotation.list_l3(keys, registry, args.tenant)
        jobs = await registry.rewrap_jobs(args.tenant)
        job = jobs[0] if jobs else None
        if args.json:  # the job shows on the row of the version it re-wraps to
            for v in versions:
                row = {"tenant": args.tenant, "version": v.version, "state": v.state.name,
                       "keys": v.keys}
                if job is not None and job.target == v.version:
                    row["rewrap"] = _progress(job)
                sys.stdout.write(json.dumps(row) + "\n")
            return
        print(f"{'version':>7}  {'state':<11}  keys")
        for v in versions:
            print(f"{v.version:>7}  {v.state.name:<11}  {v.keys}")
        if job is not None:
            status = "finished" if job.finished is not None else "running"
            print(f"re-wrap to version {job.target} ({status}), asked by {job.operator}: "
                  f"{job.done} of {job.total} key(s) moved")

    _run_async(lambda: _with_keys(config, action, args.config))
    return 0


def cmd_l3_rewrap(args: argparse.Namespace) -> int:
    """Ask for the tenant's background re-wrap; with ``--wait``, follow it to the end."""
    config = load_core_config(args.config)

    async def action(keys: CoreKeyStore, registry: Any) -> None:
        job = await rewrap.request(keys, registry, args.tenant, _operator(args))
        print(f"tenant {args.tenant}: re-wrap of {job.total} key(s) to version {job.target}"
              " asked for", flush=True)
        deadline = time.monotonic() + args.wait
        while job.finished is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            job = (await registry.rewrap_jobs(args.tenant))[0]
        state = "finished" if job.finished is not None else "running"
        print(f"tenant {args.tenant}: re-wrap {state}: {job.done} of {job.total} key(s) moved")
        if args.wait and job.finished is None:
            raise RewrapPending(f"the re-wrap of {args.tenant} did not finish within "
                                f"{args.wait:g} s (is a Krypton Core running?)")

    _run_async(lambda: _with_keys(config, action, args.config))
    return 0


class RewrapPending(KryptonError):
    """``l3 rewrap --wait`` gave up waiting."""


def cmd_init(args: argparse.Namespace) -> int:
    """Make the key hierarchy (idempotent): the only command that creates a
    master key file or the root of a hierarchy in a registry."""
    config = load_core_config(args.config)
    tenants: list[str] = []

    async def main() -> None:
        tenants.extend(await initialise(config))

    _run_async(main)
    if config.root.kind == "file":
        key = (f"${MASTER_KEY_ENV}" if os.environ.get(MASTER_KEY_ENV, "").strip()
               else str(config.root.key_file or config.master_key_file))
        root = f"master key: {key}"
    else:
        root = f"root of trust: {config.root.kind}"
    print(f"key hierarchy in {config.registry} ({root});"
          f" tenants: {', '.join(tenants) or '(none)'}")
    return 0


def cmd_rewrap_root(args: argparse.Namespace) -> int:
    """Move the hierarchy from the configured root to ``--to`` (a TOML file with a
    ``[core.root]`` table, or inline ``kind=...,key=value`` settings)."""
    config = load_core_config(args.config)
    target, key_file = load_root_config(args.to, Path.cwd())
    done: list[str] = []

    async def action(keys: CoreKeyStore, registry: Any) -> None:
        new = await open_core_root(config, target, create=True, source=args.config,
                                   key_file=key_file, setting="--to")
        try:
            moved = await keys.rewrap_root(new)
            done.append(f"{moved} row(s) moved from {keys.root.describe()} to {new.describe()}")
        finally:
            await new.close()

    _run_async(lambda: _with_keys(config, action, args.config))
    print(f"key hierarchy in {config.registry}: {done[0]}; L3 and L4 unchanged."
          " Point core.root at the new root before the Core starts again.")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    config = load_core_config(args.config)

    check_registry_exists(config, args.config)

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
    wait: Waiter,
) -> None:
    core = sub.add_parser("core", help="run a Krypton Core, or manage its keys")
    core.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="core.toml")
    core.set_defaults(func=lambda a: cmd_serve(a, run, wait))
    actions = core.add_subparsers(dest="action")

    init = actions.add_parser(
        "init", help="create the key hierarchy (master key file, registry root, tenants)"
    )
    init.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="core.toml")
    init.set_defaults(func=cmd_init)

    rewrap = actions.add_parser(
        "rewrap-root", help="move the key hierarchy to another root of trust (L3, L4 untouched)")
    rewrap.add_argument("--to", required=True,
                        help="the new root: a TOML file with a [core.root] table, or "
                        "kind=pkcs11,token_label=...,key_label=...,pin_env=... inline")
    rewrap.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="core.toml")
    rewrap.set_defaults(func=cmd_rewrap_root)

    rotate = actions.add_parser("rotate-l3", help="make a new active L3 version for a tenant")
    rotate.add_argument("--tenant", required=True)
    rotate.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="core.toml")
    rotate.add_argument("--operator", default=None, help="who acts (for the audit trail)")
    rotate.add_argument("--no-rewrap", dest="rewrap", action="store_false",
                        help="do not ask for the background re-wrap of older keys")
    rotate.set_defaults(func=cmd_rotate)

    revoke = actions.add_parser(
        "revoke-l3", help="revoke an L3 version: gateways drop it (the active one is "
        "rotated first)")
    revoke.add_argument("--tenant", required=True)
    revoke.add_argument("--version", required=True, type=int)
    revoke.add_argument("--destroy", action="store_true", help="destroy instead of compromise")
    revoke.add_argument("--force", action="store_true",
                        help="revoke even though keys are still wrapped under it (they are lost)")
    revoke.add_argument("--grace", type=float, default=rotation.DEFAULT_GRACE,
                        help="seconds between the rotation and the revocation (active version)")
    revoke.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="core.toml")
    revoke.add_argument("--operator", default=None, help="who acts (for the audit trail)")
    revoke.set_defaults(func=cmd_revoke)

    l3 = actions.add_parser("l3", help="L3 versions of a tenant")
    l3_actions = l3.add_subparsers(dest="l3_action", required=True)
    listing = l3_actions.add_parser("list", help="every version, its state, the keys under it")
    listing.add_argument("--tenant", required=True)
    listing.add_argument("--json", action="store_true", help="JSON lines")
    listing.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="core.toml")
    listing.set_defaults(func=cmd_l3_list)
    again = l3_actions.add_parser(
        "rewrap", help="re-wrap every key under an older version to the active one (in the"
        " background, by the running Core; audited as --operator)")
    again.add_argument("--tenant", required=True)
    again.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                       help="follow the re-wrap up to this long (fails if not finished)")
    again.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="core.toml")
    again.add_argument("--operator", default=None, help="who acts (for the audit trail)")
    again.set_defaults(func=cmd_l3_rewrap)

    audit = actions.add_parser("audit", help="print the audit trail (JSON lines)")
    audit.add_argument("--tenant", default=None)
    audit.add_argument("--limit", type=int, default=1000)
    audit.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="core.toml")
    audit.set_defaults(func=cmd_audit)
