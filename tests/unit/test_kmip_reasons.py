"""The 2.x → 1.x Result Reason table: complete, and only 1.x reasons come out."""

from __future__ import annotations

import pytest

from krypton.kmip.reasons import V1_EQUIVALENT, reason_for, v2_only
from krypton.kmip.versions import SUPPORTED, ProtocolVersion
from krypton.ttlv.enums import Operation, ResultReason

R = ResultReason
V1 = [v for v in SUPPORTED if not v.v2]


def test_every_v2_only_reason_has_a_default() -> None:
    missing = [r.name for r in R if v2_only(r) and (r, None) not in V1_EQUIVALENT]
    assert missing == []
    assert all(v2_only(r) for r, _ in V1_EQUIVALENT)


def test_the_table_answers_only_with_v1_reasons() -> None:
    assert all(not v2_only(v) for v in V1_EQUIVALENT.values())


@pytest.mark.parametrize("version", V1, ids=str)
def test_v1_answers(version: ProtocolVersion) -> None:
    for reason in R:
        for op in (None, *Operation):
            got = reason_for(version, reason, op)
            assert not v2_only(got), (reason, op)
            if not v2_only(reason):
                assert got is reason
    assert (
        reason_for(version, R.WRONG_KEY_LIFECYCLE_STATE, Operation.DESTROY) is R.PERMISSION_DENIED
    )
    assert reason_for(version, R.OBJECT_NOT_FOUND, Operation.ACTIVATE) is R.ITEM_NOT_FOUND
    assert reason_for(version, R.OBJECT_DESTROYED, Operation.DESTROY) is R.PERMISSION_DENIED
    assert reason_for(version, R.OBJECT_DESTROYED, Operation.GET) is R.ITEM_NOT_FOUND
    assert reason_for(version, R.NON_UNIQUE_NAME_ATTRIBUTE, Operation.REGISTER) is R.INVALID_FIELD
    assert (
        reason_for(version, R.NON_UNIQUE_NAME_ATTRIBUTE, Operation.ADD_ATTRIBUTE)
        is R.ILLEGAL_OPERATION
    )
    assert reason_for(version, R.ATTRIBUTE_NOT_FOUND, Operation.MODIFY_ATTRIBUTE) is R.INVALID_FIELD
    assert (
        reason_for(version, R.ATTRIBUTE_NOT_FOUND, Operation.DELETE_ATTRIBUTE) is R.ITEM_NOT_FOUND
    )
    assert reason_for(version, R.ATTRIBUTE_READ_ONLY, 0x7FFF) is R.PERMISSION_DENIED


def test_v21_answers_unchanged() -> None:
    for reason in R:
        assert reason_for(ProtocolVersion(2, 1), reason, Operation.DESTROY) is reason


def test_v20_answers_a_refusal_by_state_or_dates_with_permission_denied() -> None:
    """2.0 error tables (and its profile cases: AKLC-M-2-20 Destroy of an Active key,
    CS-BC-M-14-20 Encrypt past Protect Stop) where 2.1 says Wrong Key Lifecycle State."""
    v20 = ProtocolVersion(2, 0)
    for op in (Operation.DESTROY, Operation.ENCRYPT, Operation.ACTIVATE):
        assert reason_for(v20, R.WRONG_KEY_LIFECYCLE_STATE, op) is R.PERMISSION_DENIED
    for reason in R:
        if reason is not R.WRONG_KEY_LIFECYCLE_STATE:
            assert reason_for(v20, reason, Operation.DESTROY) is reason


@pytest.mark.parametrize("version", V1, ids=str)
def test_v1_encrypt_with_an_object_that_is_not_a_key_is_permission_denied(
    version: ProtocolVersion,
) -> None:
    for op in (Operation.ENCRYPT, Operation.DECRYPT):  # KMIP 1.4 §11.30, §11.31
        assert reason_for(version, R.INVALID_OBJECT_TYPE, op) is R.PERMISSION_DENIED
    assert reason_for(version, R.INVALID_OBJECT_TYPE, Operation.REGISTER) is R.INVALID_FIELD
