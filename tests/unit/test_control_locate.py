"""Locate at the Core: each filter, combinations, paging, storage status, both dialects."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import pytest
from tests.helpers.control_env import (
    V10,
    V12,
    V14,
    V21,
    Answer,
    Env,
    attributes_item,
    core_env,
    custom,
    date,
    group,
    name,
    uid_item,
)

from krypton.core.engine.locate import locate as core_locate
from krypton.kmip.attributes import Attribute, attributes_v2, to_v1
from krypton.kmip.versions import ProtocolVersion
from krypton.model import LocateQuery, ObjectRecord, Registry
from krypton.ttlv.enums import (
    CryptographicUsageMask,
    ObjectType,
    Operation,
    ResultReason,
    State,
    StorageStatusMask,
)
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

ENC = CryptographicUsageMask.ENCRYPT
DEC = CryptographicUsageMask.DECRYPT


def usage(mask: int) -> Attribute:
    return Attribute("Cryptographic Usage Mask", Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, mask))


def object_type(t: ObjectType) -> Attribute:
    return Attribute("Object Type", Item.enum(Tag.OBJECT_TYPE, t))


def state(s: State) -> Attribute:
    return Attribute("State", Item.enum(Tag.STATE, s))


def length(bits: int) -> Attribute:
    return Attribute("Cryptographic Length", Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, bits))


@dataclass
class World:
    env: Env
    k1: str  # oldest
    k2: str
    k3: str
    k4: str  # destroyed
    secret: str  # newest


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with core_env(tmp_path) as env:
        k1 = env.register_key(
            [name("alpha"), group("payments"), custom("x-env", "prod"), usage(ENC | DEC)]
        )
        env.now += 1
        k2 = env.register_key(
            [name("beta"), group("payments"), custom("x-env", "test"), usage(ENC)],
            key=bytes(16),
        )
        env.now += 1
        k3 = env.register_key(
            [
                name("gamma"),
                group("ledger"),
                custom("x-env", "prod"),
                date("Activation Date", Tag.ACTIVATION_DATE, env.now - 5),
            ]
        )
        env.now += 1
        k4 = env.register_key([name("delta"), group("payments")])
        assert env.run(Operation.DESTROY, uid_item(k4)).ok
        env.now += 1
        a = env.run(
            Operation.REGISTER,
            Item.enum(Tag.OBJECT_TYPE, ObjectType.SECRET_DATA),
            attributes_item(V21, [name("secret"), group("payments")]),
            Item.structure(
                Tag.SECRET_DATA,
                Item.enum(Tag.SECRET_DATA_TYPE, 2),
                Item.structure(
                    Tag.KEY_BLOCK,
                    Item.enum(Tag.KEY_FORMAT_TYPE, 2),
                    Item.structure(Tag.KEY_VALUE, Item.bytes_(Tag.KEY_MATERIAL, b"seed")),
                ),
            ),
            version=V21,
        )
        assert a.ok, a.item
        env.register_key([name("alpha-other"), group("payments")], tenant="other")
        yield World(env, k1, k2, k3, k4, a.uid)


def locate(
    w: World, attrs: list[Attribute], *extra: Item, version: ProtocolVersion = V21
) -> Answer:
    if version.v2:
        body: tuple[Item, ...] = (attributes_v2(attrs),)
    else:
        body = tuple(to_v1(a) for a in attrs)
    a = w.env.run(Operation.LOCATE, *extra, *body, version=version)
    assert a.ok, a.item
    return a


@pytest.mark.parametrize("version", [V12, V14, V21], ids=str)
def test_each_indexed_filter(world: World, version: ProtocolVersion) -> None:
    w = world

    def found(*attrs: Attribute) -> list[str]:
        return locate(w, list(attrs), version=version).uids

    assert found() == [w.secret, w.k3, w.k2, w.k1]  # newest first, destroyed left out
    assert found(name("beta")) == [w.k2]
    assert found(name("delta")) == []
    assert found(group("payments")) == [w.secret, w.k2, w.k1]
    assert found(object_type(ObjectType.SECRET_DATA)) == [w.secret]
    assert found(object_type(ObjectType.SYMMETRIC_KEY)) == [w.k3, w.k2, w.k1]
    assert found(state(State.ACTIVE)) == [w.k3]
    assert found(state(State.PRE_ACTIVE)) == [w.secret, w.k2, w.k1]
    assert found(custom("x-env", "prod")) == [w.k3, w.k1]
    assert found(custom("x-env", "prod"), group("payments")) == [w.k1]
    assert found(group("payments"), object_type(ObjectType.SYMMETRIC_KEY)) == [w.k2, w.k1]
    assert found(name("alpha-other")) == []  # another tenant's


def test_filters_matched_on_the_record(world: World) -> None:
    w = world

    def found(*attrs: Attribute) -> list[str]:
        return locate(w, list(attrs)).uids

    assert found(length(128)) == [w.k2]
    assert found(length(256), group("payments")) == [w.k1]
    algorithm = Attribute("Cryptographic Algorithm", Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, 3))
    assert found(algorithm) == [w.k3, w.k2, w.k1]
    assert found(usage(ENC)) == [w.k2, w.k1]
    assert found(usage(ENC | DEC)) == [w.k1]
    assert found(name("alpha"), name("beta")) == []
    partial = Attribute("Name", Item.structure(Tag.NAME, Item.enum(Tag.NAME_TYPE, 1)))
    assert found(partial, group("ledger")) == [w.k3]
    initial = [
        date("Initial Date", Tag.INITIAL_DATE, w.env.now - 4),
        date("Initial Date", Tag.INITIAL_DATE, w.env.now - 3),
    ]
    assert found(*initial) == [w.k2, w.k1]
    assert found(date("Initial Date", Tag.INITIAL_DATE, w.env.now - 2)) == [w.k3]


def test_paging_and_located_items(world: World) -> None:
    w = world
    everything = [w.secret, w.k3, w.k2, w.k1]
    maximum = Item.integer(Tag.MAXIMUM_ITEMS, 2)
    a = locate(w, [], maximum)
    assert a.uids == everything[:2]
    assert a.payload.children[0] == Item.integer(Tag.LOCATED_ITEMS, 4)
    a = locate(w, [], maximum, Item.integer(Tag.OFFSET_ITEMS, 3))
    assert a.uids == everything[3:]
    assert a.outcome is not None and a.outcome.uid == w.k1  # one answer: the ID Placeholder
    a = locate(w, [], Item.integer(Tag.OFFSET_ITEMS, 1), version=V14)
    assert a.uids == everything[1:]
    assert a.payload.find(Tag.LOCATED_ITEMS) == Item.integer(Tag.LOCATED_ITEMS, 4)
    a = locate(w, [], maximum, version=V12)  # before 1.3 there is no Located Items
    assert a.payload.find(Tag.LOCATED_ITEMS) is None and len(a.uids) == 2
    a = locate(w, [])
    assert a.payload.find(Tag.LOCATED_ITEMS) is None
    assert a.outcome is not None and a.outcome.uid is None
    bad = w.env.run(Operation.LOCATE, Item.integer(Tag.MAXIMUM_ITEMS, -1), version=V21)
    assert bad.failed(ResultReason.INVALID_FIELD)


def test_paging_with_a_filter_matched_on_the_records(world: World) -> None:
    w = world
    aes = Attribute("Cryptographic Algorithm", Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, 3))
    a = locate(w, [aes], Item.integer(Tag.MAXIMUM_ITEMS, 1), Item.integer(Tag.OFFSET_ITEMS, 1))
    assert a.uids == [w.k2]
    assert a.payload.children[0] == Item.integer(Tag.LOCATED_ITEMS, 3)
    a = locate(w, [aes, group("payments")], Item.integer(Tag.OFFSET_ITEMS, 1), version=V14)
    assert a.uids == [w.k1]
    assert a.payload.find(Tag.LOCATED_ITEMS) == Item.integer(Tag.LOCATED_ITEMS, 2)


class Reads:
    """The registry, noting what a Locate asks of it."""

    def __init__(self, inner: Registry) -> None:
        self.inner = inner
        self.asked: list[tuple[str, LocateQuery | str]] = []

    async def locate(self, query: LocateQuery) -> list[str]:
        self.asked.append(("locate", query))
        return await self.inner.locate(query)

    async def locate_count(self, query: LocateQuery) -> int:
        self.asked.append(("count", query))
        return await self.inner.locate_count(query)

    async def get_object(self, tenant: str, uid: str) -> ObjectRecord | None:
        self.asked.append(("get", uid))
        return await self.inner.get_object(tenant, uid)


def test_an_indexed_locate_reads_one_page_and_a_count(world: World) -> None:
    """Issue 16: the registry answers the page (order, Offset Items, Maximum Items,
    the Storage Status Mask) and counts Located Items; no record is read."""
    w = world
    reads = Reads(w.env.svc.registry)
    ctx = w.env.ctx(V21)
    payload = Item.structure(
        Tag.REQUEST_PAYLOAD, Item.integer(Tag.MAXIMUM_ITEMS, 2), Item.integer(Tag.OFFSET_ITEMS, 1),
        attributes_v2([object_type(ObjectType.SYMMETRIC_KEY)]),
    )  # fmt: skip
    svc = replace(w.env.svc, registry=cast(Registry, reads))
    outcome = w.env.wait(core_locate(svc, ctx, payload))
    assert outcome.payload is not None
    assert [c.value for c in outcome.payload.children] == [3, w.k2, w.k1]
    query = LocateQuery("demo", object_type=ObjectType.SYMMETRIC_KEY, destroyed=False,
                        newest_first=True)
    assert reads.asked == [("locate", replace(query, offset=1, limit=2)), ("count", query)]


@pytest.mark.parametrize("as_enum", [False, True])
def test_storage_status_mask(world: World, as_enum: bool) -> None:
    w = world

    def mask(bits: int) -> Item:
        return (
            Item.enum(Tag.STORAGE_STATUS_MASK, bits)
            if as_enum
            else Item.integer(Tag.STORAGE_STATUS_MASK, bits)
        )

    online = StorageStatusMask.ON_LINE_STORAGE
    destroyed = StorageStatusMask.DESTROYED_STORAGE
    assert locate(w, [group("payments")], mask(online)).uids == [w.secret, w.k2, w.k1]
    assert locate(w, [group("payments")], mask(online | destroyed)).uids == [
        w.secret,
        w.k4,
        w.k2,
        w.k1,
    ]
    assert locate(w, [], mask(destroyed)).uids == [w.k4]
    assert locate(w, [state(State.DESTROYED)]).uids == []
    assert locate(w, [state(State.DESTROYED)], mask(destroyed)).uids == [w.k4]
    archived = StorageStatusMask.ARCHIVAL_STORAGE
    assert locate(w, [], mask(online | archived)).uids == [w.secret, w.k3, w.k2, w.k1]
    assert locate(w, [], mask(destroyed | archived)).uids == [w.k4]
    assert locate(w, [], mask(archived)).uids == [w.secret, w.k3, w.k2, w.k1]  # as before


def test_one_match_sets_the_id_placeholder(world: World) -> None:
    a = locate(world, [name("gamma")], version=V10)
    assert a.uids == [world.k3]
    assert a.outcome is not None and a.outcome.uid == world.k3
    activated = world.env.run(Operation.ACTIVATE, placeholder=a.outcome.uid, version=V10)
    assert activated.failed(ResultReason.PERMISSION_DENIED)  # k3 is already Active


def test_unknown_attributes_are_invalid_fields(world: World) -> None:
    bogus = Item.structure(
        Tag.ATTRIBUTE,
        Item.text(Tag.ATTRIBUTE_NAME, "Not An Attribute"),
        Item.text(Tag.ATTRIBUTE_VALUE, "x"),
    )
    a = world.env.run(Operation.LOCATE, bogus, version=V14)
    assert a.failed(ResultReason.INVALID_FIELD)
