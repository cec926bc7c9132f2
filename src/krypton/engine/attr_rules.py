"""Who may set which attribute, and how: the one table both sides check against.

How this works
--------------
:data:`RULES` gives, for every attribute a client may set, its item type,
whether it may have several instances, and whether Add/Modify/Set/Delete may
touch it after creation. A gateway Create (``at_gateway``) and a Core
Register / Create Key Pair / attribute edit all check a client's attributes
here, with the same reasons: a value of the wrong type is Invalid Attribute
Value, a second instance of a single-valued attribute is Attribute Single
Valued (KMIP 2.1 §11 Create / Register errors; a 1.x client is told Invalid
Field, KMIP 1.4 §11.2, §11.4, by :func:`krypton.kmip.reasons.reason_for`).
Attributes the table does not list are read-only when the spec says the server
sets them (:data:`SERVER_ONLY`), and otherwise unknown to this server.
"""

from __future__ import annotations

from dataclasses import dataclass

from krypton.engine.object_errors import AttributeSingleValued, InvalidAttributeValue
from krypton.errors import ReadOnlyAttribute
from krypton.kmip.attributes import Attribute
from krypton.ttlv.enums import State
from krypton.ttlv.item import ItemType
from krypton.ttlv.tags import TAG_BY_SPEC_NAME

_S = ItemType.STRUCTURE
_DATE = ItemType.DATE_TIME
_TEXT = ItemType.TEXT_STRING
_LIVE = frozenset((State.PRE_ACTIVE, State.ACTIVE))


@dataclass(frozen=True, slots=True)
class Rule:
    """``editable``: Add/Modify/Set/Delete may touch it after creation (only in
    ``states`` when given); ``deletable``: Delete Attribute may remove it;
    ``at_gateway``: a Create at the gateway may set it (the others need the Core)."""

    type: ItemType
    multi: bool = False
    editable: bool = True
    deletable: bool = True
    states: frozenset[int] | None = None
    at_gateway: bool = True


_PRE = frozenset((State.PRE_ACTIVE,))


# From the attribute tables of KMIP 1.4 §3 / 2.1 §4 ("Modifiable by client").
RULES: dict[str, Rule] = {
    "Name": Rule(_S, multi=True),
    "Object Group": Rule(_TEXT, multi=True),
    "Cryptographic Parameters": Rule(_S, multi=True),
    "Link": Rule(_S, multi=True),
    "Application Specific Information": Rule(_S, multi=True),
    "Alternative Name": Rule(_S, multi=True, at_gateway=False),
    "Key Value Location": Rule(_S, multi=True, at_gateway=False),
    "Contact Information": Rule(_TEXT),
    "Description": Rule(_TEXT),
    "Comment": Rule(_TEXT),
    "PKCS#12 Friendly Name": Rule(_TEXT, at_gateway=False),
    "Usage Limits": Rule(_S, at_gateway=False),
    "Protection Level": Rule(ItemType.ENUMERATION),
    "Protection Period": Rule(ItemType.INTERVAL),
    "Quantum Safe": Rule(ItemType.BOOLEAN),
    "Sensitive": Rule(ItemType.BOOLEAN, deletable=False),
    "Extractable": Rule(ItemType.BOOLEAN, deletable=False),
    "Activation Date": Rule(_DATE, deletable=False, states=_PRE),
    "Process Start Date": Rule(_DATE, deletable=False, states=_LIVE),
    "Protect Stop Date": Rule(_DATE, deletable=False, states=_LIVE),
    "Deactivation Date": Rule(_DATE, deletable=False, states=_LIVE),
    # Set by the client when the object is made, read-only afterwards.
    "Cryptographic Algorithm": Rule(ItemType.ENUMERATION, editable=False, deletable=False),
    "Cryptographic Length": Rule(ItemType.INTEGER, editable=False, deletable=False),
    "Cryptographic Usage Mask": Rule(ItemType.INTEGER, editable=False, deletable=False),
    "Operation Policy Name": Rule(_TEXT, editable=False, deletable=False),
    "Fresh": Rule(ItemType.BOOLEAN, editable=False, deletable=False, at_gateway=False),
    "Original Creation Date": Rule(_DATE, editable=False, deletable=False, at_gateway=False),
    "Random Number Generator": Rule(_S, editable=False, deletable=False, at_gateway=False),
}


CUSTOM_RULE = Rule(_S, multi=True)  # type is not checked for custom attributes


SERVER_ONLY = frozenset((
    "Unique Identifier", "Object Type", "State", "Initial Date", "Last Change Date",
    "Destroy Date", "Compromise Date", "Compromise Occurrence Date", "Revocation Reason",
    "Archive Date", "Digest", "Lease Time", "Key Value Present", "Always Sensitive",
    "Never Extractable", "Certificate Type", "Certificate Length", "Digital Signature Algorithm",
    "Short Unique Identifier", "Rotate Date", "Rotate Generation", "Rotate Latest",
    "Opaque Data Type", "Protection Storage Mask", "Key Format Type", "Certificate Length",
    "X.509 Certificate Identifier", "X.509 Certificate Subject", "X.509 Certificate Issuer",
    *(f"Certificate {who} {part}" for who in ("Subject", "Issuer") for part in (
        "CN", "O", "OU", "Email", "C", "ST", "L", "UID", "Serial Number", "Title", "DC",
        "DN Qualifier",
    )),
))  # fmt: skip


def rule_for(name: str) -> Rule | None:
    """The rule for an attribute a client names; ReadOnlyAttribute for server ones;
    None for one this server does not manage."""
    if name not in TAG_BY_SPEC_NAME:  # a custom attribute
        if name.startswith("y-"):
            raise ReadOnlyAttribute(f"attribute {name!r} is set by the server")
        return CUSTOM_RULE
    if name in SERVER_ONLY:
        raise ReadOnlyAttribute(f"attribute {name!r} is set by the server")
    return RULES.get(name)


def check_type(attr: Attribute, rule: Rule) -> None:
    if rule is not CUSTOM_RULE and attr.value.type is not rule.type:
        raise InvalidAttributeValue(
            f"attribute {attr.name!r} must be {rule.type.name}, got {attr.value.type.name}"
        )


def check_single(attr: Attribute, rule: Rule, count: int) -> None:
    """Attribute Single Valued when ``attr`` would be a second instance (``count``
    instances seen before it) of a single-valued attribute."""
    if count and not rule.multi:
        raise AttributeSingleValued(f"attribute {attr.name!r} may appear only once")
