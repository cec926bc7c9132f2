"""Uplink liveness over real gRPC and mutual TLS on loopback: a black-holed link
(packets held, no FIN/RST) is noticed by keepalive and calls then fail at
once; with several Core addresses the client fails over to the next Core.
"""

from __future__ import annotations

import time

import pytest
from tests.helpers.proxy import BlackHoleProxy
from tests.unit.test_uplink import DictCore, elapsed, eventually, gateway_tls, run, server

from krypton.errors import UpstreamUnavailable
from krypton.pki import DevLayout, init_dev_dir
from krypton.pki.dev import core_spiffe_id
from krypton.uplink.client import UplinkClient
from krypton.uplink.types import ConnectionState, ExecuteRequest, Liveness

FAST = Liveness(keepalive=0.5, keepalive_timeout=0.5, connect_timeout=0.5)
REQUEST = ExecuteRequest(b"ab", "i", "demo", (2, 1))


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevLayout:
    return init_dev_dir(tmp_path_factory.mktemp("dev"))


def uplink(dev: DevLayout, address: str, timeout: float = 2.0) -> UplinkClient:
    return UplinkClient(address, gateway_tls(dev), "gw-test", ("demo",), timeout,
                        backoff=(0.05, 0.2), core_id=core_spiffe_id(), liveness=FAST)


def test_a_black_hole_is_noticed_by_keepalive_and_calls_then_fail_at_once(
    dev: DevLayout,
) -> None:
    async def main() -> None:
        srv = server(dev, DictCore())
        port = await srv.start()
        hole = BlackHoleProxy(port).start()
        try:
            async with uplink(dev, hole.address) as up:
                assert await up.wait_ready(5), up.last_error
                assert (await up.execute(REQUEST)).batch_item == b"ba"
                connections = hole.accepted
                hole.partition()
                start = time.monotonic()
                await eventually(lambda: up.state is not ConnectionState.READY, 3.0)
                noticed = time.monotonic() - start
                assert noticed < FAST.keepalive + FAST.keepalive_timeout + 0.5, noticed
                assert "ping timeout" in up.last_error or "UNAVAILABLE" in up.last_error
                for _ in range(5):  # known down: no call waits for its timeout
                    error, took = await elapsed(up.execute(REQUEST))
                    assert isinstance(error, UpstreamUnavailable), error
                    assert error.message.startswith("the Krypton Core is unreachable: ")
                    assert took < 0.1, took
                await eventually(lambda: hole.accepted > connections, 3.0)  # a new one
                hole.heal()
                assert await up.wait_ready(5), up.last_error
                assert (await up.execute(REQUEST)).batch_item == b"ba"
        finally:
            hole.close()
            await srv.stop(0)

    run(main)


def test_a_refusal_is_not_a_dead_link(dev: DevLayout) -> None:
    """A Core that refuses the stream still answers calls with its own reason."""

    async def main() -> None:
        srv = server(dev, DictCore(), tenants=frozenset({"other"}))
        port = await srv.start()
        try:
            async with uplink(dev, f"127.0.0.1:{port}") as up:
                await eventually(lambda: "PERMISSION_DENIED" in up.last_error, 3.0)
                error, _ = await elapsed(up.execute(REQUEST))
                assert error is not None and not isinstance(error, UpstreamUnavailable)
        finally:
            await srv.stop(0)

    run(main)


# ``core_address`` entries may be names, resolved by the system's resolver on each
# connection (every record it gives is tried, the one that last worked first).
# This machine has no name with several records without editing /etc/hosts, so
# the name is ``localhost`` (one record, 127.0.0.1) on two entries, one per Core.
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_fails_over_to_the_next_core_within_3_s(dev: DevLayout, host: str) -> None:
    async def main() -> None:
        core_a, core_b = DictCore(), DictCore()
        srv_a, srv_b = server(dev, core_a), server(dev, core_b)
        port_a, port_b = await srv_a.start(), await srv_b.start()
        try:
            async with uplink(dev, f"{host}:{port_a}, {host}:{port_b}") as up:
                assert await up.wait_ready(5), up.last_error
                assert core_a.calls and not core_b.calls  # the first address first
                await srv_a.stop(0)
                start = time.monotonic()
                await eventually(lambda: up.state is not ConnectionState.READY, 3.0)
                assert await up.wait_ready(3.0), up.last_error
                assert (await up.execute(REQUEST)).batch_item == b"ba"
                assert time.monotonic() - start < 3.0
                assert ("subscribe", core_a.calls[0][1]) in core_b.calls
        finally:
            await srv_a.stop(0)
            await srv_b.stop(0)

    run(main)


def test_a_dead_first_address_is_skipped(dev: DevLayout) -> None:
    async def main() -> None:
        core = DictCore()
        srv = server(dev, core)
        port = await srv.start()
        dead = BlackHoleProxy(port).start()  # accepts, then never forwards: a hung Core
        dead.partition()
        try:
            async with uplink(dev, f"{dead.address}, 127.0.0.1:{port}") as up:
                assert await up.wait_ready(5), up.last_error
                assert (await up.execute(REQUEST)).batch_item == b"ba"
        finally:
            dead.close()
            await srv.stop(0)

    run(main)

