"""Attribute operations at the Core, in both dialects: Add, Modify, Delete, Set,
Get Attributes and Get Attribute List on registry objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.control_env import (
    V14,
    V21,
    Answer,
    Env,
    core_env,
    custom,
    date,
    group,
    name,
    uid_item,
)

from krypton.kmip.attributes import Attribute, to_v1
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.enums import Operation, ResultReason, State
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

R = ResultReason


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with core_env(tmp_path) as e:
        yield e


def desc(text: str) -> Attribute:
    return Attribute("Description", Item.text(Tag.DESCRIPTION, text))


def v1_attr(attr: Attribute, index: int | None = None) -> Item:
    item = to_v1(attr, with_index=index is not None)
    if index is None:
        return item
    return Item(
        item.tag,
        item.type,
        tuple(
            Item.integer(Tag.ATTRIBUTE_INDEX, index) if c.tag == Tag.ATTRIBUTE_INDEX else c
            for c in item.children
        ),
    )


def v2_attr(tag: int, attr: Attribute) -> Item:
    value = attr.value
    if attr.custom:
        vendor, _, attr_name = attr.name.partition("-")
        value = Item.structure(
            Tag.ATTRIBUTE,
            Item.text(Tag.VENDOR_IDENTIFICATION, vendor),
            Item.text(Tag.ATTRIBUTE_NAME, attr_name),
            Item(Tag.ATTRIBUTE_VALUE, attr.value.type, attr.value.value),
        )
    return Item.structure(tag, value)


def add(env: Env, uid: str, attr: Attribute, version: ProtocolVersion) -> Answer:
    body = v2_attr(Tag.NEW_ATTRIBUTE, attr) if version.v2 else v1_attr(attr)
    return env.run(Operation.ADD_ATTRIBUTE, uid_item(uid), body, version=version)


def values(env: Env, uid: str, tag: int) -> list[object]:
    return [i.value for i in env.attrs(uid).find_all(tag)]


def names_of(env: Env, uid: str) -> list[str | None]:
    out: list[str | None] = []
    for item in env.attrs(uid).find_all(Tag.NAME):
        v = item.find(Tag.NAME_VALUE)
        out.append(None if v is None else str(v.value))
    return out


# -- Add --------------------------------------------------------------------------------
def test_add_attribute_v1_echoes_the_attribute_with_its_index(env: Env) -> None:
    uid = env.register_key([name("first")])
    a = add(env, uid, name("second"), V14)
    assert a.ok, a.item
    echoed = a.payload.find(Tag.ATTRIBUTE)
    assert echoed == v1_attr(name("second"), 1)
    assert a.outcome is not None and a.outcome.changes[0].uid == uid
    a = add(env, uid, desc("hello"), V14)
    assert a.payload.find(Tag.ATTRIBUTE) == v1_attr(desc("hello"))
    assert names_of(env, uid) == ["first", "second"]
    assert env.record(uid).names == ("first", "second")
    indexed = env.run(Operation.ADD_ATTRIBUTE, uid_item(uid), v1_attr(group("g"), 0), version=V14)
    assert indexed.failed(R.INVALID_FIELD)


def test_add_attribute_v2_answers_only_the_identifier(env: Env) -> None:
    uid = env.register_key()
    a = add(env, uid, desc("opaque"), V21)
    assert a.ok
    assert [c.tag for c in a.payload.children] == [Tag.UNIQUE_IDENTIFIER]
    assert values(env, uid, Tag.DESCRIPTION) == ["opaque"]
    assert add(env, uid, desc("again"), V21).failed(R.ATTRIBUTE_SINGLE_VALUED)
    assert add(env, uid, desc("again"), V14).failed(R.ILLEGAL_OPERATION)
    assert values(env, uid, Tag.DESCRIPTION) == ["opaque"]


@pytest.mark.parametrize("version", [V14, V21], ids=str)
def test_read_only_attributes_are_refused(env: Env, version: ProtocolVersion) -> None:
    uid = env.register_key()
    read_only = R.ATTRIBUTE_READ_ONLY if version.v2 else R.PERMISSION_DENIED
    server_set = [
        Attribute("State", Item.enum(Tag.STATE, State.ACTIVE)),
        Attribute("Unique Identifier", Item.text(Tag.UNIQUE_IDENTIFIER, "mine")),
        Attribute("Initial Date", Item.datetime(Tag.INITIAL_DATE, 5)),
        Attribute("Last Change Date", Item.datetime(Tag.LAST_CHANGE_DATE, 5)),
        Attribute("Cryptographic Length", Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, 128)),
        Attribute("Cryptographic Usage Mask", Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, 4)),
        Attribute("y-server", Item.text(Tag.ATTRIBUTE_VALUE, "v")),
    ]
    for attr in server_set:
        assert add(env, uid, attr, version).failed(read_only), attr.name
        body = v2_attr(Tag.NEW_ATTRIBUTE, attr) if version.v2 else v1_attr(attr)
        modified = env.run(Operation.MODIFY_ATTRIBUTE, uid_item(uid), body, version=version)
        assert modified.failed(read_only), attr.name
        if version.v2:
            s = env.run(Operation.SET_ATTRIBUTE, uid_item(uid), body, version=version)
            assert s.failed(read_only), attr.name
    deleted = env.run(
        Operation.DELETE_ATTRIBUTE,
        uid_item(uid),
        Item.text(Tag.ATTRIBUTE_NAME, "Cryptographic Algorithm"),
        version=version,
    )
    assert deleted.failed(read_only)
    rec = env.record(uid)
    assert (rec.state, rec.length, rec.revision) == (State.PRE_ACTIVE, 256, 0)


def test_add_a_name_another_object_has(env: Env) -> None:
    env.register_key([name("taken")])
    uid = env.register_key([name("own")])
    assert add(env, uid, name("taken"), V21).failed(R.NON_UNIQUE_NAME_ATTRIBUTE)
    assert add(env, uid, name("own"), V21).failed(R.NON_UNIQUE_NAME_ATTRIBUTE)
    assert add(env, uid, name("taken"), V14).failed(R.ILLEGAL_OPERATION)
    env.register_key([name("elsewhere")], tenant="other")
    assert add(env, uid, name("elsewhere"), V21).ok


# -- Modify -----------------------------------------------------------------------------
def test_modify_v1_by_index(env: Env) -> None:
    uid = env.register_key([name("a"), name("b"), desc("d")])
    a = env.run(Operation.MODIFY_ATTRIBUTE, uid_item(uid), v1_attr(name("B"), 1), version=V14)
    assert a.ok, a.item
    assert a.payload.find(Tag.ATTRIBUTE) == v1_attr(name("B"), 1)
    assert names_of(env, uid) == ["a", "B"]
    assert env.record(uid).names == ("a", "B")
    a = env.run(Operation.MODIFY_ATTRIBUTE, uid_item(uid), v1_attr(desc("D")), version=V14)
    assert a.ok and a.payload.find(Tag.ATTRIBUTE) == v1_attr(desc("D"))
    missing = env.run(Operation.MODIFY_ATTRIBUTE, uid_item(uid), v1_attr(name("x"), 5), version=V14)
    assert missing.failed(R.ITEM_NOT_FOUND)
    absent = env.run(
        Operation.MODIFY_ATTRIBUTE,
        uid_item(uid),
        v1_attr(Attribute("Comment", Item.text(Tag.COMMENT, "c"))),
        version=V14,
    )
    assert absent.failed(R.INVALID_FIELD)


def test_modify_v2_by_current_value(env: Env) -> None:
    uid = env.register_key([name("a"), name("b")])
    a = env.run(
        Operation.MODIFY_ATTRIBUTE,
        uid_item(uid),
        v2_attr(Tag.CURRENT_ATTRIBUTE, name("b")),
        v2_attr(Tag.NEW_ATTRIBUTE, name("c")),
        version=V21,
    )
    assert a.ok, a.item
    assert [c.tag for c in a.payload.children] == [Tag.UNIQUE_IDENTIFIER]
    assert names_of(env, uid) == ["a", "c"]
    ambiguous = env.run(
        Operation.MODIFY_ATTRIBUTE,
        uid_item(uid),
        v2_attr(Tag.NEW_ATTRIBUTE, name("z")),
        version=V21,
    )
    assert ambiguous.failed(R.MULTI_VALUED_ATTRIBUTE)
    no_such = env.run(
        Operation.MODIFY_ATTRIBUTE,
        uid_item(uid),
        v2_attr(Tag.CURRENT_ATTRIBUTE, name("nope")),
        v2_attr(Tag.NEW_ATTRIBUTE, name("z")),
        version=V21,
    )
    assert no_such.failed(R.ATTRIBUTE_INSTANCE_NOT_FOUND)
    absent = env.run(
        Operation.MODIFY_ATTRIBUTE,
        uid_item(uid),
        v2_attr(Tag.NEW_ATTRIBUTE, desc("d")),
        version=V21,
    )
    assert absent.failed(R.ATTRIBUTE_NOT_FOUND)


@pytest.mark.parametrize("version", [V14, V21], ids=str)
def test_activation_date_moves_only_while_pre_active(env: Env, version: ProtocolVersion) -> None:
    future = env.now + 3600
    uid = env.register_key([date("Activation Date", Tag.ACTIVATION_DATE, future)])
    assert env.record(uid).state == State.PRE_ACTIVE

    def move(when: int) -> Answer:
        attr = date("Activation Date", Tag.ACTIVATION_DATE, when)
        body = v2_attr(Tag.NEW_ATTRIBUTE, attr) if version.v2 else v1_attr(attr)
        return env.run(Operation.MODIFY_ATTRIBUTE, uid_item(uid), body, version=version)

    a = move(env.now - 1)  # into the past: Pre-Active -> Active (KMIP 3.22, 4.)
    assert a.ok, a.item
    assert a.outcome is not None and a.outcome.changes[0].state == State.ACTIVE
    assert env.record(uid).state == State.ACTIVE
    later = move(env.now + 10)
    assert later.failed(R.WRONG_KEY_LIFECYCLE_STATE if version.v2 else R.PERMISSION_DENIED)


def test_deactivation_date_in_the_past_deactivates(env: Env) -> None:
    uid = env.register_key([date("Activation Date", Tag.ACTIVATION_DATE, env.now - 10)])
    attr = date("Deactivation Date", Tag.DEACTIVATION_DATE, env.now)
    a = env.run(
        Operation.SET_ATTRIBUTE, uid_item(uid), v2_attr(Tag.NEW_ATTRIBUTE, attr), version=V21
    )
    assert a.ok, a.item
    assert env.record(uid).state == State.DEACTIVATED


# -- Set --------------------------------------------------------------------------------
def test_set_attribute_adds_or_replaces_one_instance(env: Env) -> None:
    uid = env.register_key([group("g1"), group("g2")])

    def set_(attr: Attribute) -> Answer:
        return env.run(
            Operation.SET_ATTRIBUTE, uid_item(uid), v2_attr(Tag.NEW_ATTRIBUTE, attr), version=V21
        )

    assert set_(desc("one")).ok
    assert set_(desc("two")).ok
    assert values(env, uid, Tag.DESCRIPTION) == ["two"]
    assert set_(group("g3")).failed(R.MULTI_VALUED_ATTRIBUTE)
    assert set_(custom("x-owner", "alice")).ok
    assert set_(custom("x-owner", "bob")).ok
    assert env.record(uid).custom == (("x-owner", "bob"),)
    wrong_type = Attribute("Description", Item.integer(Tag.DESCRIPTION, 5))
    assert set_(wrong_type).failed(R.INVALID_ATTRIBUTE_VALUE)


# -- Delete -----------------------------------------------------------------------------
def test_delete_v1_by_name_and_index(env: Env) -> None:
    uid = env.register_key([group("g0"), group("g1"), group("g2"), desc("d")])
    a = env.run(
        Operation.DELETE_ATTRIBUTE,
        uid_item(uid),
        Item.text(Tag.ATTRIBUTE_NAME, "Object Group"),
        Item.integer(Tag.ATTRIBUTE_INDEX, 1),
        version=V14,
    )
    assert a.ok, a.item
    assert a.payload.find(Tag.ATTRIBUTE) == v1_attr(group("g1"), 1)
    assert env.record(uid).groups == ("g0", "g2")
    gone = env.run(
        Operation.DELETE_ATTRIBUTE,
        uid_item(uid),
        Item.text(Tag.ATTRIBUTE_NAME, "Object Group"),
        Item.integer(Tag.ATTRIBUTE_INDEX, 7),
        version=V14,
    )
    assert gone.failed(R.ITEM_NOT_FOUND)
    a = env.run(
        Operation.DELETE_ATTRIBUTE,
        uid_item(uid),
        Item.text(Tag.ATTRIBUTE_NAME, "Description"),
        version=V14,
    )
    assert a.ok and a.payload.find(Tag.ATTRIBUTE) == v1_attr(desc("d"))
    again = env.run(
        Operation.DELETE_ATTRIBUTE,
        uid_item(uid),
        Item.text(Tag.ATTRIBUTE_NAME, "Description"),
        version=V14,
    )
    assert again.failed(R.ITEM_NOT_FOUND)


def test_delete_v2_by_value_or_reference(env: Env) -> None:
    uid = env.register_key(
        [group("g0"), group("g1"), custom("x-tag", "t1"), custom("x-tag", "t2"), name("n")]
    )
    a = env.run(
        Operation.DELETE_ATTRIBUTE,
        uid_item(uid),
        v2_attr(Tag.CURRENT_ATTRIBUTE, group("g1")),
        version=V21,
    )
    assert a.ok, a.item
    assert [c.tag for c in a.payload.children] == [Tag.UNIQUE_IDENTIFIER]
    assert env.record(uid).groups == ("g0",)
    every = Item.structure(
        Tag.ATTRIBUTE_REFERENCE,
        Item.text(Tag.VENDOR_IDENTIFICATION, "x"),
        Item.text(Tag.ATTRIBUTE_NAME, "tag"),
    )
    assert env.run(Operation.DELETE_ATTRIBUTE, uid_item(uid), every, version=V21).ok
    assert env.record(uid).custom == ()
    by_tag = Item.enum(Tag.ATTRIBUTE_REFERENCE, Tag.NAME)
    assert env.run(Operation.DELETE_ATTRIBUTE, uid_item(uid), by_tag, version=V21).ok
    assert env.record(uid).names == ()
    absent = env.run(Operation.DELETE_ATTRIBUTE, uid_item(uid), by_tag, version=V21)
    assert absent.failed(R.ATTRIBUTE_NOT_FOUND)
    not_there = env.run(
        Operation.DELETE_ATTRIBUTE,
        uid_item(uid),
        v2_attr(Tag.CURRENT_ATTRIBUTE, group("zz")),
        version=V21,
    )
    assert not_there.failed(R.ATTRIBUTE_INSTANCE_NOT_FOUND)
    activation = Item.enum(Tag.ATTRIBUTE_REFERENCE, Tag.ACTIVATION_DATE)
    required = env.run(Operation.DELETE_ATTRIBUTE, uid_item(uid), activation, version=V21)
    assert required.failed(R.ATTRIBUTE_READ_ONLY)


# -- Get Attributes / Get Attribute List -------------------------------------------------
def test_get_attributes_in_both_dialects(env: Env) -> None:
    uid = env.register_key([name("a"), name("b"), custom("x-env", "prod")])
    v1 = env.run(
        Operation.GET_ATTRIBUTES,
        uid_item(uid),
        Item.text(Tag.ATTRIBUTE_NAME, "State"),
        Item.text(Tag.ATTRIBUTE_NAME, "Name"),
        Item.text(Tag.ATTRIBUTE_NAME, "x-env"),
        Item.text(Tag.ATTRIBUTE_NAME, "Deactivation Date"),
        version=V14,
    )
    assert v1.ok, v1.item
    assert list(v1.payload.children) == [
        uid_item(uid),
        v1_attr(Attribute("State", Item.enum(Tag.STATE, State.PRE_ACTIVE))),
        v1_attr(name("a")),
        v1_attr(name("b"), 1),
        v1_attr(custom("x-env", "prod")),
    ]
    v2 = env.run(
        Operation.GET_ATTRIBUTES,
        uid_item(uid),
        Item.enum(Tag.ATTRIBUTE_REFERENCE, Tag.CRYPTOGRAPHIC_LENGTH),
        Item.structure(
            Tag.ATTRIBUTE_REFERENCE,
            Item.text(Tag.VENDOR_IDENTIFICATION, "x"),
            Item.text(Tag.ATTRIBUTE_NAME, "env"),
        ),
        version=V21,
    )
    assert v2.ok, v2.item
    assert list(v2.payload.children) == [
        uid_item(uid),
        Item.structure(
            Tag.ATTRIBUTES,
            Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, 256),
            v2_attr(Tag.ATTRIBUTE, custom("x-env", "prod")).children[0],
        ),
    ]
    dup = env.run(
        Operation.GET_ATTRIBUTES,
        uid_item(uid),
        Item.text(Tag.ATTRIBUTE_NAME, "State"),
        Item.text(Tag.ATTRIBUTE_NAME, "State"),
    )
    assert dup.failed(R.INVALID_MESSAGE)


def test_get_attribute_list_in_both_dialects(env: Env) -> None:
    uid = env.register_key([name("a"), name("b"), custom("x-env", "prod")])
    v1 = env.run(Operation.GET_ATTRIBUTE_LIST, uid_item(uid), version=V14)
    listed = [c.value for c in v1.payload.children if c.tag == Tag.ATTRIBUTE_NAME]
    assert listed[:6] == [
        "Unique Identifier",
        "Object Type",
        "Cryptographic Algorithm",
        "Cryptographic Length",
        "State",
        "Initial Date",
    ]
    assert {"Name", "x-env", "Last Change Date"} <= set(listed)
    assert listed.count("Name") == 1
    v2 = env.run(Operation.GET_ATTRIBUTE_LIST, uid_item(uid), version=V21)
    refs = [c for c in v2.payload.children if c.tag == Tag.ATTRIBUTE_REFERENCE]
    assert Item.enum(Tag.ATTRIBUTE_REFERENCE, Tag.STATE) in refs
    assert any(r.type is ItemType.STRUCTURE for r in refs)
    # 2.x also names the attributes KMIP 2.0 added (a 1.4 client has no name for them).
    only_v2 = {Tag.SHORT_UNIQUE_IDENTIFIER, Tag.KEY_FORMAT_TYPE, Tag.PROTECTION_STORAGE_MASK}
    assert {r.value for r in refs} >= only_v2
    assert len(refs) == len(listed) + len(only_v2)
