"""What a Core shows on its admin endpoint (a :class:`krypton.admin.server.Source`).

The Core counts on its event loop into plain numbers (the service's Execute
meter and synced-key count, :class:`MeteredRegistry`'s per-call histograms
and audit counts); the admin thread reads them. The one thing it asks the
event loop for is readiness: the registry must answer a small read
(``feed_bounds``) within ``READY_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from krypton.admin.certs import Expiry, expiry_family
from krypton.admin.checks import Check, evaluate, missing
from krypton.metrics.kmip import kmip_families, operation_label, result_label
from krypton.metrics.meter import (
    CONTROL_BUCKETS,
    Family,
    Histogram,
    counter,
    gauge,
    histogram,
    reload_failures,
)

if TYPE_CHECKING:
    from krypton.core.app import Core
    from krypton.roots.base import RootHealth

READY_TIMEOUT = 2.0
ROOT_PROBE_EVERY = 5.0  # seconds a probe of the root of trust is reused


class MeteredRegistry:
    """A registry (any backend) whose every call is timed, by method, and whose
    audit records written are counted; everything else passes through."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: dict[str, Histogram] = {}
        self.audits = {"written": 0, "failed": 0}
        self._wrapped: dict[str, Callable[..., Any]] = {}

    def __getattr__(self, name: str) -> Any:
        wrapped = self._wrapped.get(name)
        if wrapped is not None:
            return wrapped
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        timing = self.calls.setdefault(name, Histogram(CONTROL_BUCKETS))
        audited = name in ("append_audit", "update_object")

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            audit = audited and (name == "append_audit" or kwargs.get("audit") is not None
                                 or (len(args) > 1 and args[1] is not None))
            try:
                result = await attr(*args, **kwargs)
            except BaseException:
                if audit:
                    self.audits["failed"] += 1
                raise
            finally:
                timing.observe(time.perf_counter() - began)
            if audit:
                self.audits["written"] += 1
            return result

        self._wrapped[name] = call
        return call


class CoreSource:
    """The admin view of one Core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._expiry = Expiry(lambda: self.core.tls.loaded)
        self._root_last: RootHealth | None = None

    @property
    def checks(self) -> list[Check]:
        return self.core.checks

    def default_checks(self) -> list[Check]:
        return [Check("registry", self._registry), Check("certificate", self._expiry.check),
                Check("root", self._root)]

    def _root_health(self) -> RootHealth | None:
        """The root of trust's health, probed at most every ROOT_PROBE_EVERY
        seconds (a scrape and a readiness look share one probe); None while the
        Core starts."""
        core = self.core
        last = self._root_last
        if last is not None and time.time() - last.checked_at < ROOT_PROBE_EVERY:
            return last
        loop = core.loop
        if loop is None or core.keys is None:
            return None
        future = asyncio.run_coroutine_threadsafe(core.root_health(READY_TIMEOUT), loop)
        try:
            self._root_last = future.result(READY_TIMEOUT + 1.0)
        except Exception:  # the probe itself never raises; this is the loop not answering
            future.cancel()
            return last
        return self._root_last

    def _root(self) -> list[str]:
        health = self._root_health()
        if health is None:
            return ["the Core is starting"]
        if health.ok:
            return []
        return [f"the root of trust ({health.kind} at {health.where}) does not answer:"
                f" {health.detail}"]

    def _registry(self) -> list[str]:
        core = self.core
        loop, registry = core.loop, core.registry
        if loop is None or registry is None or core.server is None:
            return ["the Core is starting"]
        future = asyncio.run_coroutine_threadsafe(registry.feed_bounds(), loop)
        try:
            future.result(READY_TIMEOUT)
        except TimeoutError:
            future.cancel()
            return [f"the registry did not answer within {READY_TIMEOUT:g} s"]
        except Exception as exc:
            return [f"the registry does not answer ({type(exc).__name__})"]
        return []

    def families(self) -> list[Family]:
        core = self.core
        out = kmip_families(core.meter, "krypton_core_execute_total",
                            "krypton_core_execute_duration_seconds",
                            "Delegated KMIP batch items (Execute)")
        service = core.service
        connected = service.connected() if service is not None else {}
        out.append(gauge("krypton_core_gateways_connected",
                         "Gateways with a Subscribe stream open", values=[((), len(connected))]))
        synced = service.synced_keys if service is not None else 0
        out.append(counter("krypton_core_synced_keys_total",
                           "Keys stored from gateways' outboxes (SyncKeys)",
                           values=[((), float(synced))]))
        registry = core.metered
        calls = sorted(list(registry.calls.items())) if registry is not None else []
        out.append(histogram("krypton_core_registry_duration_seconds",
                             "Registry calls by method", CONTROL_BUCKETS, ("call",),
                             [((name,), *h.read()) for name, h in calls]))
        audits = dict(registry.audits) if registry is not None else {}
        out.append(counter("krypton_core_audit_writes_total", "Audit records written (or not)",
                           ("result",), (((k,), float(v)) for k, v in sorted(audits.items()))))
        out.append(expiry_family(self._expiry, "core"))
        out.append(reload_failures(core.tls.failures))
        health = self._root_health()
        if health is not None:
            out.append(gauge("krypton_core_root_up",
                             "Whether the root of trust (L1) answered its last probe",
                             ("kind",), [((health.kind,), float(health.ok))]))
            out.append(gauge("krypton_core_root_probe_seconds",
                             "How long the last probe of the root of trust took",
                             ("kind",), [((health.kind,), health.seconds)]))
        return out

    def status(self) -> dict[str, Any]:
        core = self.core
        cfg = core.config
        lacking = missing(evaluate(self.checks))
        ring = core.ring
        tenants = []
        for tenant in sorted(set(cfg.tenants) | set(ring.tenants())):
            active = ring.active_version(tenant)
            versions = ", ".join(f"v{v} {s.name.lower()}"
                                 for v, s in sorted(ring.versions(tenant).items()))
            tenants.append([tenant, f"v{active}" if active is not None else "none",
                            versions or "none"])
        service = core.service
        connected = service.connected() if service is not None else {}
        counts = core.meter.counted()
        timed = core.meter.timed()
        port = str(core.server.port) if core.server is not None else "-"
        return {
            "title": f"Krypton Core {cfg.name}",
            "process": "core",
            "pid": os.getpid(),
            "worker": None,
            "ready": not lacking,
            "missing": lacking,
            "sections": [
                {"title": "Core", "columns": ["uplink", "registry", "synced keys"],
                 "rows": [[f"{cfg.listen_host}:{port}",
                           "sqlite" if cfg.registry.startswith("sqlite:") else "postgresql",
                           str(service.synced_keys if service is not None else 0)]]},
                {"title": "Tenants", "columns": ["tenant", "active L3", "L3 versions"],
                 "rows": tenants},
                {"title": "Gateways connected", "columns": ["gateway", "tenants"],
                 "rows": [[g, ", ".join(sorted(t))] for g, t in sorted(connected.items())]},
                {"title": "Execute", "columns": ["operation", "result", "items"],
                 "rows": [[operation_label(op), result_label(res), str(n)]
                          for (op, res), n in sorted(counts.items())]},
            ],
            "latency": {
                "title": "Execute latency",
                "buckets": list(CONTROL_BUCKETS),
                "operations": {operation_label(op): list(c) for op, (c, _) in timed.items()},
            },
        }  # fmt: skip
