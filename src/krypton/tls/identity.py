"""A TLS peer's identity: its SPIFFE ID, or its subject DN when it has none;
and the checks a peer certificate must pass on every connection.

Identity
--------
Two entry points give the same string for the same certificate:

- :func:`identity_from_peercert` takes the dict of ``SSLObject.getpeercert()``;
- :func:`identity_from_der` parses ``getpeercert(binary_form=True)`` with
  ``cryptography`` (robust to whatever OpenSSL's dict leaves out).

A certificate with a ``spiffe://`` URI SAN is an X.509-SVID: it must carry
exactly one URI SAN, and that must be a valid SPIFFE ID
(:mod:`krypton.tls.spiffe`); with two URI SANs, or a malformed ID, it is
refused. A certificate without one is known by its subject as RFC 4514 text
(most specific RDN first, e.g. ``CN=foo,O=bar``), formatted by
``cryptography`` in both cases so that escaping agrees. A certificate with
neither (or no certificate) is refused with
:class:`krypton.errors.PermissionDenied`: an empty identity must never reach
the policy, where it could match a catch-all prefix.

Checks (:func:`check_peer`)
---------------------------
OpenSSL verifies the chain during a full handshake, but a resumed TLS session
skips that, so what must hold on *every* connection is checked here from the
peer's certificate: it is a leaf (not ``CA:TRUE``), carries the extended key
usage of its role (``clientAuth`` for a client, ``serverAuth`` for a server),
is valid now, its SPIFFE ID is in the configured trust domain, and neither its
serial nor its identity is on the deny list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from krypton.errors import PermissionDenied
from krypton.tls.spiffe import SCHEME as SPIFFE_SCHEME
from krypton.tls.spiffe import SpiffeId, looks_like_spiffe, parse_spiffe_id

__all__ = [
    "SPIFFE_SCHEME",
    "DenyCheck",
    "PeerCert",
    "PeerRules",
    "Usage",
    "check_peer",
    "identity_from_der",
    "identity_from_peercert",
    "peer_cert",
]

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


def _identity_of(uris: Iterable[str], subject: Callable[[], str]) -> tuple[str, SpiffeId | None]:
    """The identity given the certificate's URI SANs (and its subject, lazily)."""
    uris = list(uris)
    if any(looks_like_spiffe(u) for u in uris):
        if len(uris) != 1:
            raise PermissionDenied(
                f"certificate has {len(uris)} URI SANs; an X.509-SVID has exactly one"
            )
        spiffe = parse_spiffe_id(uris[0])
        return str(spiffe), spiffe
    return _require(subject()), None


def identity_from_peercert(cert: Mapping[str, Any] | None) -> str:
    """The identity from a ``getpeercert()`` dict (``None`` or empty: no certificate)."""
    if not cert:
        raise PermissionDenied("no client certificate")
    uris = [str(v) for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    return _identity_of(
        uris, lambda: _name_from_peercert(cert.get("subject", ())).rfc4514_string()
    )[0]


class Usage(IntEnum):
    """The role a peer certificate is presented in (its required extended key usage)."""

    CLIENT = 1
    SERVER = 2


_EKU = {
    ExtendedKeyUsageOID.CLIENT_AUTH: Usage.CLIENT,
    ExtendedKeyUsageOID.SERVER_AUTH: Usage.SERVER,
}
_EKU_NAME = {Usage.CLIENT: "clientAuth", Usage.SERVER: "serverAuth"}


@dataclass(frozen=True, slots=True)
class PeerCert:
    """What the checks need from a peer certificate (parsed once, then cached)."""

    identity: str
    spiffe: SpiffeId | None
    serial: int
    not_before: float
    not_after: float
    is_ca: bool
    usages: frozenset[Usage]


class DenyCheck(Protocol):
    """A deny list: whether a certificate (by serial) or an identity is denied."""

    def denies(self, serial: int, identity: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class PeerRules:
    """What a peer certificate must satisfy beyond the chain OpenSSL verified.

    ``trust_domain`` None accepts any trust domain (tests, tools); ``clock``
    gives the current time in seconds since the epoch.
    """

    usage: Usage = Usage.CLIENT
    trust_domain: str | None = None
    deny: DenyCheck | None = None
    clock: Callable[[], float] = time.time


def check_peer(der: bytes | None, rules: PeerRules) -> PeerCert:
    """The peer's certificate facts if it passes ``rules`` now, else PermissionDenied."""
    cert = peer_cert(der)
    who = cert.identity
    if cert.is_ca:
        raise PermissionDenied(f"{who}: a CA certificate cannot be used as a leaf")
    if rules.usage not in cert.usages:
        raise PermissionDenied(
            f"{who}: certificate lacks the {_EKU_NAME[rules.usage]} extended key usage"
        )
    now = rules.clock()
    if now >= cert.not_after:
        raise PermissionDenied(f"{who}: certificate expired")
    if now < cert.not_before:
        raise PermissionDenied(f"{who}: certificate not yet valid")
    domain = rules.trust_domain
    if domain is not None and cert.spiffe is not None and cert.spiffe.trust_domain != domain:
        raise PermissionDenied(
            f"{who}: trust domain {cert.spiffe.trust_domain!r} is not {domain!r}"
        )
    if rules.deny is not None and rules.deny.denies(cert.serial, who):
        raise PermissionDenied(f"{who}: certificate is on the deny list")
    return cert


_KNOWN: dict[bytes, PeerCert] = {}
_KNOWN_MAX = 4096


def peer_cert(der: bytes | None) -> PeerCert:
    """The facts of a DER certificate (``getpeercert(binary_form=True)``).

    Parsing a certificate costs ~0.3 ms and clients reconnect with the same one
    (pg_tde and MySQL open a connection per call), so certificates already
    seen are kept (bounded); the time-dependent checks of :func:`check_peer`
    run on every call.
    """
    if not der:
        raise PermissionDenied("no client certificate")
    known = _KNOWN.get(der)
    if known is not None:
        return known
    facts = _parse(der)
    if len(_KNOWN) >= _KNOWN_MAX:
        _KNOWN.clear()
    _KNOWN[der] = facts
    return facts


def identity_from_der(der: bytes | None) -> str:
    """The identity from a DER certificate (see the module docstring)."""
    return peer_cert(der).identity


def _parse(der: bytes) -> PeerCert:
    try:
        cert = x509.load_der_x509_certificate(der)
        exts = cert.extensions
        try:
            sans = exts.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            sans = x509.SubjectAlternativeName([])
        identity, spiffe = _identity_of(
            sans.get_values_for_type(x509.UniformResourceIdentifier),
            cert.subject.rfc4514_string,
        )
        try:
            is_ca = exts.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        try:
            ekus = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
            usages = frozenset(_EKU[o] for o in ekus if o in _EKU)
        except x509.ExtensionNotFound:
            usages = frozenset()
        return PeerCert(
            identity,
            spiffe,
            cert.serial_number,
            cert.not_valid_before_utc.timestamp(),
            cert.not_valid_after_utc.timestamp(),
            is_ca,
            usages,
        )
    except ValueError:
        raise PermissionDenied("client certificate could not be parsed") from None
