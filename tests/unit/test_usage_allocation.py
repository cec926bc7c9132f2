"""Get Usage Allocation at the Core (KMIP 1.4 §4.18, §11.19): the one counter of a key's
Usage Limits, taken under the registry's compare-and-set, refused when it runs out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.control_env import V14, V21, Env, core_env, date, uid_item

from krypton.core.engine.control import CONTROL_HANDLERS
from krypton.kmip.attributes import Attribute, parse_attributes
from krypton.ttlv.codec import decode
from krypton.ttlv.enums import Operation, ResultReason, State, UsageLimitsUnit
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

R = ResultReason
OP = Operation.GET_USAGE_ALLOCATION


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with core_env(tmp_path) as e:
        yield e


def limits(total: int, unit: int = UsageLimitsUnit.BYTE, count: int | None = None) -> Attribute:
    fields = [Item(Tag.USAGE_LIMITS_TOTAL, ItemType.LONG_INTEGER, total)]
    if count is not None:
        fields.append(Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, count))
    fields.append(Item.enum(Tag.USAGE_LIMITS_UNIT, unit))
    return Attribute("Usage Limits", Item.structure(Tag.USAGE_LIMITS, *fields))


def units(n: int) -> Item:
    return Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, n)


def left(env: Env, uid: str) -> int | None:
    for a in parse_attributes(decode(env.record(uid).attributes)):
        if a.name == "Usage Limits":
            count = a.value.find(Tag.USAGE_LIMITS_COUNT)
            return None if count is None else int(count.value)  # type: ignore[arg-type]
    return None


def active_key(env: Env, *attrs: Attribute) -> str:
    return env.register_key([date("Activation Date", Tag.ACTIVATION_DATE, env.now - 60), *attrs])


def test_allocations_count_down_to_refusal(env: Env) -> None:
    uid = active_key(env, limits(100))
    assert left(env, uid) is None  # never allocated: all of the Total is left
    a = env.run(OP, uid_item(uid), units(60))
    assert a.ok and a.uid == uid
    assert a.outcome is not None and [c.uid for c in a.outcome.changes] == [uid]
    assert left(env, uid) == 40
    assert env.run(OP, uid_item(uid), units(41)).failed(R.PERMISSION_DENIED)
    assert env.run(OP, uid_item(uid), units(41), version=V21).failed(R.PERMISSION_DENIED)
    assert left(env, uid) == 40
    assert env.run(OP, uid_item(uid), units(40)).ok
    assert left(env, uid) == 0
    assert env.run(OP, uid_item(uid), units(1)).failed(R.PERMISSION_DENIED)
    assert OP in CONTROL_HANDLERS


def test_object_units_and_placeholder(env: Env) -> None:
    uid = active_key(env, limits(2, UsageLimitsUnit.OBJECT))
    assert env.run(OP, units(1), placeholder=uid).ok
    assert env.run(OP, units(1), placeholder=uid).ok
    assert env.run(OP, units(1), placeholder=uid).failed(R.PERMISSION_DENIED)


def test_refusals(env: Env) -> None:
    plain = active_key(env)
    assert env.run(OP, uid_item(plain), units(1)).failed(R.ILLEGAL_OPERATION)  # no Usage Limits
    limited = active_key(env, limits(10))
    assert env.run(OP, uid_item(limited)).failed(R.INVALID_MESSAGE)  # no Usage Limits Count
    assert env.run(OP, uid_item(limited), units(0)).failed(R.INVALID_FIELD)
    pre = env.register_key([limits(10)])
    assert env.record(pre).state == State.PRE_ACTIVE
    assert env.run(OP, uid_item(pre), units(1)).failed(R.PERMISSION_DENIED)
    assert env.run(OP, uid_item(pre), units(1), version=V21).failed(R.WRONG_KEY_LIFECYCLE_STATE)
    stopped = active_key(env, limits(10), date("Protect Stop Date", Tag.PROTECT_STOP_DATE, 1))
    assert env.run(OP, uid_item(stopped), units(1)).failed(R.PERMISSION_DENIED)
    assert env.run(OP, uid_item(limited), units(1), tenant="other").failed(R.ITEM_NOT_FOUND)
    assert env.run(OP, uid_item(limited), units(1), version=V14).ok
