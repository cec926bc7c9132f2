"""TLS material from the SPIFFE Workload API (krypton.tls.workload), against the
stand-in Workload API server of tests/helpers/workload_api.py (real gRPC on a Unix
socket, py-spiffe's real X509Source):

* the first SVID and its bundle become checked material; a rotated SVID changes
  the stamp and loads;
* a call without the ``workload.spiffe.io`` header is refused by the stand-in
  (so the client really sends it);
* an X509Source that py-spiffe closed (a status it does not retry) is made
  again by the watch task, after a backoff, and the next SVID loads.

Threads are real here (py-spiffe's and gRPC's), so the waits poll with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from spiffe._proto import workload_pb2 as pb
from spiffe._proto import workload_pb2_grpc as pb_grpc
from tests.helpers.workload_api import WorkloadAPI

from krypton.errors import ConfigError
from krypton.pki import issue_ca
from krypton.tls.workload import WorkloadSource, socket_address

GATEWAY = "spiffe://krypton.dev/gateway/gw-dev"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[WorkloadAPI]:
    with WorkloadAPI(tmp_path / "agent.sock", issue_ca("SPIFFE test CA"), GATEWAY) as server:
        yield server


def eventually(probe: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.02)


def test_svids_load_and_rotate(api: WorkloadAPI) -> None:
    async def main() -> None:
        source = WorkloadSource(api.address, timeout=10)
        await source.start()
        try:
            first = source.load()
            assert first.serial == api.serial
            stamp = source.stamp()
            new = api.rotate()
            eventually(lambda: source.stamp() != stamp)
            assert source.load().serial == new
            assert "SPIFFE" in source.load().origin
        finally:
            source.close()

    asyncio.run(main())


def test_the_stand_in_refuses_a_call_without_the_security_header(api: WorkloadAPI) -> None:
    with grpc.insecure_channel(f"unix:{api.socket}") as channel:
        stub = pb_grpc.SpiffeWorkloadAPIStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as err:
            next(iter(stub.FetchX509SVID(pb.X509SVIDRequest(), timeout=5)))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_closed_source_is_made_again(api: WorkloadAPI) -> None:
    async def main() -> None:
        source = WorkloadSource(api.address, timeout=10, backoff=(0.05, 0.2))
        await source.start()
        watch = asyncio.create_task(source.run(interval=0.05))
        try:
            api.fail_streams()
            await asyncio.to_thread(eventually, lambda: source.rebuilds == 0 and _closed(source))
            with pytest.raises(ConfigError, match="closed"):
                source.load()
            api.heal()
            new = api.rotate()
            await asyncio.to_thread(eventually, lambda: source.rebuilds >= 1)
            await asyncio.to_thread(eventually, lambda: source.load().serial == new)
        finally:
            watch.cancel()
            source.close()

    asyncio.run(main())


def _closed(source: WorkloadSource) -> bool:
    try:
        source.load()
    except ConfigError:
        return True
    return False


def test_the_socket_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert socket_address("/run/agent.sock") == "unix:///run/agent.sock"
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", "unix:///x.sock")
    assert socket_address("") == "unix:///x.sock"
    monkeypatch.delenv("SPIFFE_ENDPOINT_SOCKET")
    with pytest.raises(ConfigError, match=r"^gateway\.tls\.spiffe_socket"):
        socket_address("")
