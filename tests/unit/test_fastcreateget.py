"""The Create + Get fast path against the generic path: the same response and the
same stored record, or no answer at all.

The twin dispatchers of :mod:`tests.helpers.fastpath` (one with the fast paths,
one without, the same uid, clock and entropy) answer each request; the fast
one counts the messages it leaves to its generic path. A plain Create + Get
must be answered by the fast path alone, byte for byte as the generic path
answers it, with the key the record holds; every other shape must be left
to the generic path before anything is stored, and answered identically.
"""

from __future__ import annotations

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
    aes_attrs,
    create_item,
    mutate,
    session,
    twins,
)

from krypton.gateway.engine.dispatch import Dispatcher
from krypton.gateway.fast import fastcreateget
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute
from krypton.kmip.versions import SUPPORTED, ProtocolVersion
from krypton.metrics.meter import SUCCESS, KmipMeter
from krypton.ttlv.codec import Limits, decode, encode
from krypton.ttlv.enums import (
    BatchErrorContinuationOption,
    CryptographicAlgorithm,
    KeyFormatType,
    Operation,
    ResultStatus,
    UniqueIdentifier,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    with twins(Path(tmp_path_factory.mktemp("fastcreateget"))) as e:
        yield e


def get_item(batch_id: bytes | None = b"\x02", *fields: Item) -> Item:
    return cm.batch_item(Operation.GET, cm.payload(*fields), batch_id)


def request(
    *items: Item,
    version: ProtocolVersion = V14,
    max_response_size: int | None = None,
    time_stamp: bool = False,
    header: tuple[Item, ...] = (),
    continuation: BatchErrorContinuationOption | None = None,
) -> bytes:
    message = cm.request_message(
        version,
        list(items),
        max_response_size=max_response_size,
        time_stamp=NOW - 5 if time_stamp else None,
        continuation=continuation,
    )
    if header:  # extra header fields, after the others
        head, *rest = message.children
        head = Item(head.tag, head.type, (*head.children, *header))
        message = Item(message.tag, message.type, (head, *rest))
    return encode(message)


def createget(
    length: int = 256,
    *,
    usage: bool = True,
    algorithm: int = CryptographicAlgorithm.AES,
    version: ProtocolVersion = V14,
    ids: tuple[bytes | None, bytes | None] = (b"\x01", b"\x02"),
    get_fields: tuple[Item, ...] = (),
    **options: object,
) -> bytes:
    create = create_item(aes_attrs(length, usage, algorithm), version=version, batch_id=ids[0])
    return request(create, get_item(ids[1], *get_fields), version=version, **options)  # type: ignore[arg-type]


def _same(
    env: Twins, frame: bytes, monkeypatch: pytest.MonkeyPatch, **grant: object
) -> tuple[bytes, int]:
    """The (identical) answer of both dispatchers and how many times the fast one
    took its generic path; both left the same record (or none)."""
    before = env.generic
    fast, slow, fast_rec, slow_rec = env.both(frame, session(**grant), monkeypatch)  # type: ignore[arg-type]
    assert fast == slow
    assert fast_rec == slow_rec  # records compare every field, wrapped included
    return fast, env.generic - before


RAW = (Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),)
PLAIN = [
    dict(version=v, ids=ids, usage=usage, max_response_size=mrs, time_stamp=ts, get_fields=f)
    for v, ids, usage, (mrs, ts), f in itertools.product(
        SUPPORTED,
        ((b"\x01", b"\x02"), (None, None), (b"12345678", b""), (bytes(range(13)), None)),
        (True, False),
        ((None, False), (1 << 20, True)),
        ((), RAW),
    )
]


@pytest.mark.parametrize(
    ("length", "algorithm"),
    [
        (128, CryptographicAlgorithm.AES),
        (256, CryptographicAlgorithm.AES),
        (192, CryptographicAlgorithm.DES3),
    ],
)
def test_plain_creategets_take_the_fast_path_and_match_byte_for_byte(
    env: Twins, length: int, algorithm: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = env.fast.services.keyring
    for options in PLAIN:
        frame = createget(length, algorithm=algorithm, **options)  # type: ignore[arg-type]
        assert fastcreateget.scan(frame) is not None, options
        out, generic = _same(env, frame, monkeypatch)
        assert generic == 0, options  # the fast path answered on its own
        r = cm.parse_response(decode(out))
        assert [i.status for i in r.items] == [ResultStatus.SUCCESS] * 2, options
        assert tuple(i.batch_id for i in r.items) == options["ids"], options
        created, got = r.items[0].payload, r.items[1].payload
        assert created is not None and got is not None
        assert cm.unique_identifier(created) == cm.unique_identifier(got) == env.uid
        rec = env.fast_vault.get(env.uid)
        assert rec is not None
        stored = ring.unwrap(rec.tenant, rec.uid, rec.l3_version, rec.wrapped)
        assert cm.key_material(got) == bytes(stored.view())  # the key Get gives is the key made
        assert len(stored) == length // 8


def test_the_fast_path_itself_answers(env: Twins, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the generic path behind it: FastCreateGet.answer gives the bytes on its own."""
    env.uid = "direct-1"
    monkeypatch.setattr(os, "urandom", random.Random("direct").randbytes)
    found = env.loop.run_until_complete(
        fastcreateget.FastCreateGet(clock=lambda: 7.0).answer(
            env.fast.services, session().grant, createget(), NOW
        )
    )
    monkeypatch.undo()
    assert found is not None
    out, stored = found
    assert stored == 7.0
    items = cm.parse_response(decode(out)).items
    assert [i.operation for i in items] == [Operation.CREATE, Operation.GET]
    assert env.fast_vault.get("direct-1") is not None


NAME = Attribute(
    "Name", Item.structure(Tag.NAME, Item.text(Tag.NAME_VALUE, "k1"), Item.enum(Tag.NAME_TYPE, 1))
)
_WRAP = Item.structure(
    Tag.KEY_WRAPPING_SPECIFICATION,
    Item.enum(Tag.WRAPPING_METHOD, 1),
    Item.structure(
        Tag.ENCRYPTION_KEY_INFORMATION, Item.text(Tag.UNIQUE_IDENTIFIER, "no-such-key")
    ),
)
_CREATE = create_item(aes_attrs(256, True), batch_id=b"\x01")
DECLINED: dict[str, bytes] = {
    "Get first": request(get_item(b"\x02"), _CREATE),
    "Get of a uid": createget(get_fields=(Item.text(Tag.UNIQUE_IDENTIFIER, "key-0"),)),
    "Get of the ID Placeholder, said": createget(
        get_fields=(Item.enum(Tag.UNIQUE_IDENTIFIER, UniqueIdentifier.ID_PLACEHOLDER),)
    ),
    "Get wrapped": createget(get_fields=(_WRAP,)),
    "Get in another format": createget(
        get_fields=(Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY),)
    ),
    "Get compressed": createget(get_fields=(*RAW, Item.enum(Tag.KEY_COMPRESSION_TYPE, 1))),
    "Batch Order Option": createget(header=(Item.boolean(Tag.BATCH_ORDER_OPTION, True),)),
    "Continuation Continue": createget(continuation=BatchErrorContinuationOption.CONTINUE),
    "Continuation Undo": createget(continuation=BatchErrorContinuationOption.UNDO),
    "a Name on the Create": request(
        create_item([*aes_attrs(256, True), NAME], batch_id=b"\x01"), get_item()
    ),
    "RSA is not made here": createget(algorithm=CryptographicAlgorithm.RSA),
    "AES-100": createget(100),
    "a third item": request(_CREATE, get_item(b"\x02"), get_item(b"\x03")),
    "response too large": createget(max_response_size=200),
    "a later minor": createget(version=ProtocolVersion(1, 9)),
    "an unknown major": createget(version=ProtocolVersion(3, 0)),
}


@pytest.mark.parametrize("why", list(DECLINED))
def test_other_shapes_are_left_to_the_generic_path(
    env: Twins, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = DECLINED[why]
    env.uid = f"declined-{why}"
    answered = env.loop.run_until_complete(
        fastcreateget.FastCreateGet().answer(env.fast.services, session().grant, frame, NOW)
    )
    assert answered is None, why
    assert env.fast_vault.get(env.uid) is None, why  # declining leaves nothing behind
    out, generic = _same(env, frame, monkeypatch)
    assert generic == 1, why
    assert cm.parse_response(decode(out)).items  # and the generic path answered


@pytest.mark.parametrize(
    ("tenant", "operations"),
    [
        ("demo", frozenset({Operation.CREATE})),
        ("demo", frozenset({Operation.GET})),
        ("nol3", None),
    ],
)
def test_a_grant_short_of_either_or_a_tenant_without_l3_takes_the_generic_path(
    env: Twins, tenant: str, operations: frozenset[int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = createget()
    out, generic = _same(env, frame, monkeypatch, tenant=tenant, operations=operations)
    assert generic == 1
    statuses = [i.status for i in cm.parse_response(decode(out)).items]
    assert ResultStatus.OPERATION_FAILED in statuses


def test_the_meter_counts_each_item_as_the_generic_path_does(env: Twins) -> None:
    counts = []
    for fast in (True, False):
        meter = KmipMeter()
        d = Dispatcher(env.fast.services, fast=fast, meter=meter)
        env.uid = f"metered-{fast}"
        out = env.loop.run_until_complete(d.handle(createget(), session()))
        assert len(cm.parse_response(decode(out)).items) == 2
        counts.append(meter.counted())
        timed = meter.timed()
        assert sum(timed[Operation.CREATE][0]) == sum(timed[Operation.GET][0]) == 1
    assert counts[0] == counts[1] == {(Operation.CREATE, SUCCESS): 1, (Operation.GET, SUCCESS): 1}


def test_limits_below_the_plain_shape_turn_the_fast_path_off(env: Twins) -> None:
    svc = env.fast.services
    assert not Dispatcher(svc, Limits(max_depth=4)).fast_createget
    assert not Dispatcher(svc, Limits(max_items=27)).fast_createget
    assert not Dispatcher(svc, Limits(max_batch_items=1)).fast_createget
    assert not Dispatcher(svc, Limits(max_message_size=1024)).fast_createget
    assert not Dispatcher(svc, fast=False).fast_createget
    tight = Limits(max_depth=5, max_items=28, max_batch_items=2)
    assert Dispatcher(svc, tight).fast_createget
    one = Dispatcher(svc, Limits(max_batch_items=1))  # the single-item paths still run
    assert one.fast and one.fast_create
    none = Dispatcher(svc, Limits(max_batch_items=0))  # the generic path refuses all
    assert not none.fast and not none.fast_create
    frame = createget(
        ids=(b"x", b"y"), max_response_size=1 << 20, time_stamp=True, get_fields=RAW
    )
    assert fastcreateget.scan(frame) is not None
    decode(frame, tight)  # the bound is tight: it decodes


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_requests_match_the_generic_path(
    env: Twins, monkeypatch: pytest.MonkeyPatch, data: st.DataObject
) -> None:
    """Flip, overwrite, cut or extend a plain Create + Get anywhere: both paths agree."""
    frame = mutate(
        data,
        createget(
            data.draw(st.sampled_from([128, 256])),
            usage=data.draw(st.booleans()),
            version=data.draw(st.sampled_from([V14, V21])),
            ids=data.draw(st.sampled_from([(None, None), (b"\x01", b"\x02"), (b"abcdefghi", b"")])),
            time_stamp=data.draw(st.booleans()),
            get_fields=data.draw(st.sampled_from([(), RAW])),
        ),
    )
    if frame is None:
        return
    _same(env, frame, monkeypatch)


def test_the_scan_reads_a_strict_subset_of_what_the_parser_reads() -> None:
    """Mirrors of the Get fast path's refusals: bytes the decoder would also take
    with another meaning are declined here (non-zero padding, a wrong type)."""
    frame = createget(ids=(b"\x01", b"\x02"))
    assert fastcreateget.scan(frame) is not None
    padded = bytearray(frame)
    at = bytes(padded).rindex(b"\x02\x00\x00\x00\x00\x00\x00\x00")
    padded[at + 3] = 1  # the Get's batch id padding
    assert fastcreateget.scan(bytes(padded)) is None
    as_int = createget(get_fields=(Item(Tag.KEY_FORMAT_TYPE, ItemType.INTEGER, 1),))
    assert fastcreateget.scan(as_int) is None
