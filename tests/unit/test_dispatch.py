"""The dispatcher over a real vault and key ring: batches, placeholders, errors, versions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import generate_key
from krypton.gateway.engine.dispatch import Dispatcher, Session
from krypton.gateway.engine.services import Services
from krypton.kmip import client_messages as cm
from krypton.kmip.versions import ProtocolVersion
from krypton.model.grant import Grant
from krypton.ttlv.codec import Limits, decode, encode
from krypton.ttlv.enums import (
    BatchErrorContinuationOption,
    Operation,
    ResultReason,
    ResultStatus,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.vault.sqlite import Vault

V14 = ProtocolVersion(1, 4)
V20 = ProtocolVersion(2, 0)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Dispatcher, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    vault = Vault.open(tmp_path / "v.db")
    ring = KeyRing()
    for tenant in ("demo", "other"):
        ring.install(tenant, 1, generate_key(256), L3State.ACTIVE, ring.lease_deadline(3600))
    d = Dispatcher(Services(store=vault, keyring=ring), Limits(max_batch_items=8))
    try:
        yield d, loop
    finally:
        vault.close()
        loop.close()


def run(
    env: tuple[Dispatcher, asyncio.AbstractEventLoop],
    message: Item | bytes,
    tenant: str = "demo",
    operations: frozenset[int] | None = None,
) -> cm.Response:
    d, loop = env
    data = message if isinstance(message, bytes) else encode(message)
    session = Session(f"spiffe://t/{tenant}", Grant(tenant, operations), 1)
    return cm.parse_response(decode(loop.run_until_complete(d.handle(data, session))))


def test_create_then_get_with_id_placeholder(
    env: tuple[Dispatcher, asyncio.AbstractEventLoop],
) -> None:
    for version in (V14, V20):
        r = run(
            env,
            cm.request_message(
                version,
                [
                    cm.create_item(version, cm.aes_attributes(192), b"\x01"),
                    cm.get_item(None, b"\x02"),
                ],
            ),
        )
        assert r.version == version
        assert [i.status for i in r.items] == [ResultStatus.SUCCESS] * 2
        assert [i.batch_id for i in r.items] == [b"\x01", b"\x02"]
        assert r.items[0].payload is not None and r.items[1].payload is not None
        uid = cm.unique_identifier(r.items[0].payload)
        assert cm.unique_identifier(r.items[1].payload) == uid
        assert len(cm.key_material(r.items[1].payload)) == 24


def test_other_tenant_gets_item_not_found(
    env: tuple[Dispatcher, asyncio.AbstractEventLoop],
) -> None:
    r = run(env, cm.request_message(V14, [cm.create_item(V14, cm.aes_attributes())]))
    assert r.items[0].payload is not None
    uid = cm.unique_identifier(r.items[0].payload)
    mine = run(env, cm.request_message(V14, [cm.get_item(uid)]))
    theirs = run(env, cm.request_message(V14, [cm.get_item(uid)]), tenant="other")
    assert mine.items[0].status is ResultStatus.SUCCESS
    assert theirs.items[0].status is ResultStatus.OPERATION_FAILED
    assert theirs.items[0].reason is ResultReason.ITEM_NOT_FOUND


def _bad_then_good() -> list[Item]:
    return [cm.get_item("no-such-key", b"a"), cm.create_item(V14, cm.aes_attributes(), b"b")]


def test_stop_is_default_and_stops(env: tuple[Dispatcher, asyncio.AbstractEventLoop]) -> None:
    r = run(env, cm.request_message(V14, _bad_then_good()))
    assert len(r.items) == 1
    assert r.items[0].reason is ResultReason.ITEM_NOT_FOUND


def test_continue_runs_the_rest(env: tuple[Dispatcher, asyncio.AbstractEventLoop]) -> None:
    msg = cm.request_message(
        V14, _bad_then_good(), continuation=BatchErrorContinuationOption.CONTINUE
    )
    r = run(env, msg)
    assert [i.status for i in r.items] == [ResultStatus.OPERATION_FAILED, ResultStatus.SUCCESS]


def test_undo_stops_at_the_failure(env: tuple[Dispatcher, asyncio.AbstractEventLoop]) -> None:
    msg = cm.request_message(V14, _bad_then_good(), continuation=BatchErrorContinuationOption.UNDO)
    r = run(env, msg)
    assert len(r.items) == 1 and r.items[0].reason is ResultReason.ITEM_NOT_FOUND


def test_undo_of_what_cannot_be_undone_is_refused_as_a_whole(
    env: tuple[Dispatcher, asyncio.AbstractEventLoop],
) -> None:
    register = cm.batch_item(Operation.REGISTER, cm.payload())  # not undoable, and not last
    msg = cm.request_message(
        V14, [register, cm.get_item("k")], continuation=BatchErrorContinuationOption.UNDO
    )
    r = run(env, msg)
    assert len(r.items) == 1 and r.items[0].operation is None
    assert r.items[0].reason is ResultReason.FEATURE_NOT_SUPPORTED


def test_permission_denied_by_grant(env: tuple[Dispatcher, asyncio.AbstractEventLoop]) -> None:
    msg = cm.request_message(V14, [cm.create_item(V14, cm.aes_attributes())])
    r = run(env, msg, operations=frozenset({Operation.GET}))
    assert r.items[0].reason is ResultReason.PERMISSION_DENIED


def test_unsupported_operation(env: tuple[Dispatcher, asyncio.AbstractEventLoop]) -> None:
    item = cm.batch_item(Operation.ACTIVATE, cm.payload(Item.text(Tag.UNIQUE_IDENTIFIER, "x")))
    r = run(env, cm.request_message(V14, [item]))
    assert r.items[0].operation == Operation.ACTIVATE
    assert r.items[0].reason is ResultReason.OPERATION_NOT_SUPPORTED


@pytest.mark.parametrize(
    ("requested", "answered"),
    [((1, 0), (1, 0)), ((1, 9), (1, 4)), ((2, 1), (2, 1)), ((2, 7), (2, 1))],
)
def test_version_negotiation(
    env: tuple[Dispatcher, asyncio.AbstractEventLoop],
    requested: tuple[int, int],
    answered: tuple[int, int],
) -> None:
    msg = cm.request_message(
        ProtocolVersion(*requested), [cm.batch_item(Operation.QUERY, cm.payload())]
    )
    r = run(env, msg)
    assert r.version == ProtocolVersion(*answered)
    assert r.items[0].status is ResultStatus.SUCCESS


def test_unknown_major_version_is_invalid_message(
    env: tuple[Dispatcher, asyncio.AbstractEventLoop],
) -> None:
    r = run(env, cm.request_message(ProtocolVersion(3, 0), [cm.get_item("x")]))
    assert len(r.items) == 1 and r.items[0].operation is None
    assert r.items[0].reason is ResultReason.INVALID_MESSAGE


def test_batch_limit_and_duplicate_field(env: tuple[Dispatcher, asyncio.AbstractEventLoop]) -> None:
    too_many = cm.request_message(V14, [cm.get_item("x")] * 9)
    assert run(env, too_many).items[0].reason is ResultReason.INVALID_MESSAGE
    dup = Item.structure(
        Tag.BATCH_ITEM,
        Item.enum(Tag.OPERATION, Operation.GET),
        Item.enum(Tag.OPERATION, Operation.GET),
    )
    r = run(env, cm.request_message(V14, [dup]))
    assert r.items[0].reason is ResultReason.INVALID_MESSAGE


def test_maximum_response_size(env: tuple[Dispatcher, asyncio.AbstractEventLoop]) -> None:
    msg = cm.request_message(
        V14,
        [cm.create_item(V14, cm.aes_attributes()), cm.get_item()],
        max_response_size=100,
    )
    r = run(env, msg)
    assert r.items[-1].reason is ResultReason.RESPONSE_TOO_LARGE
    assert all(i.payload is None for i in r.items)


def test_create_refuses_bad_attributes(env: tuple[Dispatcher, asyncio.AbstractEventLoop]) -> None:
    cases = [
        cm.aes_attributes(100),
        [a for a in cm.aes_attributes() if a.name != "Cryptographic Length"],
        [*cm.aes_attributes(), cm.aes_attributes()[1]],  # length twice
    ]
    for attrs in cases:
        r = run(env, cm.request_message(V14, [cm.create_item(V14, attrs)]))
        assert r.items[0].reason is ResultReason.INVALID_FIELD, attrs


def test_get_attributes_both_dialects(env: tuple[Dispatcher, asyncio.AbstractEventLoop]) -> None:
    r = run(env, cm.request_message(V14, [cm.create_item(V14, cm.aes_attributes(name="k1"))]))
    assert r.items[0].payload is not None
    uid = cm.unique_identifier(r.items[0].payload)
    v1 = cm.batch_item(
        Operation.GET_ATTRIBUTES,
        cm.payload(
            Item.text(Tag.UNIQUE_IDENTIFIER, uid),
            Item.text(Tag.ATTRIBUTE_NAME, "State"),
            Item.text(Tag.ATTRIBUTE_NAME, "Name"),
        ),
    )
    p1 = run(env, cm.request_message(V14, [v1])).items[0].payload
    assert p1 is not None
    names = [a.find(Tag.ATTRIBUTE_NAME) for a in p1.find_all(Tag.ATTRIBUTE)]
    assert [n.value for n in names if n is not None] == ["State", "Name"]
    v2 = cm.batch_item(
        Operation.GET_ATTRIBUTES,
        cm.payload(
            Item.text(Tag.UNIQUE_IDENTIFIER, uid),
            Item.enum(Tag.ATTRIBUTE_REFERENCE, Tag.CRYPTOGRAPHIC_LENGTH),
        ),
    )
    p2 = run(env, cm.request_message(V20, [v2])).items[0].payload
    assert p2 is not None
    attrs = p2.find(Tag.ATTRIBUTES)
    assert attrs is not None
    assert attrs.children == (Item(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER, 256),)


def test_the_handler_table_serves_the_operations_query_lists() -> None:
    from krypton.gateway.engine import dispatch, operations

    assert tuple(dispatch.HANDLERS) == operations.LOCAL


@pytest.mark.parametrize("bound", [200, 600])
def test_the_servers_maximum_response_size_holds_on_every_path(tmp_path: Path, bound: int) -> None:
    """gateway.limits.max_response_size bounds every answer, whatever the request's own
    Maximum Response Size: the fast Get and Create, the generic path, RNG Retrieve.
    Over it, the item fails with Response Too Large and carries no payload."""
    loop = asyncio.new_event_loop()
    vault = Vault.open(tmp_path / "v.db")
    ring = KeyRing()
    ring.install("demo", 1, generate_key(256), L3State.ACTIVE, ring.lease_deadline(3600))
    d = Dispatcher(Services(store=vault, keyring=ring), max_response_size=bound)
    session = Session("spiffe://t/demo", Grant("demo", None), 1)

    def ask(msg: Item) -> tuple[int, cm.Response]:
        out = loop.run_until_complete(d.handle(encode(msg), session))
        return len(out), cm.parse_response(decode(out))

    try:
        size, created = ask(cm.request_message(V14, [cm.create_item(V14, cm.aes_attributes())]))
        assert size <= bound and created.items[0].status is ResultStatus.SUCCESS
        assert created.items[0].payload is not None
        uid = cm.unique_identifier(created.items[0].payload)
        long_id = b"b" * 300  # an answer carrying it cannot fit under 200 bytes
        for msg in (
            cm.request_message(V14, [cm.get_item(uid)]),
            cm.request_message(V14, [cm.get_item(uid, batch_id=long_id)]),
            cm.request_message(V14, [cm.create_item(V14, cm.aes_attributes(), batch_id=long_id)]),
            cm.request_message(V14, [cm.batch_item(
                Operation.RNG_RETRIEVE, cm.payload(Item.integer(Tag.DATA_LENGTH, 1024))
            )]),
        ):
            size, r = ask(msg)
            item = r.items[0]
            if item.status is ResultStatus.SUCCESS:
                assert size <= bound
            else:  # the error answer still echoes the batch item's id, however long
                assert item.reason is ResultReason.RESPONSE_TOO_LARGE
                assert item.payload is None
                assert size <= bound or item.batch_id == long_id
    finally:
        vault.close()
        loop.close()


def test_random_bytes_per_message_are_capped_before_any_is_drawn(tmp_path: Path) -> None:
    """gateway.limits.max_rng_bytes: the RNG Retrieve items of one message ask for
    at most that many bytes together; the ones past it fail with Response Too Large."""
    loop = asyncio.new_event_loop()
    vault = Vault.open(tmp_path / "v.db")
    d = Dispatcher(Services(store=vault, keyring=KeyRing()), max_rng_bytes=3000)
    rng = cm.batch_item(Operation.RNG_RETRIEVE, cm.payload(Item.integer(Tag.DATA_LENGTH, 1000)))
    msg = cm.request_message(V14, [rng] * 5, continuation=BatchErrorContinuationOption.CONTINUE)
    try:
        out = loop.run_until_complete(d.handle(encode(msg), Session("s", Grant("demo", None), 1)))
        items = cm.parse_response(decode(out)).items
        assert [i.status for i in items[:3]] == [ResultStatus.SUCCESS] * 3
        assert [i.reason for i in items[3:]] == [ResultReason.RESPONSE_TOO_LARGE] * 2
        assert len(out) < 4000
    finally:
        vault.close()
        loop.close()
