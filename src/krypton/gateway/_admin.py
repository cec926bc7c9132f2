"""What a gateway shows on its admin endpoint (a :class:`krypton.admin.server.Source`).

Everything here runs on the admin thread and only reads: the dispatcher's
:class:`~krypton.metrics.meter.KmipMeter`, the listener's counts, the key
ring (its views are immutable, swapped under its lock), the uplink client's
state, and the vault (its outbox through the vault's per-thread reader, its
commit histograms as copies). Nothing waits on the event loop.

Readiness (``/readyz``) is the gateway's list of checks (``Gateway.checks``):
the listener is up, the vault takes writes, every tenant of the policy holds
an active L3 with a valid lease. The uplink being down is not among them: the
hot path goes on without the Core until the leases run out.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from krypton.admin.certs import Expiry, expiry_family
from krypton.admin.checks import Check, evaluate, missing
from krypton.errors import KryptonError
from krypton.metrics.kmip import kmip_families, operation_label, result_label
from krypton.metrics.meter import (
    KPI_BUCKETS,
    Family,
    KmipMeter,
    counter,
    gauge,
    histogram,
    reload_failures,
)
from krypton.uplink.types import ConnectionState

if TYPE_CHECKING:
    from krypton.gateway.app import Gateway

def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


class GatewaySource:
    """The admin view of one gateway (one worker of it)."""

    def __init__(self, gateway: Gateway, meter: KmipMeter, worker: int | None = None) -> None:
        self.gateway = gateway
        self.meter = meter
        self.worker = worker
        self._expiry = Expiry(lambda: self.gateway.tls.loaded)

    # -- readiness ------------------------------------------------------------------
    @property
    def checks(self) -> list[Check]:
        return self.gateway.checks

    def default_checks(self) -> list[Check]:
        return [Check("listener", self._listener), Check("vault", self._vault),
                Check("l3", self._l3), Check("certificate", self._expiry.check)]  # fmt: skip

    def _listener(self) -> list[str]:
        listener = self.gateway.listener
        up = listener is not None and listener.listening
        return [] if up else ["the KMIP listener is not up"]

    def _vault(self) -> list[str]:
        vault = self.gateway.vault
        if vault is None:
            return ["the vault is not open"]
        why = vault.unwritable()
        path = vault.path  # None: not a file (OpenBao)
        if why is None and path is not None and not os.access(path.parent, os.W_OK):
            why = f"the vault's folder {path.parent} is not writable"
        return [] if why is None else [why]

    def _l3(self) -> list[str]:
        ring = self.gateway.keyring
        lacking = [t for t in sorted(self._tenants()) if ring.active_version(t) is None]
        if not lacking:
            return []
        client = self.gateway.client
        uplink = "" if client is None or client.state is ConnectionState.READY else (
            f" (uplink {client.state.value}: {client.last_error})")
        return [f"tenant {t!r} holds no active L3 key with a valid lease{uplink}" for t in lacking]

    def _tenants(self) -> frozenset[str]:
        listener = self.gateway.listener
        policy = listener.policy if listener is not None else self.gateway.policy
        return policy.tenants if policy is not None else frozenset()

    # -- metrics --------------------------------------------------------------------
    def families(self) -> list[Family]:
        g = self.gateway
        out = kmip_families(self.meter, "krypton_kmip_requests_total",
                            "krypton_kmip_request_duration_seconds", "KMIP requests")
        listener = g.listener
        shakes = dict(listener.handshakes) if listener is not None else {}
        out.append(counter("krypton_tls_handshakes_total", "TLS handshakes on the KMIP port",
                           ("result",), (((k,), float(v)) for k, v in sorted(shakes.items()))))
        out.append(gauge("krypton_connections", "KMIP connections by state", ("state",),
                         (((k,), float(v)) for k, v in self._connections().items())))
        client = g.client
        up = client is not None and client.state is ConnectionState.READY
        out.append(gauge("krypton_uplink_up", "1 while the uplink to the Core is in sync",
                         values=[((), float(up))]))
        out += self._outbox_families()
        ring = g.keyring
        now = ring.now()
        leases = []
        for tenant in sorted(self._tenants() | set(ring.tenants())):
            version = ring.active_version(tenant)
            ends = ring.lease_expires_at(tenant, version) if version is not None else None
            leases.append(((tenant,), max(0.0, ends - now) if ends is not None else 0.0))
        out.append(gauge("krypton_l3_lease_remaining_seconds",
                         "Seconds left on the lease of each tenant's active L3 (0: none)",
                         ("tenant",), leases))
        out.append(expiry_family(self._expiry, "gateway"))
        out.append(reload_failures(g.tls.failures))
        vault = g.vault
        if vault is not None:
            seconds, sizes = vault.commit_stats
            out.append(histogram("krypton_vault_commit_duration_seconds",
                                 "Vault transactions (one fsync each), commit included",
                                 seconds.bounds, samples=[((), *seconds.read())]))
            out.append(histogram("krypton_vault_commit_batch_size",
                                 "Writes per vault transaction (group commit)",
                                 sizes.bounds, samples=[((), *sizes.read())]))
        return out

    def _connections(self) -> dict[str, int]:
        listener = self.gateway.listener
        if listener is None:
            return {"handshaking": 0, "open": 0, "refused": 0, "waiting": 0}
        total, shaking = len(listener.connections), len(listener.handshaking)
        refused = len(listener.unwelcome)
        return {"handshaking": shaking, "open": max(0, total - shaking - refused),
                "refused": refused, "waiting": len(listener.waiting)}

    def _outbox(self) -> tuple[int, float] | None:
        vault = self.gateway.vault
        if vault is None:
            return None
        try:
            keys, oldest = vault.outbox_stats()
        except KryptonError:
            return None
        return keys, (max(0.0, time.time() - oldest) if oldest is not None else 0.0)

    def _outbox_families(self) -> list[Family]:
        found = self._outbox()
        if found is None:
            return []
        keys, age = found
        return [
            gauge("krypton_outbox_keys", "Keys made here that the Core has not acknowledged",
                  values=[((), float(keys))]),
            gauge("krypton_outbox_oldest_seconds", "Age of the oldest key in the outbox (0: empty)",
                  values=[((), age)]),
        ]  # fmt: skip

    # -- the status page --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        g = self.gateway
        cfg = g.config
        ready = missing(evaluate(self.checks))
        ring = g.keyring
        now = ring.now()
        tenants = []
        for tenant in sorted(self._tenants() | set(ring.tenants())):
            active = ring.active_version(tenant)
            versions = ", ".join(f"v{v} {s.name.lower()}"
                                 for v, s in sorted(ring.versions(tenant).items()))
            ends = ring.lease_expires_at(tenant, active) if active is not None else None
            left = ends - now if ends is not None else None
            tenants.append([tenant, f"v{active}" if active is not None else "none",
                            versions or "none",
                            _duration(left) if left is not None else "-",
                            _when(time.time() + left) if left is not None else "-"])
        client = g.client
        state = client.state.value if client is not None else "starting"
        error = client.last_error if client is not None and state != "ready" else ""
        outbox = self._outbox()
        vault = g.vault
        conns = self._connections()
        listener = g.listener
        shakes = dict(listener.handshakes) if listener is not None else {}
        counts = self.meter.counted()
        timed = self.meter.timed()
        return {
            "title": f"Krypton Gateway {cfg.name}",
            "process": "gateway",
            "pid": os.getpid(),
            "worker": self.worker,
            "ready": not ready,
            "missing": ready,
            "sections": [
                {"title": "Tenants", "columns": ["tenant", "active L3", "L3 versions",
                                                 "lease left", "lease ends"], "rows": tenants},
                {"title": "Uplink", "columns": ["state", "Core", "last error"],
                 "rows": [[state, cfg.uplink.core_address, error or "-"]]},
                {"title": "Outbox", "columns": ["keys waiting", "oldest", "changes held",
                                                "quarantined"],
                 "rows": [[str(outbox[0]) if outbox else "?",
                           _duration(outbox[1]) if outbox and outbox[0] else "-",
                           str(vault.pending_changes) if vault else "?",
                           str(vault.quarantined) if vault else "?"]]},
                {"title": "Connections", "columns": [*conns, "TLS handshakes"],
                 "rows": [[*(str(n) for n in conns.values()),
                           ", ".join(f"{k} {v}" for k, v in sorted(shakes.items()))]]},
                {"title": "KMIP requests", "columns": ["operation", "result", "items"],
                 "rows": [[operation_label(op), result_label(res), str(n)]
                          for (op, res), n in sorted(counts.items())]},
            ],
            "latency": {
                "title": "KMIP latency",
                "buckets": list(KPI_BUCKETS),
                "operations": {operation_label(op): list(c) for op, (c, _) in timed.items()},
            },
        }  # fmt: skip
