"""The fixtures that start servers: the one way each kind is started in the tests.

Registered from ``tests/conftest.py`` (``pytest_plugins``), so every test folder
has them. Each server is stopped when its fixture's scope ends, also when the
test failed.

- ``pg`` (session): one PostgreSQL server for the whole run, started when the
  first test asks for it; ``pg.create_database()`` gives a test an empty
  database of its own.
- ``start_dev`` (per test) and ``start_module_dev`` (per test module): start a
  ``krypton dev`` stack (Core and gateway in one process) on free loopback
  ports, ``start_dev(root=None, *, port=None, env=None, args=())``. A module
  that shares one stack between its tests (for speed) asks for
  ``start_module_dev`` in a module-scoped fixture of its own.
- ``start_embedded`` (per test; its PKI and event loop per module,
  ``embedded_stacks``): a real Core and gateway *in the test's process*
  (``krypton.stack.dev.EmbeddedStack`` on a background loop, the real uplink
  between them), each with its own registry and vault,
  ``start_embedded(*, interop=False)`` -> :class:`tests.helpers.embedded.Stack`.
- ``openbao`` (session) and ``start_openbao`` (per test): a real OpenBao dev
  server (:mod:`tests.helpers.openbao`); a test of the session's server makes
  its own Transit keys and mounts (``openbao.transit_key()``), one that stops
  or restarts a server starts its own with ``start_openbao()``.

- ``hsm`` (per test): a SoftHSM2 token directory of the test's own
  (:mod:`tests.helpers.softhsm`), ``SOFTHSM2_CONF`` set for the test's process;
  ``hsm.init_token(label)`` makes a token, ``hsm.env`` is what a process needs.

- ``start_cluster`` (per test) and ``start_module_cluster`` (per test module):
  a ``krypton core`` process and its ``krypton gateway`` processes
  (:class:`tests.helpers.cluster.Cluster`), the one way a test starts a Core
  process: ``start_cluster(root=None, *, gateways=("gw-dev",), registry=None,
  tenants=None, core_env=None, gateways_running=True, serving=True)``. The
  test may kill and restart the Core through the cluster; every process is
  stopped when the fixture's scope ends, and the logs are printed then (pytest
  shows them when the test failed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from krypton.pki.dev import GATEWAY_NAME
from tests.helpers.cluster import START_TIMEOUT, Cluster, make_cluster
from tests.helpers.embedded import Stack, StackFactory
from tests.helpers.openbao import BaoServer, openbao_server, start_bao
from tests.helpers.pg import PgServer, postgres_server
from tests.helpers.servers import DevServer, start_dev_server
from tests.helpers.softhsm import SoftHsm, softhsm


class DevStacks:
    """Starts ``krypton dev`` stacks under ``root``; :meth:`stop_all` stops them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[DevServer] = []

    def __call__(
        self,
        root: Path | None = None,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        nofile: int | None = None,
    ) -> DevServer:
        """A ready stack; ``root`` (its dev directory, made if missing) defaults to a
        fresh one. Start again on the same ``root`` and ``port`` to restart.
        ``nofile`` limits its descriptors (soft and hard)."""
        where = root if root is not None else self.root / f"dev-{len(self.started)}"
        server = start_dev_server(where, port=port, env=env, args=args, nofile=nofile)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in reversed(self.started):
            server.stop()


class Clusters:
    """Starts Core + gateway processes under ``root``; :meth:`stop_all` stops them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Cluster] = []

    def __call__(
        self,
        root: Path | None = None,
        *,
        gateways: Sequence[str] = (GATEWAY_NAME,),
        registry: str | None = None,
        tenants: Mapping[str, tuple[str, ...]] | None = None,
        core_env: Mapping[str, str] | None = None,
        gateways_running: bool = True,
        serving: bool = True,
    ) -> Cluster:
        """A started Core (``core_env``: settings added to its environment) and, unless
        not ``gateways_running``, its gateways, each ready (and, if ``serving``,
        having made a key). ``registry``: a registry URL (default: SQLite in the
        cluster's folder); ``tenants``: a gateway's tenants where not both dev ones."""
        cluster = self.laid_out(root, gateways=gateways, registry=registry, tenants=tenants)
        cluster.start_core(START_TIMEOUT, env=core_env)
        if gateways_running:
            cluster.start_gateways(serving=serving)
        return cluster

    def laid_out(
        self,
        root: Path | None = None,
        *,
        gateways: Sequence[str] = (GATEWAY_NAME,),
        registry: str | None = None,
        tenants: Mapping[str, tuple[str, ...]] | None = None,
        init: bool = True,
    ) -> Cluster:
        """A cluster laid out but not started, for a test that sets it up first (a
        proxy in front of the Core, settings) and then starts its processes
        (``start_core``, ``start_gateways``); stopped, with its logs printed,
        when the fixture's scope ends."""
        where = root if root is not None else self.root / f"cluster-{len(self.started)}"
        cluster = make_cluster(where, gateways=gateways, registry=registry, tenants=tenants,
                               init=init)
        self.started.append(cluster)
        return cluster

    def stop_all(self) -> None:
        for cluster in reversed(self.started):
            try:
                cluster.stop()
            finally:
                print(cluster.dump_logs())


class _Stoppable(Protocol):
    def stop_all(self) -> None: ...


S = TypeVar("S", bound=_Stoppable)


def _until_scope_ends(starter: S) -> Iterator[S]:
    """Yield ``starter``; stop everything it started when the fixture's scope ends."""
    try:
        yield starter
    finally:
        starter.stop_all()


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """Every test leaves the root logger as it found it: a CLI run in process sets
    up a handler on the test's captured stderr, which is closed once the test
    ends, and a later test's log line (from any thread) would hit it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """The session's PostgreSQL server."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[DevStacks]:
    """Start ``krypton dev`` stacks that are stopped when the test ends."""
    yield from _until_scope_ends(DevStacks(tmp_path))


@pytest.fixture(scope="module")
def start_module_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStacks]:
    """Start ``krypton dev`` stacks that are stopped when the test module ends."""
    yield from _until_scope_ends(DevStacks(tmp_path_factory.mktemp("dev")))


@pytest.fixture(scope="module")
def embedded_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    """The module's dev PKI and event loop for in-process stacks (``start_embedded``)."""
    yield from _until_scope_ends(StackFactory(tmp_path_factory.mktemp("embedded")))


@pytest.fixture
def start_embedded(embedded_stacks: StackFactory) -> Iterator[Callable[..., Stack]]:
    """Start in-process Core + gateway stacks that are stopped when the test ends."""
    mine: list[Stack] = []

    def start(*, interop: bool = False) -> Stack:
        stack = embedded_stacks(interop=interop)
        mine.append(stack)
        return stack

    try:
        yield start
    finally:
        for stack in reversed(mine):
            stack.close()


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Clusters]:
    """Start Core + gateway processes that are stopped when the test ends."""
    yield from _until_scope_ends(Clusters(tmp_path))


@pytest.fixture(scope="module")
def start_module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusters]:
    """Start Core + gateway processes that are stopped when the test module ends."""
    yield from _until_scope_ends(Clusters(tmp_path_factory.mktemp("cluster")))


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    """The session's OpenBao dev server (tests make their own keys and mounts on it)."""
    with openbao_server(tmp_path_factory.mktemp("openbao")) as server:
        yield server


class BaoServers:
    """Starts OpenBao dev servers under ``root``; :meth:`stop_all` stops them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[BaoServer] = []

    def __call__(self, *, port: int | None = None, root_token: str | None = None) -> BaoServer:
        server = start_bao(self.root, port=port, root_token=root_token)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in reversed(self.started):
            server.stop()


@pytest.fixture
def start_openbao(tmp_path: Path) -> Iterator[BaoServers]:
    """Start OpenBao dev servers that are stopped when the test ends."""
    yield from _until_scope_ends(BaoServers(tmp_path / "openbao"))


@pytest.fixture
def hsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SoftHsm:
    """A SoftHSM2 token directory of the test's own, seen by this process (its
    ``SOFTHSM2_CONF`` and PIN variable set for the test); no token yet."""
    tokens = softhsm(tmp_path / "softhsm")
    for name, value in tokens.env.items():
        monkeypatch.setenv(name, value)
    return tokens
