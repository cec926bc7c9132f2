"""Identity: SPIFFE ID or subject, the same from getpeercert()'s dict and from DER."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from krypton.errors import PermissionDenied
from krypton.pki import issue_ca, issue_leaf, new_key, write_cert_pem
from krypton.tls.identity import identity_from_der, identity_from_peercert

CA = issue_ca("identity test CA")


def peercert(cert: x509.Certificate, tmp_path: Path) -> dict[str, Any]:
    """The dict OpenSSL builds for getpeercert(), via CPython's own test hook."""
    path = tmp_path / "c.pem"
    write_cert_pem(path, cert)
    decode = getattr(ssl, "_ssl")._test_decode_cert  # noqa: B009
    result: dict[str, Any] = decode(str(path))
    return result


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def custom(subject: x509.Name, sans: list[x509.GeneralName]) -> x509.Certificate:
    key = new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(CA[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(CA[0].not_valid_before_utc)
        .not_valid_after(CA[0].not_valid_after_utc)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(CA[1], hashes.SHA256())


def both(cert: x509.Certificate, tmp_path: Path) -> str:
    from_dict = identity_from_peercert(peercert(cert, tmp_path))
    assert identity_from_der(der(cert)) == from_dict
    return from_dict


def test_spiffe_id_wins(tmp_path: Path) -> None:
    cert, _ = issue_leaf(*CA, common_name="client", dns=["x.example"],
                         spiffe_id="spiffe://krypton.dev/tenant/demo/workload/client")
    assert both(cert, tmp_path) == "spiffe://krypton.dev/tenant/demo/workload/client"


def test_first_spiffe_uri_among_other_uris(tmp_path: Path) -> None:
    cert = custom(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c")]), [
        x509.UniformResourceIdentifier("https://example.com/x"),
        x509.DNSName("spiffe.example"),
        x509.UniformResourceIdentifier("spiffe://krypton.dev/a"),
    ])
    assert both(cert, tmp_path) == "spiffe://krypton.dev/a"


def test_subject_when_no_spiffe_id(tmp_path: Path) -> None:
    cert = custom(
        x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bar"),
            x509.NameAttribute(NameOID.COMMON_NAME, "foo"),
        ]),
        [x509.UniformResourceIdentifier("https://example.com/x"), x509.DNSName("foo.example")],
    )
    assert both(cert, tmp_path) == "CN=foo,O=bar"


def test_subject_escaping_and_odd_attributes(tmp_path: Path) -> None:
    cert = custom(
        x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "dev"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@example.com"),
            x509.NameAttribute(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), "custom"),
            x509.NameAttribute(NameOID.COMMON_NAME, 'a,b+c="d" '),
        ]),
        [],
    )
    identity = both(cert, tmp_path)
    assert identity.startswith(r"CN=a\,b\+c=\"d\"\ ,")
    assert identity.endswith("DC=dev,C=DE")
    assert "1.3.6.1.4.1.99999.1=custom" in identity


def test_multi_valued_rdn(tmp_path: Path) -> None:
    cert = custom(
        x509.Name([x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.COMMON_NAME, "foo"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
        ])]),
        [],
    )
    assert both(cert, tmp_path) in {"CN=foo+OU=ops", "OU=ops+CN=foo"}


def test_no_identity_is_refused(tmp_path: Path) -> None:
    cert = custom(x509.Name([]), [x509.DNSName("x.example")])
    with pytest.raises(PermissionDenied):
        identity_from_peercert(peercert(cert, tmp_path))
    with pytest.raises(PermissionDenied):
        identity_from_der(der(cert))


def test_no_certificate_or_garbage_is_refused() -> None:
    with pytest.raises(PermissionDenied, match="no client certificate"):
        identity_from_peercert({})
    with pytest.raises(PermissionDenied, match="no client certificate"):
        identity_from_peercert(None)
    with pytest.raises(PermissionDenied, match="no client certificate"):
        identity_from_der(None)
    with pytest.raises(PermissionDenied, match="no client certificate"):
        identity_from_der(b"")
    with pytest.raises(PermissionDenied, match="could not be parsed"):
        identity_from_der(b"\x30\x03\x02\x01\x01")
    with pytest.raises(PermissionDenied):
        identity_from_peercert({"subject": ((("noSuchAttribute", "x"),),)})


def test_repeated_certificates_answer_the_same_from_the_cache() -> None:
    a, _ = issue_leaf(*CA, common_name="a", spiffe_id="spiffe://krypton.dev/tenant/demo/w/a")
    b, _ = issue_leaf(*CA, common_name="b", spiffe_id="spiffe://krypton.dev/tenant/other/w/b")
    for _ in range(3):  # first call parses, later ones come from the cache
        assert identity_from_der(der(a)) == "spiffe://krypton.dev/tenant/demo/w/a"
        assert identity_from_der(der(b)) == "spiffe://krypton.dev/tenant/other/w/b"
