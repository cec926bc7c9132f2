"""The gateway's outbox against a small Core over real gRPC and mutual TLS: the
flush a Locate runs first (every key of the tenant, whatever the other tenants
have waiting) and the drain after a partition (several batches in flight,
acknowledged keys marked as their answers come back, refused keys left)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.unit.test_uplink import (
    DictCore,
    client,
    eventually,
    gateway_tls,
    record,
    run,
    server,
)

from krypton.errors import ItemNotFound, KryptonError
from krypton.gateway.upstream import Upstream
from krypton.kmip import client_messages as cm
from krypton.kmip.messages import ResponseItem, response_item
from krypton.kmip.versions import ProtocolVersion
from krypton.model.context import RequestContext
from krypton.model.record import KeyRecord
from krypton.pki import DevLayout, init_dev_dir
from krypton.ttlv.codec import Limits, encode
from krypton.ttlv.enums import Operation
from krypton.ttlv.item import Item
from krypton.uplink.types import ExecuteRequest, ExecuteResult
from krypton.vault.sqlite import _OUTBOX_OF, Vault

BOTH = ("demo", "other")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevLayout:
    return init_dev_dir(tmp_path_factory.mktemp("dev"))


class LocateCore(DictCore):
    """Answers every Execute with an empty success and notes, per call, which
    keys it held when the call arrived (what a Locate could have found)."""

    def __init__(self) -> None:
        super().__init__()
        self.held_at_execute: list[set[str]] = []
        self.synced: list[int] = []  # the size of each SyncKeys batch

    async def sync_keys(self, gateway: str, keys: Any) -> list[str]:
        self.synced.append(len(keys))
        return await super().sync_keys(gateway, keys)

    async def execute(self, gateway: str, request: ExecuteRequest) -> ExecuteResult:
        self.held_at_execute.append(set(self.keys))
        ok = ResponseItem(Operation.LOCATE, None, payload=Item.structure(0x42007C))
        return ExecuteResult(encode(response_item(ok)), ())


def locate_item() -> Item:
    return cm.batch_item(Operation.LOCATE, cm.payload())


def ctx(tenant: str) -> RequestContext:
    return RequestContext("spiffe://krypton.dev/w", tenant, ProtocolVersion(2, 1), 0, "r-1")


async def filled(path: Path, layout: Sequence[tuple[str, int]]) -> tuple[Vault, list[KeyRecord]]:
    """A vault whose outbox holds, in this order, ``count`` keys of each ``tenant``."""
    vault = Vault.open(path)
    made: list[KeyRecord] = []
    for tenant, count in layout:
        batch = [record(f"{tenant}-{len(made) + i}", tenant) for i in range(count)]
        await vault.put_many(batch)
        made.extend(batch)
    return vault, made


def test_a_locate_flushes_every_key_of_its_tenant_first(dev: DevLayout, tmp_path: Path) -> None:
    """Issue 16: the flush read the oldest rows of all tenants and stopped when
    fewer than a batch of them were the caller's, so a Locate behind another
    tenant's backlog missed keys this gateway made."""

    async def main() -> None:
        core = LocateCore()
        srv = server(dev, core)
        port = await srv.start()
        layout = [("other", 700), ("demo", 30), ("other", 300), ("demo", 600), ("other", 5)]
        vault, made = await filled(tmp_path / "vault.db", layout)
        try:
            async with client(gateway_tls(dev), port, tenants=BOTH) as up:
                assert await up.wait_ready(5)
                upstream = Upstream(up, vault, Limits(), batch=64)  # no drainer: only the flush
                await upstream.execute(ctx("demo"), locate_item())
            demo = {r.uid for r in made if r.tenant == "demo"}
            assert len(core.held_at_execute) == 1
            assert demo <= core.held_at_execute[0]  # all 630, though 1,005 others came first
            assert set(core.keys) == demo  # the flush sends only the tenant's keys
            assert [r.uid for r in vault.outbox(2000)] == [
                r.uid for r in made if r.tenant == "other"
            ]
        finally:
            vault.close()
            await srv.stop(0)

    run(main)


def test_the_tenant_outbox_reads_only_that_tenant_oldest_first(tmp_path: Path) -> None:
    async def main() -> None:
        vault, made = await filled(tmp_path / "vault.db", [("other", 50), ("demo", 7),
                                                            ("other", 3), ("demo", 2)])
        try:
            demo = [r.uid for r in made if r.tenant == "demo"]
            assert [r.uid for r in vault.outbox(100, tenant="demo")] == demo
            assert [r.uid for r in vault.outbox(4, tenant="demo")] == demo[:4]
            assert vault.outbox(10, tenant="nobody") == []
            await vault.mark_synced(demo[:5])
            assert [r.uid for r in vault.outbox(100, tenant="demo")] == demo[5:]
            assert len(vault.outbox(100)) == 57  # both tenants, as before
            page = vault.outbox_page(3, tenant="other")
            assert [r.uid for r in page.records] == ["other-0", "other-1", "other-2"] and page.more
            rest = vault.outbox_page(100, tenant="other", after=page.position)
            assert len(rest.records) == 50 and not rest.more
            assert vault.outbox_page(5, tenant="other", after=rest.position).records == []
        finally:
            vault.close()

    asyncio.run(main())
    with sqlite3.connect(tmp_path / "vault.db") as db:
        plan = [r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {_OUTBOX_OF}", ("demo", 0, 9))]
    assert plan == ["SEARCH keys USING INDEX keys_outbox_tenant (tenant=? AND rowid>?)"], plan


class GateCore(DictCore):
    """A Core whose SyncKeys waits until ``hold`` batches are in at once (so a
    test sees how many travel together), keeps batches named in ``slow`` until
    ``let_slow`` is set, leaves keys in ``refuse`` unacknowledged (as a Core
    refuses a key wrapped under a revoked L3) and fails the ``fail_at``-th batch."""

    def __init__(self, hold: int, *, slow: frozenset[int] = frozenset(),
                 refuse: frozenset[str] = frozenset(), fail_at: int | None = None) -> None:
        super().__init__()
        self.hold, self.slow, self.refuse, self.fail_at = hold, slow, refuse, fail_at
        self.inflight = self.most = 0
        self.batches: list[list[str]] = []
        self.gate, self.let_slow, self.slow_in = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def sync_keys(self, gateway: str, keys: Any) -> list[str]:
        n = len(self.batches)
        self.batches.append([k.uid for k in keys])
        self.inflight += 1
        self.most = max(self.most, self.inflight)
        try:
            if self.inflight >= self.hold:
                self.gate.set()
            await self.gate.wait()
            if n in self.slow:
                self.slow_in.set()
                await self.let_slow.wait()
            if n == self.fail_at:
                raise ItemNotFound("this batch fails")
            acked = [k for k in keys if k.uid not in self.refuse]
            self.keys.update((k.uid, k) for k in acked)
            return [k.uid for k in acked]
        finally:
            self.inflight -= 1


@contextlib.asynccontextmanager
async def pumping(
    dev: DevLayout, tmp_path: Path, core: DictCore, layout: Sequence[tuple[str, int]],
    **kw: Any,
) -> AsyncIterator[tuple[Upstream, Vault, list[KeyRecord]]]:
    srv = server(dev, core)
    port = await srv.start()
    vault, made = await filled(tmp_path / "vault.db", layout)
    try:
        async with client(gateway_tls(dev), port, tenants=BOTH, timeout=5.0) as up:
            assert await up.wait_ready(5)
            yield Upstream(up, vault, Limits(), **kw), vault, made
    finally:
        vault.close()
        await srv.stop(0)


def test_the_drain_keeps_a_window_of_batches_in_flight(dev: DevLayout, tmp_path: Path) -> None:
    """Issue 16: one SyncKeys at a time left both sides waiting. Up to ``window``
    travel together, never more, and each batch is marked synced as its own
    answer comes, even while an earlier one is still out."""

    async def main() -> None:
        core = GateCore(hold=4, slow=frozenset({0}))
        async with pumping(dev, tmp_path, core, [("demo", 150), ("other", 170)],
                           batch=32, window=4) as (upstream, vault, made):
            pump = asyncio.ensure_future(upstream.pump())
            await asyncio.wait_for(core.slow_in.wait(), 5)
            first = set(core.batches[0])
            # batch 0 is held at the Core: the window moves on without it, and
            # every other batch is acknowledged and marked meanwhile
            await eventually(lambda: {r.uid for r in vault.outbox(1000)} == first)
            assert len(core.batches) == 10 and not pump.done()
            core.let_slow.set()
            assert await asyncio.wait_for(pump, 5) == 320
            assert vault.outbox(1000) == []
        assert core.most == 4
        assert sorted(u for b in core.batches for u in b) == sorted(r.uid for r in made)

    run(main)


def test_the_drain_goes_past_refused_keys_and_quarantines_them(
    dev: DevLayout, tmp_path: Path,
) -> None:
    async def main() -> None:
        refused = frozenset({"demo-3", "demo-40", "other-77"})
        core = GateCore(hold=1, refuse=refused)
        async with pumping(dev, tmp_path, core, [("demo", 60), ("other", 40)],
                           batch=16) as (upstream, vault, made):
            assert await upstream.pump() == 97
            # The Core refuses only what its fence will always refuse: those keys
            # leave the outbox, reported, and are not offered again.
            assert vault.outbox(1000) == []
            assert vault.quarantined == len(refused)
            assert await upstream.pump() == 0
            assert len(core.batches) == 7
        assert set(core.keys) == {r.uid for r in made} - refused

    run(main)


def test_a_failed_batch_stops_the_pass_and_the_rest_stay(dev: DevLayout, tmp_path: Path) -> None:
    async def main() -> None:
        core = GateCore(hold=2, fail_at=1)
        async with pumping(dev, tmp_path, core, [("demo", 200)],
                           batch=20, window=2) as (upstream, vault, made):
            with pytest.raises(KryptonError):
                await upstream.pump()
            sent = len(core.batches)
            assert sent <= 3  # batch 1 failed: at most the one in flight beside it went on
            at_core = set(core.keys)
            assert {r.uid for r in vault.outbox(1000)} == {r.uid for r in made} - at_core
            assert set(core.batches[1]).isdisjoint(at_core)
            core.fail_at = None
            assert await upstream.pump() == 200 - len(at_core)  # the next pass sends the rest
            assert vault.outbox(1000) == []

    run(main)


def test_a_flush_beside_the_drain_sends_each_key_at_least_once(
    dev: DevLayout, tmp_path: Path
) -> None:
    """SyncKeys is idempotent: the drain and a Locate's flush may send the same
    batch; every key ends acknowledged and marked once."""

    async def main() -> None:
        core = LocateCore()
        async with pumping(dev, tmp_path, core, [("demo", 300), ("other", 300)],
                           batch=25, window=3) as (upstream, vault, made):
            drained, flushed = await asyncio.gather(upstream.pump(), upstream.pump("demo"))
            assert drained + flushed >= 600 and vault.outbox(1000) == []
        assert set(core.keys) == {r.uid for r in made}

    run(main)
