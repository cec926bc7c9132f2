"""What the OASIS profile cases showed missing (docs/conformance.md), on a gateway
gateway and a Core in one process (tests/helpers/embedded.py): Digest and the
other attributes the server sets, attributes by protocol version, Triple DES,
Quantum Safe, Register of keys of a pair and certificates, Get as registered,
Sensitive / Extractable, Interop and Log, and the 2.x reasons at the gateway."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.x509.oid import NameOID
from tests.helpers.embedded import Stack

from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute, attributes_v2, parse_v1, parse_v2, to_v1
from krypton.kmip.messages import ResponseItem
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.codec import encode
from krypton.ttlv.enums import (
    BlockCipherMode,
    CertificateType,
    CryptographicAlgorithm,
    HashingAlgorithm,
    InteropFunction,
    KeyFormatType,
    ObjectType,
    Operation,
    ProtectionLevel,
    ProtectionStorageMask,
    QueryFunction,
    ResultReason,
    ResultStatus,
    RNGAlgorithm,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

V10 = ProtocolVersion(1, 0)
V11 = ProtocolVersion(1, 1)
V12 = ProtocolVersion(1, 2)
V13 = ProtocolVersion(1, 3)
V14 = ProtocolVersion(1, 4)
V20 = ProtocolVersion(2, 0)
V21 = ProtocolVersion(2, 1)
R = ResultReason
A = CryptographicAlgorithm
KEY = bytes(range(16))


@pytest.fixture
def s(start_embedded: Callable[..., Stack]) -> Stack:
    return start_embedded(interop=True)


# -- helpers ---------------------------------------------------------------------------
def call(s: Stack, op: Operation, *children: Item, version: ProtocolVersion = V21) -> ResponseItem:
    message = cm.request_message(version, [cm.batch_item(op, cm.payload(*children))])
    [answer] = s.send(message).items
    return answer


def ok(answer: ResponseItem) -> Item:
    assert answer.status is ResultStatus.SUCCESS, (answer.reason, answer.message)
    assert answer.payload is not None
    return answer.payload


def failed(answer: ResponseItem, reason: ResultReason) -> bool:
    return answer.status is ResultStatus.OPERATION_FAILED and answer.reason is reason


def uid_of(payload: Item) -> str:
    return cm.unique_identifier(payload)


def attributes_item(version: ProtocolVersion, attrs: Sequence[Attribute]) -> Item:
    if version.v2:
        return attributes_v2(attrs)
    return Item(Tag.TEMPLATE_ATTRIBUTE, ItemType.STRUCTURE, tuple(to_v1(a) for a in attrs))


def algorithm(alg: int, length: int) -> list[Attribute]:
    return [
        Attribute("Cryptographic Algorithm", Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, alg)),
        Attribute("Cryptographic Length", Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, length)),
    ]


def create(
    s: Stack, version: ProtocolVersion = V21, attrs: Sequence[Attribute] | None = None
) -> str:
    given = cm.aes_attributes(128) if attrs is None else list(attrs)
    [answer] = s.send(cm.request_message(version, [cm.create_item(version, given)])).items
    return uid_of(ok(answer))


def register(
    s: Stack, object_type: int, obj: Item, attrs: Sequence[Attribute] = (),
    version: ProtocolVersion = V21,
) -> ResponseItem:  # fmt: skip
    return call(
        s, Operation.REGISTER, Item.enum(Tag.OBJECT_TYPE, object_type),
        attributes_item(version, attrs), obj, version=version,
    )  # fmt: skip


def attributes(s: Stack, uid: str, version: ProtocolVersion = V21) -> dict[str, Item]:
    """Get Attributes (all of them), by name, in either dialect."""
    payload = ok(call(s, Operation.GET_ATTRIBUTES, Item.text(Tag.UNIQUE_IDENTIFIER, uid),
                      version=version))  # fmt: skip
    if version.v2:
        container = payload.find(Tag.ATTRIBUTES)
        assert container is not None
        parsed = [parse_v2(c) for c in container.children]
    else:
        parsed = [parse_v1(c) for c in payload.children if c.tag == Tag.ATTRIBUTE]
    return {a.name: a.value for a in parsed}


def get(s: Stack, uid: str, version: ProtocolVersion = V21, fmt: int | None = None) -> Item:
    extra = () if fmt is None else (Item.enum(Tag.KEY_FORMAT_TYPE, fmt),)
    payload = ok(call(s, Operation.GET, Item.text(Tag.UNIQUE_IDENTIFIER, uid), *extra,
                      version=version))  # fmt: skip
    block = payload.find(Tag.SYMMETRIC_KEY) or payload.find(Tag.PRIVATE_KEY)
    block = block or payload.find(Tag.PUBLIC_KEY) or payload.find(Tag.CERTIFICATE)
    assert block is not None
    return block


def raw_key(obj: Item) -> bytes:
    block = obj.find(Tag.KEY_BLOCK)
    assert block is not None
    value = block.find(Tag.KEY_VALUE)
    assert value is not None
    material = value.find(Tag.KEY_MATERIAL)
    assert material is not None
    if material.type is ItemType.STRUCTURE:
        material = material.find(Tag.KEY)
        assert material is not None
    assert isinstance(material.value, bytes)
    return material.value


def key_object(tag: int, fmt: int, material: Item, alg: int, length: int) -> Item:
    return Item.structure(
        tag,
        Item.structure(
            Tag.KEY_BLOCK,
            Item.enum(Tag.KEY_FORMAT_TYPE, fmt),
            Item.structure(Tag.KEY_VALUE, material),
            Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, alg),
            Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, length),
        ),
    )


def symmetric(key: bytes, fmt: int = KeyFormatType.RAW, alg: int = A.AES, length: int = 0) -> Item:
    material = (
        Item.bytes_(Tag.KEY_MATERIAL, key)
        if fmt == KeyFormatType.RAW
        else Item.structure(Tag.KEY_MATERIAL, Item.bytes_(Tag.KEY, key))
    )
    return key_object(Tag.SYMMETRIC_KEY, fmt, material, alg, length or len(key) * 8)


def boolean(attr_name: str, value: bool) -> Attribute:
    return Attribute(attr_name, Item.boolean(getattr(Tag, attr_name.upper().replace(" ", "_")),
                                             value))  # fmt: skip


def set_attribute(s: Stack, uid: str, attr: Attribute) -> None:
    ok(call(s, Operation.SET_ATTRIBUTE, Item.text(Tag.UNIQUE_IDENTIFIER, uid),
            Item.structure(Tag.NEW_ATTRIBUTE, attr.value)))  # fmt: skip


# -- Digest --------------------------------------------------------------------------------
def test_create_keeps_a_sha256_digest_of_the_key_in_raw_format(s: Stack) -> None:
    uid = create(s, V14)
    digest = attributes(s, uid, V14)["Digest"]
    material = raw_key(get(s, uid, V14))
    assert digest == Item.structure(
        Tag.DIGEST,
        Item.enum(Tag.HASHING_ALGORITHM, HashingAlgorithm.SHA_256),
        Item.bytes_(Tag.DIGEST_VALUE, hashlib.sha256(material).digest()),
        Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
    )


def test_a_kmip_1_0_digest_has_no_key_format_type(s: Stack) -> None:
    uid = create(s, V10)
    tags = [c.tag for c in attributes(s, uid, V10)["Digest"].children]
    assert tags == [Tag.HASHING_ALGORITHM, Tag.DIGEST_VALUE]  # KMIP 1.0 §3.17
    assert Tag.KEY_FORMAT_TYPE in [c.tag for c in attributes(s, uid, V11)["Digest"].children]


def test_register_digests_the_key_in_the_format_it_was_given_in(s: Stack) -> None:
    raw = uid_of(ok(register(s, ObjectType.SYMMETRIC_KEY, symmetric(KEY))))
    value = attributes(s, raw)["Digest"].find(Tag.DIGEST_VALUE)
    assert value is not None and value.value == hashlib.sha256(KEY).digest()

    obj = symmetric(KEY, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY)
    transparent = uid_of(ok(register(s, ObjectType.SYMMETRIC_KEY, obj)))
    digest = attributes(s, transparent)["Digest"]
    structure = Item.structure(Tag.KEY_MATERIAL, Item.bytes_(Tag.KEY, KEY))
    # KMIP 1.4 §3.17: a Key Material structure is hashed as its TTLV encoding.
    assert digest.find(Tag.DIGEST_VALUE) == Item.bytes_(
        Tag.DIGEST_VALUE, hashlib.sha256(encode(structure)).digest()
    )
    assert digest.find(Tag.KEY_FORMAT_TYPE) == Item.enum(
        Tag.KEY_FORMAT_TYPE, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY
    )


def test_re_key_digests_the_new_key(s: Stack) -> None:
    old = uid_of(ok(register(s, ObjectType.SYMMETRIC_KEY, symmetric(KEY))))
    new = uid_of(ok(call(s, Operation.RE_KEY, Item.text(Tag.UNIQUE_IDENTIFIER, old))))
    value = attributes(s, new)["Digest"].find(Tag.DIGEST_VALUE)
    assert value is not None and value.value == hashlib.sha256(raw_key(get(s, new))).digest()
    assert "Original Creation Date" in attributes(s, new)


# -- the other server attributes ---------------------------------------------------------
def test_a_created_key_has_the_attributes_the_server_sets(s: Stack) -> None:
    uid = create(s, V21)
    got = attributes(s, uid, V21)
    assert got["Original Creation Date"].value == got["Initial Date"].value  # 1.4 §3.43
    rng = got["Random Number Generator"].find(Tag.RNG_ALGORITHM)
    assert rng is not None and rng.value == RNGAlgorithm.UNSPECIFIED  # os.urandom
    assert got["Fresh"].value is True
    flags = ("Sensitive", "Always Sensitive", "Extractable", "Never Extractable")
    assert [got[n].value for n in flags] == [False, False, True, False]
    assert got["Lease Time"].type is ItemType.INTERVAL
    assert got["Short Unique Identifier"].value == hashlib.sha256(uid.encode()).digest()
    assert got["Protection Storage Mask"].value == ProtectionStorageMask.SOFTWARE
    assert got["Key Format Type"].value == KeyFormatType.RAW


def test_a_version_is_shown_only_the_attributes_it_defines(s: Stack) -> None:
    uid = create(s, V21)

    def listed(version: ProtocolVersion) -> set[object]:
        payload = ok(call(s, Operation.GET_ATTRIBUTE_LIST, Item.text(Tag.UNIQUE_IDENTIFIER, uid),
                          version=version))  # fmt: skip
        if version.v2:
            return {c.value for c in payload.children if c.tag == Tag.ATTRIBUTE_REFERENCE}
        return {c.value for c in payload.children if c.tag == Tag.ATTRIBUTE_NAME}

    assert {"Digest", "Lease Time"} <= listed(V10)
    assert not {"Fresh", "Original Creation Date", "Random Number Generator"} & listed(V10)
    assert {"Fresh", "Original Creation Date"} <= listed(V12)
    assert "Random Number Generator" in listed(V13)
    assert "Sensitive" not in listed(V13)
    # The list SKFF-M-9-14 expects of a 1.4 server:
    assert {
        "Always Sensitive", "Digest", "Extractable", "Fresh", "Lease Time", "Never Extractable",
        "Original Creation Date", "Random Number Generator", "Sensitive",
    } <= listed(V14)  # fmt: skip
    assert "Short Unique Identifier" not in listed(V14)
    assert {Tag.SHORT_UNIQUE_IDENTIFIER, Tag.KEY_FORMAT_TYPE, Tag.PROTECTION_STORAGE_MASK} <= (
        listed(V21)
    )


def test_always_sensitive_and_never_extractable_follow_the_flags(s: Stack) -> None:
    attrs = [boolean("Sensitive", True), boolean("Extractable", False)]
    uid = uid_of(ok(register(s, ObjectType.SYMMETRIC_KEY, symmetric(KEY), attrs)))
    got = attributes(s, uid)
    assert got["Always Sensitive"].value is True and got["Never Extractable"].value is True
    set_attribute(s, uid, boolean("Sensitive", False))
    set_attribute(s, uid, boolean("Extractable", True))
    got = attributes(s, uid)
    assert got["Always Sensitive"].value is False and got["Never Extractable"].value is False
    set_attribute(s, uid, boolean("Sensitive", True))  # never again "always"
    assert attributes(s, uid)["Always Sensitive"].value is False


def test_get_refuses_a_sensitive_or_not_extractable_object(s: Stack) -> None:
    sensitive = uid_of(ok(register(s, ObjectType.SYMMETRIC_KEY, symmetric(KEY),
                                   [boolean("Sensitive", True)])))  # fmt: skip
    sealed = uid_of(ok(register(s, ObjectType.SYMMETRIC_KEY, symmetric(KEY),
                                [boolean("Extractable", False)])))  # fmt: skip
    for version, (first, second) in (
        (V21, (R.SENSITIVE, R.NOT_EXTRACTABLE)),
        (V14, (R.SENSITIVE, R.NOT_EXTRACTABLE)),
    ):
        assert failed(call(s, Operation.GET, Item.text(Tag.UNIQUE_IDENTIFIER, sensitive),
                           version=version), first)  # fmt: skip
        assert failed(call(s, Operation.GET, Item.text(Tag.UNIQUE_IDENTIFIER, sealed),
                           version=version), second)  # fmt: skip
    set_attribute(s, sensitive, boolean("Sensitive", False))
    assert raw_key(get(s, sensitive)) == KEY


def test_a_key_is_served_in_the_format_it_was_registered_in(s: Stack) -> None:
    obj = symmetric(KEY, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY)
    uid = uid_of(ok(register(s, ObjectType.SYMMETRIC_KEY, obj)))
    served = get(s, uid)
    assert served == obj  # BL-M-3-21
    assert attributes(s, uid)["Key Format Type"].value == KeyFormatType.TRANSPARENT_SYMMETRIC_KEY
    raw = get(s, uid, fmt=KeyFormatType.RAW)
    assert raw == symmetric(KEY)
    plain = uid_of(ok(register(s, ObjectType.SYMMETRIC_KEY, symmetric(KEY))))
    assert get(s, plain) == symmetric(KEY)


# -- Triple DES, Quantum Safe ------------------------------------------------------------------
def test_triple_des_keys_are_made_registered_and_used(s: Stack) -> None:
    uid = create(s, V14, algorithm(A.DES3, 168))
    made = raw_key(get(s, uid, V14))
    assert len(made) == 24 and all(bin(b).count("1") % 2 for b in made)  # odd parity
    assert failed(call(s, Operation.CREATE, Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
                       attributes_item(V14, algorithm(A.DES3, 112)), version=V14),
                  R.INVALID_FIELD)  # fmt: skip

    key = bytes.fromhex("0123456789abcdeffedcba987654321089abcdef01234567")
    mask = Attribute("Cryptographic Usage Mask", Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, 12))
    active = Attribute("Activation Date", Item.datetime(Tag.ACTIVATION_DATE, 1))
    obj = symmetric(key, alg=A.DES3, length=168)
    tdes = uid_of(ok(register(s, ObjectType.SYMMETRIC_KEY, obj, [mask, active], V14)))
    plain = bytes(range(24))
    cryptogram = ok(call(
        s, Operation.ENCRYPT, Item.text(Tag.UNIQUE_IDENTIFIER, tdes),
        Item.structure(Tag.CRYPTOGRAPHIC_PARAMETERS,
                       Item.enum(Tag.BLOCK_CIPHER_MODE, BlockCipherMode.ECB)),
        Item.bytes_(Tag.DATA, plain), version=V14,
    )).find(Tag.DATA)  # fmt: skip
    enc = Cipher(TripleDES(key), modes.ECB()).encryptor()
    assert cryptogram is not None and cryptogram.value == enc.update(plain) + enc.finalize()


def test_a_quantum_safe_key_must_be_aes_256(s: Stack) -> None:
    wanted = [
        Attribute("Protection Level", Item.enum(Tag.PROTECTION_LEVEL, ProtectionLevel.HIGH)),
        Attribute("Protection Period", Item(Tag.PROTECTION_PERIOD, ItemType.INTERVAL, 86400)),
        boolean("Quantum Safe", True),
    ]
    weak = cm.create_item(V21, [*cm.aes_attributes(128), *wanted])
    [answer] = s.send(cm.request_message(V21, [weak])).items
    assert failed(answer, R.GENERAL_FAILURE)  # QS-M-2-21
    uid = create(s, V21, [*cm.aes_attributes(256), *wanted])
    got = attributes(s, uid)
    assert got["Quantum Safe"].value is True
    assert got["Protection Level"].value == ProtectionLevel.HIGH


# -- Register of keys of a pair and certificates --------------------------------------------
def _certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "conformance"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Krypton"),
    ])  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(7)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(ser.Encoding.DER)


def test_keys_of_a_pair_are_registered_and_served_as_given(s: Stack) -> None:
    key = rsa.generate_private_key(65537, 1024)
    der = key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    obj = key_object(Tag.PRIVATE_KEY, KeyFormatType.PKCS_8, Item.bytes_(Tag.KEY_MATERIAL, der),
                     A.RSA, 1024)  # fmt: skip
    private = uid_of(ok(register(s, ObjectType.PRIVATE_KEY, obj)))
    assert get(s, private) == obj
    pkcs1 = ser.load_der_private_key(raw_key(get(s, private, fmt=KeyFormatType.PKCS_1)), None)
    assert isinstance(pkcs1, rsa.RSAPrivateKey)
    assert pkcs1.private_numbers() == key.private_numbers()
    got = attributes(s, private)
    assert got["Cryptographic Algorithm"].value == A.RSA
    assert got["Cryptographic Length"].value == 1024
    assert got["Digest"].find(Tag.DIGEST_VALUE) == Item.bytes_(
        Tag.DIGEST_VALUE, hashlib.sha256(der).digest()
    )

    numbers = key.public_key().public_numbers()
    material = Item.structure(
        Tag.KEY_MATERIAL,
        Item(Tag.MODULUS, ItemType.BIG_INTEGER, numbers.n),
        Item(Tag.PUBLIC_EXPONENT, ItemType.BIG_INTEGER, numbers.e),
    )
    public_obj = key_object(Tag.PUBLIC_KEY, KeyFormatType.TRANSPARENT_RSA_PUBLIC_KEY, material,
                            A.RSA, 1024)  # fmt: skip
    public = uid_of(ok(register(s, ObjectType.PUBLIC_KEY, public_obj)))
    assert get(s, public) == public_obj  # BL-M-8-21


def test_certificates_are_registered_with_the_attributes_read_off_them(s: Stack) -> None:
    der = _certificate()
    cert = Item.structure(
        Tag.CERTIFICATE,
        Item.enum(Tag.CERTIFICATE_TYPE, CertificateType.X_509),
        Item.bytes_(Tag.CERTIFICATE_VALUE, der),
    )
    restated = Attribute("Certificate Type", Item.enum(Tag.CERTIFICATE_TYPE, CertificateType.X_509))
    uid = uid_of(ok(register(s, ObjectType.CERTIFICATE, cert, [restated])))
    got = attributes(s, uid)
    assert got["Certificate Length"].value == len(der)
    assert got["Certificate Subject CN"].value == "conformance"
    assert got["Certificate Issuer O"].value == "Krypton"
    assert get(s, uid) == cert
    change = call(
        s,
        Operation.MODIFY_ATTRIBUTE,
        Item.text(Tag.UNIQUE_IDENTIFIER, uid),
        Item.structure(Tag.NEW_ATTRIBUTE, Item.integer(Tag.CERTIFICATE_LENGTH, 1)),
    )
    assert failed(change, R.ATTRIBUTE_READ_ONLY)  # BL-M-10-21
    wrong = Attribute("Certificate Type", Item.enum(Tag.CERTIFICATE_TYPE, CertificateType.PGP))
    assert failed(register(s, ObjectType.CERTIFICATE, cert, [wrong]), R.INVALID_FIELD)


# -- Interop, Log, reasons -------------------------------------------------------------------
def _interop(s: Stack, function: int) -> ResponseItem:
    return call(s, Operation.INTEROP, Item.enum(Tag.INTEROP_FUNCTION, function),
                Item.text(Tag.INTEROP_IDENTIFIER, "BL-M-1-21"))  # fmt: skip


def _operations(s: Stack) -> set[int]:
    payload = ok(
        call(s, Operation.QUERY, Item.enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_OPERATIONS))
    )
    return {int(c.value) for c in payload.children if isinstance(c.value, int)}


def test_interop_begin_and_end_on_a_test_server_only(
    s: Stack, start_embedded: Callable[..., Stack]
) -> None:
    assert _interop(s, InteropFunction.BEGIN).status is ResultStatus.SUCCESS
    assert _interop(s, InteropFunction.END).status is ResultStatus.SUCCESS
    assert failed(_interop(s, InteropFunction.RESET), R.FEATURE_NOT_SUPPORTED)
    assert {Operation.INTEROP, Operation.LOG} <= _operations(s)
    production = start_embedded()  # interop off: the default
    assert failed(_interop(production, InteropFunction.BEGIN), R.OPERATION_NOT_SUPPORTED)
    assert Operation.INTEROP not in _operations(production)
    assert Operation.LOG in _operations(production)


def test_log_writes_the_message_quoted(s: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="krypton.log")
    answer = call(s, Operation.LOG, Item.text(Tag.LOG_MESSAGE, "forged\nline"))
    assert ok(answer).children == ()
    assert "'forged\\nline'" in caplog.text and "forged\nline" not in caplog.text
    assert failed(call(s, Operation.LOG), R.INVALID_FIELD)


def test_gateway_answers_not_found_and_destroyed_with_the_reasons_of_the_version(
    s: Stack,
) -> None:
    absent = Item.text(Tag.UNIQUE_IDENTIFIER, "no-such-object")
    assert failed(call(s, Operation.GET, absent, version=V21), R.OBJECT_NOT_FOUND)
    assert failed(call(s, Operation.GET_ATTRIBUTES, absent, version=V20), R.OBJECT_NOT_FOUND)
    assert failed(call(s, Operation.GET, absent, version=V14), R.ITEM_NOT_FOUND)
    uid = uid_of(ok(register(s, ObjectType.SYMMETRIC_KEY, symmetric(KEY))))
    ok(call(s, Operation.DESTROY, Item.text(Tag.UNIQUE_IDENTIFIER, uid)))
    named = Item.text(Tag.UNIQUE_IDENTIFIER, uid)
    assert failed(call(s, Operation.GET, named, version=V21), R.OBJECT_DESTROYED)  # BL-M-8-21
    assert failed(call(s, Operation.GET, named, version=V14), R.ITEM_NOT_FOUND)
