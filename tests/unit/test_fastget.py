"""The Get fast path against the generic path: the same bytes, or no answer at all.

Every request here is sent to two dispatchers over one vault and key ring, one
with the fast path and one without, under one fixed clock. Whatever the fast
path answers must be byte-identical to the generic answer; whatever it declines
must still be answered (by the generic path) identically. The plain cases must
really be taken by the fast path, or these tests would prove nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.fastpath import NOW, mutate, single

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import generate_key
from krypton.gateway.engine.dispatch import Dispatcher, Session
from krypton.gateway.engine.services import Services
from krypton.gateway.fast import fastget
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute
from krypton.kmip.versions import SUPPORTED, ProtocolVersion
from krypton.model.grant import Grant
from krypton.ttlv.codec import Limits, decode, encode
from krypton.ttlv.enums import KeyFormatType, Operation, ResultStatus, State
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag
from krypton.vault.sqlite import Vault

V14 = ProtocolVersion(1, 4)


@dataclasses.dataclass
class Env:
    fast: Dispatcher
    slow: Dispatcher
    loop: asyncio.AbstractEventLoop
    keys: dict[str, str]  # what -> uid

    def both(self, frame: bytes, session: Session) -> tuple[bytes, bytes]:
        a = self.loop.run_until_complete(self.fast.handle(frame, session))
        b = self.loop.run_until_complete(self.slow.handle(frame, session))
        return a, b


def _session(tenant: str = "demo", operations: frozenset[int] | None = None) -> Session:
    return Session(f"spiffe://t/{tenant}", Grant(tenant, operations), 1)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    loop = asyncio.new_event_loop()
    ring = KeyRing()
    for tenant in ("demo", "other"):
        ring.install(tenant, 1, generate_key(256), L3State.ACTIVE, ring.lease_deadline(3600))
    vault = Vault.open(Path(tmp_path_factory.mktemp("fast")) / "v.db", sealer=ring.record_mac)
    svc = Services(store=vault, keyring=ring)
    fast = Dispatcher(svc, clock=lambda: NOW)
    slow = Dispatcher(svc, fast=False, clock=lambda: NOW)
    keys: dict[str, str] = {}

    def create(what: str, length: int, *extra: Attribute, tenant: str = "demo") -> None:
        attrs = [*cm.aes_attributes(length), *extra]
        msg = encode(cm.request_message(V14, [cm.create_item(V14, attrs)]))
        r = cm.parse_response(decode(loop.run_until_complete(slow.handle(msg, _session(tenant)))))
        assert r.items[0].payload is not None, r.items[0].message
        keys[what] = cm.unique_identifier(r.items[0].payload)

    for length in (128, 192, 256):
        create(f"aes{length}", length)
    create("sensitive", 256, Attribute("Sensitive", Item.boolean(Tag.SENSITIVE, True)))
    create("other-tenant", 256, tenant="other")
    rec = vault.get(keys["aes256"])
    assert rec is not None
    destroyed = dataclasses.replace(rec, uid="destroyed-1", state=State.DESTROYED, wrapped=b"")
    loop.run_until_complete(vault.put(destroyed))
    keys["destroyed"] = destroyed.uid
    keys["unknown"] = "no-such-key"
    try:
        yield Env(fast, slow, loop, keys)
    finally:
        vault.close()
        loop.close()


def get_request(
    uid: str | None,
    *,
    version: ProtocolVersion = V14,
    batch_id: bytes | None = None,
    key_format: int | None = None,
    max_response_size: int | None = None,
    time_stamp: bool = False,
    batch_count: int = 1,
) -> bytes:
    fields = [] if uid is None else [Item.text(Tag.UNIQUE_IDENTIFIER, uid)]
    if key_format is not None:
        fields.append(Item.enum(Tag.KEY_FORMAT_TYPE, key_format))
    item = cm.batch_item(Operation.GET, cm.payload(*fields), batch_id)
    return single(
        version,
        item,
        max_response_size=max_response_size,
        time_stamp=time_stamp,
        batch_count=batch_count,
    )


PLAIN = [
    dict(version=v, batch_id=bid, key_format=fmt, max_response_size=mrs, time_stamp=ts)
    for v, bid, fmt, mrs, ts in itertools.product(
        SUPPORTED,
        (None, b"", b"\x01", b"12345678", bytes(range(13))),
        (None, KeyFormatType.RAW),
        (None, 1 << 20),
        (False, True),
    )
]


@pytest.mark.parametrize("what", ["aes128", "aes192", "aes256"])
def test_plain_gets_take_the_fast_path_and_match_byte_for_byte(env: Env, what: str) -> None:
    session = _session()
    for options in PLAIN:
        frame = get_request(env.keys[what], **options)  # type: ignore[arg-type]
        assert fastget.scan_in_full(frame) is not None, options
        fast, slow = env.both(frame, session)
        assert env.fast.answer_now(frame, session) == fast, options
        assert fast == slow, options
        r = cm.parse_response(decode(fast))
        assert r.items[0].status is ResultStatus.SUCCESS


DECLINED = [
    ("unknown", {}, "no such key"),
    ("other-tenant", {}, "another tenant's key"),
    ("destroyed", {}, "destroyed"),
    ("sensitive", {}, "Sensitive: refused"),
    ("aes256", {"key_format": KeyFormatType.TRANSPARENT_SYMMETRIC_KEY}, "another format"),
    ("aes256", {"key_format": KeyFormatType.PKCS_8}, "an unsupported format"),
    ("aes256", {"max_response_size": 100}, "too large"),
    ("aes256", {"max_response_size": -1}, "negative limit"),
    ("aes256", {"version": ProtocolVersion(1, 9)}, "a later minor"),
    ("aes256", {"version": ProtocolVersion(3, 0)}, "an unknown major"),
    ("aes256", {"batch_count": 2}, "batch count mismatch"),
    (None, {}, "no identifier, no placeholder"),
]


@pytest.mark.parametrize(("what", "options", "why"), DECLINED)
def test_declined_requests_get_the_generic_answer(
    env: Env, what: str | None, options: dict[str, object], why: str
) -> None:
    frame = get_request(None if what is None else env.keys[what], **options)  # type: ignore[arg-type]
    session = _session()
    assert env.fast.answer_now(frame, session) is None, why
    fast, slow = env.both(frame, session)
    assert fast == slow, why


def test_a_grant_without_get_is_left_to_the_generic_path(env: Env) -> None:
    frame = get_request(env.keys["aes256"])
    session = _session(operations=frozenset({Operation.CREATE}))
    assert env.fast.answer_now(frame, session) is None
    fast, slow = env.both(frame, session)
    assert fast == slow
    assert cm.parse_response(decode(fast)).items[0].status is ResultStatus.OPERATION_FAILED


def test_limits_below_the_plain_shape_turn_the_fast_path_off(env: Env) -> None:
    svc = env.fast.services
    assert not Dispatcher(svc, Limits(max_depth=2)).fast
    assert not Dispatcher(svc, Limits(max_items=10)).fast
    assert not Dispatcher(svc, Limits(max_message_size=1024)).fast
    assert Dispatcher(svc, Limits()).fast


def test_other_shapes_are_not_scanned(env: Env) -> None:
    uid = env.keys["aes256"]
    two = encode(cm.request_message(V14, [cm.get_item(uid), cm.get_item(uid)]))
    extra = encode(
        cm.request_message(
            V14,
            [
                cm.batch_item(
                    Operation.GET,
                    cm.payload(
                        Item.text(Tag.UNIQUE_IDENTIFIER, uid),
                        Item.enum(Tag.KEY_COMPRESSION_TYPE, 1),
                    ),
                )
            ],
        )
    )
    create = encode(cm.request_message(V14, [cm.create_item(V14, cm.aes_attributes())]))
    for frame in (two, extra, create):
        assert fastget.scan_in_full(frame) is None
        assert fastget.FastGet().scan(frame) is None


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_requests_never_diverge(env: Env, data: st.DataObject) -> None:
    """Flip, overwrite, cut or extend a plain Get anywhere: both paths agree."""
    frame = mutate(
        data,
        get_request(
            env.keys[data.draw(st.sampled_from(["aes128", "aes256", "unknown"]))],
            batch_id=data.draw(st.sampled_from([None, b"\x07", b"abcdefghi"])),
            key_format=data.draw(st.sampled_from([None, KeyFormatType.RAW])),
            time_stamp=data.draw(st.booleans()),
        ),
    )
    if frame is None:
        return
    fast, slow = env.both(frame, _session())
    assert fast == slow


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_learned_shapes_read_exactly_what_the_full_scan_reads(data: st.DataObject) -> None:
    """A message matched against a shape learned from another one is read as the
    full scan reads it -- or refused, as the full scan refuses it."""
    options = dict(
        version=data.draw(st.sampled_from(SUPPORTED)),
        batch_id=data.draw(st.sampled_from([None, b"", b"\x07", b"abcdefghi"])),
        key_format=data.draw(st.sampled_from([None, KeyFormatType.RAW, KeyFormatType.PKCS_8])),
        max_response_size=data.draw(st.sampled_from([None, 4096])),
        time_stamp=data.draw(st.booleans()),
    )
    fast = fastget.FastGet()
    learned = get_request("0123456789abcdef0123456789abcdef0123", **options)  # type: ignore[arg-type]
    assert fast.scan(learned) == fastget.scan_in_full(learned) is not None
    other = get_request(
        data.draw(st.text(st.characters(max_codepoint=127), min_size=36, max_size=36)),
        **options,  # type: ignore[arg-type]
    )
    assert fast.scan(other) == fastget.scan_in_full(other) is not None
    assert fast.learned(len(other)) == 1
    frame = mutate(data, other)
    if frame is None:
        return
    assert fast.scan(frame) == fastget.scan_in_full(frame)


def test_a_learned_shape_matches_another_identifier_and_nothing_else() -> None:
    fast = fastget.FastGet()
    a = get_request("a" * 36, batch_id=b"12345678", max_response_size=4096, time_stamp=True)
    b = get_request("b" * 36, batch_id=b"87654321", max_response_size=2048, time_stamp=True)
    assert fast.scan(a) == fastget.scan_in_full(a) is not None
    assert fast.learned(len(a)) == 1
    assert fast.scan(b) == fastget.scan_in_full(b) is not None
    assert fast.learned(len(b)) == 1  # read through a's shape: nothing new learned
    raw_then_pkcs8 = get_request("b" * 36, key_format=KeyFormatType.RAW)
    fast.scan(raw_then_pkcs8)
    pkcs8 = get_request("b" * 36, key_format=KeyFormatType.PKCS_8)  # same length, other format
    assert len(pkcs8) == len(raw_then_pkcs8)
    before = fast.learned(len(pkcs8))
    req = fast.scan(pkcs8)
    assert req is not None and not req.raw_format
    assert fast.learned(len(pkcs8)) == before + 1  # the Raw shape did not match it


def test_each_fast_path_learns_for_itself_and_within_its_bound() -> None:
    one, two = fastget.FastGet(max_shapes=2), fastget.FastGet()
    a = get_request("a" * 36)
    one.scan(a)
    assert one.learned(len(a)) == 1 and two.learned(len(a)) == 0
    for bid in (b"1", b"12345678", b"123456789"):
        one.scan(get_request("a" * 36, batch_id=bid))
        assert 1 <= one.learned() <= 2
    with pytest.raises(ValueError):
        fastget.FastGet(max_shapes=0)
