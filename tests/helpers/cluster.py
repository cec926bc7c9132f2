"""Test helpers: a Krypton Core and its Gateways as separate processes on loopback
(started by the ``start_cluster`` fixture, :mod:`tests.helpers.fixtures`).

How this works
--------------
:func:`make_cluster` lays a cluster out in a directory: ``init_dev_dir`` writes
the development PKI and ``core.toml`` / ``gateway.toml`` / ``policy.toml``;
each extra gateway (``gw-b``, ...) gets its own certificate from the dev CA
(SPIFFE ID ``spiffe://krypton.dev/gateway/<name>``, server and client usage,
issued with :mod:`krypton.pki.certs`). Everything else is set per process by
environment variable, never by editing the TOML files: every gateway has its
own KMIP port, vault file and name, and the Core is told its uplink port, the
gateways it accepts with the tenants each serves (``KRYPTON_CORE_GATEWAY``,
by default both dev tenants) and, when given, a registry
URL (``KRYPTON_CORE_REGISTRY``, e.g. a PostgreSQL database). The Core port is
fixed for the life of the cluster, so a Core that was killed comes back where
its gateways look for it.

``krypton core`` and ``krypton gateway`` run as child processes of the test,
stdout and stderr to ``<dir>/logs/<name>.<n>.log``. A process is ready when it
prints its ready line (``core ...: uplink on ...``, ``gateway ...: KMIP on
...``); every wait has a deadline and a failure shows the process's log.
:meth:`Cluster.core_cli` runs one ``krypton core ... <action>`` (init,
rotate-l3, revoke-l3, audit) against the same configuration, as its own
process; :func:`make_cluster` runs ``init`` unless told not to.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from krypton.client.sync import KmipClient, tls_context
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute, attributes_v2, to_v1
from krypton.kmip.messages import ResponseItem
from krypton.kmip.versions import ProtocolVersion
from krypton.pki.certs import issue_leaf, load_cert_pem, load_key_pem, write_cert_pem, write_key_pem
from krypton.pki.dev import (
    GATEWAY_NAME,
    LOOPBACK_DNS,
    LOOPBACK_IPS,
    DevLayout,
    gateway_spiffe_id,
    init_dev_dir,
)
from krypton.registry import open_registry
from krypton.ttlv.enums import (
    NameType,
    Operation,
    ResultStatus,
    RevocationReasonCode,
)
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag
from tests.helpers.servers import free_port

CORE_READY = "uplink on"
GATEWAY_READY = "KMIP on"
START_TIMEOUT = 20.0
CLI_TIMEOUT = 30.0
V21 = ProtocolVersion(2, 1)
T = TypeVar("T")


# -- processes ----------------------------------------------------------------------
@dataclass
class Proc:
    """One running ``krypton core`` or ``krypton gateway``."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not stop in time; the exit status."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def _spawn(name: str, args: Sequence[str], env: dict[str, str], logs: Path) -> Proc:
    logs.mkdir(parents=True, exist_ok=True)
    n = len(list(logs.glob(f"{name}.*.log")))
    log_path = logs / f"{name}.{n}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "krypton.cli.main", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Proc(name, proc, log_path)


def _wait_line(p: Proc, line: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in p.log():
            return
        if not p.alive:
            break
        time.sleep(0.02)
    p.kill()
    raise RuntimeError(f"{p.name} did not start (no {line!r} line):\n{p.log()}")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, step: float = 0.02) -> T:
    """Poll ``probe`` until it returns something other than None; bounded."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            got = probe()
        except Exception as exc:  # the probe's failures are why we are still waiting
            got, last = None, exc
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last error: {last!r})")
        time.sleep(step)


def _base_env() -> dict[str, str]:
    """The test's environment without any KRYPTON_* setting of its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KRYPTON_")}


# -- the cluster --------------------------------------------------------------------
@dataclass
class GatewaySpec:
    name: str
    cert: Path
    key: Path
    port: int
    vault: Path
    tenants: tuple[str, ...] = ("demo", "other")
    admin_port: int = 0  # its admin endpoint (never the default 9696)

    @property
    def spiffe_id(self) -> str:
        return gateway_spiffe_id(self.name)


@dataclass
class Cluster:
    root: Path
    layout: DevLayout
    core_port: int
    registry: str | None
    gateways: dict[str, GatewaySpec]
    core: Proc | None = None
    running: dict[str, Proc] = field(default_factory=dict)
    # Per-gateway KRYPTON_* settings on top of the defaults (e.g. the uplink
    # through a proxy: KRYPTON_GATEWAY_UPLINK_CORE_ADDRESS).
    gateway_settings: dict[str, dict[str, str]] = field(default_factory=dict)
    core_settings: dict[str, str] = field(default_factory=dict)  # kept across restarts
    # Where the gateways look for the Core (default: ``core_address``), e.g. a
    # proxy in between or several Cores ("a:1, b:2"); more gateway settings.
    uplink_address: str | None = None
    gateway_extra: dict[str, str] = field(default_factory=dict)
    # More Cores on the same registry (``start_core(name=..., port=...)``).
    cores: dict[str, Proc] = field(default_factory=dict)
    # Each Core's admin endpoint port, by name (never the default 9697).
    core_admin_ports: dict[str, int] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def core_address(self) -> str:
        return f"127.0.0.1:{self.core_port}"

    def core_env(self) -> dict[str, str]:
        env = _base_env()
        env["KRYPTON_CORE_LISTEN_PORT"] = str(self.core_port)
        # Never the default admin port (9697), even for a Core run by hand (core_cli).
        admin = self.core_admin_ports.setdefault("core", free_port())
        env["KRYPTON_CORE_ADMIN_LISTEN"] = f"127.0.0.1:{admin}"
        env["KRYPTON_CORE_GATEWAY"] = "[" + ", ".join(
            f'{{id = "{g.spiffe_id}", tenants = [{", ".join(repr(t) for t in g.tenants)}]}}'
            for g in self.gateways.values()
        ) + "]"
        if self.registry is not None:
            env["KRYPTON_CORE_REGISTRY"] = self.registry
        env.update(self.core_settings)
        return env

    def gateway_env(self, name: str) -> dict[str, str]:
        g = self.gateways[name]
        env = _base_env()
        env.update(
            KRYPTON_GATEWAY_NAME=g.name,
            KRYPTON_GATEWAY_LISTEN_PORT=str(g.port),
            KRYPTON_GATEWAY_VAULT_PATH=str(g.vault),
            KRYPTON_GATEWAY_TLS_CERT=str(g.cert),
            KRYPTON_GATEWAY_TLS_KEY=str(g.key),
            KRYPTON_GATEWAY_UPLINK_CORE_ADDRESS=self.uplink_address or self.core_address,
            KRYPTON_GATEWAY_LOG_LEVEL="info",
            KRYPTON_GATEWAY_ADMIN_LISTEN=f"127.0.0.1:{g.admin_port}",
        )
        env.update(self.gateway_extra)
        env.update(self.gateway_settings.get(name, {}))
        return env

    # -- processes --------------------------------------------------------------
    def start_core(self, timeout: float = START_TIMEOUT, *, name: str = "core",
                   port: int | None = None, env: Mapping[str, str] | None = None,
                   **settings: str) -> Proc:
        """Start the Core; ``env`` and ``settings`` add KRYPTON_* settings (e.g.
        another certificate). Another ``name`` and ``port`` start one more Core
        (kept in ``cores``)."""
        args = ["core", "--config", str(self.layout.core_config)]
        admin = self.core_admin_ports.setdefault(name, free_port())
        full = {**self.core_env(), "KRYPTON_CORE_ADMIN_LISTEN": f"127.0.0.1:{admin}",
                **(env or {}), **settings}
        if port is not None:
            full["KRYPTON_CORE_LISTEN_PORT"] = str(port)
        proc = _spawn(name, args, full, self.logs)
        _wait_line(proc, CORE_READY, timeout)
        if name == "core":
            self.core = proc
        else:
            self.cores[name] = proc
        return proc

    def start_gateways(self, *names: str, timeout: float = START_TIMEOUT,
                       serving: bool = True) -> list[Proc]:
        """Start gateways side by side; each is ready once it printed its line and
        (unless not ``serving``) made a key (so it holds its tenants' L3 keys)."""
        procs = []
        for name in names or tuple(self.gateways):
            args = ["gateway", "--config", str(self.layout.gateway_config)]
            procs.append(_spawn(name, args, self.gateway_env(name), self.logs))
        for p in procs:
            _wait_line(p, GATEWAY_READY, timeout)
            self.running[p.name] = p
            if not serving:
                continue
            with self.client(p.name) as c:
                wait_for(f"{p.name} serving Create", c.create, timeout)
        return procs

    def kill_core(self) -> None:
        assert self.core is not None
        self.core.kill()

    def stop(self) -> dict[str, int]:
        """Stop every process (gateways first); their exit statuses."""
        codes = {name: p.stop() for name, p in self.running.items()}
        self.running.clear()
        codes.update({name: p.stop() for name, p in self.cores.items()})
        self.cores.clear()
        if self.core is not None:
            codes["core"] = self.core.stop()
        return codes

    def core_cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """Run ``krypton core --config core.toml <args>`` as its own process; its stdout."""
        cmd = [sys.executable, "-m", "krypton.cli.main", "core"]
        cmd += ["--config", str(self.layout.core_config), *args]
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=self.core_env(), timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise AssertionError(
                f"krypton core {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
            )
        return done.stdout

    def gateway_cli(self, name: str, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """Run ``krypton gateway <args> --config gateway.toml`` with gateway ``name``'s
        settings, as its own process; its stdout."""
        cmd = [sys.executable, "-m", "krypton.cli.main", "gateway", *args,
               "--config", str(self.layout.gateway_config)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.gateway_env(name),
                              timeout=timeout, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    # -- what the Core and the gateways hold ---------------------------------------
    @property
    def registry_url(self) -> str:
        return self.registry or f"sqlite:{self.root / 'core.db'}"

    def registry_holds(self, tenant: str, uids: Sequence[str]) -> set[str]:
        """Which of ``uids`` the Core's registry holds (read with the registry API)."""

        async def read() -> set[str]:
            registry = await open_registry(self.registry_url)
            try:
                return {u for u in uids if await registry.get_object(tenant, u) is not None}
            finally:
                await registry.close()

        return asyncio.run(read())

    def l3_version(self, gateway: str, uid: str) -> int | None:
        """The L3 version a gateway's vault record of ``uid`` is wrapped under."""
        path = self.gateways[gateway].vault
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            row = conn.execute("SELECT l3_version FROM keys WHERE uid = ?", (uid,)).fetchone()
        finally:
            conn.close()
        return None if row is None else int(row[0])

    # -- clients ----------------------------------------------------------------
    def client(
        self, gateway: str, who: str = "client", *, version: ProtocolVersion = V21
    ) -> KmipClient:
        pki = self.layout.pki
        ctx = tls_context(pki / "ca.pem", pki / f"{who}.pem", pki / f"{who}-key.pem")
        g = self.gateways[gateway]
        return KmipClient("127.0.0.1", g.port, ctx, version=version, timeout=10.0)

    def dump_logs(self) -> str:
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            parts.append(f"----- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def issue_gateway_cert(layout: DevLayout, name: str) -> tuple[Path, Path]:
    """A gateway certificate from the dev CA (server for KMIP, client for the uplink)."""
    ca, ca_key = load_cert_pem(layout.ca), load_key_pem(layout.ca_key)
    cert, key = issue_leaf(
        ca,
        ca_key,
        common_name=name,
        spiffe_id=gateway_spiffe_id(name),
        dns=LOOPBACK_DNS,
        ips=LOOPBACK_IPS,
        server=True,
        client=True,
    )
    cert_path, key_path = layout.pki / f"gateway-{name}.pem", layout.pki / f"gateway-{name}-key.pem"
    write_key_pem(key_path, key)
    write_cert_pem(cert_path, cert)
    return cert_path, key_path


def make_cluster(
    root: Path,
    *,
    gateways: Sequence[str] = (GATEWAY_NAME,),
    registry: str | None = None,
    tenants: Mapping[str, tuple[str, ...]] | None = None,
    init: bool = True,
) -> Cluster:
    """Lay out (but do not start) a Core and the named gateways in ``root``;
    ``tenants``: the tenants a gateway is served, where not both dev tenants;
    with ``init``, run ``krypton core init`` (a Core refuses to start without).
    Tests start clusters through the ``start_cluster`` fixture, which calls this."""
    layout = init_dev_dir(root)
    specs: dict[str, GatewaySpec] = {}
    for name in gateways:
        if name == GATEWAY_NAME:
            cert, key = layout.gateway, layout.gateway_key
        else:
            cert, key = issue_gateway_cert(layout, name)
        specs[name] = GatewaySpec(name, cert, key, free_port(), root / f"vault-{name}.db",
                                  admin_port=free_port())
        if tenants is not None and name in tenants:
            specs[name].tenants = tenants[name]
    cluster = Cluster(root, layout, free_port(), registry, specs)
    if init:
        cluster.core_cli("init")
    return cluster


# -- KMIP requests the gateway delegates ----------------------------------------------
def uid_item(operation: Operation, uid: str, *extra: Item) -> Item:
    return cm.batch_item(operation, cm.payload(Item.text(Tag.UNIQUE_IDENTIFIER, uid), *extra))


def activate_item(uid: str) -> Item:
    return uid_item(Operation.ACTIVATE, uid)


def revoke_item(uid: str, code: RevocationReasonCode) -> Item:
    reason = Item.structure(Tag.REVOCATION_REASON, Item.enum(Tag.REVOCATION_REASON_CODE, code))
    return uid_item(Operation.REVOKE, uid, reason)


def destroy_item(uid: str) -> Item:
    return uid_item(Operation.DESTROY, uid)


def check_item(uid: str) -> Item:
    return uid_item(Operation.CHECK, uid)


def locate_item(version: ProtocolVersion, name: str | None = None) -> Item:
    attrs: list[Attribute] = []
    if name is not None:
        value = Item.structure(
            Tag.NAME,
            Item.text(Tag.NAME_VALUE, name),
            Item.enum(Tag.NAME_TYPE, NameType.UNINTERPRETED_TEXT_STRING),
        )
        attrs.append(Attribute("Name", value))
    if version.v2:
        body: tuple[Item, ...] = (attributes_v2(attrs),)
    else:
        body = tuple(to_v1(a) for a in attrs)
    return cm.batch_item(Operation.LOCATE, cm.payload(*body))


def one(client: KmipClient, item: Item) -> ResponseItem:
    """Send one batch item; its response item (success or not)."""
    response = client.call([item])
    assert len(response.items) == 1
    return response.items[0]


def ok(client: KmipClient, item: Item) -> ResponseItem:
    got = one(client, item)
    assert got.status is ResultStatus.SUCCESS, f"{got.reason!r}: {got.message}"
    return got


def located(item: ResponseItem) -> list[str]:
    assert item.payload is not None
    return [
        c.value for c in item.payload.find_all(Tag.UNIQUE_IDENTIFIER) if isinstance(c.value, str)
    ]
