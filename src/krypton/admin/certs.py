"""When the certificates in use expire (the expiry metric and readiness).

The figures come from the TLS material the process has loaded (the reloader's
current :class:`~krypton.tls.material.Material`), not from the files on disk: a
file rewritten with a bad pair is not in use, and an SVID from the Workload API
has no file at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cryptography import x509

from krypton.metrics.meter import Family, gauge
from krypton.tls.material import Material


class Expiry:
    """The leaf's ``notAfter`` and the trust bundle's earliest ``notAfter`` (seconds
    since the epoch) of the material in use, parsed again only when it changes."""

    def __init__(self, current: Callable[[], Material | None]) -> None:
        self._current = current
        self._seen: tuple[bytes, float | None] | None = None
        self._lock = threading.Lock()

    def own(self) -> float | None:
        material = self._current()
        return None if material is None else material.not_after

    def bundle(self) -> float | None:
        material = self._current()
        if material is None:
            return None
        digest = material.digest
        with self._lock:
            if self._seen is not None and self._seen[0] == digest:
                return self._seen[1]
        try:
            certs = x509.load_pem_x509_certificates(material.ca)
        except ValueError:
            value = None
        else:
            value = min(c.not_valid_after_utc.timestamp() for c in certs) if certs else None
        with self._lock:
            self._seen = (digest, value)
        return value

    def check(self) -> list[str]:
        """Readiness: the process's own certificate has not expired."""
        at = self.own()
        if at is None:
            return ["no TLS certificate loaded"]
        if at <= time.time():
            return ["the TLS certificate in use has expired"]
        return []


def expiry_family(expiry: Expiry, role: str) -> Family:
    """``krypton_tls_certificate_expiry_timestamp_seconds{role}``: the process's
    own certificate (``role`` its kind: gateway, core) and its trust bundle (ca)."""
    values = []
    for name, at in ((role, expiry.own()), ("ca", expiry.bundle())):
        if at is not None:
            values.append(((name,), at))
    return gauge("krypton_tls_certificate_expiry_timestamp_seconds",
                 f"When the certificate ({role}: its own; ca: the earliest of the trust "
                 "bundle) expires, seconds since the epoch", ("role",), values)
