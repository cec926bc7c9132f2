"""krypton bench's requests and its response check (sans-I/O)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from krypton.bench import wire
from krypton.bench.ceiling import answer
from krypton.bench.wire import (
    BAD_KEY,
    BATCH_MISMATCH,
    CREATE,
    GET,
    MALFORMED,
    NO_PAYLOAD,
    NO_REASON,
    OP_MISMATCH,
    build_plan,
    check_full,
    check_status,
    error_name,
    parse_ratio,
    ratio_pattern,
)
from krypton.kmip import client_messages as cm
from krypton.kmip.messages import ResponseItem, build_response, error_response, parse_request
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.codec import DEFAULT_LIMITS, decode, encode
from krypton.ttlv.enums import ResultReason, ResultStatus
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

V14 = ProtocolVersion(1, 4)


def _check(data: bytes, expect: tuple[int, ...], key_bytes: int = 32) -> int:
    """Both checkers must agree; returns their verdict."""
    fast = check_status(bytearray(data), len(data), expect)
    full = check_full(data, expect, key_bytes)
    assert (fast == 0) == (full == 0), (fast, full)
    return fast


def _failure(op: int | None, reason: ResultReason) -> ResponseItem:
    return ResponseItem.failure(op, None, reason, "nope")


@pytest.mark.parametrize(
    "ops", [(GET,), (CREATE,), (CREATE, GET)], ids=["get", "create", "createget"]
)
@pytest.mark.parametrize("version", [ProtocolVersion(1, 0), V14, ProtocolVersion(2, 1)])
def test_success_is_zero(ops: tuple[int, ...], version: ProtocolVersion) -> None:
    assert _check(answer(version, ops), ops) == 0


def test_failed_item_reports_its_reason() -> None:
    data = encode(build_response(V14, 0, [_failure(GET, ResultReason.ITEM_NOT_FOUND)]))
    assert _check(data, (GET,)) == ResultReason.ITEM_NOT_FOUND
    assert error_name(ResultReason.ITEM_NOT_FOUND) == "Item Not Found"


def test_message_level_error_without_operation() -> None:
    data = encode(error_response(None, 0, ResultReason.PERMISSION_DENIED, "who are you"))
    assert _check(data, (GET,)) == ResultReason.PERMISSION_DENIED
    # Also when two items were expected: the reason wins over the count.
    assert _check(data, (CREATE, GET)) == ResultReason.PERMISSION_DENIED


def test_second_item_failure_is_counted() -> None:
    ok = ResponseItem(CREATE, b"\x01", payload=Item.structure(Tag.RESPONSE_PAYLOAD))
    data = encode(build_response(V14, 0, [ok, _failure(GET, ResultReason.ITEM_NOT_FOUND)]))
    assert _check(data, (CREATE, GET)) == ResultReason.ITEM_NOT_FOUND


def test_failure_without_reason() -> None:
    item = ResponseItem(GET, None, ResultStatus.OPERATION_FAILED)
    assert _check(encode(build_response(V14, 0, [item])), (GET,)) == NO_REASON


def test_wrong_batch_count_and_wrong_operation_and_no_payload() -> None:
    assert _check(answer(V14, (CREATE,)), (CREATE, GET)) == BATCH_MISMATCH
    assert _check(answer(V14, (GET, GET)), (GET,)) == BATCH_MISMATCH
    assert _check(answer(V14, (CREATE,)), (GET,)) == OP_MISMATCH
    bare = encode(build_response(V14, 0, [ResponseItem(GET, None)]))
    assert _check(bare, (GET,)) == NO_PAYLOAD


def test_header_batch_count_must_match_items() -> None:
    good = decode(answer(V14, (GET,)))
    header = good.children[0]
    two = Item.integer(Tag.BATCH_COUNT, 2)
    lying = Item.structure(
        Tag.RESPONSE_HEADER, *(two if c.tag == Tag.BATCH_COUNT else c for c in header.children)
    )
    data = encode(Item.structure(Tag.RESPONSE_MESSAGE, lying, *good.children[1:]))
    assert check_status(bytearray(data), len(data), (GET,)) == BATCH_MISMATCH


def test_full_check_sees_the_key_length() -> None:
    data = answer(V14, (GET,))
    assert check_full(data, (GET,), 32) == 0
    assert check_full(data, (GET,), 16) == BAD_KEY


def test_every_truncation_is_malformed() -> None:
    data = answer(V14, (CREATE, GET))
    for end in range(len(data)):
        assert check_status(bytearray(data[:end]), end, (CREATE, GET)) != 0
    # A frame whose declared length is consistent but whose body lies:
    bad = bytearray(data)
    bad[8 + 4 : 8 + 8] = (len(data)).to_bytes(4, "big")  # header overruns the message
    assert check_status(bad, len(bad), (CREATE, GET)) == MALFORMED


def test_request_bytes_are_not_a_response() -> None:
    req = build_plan("get", V14, "x").requests[0]
    assert check_status(bytearray(req), len(req), (GET,)) == MALFORMED


def test_random_corruption_never_raises() -> None:
    rng = random.Random(7)
    base = answer(V14, (CREATE, GET))
    flagged = 0
    for _ in range(2000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        code = check_status(data, len(data), (CREATE, GET))
        assert isinstance(code, int)
        full = check_full(bytes(data), (CREATE, GET), 32)
        assert isinstance(full, int)
        flagged += code != 0
    assert flagged > 0


# -- plans ------------------------------------------------------------------------
@pytest.mark.parametrize("version", [ProtocolVersion(1, 0), V14, ProtocolVersion(2, 0)])
def test_plans_are_valid_requests(version: ProtocolVersion) -> None:
    for op in wire.OPS:
        plan = build_plan(op, version, "some-uid", ratio=(3, 1))
        assert len(plan.requests) == len(plan.expects) == len(plan.kinds)
        for data, expect in zip(plan.requests, plan.expects, strict=True):
            request = parse_request(decode(data), DEFAULT_LIMITS)
            assert request.header.version == version
            assert tuple(i.operation for i in request.items) == expect
            if len(expect) > 1:  # KMIP 1.x §7.2: IDs required when Batch Count > 1
                ids = [i.batch_id for i in request.items]
                assert None not in ids and len(set(ids)) == len(ids)


def test_createget_uses_the_id_placeholder() -> None:
    plan = build_plan("createget", V14, None)
    get = parse_request(decode(plan.requests[0]), DEFAULT_LIMITS).items[1]
    assert get.payload is not None and get.payload.find(Tag.UNIQUE_IDENTIFIER) is None


def test_mixed_ratio() -> None:
    plan = build_plan("mixed", V14, "k", ratio=parse_ratio("18:2"))
    assert plan.kinds.count(0) == 9 and plan.kinds.count(1) == 1
    assert ratio_pattern(2, 2) == [0, 1, 0, 1]
    assert ratio_pattern(1, 0) == [0]
    assert sum(ratio_pattern(7, 3)) == 3


@pytest.mark.parametrize("bad", ["9", "a:b", "0:0", "-1:2", "1:2:3"])
def test_bad_ratio(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_ratio(bad)


def test_unknown_op() -> None:
    with pytest.raises(ValueError):
        build_plan("delete", V14, None)


# -- random Get over a recorded key list (--keys-file) -------------------------------
def test_random_gets_draw_every_recorded_key_and_encode_each_exactly() -> None:
    keys = ["k-1", "a-much-longer-identifier-0002", "3" * 36]
    plan = build_plan("get", V14, None, keys=keys)
    exact = {k: encode(cm.request_message(V14, [cm.get_item(k)])) for k in keys}
    assert len(plan.requests) == 1 and plan.expects == ((GET,),)
    drawn = [plan.requests[0] for _ in range(600)]
    assert set(drawn) == set(exact.values())  # each one, byte for byte the client's Get
    for k, message in exact.items():
        assert 120 < drawn.count(message) < 280, k  # uniform: ~200 each
    with pytest.raises(ValueError, match="--op get"):
        build_plan("create", V14, None, keys=keys)
    with pytest.raises(ValueError, match="no key"):
        build_plan("get", V14, None, keys=[])


def test_keys_file_and_created_uid(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("a\n\nb\nc\n")
    assert wire.read_keys(path) == ["a", "b", "c"]
    payload = Item.structure(
        Tag.RESPONSE_PAYLOAD, Item.enum(Tag.OBJECT_TYPE, 2), Item.text(Tag.UNIQUE_IDENTIFIER, "u-7")
    )
    made = ResponseItem(CREATE, None, payload=payload)
    assert wire.created_uid(encode(build_response(V14, 0, [made]))) == "u-7"
    assert wire.created_uid(b"\x00" * 16) is None
