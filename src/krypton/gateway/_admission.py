"""Admission: which connections hold a slot, and what share of the buffers.

How this works
--------------
The :class:`~krypton.gateway.listener.Listener`'s bookkeeping, kept apart
from its I/O. A connection is counted from ``accept()`` (:meth:`Admission.admit`),
handshaking ones included, against one budget; when it is full the oldest
unfinished handshake is dropped for the newcomer (a real client finishes in
milliseconds, a descriptor hoarder never does), or else the oldest connection
the policy refused, or the newcomer is refused. Once through TLS a connection
the policy lets in is counted against its tenant's and its client identity's
share (:class:`Shares`, :meth:`Admission.let_in`) and draws its read buffer on
a budget of its identity, inside its tenant's, inside the listener's
(:class:`krypton.gateway._conn_state.Budget`). Connections that starved for
buffer are resumed, oldest first, when bytes come back; connections the policy
refused are turned away once their grace is over (:meth:`Admission.turn_away_unwelcome`).
"""

from __future__ import annotations

import collections
import itertools
import logging
import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from krypton.gateway._conn_state import Budget

if TYPE_CHECKING:
    from krypton.gateway.engine.dispatch import Session
    from krypton.gateway.listener import Connection

log = logging.getLogger("krypton.listener")

_LOG_EVERY = 10.0  # seconds between two log lines about refused or failed accepts


@dataclass(frozen=True, slots=True)
class Shares:
    """What one tenant (and one client identity of it) may hold of the listener's
    pools; the defaults keep a tenant below half of each."""

    connections: int = 511
    connections_per_identity: int = 256
    pending_bytes: int = 7 << 20
    pending_bytes_per_identity: int = 4 << 20


class Admission:
    """The counts behind a listener (a base of :class:`~krypton.gateway.listener.Listener`)."""

    refuse_grace: float

    def __init__(self, max_connections: int, max_pending_bytes: int, shares: Shares) -> None:
        self.max_connections = self.budget = max_connections
        self.connections: dict[int, Connection] = {}  # every admitted one, from accept
        self.handshaking: dict[int, Connection] = {}  # of those, not through TLS yet: oldest first
        # Buffers of partially received messages (above the initial one), all connections.
        self.pending = Budget(max_pending_bytes, self._budget_freed)
        self.per_tenant, self.per_identity = shares.connections, shares.connections_per_identity
        self.pending_per_tenant = shares.pending_bytes
        self.pending_per_identity = shares.pending_bytes_per_identity
        self.held: collections.Counter[str] = collections.Counter()  # "t:"/"i:" -> connections
        self.shares: dict[str, Budget] = {}  # "t:"/"i:" -> its share of ``pending``
        self.starving: dict[int, Connection] = {}  # paused until the budget has room
        # Through TLS but refused by the policy: when, oldest first; turned away by the sweep.
        self.unwelcome: dict[int, tuple[float, Connection]] = {}
        self.refused = 0
        self.evicted = 0
        self._ids = itertools.count(1)
        self._logged: dict[str, float] = {}

    # -- the budget ------------------------------------------------------------------
    def admit(self, conn: Connection) -> bool:
        """Count a just-accepted connection; when the budget is full, drop the
        oldest unfinished handshake for it (or else the oldest connection the
        policy refused), or refuse it when there is neither."""
        if len(self.connections) >= self.budget:
            if self.handshaking:
                _, oldest = next(iter(self.handshaking.items()))
            elif self.unwelcome:
                _, (_, oldest) = next(iter(self.unwelcome.items()))
            else:
                self.refused += 1
                self._log_rarely("refused", "connection budget (%d) full: refusing", self.budget)
                return False
            self.evicted += 1
            self._log_rarely("evicted", "connection budget full: dropping a connection not let in")
            self.unregister(oldest)
            oldest.abort()
        cid = conn.id = next(self._ids)
        self.connections[cid] = conn
        self.handshaking[cid] = conn
        return True

    def established(self, conn: Connection) -> None:
        self.handshaking.pop(conn.id, None)

    def unregister(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return  # not counted, or already uncounted
        self.handshaking.pop(conn.id, None)
        self.starving.pop(conn.id, None)
        self.unwelcome.pop(conn.id, None)
        self._let_out(conn)
        self.slot_freed()

    def slot_freed(self) -> None:
        """A slot was given back (the listener lets a waiting connection in)."""

    def _budget_freed(self) -> None:
        """Resume connections that starved for buffer, oldest first, while it lasts
        (one held back by its tenant's or identity's share does not hold back others)."""
        pending = self.pending
        for cid, conn in list(self.starving.items()):
            if pending.used >= pending.limit:
                return
            if conn.starved and not conn.regrow():
                continue
            del self.starving[cid]
            if conn.reading and conn.transport is not None:
                conn.transport.resume_reading()

    # -- shares of one tenant and one identity -----------------------------------------
    def let_in(self, conn: Connection, session: Session) -> str | None:
        """Count a connection the policy let in against its tenant's and identity's
        shares; the reason when one is full (then it is not counted)."""
        tenant, identity = "t:" + session.grant.tenant, "i:" + session.identity
        held = self.held
        if held[tenant] >= self.per_tenant:
            return f"too many connections for tenant {session.grant.tenant!r}"
        if held[identity] >= self.per_identity:
            return "too many connections for this client identity"
        held.update((tenant, identity))
        shares = self.shares
        if identity not in shares:
            if tenant not in shares:
                shares[tenant] = Budget(self.pending_per_tenant, parent=self.pending)
            shares[identity] = Budget(self.pending_per_identity, parent=shares[tenant])
        conn.budget = shares[identity]
        return None

    def _let_out(self, conn: Connection) -> None:
        session = conn.session
        if session is None:
            return
        tenant, identity = "t:" + session.grant.tenant, "i:" + session.identity
        self.held.subtract((tenant, identity))
        for key in (identity, tenant):
            if self.held[key] <= 0:
                del self.held[key]
                share = self.shares.get(key)
                if share is not None and share.used == 0:
                    del self.shares[key]

    def _log_rarely(self, what: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged.get(what, -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[what] = now
            log.warning(msg + " (logged at most every %g s)", *args, _LOG_EVERY)

    def turn_away_unwelcome(self, now: float) -> None:
        """Turn away the connections the policy refused whose grace is over at ``now``."""
        unwelcome = self.unwelcome
        while unwelcome:
            cid, (since, conn) = next(iter(unwelcome.items()))
            if now - since < self.refuse_grace:
                break
            del unwelcome[cid]
            conn.turn_away()


def raise_descriptor_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard not in (resource.RLIM_INFINITY, soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the descriptor limit to %d: %s", hard, exc)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
