"""When a certificate file's certificates expire (for the expiry metric)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cryptography import x509

from krypton.metrics.meter import Family, gauge


class Expiry:
    """The earliest ``notAfter`` (seconds since the epoch) of the certificates in
    a PEM file, read again only when the file changes; None if it cannot be read."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[int, int], float | None]] = {}
        self._lock = threading.Lock()

    def of(self, path: Path) -> float | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            seen = self._seen.get(path)
            if seen is not None and seen[0] == stamp:
                return seen[1]
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError):
            value = None
        else:
            value = min(c.not_valid_after_utc.timestamp() for c in certs) if certs else None
        with self._lock:
            self._seen[path] = (stamp, value)
        return value


def expiry_family(expiry: Expiry, own: tuple[str, Path], ca: Path) -> Family:
    """``krypton_tls_certificate_expiry_timestamp_seconds{role}``: the process's
    own certificate (``role`` its kind: gateway, core) and its trust bundle (ca)."""
    values = []
    for role, path in (own, ("ca", ca)):
        at = expiry.of(path)
        if at is not None:
            values.append(((role,), at))
    return gauge("krypton_tls_certificate_expiry_timestamp_seconds",
                 f"When the certificate ({own[0]}: its own; ca: the earliest of the trust "
                 "bundle) expires, seconds since the epoch", ("role",), values)
