"""Result Reasons across protocol versions: what a KMIP 1.x client is told.

How this works
--------------
KMIP 2.0 added Result Reasons 0x19-0x4C (Wrong Key Lifecycle State, Attribute
Read Only, Object Not Found...). A 1.x client cannot decode them, so a failure
answered in 1.x carries the reason KMIP 1.4 §11 prescribes for the same error
instead. Handlers raise the precise 2.x reason; :func:`reason_for` maps it
down when the answer is in 1.x, at the one place a response item is built.

The 1.4 error tables sometimes give different reasons for the same condition
in different operations (a duplicate Name is Invalid Field for Register but
Illegal Operation for Add Attribute), so ``V1_EQUIVALENT`` is keyed by
``(reason, operation)``, with ``operation=None`` as the default for a reason.
Reasons 0x01-0x18 and General Failure exist in 1.4 and pass through.
"""

from __future__ import annotations

from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.enums import Operation, ResultReason

R = ResultReason
Op = Operation

FIRST_V2_ONLY = 0x19

# (2.x-only reason, operation or None for "any other operation") -> 1.x reason.
# Per-operation rows quote the error tables of KMIP 1.4 §11.
V1_EQUIVALENT: dict[tuple[ResultReason, Operation | None], ResultReason] = {
    (R.INVALID_TICKET, None): R.AUTHENTICATION_NOT_SUCCESSFUL,
    (R.USAGE_LIMIT_EXCEEDED, None): R.PERMISSION_DENIED,  # 11.19, 11.11
    (R.NUMERIC_RANGE, None): R.INVALID_FIELD,
    (R.INVALID_DATA_TYPE, None): R.INVALID_FIELD,
    (R.READ_ONLY_ATTRIBUTE, None): R.PERMISSION_DENIED,  # 11.15-11.17 "read-only"
    (R.MULTI_VALUED_ATTRIBUTE, None): R.INVALID_FIELD,
    (R.UNSUPPORTED_ATTRIBUTE, None): R.INVALID_FIELD,  # 11.10 "attributes not understood"
    (R.UNSUPPORTED_ATTRIBUTE, Op.ADD_ATTRIBUTE): R.PERMISSION_DENIED,  # 11.15 "not supported"
    (R.ATTRIBUTE_INSTANCE_NOT_FOUND, None): R.ITEM_NOT_FOUND,  # 11.16, 11.17
    (R.ATTRIBUTE_NOT_FOUND, None): R.ITEM_NOT_FOUND,  # 11.17 "no attribute with the name"
    (R.ATTRIBUTE_NOT_FOUND, Op.MODIFY_ATTRIBUTE): R.INVALID_FIELD,  # 11.16 "needs to be added"
    (R.ATTRIBUTE_READ_ONLY, None): R.PERMISSION_DENIED,  # 11.15-11.17
    (R.ATTRIBUTE_SINGLE_VALUED, None): R.ILLEGAL_OPERATION,  # 11.15 "already exists"
    (R.ATTRIBUTE_SINGLE_VALUED, Op.REGISTER): R.INVALID_FIELD,  # 11.4 "incorrect attribute"
    (R.ATTRIBUTE_SINGLE_VALUED, Op.CREATE): R.INVALID_FIELD,  # 11.2
    (R.BAD_CRYPTOGRAPHIC_PARAMETERS, None): R.INVALID_FIELD,
    (R.BAD_PASSWORD, None): R.INVALID_FIELD,  # 11.4 (PKCS#12 password)
    (R.CODEC_ERROR, None): R.INVALID_MESSAGE,
    (R.ILLEGAL_OBJECT_TYPE, None): R.ILLEGAL_OPERATION,  # 11.11 "cannot be performed"
    (R.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK, None): R.PERMISSION_DENIED,  # 11.11, 11.30
    (R.INTERNAL_SERVER_ERROR, None): R.GENERAL_FAILURE,
    (R.INVALID_ASYNCHRONOUS_CORRELATION_VALUE, None): R.ITEM_NOT_FOUND,  # 11.29
    (R.INVALID_ATTRIBUTE, None): R.INVALID_FIELD,
    (R.INVALID_ATTRIBUTE, Op.ADD_ATTRIBUTE): R.PERMISSION_DENIED,  # 11.15 "not supported"
    (R.INVALID_ATTRIBUTE_VALUE, None): R.INVALID_FIELD,  # 11.2, 11.4 "incorrect value"
    (R.INVALID_CORRELATION_VALUE, None): R.ITEM_NOT_FOUND,  # 11.30
    (R.INVALID_CSR, None): R.INVALID_FIELD,  # 11.8
    (R.INVALID_OBJECT_TYPE, None): R.INVALID_FIELD,  # 11.2, 11.4 "not recognized"
    (R.INVALID_OBJECT_TYPE, Op.ACTIVATE): R.ILLEGAL_OPERATION,  # 11.20
    (R.INVALID_OBJECT_TYPE, Op.REVOKE): R.ILLEGAL_OPERATION,  # 11.21
    (R.INVALID_OBJECT_TYPE, Op.RE_KEY): R.PERMISSION_DENIED,  # 11.5 "not able to be re-keyed"
    (R.INVALID_OBJECT_TYPE, Op.CHECK): R.ILLEGAL_OPERATION,  # 11.11
    (R.INVALID_OBJECT_TYPE, Op.ENCRYPT): R.PERMISSION_DENIED,  # 11.30 "not able to be used"
    (R.INVALID_OBJECT_TYPE, Op.DECRYPT): R.PERMISSION_DENIED,  # 11.31
    (R.KEY_WRAP_TYPE_NOT_SUPPORTED, None): R.FEATURE_NOT_SUPPORTED,  # 11.12
    (R.MISSING_INITIALIZATION_VECTOR, None): R.MISSING_DATA,
    (R.NON_UNIQUE_NAME_ATTRIBUTE, None): R.INVALID_FIELD,  # 11.2-11.4 "same Name"
    (R.NON_UNIQUE_NAME_ATTRIBUTE, Op.ADD_ATTRIBUTE): R.ILLEGAL_OPERATION,  # 11.15
    (R.NON_UNIQUE_NAME_ATTRIBUTE, Op.MODIFY_ATTRIBUTE): R.ILLEGAL_OPERATION,  # 11.16
    (R.OBJECT_DESTROYED, None): R.ITEM_NOT_FOUND,
    (R.OBJECT_DESTROYED, Op.DESTROY): R.PERMISSION_DENIED,  # 11.22 "already destroyed"
    (R.OBJECT_NOT_FOUND, None): R.ITEM_NOT_FOUND,  # every "does not exist" row
    (R.NOT_AUTHORISED, None): R.PERMISSION_DENIED,
    (R.SERVER_LIMIT_EXCEEDED, None): R.GENERAL_FAILURE,
    (R.SERVER_LIMIT_EXCEEDED, Op.ADD_ATTRIBUTE): R.INDEX_OUT_OF_BOUNDS,  # 11.15
    (R.SERVER_LIMIT_EXCEEDED, Op.REGISTER): R.INDEX_OUT_OF_BOUNDS,  # 11.4
    (R.SERVER_LIMIT_EXCEEDED, Op.CREATE): R.INDEX_OUT_OF_BOUNDS,  # 11.2
    (R.UNKNOWN_ENUMERATION, None): R.INVALID_FIELD,
    (R.UNKNOWN_MESSAGE_EXTENSION, None): R.FEATURE_NOT_SUPPORTED,  # 11.1 criticality
    (R.UNKNOWN_TAG, None): R.INVALID_FIELD,  # 11.1 "unknown field"
    (R.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS, None): R.INVALID_FIELD,
    (R.UNSUPPORTED_PROTOCOL_VERSION, None): R.INVALID_MESSAGE,  # 11.1 major mismatch
    (R.WRAPPING_OBJECT_ARCHIVED, None): R.OBJECT_ARCHIVED,
    (R.WRAPPING_OBJECT_DESTROYED, None): R.ITEM_NOT_FOUND,  # 11.12 "wrapping key"
    (R.WRAPPING_OBJECT_NOT_FOUND, None): R.ITEM_NOT_FOUND,  # 11.12
    (R.WRONG_KEY_LIFECYCLE_STATE, None): R.PERMISSION_DENIED,  # 11.20, 11.22, 11.16
    (R.PROTECTION_STORAGE_UNAVAILABLE, None): R.GENERAL_FAILURE,
    (R.PKCS_11_CODEC_ERROR, None): R.INVALID_MESSAGE,
    (R.PKCS_11_INVALID_FUNCTION, None): R.INVALID_FIELD,
    (R.PKCS_11_INVALID_INTERFACE, None): R.INVALID_FIELD,
    (R.PRIVATE_PROTECTION_STORAGE_UNAVAILABLE, None): R.GENERAL_FAILURE,
    (R.PUBLIC_PROTECTION_STORAGE_UNAVAILABLE, None): R.GENERAL_FAILURE,
    (R.UNKNOWN_OBJECT_GROUP, None): R.INVALID_FIELD,  # 11.10
    (R.CONSTRAINT_VIOLATION, None): R.INVALID_FIELD,
    (R.DUPLICATE_PROCESS_REQUEST, None): R.ILLEGAL_OPERATION,
}


# Reasons whose use KMIP 2.1 widened: a 2.0 client is told what the 2.0 error
# tables give for the same error. 2.1 §6.1 answers an operation refused by
# the object's state or dates (Encrypt past Protect Stop Date, Destroy of an
# Active object) with Wrong Key Lifecycle State; the 2.0 tables, like 1.x,
# with Permission Denied (the 2.0 profile cases, e.g. CS-BC-M-14-20, agree).
V20_EQUIVALENT: dict[ResultReason, ResultReason] = {
    R.WRONG_KEY_LIFECYCLE_STATE: R.PERMISSION_DENIED,
}
_V20 = ProtocolVersion(2, 0)


def v2_only(reason: int) -> bool:
    """Whether a Result Reason exists only in KMIP 2.x."""
    return FIRST_V2_ONLY <= reason < R.GENERAL_FAILURE


def reason_for(
    version: ProtocolVersion, reason: ResultReason, operation: int | None = None
) -> ResultReason:
    """The reason to answer with in ``version`` for an error of ``operation``."""
    if version == _V20:
        return V20_EQUIVALENT.get(reason, reason)
    if version.v2 or not v2_only(reason):
        return reason
    op = Operation(operation) if operation in _OPERATIONS else None
    if op is not None:
        specific = V1_EQUIVALENT.get((reason, op))
        if specific is not None:
            return specific
    return V1_EQUIVALENT.get((reason, None), R.GENERAL_FAILURE)


_OPERATIONS = frozenset(int(o) for o in Operation)
