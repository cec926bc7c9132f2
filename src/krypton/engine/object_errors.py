"""Errors of the Core-side handlers that carry a KMIP 2.x Result Reason.

Each class extends the matching class of :mod:`krypton.errors` (so code that
catches ``ItemNotFound`` or ``InvalidField`` still catches these); a reply in
KMIP 1.x maps the reason down with :func:`krypton.kmip.reasons.reason_for`.
They belong in ``krypton.errors`` and can move there unchanged.
"""

from __future__ import annotations

from krypton.errors import InvalidField, ItemNotFound, KryptonError
from krypton.ttlv.enums import ResultReason


class ObjectNotFound(ItemNotFound):
    """No object with this identifier exists (for this client)."""

    reason = ResultReason.OBJECT_NOT_FOUND


class ObjectDestroyed(KryptonError):
    """The object has been destroyed."""

    reason = ResultReason.OBJECT_DESTROYED


class KeyValueNotPresent(KryptonError):
    """The object's key value is not held by the server."""

    reason = ResultReason.KEY_VALUE_NOT_PRESENT


class InvalidObjectType(InvalidField):
    """The operation does not apply to objects of this type."""

    reason = ResultReason.INVALID_OBJECT_TYPE


class InvalidAttribute(InvalidField):
    """The attribute is not one this server manages for this object."""

    reason = ResultReason.INVALID_ATTRIBUTE


class InvalidAttributeValue(InvalidField):
    """The attribute's value has the wrong type or an impossible value."""

    reason = ResultReason.INVALID_ATTRIBUTE_VALUE


class AttributeSingleValued(KryptonError):
    """The attribute may have only one instance and already has it."""

    reason = ResultReason.ATTRIBUTE_SINGLE_VALUED


class MultiValuedAttribute(KryptonError):
    """The attribute has several instances: name the one to change."""

    reason = ResultReason.MULTI_VALUED_ATTRIBUTE


class AttributeInstanceNotFound(KryptonError):
    """The object has no such instance of the attribute."""

    reason = ResultReason.ATTRIBUTE_INSTANCE_NOT_FOUND


class NonUniqueName(KryptonError):
    """Another object already has this Name."""

    reason = ResultReason.NON_UNIQUE_NAME_ATTRIBUTE


class IncompatibleUsageMask(KryptonError):
    """The object may not be used for the requested cryptographic usage."""

    reason = ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK


class SensitiveObject(KryptonError):
    """The object is Sensitive: its value is not given out unwrapped."""

    reason = ResultReason.SENSITIVE


class NotExtractable(KryptonError):
    """The object is not Extractable: its value is not given out."""

    reason = ResultReason.NOT_EXTRACTABLE
