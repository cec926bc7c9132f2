"""Encrypt, Decrypt and RNG Retrieve at the gateway: the dispatcher over a real vault and
key ring, keys with known bytes wrapped by the ring, answers checked against published
vectors (NIST SP 800-38A, the GCM spec's test cases as SP 800-38D uses them, RFC 8439)
and against ``cryptography`` computing the same thing on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tests.helpers.embedded import Stack

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import SecretBytes, generate_key
from krypton.engine.ciphers import InvalidCorrelation, Streams
from krypton.gateway.engine.dispatch import HANDLERS, Dispatcher, Session
from krypton.gateway.engine.services import Services
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute, attributes_v2, to_v1
from krypton.kmip.messages import ResponseItem
from krypton.kmip.versions import ProtocolVersion
from krypton.model.grant import Grant
from krypton.model.record import KeyRecord
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    ObjectType,
    Operation,
    PaddingMethod,
    ResultReason,
    ResultStatus,
    State,
    UsageLimitsUnit,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.vault.sqlite import Vault

V14 = ProtocolVersion(1, 4)
V20 = ProtocolVersion(2, 0)
V21 = ProtocolVersion(2, 1)
R = ResultReason
M = BlockCipherMode
ENC = Operation.ENCRYPT
DEC = Operation.DECRYPT
USE = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT
H = bytes.fromhex

# NIST SP 800-38A F.1.1, F.2.1, F.5.1 (AES-128).
NIST_KEY = H("2b7e151628aed2a6abf7158809cf4f3c")
NIST_PLAIN = H(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
NIST_38A = [
    (M.ECB, None, "3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf"
     "43b1cd7f598ece23881b00e3ed0306887b0c785e27e8ad3f8223207104725dd4"),
    (M.CBC, H("000102030405060708090a0b0c0d0e0f"), "7649abac8119b246cee98e9b12e9197d"
     "5086cb9b507219ee95db113a917678b273bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7"),
    (M.CTR, H("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"), "874d6191b620e3261bef6864990db6ce"
     "9806f66b7970fdff8617187bb9fffdff5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"),
]  # fmt: skip
# The GCM specification's test cases 2, 4 and 6 (AES-128), as in CS-BC-M-GCM-2.
GCM_KEY = H("feffe9928665731c6d6a8f9467308308")
GCM_PLAIN = H(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
)
GCM_AAD = H("feedfacedeadbeeffeedfacedeadbeefabaddad2")
GCM_4 = (
    H("cafebabefacedbaddecaf888"),
    "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e23"
    "29aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
    "5bc94fbc3221a5db94fae95ae7121a47",
)
GCM_6 = (
    H(
        "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728"
        "c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b"
    ),
    "8ce24998625615b603a033aca13fb894be9112a5c3a211a8"
    "ba262a3cca7e2ca701e4a9a4fba43c90ccdcb281d48c7c6fd62875d2aca417034c34aee5",
    "619cc5aefffe0bfa462af43c1699d050",
)


class SpyRing(KeyRing):
    """A real key ring that also remembers every unwrapped key it handed out."""

    def __init__(self) -> None:
        super().__init__()
        self.handed_out: list[SecretBytes] = []

    def unwrap(self, tenant: str, uid: str, l3_version: int, blob: bytes) -> SecretBytes:
        secret = super().unwrap(tenant, uid, l3_version, blob)
        self.handed_out.append(secret)
        return secret


@dataclass
class Gw:
    loop: asyncio.AbstractEventLoop
    vault: Vault
    ring: SpyRing
    dispatcher: Dispatcher
    now: int = 0
    count: int = 0

    def key(
        self,
        material: bytes,
        *attrs: Attribute,
        tenant: str = "demo",
        state: int = State.ACTIVE,
        algorithm: int = CryptographicAlgorithm.AES,
        object_type: int = ObjectType.SYMMETRIC_KEY,
        usage: int | None = USE,
    ) -> str:
        """A record in the vault holding ``material`` wrapped by the tenant's L3."""
        self.count += 1
        uid = f"key-{self.count}"
        version, blob = self.ring.wrap(tenant, uid, SecretBytes(material))
        mask = [] if usage is None else [mask_attr(usage)]
        record = KeyRecord(
            uid=uid,
            tenant=tenant,
            object_type=object_type,
            algorithm=algorithm,
            length=len(material) * 8,
            state=state,
            l3_version=version,
            wrapped=blob,
            attributes=encode(attributes_v2([*mask, *attrs])),
        )
        self.loop.run_until_complete(self.vault.put(record))
        return uid

    def batch(
        self, items: Sequence[Item], version: ProtocolVersion = V14, tenant: str = "demo"
    ) -> list[ResponseItem]:
        data = encode(cm.request_message(version, items))
        session = Session(f"spiffe://t/{tenant}", Grant(tenant, None), 1)
        raw = self.loop.run_until_complete(self.dispatcher.handle(data, session))
        return list(cm.parse_response(decode(raw)).items)

    def call(
        self, op: Operation, *children: Item, version: ProtocolVersion = V14, tenant: str = "demo"
    ) -> ResponseItem:
        [answer] = self.batch([cm.batch_item(op, cm.payload(*children))], version, tenant)
        return answer


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gw]:
    loop = asyncio.new_event_loop()
    vault = Vault.open(tmp_path / "v.db")
    ring = SpyRing()
    for tenant in ("demo", "other"):
        ring.install(tenant, 1, generate_key(256), L3State.ACTIVE, ring.lease_deadline(3600))
    try:
        yield Gw(loop, vault, ring, Dispatcher(Services(store=vault, keyring=ring)))
    finally:
        vault.close()
        loop.close()


# -- request and response helpers --------------------------------------------------------
def mask_attr(mask: int) -> Attribute:
    return Attribute("Cryptographic Usage Mask", Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, mask))


def date_attr(name: str, tag: int, when: int) -> Attribute:
    return Attribute(name, Item.datetime(tag, when))


def uid(u: str) -> Item:
    return Item.text(Tag.UNIQUE_IDENTIFIER, u)


def params(
    mode: int | None = None,
    pad: int | None = None,
    *,
    random_iv: bool | None = None,
    tag_length: int | None = None,
    algorithm: int | None = None,
    extra: Sequence[Item] = (),
) -> Item:
    out: list[Item] = []
    if mode is not None:
        out.append(Item.enum(Tag.BLOCK_CIPHER_MODE, mode))
    if pad is not None:
        out.append(Item.enum(Tag.PADDING_METHOD, pad))
    if algorithm is not None:
        out.append(Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, algorithm))
    if random_iv is not None:
        out.append(Item.boolean(Tag.RANDOM_IV, random_iv))
    if tag_length is not None:
        out.append(Item.integer(Tag.TAG_LENGTH, tag_length))
    return Item.structure(Tag.CRYPTOGRAPHIC_PARAMETERS, *out, *extra)


def data(b: bytes) -> Item:
    return Item.bytes_(Tag.DATA, b)


def iv(b: bytes) -> Item:
    return Item.bytes_(Tag.IV_COUNTER_NONCE, b)


def aad(b: bytes) -> Item:
    return Item.bytes_(Tag.AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, b)


def tag(b: bytes) -> Item:
    return Item.bytes_(Tag.AUTHENTICATED_ENCRYPTION_TAG, b)


def flag(t: int) -> Item:
    return Item.boolean(t, True)


def field(answer: ResponseItem, t: int) -> bytes | None:
    assert answer.status is ResultStatus.SUCCESS, (answer.reason, answer.message)
    assert answer.payload is not None
    found = answer.payload.find(t)
    if found is None:
        return None
    assert isinstance(found.value, bytes)
    return found.value


def out(answer: ResponseItem) -> bytes:
    value = field(answer, Tag.DATA)
    assert value is not None
    return value


def failed(answer: ResponseItem, reason: ResultReason) -> bool:
    return answer.status is ResultStatus.OPERATION_FAILED and answer.reason is reason


def aes(key: bytes, mode: modes.Mode, plain: bytes, *, pkcs7: bool = False) -> bytes:
    """What ``cryptography`` alone computes for the same request."""
    if pkcs7:
        padder = padding.PKCS7(128).padder()
        plain = padder.update(plain) + padder.finalize()
    cipher: Cipher[Any] = Cipher(algorithms.AES(key), mode)
    enc = cipher.encryptor()
    return enc.update(plain) + enc.finalize()


# -- published vectors --------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "counter", "expected"), NIST_38A, ids=["ECB", "CBC", "CTR"])
@pytest.mark.parametrize("version", [V14, V21], ids=str)
def test_sp800_38a_vectors(
    gw: Gw, mode: int, counter: bytes | None, expected: str, version: ProtocolVersion
) -> None:
    k = gw.key(NIST_KEY)
    given = [] if counter is None else [iv(counter)]
    e = gw.call(ENC, uid(k), params(mode), data(NIST_PLAIN), *given, version=version)
    assert out(e).hex() == expected
    assert field(e, Tag.IV_COUNTER_NONCE) is None  # the client's IV is not echoed
    d = gw.call(DEC, uid(k), params(mode), data(H(expected)), *given, version=version)
    assert out(d) == NIST_PLAIN


@pytest.mark.parametrize("case", [GCM_4, GCM_6], ids=["tc4-96bit-iv", "tc6-480bit-iv"])
def test_gcm_spec_vectors(gw: Gw, case: tuple[bytes, str, str]) -> None:
    nonce, ct, t = case
    k = gw.key(GCM_KEY)
    plain = GCM_PLAIN
    e = gw.call(ENC, uid(k), params(M.GCM, tag_length=16), data(plain), iv(nonce), aad(GCM_AAD))
    assert out(e).hex() == ct and field(e, Tag.AUTHENTICATED_ENCRYPTION_TAG) == H(t)
    d = gw.call(DEC, uid(k), params(M.GCM), data(H(ct)), iv(nonce), aad(GCM_AAD), tag(H(t)))
    assert out(d) == plain
    # A truncated tag (12 bytes) is checked as such.
    d12 = gw.call(
        DEC, uid(k), params(M.GCM, tag_length=12), data(H(ct)), iv(nonce), aad(GCM_AAD),
        tag(H(t)[:12]),
    )  # fmt: skip
    assert out(d12) == plain
    e12 = gw.call(ENC, uid(k), params(M.GCM, tag_length=12), data(plain), iv(nonce), aad(GCM_AAD))
    assert field(e12, Tag.AUTHENTICATED_ENCRYPTION_TAG) == H(t)[:12]


def test_gcm_refuses_a_wrong_tag_aad_or_tag_length(gw: Gw) -> None:
    nonce, ct, t = GCM_4
    k = gw.key(GCM_KEY)
    bad_tag = bytes([H(t)[0] ^ 1]) + H(t)[1:]
    common = (uid(k), params(M.GCM), data(H(ct)), iv(nonce))
    assert failed(gw.call(DEC, *common, aad(GCM_AAD), tag(bad_tag)), R.CRYPTOGRAPHIC_FAILURE)
    assert failed(gw.call(DEC, *common, aad(b"other"), tag(H(t))), R.CRYPTOGRAPHIC_FAILURE)
    assert failed(gw.call(DEC, *common, aad(GCM_AAD)), R.INVALID_MESSAGE)  # no tag
    for length in (1, 32):  # CS-BC-M-GCM-1: General Failure
        e = gw.call(ENC, uid(k), params(M.GCM, tag_length=length), data(b"x"), iv(nonce))
        assert failed(e, R.GENERAL_FAILURE)


def test_chacha20_and_poly1305_vectors(gw: Gw) -> None:
    # RFC 8439 A.1 test vector 1 (as in CS-BC-M-CHACHA20-1), a 64-bit nonce.
    k = gw.key(bytes(32), algorithm=CryptographicAlgorithm.CHACHA20)
    e = gw.call(ENC, uid(k), params(), data(bytes(64)), iv(bytes(8)))
    assert out(e).hex().startswith("76b8e0ada0f13d90405d6ae55386bd28")
    assert out(gw.call(DEC, uid(k), data(out(e)), iv(bytes(8)))) == bytes(64)
    # RFC 8439 §2.8.2 (as in CS-BC-M-CHACHA20POLY1305-1).
    plain = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
        b"the future, sunscreen would be it."
    )
    key = H("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
    nonce, extra = H("070000004041424344454647"), H("50515253c0c1c2c3c4c5c6c7")
    k = gw.key(key, algorithm=CryptographicAlgorithm.CHACHA20POLY1305)
    e = gw.call(ENC, uid(k), params(M.AEAD), data(plain), iv(nonce), aad(extra))
    t = field(e, Tag.AUTHENTICATED_ENCRYPTION_TAG)
    assert t == H("1ae10b594f09e26a7e902ecbd0600691")
    assert out(e).hex().startswith("d31a8d34648e60db7b86afbc53ef7ec2")
    d = gw.call(DEC, uid(k), params(M.AEAD), data(out(e)), iv(nonce), aad(extra), tag(t))
    assert out(d) == plain
    short = gw.call(DEC, uid(k), data(out(e)), iv(nonce), aad(extra), tag(t[:12]))
    assert out(short) == plain
    wrong = gw.call(DEC, uid(k), data(out(e)), iv(nonce), aad(extra), tag(b"\0" + t[1:12]))
    assert failed(wrong, R.CRYPTOGRAPHIC_FAILURE)


# -- IVs ----------------------------------------------------------------------------------
def test_random_iv_is_returned_and_decrypts(gw: Gw) -> None:
    """The request MongoDB sends (CBC, PKCS5, AES, Random IV, no IV), then its Decrypt."""
    key = bytes(range(32))
    k = gw.key(key)
    secret = bytes(range(96))
    mongo = params(M.CBC, PaddingMethod.PKCS5, random_iv=True, algorithm=CryptographicAlgorithm.AES)
    first = gw.call(ENC, uid(k), mongo, data(secret), version=ProtocolVersion(1, 2))
    second = gw.call(ENC, uid(k), mongo, data(secret), version=ProtocolVersion(1, 2))
    drawn = field(first, Tag.IV_COUNTER_NONCE)
    assert drawn is not None and len(drawn) == 16
    assert drawn != field(second, Tag.IV_COUNTER_NONCE)
    assert out(first) == aes(key, modes.CBC(drawn), secret, pkcs7=True)
    back = params(M.CBC, PaddingMethod.PKCS5, algorithm=CryptographicAlgorithm.AES)
    d = gw.call(DEC, uid(k), back, data(out(first)), iv(drawn), version=ProtocolVersion(1, 2))
    assert out(d) == secret


def test_generated_gcm_nonce_is_96_bits(gw: Gw) -> None:
    key = bytes(range(16))
    k = gw.key(key)
    e = gw.call(ENC, uid(k), params(M.GCM), data(b"attack at dawn"), aad(b"hdr"))
    nonce, t = field(e, Tag.IV_COUNTER_NONCE), field(e, Tag.AUTHENTICATED_ENCRYPTION_TAG)
    assert nonce is not None and len(nonce) == 12 and t is not None and len(t) == 16
    assert AESGCM(key).decrypt(nonce, out(e) + t, b"hdr") == b"attack at dawn"


def test_ctr_nonce_with_initial_counter(gw: Gw) -> None:
    """A 12-byte nonce and Initial Counter Value 1 (RFC 3686 style): nonce || counter."""
    key = bytes(range(16))
    k = gw.key(key)
    nonce = bytes(range(100, 112))
    p = params(M.CTR, extra=[Item.integer(Tag.INITIAL_COUNTER_VALUE, 1)])
    e = gw.call(ENC, uid(k), p, data(b"x" * 40), iv(nonce))
    assert out(e) == aes(key, modes.CTR(nonce + b"\0\0\0\1"), b"x" * 40)


def test_missing_iv_on_decrypt_is_invalid_message(gw: Gw) -> None:
    k = gw.key(bytes(16))
    d = gw.call(DEC, uid(k), params(M.CBC, PaddingMethod.PKCS5), data(bytes(32)))
    assert failed(d, R.INVALID_MESSAGE)  # CS-BC-M-11: "missing-iv"


def test_key_parameters_apply_field_by_field(gw: Gw) -> None:
    key = bytes(range(16))
    own = Attribute("Cryptographic Parameters", params(M.CBC, PaddingMethod.PKCS5))
    k = gw.key(key, own)
    counter = bytes(16)
    e = gw.call(ENC, uid(k), data(b"abc"), iv(counter))
    assert out(e) == aes(key, modes.CBC(counter), b"abc", pkcs7=True)
    # The request's mode wins, the key's padding stays.
    e = gw.call(ENC, uid(k), params(M.ECB), data(b"abc"))
    assert out(e) == aes(key, modes.ECB(), b"abc", pkcs7=True)


# -- who may --------------------------------------------------------------------------------
def test_key_must_be_active(gw: Gw) -> None:
    pre = gw.key(bytes(16), state=State.PRE_ACTIVE)
    request = (params(M.ECB), data(bytes(16)))
    assert failed(gw.call(ENC, uid(pre), *request), R.PERMISSION_DENIED)
    assert failed(gw.call(ENC, uid(pre), *request, version=V20), R.PERMISSION_DENIED)  # 2.0 too
    assert failed(gw.call(ENC, uid(pre), *request, version=V21), R.WRONG_KEY_LIFECYCLE_STATE)
    past = date_attr("Activation Date", Tag.ACTIVATION_DATE, 1)
    due = gw.key(bytes(16), past, state=State.PRE_ACTIVE)  # its Activation Date is reached
    assert gw.call(ENC, uid(due), *request).status is ResultStatus.SUCCESS
    for state in (State.DEACTIVATED, State.COMPROMISED):
        old = gw.key(bytes(16), state=state)
        assert failed(gw.call(DEC, uid(old), *request, version=V21), R.WRONG_KEY_LIFECYCLE_STATE)
    ended = gw.key(bytes(16), date_attr("Deactivation Date", Tag.DEACTIVATION_DATE, 1))
    assert failed(gw.call(ENC, uid(ended), *request, version=V21), R.WRONG_KEY_LIFECYCLE_STATE)


def test_usage_mask_must_allow_the_operation(gw: Gw) -> None:
    only_decrypt = gw.key(bytes(16), usage=CryptographicUsageMask.DECRYPT)
    request = (params(M.ECB), data(bytes(16)))
    assert failed(gw.call(ENC, uid(only_decrypt), *request), R.PERMISSION_DENIED)
    e = gw.call(ENC, uid(only_decrypt), *request, version=V21)
    assert failed(e, R.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK)
    assert gw.call(DEC, uid(only_decrypt), *request).status is ResultStatus.SUCCESS
    unrestricted = gw.key(bytes(16), usage=None)
    assert gw.call(ENC, uid(unrestricted), *request).status is ResultStatus.SUCCESS


def test_protect_stop_and_process_start_dates(gw: Gw) -> None:
    """CS-BC-M-14: Permission Denied up to 2.0, Wrong Key Lifecycle State in 2.1."""
    stopped = gw.key(bytes(16), date_attr("Protect Stop Date", Tag.PROTECT_STOP_DATE, 1))
    later = gw.key(bytes(16), date_attr("Process Start Date", Tag.PROCESS_START_DATE, 2**40))
    request = (params(M.ECB), data(bytes(16)))
    for version, reason in ((V14, R.PERMISSION_DENIED), (V20, R.PERMISSION_DENIED),
                            (V21, R.WRONG_KEY_LIFECYCLE_STATE)):  # fmt: skip
        assert failed(gw.call(ENC, uid(stopped), *request, version=version), reason)
        assert failed(gw.call(DEC, uid(later), *request, version=version), reason)
    assert gw.call(DEC, uid(stopped), *request).status is ResultStatus.SUCCESS
    assert gw.call(ENC, uid(later), *request).status is ResultStatus.SUCCESS


def test_other_tenant_and_other_objects(gw: Gw) -> None:
    theirs = gw.key(bytes(16), tenant="other")
    assert failed(gw.call(ENC, uid(theirs), params(M.ECB), data(bytes(16))), R.ITEM_NOT_FOUND)
    assert failed(gw.call(ENC, uid("nope"), params(M.ECB), data(bytes(16))), R.ITEM_NOT_FOUND)
    blob = gw.key(bytes(16), object_type=ObjectType.SECRET_DATA)
    assert failed(gw.call(ENC, uid(blob), data(b"x")), R.PERMISSION_DENIED)
    assert failed(gw.call(ENC, uid(blob), data(b"x"), version=V21), R.INVALID_OBJECT_TYPE)


# -- bad parameters -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("children", "v2_reason"),
    [
        ((data(bytes(16)),), R.BAD_CRYPTOGRAPHIC_PARAMETERS),  # AES without a mode
        ((params(M.XTS), data(bytes(16))), R.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS),
        ((params(M.CBC, PaddingMethod.ANSI_X9_23), data(b"x"), iv(bytes(16))),
         R.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS),
        ((params(M.CBC), data(bytes(17)), iv(bytes(16))), R.BAD_CRYPTOGRAPHIC_PARAMETERS),
        ((params(M.CBC), data(bytes(16)), iv(bytes(8))), R.BAD_CRYPTOGRAPHIC_PARAMETERS),
        ((params(M.ECB), data(bytes(16)), iv(bytes(16))), R.BAD_CRYPTOGRAPHIC_PARAMETERS),
        ((params(M.CTR, PaddingMethod.PKCS5), data(b"x")), R.BAD_CRYPTOGRAPHIC_PARAMETERS),
        ((params(M.CBC, algorithm=CryptographicAlgorithm.DES3), data(bytes(16))),
         R.BAD_CRYPTOGRAPHIC_PARAMETERS),
        ((params(M.CBC), data(bytes(16)), aad(b"a")), R.BAD_CRYPTOGRAPHIC_PARAMETERS),
        ((params(M.ECB),), R.INVALID_MESSAGE),  # no Data
    ],
    ids=["no-mode", "xts", "x9.23", "unaligned", "short-iv", "ecb-iv", "ctr-pad", "alg", "aad",
         "no-data"],
)  # fmt: skip
def test_bad_parameters(gw: Gw, children: tuple[Item, ...], v2_reason: ResultReason) -> None:
    k = gw.key(bytes(16))
    assert failed(gw.call(ENC, uid(k), *children, version=V21), v2_reason)
    v1 = R.INVALID_MESSAGE if v2_reason is R.INVALID_MESSAGE else R.INVALID_FIELD
    assert failed(gw.call(ENC, uid(k), *children), v1)


def test_bad_padding_or_length_on_decrypt_is_a_cryptographic_failure(gw: Gw) -> None:
    key = bytes(16)
    k = gw.key(key)
    no_padding = aes(key, modes.ECB(), bytes(16))
    p = params(M.ECB, PaddingMethod.PKCS5)
    assert failed(gw.call(DEC, uid(k), p, data(no_padding)), R.CRYPTOGRAPHIC_FAILURE)
    assert failed(gw.call(DEC, uid(k), p, data(bytes(15))), R.CRYPTOGRAPHIC_FAILURE)


# -- streams ----------------------------------------------------------------------------------
def test_multi_part_gcm_encrypt(gw: Gw) -> None:
    """CS-BC-M-GCM-3: Init Indicator, then the Correlation Value with Final Indicator."""
    nonce, ct, t = H("cafebabefacedbad"), H(
        "61353b4c2806934a777ff51fa22a4755699b2a714fcdc6f83766e5f97b6c7423"
        "73806900e49f24b22b097544d4896b424989b5e1ebac0f07c23f4598"
    ), H("3612d2e79e3b0785561be14aaca2fccb")  # fmt: skip
    k = gw.key(GCM_KEY)
    p = params(M.GCM, tag_length=16)
    one = gw.call(
        ENC, uid(k), p, data(GCM_PLAIN[:32]), iv(nonce), flag(Tag.INIT_INDICATOR), aad(GCM_AAD),
        version=V21,
    )  # fmt: skip
    value = field(one, Tag.CORRELATION_VALUE)
    assert value is not None and field(one, Tag.AUTHENTICATED_ENCRYPTION_TAG) is None
    cont = Item.bytes_(Tag.CORRELATION_VALUE, value)
    theirs = gw.call(ENC, data(GCM_PLAIN[32:]), cont, version=V21, tenant="other")
    assert failed(theirs, R.INVALID_CORRELATION_VALUE)
    two = gw.call(ENC, uid(k), p, data(GCM_PLAIN[32:]), cont, flag(Tag.FINAL_INDICATOR))
    assert out(one) + out(two) == ct
    assert field(two, Tag.AUTHENTICATED_ENCRYPTION_TAG) == t
    assert field(two, Tag.CORRELATION_VALUE) is None
    again = gw.call(ENC, uid(k), data(b""), cont, flag(Tag.FINAL_INDICATOR))
    assert failed(again, R.ITEM_NOT_FOUND)  # the stream is over (1.4: Item Not Found)


def test_multi_part_cbc_decrypt_and_no_unauthenticated_gcm_plaintext(gw: Gw) -> None:
    key, counter = bytes(range(16)), bytes(16)
    k = gw.key(key)
    secret = bytes(range(50))
    ct = aes(key, modes.CBC(counter), secret, pkcs7=True)
    p = params(M.CBC, PaddingMethod.PKCS5)
    one = gw.call(DEC, uid(k), p, data(ct[:20]), iv(counter), flag(Tag.INIT_INDICATOR))
    value = field(one, Tag.CORRELATION_VALUE)
    assert value is not None
    cont = Item.bytes_(Tag.CORRELATION_VALUE, value)
    two = gw.call(DEC, data(ct[20:]), cont, flag(Tag.FINAL_INDICATOR))
    assert out(one) + out(two) == secret
    g = gw.call(DEC, uid(k), params(M.GCM), data(b"x"), iv(bytes(12)), flag(Tag.INIT_INDICATOR))
    assert failed(g, R.FEATURE_NOT_SUPPORTED)


def test_each_gateway_has_a_stream_pool_of_its_own(gw: Gw) -> None:
    """Services.streams, not a module global: another gateway (or a test's) does
    not see this one's streams."""
    k = gw.key(bytes(range(16)))
    p = params(M.CBC, PaddingMethod.PKCS5)
    one = gw.call(ENC, uid(k), p, data(bytes(32)), iv(bytes(16)), flag(Tag.INIT_INDICATOR))
    value = field(one, Tag.CORRELATION_VALUE)
    assert value is not None
    cont = Item.bytes_(Tag.CORRELATION_VALUE, value)
    fresh = Dispatcher(Services(store=gw.vault, keyring=gw.ring))
    elsewhere = Gw(gw.loop, gw.vault, gw.ring, fresh)
    assert failed(elsewhere.call(ENC, uid(k), data(bytes(16)), cont), R.ITEM_NOT_FOUND)
    assert len(elsewhere.dispatcher.services.streams) == 0
    assert len(gw.dispatcher.services.streams) == 1
    two = gw.call(ENC, uid(k), data(bytes(16)), cont, flag(Tag.FINAL_INDICATOR))
    assert two.status is ResultStatus.SUCCESS


def test_streams_are_bounded_and_expire() -> None:
    now = [0.0]
    streams = Streams(limit=2, seconds=10, clock=lambda: now[0], per_tenant=2, per_identity=2)
    work = object()
    a = streams.open("demo", "k", ENC, work)  # type: ignore[arg-type]
    streams.open("demo", "k", ENC, work)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="too many"):
        streams.open("demo", "k", ENC, work)  # type: ignore[arg-type]
    with pytest.raises(InvalidCorrelation):
        streams.take("other", a, ENC)
    with pytest.raises(InvalidCorrelation):
        streams.take("demo", a, DEC)
    stream = streams.take("demo", a, ENC)
    now[0] = 5.0
    streams.put_back(a, stream)  # continued: its deadline moves to 15
    now[0] = 12.0
    streams.open("demo", "k", ENC, work)  # type: ignore[arg-type]  # the other one expired
    assert len(streams) == 2
    assert streams.take("demo", a, ENC) is stream
    now[0] = 100.0
    with pytest.raises(InvalidCorrelation):
        streams.take("demo", a, ENC)


def test_no_tenant_or_client_can_take_the_whole_stream_pool() -> None:
    streams = Streams(limit=4, per_tenant=2, per_identity=1)
    work = object()
    mine = streams.open("demo", "k", ENC, work, "spiffe://a")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="for this client"):
        streams.open("demo", "k", ENC, work, "spiffe://a")  # type: ignore[arg-type]
    streams.open("demo", "k", ENC, work, "spiffe://b")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="for this tenant"):
        streams.open("demo", "k", ENC, work, "spiffe://c")  # type: ignore[arg-type]
    streams.open("other", "k", ENC, work, "spiffe://d")  # type: ignore[arg-type]  # still room
    streams.take("demo", mine, ENC)  # finished: its share comes back
    streams.open("demo", "k", ENC, work, "spiffe://a")  # type: ignore[arg-type]


# -- the rest ---------------------------------------------------------------------------------
def test_unwrapped_keys_are_wiped(gw: Gw) -> None:
    key = bytes(range(16))
    k = gw.key(key)
    gw.call(ENC, uid(k), params(M.CBC, PaddingMethod.PKCS5), data(b"abc"))
    gw.call(ENC, uid(k), params(M.GCM), data(b"abc"), flag(Tag.INIT_INDICATOR))
    gw.call(DEC, uid(k), params(M.GCM), data(b"abc"), iv(bytes(12)), tag(bytes(16)))  # fails
    assert len(gw.ring.handed_out) == 3
    assert all(s.wiped and s.reveal() == bytes(16) for s in gw.ring.handed_out)


def test_create_then_encrypt_with_the_id_placeholder(gw: Gw) -> None:
    attrs = [*cm.aes_attributes(256), date_attr("Activation Date", Tag.ACTIVATION_DATE, 1)]
    create = cm.create_item(V14, attrs)
    encrypt = cm.batch_item(ENC, cm.payload(params(M.GCM), data(b"hello")))
    made, enc = gw.batch([create, encrypt])
    assert made.payload is not None and enc.payload is not None
    assert cm.unique_identifier(enc.payload) == cm.unique_identifier(made.payload)
    assert len(out(enc)) == 5


def test_usage_limits_need_the_core(gw: Gw) -> None:
    limits = Item.structure(
        Tag.USAGE_LIMITS,
        Item(Tag.USAGE_LIMITS_TOTAL, ItemType.LONG_INTEGER, 16),
        Item.enum(Tag.USAGE_LIMITS_UNIT, UsageLimitsUnit.BYTE),
    )
    k = gw.key(bytes(16), Attribute("Usage Limits", limits))
    assert failed(gw.call(ENC, uid(k), params(M.ECB), data(bytes(16))), R.PERMISSION_DENIED)
    assert gw.call(DEC, uid(k), params(M.ECB), data(bytes(16))).status is ResultStatus.SUCCESS


def test_usage_limits_are_counted_by_the_core(start_embedded: Callable[..., Stack]) -> None:
    """CS-BC-M-7: 16 bytes allowed; the second Encrypt is refused, Decrypt is not limited."""
    s = start_embedded()
    limits = Item.structure(
        Tag.USAGE_LIMITS,
        Item(Tag.USAGE_LIMITS_TOTAL, ItemType.LONG_INTEGER, 16),
        Item.enum(Tag.USAGE_LIMITS_UNIT, UsageLimitsUnit.BYTE),
    )
    attrs = [
        mask_attr(USE),
        date_attr("Activation Date", Tag.ACTIVATION_DATE, 1),
        Attribute("Usage Limits", limits),
    ]
    key = Item.structure(
        Tag.SYMMETRIC_KEY,
        Item.structure(
            Tag.KEY_BLOCK,
            Item.enum(Tag.KEY_FORMAT_TYPE, 1),
            Item.structure(Tag.KEY_VALUE, Item.bytes_(Tag.KEY_MATERIAL, NIST_KEY)),
            Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
            Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, 128),
        ),
    )
    for version in (V14, V21):
        template = (
            attributes_v2(attrs)
            if version.v2
            else Item(Tag.TEMPLATE_ATTRIBUTE, ItemType.STRUCTURE, tuple(map(to_v1, attrs)))
        )
        reg = cm.batch_item(
            Operation.REGISTER,
            cm.payload(Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY), template, key),
        )
        [made] = s.send(cm.request_message(version, [reg])).items
        assert made.payload is not None
        k = cm.unique_identifier(made.payload)
        enc = cm.batch_item(ENC, cm.payload(uid(k), params(M.ECB), data(NIST_PLAIN[:16])))
        dec = cm.batch_item(DEC, cm.payload(uid(k), params(M.ECB), data(bytes(16))))
        [first] = s.send(cm.request_message(version, [enc])).items
        assert out(first).hex() == NIST_38A[0][2][:32]
        [second] = s.send(cm.request_message(version, [enc])).items
        assert failed(second, R.PERMISSION_DENIED)
        [d] = s.send(cm.request_message(version, [dec])).items
        assert d.status is ResultStatus.SUCCESS
        limits_now = decode(s.record(k).attributes).find(Tag.USAGE_LIMITS)
        assert limits_now is not None
        assert limits_now.find(Tag.USAGE_LIMITS_COUNT) == Item(
            Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, 0
        )


@pytest.mark.parametrize("version", [V14, V21], ids=str)
def test_rng_retrieve(gw: Gw, version: ProtocolVersion) -> None:
    def ask(n: int) -> ResponseItem:
        return gw.call(Operation.RNG_RETRIEVE, Item.integer(Tag.DATA_LENGTH, n), version=version)

    a, b = out(ask(32)), out(ask(32))
    assert len(a) == len(b) == 32 and a != b
    assert len(out(ask(64 * 1024))) == 64 * 1024
    assert failed(ask(0), R.INVALID_FIELD)
    assert failed(ask(64 * 1024 + 1), R.INVALID_FIELD)
    assert failed(gw.call(Operation.RNG_RETRIEVE, version=version), R.INVALID_MESSAGE)


def test_the_gateway_serves_them_locally() -> None:
    assert {ENC, DEC, Operation.RNG_RETRIEVE} <= set(HANDLERS)
