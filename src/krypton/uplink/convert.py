"""The uplink's boundary: protobuf messages ↔ :mod:`krypton.uplink.types`,
gRPC status codes ↔ Krypton errors, and TLS files → gRPC credentials.

Nothing outside ``krypton.uplink`` sees a protobuf object or a ``grpc`` error.
An L3 key's material turns into a :class:`SecretBytes` as soon as it is read
from its message; the message's own immutable ``bytes`` cannot be wiped (that
is the limit of best-effort zeroisation here), so the message is dropped at
once and never logged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import grpc

from krypton.config import TLSConfig
from krypton.crypto.keyring import L3Grant, L3State
from krypton.crypto.secret import SecretBytes
from krypton.errors import (
    CryptographicFailure,
    GeneralFailure,
    InvalidField,
    InvalidMessage,
    ItemNotFound,
    KryptonError,
    PermissionDenied,
    UpstreamUnavailable,
)
from krypton.model.record import KeyRecord
from krypton.tls.material import Material, read_files
from krypton.uplink.types import (
    CoreEvent,
    ExecuteRequest,
    ExecuteResult,
    Heartbeat,
    L3Versions,
    StateChange,
)
from krypton.uplink.v1 import uplink_pb2 as pb

MAX_DETAIL = 300

# -- errors -----------------------------------------------------------------------
# Core side: the first class in an error's MRO found here picks the status code.
_STATUS_OF_ERROR: dict[type[KryptonError], grpc.StatusCode] = {
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ItemNotFound: grpc.StatusCode.NOT_FOUND,
    InvalidField: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidMessage: grpc.StatusCode.INVALID_ARGUMENT,
    UpstreamUnavailable: grpc.StatusCode.UNAVAILABLE,
    # A record that failed its MAC (or whose L3 is not held): fail closed as a
    # Cryptographic Failure at the gateway too, not as a General Failure.
    CryptographicFailure: grpc.StatusCode.DATA_LOSS,
}

# Gateway side: status code → (error class, how the message starts).
_UNREACHABLE = (UpstreamUnavailable, "the Krypton Core is unreachable")
_ERROR_OF_STATUS: dict[grpc.StatusCode, tuple[type[KryptonError], str]] = {
    grpc.StatusCode.UNAVAILABLE: _UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: _UNREACHABLE,
    grpc.StatusCode.CANCELLED: _UNREACHABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: _UNREACHABLE,
    grpc.StatusCode.ABORTED: _UNREACHABLE,
    grpc.StatusCode.PERMISSION_DENIED: (PermissionDenied, "the Krypton Core refused this gateway"),
    grpc.StatusCode.UNAUTHENTICATED: (PermissionDenied, "the Krypton Core refused this gateway"),
    grpc.StatusCode.NOT_FOUND: (ItemNotFound, "not found at the Krypton Core"),
    grpc.StatusCode.INVALID_ARGUMENT: (InvalidField, "the Krypton Core rejected the request"),
    grpc.StatusCode.DATA_LOSS: (CryptographicFailure, "the Krypton Core refused a record"),
}
_OTHER = (GeneralFailure, "the Krypton Core failed")


def status_of(error: KryptonError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = _STATUS_OF_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def error_of(error: grpc.aio.AioRpcError, timeout: float) -> KryptonError:
    """The Krypton error for a failed call; ``timeout`` is the deadline it had."""
    code = error.code()
    cls, prefix = _ERROR_OF_STATUS.get(code, _OTHER)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        detail = f"no answer within {timeout:g} s"
    else:
        detail = f"{code.name}: {error.details() or 'no detail'}"
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 1] + "…"
    return cls(f"{prefix}: {detail}")


# -- credentials --------------------------------------------------------------------
def _pem_files(tls: TLSConfig, setting: str) -> tuple[bytes, bytes, bytes]:
    material = read_files(tls, setting)  # checks every file; ConfigError names the setting
    return material.chain, material.key, material.ca


def server_credentials(tls: TLSConfig, setting: str = "core.tls") -> grpc.ServerCredentials:
    """Mutual TLS from ``tls``'s files, fixed: a client certificate chaining to the CA
    is required."""
    cert, key, ca = _pem_files(tls, setting)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=True)


def server_certificates(material: Material) -> grpc.ServerCertificateConfiguration:
    """What the Core's server presents and trusts (a client certificate chaining to
    the bundle is required), as gRPC's dynamic credentials take it."""
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.chain)], root_certificates=material.ca)


def dynamic_server_credentials(
    material: Material,
    fetch: Callable[[], grpc.ServerCertificateConfiguration | None],
) -> grpc.ServerCredentials:
    """Mutual TLS whose material gRPC asks ``fetch`` for before each new handshake
    (None: unchanged), so a rotation needs no restart."""
    # gRPC documents None as "no change"; its stubs do not say so.
    fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], fetch)
    return grpc.dynamic_ssl_server_credentials(
        server_certificates(material), fetcher, require_client_authentication=True)


def channel_credentials(tls: TLSConfig, setting: str = "gateway.tls") -> grpc.ChannelCredentials:
    """Verifies the Core against ``tls.ca`` (and its name) and presents ``tls.cert``."""
    cert, key, ca = _pem_files(tls, setting)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


# -- messages -----------------------------------------------------------------------
def change_to_pb(change: StateChange) -> pb.KeyStateChange:
    return pb.KeyStateChange(tenant=change.tenant, uid=change.uid, state=change.state,
                             revision=change.revision, seq=change.seq)


def change_from_pb(msg: pb.KeyStateChange) -> StateChange:
    return StateChange(msg.tenant, msg.uid, msg.state, msg.revision, msg.seq)


def event_to_pb(event: CoreEvent) -> pb.CoreEvent:
    if isinstance(event, L3Grant):
        return pb.CoreEvent(l3_key=pb.L3Key(
            tenant=event.tenant,
            version=event.version,
            material=event.material.reveal(),
            state=pb.L3State.ValueType(int(event.state)),
            lease_seconds=event.lease_seconds,
        ))
    if isinstance(event, StateChange):
        return pb.CoreEvent(state_change=change_to_pb(event))
    if isinstance(event, L3Versions):
        return pb.CoreEvent(l3_versions=pb.L3Versions(tenant=event.tenant,
                                                      versions=sorted(event.versions)))
    return pb.CoreEvent(heartbeat=pb.Heartbeat(time_ms=event.time_ms, feed_seq=event.feed_seq,
                                               reconcile=event.reconcile))


def event_from_pb(msg: pb.CoreEvent) -> CoreEvent | None:
    """The event, or None for a kind this gateway does not know (a newer Core).

    An L3 key with an unknown state or no material raises :class:`InvalidField`.
    """
    kind = msg.WhichOneof("event")
    if kind == "l3_key":
        key = msg.l3_key
        try:
            state = L3State(key.state)
        except ValueError:
            raise InvalidField(f"L3 key of tenant {key.tenant!r} with unknown state "
                               f"{key.state}") from None
        if not key.material or not key.tenant:
            raise InvalidField("L3 key without tenant or material")
        return L3Grant(key.tenant, key.version, SecretBytes(key.material), state,
                       key.lease_seconds)
    if kind == "state_change":
        return change_from_pb(msg.state_change)
    if kind == "heartbeat":
        beat = msg.heartbeat
        return Heartbeat(beat.time_ms, beat.feed_seq, beat.reconcile)
    if kind == "l3_versions":
        return L3Versions(msg.l3_versions.tenant, frozenset(msg.l3_versions.versions))
    return None


def key_to_pb(key: KeyRecord) -> pb.WrappedKey:
    """A wrapped L4 record as the uplink carries it (its outbox flag stays behind)."""
    return pb.WrappedKey(
        uid=key.uid,
        tenant=key.tenant,
        object_type=key.object_type,
        algorithm=key.algorithm,
        length=key.length,
        state=key.state,
        l3_version=key.l3_version,
        wrapped=key.wrapped,
        attributes=key.attributes,
        created=key.created,
        mac=key.mac,
    )


def key_from_pb(msg: pb.WrappedKey) -> KeyRecord:
    """The record a message carries. What travels on the uplink is held by the Core
    (sent to it, or read from it), so the record is marked synced. Protobuf's
    defaults (0, b"") are the record's absent values already."""
    return KeyRecord(
        uid=msg.uid,
        tenant=msg.tenant,
        object_type=msg.object_type,
        algorithm=msg.algorithm,
        length=msg.length,
        state=msg.state,
        l3_version=msg.l3_version,
        wrapped=msg.wrapped,
        attributes=msg.attributes,
        created=msg.created,
        synced=True,
        mac=msg.mac,
    )


def execute_to_pb(req: ExecuteRequest, gateway: str) -> pb.ExecuteRequest:
    msg = pb.ExecuteRequest(
        batch_item=req.batch_item,
        identity=req.identity,
        tenant=req.tenant,
        protocol_major=req.protocol[0],
        protocol_minor=req.protocol[1],
        correlation_id=req.correlation_id,
        gateway=gateway,
    )
    if req.placeholder is not None:
        msg.placeholder = req.placeholder
    return msg


def execute_from_pb(msg: pb.ExecuteRequest) -> ExecuteRequest:
    return ExecuteRequest(
        batch_item=msg.batch_item,
        identity=msg.identity,
        tenant=msg.tenant,
        protocol=(msg.protocol_major, msg.protocol_minor),
        correlation_id=msg.correlation_id,
        placeholder=msg.placeholder if msg.HasField("placeholder") else None,
    )


def result_to_pb(result: ExecuteResult) -> pb.ExecuteResponse:
    msg = pb.ExecuteResponse(batch_item=result.batch_item,
                             changes=[change_to_pb(c) for c in result.changes])
    if result.placeholder is not None:
        msg.placeholder = result.placeholder
    return msg


def result_from_pb(msg: pb.ExecuteResponse) -> ExecuteResult:
    return ExecuteResult(
        batch_item=msg.batch_item,
        changes=tuple(change_from_pb(c) for c in msg.changes),
        placeholder=msg.placeholder if msg.HasField("placeholder") else None,
    )
