"""Per-request state, passed as a frozen argument (never kept on shared objects)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from krypton.kmip.versions import ProtocolVersion
from krypton.model.registry import AuditSlot


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who asks, in which protocol version, and the batch's ID Placeholder.

    ``identity`` and ``tenant`` come from the TLS session and the policy;
    ``version`` is the version the request is answered in; ``now`` is the
    message's server time (seconds since the epoch) so every item of a batch
    sees one clock; ``request_id`` tags log lines (never key material).
    """

    identity: str
    tenant: str
    version: ProtocolVersion
    now: int
    request_id: str
    placeholder: str | None = None
    # At the Core: the batch this item belongs to asked for Undo (krypton.engine.undo);
    # what the item changes is journaled under this token until the batch ends.
    undo_token: str | None = None
    # At the Core: the operation's audit record, written with its first change.
    audit: AuditSlot | None = field(default=None, compare=False)

    def with_placeholder(self, uid: str | None) -> RequestContext:
        return self if uid is None or uid == self.placeholder else replace(self, placeholder=uid)
