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
from krypton.tls.denylist import DenyList, parse_deny_list
from krypton.tls.identity import (
    PeerRules,
    Usage,
    check_peer,
    identity_from_der,
    identity_from_peercert,
)
from krypton.tls.spiffe import SpiffeId, parse_spiffe_id

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


def custom(subject: x509.Name, sans: list[x509.GeneralName], *,
           ca: bool = False) -> x509.Certificate:
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
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    return builder.sign(CA[1], hashes.SHA256())


def both(cert: x509.Certificate, tmp_path: Path) -> str:
    from_dict = identity_from_peercert(peercert(cert, tmp_path))
    assert identity_from_der(der(cert)) == from_dict
    return from_dict


def test_spiffe_id_wins(tmp_path: Path) -> None:
    cert, _ = issue_leaf(*CA, common_name="client", dns=["x.example"],
                         spiffe_id="spiffe://krypton.dev/tenant/demo/workload/client")
    assert both(cert, tmp_path) == "spiffe://krypton.dev/tenant/demo/workload/client"


def test_two_uri_sans_with_a_spiffe_id_are_refused(tmp_path: Path) -> None:
    """Issue 11 finding 6: with several URI SANs the first SPIFFE one used to win."""
    cert = custom(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c")]), [
        x509.UniformResourceIdentifier("https://example.com/x"),
        x509.DNSName("spiffe.example"),
        x509.UniformResourceIdentifier("spiffe://krypton.dev/a"),
    ])
    with pytest.raises(PermissionDenied, match="2 URI SANs"):
        identity_from_peercert(peercert(cert, tmp_path))
    with pytest.raises(PermissionDenied, match="2 URI SANs"):
        identity_from_der(der(cert))
    two = custom(x509.Name([]), [
        x509.UniformResourceIdentifier("spiffe://krypton.dev/tenant/demo/w/a"),
        x509.UniformResourceIdentifier("spiffe://krypton.dev/tenant/other/w/b"),
    ])
    with pytest.raises(PermissionDenied, match="exactly one"):
        identity_from_der(der(two))


@pytest.mark.parametrize("uri", [
    "spiffe://krypton.dev/tenant/demo/../other/x",   # dot segment matched the demo/ prefix
    "spiffe://krypton.dev/tenant/demo/./x",
    "spiffe://krypton.dev/tenant//demo",
    "spiffe://krypton.dev/tenant/demo/",
    "spiffe://krypton.dev/tenant/de%6Do/x",
    "spiffe://krypton.dev/tenant/demo/x?y=1",
    "spiffe://krypton.dev/tenant/demo/x#frag",
    "spiffe://Krypton.dev/tenant/demo/x",
    "spiffe://krypton.dev:443/tenant/demo/x",
    "spiffe://user@krypton.dev/tenant/demo/x",
    "spiffe:///tenant/demo/x",
    "SPIFFE://krypton.dev/tenant/demo/x",
])
def test_malformed_spiffe_ids_are_refused(uri: str) -> None:
    cert = custom(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c")]),
                  [x509.UniformResourceIdentifier(uri)])
    with pytest.raises(PermissionDenied, match="SPIFFE ID"):
        identity_from_der(der(cert))


def test_spiffe_id_grammar() -> None:
    assert parse_spiffe_id("spiffe://krypton.dev") == SpiffeId("krypton.dev", "")
    ok = parse_spiffe_id("spiffe://a-b_c.d/tenant/demo/workload/x.y-z_1")
    assert ok.segments == ("tenant", "demo", "workload", "x.y-z_1")
    assert str(ok) == "spiffe://a-b_c.d/tenant/demo/workload/x.y-z_1"
    with pytest.raises(PermissionDenied, match="longer than 2048"):
        parse_spiffe_id("spiffe://krypton.dev/" + "a" * 2048)


def _leaf(**kw: Any) -> bytes:
    cert, _ = issue_leaf(*CA, common_name="leaf",
                         spiffe_id=kw.pop("spiffe_id", "spiffe://krypton.dev/tenant/demo/w/a"),
                         **kw)
    return der(cert)


def test_check_peer_needs_a_leaf_with_the_usage_of_its_role() -> None:
    """Issue 11 finding 6: CA:TRUE leaves and leaves without clientAuth were accepted."""
    client = PeerRules(usage=Usage.CLIENT)
    assert check_peer(_leaf(), client).identity == "spiffe://krypton.dev/tenant/demo/w/a"
    with pytest.raises(PermissionDenied, match="lacks the clientAuth"):
        check_peer(_leaf(server=True, client=False), client)
    with pytest.raises(PermissionDenied, match="lacks the serverAuth"):
        check_peer(_leaf(), PeerRules(usage=Usage.SERVER))
    ca_leaf = custom(x509.Name([]), [x509.UniformResourceIdentifier("spiffe://krypton.dev/x")],
                     ca=True)
    with pytest.raises(PermissionDenied, match="CA certificate"):
        check_peer(der(ca_leaf), client)
    no_eku = custom(x509.Name([]), [x509.UniformResourceIdentifier("spiffe://krypton.dev/y")])
    with pytest.raises(PermissionDenied, match="lacks the clientAuth"):
        check_peer(der(no_eku), client)


def test_check_peer_trust_domain_validity_and_deny_list(tmp_path: Path) -> None:
    leaf = _leaf(seconds=20)
    facts = check_peer(leaf, PeerRules(trust_domain="krypton.dev"))
    with pytest.raises(PermissionDenied, match=r"'krypton\.dev' is not 'example\.org'"):
        check_peer(leaf, PeerRules(trust_domain="example.org"))
    with pytest.raises(PermissionDenied, match="expired"):
        check_peer(leaf, PeerRules(clock=lambda: facts.not_after + 1))
    with pytest.raises(PermissionDenied, match="not yet valid"):
        check_peer(leaf, PeerRules(clock=lambda: facts.not_before - 1))
    deny_file = tmp_path / "deny.txt"
    deny_file.write_text("# nothing yet\n")
    ticks = [0.0]
    deny = DenyList(deny_file, clock=lambda: ticks[0])
    rules = PeerRules(deny=deny)
    check_peer(leaf, rules)
    deny_file.write_text(f"{facts.serial:x}  # lost\n")
    ticks[0] += 0.5  # not looked at again within the recheck period
    check_peer(leaf, rules)
    ticks[0] += 1.0
    with pytest.raises(PermissionDenied, match="deny list"):
        check_peer(leaf, rules)
    deny_file.write_text("spiffe://krypton.dev/tenant/demo/w/a\n0x01:02\n")
    ticks[0] += 1.0
    with pytest.raises(PermissionDenied, match="deny list"):
        check_peer(leaf, rules)
    assert parse_deny_list("0x01:02\nCN=x,O=y\n") == (frozenset({0x102}), frozenset({"CN=x,O=y"}))
    deny_file.unlink()
    ticks[0] += 1.0
    check_peer(leaf, rules)


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
