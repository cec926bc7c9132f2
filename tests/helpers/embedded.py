"""Test helper: a real Core and a real gateway in this process, joined by the real uplink.

How this works
--------------
:class:`StackFactory` starts :class:`krypton.stack.dev.EmbeddedStack` as
``krypton dev`` wires it: the Core (SQLite registry, key store, Core service,
the uplink server over gRPC mutual TLS on a free loopback port) and the
gateway (vault, uplink client, ``Upstream``, dispatcher, KMIP listener on a
free loopback port). Nothing is stood in for: a delegated item goes through
the gateway's ``Upstream`` (sync before delegate, state flowing down,
read-through) and the uplink to the Core's control table.

The stacks run on one event loop in a background thread (:class:`LoopThread`),
so they keep serving while a test blocks on a socket. A test talks to a stack
as a client does: KMIP over mutual TLS with the dev PKI's workload
certificate of the tenant (``demo``: ``client``, ``other``: ``other-client``);
:meth:`Stack.wait` runs a coroutine (a registry read, say) on the stack's loop.

Cost: the PKI and the loop are made once per test module (the
``embedded_stacks`` fixture); each stack has its own registry, master key and
vault, so tests share no state, and starts in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from krypton.client.sync import KmipClient, tls_context
from krypton.config import AdminConfig, load_core_config, load_gateway_config
from krypton.core.engine.objects import CoreServices
from krypton.kmip import client_messages as cm
from krypton.model import ObjectRecord, Registry
from krypton.pki.dev import DevLayout, init_dev_dir
from krypton.stack.dev import EmbeddedStack
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.item import Item
from krypton.vault.sqlite import Vault

T = TypeVar("T")
TIMEOUT = 30.0
# The dev PKI's workload certificate of each dev tenant.
CLIENT_OF_TENANT = {"demo": "client", "other": "other-client"}


class LoopThread:
    """An event loop running in a thread of its own until :meth:`stop`."""

    def __init__(self, name: str = "embedded-stack") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


@dataclass
class Stack:
    """One started Core + gateway (see the module docstring)."""

    embedded: EmbeddedStack
    runner: LoopThread
    layout: DevLayout
    clients: dict[str, KmipClient] = field(default_factory=dict)
    closed: bool = False

    def wait(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the stack's event loop; its result."""
        return self.runner.run(coro)

    @property
    def vault(self) -> Vault:
        assert self.embedded.gateway is not None
        vault = self.embedded.gateway.vault
        assert isinstance(vault, Vault)  # the embedded stack's vault is SQLite
        return vault

    @property
    def registry(self) -> Registry:
        assert self.embedded.core.registry is not None
        return self.embedded.core.registry

    @property
    def core(self) -> CoreServices:
        """The Core's handler services (registry, sealer, Undo journal)."""
        assert self.embedded.core.service is not None
        return self.embedded.core.service.services

    def client(self, tenant: str = "demo") -> KmipClient:
        """This stack's connection as a workload of ``tenant`` (opened once)."""
        client = self.clients.get(tenant)
        if client is None:
            who = CLIENT_OF_TENANT[tenant]
            pki = self.layout.pki
            ctx = tls_context(pki / "ca.pem", pki / f"{who}.pem", pki / f"{who}-key.pem")
            client = KmipClient("127.0.0.1", self.embedded.port, ctx, timeout=TIMEOUT).connect()
            self.clients[tenant] = client
        return client

    def roundtrip(self, data: bytes, tenant: str = "demo") -> bytes:
        """One whole request message in, one response message out (a conformance
        runner transport)."""
        return self.client(tenant).roundtrip(data)

    def send(self, message: Item, tenant: str = "demo") -> cm.Response:
        return cm.parse_response(decode(self.roundtrip(encode(message), tenant)))

    def record(self, uid: str, tenant: str = "demo") -> ObjectRecord:
        """The Core registry's object ``uid`` (it must exist)."""
        rec = self.wait(self.registry.get_object(tenant, uid))
        assert rec is not None, f"the registry has no object {uid!r} of {tenant!r}"
        return rec

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        self.runner.run(self.embedded.close())


class StackFactory:
    """Starts stacks on one loop over one dev PKI; :meth:`stop_all` stops them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = init_dev_dir(root / "dev")
        self.runner = LoopThread()
        self.started: list[Stack] = []

    def __call__(self, *, interop: bool = False) -> Stack:
        """A started stack with its own registry, master key and vault. ``interop``:
        the KMIP Interop operation is served (a test server), off as in production."""
        where = self.root / f"stack-{len(self.started)}"
        where.mkdir()
        core = dataclasses.replace(
            load_core_config(self.layout.core_config, env={}),
            listen_port=0,
            registry=f"sqlite:{where / 'core.db'}",
            master_key_file=where / "master.key",
            admin=AdminConfig(),  # off: tests never bind the default admin ports
        )
        gateway = dataclasses.replace(
            load_gateway_config(self.layout.gateway_config, env={}),
            listen_port=0,
            vault_path=where / "gateway.db",
            interop=interop,
            admin=AdminConfig(),
        )
        embedded = EmbeddedStack(core, gateway)
        self.runner.run(embedded.start())
        stack = Stack(embedded, self.runner, self.layout)
        self.started.append(stack)
        return stack

    def stop_all(self) -> None:
        """Stop every stack still running, then the loop."""
        try:
            for stack in reversed(self.started):
                stack.close()
        finally:
            self.runner.stop()
