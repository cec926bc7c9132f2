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

A Core as a process of its own (with its gateways as further processes) is
not a fixture: ``tests.helpers.cluster.running_cluster`` starts one in a
``with`` block, because those tests kill and restart the Core mid-test and
read its audit trail after it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.embedded import Stack, StackFactory
from tests.helpers.pg import PgServer, postgres_server
from tests.helpers.servers import DevServer, start_dev_server


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
    ) -> DevServer:
        """A ready stack; ``root`` (its dev directory, made if missing) defaults to a
        fresh one. Start again on the same ``root`` and ``port`` to restart."""
        where = root if root is not None else self.root / f"dev-{len(self.started)}"
        server = start_dev_server(where, port=port, env=env, args=args)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in reversed(self.started):
            server.stop()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """The session's PostgreSQL server."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[DevStacks]:
    """Start ``krypton dev`` stacks that are stopped when the test ends."""
    stacks = DevStacks(tmp_path)
    try:
        yield stacks
    finally:
        stacks.stop_all()


@pytest.fixture(scope="module")
def start_module_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStacks]:
    """Start ``krypton dev`` stacks that are stopped when the test module ends."""
    stacks = DevStacks(tmp_path_factory.mktemp("dev"))
    try:
        yield stacks
    finally:
        stacks.stop_all()


@pytest.fixture(scope="module")
def embedded_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    """The module's dev PKI and event loop for in-process stacks (``start_embedded``)."""
    factory = StackFactory(tmp_path_factory.mktemp("embedded"))
    try:
        yield factory
    finally:
        factory.close()


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
