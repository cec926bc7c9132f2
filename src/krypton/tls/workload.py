"""TLS material from the SPIFFE Workload API (``[gateway.tls] source = "spiffe"``).

How this works
--------------
:class:`WorkloadSource` holds a py-spiffe ``X509Source``: a thread of its own
keeps a ``FetchX509SVID`` stream open to the Workload API (SPIRE's agent, or
any other implementation) on a Unix socket, and each update it receives (a
new SVID at half its lifetime, a new bundle) bumps our update count — the
source's stamp, so the :class:`~krypton.tls.reload.Reloader` loads it at its
next look. :meth:`WorkloadSource.load` turns the default SVID (chain and key)
and the bundle of the SVID's own trust domain (every CA it holds) into checked
:class:`~krypton.tls.material.Material`.

py-spiffe retries a stream that breaks, but closes the ``X509Source`` for
good on an error it does not retry (or an SVID it cannot parse). The watch
task (:meth:`run`) sees that and makes a new one, after a backoff that doubles
from ``backoff[0]`` to ``backoff[1]`` seconds; meanwhile the material in use
stays. The SVID's key reaches OpenSSL only through memory
(:mod:`krypton.tls.material`), never a file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Hashable
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from spiffe import X509Source
from spiffe.errors import PySpiffeError

from krypton.errors import ConfigError
from krypton.tls.material import Material, Names, check

log = logging.getLogger("krypton.tls")

SOCKET_ENV = "SPIFFE_ENDPOINT_SOCKET"
DEFAULT_BACKOFF = (0.5, 30.0)
_PEM = serialization.Encoding.PEM


class X509Feed(Protocol):
    """What we use of py-spiffe's ``X509Source``."""

    def get_x509_context(self) -> object: ...

    def subscribe_for_updates(self, callback: Callable[[], None]) -> None: ...

    def is_closed(self) -> bool: ...

    def close(self) -> None: ...


def socket_address(configured: str) -> str:
    """The Workload API address: the setting, else ``$SPIFFE_ENDPOINT_SOCKET``;
    a plain path becomes ``unix://<path>``."""
    address = configured or os.environ.get(SOCKET_ENV, "")
    if not address:
        raise ConfigError(
            f"gateway.tls.spiffe_socket: required with source = \"spiffe\" (or set {SOCKET_ENV})")
    return f"unix://{address}" if address.startswith("/") else address


class WorkloadSource:
    """Implements :class:`krypton.tls.reload.Source` over the Workload API."""

    def __init__(
        self,
        socket: str,
        *,
        timeout: float = 30.0,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
        setting: str = "gateway.tls",
        factory: Callable[[str, float], X509Feed] | None = None,
    ) -> None:
        self.address = socket_address(socket)
        self.timeout = timeout
        self.backoff = backoff
        self.names = Names(f"{setting} (SPIFFE SVID)", f"{setting} (SPIFFE SVID key)",
                           f"{setting} (SPIFFE bundle)")
        self._factory = factory or _open
        self._feed: X509Feed | None = None
        self._updates = 0  # bumped from py-spiffe's thread; read on the loop
        self.rebuilds = 0  # X509Sources made after the first

    @property
    def name(self) -> str:
        return f"SPIFFE Workload API ({self.address})"

    def stamp(self) -> Hashable:
        return self._updates

    def _updated(self) -> None:
        self._updates += 1

    async def start(self) -> None:
        """Connect and wait for the first SVID (``timeout``); ConfigError when none comes."""
        try:
            self._feed = await asyncio.to_thread(self._factory, self.address, self.timeout)
        except (PySpiffeError, OSError) as e:
            raise ConfigError(f"{self.names.cert}: no SVID from the Workload API at "
                              f"{self.address}: {e}") from None
        self._feed.subscribe_for_updates(self._updated)

    def load(self) -> Material:
        feed = self._feed
        if feed is None or feed.is_closed():
            raise ConfigError(f"{self.names.cert}: the Workload API connection is closed")
        try:
            context = feed.get_x509_context()
            svid = context.default_svid  # type: ignore[attr-defined]
            chain = b"".join(c.public_bytes(_PEM) for c in svid.cert_chain)
            key = svid.private_key.private_bytes(
                _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            bundle = context.x509_bundle_set.get_bundle_for_trust_domain(  # type: ignore[attr-defined]
                svid.spiffe_id.trust_domain)
            authorities = bundle.x509_authorities if bundle is not None else set()
            ca = b"".join(sorted(c.public_bytes(_PEM) for c in authorities))
        except PySpiffeError as e:
            raise ConfigError(f"{self.names.cert}: {e}") from None
        return check(chain, key, ca, self.names, origin=self.name)

    async def run(self, interval: float = 1.0) -> None:
        """Make a new X509Source whenever py-spiffe closed ours (until cancelled)."""
        attempt = 0
        while True:
            await asyncio.sleep(interval)
            feed = self._feed
            if feed is not None and not feed.is_closed():
                attempt = 0
                continue
            delay = min(self.backoff[1], self.backoff[0] * 2.0 ** min(attempt, 32))
            attempt += 1
            log.warning("%s: the X.509 source closed; a new one in %.1f s", self.name, delay)
            await asyncio.sleep(delay)
            try:
                fresh = await asyncio.to_thread(self._factory, self.address, self.timeout)
            except (PySpiffeError, OSError) as e:
                log.warning("%s: cannot connect again: %s", self.name, e)
                continue
            fresh.subscribe_for_updates(self._updated)
            self._feed = fresh
            self.rebuilds += 1
            self._updated()  # whatever it holds now is looked at
            log.info("%s: connected again", self.name)

    def close(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.close()


def _open(address: str, timeout: float) -> X509Feed:
    return X509Source(socket_path=address, timeout_in_seconds=timeout)
