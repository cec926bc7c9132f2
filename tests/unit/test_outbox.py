"""The gateway's outbox against a small Core over real gRPC and mutual TLS: the
flush a Locate runs first (every key of the tenant, whatever the other tenants
have waiting) and the drain after a partition (several batches in flight,
acknowledged keys marked as their answers come back, refused keys left)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.unit.test_uplink import DictCore, client, gateway_tls, record, run, server

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
