"""TLS material: one certificate chain, its private key and a trust bundle, checked together.

How this works
--------------
Every TLS context the processes make (the KMIP listener's, the uplink
client's, the Core's gRPC credentials) is built from a :class:`Material`:
the PEM bytes of the chain (leaf first), of the key and of the CA bundle,
read once (:func:`read_files`) or handed over by the SPIFFE Workload API
(:mod:`krypton.tls.workload`). :func:`check` parses all three with
``cryptography`` and refuses what would not work — no certificate, a key that
does not belong to the leaf, a bundle without a CA — with a
:class:`~krypton.errors.ConfigError` naming the setting. Since the bytes are
read once and the context is built from those bytes, a file rewritten
between the check and the load cannot slip in half-written.

``ssl.SSLContext.load_cert_chain`` only reads files, so the chain and the key
are handed to OpenSSL through anonymous in-memory files (``memfd_create``,
opened as ``/proc/self/fd/N``): never a file on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from krypton.config import TLSConfig
from krypton.errors import ConfigError

_PUBLIC = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True, slots=True)
class Names:
    """How errors name the three parts (settings, or where the material came from)."""

    cert: str
    key: str
    ca: str


@dataclass(frozen=True, slots=True)
class Material:
    """Checked TLS material (see :func:`check`); its bytes never appear in a repr."""

    chain: bytes = field(repr=False)
    key: bytes = field(repr=False)
    ca: bytes = field(repr=False)
    not_after: float  # the leaf's, seconds since the epoch
    serial: int  # the leaf's
    origin: str  # where it came from, for logs ("files", "SPIFFE Workload API")

    @property
    def digest(self) -> bytes:
        """Tells two materials apart (SHA-256 over all three parts)."""
        return hashlib.sha256(b"\0".join((self.chain, self.key, self.ca))).digest()


def names_for(setting: str) -> Names:
    return Names(f"{setting}.cert", f"{setting}.key", f"{setting}.ca")


def read(path: Path | None, setting: str) -> bytes:
    """The bytes of ``path``; ConfigError naming ``setting`` when it cannot be read."""
    if path is None:
        raise ConfigError(f"{setting}: required setting is missing")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{setting}: file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"{setting}: cannot read {path}: {e.strerror}") from None


def read_files(tls: TLSConfig, setting: str = "gateway.tls") -> Material:
    """The material in ``tls.cert``/``tls.key``/``tls.ca``, checked."""
    names = names_for(setting)
    where = (f" in {tls.cert}", f" in {tls.key}", f" in {tls.ca}")
    return check(
        read(tls.cert, names.cert), read(tls.key, names.key), read(tls.ca, names.ca),
        names, origin="files", where=where,
    )


def check(chain: bytes, key: bytes, ca: bytes, names: Names, *, origin: str,
          where: tuple[str, str, str] = ("", "", "")) -> Material:
    """Material whose parts parse and fit together, else ConfigError naming the part."""
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise ConfigError(f"{names.cert}: no PEM certificate{where[0]}") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise ConfigError(
            f"{names.key}: encrypted private keys are not supported{where[1]}") from None
    except ValueError:
        raise ConfigError(f"{names.key}: no usable PEM private key{where[1]}") from None
    except UnsupportedAlgorithm as e:
        raise ConfigError(f"{names.key}: unsupported private key{where[1]} ({e})") from None
    leaf = certs[0]
    if private.public_key().public_bytes(*_PUBLIC) != leaf.public_key().public_bytes(*_PUBLIC):
        raise ConfigError(
            f"{names.key}: does not match {names.cert} (the key is not the certificate's)"
            f"{where[1]}"
        )
    try:
        authorities = x509.load_pem_x509_certificates(ca)
    except ValueError:
        raise ConfigError(f"{names.ca}: no usable CA certificate{where[2]}") from None
    if not any(_is_ca(c) for c in authorities):
        raise ConfigError(
            f"{names.ca}: holds no CA certificate (basicConstraints CA:TRUE){where[2]}")
    return Material(chain, key, ca, leaf.not_valid_after_utc.timestamp(), leaf.serial_number,
                    origin)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open that reads ``data`` from memory only."""
    fd = os.memfd_create("krypton-tls", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def load_into(ctx: ssl.SSLContext, material: Material, names: Names) -> None:
    """Load the chain, key and trust bundle of ``material`` into ``ctx``."""
    load_chain(ctx, material, names)
    load_trust(ctx, material, names)


def load_chain(ctx: ssl.SSLContext, material: Material, names: Names) -> None:
    """Load the chain and key of ``material`` into ``ctx`` (what it presents)."""
    with _memory_file(material.chain) as chain, _memory_file(material.key) as key:
        try:
            ctx.load_cert_chain(chain, key)
        except ssl.SSLError as e:
            raise ConfigError(
                f"{names.key}: does not match {names.cert} or is unusable "
                f"({e.reason or e.__class__.__name__}; from {material.origin})"
            ) from None


def load_trust(ctx: ssl.SSLContext, material: Material, names: Names) -> None:
    """Load the trust bundle of ``material`` into ``ctx`` (the CAs it accepts)."""
    try:
        ctx.load_verify_locations(cadata=material.ca.decode("ascii", "replace"))
    except ssl.SSLError as e:
        raise ConfigError(
            f"{names.ca}: no usable CA certificate ({e.reason or e.__class__.__name__}; "
            f"from {material.origin})"
        ) from None
    if ctx.cert_store_stats()["x509_ca"] == 0:
        raise ConfigError(f"{names.ca}: holds no CA certificate (basicConstraints CA:TRUE)")
