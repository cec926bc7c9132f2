"""The uplink over real gRPC and real mutual TLS on loopback, with the dev PKI and
a small in-test Core (a dict, not a mock).

``python -m tests.unit.test_uplink`` measures Execute round trips instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import grpc
import pytest

from krypton.config import TLSConfig
from krypton.crypto.keyring import KeyRing, L3Grant, L3State
from krypton.crypto.secret import SecretBytes
from krypton.errors import (
    CryptographicFailure,
    GeneralFailure,
    ItemNotFound,
    PermissionDenied,
    UpstreamUnavailable,
)
from krypton.gateway.upstream import Upstream
from krypton.kmip import client_messages as cm
from krypton.kmip.messages import ResponseItem, response_item
from krypton.kmip.versions import ProtocolVersion
from krypton.model.context import RequestContext
from krypton.model.record import KeyRecord, authenticated_bytes
from krypton.model.registry import AuditRecord
from krypton.pki import DevLayout, init_dev_dir
from krypton.pki.dev import core_spiffe_id, gateway_spiffe_id
from krypton.tls.identity import PeerRules
from krypton.ttlv.codec import Limits, encode
from krypton.ttlv.enums import Operation, ResultReason, ResultStatus
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag
from krypton.uplink import convert
from krypton.uplink.client import UplinkClient, UplinkL3Source, backoff_delay
from krypton.uplink.service import UplinkServer
from krypton.uplink.types import (
    ConnectionState,
    CoreEvent,
    ExecuteRequest,
    ExecuteResult,
    Heartbeat,
    L3Versions,
    StateChange,
)
from krypton.uplink.v1 import uplink_pb2 as pb
from krypton.uplink.v1 import uplink_pb2_grpc as pb_grpc
from krypton.vault.sqlite import Vault

GATEWAY = gateway_spiffe_id()
CORE = core_spiffe_id()
KEY_DEMO_1 = bytes(range(32))
KEY_DEMO_2 = bytes(range(32, 64))
KEY_OTHER_1 = bytes(range(64, 96))
ALL_BYTES = bytes(range(256)) * 3


class DictCore:
    """A Core handler over dicts; records which gateway called what."""

    def __init__(self) -> None:
        self.l3: dict[tuple[str, int], tuple[bytes, L3State]] = {
            ("demo", 1): (KEY_DEMO_1, L3State.ACTIVE),
            ("other", 1): (KEY_OTHER_1, L3State.ACTIVE),
        }
        self.keys: dict[str, KeyRecord] = {}
        self.calls: list[tuple[str, str]] = []
        self.subscribed: list[frozenset[str]] = []
        self.executed: list[ExecuteRequest] = []
        self.cancelled = 0
        self.delay = 0.0
        self.streams: list[tuple[frozenset[str], asyncio.Queue[CoreEvent]]] = []
        self.after_seqs: list[int | None] = []

    def grant(self, tenant: str, version: int) -> L3Grant:
        material, state = self.l3[tenant, version]
        return L3Grant(tenant, version, SecretBytes(material), state, 60.0)

    def set_l3(self, tenant: str, version: int, material: bytes, state: L3State) -> None:
        self.l3[tenant, version] = (material, state)
        for tenants, queue in self.streams:
            if tenant in tenants:
                queue.put_nowait(self.grant(tenant, version))

    def change(self, change: StateChange) -> None:
        for tenants, queue in self.streams:
            if change.tenant in tenants:
                queue.put_nowait(change)

    async def subscribe(
        self, gateway: str, tenants: frozenset[str], after_seq: int | None = None
    ) -> AsyncIterator[CoreEvent]:
        self.calls.append(("subscribe", gateway))
        self.after_seqs.append(after_seq)
        self.subscribed.append(tenants)
        entry: tuple[frozenset[str], asyncio.Queue[CoreEvent]] = (tenants, asyncio.Queue())
        self.streams.append(entry)
        try:
            for tenant, version in sorted(self.l3):
                if tenant in tenants:
                    yield self.grant(tenant, version)
            yield Heartbeat.now()
            while True:
                yield await entry[1].get()
        finally:
            self.streams.remove(entry)

    async def sync_keys(self, gateway: str, keys: Any) -> list[str]:
        self.calls.append(("sync_keys", gateway))
        for key in keys:
            self.keys[key.uid] = key
        return [k.uid for k in keys]

    async def execute(self, gateway: str, request: ExecuteRequest) -> ExecuteResult:
        self.calls.append(("execute", gateway))
        self.executed.append(request)
        if request.batch_item == b"raise not found":
            raise ItemNotFound("no object k-404 here")
        if request.batch_item == b"raise bug":
            raise ZeroDivisionError("secret detail that must not leave the Core")
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        new = None if request.placeholder is None else request.placeholder + "-next"
        return ExecuteResult(
            batch_item=request.batch_item[::-1],
            changes=(StateChange(request.tenant, "uid-1", 2, 7),),
            placeholder=new,
        )

    async def fetch_key(self, gateway: str, tenant: str, uid: str) -> KeyRecord | None:
        self.calls.append(("fetch_key", gateway))
        key = self.keys.get(uid)
        return key if key is not None and key.tenant == tenant else None

    async def key_states(self, gateway: str, tenant: str, uids: Sequence[str]
                         ) -> list[StateChange]:
        self.calls.append(("key_states", gateway))
        return [StateChange(tenant, u, k.state, 1) for u in uids
                if (k := self.keys.get(u)) is not None and k.tenant == tenant]


# -- harness ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevLayout:
    return init_dev_dir(tmp_path_factory.mktemp("dev"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> DevLayout:
    """Another development PKI: its gateway certificate is signed by another CA."""
    return init_dev_dir(tmp_path_factory.mktemp("stranger"))


def core_tls(dev: DevLayout) -> TLSConfig:
    return TLSConfig(cert=dev.core, key=dev.core_key, ca=dev.ca)


def gateway_tls(dev: DevLayout) -> TLSConfig:
    return TLSConfig(cert=dev.gateway, key=dev.gateway_key, ca=dev.ca)


def server(dev: DevLayout, core: DictCore, port: int = 0, heartbeat: float = 5.0,
           tenants: frozenset[str] = frozenset({"demo", "other"})) -> UplinkServer:
    return UplinkServer(core, core_tls(dev), {GATEWAY: tenants}, "127.0.0.1", port,
                        heartbeat=heartbeat)


def client(tls: TLSConfig, port: int, tenants: tuple[str, ...] = ("demo",),
           timeout: float = 1.0, **kw: Any) -> UplinkClient:
    kw.setdefault("core_id", CORE)
    return UplinkClient(f"127.0.0.1:{port}", tls, "gw-test", tenants, timeout, **kw)


def run(main: Callable[[], Coroutine[Any, Any, None]], limit: float = 20.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), limit)

    asyncio.run(bounded())


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def elapsed(work: Awaitable[object]) -> tuple[BaseException | None, float]:
    start = time.monotonic()
    try:
        await work
    except Exception as e:
        return e, time.monotonic() - start
    return None, time.monotonic() - start


def record(uid: str, tenant: str = "demo") -> KeyRecord:
    return KeyRecord(uid=uid, tenant=tenant, object_type=2, algorithm=3, length=256, state=1,
                     l3_version=1, wrapped=b"\x01blob" + uid.encode(), attributes=b"\x42\x00",
                     created=1_700_000_000)


# -- the four calls ---------------------------------------------------------------
def test_subscribe_receives_l3_keys_and_state_changes(dev: DevLayout) -> None:
    async def main() -> None:
        core = DictCore()
        srv = server(dev, core)
        port = await srv.start()
        grants: list[tuple[str, int, bytes, L3State, float]] = []
        changes: list[StateChange] = []
        states: list[ConnectionState] = []
        up = client(gateway_tls(dev), port)
        up.add_listener(
            on_l3=lambda g: grants.append(
                (g.tenant, g.version, g.material.reveal(), g.state, g.lease_seconds)),
            on_state=changes.append,
            on_connection=states.append,
        )
        await up.start()
        try:
            assert await up.wait_ready(5)
            assert up.state is ConnectionState.READY
            assert grants == [("demo", 1, KEY_DEMO_1, L3State.ACTIVE, 60.0)]  # not "other"
            assert states == [ConnectionState.CONNECTING, ConnectionState.READY]
            core.set_l3("demo", 2, KEY_DEMO_2, L3State.ACTIVE)
            core.set_l3("other", 2, KEY_OTHER_1, L3State.ACTIVE)
            core.change(StateChange("demo", "k-1", 5, 9))
            core.change(StateChange("other", "k-2", 5, 10))
            await eventually(lambda: len(changes) == 1 and len(grants) == 2)
            await asyncio.sleep(0.1)
            assert grants[1] == ("demo", 2, KEY_DEMO_2, L3State.ACTIVE, 60.0)
            assert changes == [StateChange("demo", "k-1", 5, 9)]
            assert len(grants) == 2
            assert core.calls == [("subscribe", GATEWAY)]
        finally:
            await up.close()
            await srv.stop(0)

    run(main)


def test_heartbeats_keep_a_quiet_stream_alive(dev: DevLayout) -> None:
    async def main() -> None:
        core = DictCore()
        srv = server(dev, core, heartbeat=0.1)
        port = await srv.start()
        states: list[ConnectionState] = []
        up = client(gateway_tls(dev), port, stale_after=0.5)
        up.add_listener(on_connection=states.append)
        await up.start()
        try:
            assert await up.wait_ready(5)
            await asyncio.sleep(1.5)  # three times stale_after without a real event
            assert up.state is ConnectionState.READY
            assert states == [ConnectionState.CONNECTING, ConnectionState.READY]
            assert core.calls == [("subscribe", GATEWAY)]
        finally:
            await up.close()
            await srv.stop(0)

    run(main)


def test_a_silent_core_is_noticed_and_the_stream_redone(dev: DevLayout) -> None:
    async def main() -> None:
        core = DictCore()
        srv = server(dev, core, heartbeat=30.0)
        port = await srv.start()
        states: list[ConnectionState] = []
        up = client(gateway_tls(dev), port, stale_after=0.3, backoff=(0.05, 0.1))
        up.add_listener(on_connection=states.append)
        await up.start()
        try:
            await eventually(lambda: states.count(ConnectionState.READY) >= 2)
            assert ConnectionState.DOWN in states
            assert "nothing heard" in up.last_error
        finally:
            await up.close()
            await srv.stop(0)

    run(main)


def test_sync_keys_and_fetch_key(dev: DevLayout) -> None:
    async def main() -> None:
        core = DictCore()
        srv = server(dev, core)
        port = await srv.start()
        async with client(gateway_tls(dev), port) as up:
            try:
                records = [record("k-1"), record("k-2"), record("k-3", "other")]
                assert await up.sync_keys(records) == ["k-1", "k-2", "k-3"]
                assert await up.sync_keys([]) == []
                assert core.keys["k-2"] == KeyRecord(**{**_fields(records[1]), "synced": True})
                fetched = await up.fetch_key("demo", "k-2")
                assert fetched is not None
                assert fetched.wrapped == records[1].wrapped
                assert fetched.attributes == records[1].attributes
                assert fetched.created == records[1].created
                assert fetched.synced
                assert fetched == KeyRecord(**{**_fields(records[1]), "synced": True})
                assert await up.fetch_key("demo", "nope") is None
                assert await up.fetch_key("demo", "k-3") is None  # another tenant's key
            finally:
                await srv.stop(0)

    run(main)


def _fields(r: KeyRecord) -> dict[str, Any]:
    return {name: getattr(r, name) for name in KeyRecord.__slots__}


def test_execute_round_trip_keeps_raw_bytes(dev: DevLayout) -> None:
    async def main() -> None:
        core = DictCore()
        srv = server(dev, core)
        port = await srv.start()
        async with client(gateway_tls(dev), port) as up:
            try:
                req = ExecuteRequest(ALL_BYTES, "spiffe://krypton.dev/tenant/demo/workload/x",
                                     "demo", (2, 1), "corr-1", placeholder="ph")
                result = await up.execute(req)
                assert result.batch_item == ALL_BYTES[::-1]
                assert result.changes == (StateChange("demo", "uid-1", 2, 7),)
                assert result.placeholder == "ph-next"
                assert core.executed == [req]
                plain = await up.execute(ExecuteRequest(b"", "id", "demo", (1, 4)))
                assert plain.placeholder is None and plain.batch_item == b""
                seen = core.executed[1]
                assert seen.placeholder is None and seen.protocol == (1, 4)
                assert len(seen.correlation_id) == 16  # filled in by the client
                empty = await up.execute(ExecuteRequest(b"x", "id", "demo", (1, 4),
                                                        placeholder=""))
                assert empty.placeholder == "-next"
            finally:
                await srv.stop(0)

    run(main)


def test_handler_errors_are_translated_both_ways(dev: DevLayout) -> None:
    async def main() -> None:
        srv = server(dev, DictCore())
        port = await srv.start()
        async with client(gateway_tls(dev), port) as up:
            try:
                with pytest.raises(ItemNotFound) as missing:
                    await up.execute(ExecuteRequest(b"raise not found", "i", "demo", (2, 1)))
                assert "no object k-404 here" in missing.value.message
                with pytest.raises(GeneralFailure) as bug:
                    await up.execute(ExecuteRequest(b"raise bug", "i", "demo", (2, 1)))
                assert type(bug.value) is GeneralFailure
                assert bug.value.message == (
                    "the Krypton Core failed: INTERNAL: Execute failed at the Core")
            finally:
                await srv.stop(0)

    run(main)


# -- authorisation ----------------------------------------------------------------
def test_other_identity_is_refused_and_never_reaches_the_handler(dev: DevLayout) -> None:
    async def main() -> None:
        core = DictCore()
        srv = server(dev, core)
        port = await srv.start()
        workload = TLSConfig(cert=dev.client, key=dev.client_key, ca=dev.ca)
        states: list[ConnectionState] = []
        async with client(workload, port, backoff=(0.05, 0.1)) as up:
            up.add_listener(on_connection=states.append)
            try:
                with pytest.raises(PermissionDenied, match="refused this gateway"):
                    await up.execute(ExecuteRequest(b"x", "id", "demo", (2, 1)))
                with pytest.raises(PermissionDenied):
                    await up.sync_keys([record("k-1")])
                with pytest.raises(PermissionDenied):
                    await up.fetch_key("demo", "k-1")
                assert not await up.wait_ready(0.5)
                assert "PERMISSION_DENIED" in up.last_error
                assert "workload/client is not authorised" in up.last_error
                assert ConnectionState.READY not in states
                assert core.calls == []
            finally:
                await srv.stop(0)

    run(main)


def test_tenant_not_served_is_refused(dev: DevLayout) -> None:
    async def main() -> None:
        core = DictCore()
        srv = server(dev, core, tenants=frozenset({"demo"}))
        port = await srv.start()
        async with client(gateway_tls(dev), port, tenants=("demo", "other"),
                          backoff=(0.05, 0.1)) as up:
            try:
                # Issue 12 finding 8: the Subscribe goes ahead for demo alone.
                assert await up.wait_ready(5.0), up.last_error
                assert core.subscribed == [frozenset({"demo"})]
                with pytest.raises(PermissionDenied, match="does not serve tenant"):
                    await up.execute(ExecuteRequest(b"x", "id", "other", (2, 1)))
                with pytest.raises(PermissionDenied):
                    await up.sync_keys([record("k-1"), record("k-2", "other")])
                with pytest.raises(PermissionDenied):
                    await up.fetch_key("other", "k-1")
                assert core.calls == [("subscribe", GATEWAY)]
                assert core.keys == {}
                result = await up.execute(ExecuteRequest(b"x", "id", "demo", (2, 1)))
                assert result.batch_item == b"x"
                assert core.calls == [("subscribe", GATEWAY), ("execute", GATEWAY)]
            finally:
                await srv.stop(0)

    run(main)


def test_a_fake_core_with_a_gateway_certificate_is_refused(dev: DevLayout) -> None:
    """Issue 11 finding 3: a server holding a gateway's certificate from the same CA."""
    async def main() -> None:
        core = DictCore()
        fake = UplinkServer(core, gateway_tls(dev), {GATEWAY: frozenset({"demo"})},
                            "127.0.0.1", 0)
        port = await fake.start()
        grants: list[L3Grant] = []
        try:
            async with client(gateway_tls(dev), port, backoff=(0.05, 0.1)) as up:
                up.add_listener(on_l3=grants.append)
                assert not await up.wait_ready(0.5)
                assert "is not the Core" in up.last_error
                with pytest.raises(UpstreamUnavailable):
                    await up.execute(ExecuteRequest(b"x", "id", "demo", (2, 1)))
                with pytest.raises(UpstreamUnavailable):
                    await up.sync_keys([record("k-1")])
            assert core.calls == [] and grants == []
        finally:
            await fake.stop(0)

    run(main)


class LyingCore(pb_grpc.UplinkServicer):
    """A server with the Core's own certificate that answers other things than asked."""

    async def Subscribe(self, request: pb.SubscribeRequest, context: Any
                        ) -> AsyncIterator[pb.CoreEvent]:
        for event in (DictCore().grant("other", 1), Heartbeat.now(),
                      StateChange("other", "k-9", 5, 1)):
            yield convert.event_to_pb(event)
        await asyncio.Event().wait()

    async def SyncKeys(self, request: pb.SyncKeysRequest, context: Any) -> pb.SyncKeysResponse:
        return pb.SyncKeysResponse()

    async def Execute(self, request: pb.ExecuteRequest, context: Any) -> pb.ExecuteResponse:
        return pb.ExecuteResponse()

    async def FetchKey(self, request: pb.FetchKeyRequest, context: Any) -> pb.FetchKeyResponse:
        other = record("k-other", "other")
        return pb.FetchKeyResponse(found=True, key=convert.key_to_pb(other))

    async def KeyStates(self, request: pb.KeyStatesRequest, context: Any
                        ) -> pb.KeyStatesResponse:
        return pb.KeyStatesResponse(states=[
            convert.change_to_pb(StateChange("other", u, 5, 1)) for u in request.uids
        ])


def test_answers_are_checked_against_the_question(dev: DevLayout) -> None:
    """Issue 11 finding 3: a FetchKey answer for another uid or tenant, and pushed events
    of a tenant not subscribed, are refused by the gateway."""
    async def main() -> None:
        srv = grpc.aio.server()
        pb_grpc.add_UplinkServicer_to_server(LyingCore(), srv)
        port = srv.add_secure_port("127.0.0.1:0", convert.server_credentials(core_tls(dev)))
        await srv.start()
        grants: list[L3Grant] = []
        changes: list[StateChange] = []
        try:
            async with client(gateway_tls(dev), port) as up:
                up.add_listener(on_l3=grants.append, on_state=changes.append)
                assert await up.wait_ready(3.0), up.last_error
                with pytest.raises(PermissionDenied, match="another key"):
                    await up.fetch_key("demo", "k-1")
            assert grants == [] and changes == []
        finally:
            await srv.stop(0)

    run(main)


class ForgingCore(LyingCore):
    """A server with the Core's certificate that answers FetchKey with the key asked
    for, its MAC made under a key that is not the tenant's L3 (or no MAC at all)."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    async def Subscribe(self, request: pb.SubscribeRequest, context: Any
                        ) -> AsyncIterator[pb.CoreEvent]:
        yield convert.event_to_pb(Heartbeat.now())
        await asyncio.Event().wait()

    async def FetchKey(self, request: pb.FetchKeyRequest, context: Any) -> pb.FetchKeyResponse:
        rec = record(request.uid, request.tenant)
        if request.uid == "k-good":
            rec = dataclasses.replace(rec, mac=self.ring.record_mac(
                rec.tenant, rec.l3_version, authenticated_bytes(rec)))
        elif request.uid == "k-forged":
            rec = dataclasses.replace(rec, mac=bytes(32))
        return pb.FetchKeyResponse(found=True, key=convert.key_to_pb(rec))


def test_the_gateway_checks_the_mac_of_every_fetched_record(
    dev: DevLayout, tmp_path: Path
) -> None:
    """Issue 11: a FetchKey answer whose record MAC is wrong or missing is refused with
    Cryptographic Failure before the gateway stores or serves it."""
    async def main() -> None:
        ring = KeyRing()
        ring.install("demo", 1, SecretBytes(bytes(range(32))), L3State.ACTIVE,
                     ring.lease_deadline(3600))
        srv = grpc.aio.server()
        pb_grpc.add_UplinkServicer_to_server(ForgingCore(ring), srv)
        port = srv.add_secure_port("127.0.0.1:0", convert.server_credentials(core_tls(dev)))
        await srv.start()
        vault = Vault.open(tmp_path / "gateway.db", sealer=ring.record_mac)
        try:
            async with client(gateway_tls(dev), port) as up:
                upstream = Upstream(up, vault, Limits())
                got = await upstream.fetch("demo", "k-good")
                assert got is not None and vault.get("k-good") is not None
                for uid in ("k-forged", "k-bare"):
                    with pytest.raises(CryptographicFailure):
                        await upstream.fetch("demo", uid)
                    assert vault.get(uid) is None
        finally:
            vault.close()
            await srv.stop(0)

    run(main)


def test_refusals_and_forged_claims_are_audited(dev: DevLayout) -> None:
    """Issue 11 findings 1 and 2 at the uplink server: every refused call leaves an audit
    record naming the gateway (and the client it claimed); malformed claims are refused."""
    async def main() -> None:
        core = DictCore()
        audited: list[AuditRecord] = []

        async def audit(rec: AuditRecord) -> None:
            audited.append(rec)

        srv = UplinkServer(core, core_tls(dev), {GATEWAY: frozenset({"demo"})}, "127.0.0.1", 0,
                           rules=PeerRules(trust_domain="krypton.dev"), audit=audit)
        port = await srv.start()
        try:
            async with client(gateway_tls(dev), port, tenants=("demo",)) as up:
                with pytest.raises(PermissionDenied):
                    await up.execute(ExecuteRequest(b"x", "spiffe://krypton.dev/w", "other",
                                                    (2, 1)))
                with pytest.raises(PermissionDenied):
                    await up.fetch_key("other", "k-1")
                with pytest.raises(PermissionDenied):
                    await up.sync_keys([record("k-2", "other")])
                for forged in ("spiffe://forged/identity", "spiffe://krypton.dev/a/../b", " "):
                    with pytest.raises(PermissionDenied):
                        await up.execute(ExecuteRequest(b"x", forged, "demo", (2, 1)))
                await up.execute(ExecuteRequest(b"x", "spiffe://krypton.dev/tenant/demo/w/c",
                                                "demo", (2, 1)))
        finally:
            await srv.stop(0)
        assert [(r.operation, r.tenant, r.identity, r.result) for r in audited] == [
            ("Execute", "other", "spiffe://krypton.dev/w", "PermissionDenied"),
            ("FetchKey", "other", GATEWAY, "PermissionDenied"),
            ("SyncKeys", "other", GATEWAY, "PermissionDenied"),
            ("Execute", "demo", "spiffe://forged/identity", "PermissionDenied"),
            ("Execute", "demo", "spiffe://krypton.dev/a/../b", "PermissionDenied"),
            ("Execute", "demo", " ", "PermissionDenied"),
        ]
        assert all(r.gateway == GATEWAY for r in audited)
        assert [c for c in core.calls if c[0] != "subscribe"] == [("execute", GATEWAY)]

    run(main)


def test_no_certificate_or_foreign_ca_cannot_connect(dev: DevLayout,
                                                     stranger: DevLayout) -> None:
    async def main() -> None:
        core = DictCore()
        srv = server(dev, core)
        port = await srv.start()
        try:
            creds = grpc.ssl_channel_credentials(root_certificates=dev.ca.read_bytes())
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
                stub: pb_grpc.UplinkAsyncStub = pb_grpc.UplinkStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Execute(pb.ExecuteRequest(tenant="demo"), timeout=2)
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            foreign = TLSConfig(cert=stranger.gateway, key=stranger.gateway_key, ca=dev.ca)
            async with client(foreign, port) as up:
                error, took = await elapsed(up.execute(ExecuteRequest(b"x", "i", "demo",
                                                                      (2, 1))))
                assert isinstance(error, UpstreamUnavailable)
                assert took < 1.5
            assert core.calls == []
        finally:
            await srv.stop(0)

    run(main)


# -- partition and recovery --------------------------------------------------------
def test_slow_core_fails_within_the_bound_and_the_call_is_cancelled(dev: DevLayout) -> None:
    async def main() -> None:
        core = DictCore()
        core.delay = 5.0
        srv = server(dev, core)
        port = await srv.start()
        async with client(gateway_tls(dev), port, timeout=0.5) as up:
            try:
                error, took = await elapsed(up.execute(ExecuteRequest(b"x", "i", "demo",
                                                                      (2, 1))))
                assert isinstance(error, UpstreamUnavailable)
                assert error.message == "the Krypton Core is unreachable: no answer within 0.5 s"
                assert took < 1.0
                await eventually(lambda: core.cancelled == 1)
            finally:
                await srv.stop(0)

    run(main)


def test_core_stopped_then_restarted_on_the_same_port(dev: DevLayout) -> None:
    async def main() -> None:
        core = DictCore()
        srv = server(dev, core)
        port = await srv.start()
        states: list[ConnectionState] = []
        changes: list[StateChange] = []
        up = client(gateway_tls(dev), port, timeout=1.0)
        up.add_listener(on_connection=states.append, on_state=changes.append)
        await up.start()
        try:
            assert await up.wait_ready(5)
            await srv.stop(grace=0)
            await eventually(lambda: up.state is not ConnectionState.READY)
            for _ in range(3):
                error, took = await elapsed(up.execute(ExecuteRequest(b"x", "i", "demo",
                                                                      (2, 1))))
                assert isinstance(error, UpstreamUnavailable), error
                assert error.message.startswith("the Krypton Core is unreachable: ")
                assert took < 1.0 + 0.5
            with pytest.raises(UpstreamUnavailable):
                await up.sync_keys([record("k-1")])
            with pytest.raises(UpstreamUnavailable):
                await up.fetch_key("demo", "k-1")
            assert ConnectionState.DOWN in states

            core2 = DictCore()
            srv2 = server(dev, core2, port=port)
            assert await srv2.start() == port
            try:
                started = time.monotonic()
                assert await up.wait_ready(5), up.last_error
                assert time.monotonic() - started < 5
                core2.change(StateChange("demo", "k-9", 5, 1))
                await eventually(lambda: changes == [StateChange("demo", "k-9", 5, 1)])
                result = await up.execute(ExecuteRequest(b"ab", "i", "demo", (2, 1)))
                assert result.batch_item == b"ba"
                assert core2.calls[0] == ("subscribe", GATEWAY)
            finally:
                await up.close()
                await srv2.stop(0)
        finally:
            await up.close()
            await srv.stop(0)

    run(main)


def test_a_core_that_accepts_but_never_answers(dev: DevLayout) -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    async def main() -> None:
        tcp = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = tcp.sockets[0].getsockname()[1]
        try:
            async with client(gateway_tls(dev), port, timeout=0.5) as up:
                error, took = await elapsed(up.execute(ExecuteRequest(b"x", "i", "demo",
                                                                      (2, 1))))
                assert isinstance(error, UpstreamUnavailable), error
                assert error.message == "the Krypton Core is unreachable: no answer within 0.5 s"
                assert took < 1.0
                assert up.state is ConnectionState.CONNECTING
        finally:
            tcp.close()
            await tcp.wait_closed()

    run(main)


def test_never_started_or_unreachable_core(dev: DevLayout) -> None:
    async def main() -> None:
        up = client(gateway_tls(dev), 9)  # nothing listens on the discard port
        with pytest.raises(UpstreamUnavailable, match="not started"):
            await up.execute(ExecuteRequest(b"x", "i", "demo", (2, 1)))
        async with up:
            error, took = await elapsed(up.execute(ExecuteRequest(b"x", "i", "demo", (2, 1))))
            assert isinstance(error, UpstreamUnavailable)
            assert took < 1.5
            assert not await up.wait_ready(0.3)
            assert up.state is not ConnectionState.READY

    run(main)


def test_runs_on_uvloop_as_the_cli_does(dev: DevLayout) -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed on this platform")

    async def main() -> None:
        core = DictCore()
        srv = server(dev, core)
        port = await srv.start()
        ring = KeyRing()
        up = client(gateway_tls(dev), port)
        source = UplinkL3Source(up)
        await source.start(ring)
        try:
            assert ring.active_version("demo") == 1
            result = await up.execute(
                ExecuteRequest(ALL_BYTES, "i", "demo", (2, 1)))
            assert result.batch_item == ALL_BYTES[::-1]
        finally:
            await source.close()
            await srv.stop(0)

    uvloop.run(asyncio.wait_for(main(), 20))


def test_backoff_is_jittered_exponential_and_capped() -> None:
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (6, 5.0), (100, 5.0)]:
        delays = [backoff_delay(attempt, 0.1, 5.0) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


# -- the L3 source ---------------------------------------------------------------
def test_uplink_l3_source_fills_a_key_ring(dev: DevLayout) -> None:
    async def main() -> None:
        core = DictCore()
        srv = server(dev, core)
        port = await srv.start()
        ring = KeyRing()
        source = UplinkL3Source(client(gateway_tls(dev), port, tenants=("demo", "other")))
        await source.start(ring)
        try:
            assert ring.tenants() == ["demo", "other"]
            assert ring.active_version("demo") == 1
            expires = ring.lease_expires_at("demo", 1)
            assert expires is not None and 55 < expires - ring.now() <= 60

            version, blob = ring.wrap("demo", "k-1", SecretBytes(b"\x07" * 32))
            local = KeyRing()
            local.install("demo", 1, SecretBytes(KEY_DEMO_1), L3State.ACTIVE, ring.now() + 60)
            assert local.unwrap("demo", "k-1", version, blob).reveal() == b"\x07" * 32

            core.set_l3("demo", 2, KEY_DEMO_2, L3State.ACTIVE)
            await eventually(lambda: ring.active_version("demo") == 2)
            core.set_l3("demo", 1, KEY_DEMO_1, L3State.DEACTIVATED)
            await eventually(lambda: ring.versions("demo").get(1) == L3State.DEACTIVATED)
            assert ring.unwrap("demo", "k-1", 1, blob).reveal() == b"\x07" * 32

            core.set_l3("demo", 1, KEY_DEMO_1, L3State.COMPROMISED)
            await eventually(lambda: 1 not in ring.versions("demo"))
            assert ring.versions("demo") == {2: L3State.ACTIVE}
            core.set_l3("other", 1, KEY_OTHER_1, L3State.DESTROYED)
            await eventually(lambda: "other" not in ring.tenants())
        finally:
            await source.close()
            await srv.stop(0)
        assert ring.versions("demo") == {2: L3State.ACTIVE}

    run(main)


# -- benchmark: python -m tests.unit.test_uplink [calls] [--split] --------------------
def _serve(root: str, ports: Queue[int], stop: Event) -> None:
    async def main() -> None:
        srv = server(DevLayout(Path(root)), DictCore())
        ports.put(await srv.start())
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await srv.stop(0)

    asyncio.run(main())


async def _bench(calls: int, split: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        dev = init_dev_dir(Path(d))
        srv: UplinkServer | None = None
        if split:  # the Core in its own process, as in production
            mp = multiprocessing.get_context("spawn")
            ports: Queue[int] = mp.Queue()
            stop = mp.Event()
            child = mp.Process(target=_serve, args=(d, ports, stop))
            child.start()
            port = ports.get(timeout=30)
        else:  # Core and gateway share this process and its event loop
            srv = server(dev, DictCore())
            port = await srv.start()
        async with client(gateway_tls(dev), port, timeout=2.0) as up:
            assert await up.wait_ready(5)
            req = ExecuteRequest(b"\x42" * 120, "spiffe://krypton.dev/tenant/demo/workload/c",
                                 "demo", (2, 1), "bench")
            for _ in range(100):
                await up.execute(req)
            took: list[float] = []
            for _ in range(calls):
                start = time.perf_counter()
                await up.execute(req)
                took.append((time.perf_counter() - start) * 1e3)
        if srv is not None:
            await srv.stop(0)
        else:
            stop.set()
            child.join(10)
    took.sort()
    q = statistics.quantiles(took, n=100)
    where = "Core in another process" if split else "Core in the same process and loop"
    print(f"Execute round trip over mTLS gRPC ({where}), {calls} sequential calls: "
          f"p50 {q[49]:.3f} ms  p99 {q[98]:.3f} ms  max {took[-1]:.3f} ms")


if __name__ == "__main__":
    numbers = [int(a) for a in sys.argv[1:] if a.isdigit()]
    asyncio.run(_bench(numbers[0] if numbers else 1000, "--split" in sys.argv))


def test_uplink_l3_source_drops_what_a_snapshot_omits_and_caps_leases(dev: DevLayout) -> None:
    """Issue 12 findings 2 and 3: a version an L3Versions does not list is dropped
    at once; a pushed lease is cut to the gateway's max_lease."""
    async def main() -> None:
        core = DictCore()
        core.set_l3("demo", 2, KEY_DEMO_2, L3State.ACTIVE)
        srv = server(dev, core)
        port = await srv.start()
        ring = KeyRing()
        source = UplinkL3Source(client(gateway_tls(dev), port, tenants=("demo", "other")),
                                max_lease=30.0)
        await source.start(ring)
        try:
            assert set(ring.versions("demo")) == {1, 2}
            expires = ring.lease_expires_at("demo", 1)
            assert expires is not None and 25 < expires - ring.now() <= 30  # not the 60 pushed
            for tenants, queue in core.streams:
                if "demo" in tenants:
                    queue.put_nowait(L3Versions("demo", frozenset({2})))
            await eventually(lambda: 1 not in ring.versions("demo"))
            assert ring.versions("demo") == {2: L3State.ACTIVE}
            assert ring.versions("other") == {1: L3State.ACTIVE}
        finally:
            await source.close()
            await srv.stop(0)

    run(main)


# -- the change feed at the gateway (issue 12 finding 1) ------------------------------
class FeedCore(DictCore):
    """A DictCore whose first Heartbeat asks for a reconcile (or not), and whose
    Execute answers every item with 'already destroyed'."""

    def __init__(self, *, reconcile: bool) -> None:
        super().__init__()
        self.reconcile = reconcile

    async def subscribe(
        self, gateway: str, tenants: frozenset[str], after_seq: int | None = None
    ) -> AsyncIterator[CoreEvent]:
        self.after_seqs.append(after_seq)
        entry: tuple[frozenset[str], asyncio.Queue[CoreEvent]] = (tenants, asyncio.Queue())
        self.streams.append(entry)
        try:
            yield self.grant("demo", 1)
            yield Heartbeat.now(40, reconcile=self.reconcile)
            while True:
                yield await entry[1].get()
        finally:
            self.streams.remove(entry)

    async def execute(self, gateway: str, request: ExecuteRequest) -> ExecuteResult:
        failed = ResponseItem.failure(Operation.DESTROY, None, ResultReason.OBJECT_DESTROYED,
                                      "the object is destroyed")
        return ExecuteResult(encode(response_item(failed)), ())


def destroy_item(uid: str) -> Item:
    return cm.batch_item(Operation.DESTROY, cm.payload(Item.text(Tag.UNIQUE_IDENTIFIER, uid)))


def destroyed(uid: str) -> KeyRecord:
    return replace(record(uid), state=6, wrapped=b"", synced=True)


@contextlib.asynccontextmanager
async def feed_gateway(
    dev: DevLayout, path: Path, core: DictCore, held: Sequence[str], *, cursor: int = 0,
    on_connection: Callable[[Vault, ConnectionState], None] | None = None,
) -> AsyncIterator[tuple[UplinkClient, Upstream, Vault]]:
    """A gateway's uplink and upstream over a vault holding ``held`` (synced, active)."""
    srv = server(dev, core)
    port = await srv.start()
    vault = Vault.open(path / "vault.db")
    await vault.put_many([replace(record(u), state=2, synced=True) for u in held])
    await vault.set_cursor(cursor)
    up = client(gateway_tls(dev), port)
    upstream = Upstream(up, vault, Limits())
    await upstream.start()
    if on_connection is not None:
        up.add_listener(on_connection=functools.partial(on_connection, vault))
    await up.start()
    try:
        assert await up.wait_ready(5)
        yield up, upstream, vault
    finally:
        await upstream.close()
        await up.close()
        vault.close()
        await srv.stop(0)


def test_the_gateway_applies_the_feed_and_keeps_its_cursor_with_each_change(
    dev: DevLayout, tmp_path: Path,
) -> None:
    async def main() -> None:
        core = FeedCore(reconcile=False)
        async with feed_gateway(dev, tmp_path, core, ("k-1", "k-2")) as (_, upstream, vault):
            assert core.after_seqs == [0]  # keys held, no cursor yet: from the start
            assert vault.cursor() == 40  # the position the replay closed with
            core.keys["k-1"] = destroyed("k-1")
            core.change(StateChange("demo", "k-1", 6, 3, seq=41))
            await eventually(lambda: vault.cursor() == 41)
            held = vault.get("k-1")
            assert held is not None and held.state == 6 and held.wrapped == b""
            # A failed delegated item on a live key takes the Core's state of it.
            core.keys["k-2"] = destroyed("k-2")
            ctx = RequestContext("i", "demo", ProtocolVersion(2, 1), 0, "r-1")
            answer, _ = await upstream.execute(ctx, destroy_item("k-2"))
            status = answer.find(Tag.RESULT_STATUS)
            assert status is not None and status.value == ResultStatus.OPERATION_FAILED
            held = vault.get("k-2")
            assert held is not None and held.state == 6 and held.wrapped == b""

    run(main)


def test_a_gateway_too_far_behind_reconciles_before_it_is_ready(
    dev: DevLayout, tmp_path: Path,
) -> None:
    async def main() -> None:
        core = FeedCore(reconcile=True)
        core.keys["k-3"] = destroyed("k-3")
        core.keys["k-4"] = replace(record("k-4"), state=2, synced=True)
        seen: list[tuple[ConnectionState, int | None]] = []

        def note(vault: Vault, state: ConnectionState) -> None:
            held = vault.get("k-3")
            seen.append((state, None if held is None else held.state))

        async with feed_gateway(dev, tmp_path, core, ("k-3", "k-4"), cursor=7,
                                on_connection=note) as (_, _, vault):
            assert core.after_seqs == [7]
            assert (ConnectionState.READY, 6) in seen  # destroyed before READY
            held = vault.get("k-4")
            assert held is not None and held.state == 2 and held.wrapped
            assert vault.cursor() == 40

    run(main)
