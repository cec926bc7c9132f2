"""The registry contract, run against every backend: a SQLite file, SQLite in
memory, and a real PostgreSQL server (the session's ``pg`` fixture).

Each test opens its registries inside ``asyncio.run`` (psycopg's async
connections belong to one event loop) on a fresh database: a new file, a new
in-memory database, or a new PostgreSQL database on the shared server.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from tests.helpers.pg import PgServer

from krypton.errors import ConfigError, InvalidField, ItemNotFound, StorageError
from krypton.model import (
    AuditRecord,
    Change,
    KeyChange,
    LocateQuery,
    ObjectRecord,
    Registry,
    RegistryConflict,
    SealedKey,
    StateChange,
)
from krypton.registry import locate_count_sql, locate_sql, open_registry

KEY, SECRET_DATA = 2, 7  # KMIP Object Type values
PRE_ACTIVE, ACTIVE, DEACTIVATED, DESTROYED = 1, 2, 3, 6


@pytest.fixture(params=["sqlite", "memory", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request, tmp_path)


@pytest.fixture(scope="module", params=["sqlite", "memory", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One database per backend for the Locate cases (each puts the same set,
    idempotently), which saves a database per case."""
    return _url(request, tmp_path_factory.mktemp("registry"))


def _url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'registry.db'}"
    if request.param == "memory":
        return "sqlite::memory:"
    server: PgServer = request.getfixturevalue("pg")
    return server.create_database()


Body = Callable[[Registry], Awaitable[None]]


def run(url: str, body: Body) -> None:
    async def main() -> None:
        reg = await open_registry(url)
        try:
            await body(reg)
        finally:
            await reg.close()

    asyncio.run(main())


def obj(
    uid: str,
    tenant: str = "demo",
    *,
    created: int = 1_700_000_000,
    object_type: int = KEY,
    state: int = PRE_ACTIVE,
    names: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
    custom: tuple[tuple[str, str], ...] = (),
) -> ObjectRecord:
    return ObjectRecord(
        uid=uid, tenant=tenant, object_type=object_type, state=state, created=created,
        algorithm=3, length=256, l3_version=1, sealed=os.urandom(60),
        attributes=b"\x42\x01\x25\x01", origin="gw-1", names=names, groups=groups, custom=custom,
    )  # fmt: skip


class Inbox:
    """A subscriber that collects changes; ``wait`` for the next n of them."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue()

    async def __call__(self, change: Change) -> None:
        await self.queue.put(change)

    async def take(self, n: int, timeout: float = 2.0) -> list[Change]:
        return [await asyncio.wait_for(self.queue.get(), timeout) for _ in range(n)]


# -- objects -------------------------------------------------------------------------
def test_put_get_round_trip(url: str) -> None:
    rec = obj("a", names=("alpha", "first"), groups=("g",), custom=(("x-app", "db"),))
    empty = ObjectRecord("b", "demo", SECRET_DATA, ACTIVE, 5)

    async def body(reg: Registry) -> None:
        await reg.put_objects([rec, empty])
        assert await reg.get_object("demo", "a") == rec
        assert await reg.get_object("demo", "b") == empty
        assert await reg.get_object("demo", "missing") is None

    run(url, body)


def test_put_is_idempotent_by_uid(url: str) -> None:
    rec = obj("a", names=("alpha",))

    async def body(reg: Registry) -> None:
        await reg.put_objects([rec, rec])
        await reg.put_objects([replace(rec, state=ACTIVE, names=("beta",)), obj("b")])
        assert await reg.get_object("demo", "a") == rec
        assert await reg.locate(LocateQuery("demo", name="alpha")) == ["a"]
        assert await reg.locate(LocateQuery("demo", name="beta")) == []
        assert await reg.locate(LocateQuery("demo")) == ["a", "b"]

    run(url, body)


def test_uid_of_another_tenant_is_a_conflict_and_the_batch_is_all_or_none(url: str) -> None:
    mine = obj("shared", "demo")

    async def body(reg: Registry) -> None:
        await reg.put_objects([mine])
        with pytest.raises(RegistryConflict, match="another tenant"):
            await reg.put_objects([obj("fresh", "other"), obj("shared", "other")])
        assert await reg.get_object("other", "fresh") is None
        assert await reg.get_object("other", "shared") is None
        assert await reg.get_object("demo", "shared") == mine

    run(url, body)


def test_tenants_are_isolated(url: str) -> None:
    async def body(reg: Registry) -> None:
        await reg.put_objects([obj("d1", "demo", names=("k",)), obj("o1", "other", names=("k",))])
        assert await reg.get_object("other", "d1") is None
        assert await reg.locate(LocateQuery("demo", name="k")) == ["d1"]
        assert await reg.locate(LocateQuery("other", name="k")) == ["o1"]
        assert await reg.locate(LocateQuery("nobody")) == []
        stolen = replace(obj("d1", "other"), state=DESTROYED)
        with pytest.raises(ItemNotFound):
            await reg.update_object(stolen)
        got = await reg.get_object("demo", "d1")
        assert got is not None and got.state == PRE_ACTIVE

    run(url, body)


def test_update_bumps_revision_and_rewrites_locate_rows(url: str) -> None:
    rec = obj("a", names=("old",), groups=("g1",), custom=(("x-a", "1"),))

    async def body(reg: Registry) -> None:
        await reg.put_objects([rec])
        change = replace(
            rec, state=DESTROYED, sealed=None, attributes=b"\x42", names=("new", "newer"),
            groups=(), custom=(("x-a", "2"), ("x-b", "3")),
            object_type=SECRET_DATA, created=1, origin="forged",  # immutable: ignored
        )  # fmt: skip
        new = await reg.update_object(change)
        assert new.revision == 1
        assert (new.object_type, new.created, new.origin) == (KEY, rec.created, "gw-1")
        kept = replace(change, object_type=KEY, created=rec.created, origin="gw-1")
        assert new == replace(kept, revision=1)
        assert await reg.get_object("demo", "a") == new
        assert await reg.locate(LocateQuery("demo", name="old")) == []
        assert await reg.locate(LocateQuery("demo", name="newer")) == ["a"]
        assert await reg.locate(LocateQuery("demo", group="g1")) == []
        assert await reg.locate(LocateQuery("demo", custom=(("x-a", "1"),))) == []
        assert await reg.locate(LocateQuery("demo", custom=(("x-a", "2"),))) == ["a"]
        again = await reg.update_object(replace(new, state=ACTIVE))
        assert again.revision == 2

    run(url, body)


def test_update_is_a_compare_and_set_on_the_revision(url: str) -> None:
    async def body(reg: Registry) -> None:
        await reg.put_objects([obj("a")])
        rec = await reg.get_object("demo", "a")
        assert rec is not None
        results = await asyncio.gather(
            reg.update_object(replace(rec, state=ACTIVE)),
            reg.update_object(replace(rec, state=DESTROYED)),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, ObjectRecord)]
        assert len(winners) == 1
        assert [type(r) for r in results if not isinstance(r, ObjectRecord)] == [RegistryConflict]
        assert await reg.get_object("demo", "a") == winners[0]
        with pytest.raises(ItemNotFound):
            await reg.update_object(obj("nope"))

    run(url, body)


# -- locate --------------------------------------------------------------------------
# Inserted in this order; `created` puts d before a, so creation order is d, a, b, c, e.
LOCATE_SET = (
    obj("a", created=20, names=("alpha",), groups=("g1",), custom=(("x-env", "prod"),)),
    obj("b", created=30, state=ACTIVE, names=("beta", "shared"), groups=("g1", "g2")),
    obj("c", created=30, object_type=SECRET_DATA, state=ACTIVE, names=("shared",),
        custom=(("x-env", "prod"), ("x-team", "red"))),
    obj("d", created=10, state=ACTIVE, groups=("g2",), custom=(("x-env", "dev"),)),
    obj("e", created=40, state=DESTROYED, names=("shared",), groups=("g1",)),
    obj("z", "other", created=1, names=("alpha", "shared"), groups=("g1",),
        custom=(("x-env", "prod"),)),
)  # fmt: skip


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (LocateQuery("demo"), ["d", "a", "b", "c", "e"]),
        (LocateQuery("other"), ["z"]),
        (LocateQuery("demo", object_type=SECRET_DATA), ["c"]),
        (LocateQuery("demo", state=ACTIVE), ["d", "b", "c"]),
        (LocateQuery("demo", name="alpha"), ["a"]),
        (LocateQuery("demo", name="shared"), ["b", "c", "e"]),
        (LocateQuery("demo", group="g1"), ["a", "b", "e"]),
        (LocateQuery("demo", custom=(("x-env", "prod"),)), ["a", "c"]),
        (LocateQuery("demo", custom=(("x-env", "prod"), ("x-team", "red"))), ["c"]),
        (LocateQuery("demo", custom=(("x-env", "red"),)), []),
        (LocateQuery("demo", name="shared", state=ACTIVE), ["b", "c"]),
        (LocateQuery("demo", name="shared", group="g1"), ["b", "e"]),
        (LocateQuery("demo", name="shared", group="g1", state=DESTROYED), ["e"]),
        (LocateQuery("demo", object_type=KEY, state=ACTIVE, group="g2"), ["d", "b"]),
        (LocateQuery("demo", group="g1", custom=(("x-env", "prod"),)), ["a"]),
        (LocateQuery("demo", name="nobody"), []),
        (LocateQuery("demo", offset=1, limit=2), ["a", "b"]),
        (LocateQuery("demo", offset=3), ["c", "e"]),
        (LocateQuery("demo", limit=0), []),
        (LocateQuery("demo", name="shared", offset=1, limit=1), ["c"]),
        (LocateQuery("demo", offset=9), []),
        (LocateQuery("demo", destroyed=False), ["d", "a", "b", "c"]),
        (LocateQuery("demo", destroyed=True), ["e"]),
        (LocateQuery("demo", state=DESTROYED, destroyed=False), []),
        (LocateQuery("demo", newest_first=True), ["e", "c", "b", "a", "d"]),
        (LocateQuery("demo", newest_first=True, destroyed=False, offset=1, limit=2), ["b", "a"]),
        (LocateQuery("demo", object_type=KEY, newest_first=True, limit=2), ["e", "b"]),
        (LocateQuery("demo", state=ACTIVE, newest_first=True, offset=2), ["d"]),
        (LocateQuery("demo", name="shared", newest_first=True, destroyed=False), ["c", "b"]),
        (LocateQuery("demo", group="g1", newest_first=True, destroyed=True, limit=5), ["e"]),
        (LocateQuery("other", newest_first=True, destroyed=False, limit=16), ["z"]),
    ],
)
def test_locate(shared_url: str, query: LocateQuery, expected: list[str]) -> None:
    async def body(reg: Registry) -> None:
        await reg.put_objects(LOCATE_SET)
        assert await reg.locate(query) == expected
        # Located Items: every match, offset and limit aside, counted by the database
        every = await reg.locate(replace(query, offset=0, limit=None))
        assert await reg.locate_count(query) == len(every)
        assert expected == every[query.offset :][: query.limit]

    run(shared_url, body)


def test_locate_rejects_a_negative_offset_or_limit() -> None:
    for query in (LocateQuery("demo", offset=-1), LocateQuery("demo", limit=-1)):
        for dialect in ("sqlite", "postgresql"):
            with pytest.raises(InvalidField):
                locate_sql(query, dialect)


# -- audit ---------------------------------------------------------------------------
def test_audit_appends_and_reads_back_in_order(url: str) -> None:
    records = [
        AuditRecord(100.0 + i, f"spiffe://t/w{i}", "demo" if i % 2 else "other", "Get",
                    f"u{i}", "Success", "gw-1", f"c{i}", f"detail {i}")
        for i in range(6)
    ]  # fmt: skip
    records[3] = replace(records[3], time=50.0, uid=None, gateway=None, correlation_id=None)

    async def body(reg: Registry) -> None:
        for r in records:
            await reg.append_audit(r)
        assert await reg.audit() == records
        demo = [r for r in records if r.tenant == "demo"]
        assert await reg.audit("demo") == demo
        assert await reg.audit("demo", limit=2) == demo[-2:]
        assert await reg.audit(limit=0) == []
        assert await reg.audit(since=102.0) == [records[2], records[4], records[5]]
        assert await reg.audit("demo", since=102.0) == [records[5]]

    run(url, body)


# -- tenant keys ---------------------------------------------------------------------
def key(version: int, state: int = ACTIVE, sealed: bytes | None = b"", tenant: str = "demo",
        level: str = "L3") -> SealedKey:  # fmt: skip
    material = sealed if sealed != b"" else f"sealed {tenant} {level} {version}".encode()
    return SealedKey(tenant, level, version, state, material, created=1000.0 + version)


def test_keys_put_and_list(url: str) -> None:
    async def body(reg: Registry) -> None:
        await reg.put_key(key(1, level="L2"))
        await reg.put_key(key(1))
        await reg.put_keys([key(1, DEACTIVATED), key(2)])  # a rotation, atomically
        await reg.put_key(key(1, tenant="other"))
        assert await reg.keys("demo", "L3") == [key(1, DEACTIVATED), key(2)]
        assert await reg.keys("demo", "L2") == [key(1, level="L2")]
        assert await reg.keys("other", "L3") == [key(1, tenant="other")]
        assert await reg.keys("nobody", "L3") == []
        await reg.put_key(key(2))  # the same again: nothing changes
        await reg.put_key(key(1, DESTROYED, sealed=None))
        assert await reg.keys("demo", "L3") == [key(1, DESTROYED, sealed=None), key(2)]
        assert "sealed demo" not in repr(await reg.keys("demo", "L3"))

    run(url, body)


def test_key_material_is_never_replaced(url: str) -> None:
    async def body(reg: Registry) -> None:
        await reg.put_keys([key(1), key(2, DESTROYED, sealed=None)])
        with pytest.raises(RegistryConflict, match="other key material"):
            await reg.put_keys([key(3), key(1, sealed=b"another Core's rotation")])
        with pytest.raises(RegistryConflict, match="destroyed"):
            await reg.put_key(key(2))
        assert await reg.keys("demo", "L3") == [key(1), key(2, DESTROYED, sealed=None)]

    run(url, body)


def test_key_fingerprint_moves_with_any_change_or_is_not_needed(url: str) -> None:
    """A SQLite file is polled (another process's commit is not heard by
    ``subscribe``): its fingerprint changes with every stored key version at the
    levels asked for, whoever wrote it. PostgreSQL and an in-memory database
    hear every change, so there is nothing to poll: None."""

    async def body(reg: Registry) -> None:
        levels = ("L3", "L3LOG")
        await reg.put_key(key(1))
        first = await reg.key_fingerprint(levels)
        if not url.startswith("sqlite:") or url == "sqlite::memory:":
            assert first is None
            return
        assert first is not None and set(first) == {"demo"}
        await reg.put_key(key(1, level="L2"))  # a level not asked for
        assert await reg.key_fingerprint(levels) == first
        with sqlite3.connect(url.removeprefix("sqlite:")) as other:  # "another process"
            other.execute(
                "UPDATE keys SET state = ? WHERE tenant = 'demo' AND level = 'L3'", (DEACTIVATED,)
            )
        moved = await reg.key_fingerprint(levels)
        assert moved is not None and moved != first
        await reg.put_key(key(1, tenant="other", level="L3LOG"))
        assert set(await reg.key_fingerprint(levels) or {}) == {"demo", "other"}

    run(url, body)


# -- subscriptions -------------------------------------------------------------------
def test_subscribers_see_committed_changes_in_order(url: str) -> None:
    async def body(reg: Registry) -> None:
        inbox, late = Inbox(), Inbox()
        unsubscribe = await reg.subscribe(inbox)
        await reg.put_objects([obj("a"), obj("b")])  # inserts publish nothing
        rec = await reg.get_object("demo", "a")
        assert rec is not None
        await reg.update_object(replace(rec, state=ACTIVE))
        await reg.put_keys([key(1), key(2, PRE_ACTIVE)])
        rec_b = await reg.get_object("demo", "b")
        assert rec_b is not None
        await reg.update_object(replace(rec_b, state=DESTROYED))
        with pytest.raises(RegistryConflict):
            await reg.update_object(replace(rec_b, state=ACTIVE))  # failed: no event
        await reg.put_key(key(1))  # unchanged: no event
        await reg.put_key(key(2))
        assert await inbox.take(5) == [
            StateChange("demo", "a", ACTIVE, 1, seq=1),
            KeyChange("demo", "L3", 1, ACTIVE, seq=2),
            KeyChange("demo", "L3", 2, PRE_ACTIVE, seq=3),
            StateChange("demo", "b", DESTROYED, 1, seq=4),
            KeyChange("demo", "L3", 2, ACTIVE, seq=5),
        ]
        await reg.subscribe(late)
        unsubscribe()
        await reg.put_key(key(3))
        assert await late.take(1) == [KeyChange("demo", "L3", 3, ACTIVE, seq=6)]
        assert inbox.queue.empty()

    run(url, body)


def test_a_failing_subscriber_still_gets_the_next_change(url: str) -> None:
    async def body(reg: Registry) -> None:
        seen: list[Change] = []
        done = asyncio.Event()

        async def flaky(change: Change) -> None:
            seen.append(change)
            if len(seen) == 1:
                raise RuntimeError("subscriber bug")
            done.set()

        await reg.subscribe(flaky)
        await reg.put_keys([key(1)])
        await reg.put_keys([key(2)])
        await asyncio.wait_for(done.wait(), 2)
        assert [c.version for c in seen if isinstance(c, KeyChange)] == [1, 2]

    run(url, body)


# -- durability and lifecycle -----------------------------------------------------------
def test_data_survives_reopening(durable_url: str) -> None:
    rec = obj("a", names=("n",))

    async def first(reg: Registry) -> None:
        await reg.put_objects([rec])
        await reg.put_key(key(1))
        await reg.append_audit(AuditRecord(1.0, "id", "demo", "Create", "a", "Success"))

    async def second(reg: Registry) -> None:
        assert await reg.get_object("demo", "a") == rec
        assert await reg.locate(LocateQuery("demo", name="n")) == ["a"]
        assert await reg.keys("demo", "L3") == [key(1)]
        assert [r.uid for r in await reg.audit()] == ["a"]

    run(durable_url, first)
    run(durable_url, second)


def test_a_closed_registry_refuses_work(url: str) -> None:
    async def main() -> None:
        reg = await open_registry(url)
        await reg.close()
        await reg.close()
        with pytest.raises(StorageError, match="closed"):
            await reg.put_objects([obj("a")])

    asyncio.run(main())


def test_open_registry_rejects_unknown_urls_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as info:
        asyncio.run(open_registry("mysql://user:hunter2@db/krypton"))
    assert "hunter2" not in str(info.value)


# -- Locate does not scan --------------------------------------------------------------
# (query, the index that must find the rows, how objects must then be reached)
BY_UID = "USING INDEX sqlite_autoindex_objects_1 (uid=?)"
INDEXED = [
    (LocateQuery("t1", name="n7"), "object_names_tenant_name", BY_UID),
    (LocateQuery("t1", group="g7"), "object_groups_tenant_name", BY_UID),
    (LocateQuery("t1", custom=(("x-c", "7"),)), "object_custom_tenant_name_value", BY_UID),
    (LocateQuery("t1", name="n7", group="g7", state=ACTIVE), "object_names_tenant_name", BY_UID),
    (
        LocateQuery("t1", state=ACTIVE),
        "objects_tenant_state_order",
        "USING INDEX objects_tenant_state_order (tenant=? AND state=?)",
    ),
]

# A page of the usual Locate (newest first, destroyed left out, Maximum Items):
# the index walked in the answer's order, so LIMIT stops it (no sort of every
# match), and the count of Located Items from the index alone.
PAGE = LocateQuery("t1", newest_first=True, destroyed=False, limit=16)
ORDERED = [
    (replace(PAGE, object_type=KEY), "objects_tenant_type_order",
     "(tenant=? AND object_type=?)"),
    (PAGE, "objects_tenant_order", "(tenant=?)"),
    (replace(PAGE, state=ACTIVE), "objects_tenant_state_order", "(tenant=? AND state=?)"),
    (replace(PAGE, object_type=KEY, offset=500), "objects_tenant_type_order",
     "(tenant=? AND object_type=?)"),
]  # fmt: skip


def _many(n: int = 3000) -> list[ObjectRecord]:
    return [
        ObjectRecord(f"u{i}", f"t{i % 3}", KEY, 1 + i % 4, i, names=(f"n{i}",),
                     groups=(f"g{i % 500}",), custom=(("x-c", str(i % 100)),))
        for i in range(n)
    ]  # fmt: skip


async def _fill(reg: Registry) -> None:
    await reg.put_objects(_many())


def test_sqlite_locate_searches_an_index(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    run(f"sqlite:{path}", _fill)
    with sqlite3.connect(path) as db:
        for query, index, objects in INDEXED:
            sql, params = locate_sql(query, "sqlite")
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            assert any(step.startswith("SEARCH") and index in step for step in plan), plan
            assert f"SEARCH o {objects}" in plan, plan  # not every object of the tenant
            assert not any(step.startswith("SCAN") for step in plan), plan


def test_sqlite_locate_pages_in_index_order_and_counts_from_the_kept_counts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    run(f"sqlite:{path}", _fill)
    with sqlite3.connect(path) as db:
        for query, index, search in ORDERED:
            sql, params = locate_sql(query, "sqlite")
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            assert plan == [f"SEARCH o USING INDEX {index} {search}"], plan  # no TEMP B-TREE
            sql, params = locate_count_sql(query, "sqlite")
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            # Located Items from the kept counts (tests/unit/test_registry_counts.py)
            assert len(plan) == 1 and plan[0].startswith("SEARCH c USING PRIMARY KEY"), plan
        for query, index, _ in INDEXED[:4]:  # a side filter: COUNT(*) through its index
            sql, params = locate_count_sql(query, "sqlite")
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            assert any(index in step for step in plan), plan
            assert not any(step.startswith("SCAN") for step in plan), plan


def test_postgresql_locate_pages_in_index_order(pg: PgServer) -> None:
    url = pg.create_database()
    run(url, _fill)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("VACUUM ANALYZE")
        for query, index, _ in ORDERED:
            sql, params = locate_sql(query, "postgresql")
            plan = "\n".join(row[0] for row in db.execute(f"EXPLAIN {sql}", params))
            assert f"Index Scan Backward using {index} on objects" in plan, plan
            assert "Sort" not in plan and "Seq Scan" not in plan, plan


def test_postgresql_locate_uses_an_index(pg: PgServer) -> None:
    url = pg.create_database()
    run(url, _fill)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("ANALYZE")
        for query, index, _ in INDEXED:
            sql, params = locate_sql(query, "postgresql")
            plan = "\n".join(row[0] for row in db.execute(f"EXPLAIN {sql}", params))
            assert index in plan, plan
            assert "Seq Scan" not in plan, plan
            if query.name is not None:  # one row by name: objects is reached by its key
                assert "Index Scan using objects_pkey on objects" in plan, plan


# -- SQLite only -----------------------------------------------------------------------
def test_sqlite_commits_concurrent_writes_together_and_fails_only_the_bad_one(
    tmp_path: Path,
) -> None:
    from krypton.registry.sqlite import SqliteRegistry

    async def main() -> None:
        reg = SqliteRegistry.open(tmp_path / "registry.db")
        try:
            await reg.put_objects([obj("taken", "other")])
            before = reg.commits
            writes = [
                reg.append_audit(AuditRecord(float(i), "id", "demo", "Get", None, "Success"))
                for i in range(200)
            ]
            writes.append(reg.put_objects([obj("taken", "demo")]))
            results = await asyncio.gather(*writes, return_exceptions=True)
            assert [type(r) for r in results if r is not None] == [RegistryConflict]
            assert reg.commits - before < 50
            assert len(await reg.audit()) == 200
            assert await reg.get_object("demo", "taken") is None
        finally:
            await reg.close()

    asyncio.run(main())


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    run(f"sqlite:{path}", _noop)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StorageError, match="newer"):
        run(f"sqlite:{path}", _noop)


async def _noop(reg: Registry) -> None:
    return None


# -- PostgreSQL only -------------------------------------------------------------------
def test_postgresql_instances_see_each_others_changes(pg: PgServer) -> None:
    url = pg.create_database()

    async def main() -> None:
        one, two = await open_registry(url), await open_registry(url)
        try:
            inbox_one, inbox_two = Inbox(), Inbox()
            await one.subscribe(inbox_one)
            await two.subscribe(inbox_two)
            await one.put_objects([obj("a")])
            rec = await two.get_object("demo", "a")
            assert rec is not None
            started = time.monotonic()
            await one.update_object(replace(rec, state=ACTIVE))
            assert await inbox_two.take(1, timeout=1.0) == [
                StateChange("demo", "a", ACTIVE, 1, seq=1)
            ]
            assert time.monotonic() - started < 1.0
            await two.put_keys([key(1)])
            assert await inbox_one.take(2, timeout=1.0) == [
                StateChange("demo", "a", ACTIVE, 1, seq=1),
                KeyChange("demo", "L3", 1, ACTIVE, seq=2),
            ]
            assert await inbox_two.take(1, timeout=1.0) == [
                KeyChange("demo", "L3", 1, ACTIVE, seq=2)
            ]
            # The loser of a race between two instances hears about it.
            results = await asyncio.gather(
                one.update_object(replace(rec, state=DESTROYED)),
                two.put_keys([key(1, sealed=b"two's own L3 v1")]),
                return_exceptions=True,
            )
            assert [type(r) for r in results] == [RegistryConflict, RegistryConflict]
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())


def test_postgresql_listener_comes_back_after_losing_its_connection(pg: PgServer) -> None:
    url = pg.create_database()
    dbname = url.rsplit("/", 1)[1]

    def listeners(admin: psycopg.Connection[tuple[object, ...]]) -> list[int]:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query LIKE 'LISTEN%%'",
            (dbname,),
        ).fetchall()
        return [int(str(r[0])) for r in rows]

    async def main() -> None:
        one, two = await open_registry(url), await open_registry(url)
        try:
            inbox = Inbox()
            await two.subscribe(inbox)
            with psycopg.connect(pg.url(), autocommit=True) as admin:
                (pid,) = listeners(admin)
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                deadline = time.monotonic() + 10
                while listeners(admin) in ([], [pid]):
                    assert time.monotonic() < deadline, "the listener did not reconnect"
                    await asyncio.sleep(0.05)
            await one.put_key(key(1))
            assert await inbox.take(1) == [KeyChange("demo", "L3", 1, ACTIVE, seq=1)]
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())


def test_postgresql_errors_never_show_the_password(pg: PgServer) -> None:
    free = pg.port + 1 if pg.port < 65535 else pg.port - 1
    for dsn in (
        f"postgresql://krypton:Sup3rSecretPw@127.0.0.1:{free}/krypton?connect_timeout=2",
        "postgresql://krypton:Sup3rSecretPw@127.0.0.1:notaport/krypton",
        "postgresql://krypton:Sup3rSecretPw%zz@127.0.0.1/krypton",  # libpq quotes the bad token
        f"postgresql://krypton@127.0.0.1:{free}/krypton?password=Sup3rSecretPw&connect_timeout=2",
    ):
        with pytest.raises(StorageError) as info:
            asyncio.run(open_registry(dsn))
        text = str(info.value)
        assert "Sup3rSecretPw" not in text, text
        assert info.value.__cause__ is None and info.value.__suppress_context__
        assert text.startswith("registry open failed"), text


# -- the change feed ---------------------------------------------------------------
async def _bump(reg: Registry, uid: str, state: int, tenant: str = "demo") -> None:
    rec = await reg.get_object(tenant, uid)
    assert rec is not None
    await reg.update_object(replace(rec, state=state))


def test_every_change_gets_a_sequence_number_in_commit_order(url: str) -> None:
    async def main() -> None:
        reg = await open_registry(url)
        try:
            assert await reg.feed_bounds() == (0, 0)
            await reg.put_objects([obj("a"), obj("b"), obj("x", "other")])
            await _bump(reg, "a", ACTIVE)
            await reg.put_keys([key(1)])
            await _bump(reg, "x", ACTIVE, "other")
            await _bump(reg, "a", DESTROYED)
            feed = await reg.feed_since(["demo"], 0, 100)
            assert feed == [
                StateChange("demo", "a", ACTIVE, 1, seq=1),
                KeyChange("demo", "L3", 1, ACTIVE, seq=2),
                StateChange("demo", "a", DESTROYED, 2, seq=4),
            ]
            assert await reg.feed_since(["demo", "other"], 2, 1) == [
                StateChange("other", "x", ACTIVE, 1, seq=3)
            ]
            assert await reg.feed_since([], 0, 10) == []
            assert await reg.feed_bounds() == (0, 4)
            assert await reg.object_states("demo", ["a", "b", "x", "nope"]) == {
                "a": (DESTROYED, 2), "b": (1, 0),
            }
        finally:
            await reg.close()

    asyncio.run(main())


def test_the_feed_keeps_the_newest_changes_and_says_where_it_starts(url: str) -> None:
    async def main() -> None:
        reg = await open_registry(url, feed_retention=3)
        try:
            await reg.put_objects([obj(f"k{i}") for i in range(5)])
            for i in range(5):
                await _bump(reg, f"k{i}", ACTIVE)
            assert await reg.feed_bounds() == (2, 5)
            assert [c.seq for c in await reg.feed_since(["demo"], 0, 100)] == [3, 4, 5]
        finally:
            await reg.close()

    asyncio.run(main())


def test_the_feed_survives_reopening(durable_url: str) -> None:
    async def main() -> None:
        reg = await open_registry(durable_url)
        try:
            await reg.put_objects([obj("a")])
            await _bump(reg, "a", DEACTIVATED)
        finally:
            await reg.close()
        reg = await open_registry(durable_url)
        try:
            assert await reg.feed_since(["demo"], 0, 10) == [
                StateChange("demo", "a", DEACTIVATED, 1, seq=1)
            ]
            await _bump(reg, "a", DESTROYED)
            assert await reg.feed_bounds() == (0, 2)
        finally:
            await reg.close()

    asyncio.run(main())


def test_an_audit_record_commits_with_the_change_it_records(url: str) -> None:
    async def body(reg: Registry) -> None:
        await reg.put_objects([obj("a")])
        rec = await reg.get_object("demo", "a")
        assert rec is not None
        record = AuditRecord(time=1.0, identity="me", tenant="demo", operation="Activate",
                             uid="a", result="Success")
        await reg.update_object(replace(rec, state=ACTIVE), record)
        with pytest.raises(RegistryConflict):  # the stale write fails, its audit with it
            await reg.update_object(replace(rec, state=DESTROYED),
                                    replace(record, operation="Destroy"))
        assert await reg.audit("demo") == [record]
        assert [c.seq for c in await reg.feed_since(["demo"], 0, 10)] == [1]

    run(url, body)
