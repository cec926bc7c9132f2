"""The one error hierarchy.

Every error Krypton raises on purpose is a :class:`KryptonError`; each class
carries the KMIP Result Reason (and Result Status) it is answered with, so the
dispatcher turns any of them into a batch-item failure without a lookup
table. Foreign errors (ssl, sqlite3, grpc, cryptography) are translated into
these at the module boundary where they arise.

Messages must never contain key material or raw message bytes: they are sent
to clients and logged.
"""

from __future__ import annotations

from krypton.ttlv.enums import ResultReason, ResultStatus


class KryptonError(Exception):
    """Base class. ``reason`` and ``status`` are what a client is told."""

    reason: ResultReason = ResultReason.GENERAL_FAILURE
    status: ResultStatus = ResultStatus.OPERATION_FAILED

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- protocol-level -----------------------------------------------------------
class InvalidMessage(KryptonError):
    """The message could not be parsed or is not a valid KMIP message."""

    reason = ResultReason.INVALID_MESSAGE


class MessageTooLarge(InvalidMessage):
    """The message exceeds the configured size limit."""


class LimitExceeded(InvalidMessage):
    """The message exceeds a configured structural limit (depth, items, batch)."""


class UnsupportedVersion(InvalidMessage):
    """The protocol version is not supported."""


class InvalidField(KryptonError):
    """A field has a value or type that is not allowed here."""

    reason = ResultReason.INVALID_FIELD


class MissingField(InvalidField):
    """A required field is missing."""


class OperationNotSupported(KryptonError):
    """The operation is not supported by this server."""

    reason = ResultReason.OPERATION_NOT_SUPPORTED


class ItemNotFound(KryptonError):
    """No object with this identifier exists."""

    reason = ResultReason.ITEM_NOT_FOUND


class PermissionDenied(KryptonError):
    """The caller is not allowed to perform this operation."""

    reason = ResultReason.PERMISSION_DENIED


class FeatureNotSupported(KryptonError):
    """The requested feature is not supported."""

    reason = ResultReason.FEATURE_NOT_SUPPORTED


class KeyFormatTypeNotSupported(KryptonError):
    """The requested key format type is not supported."""

    reason = ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED


class CryptographicFailure(KryptonError):
    """A cryptographic operation failed."""

    reason = ResultReason.CRYPTOGRAPHIC_FAILURE


class WrongKeyLifecycleState(KryptonError):
    """The object is not in a state that allows this operation."""

    reason = ResultReason.WRONG_KEY_LIFECYCLE_STATE


class IllegalOperation(KryptonError):
    """The operation is not allowed on this object."""

    reason = ResultReason.ILLEGAL_OPERATION


class AttributeNotFound(KryptonError):
    """The object has no such attribute."""

    reason = ResultReason.ATTRIBUTE_NOT_FOUND


class ReadOnlyAttribute(KryptonError):
    """The attribute is set by the server and cannot be changed."""

    reason = ResultReason.ATTRIBUTE_READ_ONLY


class GeneralFailure(KryptonError):
    """The server could not complete the operation."""

    reason = ResultReason.GENERAL_FAILURE


# -- key engine / storage (answered as General Failure unless said otherwise) --
class KeyUnavailable(CryptographicFailure):
    """The tenant's service key (L3) for this object is not available here."""


class StorageError(GeneralFailure):
    """The local vault could not complete the request."""


class UpstreamUnavailable(GeneralFailure):
    """The Krypton Core is unreachable."""


class RootUnavailable(GeneralFailure):
    """The root of trust (a PKCS#11 token, OpenBao) cannot be reached."""


class RootRefused(CryptographicFailure):
    """The root of trust refused: its key is missing or may not be used, or a
    blob it was given is not its own."""


class OpenBaoError(GeneralFailure):
    """An OpenBao request failed; ``http_status`` is its HTTP status (None: no answer)."""

    def __init__(self, message: str = "", http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class ConfigError(Exception):
    """A bad configuration value; the message names the setting. Not a KMIP error."""


class UnwrapFailed(CryptographicFailure):
    """A wrapped key failed authentication or has an unknown format."""


class MasterKeyMismatch(CryptographicFailure):
    """The Core master key does not open this key store."""


class ResponseTooLarge(KryptonError):
    """The response would exceed the Maximum Response Size the client set."""

    reason = ResultReason.RESPONSE_TOO_LARGE
