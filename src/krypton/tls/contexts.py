"""TLS contexts: the KMIP listener's (mutual TLS) and a client's for our tools and tests.

Server policy (DESIGN §6): TLS 1.2 minimum (1.3 when ``min_version = "1.3"``),
TLS 1.3 preferred (OpenSSL picks the highest common version), a client
certificate signed by the configured CA is required, ECDHE with AEAD ciphers
only for TLS 1.2 (TLS 1.3 suites are all AEAD), no compression, no
renegotiation, strict X.509 checks. Session resumption is stateless: tickets
(``OP_NO_TICKET`` cleared, ``num_tickets`` set for TLS 1.3), encrypted with a
key OpenSSL creates per context, so resumption works across the connections
of one process (or of workers forked after the context is made).

Every problem loading the certificate, key or CA is a ConfigError naming the
setting (``gateway.tls.key: does not match gateway.tls.cert ...``).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from krypton.config import TLSConfig
from krypton.errors import ConfigError

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
# Each TLS 1.3 ticket costs the server ~0.45 ms here (OpenSSL 3.0: it serialises and
# encrypts the session, client certificate included); one is enough to resume.
TLS13_TICKETS = 1
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_HARDENING = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE

PathArg = str | os.PathLike[str]


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{setting}: file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"{setting}: cannot read {path}: {e.strerror}") from None


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path, names: tuple[str, str]) -> None:
    cert_name, key_name = names
    try:
        x509.load_pem_x509_certificates(_read(cert, cert_name))
    except ValueError:
        raise ConfigError(f"{cert_name}: no PEM certificate in {cert}") from None
    try:
        serialization.load_pem_private_key(_read(key, key_name), password=None)
    except TypeError:
        raise ConfigError(f"{key_name}: encrypted private keys are not supported ({key})") from None
    except ValueError:
        raise ConfigError(f"{key_name}: no usable PEM private key in {key}") from None
    except UnsupportedAlgorithm as e:
        raise ConfigError(f"{key_name}: unsupported private key in {key} ({e})") from None
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise ConfigError(
            f"{key_name}: does not match {cert_name} or is unusable "
            f"({e.reason or e.__class__.__name__}; {key}, {cert})"
        ) from None
    except OSError as e:
        raise ConfigError(f"{cert_name}: cannot load {cert}: {e.strerror or e}") from None


def _load_ca(ctx: ssl.SSLContext, ca: Path, name: str) -> None:
    _read(ca, name)
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        raise ConfigError(
            f"{name}: no usable CA certificate in {ca} ({e.reason or e.__class__.__name__})"
        ) from None
    except OSError as e:
        raise ConfigError(f"{name}: cannot load {ca}: {e.strerror or e}") from None
    if ctx.cert_store_stats()["x509_ca"] == 0:
        raise ConfigError(f"{name}: {ca} holds no CA certificate (basicConstraints CA:TRUE)")


def server_context(tls: TLSConfig, *, setting: str = "gateway.tls") -> ssl.SSLContext:
    """The listener's context. ``setting`` names the config section in error messages."""
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
    _load_chain(ctx, tls.cert, tls.key, (f"{setting}.cert", f"{setting}.key"))
    _load_ca(ctx, tls.ca, f"{setting}.ca")
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
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, Path(ca), "ca")
    if cert is not None and key is not None:
        _load_chain(ctx, Path(cert), Path(key), ("cert", "key"))
    return ctx
