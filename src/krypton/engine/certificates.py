"""The attributes a server reads off a registered X.509 certificate (KMIP 2.1 §4.6-4.8).

Certificate Type and Certificate Length (the size of the DER encoding) for
every version; the 2.x Certificate Subject / Issuer attributes (CN, O, OU,
...) one per name component the certificate has. A certificate the
``cryptography`` package cannot parse is refused with Invalid Field: the
attributes the specification says the server sets could not be set.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from krypton.errors import InvalidField
from krypton.kmip.attributes import Attribute
from krypton.ttlv.enums import CertificateType
from krypton.ttlv.item import Item
from krypton.ttlv.tags import TAG_BY_SPEC_NAME, Tag

# X.500 name component -> the suffix of the KMIP 2.x attribute name.
_PARTS: dict[x509.ObjectIdentifier, str] = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.EMAIL_ADDRESS: "Email",
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.USER_ID: "UID",
    NameOID.SERIAL_NUMBER: "Serial Number",
    NameOID.TITLE: "Title",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.DN_QUALIFIER: "DN Qualifier",
}


def _name_attributes(who: str, name: x509.Name) -> list[Attribute]:
    out: list[Attribute] = []
    for component in name:
        part = _PARTS.get(component.oid)
        if part is None or not isinstance(component.value, str):
            continue
        attr = f"Certificate {who} {part}"
        out.append(Attribute(attr, Item.text(TAG_BY_SPEC_NAME[attr], component.value)))
    return out


def certificate_attributes(kind: int, der: bytes) -> list[Attribute]:
    out = [
        Attribute("Certificate Type", Item.enum(Tag.CERTIFICATE_TYPE, kind)),
        Attribute("Certificate Length", Item.integer(Tag.CERTIFICATE_LENGTH, len(der))),
    ]
    if kind != CertificateType.X_509:
        return out
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise InvalidField("Register: the Certificate Value is not DER X.509") from exc
    return out + _name_attributes("Subject", cert.subject) + _name_attributes("Issuer", cert.issuer)
