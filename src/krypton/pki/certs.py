"""Certificates for the development PKI: a CA and SPIFFE leaf certificates.

Every key is ECDSA P-256 (cheap to generate, fast handshakes). Leaves follow
the X.509-SVID shape: one ``spiffe://`` URI SAN (plus DNS/IP SANs for
servers), ``digitalSignature`` key usage, never ``keyCertSign``, and an
extended key usage for each role (server, client or both).

Files are written atomically (temporary file in the same folder, then
rename); private keys are created with mode 0600 from the first byte on.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from krypton.errors import ConfigError

TRUST_DOMAIN = "krypton.dev"
CA_DAYS = 3650
LEAF_DAYS = 825
_BACKDATE = dt.timedelta(minutes=5)

Certificate = x509.Certificate
PrivateKey = ec.EllipticCurvePrivateKey


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    now = dt.datetime.now(dt.UTC)
    return now - _BACKDATE, now + dt.timedelta(days=days)


def issue_ca(common_name: str, *, days: int = CA_DAYS) -> tuple[Certificate, PrivateKey]:
    """A self-signed CA that may sign leaves only (path length 0)."""
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Krypton development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    not_before, not_after = _validity(days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_leaf(
    ca: Certificate,
    key: PrivateKey,
    *,
    common_name: str,
    spiffe_id: str | None,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    server: bool = False,
    client: bool = True,
    days: int = LEAF_DAYS,
    seconds: int | None = None,
) -> tuple[Certificate, PrivateKey]:
    """A leaf signed by ``ca``/``key``; returns the certificate and its new key.

    It is valid for ``days``, or for ``seconds`` when given (short-lived
    certificates, e.g. to test what happens when one expires).

    ``spiffe_id`` becomes the URI SAN (must start with ``spiffe://``); ``dns``
    and ``ips`` become DNS and IP SANs. At least one of ``server``/``client``.
    """
    if not (server or client):
        raise ValueError("a leaf needs server or client usage (or both)")
    if spiffe_id is not None and not spiffe_id.startswith("spiffe://"):
        raise ValueError(f"not a SPIFFE ID: {spiffe_id!r}")
    leaf_key = new_key()
    sans: list[x509.GeneralName] = []
    if spiffe_id is not None:
        sans.append(x509.UniformResourceIdentifier(spiffe_id))
    sans.extend(x509.DNSName(d) for d in dns)
    sans.extend(x509.IPAddress(ipaddress.ip_address(i)) for i in ips)
    usages = [
        oid
        for wanted, oid in ((server, ExtendedKeyUsageOID.SERVER_AUTH),
                            (client, ExtendedKeyUsageOID.CLIENT_AUTH))
        if wanted
    ]
    not_before, not_after = _validity(days)
    if seconds is not None:
        if seconds < 1:
            raise ValueError(f"seconds must be >= 1, got {seconds}")
        not_after = not_before + _BACKDATE + dt.timedelta(seconds=seconds)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Krypton development"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()), leaf_key


# -- files ----------------------------------------------------------------------
def private_dir(path: Path) -> None:
    """Make the folder ``path`` (and missing parents) mode 0700 whatever the umask,
    when it does not exist yet; an existing folder is left as it is."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cert_pem(certs: Certificate | Iterable[Certificate]) -> bytes:
    if isinstance(certs, x509.Certificate):
        certs = (certs,)
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_cert_pem(path: Path, certs: Certificate | Iterable[Certificate]) -> None:
    """Write one certificate (or a chain, leaf first) as PEM, mode 0644."""
    write_atomic(path, cert_pem(certs), 0o644)


def write_key_pem(path: Path, key: PrivateKey) -> None:
    """Write an unencrypted PKCS#8 PEM private key with mode 0600 (a folder made
    for it is 0700)."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_dir(path.parent)
    write_atomic(path, data, 0o600)


def load_cert_pem(path: Path) -> Certificate:
    """The first certificate in a PEM file; ConfigError naming the file if unreadable."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read certificate: {e.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path}: not a PEM certificate") from None
    return certs[0]


def load_key_pem(path: Path) -> PrivateKey:
    """An unencrypted EC private key from PEM; ConfigError naming the file otherwise."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read private key: {e.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: expected an EC private key")
    return key
