"""Batch Error Continuation Option Undo (krypton.engine.undo) and Get with key
wrapping (krypton.gateway.engine.wrapping), on a gateway dispatcher and the Core's engine in
one process (tests/helpers/embedded.py: the real Upstream and uplink) over a real
vault and registry."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from tests.helpers.control_env import core_env
from tests.helpers.embedded import Stack

from krypton.core.engine.journal import UndoJournal
from krypton.engine import undo
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute
from krypton.kmip.messages import ResponseItem
from krypton.kmip.versions import ProtocolVersion
from krypton.model import ObjectRecord
from krypton.ttlv.codec import decode
from krypton.ttlv.enums import (
    BatchErrorContinuationOption,
    BlockCipherMode,
    CryptographicUsageMask,
    EncodingOption,
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    State,
    WrappingMethod,
)
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

V14 = ProtocolVersion(1, 4)
V21 = ProtocolVersion(2, 1)
UNDO = BatchErrorContinuationOption.UNDO
R = ResultReason
S = ResultStatus


@pytest.fixture
def s(start_embedded: Callable[..., Stack]) -> Stack:
    return start_embedded()


def batch(s: Stack, items: Sequence[Item], version: ProtocolVersion = V21) -> list[ResponseItem]:
    message = cm.request_message(version, items, continuation=UNDO)
    return list(s.send(message).items)


def item(op: Operation, *children: Item) -> Item:
    return cm.batch_item(op, cm.payload(*children))


def uid(u: str) -> Item:
    return Item.text(Tag.UNIQUE_IDENTIFIER, u)


def created(s: Stack, *extra: Attribute, usage: int | None = None) -> str:
    attrs = cm.aes_attributes(128) if usage is None else cm.aes_attributes(128, usage=usage)
    [answer] = s.send(cm.request_message(V21, [cm.create_item(V21, [*attrs, *extra])])).items
    assert answer.payload is not None
    return cm.unique_identifier(answer.payload)


def check(u: str, mask: int) -> Item:
    return item(Operation.CHECK, uid(u), Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, mask))


def state(s: Stack, u: str) -> int:
    rec = s.vault.get(u)
    assert rec is not None
    return rec.state


E, D = CryptographicUsageMask.ENCRYPT, CryptographicUsageMask.DECRYPT


def test_an_activate_is_undone_when_a_later_item_fails(s: Stack) -> None:
    key = created(s, usage=E)
    answers = batch(s, [item(Operation.ACTIVATE, uid(key)), check(key, E), check(key, D)])
    assert [a.status for a in answers] == [S.OPERATION_UNDONE, S.OPERATION_UNDONE,
                                            S.OPERATION_FAILED]  # fmt: skip
    assert answers[2].reason is R.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK
    assert answers[0].payload is not None  # BL-M-2-21: the payload stays
    assert state(s, key) == State.PRE_ACTIVE
    assert s.record(key).state == State.PRE_ACTIVE
    assert len(s.core.journal) == 0


def test_a_successful_batch_keeps_everything_and_the_journal_is_dropped(s: Stack) -> None:
    key = created(s)
    reason = Item.structure(
        Tag.REVOCATION_REASON,
        Item.enum(Tag.REVOCATION_REASON_CODE, RevocationReasonCode.CESSATION_OF_OPERATION),
    )
    answers = batch(s, [item(Operation.ACTIVATE, uid(key)),
                        item(Operation.REVOKE, uid(key), reason)])  # fmt: skip
    assert [a.status for a in answers] == [S.SUCCESS, S.SUCCESS]
    assert state(s, key) == State.DEACTIVATED
    assert len(s.core.journal) == 0


def test_keys_made_in_a_failed_batch_never_exist(s: Stack) -> None:
    answers = batch(s, [cm.create_item(V21, cm.aes_attributes(128)), cm.get_item(),
                        cm.get_item("no-such-key")])  # fmt: skip
    assert [a.status for a in answers] == [S.OPERATION_UNDONE, S.OPERATION_UNDONE,
                                            S.OPERATION_FAILED]  # fmt: skip
    made = answers[0].payload
    assert made is not None
    gone = cm.unique_identifier(made)
    assert s.vault.get(gone) is None
    assert s.wait(s.registry.get_object("demo", gone)) is None
    # The same batch without the failing item: the keys are kept, durable.
    answers = batch(s, [cm.create_item(V21, cm.aes_attributes(128)), cm.get_item()])
    assert [a.status for a in answers] == [S.SUCCESS, S.SUCCESS]
    assert answers[0].payload is not None
    assert s.vault.get(cm.unique_identifier(answers[0].payload)) is not None


def test_a_destroy_is_undone_with_its_material(s: Stack) -> None:
    key = created(s)
    material = cm.key_material(s.send(cm.request_message(V21, [cm.get_item(key)])).items[0]
                               .payload)  # type: ignore[arg-type]  # fmt: skip
    answers = batch(s, [item(Operation.DESTROY, uid(key)), item(Operation.DESTROY, uid(key))])
    assert answers[0].status is S.OPERATION_UNDONE
    assert answers[1].reason is R.OBJECT_DESTROYED
    assert state(s, key) == State.PRE_ACTIVE
    [again] = s.send(cm.request_message(V21, [cm.get_item(key)])).items
    assert again.payload is not None and cm.key_material(again.payload) == material


def test_batches_that_cannot_be_undone_are_refused_before_anything_runs(s: Stack) -> None:
    key = created(s)
    register = item(Operation.RE_KEY, uid(key))
    for items in (
        [register, item(Operation.ACTIVATE, uid(key))],  # Re-key cannot be undone
        [cm.create_item(V21, cm.aes_attributes(128)), item(Operation.ACTIVATE, uid(key))],
    ):
        [answer] = batch(s, items)
        assert answer.operation is None and answer.reason is R.FEATURE_NOT_SUPPORTED
    assert state(s, key) == State.PRE_ACTIVE
    # Anything may come last: if it fails, it changed nothing.
    answers = batch(s, [item(Operation.GET_ATTRIBUTES, uid(key)), register])
    assert [a.status for a in answers] == [S.SUCCESS, S.SUCCESS]


def test_clients_cannot_send_the_private_operations_or_the_mark(s: Stack) -> None:
    token = undo.new_token()
    for raw in (
        undo.private_item(undo.UNDO, token),
        undo.marked(item(Operation.ACTIVATE, uid("x")), token),
    ):
        [answer] = s.send(cm.request_message(V21, [raw])).items
        assert answer.reason is R.OPERATION_NOT_SUPPORTED


def test_the_journal_forgets_after_its_time_and_keeps_a_bounded_number() -> None:
    now = [0.0]
    journal = UndoJournal(seconds=10, tokens=2, clock=lambda: now[0])
    rec = ObjectRecord(uid="u", tenant="t", object_type=2, state=1, created=int(time.time()))
    for t in ("a", "b", "c"):
        journal.record(t, rec, rec)
    assert len(journal) == 2 and journal.take("a") is None  # evicted: gone, not empty
    now[0] = 11.0
    assert journal.take("b") is None and len(journal) == 0
    journal.open("d")  # opened by a marked item that changed nothing: known and empty
    assert journal.take("d") == [] and journal.take("d") is None


# -- Get with key wrapping -------------------------------------------------------------------
def _wrapping_spec(kek: str, encoding: int | None = None) -> Item:
    children = [
        Item.enum(Tag.WRAPPING_METHOD, WrappingMethod.ENCRYPT),
        Item.structure(
            Tag.ENCRYPTION_KEY_INFORMATION,
            uid(kek),
            Item.structure(Tag.CRYPTOGRAPHIC_PARAMETERS,
                           Item.enum(Tag.BLOCK_CIPHER_MODE, BlockCipherMode.NISTKEYWRAP)),
        ),
    ]  # fmt: skip
    if encoding is not None:
        children.append(Item.enum(Tag.ENCODING_OPTION, encoding))
    return Item.structure(Tag.KEY_WRAPPING_SPECIFICATION, *children)


def test_get_wraps_a_key_with_aes_key_wrap(s: Stack) -> None:
    active = Attribute("Activation Date", Item.datetime(Tag.ACTIVATION_DATE, 1))
    kek, key = created(s, active, usage=CryptographicUsageMask.WRAP_KEY), created(s)
    [plain_kek, plain_key] = [
        cm.key_material(s.send(cm.request_message(V21, [cm.get_item(u)])).items[0].payload)  # type: ignore[arg-type]
        for u in (kek, key)
    ]
    for encoding, expected in (
        (None, None),
        (EncodingOption.NO_ENCODING, plain_key),
    ):
        [answer] = s.send(cm.request_message(V21, [item(
            Operation.GET, uid(key), _wrapping_spec(kek, encoding))])).items  # fmt: skip
        assert answer.status is S.SUCCESS, answer.message
        assert answer.payload is not None
        block = answer.payload.find(Tag.SYMMETRIC_KEY).find(Tag.KEY_BLOCK)  # type: ignore[union-attr]
        assert block is not None and block.find(Tag.KEY_WRAPPING_DATA) is not None
        value = block.find(Tag.KEY_VALUE)
        assert value is not None and isinstance(value.value, bytes)
        unwrapped = aes_key_unwrap(plain_kek, value.value)
        if expected is None:  # the TTLV-encoded Key Value structure
            material = Item.bytes_(Tag.KEY_MATERIAL, plain_key)
            assert decode(unwrapped) == Item.structure(Tag.KEY_VALUE, material)
        else:
            assert unwrapped == expected
    # The key to wrap with must allow Wrap Key.
    [refused] = s.send(cm.request_message(V21, [item(
        Operation.GET, uid(kek), _wrapping_spec(key))])).items  # fmt: skip
    assert refused.reason in (R.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK, R.WRONG_KEY_LIFECYCLE_STATE)
    [missing] = s.send(cm.request_message(V21, [item(
        Operation.GET, uid(key), _wrapping_spec("no-such-key"))])).items  # fmt: skip
    assert missing.reason is R.WRAPPING_OBJECT_NOT_FOUND
    [v1] = s.send(cm.request_message(V14, [item(
        Operation.GET, uid(key), _wrapping_spec("no-such-key"))])).items  # fmt: skip
    assert v1.reason is R.ITEM_NOT_FOUND


def test_batches_with_one_request_id_keep_their_own_journals(tmp_path: Path) -> None:
    """Two gateway processes of one identity (``--workers``), or one before and after a
    restart, number their requests alike: the journal is named by the batch's random
    token, not by the request id, so one batch's Undo never takes another's journal."""
    with core_env(tmp_path) as env:  # every item: gateway gw-1, request id t.1
        x, y = env.register_key(), env.register_key()
        first, second = undo.new_token(), undo.new_token()
        assert first != second and len(first) == 32
        for key, token in ((x, first), (y, second)):
            assert env.item(undo.marked(item(Operation.ACTIVATE, uid(key)), token)).ok
        assert env.item(undo.private_item(undo.UNDO, first)).ok
        assert (env.record(x).state, env.record(y).state) == (State.PRE_ACTIVE, State.ACTIVE)
        assert env.item(undo.private_item(undo.FORGET, second)).ok
        assert env.record(y).state == State.ACTIVE


def test_an_undo_whose_journal_is_gone_fails_at_the_core(tmp_path: Path) -> None:
    with core_env(tmp_path) as env:
        key = env.register_key()
        token = undo.new_token()
        assert env.item(undo.marked(item(Operation.ACTIVATE, uid(key)), token)).ok
        env.svc.journal.tokens = 0  # evicted by newer batches
        env.item(undo.marked(item(Operation.GET_ATTRIBUTES, uid(key)), undo.new_token()))
        answer = env.item(undo.private_item(undo.UNDO, token))
        assert answer.failed(R.GENERAL_FAILURE)
        assert "journal is gone" in (answer.item.message or "")
        assert env.record(key).state == State.ACTIVE  # nothing claimed, nothing done
        # A marked item without a token is refused, not journaled under a guess.
        bare = item(Operation.ACTIVATE, uid(key))
        tokenless = Item(bare.tag, bare.type, (*bare.children, *_marker_without_token()))
        assert env.item(tokenless).failed(R.INVALID_MESSAGE)


def _marker_without_token() -> tuple[Item, ...]:
    return (
        Item.structure(
            Tag.MESSAGE_EXTENSION,
            Item.text(Tag.VENDOR_IDENTIFICATION, undo.VENDOR),
            Item.boolean(Tag.CRITICALITY_INDICATOR, False),
            Item.structure(Tag.VENDOR_EXTENSION, Item.text(Tag.ATTRIBUTE_NAME, "undo journal")),
        ),
    )
