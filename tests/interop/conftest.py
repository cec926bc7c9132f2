"""Shared fixtures of the interop tests: one real `krypton dev` process per module.

Each test module gets its own server (module scope), so a module's tests share
one process start-up; ``pykmip`` opens PyKMIP clients against it and closes
them when the test ends. PyKMIP is told to read no configuration file, so
nothing on the machine (``~/.pykmip/pykmip.conf``, ``/etc/pykmip``) changes
what it does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from kmip.pie.client import ProxyKmipClient
from tests.helpers.fixtures import DevStacks
from tests.helpers.servers import DevServer

OpenClient = Callable[..., Any]


@pytest.fixture(scope="module")
def srv(start_module_dev: DevStacks) -> DevServer:
    return start_module_dev()


def pykmip_client(srv: DevServer, version: Any, who: str = "client") -> Any:
    return ProxyKmipClient(
        hostname=srv.host,
        port=srv.port,
        cert=str(srv.pki / f"{who}.pem"),
        key=str(srv.pki / f"{who}-key.pem"),
        ca=str(srv.pki / "ca.pem"),
        config_file="/dev/null",
        kmip_version=version,
    )


@pytest.fixture
def pykmip(srv: DevServer) -> Iterator[OpenClient]:
    """``pykmip(version, who="client")``: an open ProxyKmipClient, closed after the test."""
    with ExitStack() as stack:

        def open_client(version: Any, who: str = "client") -> Any:
            return stack.enter_context(pykmip_client(srv, version, who))

        yield open_client
