"""``--workers N``: one worker at a time drains the shared outbox (issue 16:
every worker pumped the whole outbox, so each key reached the Core once per
worker). The owner holds a ``flock`` in the workers' folder; when it lets go
(or dies: the kernel closes its file) another worker takes over; a worker
that made keys nudges the owner over a Unix datagram socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.unit.test_outbox import BOTH, LocateCore, filled
from tests.unit.test_uplink import client, gateway_tls, record, run, server

from krypton.gateway import upstream as upstream_module
from krypton.gateway.upstream import Upstream
from krypton.gateway.workers import DrainOwner
from krypton.pki import DevLayout, init_dev_dir
from krypton.ttlv.codec import Limits
from krypton.vault.sqlite import Vault


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevLayout:
    return init_dev_dir(tmp_path_factory.mktemp("dev"))


def test_one_owner_at_a_time_and_the_next_takes_over(tmp_path: Path) -> None:
    a, b = DrainOwner(tmp_path), DrainOwner(tmp_path)
    try:
        assert a.claim() is True
        assert a.claim() is True  # kept, not taken twice
        assert b.claim() is False and not b.owns
        a.release()
        assert b.claim() is True and b.owns
        assert a.claim() is False
        b.close()  # closing the file lets go, as the kernel does when a worker dies
        assert a.claim() is True
    finally:
        a.close()
        b.close()


def test_without_the_workers_folder_a_worker_drains_as_a_lone_gateway(tmp_path: Path) -> None:
    owner = DrainOwner(tmp_path / "gone")
    assert owner.claim() is True  # sent twice is harmless, never sent is not
    owner.nudge()  # nobody to tell: no error
    owner.close()


def test_a_nudge_wakes_the_owner_whoever_it_is(tmp_path: Path) -> None:
    async def main() -> None:
        woken = asyncio.Event()
        owner = DrainOwner(tmp_path, on_nudge=woken.set)
        other = DrainOwner(tmp_path)
        try:
            other.nudge()  # no owner yet: nothing to tell, no error
            assert owner.claim()
            other.nudge()
            other.nudge()
            await asyncio.wait_for(woken.wait(), 5)
            owner.release()  # its socket goes with it
            assert not (tmp_path / DrainOwner.SOCKET).exists()
            other.nudge()
            woken.clear()
            assert other.claim()  # the next owner is told on its own loop
            other.on_nudge = woken.set
            owner.nudge()
            await asyncio.wait_for(woken.wait(), 5)
        finally:
            owner.close()
            other.close()

    run(main)


def test_only_the_owner_drains_and_another_takes_over(dev: DevLayout, tmp_path: Path) -> None:
    """Two workers' Upstreams on one vault file: the owner drains every key once,
    the other sends nothing; when the owner goes, the other drains the rest."""

    async def main() -> None:
        core = LocateCore()
        srv = server(dev, core)
        port = await srv.start()
        first, made = await filled(tmp_path / "vault.db", [("demo", 120), ("other", 80)])
        second = Vault.open(tmp_path / "vault.db")  # the other worker's connection
        folder = tmp_path / "workers"
        folder.mkdir()
        try:
            async with client(gateway_tls(dev), port, tenants=BOTH, timeout=5.0) as up:
                assert await up.wait_ready(5)
                a = Upstream(up, first, Limits(), batch=64, linger=0,
                             owner=DrainOwner(folder))
                b = Upstream(up, second, Limits(), batch=64, linger=0,
                             owner=DrainOwner(folder))
                assert await a.drain_once() == 200
                assert await b.drain_once() is None  # not the owner: sends nothing
                assert sum(core.synced) == 200

                more = [record(f"late-{i}", "demo") for i in range(50)]
                await second.put_many(more)  # made by the other worker
                nudged = asyncio.Event()
                assert a.owner is not None
                a.owner.on_nudge = nudged.set
                assert await b.drain_once(woken=True) is None
                await asyncio.wait_for(nudged.wait(), 5)  # the owner is told at once
                assert sum(core.synced) == 200

                await a.close()  # the owner goes (stops, or dies)
                assert await b.drain_once(woken=False) == 50  # taken over on its interval
                assert await b.drain_once() == 0
                await b.close()
            assert sum(core.synced) == 250  # each key once, not once per worker
            assert set(core.keys) == {r.uid for r in made} | {r.uid for r in more}
        finally:
            first.close()
            second.close()
            await srv.stop(0)

    run(main)


def test_workers_stopping_together_flush_in_turn(
    dev: DevLayout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At SIGTERM every worker flushes the outbox; they take turns, so the keys
    reach the Core once and none is left behind."""
    monkeypatch.setattr(upstream_module, "CLAIM_RETRY", 0)  # no real sleeps

    async def main() -> None:
        core = LocateCore()
        srv = server(dev, core)
        port = await srv.start()
        first, _ = await filled(tmp_path / "vault.db", [("demo", 300), ("other", 100)])
        second = Vault.open(tmp_path / "vault.db")
        folder = tmp_path / "workers"
        folder.mkdir()
        try:
            async with client(gateway_tls(dev), port, tenants=BOTH, timeout=5.0) as up:
                assert await up.wait_ready(5)
                ups = [Upstream(up, v, Limits(), batch=32, owner=DrainOwner(folder))
                       for v in (first, second)]
                sent = await asyncio.gather(*(u.flush() for u in ups))
                assert sorted(sent) == [0, 400]
                assert await ups[0].drain_once() is None  # stopping: claims no more
                for u in ups:
                    await u.close()
            assert sum(core.synced) == 400
            assert first.outbox(1000) == []
        finally:
            first.close()
            second.close()
            await srv.stop(0)

    run(main)
