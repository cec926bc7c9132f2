"""Create Key Pair at the Core over the real SQLite registry and key ring, and Get of both
keys through a gateway (in one process: tests/helpers/embedded.py), in the stored and the
other Key Format Types."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.helpers.control_env import V14, V21, Answer, Env, core_env, name
from tests.helpers.embedded import Stack

from krypton.core.engine.control import CONTROL_HANDLERS
from krypton.core.engine.register import open_object
from krypton.engine.keyformat import key_object, reformat
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute, attributes_v2, parse_attributes, to_v1
from krypton.kmip.messages import ResponseItem
from krypton.kmip.versions import ProtocolVersion
from krypton.model.registry import LocateQuery
from krypton.ttlv.codec import decode
from krypton.ttlv.enums import (
    CryptographicAlgorithm,
    CryptographicUsageMask,
    KeyFormatType,
    LinkType,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    State,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

R = ResultReason
U = CryptographicUsageMask
BOTH = (V14, V21)
_S = ItemType.STRUCTURE
# (1.x Template-Attribute tag, 2.x Attributes tag) of each part of the request.
COMMON = (Tag.COMMON_TEMPLATE_ATTRIBUTE, Tag.COMMON_ATTRIBUTES)
PRIVATE = (Tag.PRIVATE_KEY_TEMPLATE_ATTRIBUTE, Tag.PRIVATE_KEY_ATTRIBUTES)
PUBLIC = (Tag.PUBLIC_KEY_TEMPLATE_ATTRIBUTE, Tag.PUBLIC_KEY_ATTRIBUTES)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with core_env(tmp_path) as e:
        yield e


def rsa_attrs(
    length: int | None = 1024, algorithm: int = CryptographicAlgorithm.RSA
) -> list[Attribute]:
    alg = Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, algorithm)
    out = [Attribute("Cryptographic Algorithm", alg)]
    if length is not None:
        size = Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, length)
        out.append(Attribute("Cryptographic Length", size))
    return out


def mask(value: int) -> Attribute:
    return Attribute("Cryptographic Usage Mask", Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, value))


def part(version: ProtocolVersion, tags: tuple[int, int], attrs: Sequence[Attribute]) -> Item:
    if version.v2:
        return attributes_v2(attrs, tags[1])
    return Item(tags[0], _S, tuple(to_v1(a) for a in attrs))


def request(
    version: ProtocolVersion,
    common: Sequence[Attribute] = (),
    private: Sequence[Attribute] = (),
    public: Sequence[Attribute] = (),
) -> list[Item]:
    out = []
    for tags, attrs in ((COMMON, common), (PRIVATE, private), (PUBLIC, public)):
        if attrs:
            out.append(part(version, tags, attrs))
    return out


def create(env: Env, version: ProtocolVersion = V21, *parts: Sequence[Attribute]) -> Answer:
    return env.run(Operation.CREATE_KEY_PAIR, *request(version, *parts), version=version)


def uids(a: Answer) -> tuple[str, str]:
    priv = a.payload.find(Tag.PRIVATE_KEY_UNIQUE_IDENTIFIER)
    pub = a.payload.find(Tag.PUBLIC_KEY_UNIQUE_IDENTIFIER)
    assert priv is not None and pub is not None
    return str(priv.value), str(pub.value)


def stored(env: Env, uid: str) -> list[Attribute]:
    return parse_attributes(decode(env.record(uid).attributes))


def values(attrs: list[Attribute], attr_name: str) -> list[Item]:
    return [a.value for a in attrs if a.name == attr_name]


def material(obj: Item) -> tuple[int, bytes]:
    block = obj.find(Tag.KEY_BLOCK)
    assert block is not None
    value = block.find(Tag.KEY_VALUE)
    fmt = block.find(Tag.KEY_FORMAT_TYPE)
    assert value is not None and fmt is not None and isinstance(fmt.value, int)
    assert [c.tag for c in value.children] == [Tag.KEY_MATERIAL]  # no Attributes inside
    key = value.find(Tag.KEY_MATERIAL)
    assert key is not None and isinstance(key.value, bytes)
    return fmt.value, key.value


# -- Create Key Pair -----------------------------------------------------------------------
@pytest.mark.parametrize("version", BOTH, ids=str)
def test_create_key_pair_makes_two_linked_keys(env: Env, version: ProtocolVersion) -> None:
    a = create(
        env, version, rsa_attrs(2048),
        [name("pair-private"), mask(U.SIGN)], [name("pair-public"), mask(U.VERIFY)],
    )  # fmt: skip
    assert a.ok, a.item
    private, public = uids(a)
    assert a.outcome is not None and a.outcome.uid == private  # the ID Placeholder
    P, L = ObjectType, LinkType
    for uid, kind, link, other, text, usage in (
        (private, P.PRIVATE_KEY, L.PUBLIC_KEY_LINK, public, "pair-private", U.SIGN),
        (public, P.PUBLIC_KEY, L.PRIVATE_KEY_LINK, private, "pair-public", U.VERIFY),
    ):
        rec = env.record(uid)
        assert (rec.object_type, rec.state) == (kind, State.PRE_ACTIVE)
        assert (rec.algorithm, rec.length) == (CryptographicAlgorithm.RSA, 2048)
        assert rec.names == (text,)
        attrs = stored(env, uid)
        [linked] = values(attrs, "Link")
        assert linked.find(Tag.LINK_TYPE) == Item.enum(Tag.LINK_TYPE, link)
        assert linked.find(Tag.LINKED_OBJECT_IDENTIFIER) == Item.text(
            Tag.LINKED_OBJECT_IDENTIFIER, other
        )
        assert values(attrs, "Cryptographic Usage Mask") == [
            Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, usage)
        ]
        assert values(attrs, "Original Creation Date") == [
            Item.datetime(Tag.ORIGINAL_CREATION_DATE, env.now)
        ]
        assert values(attrs, "Random Number Generator")
        # The Digest is SHA-256 of the key in the stored format (PKCS#1).
        fmt, der = material(open_object(env.svc, rec))
        assert fmt == KeyFormatType.PKCS_1
        [digest] = values(attrs, "Digest")
        assert digest.find(Tag.DIGEST_VALUE) == Item.bytes_(
            Tag.DIGEST_VALUE, hashlib.sha256(der).digest()
        )


def test_private_key_matches_public_key(env: Env) -> None:
    a = create(env, V21, rsa_attrs(2048))
    private, public = uids(a)
    _, private_der = material(open_object(env.svc, env.record(private)))
    _, public_der = material(open_object(env.svc, env.record(public)))
    key = ser.load_der_private_key(private_der, None)
    pub = ser.load_der_public_key(public_der)
    assert isinstance(key, rsa.RSAPrivateKey) and isinstance(pub, rsa.RSAPublicKey)
    assert key.key_size == 2048
    assert key.public_key().public_numbers() == pub.public_numbers()
    assert pub.public_numbers().e == 65537
    # The material is sealed: the registry's bytes do not hold it.
    assert private_der not in (env.record(private).sealed or b"")


def test_defaults_and_precedence(env: Env) -> None:
    """No mask: Sign / Verify. A key's own single-valued attribute beats the common one;
    multi-valued ones are the union."""
    group = Attribute("Object Group", Item.text(Tag.OBJECT_GROUP, "g-common"))
    mine = Attribute("Object Group", Item.text(Tag.OBJECT_GROUP, "g-private"))
    a = create(env, V14, [*rsa_attrs(), mask(U.ENCRYPT), group], [mine], [])
    assert a.ok, a.item
    private, public = uids(a)
    assert env.record(private).groups == ("g-common", "g-private")
    assert env.record(public).groups == ("g-common",)
    assert values(stored(env, public), "Cryptographic Usage Mask") == [
        Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, U.ENCRYPT)
    ]
    plain = create(env, V21, rsa_attrs())
    for uid, usage in zip(uids(plain), (U.SIGN, U.VERIFY), strict=True):
        assert values(stored(env, uid), "Cryptographic Usage Mask") == [
            Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, usage)
        ]
    b = create(env, V21, rsa_attrs(None), [mask(U.DECRYPT)])
    private, public = uids(b)
    assert env.record(private).length == 2048  # the default length
    assert values(stored(env, private), "Cryptographic Usage Mask") == [
        Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, U.DECRYPT)
    ]
    assert values(stored(env, public), "Cryptographic Usage Mask") == [
        Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, U.VERIFY)
    ]


def test_activation_date_and_placeholder(env: Env) -> None:
    activation = Attribute("Activation Date", Item.datetime(Tag.ACTIVATION_DATE, env.now - 60))
    a = create(env, V21, [*rsa_attrs(), activation])
    private, public = uids(a)
    assert env.record(private).state == env.record(public).state == State.ACTIVE
    b = create(env, V14, rsa_attrs())
    private, _ = uids(b)
    assert env.run(Operation.ACTIVATE, placeholder=private).ok
    assert env.record(private).state == State.ACTIVE


@pytest.mark.parametrize(
    ("parts", "v1", "v2"),
    [
        (([],), R.INVALID_FIELD, R.INVALID_FIELD),  # no algorithm
        ((rsa_attrs(algorithm=CryptographicAlgorithm.EC),), R.INVALID_FIELD,
         R.INVALID_ATTRIBUTE_VALUE),
        ((rsa_attrs(1000),), R.INVALID_FIELD, R.INVALID_ATTRIBUTE_VALUE),
        (([], rsa_attrs(1024), rsa_attrs(2048)), R.INVALID_FIELD, R.INVALID_FIELD),
        (([*rsa_attrs(), name("same")],), R.INVALID_FIELD, R.NON_UNIQUE_NAME_ATTRIBUTE),
        ((rsa_attrs(), [Attribute("State", Item.enum(Tag.STATE, 2))]), R.PERMISSION_DENIED,
         R.ATTRIBUTE_READ_ONLY),
    ],
    ids=["no-algorithm", "ec", "length", "lengths-differ", "same-name", "read-only"],
)  # fmt: skip
def test_refusals(
    env: Env, parts: tuple[Sequence[Attribute], ...], v1: ResultReason, v2: ResultReason
) -> None:
    assert create(env, V14, *parts).failed(v1)
    assert create(env, V21, *parts).failed(v2)
    assert env.wait(env.registry.locate(LocateQuery("demo"))) == []  # nothing half-made


def test_names_must_be_free(env: Env) -> None:
    assert create(env, V21, rsa_attrs(), [name("taken")]).ok
    again = create(env, V21, rsa_attrs(), [], [name("taken")])
    assert again.failed(R.NON_UNIQUE_NAME_ATTRIBUTE)


def test_another_tenant_cannot_see_the_pair(env: Env) -> None:
    private, _ = uids(create(env, V21, rsa_attrs()))
    a = env.run(Operation.ACTIVATE, Item.text(Tag.UNIQUE_IDENTIFIER, private), tenant="other")
    assert a.failed(R.ITEM_NOT_FOUND)
    assert Operation.CREATE_KEY_PAIR in CONTROL_HANDLERS


# -- Key Format Types ----------------------------------------------------------------------
def test_reformat_between_pkcs1_pkcs8_and_x509() -> None:
    key = rsa.generate_private_key(65537, 1024)
    pkcs1 = key.private_bytes(
        ser.Encoding.DER, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    spki = key.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    priv = key_object(ObjectType.PRIVATE_KEY, KeyFormatType.PKCS_1, pkcs1, 1024)
    assert reformat(priv, ObjectType.PRIVATE_KEY, KeyFormatType.PKCS_1) is priv
    fmt, der = material(reformat(priv, ObjectType.PRIVATE_KEY, KeyFormatType.PKCS_8))
    assert fmt == KeyFormatType.PKCS_8
    assert der == key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    pub = key_object(
        ObjectType.PUBLIC_KEY,
        KeyFormatType.PKCS_1,
        key.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.PKCS1),
        1024,
    )
    fmt, der = material(reformat(pub, ObjectType.PUBLIC_KEY, KeyFormatType.X_509))
    assert (fmt, der) == (KeyFormatType.X_509, spki)
    for obj, kind, wanted in (
        (priv, ObjectType.PRIVATE_KEY, KeyFormatType.X_509),
        (priv, ObjectType.PRIVATE_KEY, KeyFormatType.TRANSPARENT_RSA_PRIVATE_KEY),
        (pub, ObjectType.PUBLIC_KEY, KeyFormatType.PKCS_8),
        (pub, ObjectType.SECRET_DATA, KeyFormatType.RAW),
    ):
        with pytest.raises(Exception, match=r"Key Format|served as") as info:
            reformat(obj, kind, wanted)
        assert getattr(info.value, "reason", None) is R.KEY_FORMAT_TYPE_NOT_SUPPORTED


# -- through a gateway -----------------------------------------------------------------------
def gateway_get(s: Stack, uid: str, fmt: int | None = None, tenant: str = "demo") -> ResponseItem:
    children = [Item.text(Tag.UNIQUE_IDENTIFIER, uid)]
    if fmt is not None:
        children.append(Item.enum(Tag.KEY_FORMAT_TYPE, fmt))
    item = cm.batch_item(Operation.GET, cm.payload(*children))
    [answer] = s.send(cm.request_message(V14, [item]), tenant).items
    return answer


def test_gateway_get_of_both_keys(start_embedded: Callable[..., Stack]) -> None:
    s = start_embedded()
    batch = cm.request_message(
        V14,
        [
            cm.batch_item(Operation.CREATE_KEY_PAIR, cm.payload(*request(V14, rsa_attrs()))),
            cm.batch_item(Operation.ACTIVATE, cm.payload()),  # the ID Placeholder: private
        ],
    )
    made, activated = s.send(batch).items
    assert made.status is activated.status is ResultStatus.SUCCESS
    assert made.payload is not None
    priv = made.payload.find(Tag.PRIVATE_KEY_UNIQUE_IDENTIFIER)
    pub = made.payload.find(Tag.PUBLIC_KEY_UNIQUE_IDENTIFIER)
    assert priv is not None and pub is not None
    private, public = str(priv.value), str(pub.value)
    assert s.record(private).state == State.ACTIVE
    answers = {
        (private, None): gateway_get(s, private),
        (private, KeyFormatType.PKCS_8): gateway_get(s, private, KeyFormatType.PKCS_8),
        (public, None): gateway_get(s, public),
        (public, KeyFormatType.X_509): gateway_get(s, public, KeyFormatType.X_509),
    }
    loaded = {}
    for (uid, fmt), answer in answers.items():
        assert answer.status is ResultStatus.SUCCESS, answer.message
        assert answer.payload is not None
        assert answer.payload.find(Tag.UNIQUE_IDENTIFIER) == Item.text(
            Tag.UNIQUE_IDENTIFIER, uid
        )
        tag = Tag.PRIVATE_KEY if uid == private else Tag.PUBLIC_KEY
        obj = answer.payload.find(tag)
        assert obj is not None
        got_fmt, der = material(obj)
        assert got_fmt == (fmt or KeyFormatType.PKCS_1)
        loaded[(uid, fmt)] = (
            ser.load_der_private_key(der, None)
            if uid == private
            else ser.load_der_public_key(der)
        )
    key = loaded[(private, None)]
    assert isinstance(key, rsa.RSAPrivateKey)
    for k in ((public, None), (public, KeyFormatType.X_509)):
        other = loaded[k]
        assert isinstance(other, rsa.RSAPublicKey)
        assert other.public_numbers() == key.public_key().public_numbers()
    refused = gateway_get(s, public, KeyFormatType.PKCS_8)
    assert refused.reason is R.KEY_FORMAT_TYPE_NOT_SUPPORTED
    assert gateway_get(s, private, tenant="other").reason is R.ITEM_NOT_FOUND
