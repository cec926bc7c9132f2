"""A TLS client's identity: its SPIFFE ID, or its subject DN when it has none.

Two entry points give the same string for the same certificate:

- :func:`identity_from_peercert` takes the dict of ``SSLObject.getpeercert()``;
- :func:`identity_from_der` parses ``getpeercert(binary_form=True)`` with
  ``cryptography`` (robust to whatever OpenSSL's dict leaves out).

The identity is the first URI SAN that starts with ``spiffe://``; without one,
the subject as RFC 4514 text (most specific RDN first, e.g. ``CN=foo,O=bar``),
formatted by ``cryptography`` in both cases so that escaping agrees. A
certificate with neither (or no certificate) is refused with
:class:`krypton.errors.PermissionDenied`: an empty identity must never reach
the policy, where it could match a catch-all prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from krypton.errors import PermissionDenied

SPIFFE_SCHEME = "spiffe://"

# OpenSSL long names (as getpeercert() reports them) → OIDs.
_LONG_NAMES: dict[str, x509.ObjectIdentifier] = {
    "commonName": NameOID.COMMON_NAME,
    "countryName": NameOID.COUNTRY_NAME,
    "localityName": NameOID.LOCALITY_NAME,
    "stateOrProvinceName": NameOID.STATE_OR_PROVINCE_NAME,
    "streetAddress": NameOID.STREET_ADDRESS,
    "organizationName": NameOID.ORGANIZATION_NAME,
    "organizationalUnitName": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "surname": NameOID.SURNAME,
    "givenName": NameOID.GIVEN_NAME,
    "title": NameOID.TITLE,
    "generationQualifier": NameOID.GENERATION_QUALIFIER,
    "x500UniqueIdentifier": NameOID.X500_UNIQUE_IDENTIFIER,
    "dnQualifier": NameOID.DN_QUALIFIER,
    "pseudonym": NameOID.PSEUDONYM,
    "userId": NameOID.USER_ID,
    "domainComponent": NameOID.DOMAIN_COMPONENT,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "jurisdictionCountryName": NameOID.JURISDICTION_COUNTRY_NAME,
    "jurisdictionLocalityName": NameOID.JURISDICTION_LOCALITY_NAME,
    "jurisdictionStateOrProvinceName": NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME,
    "businessCategory": NameOID.BUSINESS_CATEGORY,
    "postalAddress": NameOID.POSTAL_ADDRESS,
    "postalCode": NameOID.POSTAL_CODE,
    "organizationIdentifier": NameOID.ORGANIZATION_IDENTIFIER,
}


def _oid(long_name: str) -> x509.ObjectIdentifier:
    oid = _LONG_NAMES.get(long_name)
    if oid is not None:
        return oid
    try:
        return x509.ObjectIdentifier(long_name)  # OpenSSL gives unknown types as dotted OIDs
    except ValueError:
        raise PermissionDenied(f"unknown subject attribute {long_name!r}") from None


def _name_from_peercert(subject: Any) -> x509.Name:
    try:
        rdns = [
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(_oid(str(k)), str(v), _validate=False) for k, v in rdn]
            )
            for rdn in subject
        ]
    except (TypeError, ValueError):
        raise PermissionDenied("client certificate subject could not be read") from None
    return x509.Name(rdns)


def _require(identity: str) -> str:
    if not identity:
        raise PermissionDenied("client certificate has neither a SPIFFE ID nor a subject")
    return identity


def identity_from_peercert(cert: Mapping[str, Any] | None) -> str:
    """The identity from a ``getpeercert()`` dict (``None`` or empty: no certificate)."""
    if not cert:
        raise PermissionDenied("no client certificate")
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "URI" and isinstance(value, str) and value.startswith(SPIFFE_SCHEME):
            return value
    return _require(_name_from_peercert(cert.get("subject", ())).rfc4514_string())


_KNOWN: dict[bytes, str] = {}
_KNOWN_MAX = 4096


def identity_from_der(der: bytes | None) -> str:
    """The identity from a DER certificate (``getpeercert(binary_form=True)``).

    Parsing a certificate costs ~0.3 ms and clients reconnect with the same one
    (pg_tde and MySQL open a connection per call), so identities of
    certificates already seen are kept (bounded; the chain was verified by TLS
    on every connection, so only the parse is skipped).
    """
    if not der:
        raise PermissionDenied("no client certificate")
    known = _KNOWN.get(der)
    if known is not None:
        return known
    identity = _parse_identity(der)
    if len(_KNOWN) >= _KNOWN_MAX:
        _KNOWN.clear()
    _KNOWN[der] = identity
    return identity


def _parse_identity(der: bytes) -> str:
    try:
        cert = x509.load_der_x509_certificate(der)
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            sans = x509.SubjectAlternativeName([])
        for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(SPIFFE_SCHEME):
                return uri
        return _require(cert.subject.rfc4514_string())
    except ValueError:
        raise PermissionDenied("client certificate could not be parsed") from None
