"""TLS contexts: the KMIP listener's (mutual TLS) and a client's for our tools and tests.

Server policy (DESIGN §6): TLS 1.2 minimum (1.3 when ``min_version = "1.3"``),
TLS 1.3 preferred (OpenSSL picks the highest common version), a client
certificate signed by the configured CA is required, ECDHE with AEAD ciphers
only for TLS 1.2 (TLS 1.3 suites are all AEAD), no compression, no
renegotiation, strict X.509 checks. Session resumption is stateless: tickets
(``OP_NO_TICKET`` cleared, ``num_tickets`` set for TLS 1.3), encrypted with a
key OpenSSL creates per context, so resumption works across the connections
of one process (or of workers forked after the context is made). A session
may be resumed for ``session_lifetime`` seconds at most (OpenSSL's session
timeout, which also bounds each ticket; its default is two hours).

(If that timeout cannot be set, tickets are turned off rather than left at
two hours.)

A resumed session skips certificate verification, so the listener asks
:func:`peer_identity` on every connection: it checks the peer certificate
now (:func:`krypton.tls.identity.check_peer`: a leaf with clientAuth, valid
now, in the trust domain, not on the deny list). The rules travel with the
context (:data:`PEER_RULES_ATTR`).

Every problem loading the certificate, key or CA is a ConfigError naming the
setting (``gateway.tls.key: does not match gateway.tls.cert ...``).

Contexts are built from :class:`krypton.tls.material.Material` (read once and
checked, loaded from memory). A rotation (:mod:`krypton.tls.reload`) builds a
new context from new material rather than changing one in use.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from krypton.config import GatewayTLSConfig, TLSConfig
from krypton.errors import ConfigError
from krypton.tls._openssl import set_session_timeout
from krypton.tls.denylist import DenyList
from krypton.tls.identity import PeerRules, Usage, check_peer
from krypton.tls.material import (
    Material,
    Names,
    check,
    load_chain,
    load_into,
    names_for,
    read,
    read_files,
)

log = logging.getLogger("krypton.tls")

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
# Each TLS 1.3 ticket costs the server ~0.45 ms here (OpenSSL 3.0: it serialises and
# encrypts the session, client certificate included); one is enough to resume.
TLS13_TICKETS = 1
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_HARDENING = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE

PathArg = str | os.PathLike[str]
PEER_RULES_ATTR = "krypton_peer_rules"
DEFAULT_SESSION_LIFETIME = 3600.0


def _load_ca(ctx: ssl.SSLContext, ca: Path, name: str) -> None:
    try:
        data = ca.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{name}: file not found: {ca}") from None
    except OSError as e:
        raise ConfigError(f"{name}: cannot read {ca}: {e.strerror}") from None
    try:
        ctx.load_verify_locations(cadata=data.decode("ascii", "replace"))
    except ssl.SSLError as e:
        raise ConfigError(
            f"{name}: no usable CA certificate in {ca} ({e.reason or e.__class__.__name__})"
        ) from None
    if ctx.cert_store_stats()["x509_ca"] == 0:
        raise ConfigError(f"{name}: {ca} holds no CA certificate (basicConstraints CA:TRUE)")


def server_context(
    tls: TLSConfig, *, setting: str = "gateway.tls", material: Material | None = None,
    rules: PeerRules | None = None,
) -> ssl.SSLContext:
    """The listener's context. ``setting`` names the config section in error messages.

    ``material`` is what it presents and trusts (default: read from ``tls``'s
    files); ``rules`` the checks of every peer (default: :func:`peer_rules`).
    A reload makes a new context this way, so nothing of the old one (its CAs,
    its session-ticket key) carries over.
    """
    if material is None:
        material = read_files(tls, setting)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.options |= _HARDENING
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if tls.session_tickets:
        ctx.options &= ~ssl.OP_NO_TICKET
        ctx.num_tickets = TLS13_TICKETS
    else:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    lifetime = (tls.session_lifetime if isinstance(tls, GatewayTLSConfig)
                else DEFAULT_SESSION_LIFETIME)
    if tls.session_tickets and not set_session_timeout(ctx, max(1, int(lifetime))):
        log.warning("%s.session_lifetime: OpenSSL's session timeout could not be set; "
                    "session tickets are off", setting)
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    load_into(ctx, material, names_for(setting))
    set_listener_rules(ctx, rules or peer_rules(tls, Usage.CLIENT))
    return ctx


def peer_rules(tls: TLSConfig, usage: Usage) -> PeerRules:
    """The checks for peers of a side configured by ``tls`` (trust domain, deny list)."""
    deny = DenyList(tls.deny_list) if tls.deny_list is not None else None
    return PeerRules(usage=usage, trust_domain=tls.trust_domain, deny=deny)


def set_listener_rules(ctx: ssl.SSLContext, rules: PeerRules) -> None:
    """Attach ``rules`` to a server context (tests replace its clock this way)."""
    setattr(ctx, PEER_RULES_ATTR, rules)


def listener_rules(ctx: ssl.SSLContext) -> PeerRules | None:
    """The rules attached to a server context (None for one made elsewhere)."""
    rules = getattr(ctx, PEER_RULES_ATTR, None)
    return rules if isinstance(rules, PeerRules) else None


def peer_identity(sslobj: ssl.SSLObject | ssl.SSLSocket, der: bytes | None) -> str:
    """The client's identity once its certificate passes this connection's checks.

    Called by the listener on every connection, resumed ones included. A
    context not made by :func:`server_context` gets the default checks.
    """
    rules = getattr(sslobj.context, PEER_RULES_ATTR, None)
    if not isinstance(rules, PeerRules):
        rules = PeerRules()
    return check_peer(der, rules).identity


def _client_base(min_version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    ca: PathArg,
    cert: PathArg | None = None,
    key: PathArg | None = None,
    *,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """A client context that verifies the server (name and CA) and presents ``cert``/``key``.

    Without ``cert`` the client presents no certificate (for tests). To resume a
    session, pass ``session=previous.session`` to ``wrap_socket`` (with TLS 1.3
    the ticket arrives after the handshake: read once before taking it).
    """
    if (cert is None) != (key is None):
        raise ConfigError("cert and key: give both or neither")
    ctx = _client_base(min_version)
    _load_ca(ctx, Path(ca), "ca")
    if cert is not None and key is not None:
        names = Names("cert", "key", "ca")
        cert, key = Path(cert), Path(key)
        material = check(read(cert, "cert"), read(key, "key"), read(Path(ca), "ca"), names,
                         origin=f"{cert}, {key}", where=(f" in {cert}", f" in {key}", f" in {ca}"))
        load_chain(ctx, material, names)
    return ctx


def material_client_context(material: Material, *, min_version: str = "1.2",
                            setting: str = "gateway.tls") -> ssl.SSLContext:
    """A client context presenting ``material``'s chain and trusting its bundle only
    (the host-name check is on; the uplink turns it off and checks the SPIFFE ID)."""
    ctx = _client_base(min_version)
    load_into(ctx, material, names_for(setting))
    return ctx
