"""The Create fast path against the generic path: the same response and the same
stored record, or no answer at all.

Two dispatchers, one with the fast path and one without, each over its own
vault, share a key ring and a fixed clock; for each request both are given the
same identifier and the same "entropy" (``os.urandom`` replaced by a seeded
stream while a request runs, so the key and the wrap nonce repeat). Whatever
the fast path answers must be byte-identical to the generic answer and leave a
byte-identical record; whatever it declines must leave nothing behind and still
be answered identically by the generic path.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.fastpath import (
    NOW,
    V14,
    V21,
    Twins,
    create_request,
    mutate,
    twins,
)
from tests.helpers.fastpath import aes_attrs as _attrs
from tests.helpers.fastpath import session as _session

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import generate_key
from krypton.gateway.engine.dispatch import Dispatcher
from krypton.gateway.engine.services import Services
from krypton.gateway.fast import fastcreate
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute, to_v1
from krypton.kmip.versions import SUPPORTED, ProtocolVersion
from krypton.ttlv.codec import Limits, decode, encode
from krypton.ttlv.enums import CryptographicAlgorithm, ObjectType, Operation, ResultStatus
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.vault.sqlite import Vault

Env = Twins


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with twins(Path(tmp_path_factory.mktemp("fastcreate"))) as e:
        yield e


PLAIN = [
    dict(version=v, batch_id=bid, usage=usage, max_response_size=mrs, time_stamp=ts)
    for v, bid, usage, (mrs, ts) in itertools.product(
        SUPPORTED,
        (None, b"", b"\x01", b"12345678", bytes(range(13))),
        (True, False),
        ((None, False), (1 << 20, True)),
    )
]


def _assert_same(env: Env, frame: bytes, monkeypatch: pytest.MonkeyPatch, *, stored: bool) -> bytes:
    fast, slow, fast_rec, slow_rec = env.both(frame, _session(), monkeypatch)
    assert fast == slow
    assert fast_rec == slow_rec
    assert (fast_rec is not None) == stored  # records compare every field, wrapped included
    return fast


@pytest.mark.parametrize("length", [128, 192, 256])
def test_plain_creates_take_the_fast_path_and_match_byte_for_byte(
    env: Env, length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for options in PLAIN:
        usage = bool(options.pop("usage"))
        frame = create_request(_attrs(length, usage), **options)  # type: ignore[arg-type]
        options["usage"] = usage
        assert fastcreate.scan(frame) is not None, options
        out = _assert_same(env, frame, monkeypatch, stored=True)
        r = cm.parse_response(decode(out))
        assert r.items[0].status is ResultStatus.SUCCESS, options
        assert r.items[0].payload is not None
        assert cm.unique_identifier(r.items[0].payload) == env.uid


def test_the_fast_path_itself_answers(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the generic path behind it: fastcreate.answer gives the bytes on its own."""
    frame = create_request(_attrs(256, True), batch_id=b"b1")
    env.uid = "direct-1"
    monkeypatch.setattr(os, "urandom", random.Random("direct").randbytes)
    svc = env.fast.services
    direct = env.loop.run_until_complete(
        fastcreate.FastCreate().answer(svc, _session().grant, frame, NOW)
    )
    monkeypatch.undo()
    assert direct is not None
    assert cm.unique_identifier(cm.parse_response(decode(direct)).items[0].payload) == "direct-1"  # type: ignore[arg-type]
    assert env.fast_vault.get("direct-1") is not None


@pytest.mark.parametrize("version", [V14, V21])
@pytest.mark.parametrize("dialect", ["v1", "v2"])
def test_either_dialect_in_either_version(
    env: Env, version: ProtocolVersion, dialect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = create_request(_attrs(256, True), version=version, dialect=dialect)
    assert fastcreate.scan(frame) is not None
    _assert_same(env, frame, monkeypatch, stored=True)


def test_triple_des_keys_match_too(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = create_request(_attrs(192, True, CryptographicAlgorithm.DES3))
    assert fastcreate.scan(frame) is not None
    _assert_same(env, frame, monkeypatch, stored=True)


def _with(attrs: list[Attribute], *extra: Attribute) -> list[Attribute]:
    return [*attrs, *extra]


NAME = Attribute(
    "Name",
    Item.structure(
        Tag.NAME,
        Item.text(Tag.NAME_VALUE, "k1"),
        Item.enum(Tag.NAME_TYPE, 1),
    ),
)
DECLINED: list[tuple[str, dict[str, object], bool]] = [
    ("RSA is not made here", {"attrs": _attrs(256, True, CryptographicAlgorithm.RSA)}, False),
    ("AES-100", {"attrs": _attrs(100, True)}, False),
    ("no length", {"attrs": _attrs(256, True)[:1]}, False),
    ("no algorithm", {"attrs": _attrs(256, True)[1:]}, False),
    ("a Name too", {"attrs": _with(_attrs(256, True), NAME)}, True),
    (
        "an Activation Date",
        {
            "attrs": _with(
                _attrs(256, True),
                Attribute("Activation Date", Item.datetime(Tag.ACTIVATION_DATE, NOW - 10)),
            )
        },
        True,
    ),
    ("twice the length", {"attrs": _with(_attrs(256, True), _attrs(128, True)[1])}, False),
    (
        "length as a Long Integer",
        {
            "attrs": [
                _attrs(256, True)[0],
                Attribute(
                    "Cryptographic Length",
                    Item(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.LONG_INTEGER, 256),
                ),
            ]
        },
        False,
    ),
    ("Secret Data", {"object_type": ObjectType.SECRET_DATA}, False),
    ("response too large", {"max_response_size": 60}, True),  # made, then refused
    ("a later minor", {"version": ProtocolVersion(1, 9)}, True),
    ("an unknown major", {"version": ProtocolVersion(3, 0)}, False),
    ("batch count mismatch", {"batch_count": 2}, False),
]


@pytest.mark.parametrize(("why", "options", "stored"), DECLINED, ids=[d[0] for d in DECLINED])
def test_declined_requests_get_the_generic_answer(
    env: Env, why: str, options: dict[str, object], stored: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = dict(options)
    attrs = opts.pop("attrs", _attrs(256, True))
    frame = create_request(attrs, **opts)  # type: ignore[arg-type]
    env.uid = f"declined-{why}"
    grant = _session().grant
    assert (
        env.loop.run_until_complete(
            fastcreate.FastCreate().answer(env.fast.services, grant, frame, NOW)
        )
        is None
    ), why
    assert env.fast_vault.get(env.uid) is None, why  # declining leaves nothing behind
    _assert_same(env, frame, monkeypatch, stored=stored)


def test_an_attribute_index_or_a_respelled_name_is_declined(env: Env) -> None:
    frame = create_request(_attrs(256, True))
    assert fastcreate.scan(frame) is not None
    indexed = bytearray(frame)
    # the same Attribute with "Cryptographic length" (lower-case l): not the exact bytes
    at = bytes(indexed).index(b"Cryptographic Length")
    indexed[at + 14] = ord("l")
    assert fastcreate.scan(bytes(indexed)) is None
    with_index = Item(
        Tag.TEMPLATE_ATTRIBUTE,
        ItemType.STRUCTURE,
        tuple(to_v1(a, with_index=True) for a in _attrs(256, True)),
    )
    item = cm.batch_item(
        Operation.CREATE,
        cm.payload(Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY), with_index),
    )
    assert fastcreate.scan(encode(cm.request_message(V14, [item]))) is None


def test_a_grant_without_create_or_a_tenant_without_l3_is_left_to_the_generic_path(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = create_request(_attrs(256, True))
    for session in (_session(operations=frozenset({Operation.GET})), _session("nol3")):
        env.uid = f"refused-{session.grant.tenant}"
        assert (
            env.loop.run_until_complete(
                fastcreate.FastCreate().answer(env.fast.services, session.grant, frame, NOW)
            )
            is None
        )
        fast, slow, fast_rec, slow_rec = env.both(frame, session, monkeypatch)
        assert fast == slow
        assert fast_rec is None and slow_rec is None
        assert cm.parse_response(decode(fast)).items[0].status is ResultStatus.OPERATION_FAILED


def test_a_failing_vault_write_gets_the_generic_error(tmp_path: Path) -> None:
    ring = KeyRing()
    ring.install("demo", 1, generate_key(256), L3State.ACTIVE, ring.lease_deadline(3600))
    vault = Vault.open(tmp_path / "v.db")
    vault.close()  # every put now fails
    fast = Dispatcher(Services(store=vault, keyring=ring), clock=lambda: NOW)
    slow = Dispatcher(Services(store=vault, keyring=ring), fast=False, clock=lambda: NOW)
    frame = create_request(_attrs(256, True))
    loop = asyncio.new_event_loop()
    try:
        a = cm.parse_response(decode(loop.run_until_complete(fast.handle(frame, _session()))))
        b = cm.parse_response(decode(loop.run_until_complete(slow.handle(frame, _session()))))
    finally:
        loop.close()
    assert a.items[0].status is b.items[0].status is ResultStatus.OPERATION_FAILED
    assert a.items[0].reason == b.items[0].reason
    assert a.items[0].message == b.items[0].message


def test_limits_below_the_plain_shape_turn_the_fast_path_off(env: Env) -> None:
    svc = env.fast.services
    assert not Dispatcher(svc, Limits(max_depth=4)).fast_create
    assert not Dispatcher(svc, Limits(max_items=22)).fast_create
    assert not Dispatcher(svc, Limits(max_message_size=1024)).fast_create
    assert Dispatcher(svc, Limits(max_depth=5, max_items=23)).fast_create
    assert not Dispatcher(svc, fast=False).fast_create
    frame = create_request(
        _attrs(256, True), max_response_size=1 << 20, time_stamp=True, batch_id=b"x"
    )
    decode(frame, Limits(max_depth=5, max_items=23))  # the bound is tight: it decodes


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_requests_match_the_generic_path(
    env: Env, monkeypatch: pytest.MonkeyPatch, data: st.DataObject
) -> None:
    """Flip, overwrite, cut or extend a plain Create anywhere: both paths agree."""
    frame = mutate(
        data,
        create_request(
            _attrs(data.draw(st.sampled_from([128, 256])), data.draw(st.booleans())),
            version=data.draw(st.sampled_from([V14, V21])),
            batch_id=data.draw(st.sampled_from([None, b"\x07", b"abcdefghi"])),
            time_stamp=data.draw(st.booleans()),
        ),
    )
    if frame is None:
        return
    fast, slow, fast_rec, slow_rec = env.both(frame, _session(), monkeypatch)
    assert fast == slow
    assert fast_rec == slow_rec
