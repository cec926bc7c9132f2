"""The symmetric ciphers behind Encrypt and Decrypt: parameters, schemes, streams.

How this works
--------------
:func:`read_params` turns a Cryptographic Parameters structure into
:class:`Params`, field by field over a base (the key's own attribute), so a
request overrides only what it names. :func:`scheme_for` maps (key algorithm,
Block Cipher Mode) to a :class:`Scheme` from :data:`SCHEMES`: the IV/Counter/
Nonce lengths it takes, the tag lengths (authenticated modes), whether
padding applies, and how to build the ``cryptography`` cipher. A
:class:`Work` is one cipher context under way; :func:`whole` runs a
single-part request (with the one-shot AEAD classes when the tag is 16
bytes: three times faster than a streaming GCM context). :class:`Streams`
keeps the contexts of multi-part operations by Correlation Value, bounded in
number and idle time; a context holds its own copy of the key inside
OpenSSL until it is finished or dropped, never the unwrapped key buffer.

Nothing here reads key records or talks to anyone: the handlers in
:mod:`krypton.gateway.engine.crypto_ops` unwrap the key, pass a view of it in, and
wipe it after.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding as block_padding
from cryptography.hazmat.primitives.ciphers import (
    AEADDecryptionContext,
    AEADEncryptionContext,
    Cipher,
    CipherContext,
    algorithms,
    modes,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.poly1305 import Poly1305

from krypton.errors import (
    CryptographicFailure,
    GeneralFailure,
    InvalidField,
    InvalidMessage,
    KryptonError,
)
from krypton.ttlv.enums import BlockCipherMode, CryptographicAlgorithm, PaddingMethod, ResultReason
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

MAX_STREAMS = 1024  # multi-part operations open at once in one gateway process
STREAMS_PER_TENANT = MAX_STREAMS // 2 - 1  # of those, one tenant's: below half
STREAMS_PER_IDENTITY = MAX_STREAMS // 4  # and one client identity's
STREAM_SECONDS = 300.0  # a stream not continued for this long is dropped
# Authentication tag lengths: SP 800-38D §5.2.1.2 for GCM, the same for Poly1305.
TAG_LENGTHS = frozenset((4, 8, 12, 13, 14, 15, 16))
_S = ItemType.STRUCTURE


# -- errors with the 2.x reasons of these operations ------------------------------------
class BadParameters(InvalidField):
    """The Cryptographic Parameters do not fit the key, the mode or the data."""

    reason = ResultReason.BAD_CRYPTOGRAPHIC_PARAMETERS


class UnsupportedParameters(InvalidField):
    """This server does not implement these Cryptographic Parameters."""

    reason = ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS


class InvalidCorrelation(KryptonError):
    """No multi-part operation with this Correlation Value is open for this client."""

    reason = ResultReason.INVALID_CORRELATION_VALUE


# -- Cryptographic Parameters -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Params:
    """The fields of Cryptographic Parameters that symmetric ciphers use."""

    mode: int | None = None
    padding: int | None = None
    algorithm: int | None = None
    random_iv: bool = False
    iv_length: int | None = None  # bits
    tag_length: int | None = None  # bytes
    counter_length: int | None = None  # bits
    initial_counter: int | None = None


_PARAM_FIELDS: dict[int, str] = {
    Tag.BLOCK_CIPHER_MODE: "mode",
    Tag.PADDING_METHOD: "padding",
    Tag.CRYPTOGRAPHIC_ALGORITHM: "algorithm",
    Tag.RANDOM_IV: "random_iv",
    Tag.IV_LENGTH: "iv_length",
    Tag.TAG_LENGTH: "tag_length",
    Tag.COUNTER_LENGTH: "counter_length",
    Tag.INITIAL_COUNTER_VALUE: "initial_counter",
}


def read_params(item: Item | None, base: Params) -> Params:
    """``base`` with the fields ``item`` gives (the other fields, e.g. Hashing
    Algorithm, do not apply to symmetric ciphers and are ignored)."""
    if item is None:
        return base
    if item.type is not _S:
        raise InvalidMessage("Cryptographic Parameters: expected a structure")
    changes: dict[str, Any] = {}
    for child in item.children:
        name = _PARAM_FIELDS.get(child.tag)
        if name is None:
            continue
        value = child.value
        if name == "random_iv":
            if not isinstance(value, bool):
                raise InvalidMessage("Cryptographic Parameters: Random IV must be a Boolean")
        elif isinstance(value, bool) or not isinstance(value, int):
            raise InvalidMessage(f"Cryptographic Parameters: {name} has the wrong type")
        changes[name] = value
    return replace(base, **changes)


# -- schemes ----------------------------------------------------------------------------
Build = Callable[[memoryview, bytes, bytes | None], Cipher[Any]]
OneShot = Callable[[memoryview], AESGCM | ChaCha20Poly1305]


def _same(iv: bytes, params: Params) -> bytes:
    return iv


def _counter_block(iv: bytes, params: Params) -> bytes:
    """A 16-byte CTR counter block: the IV, or a nonce followed by the counter."""
    if len(iv) == 16:
        return iv
    rest = 16 - len(iv)
    if params.counter_length is not None and params.counter_length != rest * 8:
        raise BadParameters("AES-CTR: Counter Length does not match the IV length")
    start = params.initial_counter or 0
    if not 0 <= start < 1 << (rest * 8):
        raise BadParameters("AES-CTR: Initial Counter Value does not fit the counter")
    return iv + start.to_bytes(rest, "big")


def _chacha_nonce(iv: bytes, params: Params) -> bytes:
    """OpenSSL's 16-byte ChaCha20 IV: little-endian block counter, then the nonce
    (a 64-bit nonce takes a 64-bit counter, RFC 8439's 96-bit one a 32-bit one)."""
    start = params.initial_counter or 0
    room = 16 - len(iv)
    if not 0 <= start < 1 << (room * 8):
        raise BadParameters("ChaCha20: Initial Counter Value does not fit the counter")
    return start.to_bytes(room, "little") + iv if room else iv


def _aes(mode: Callable[[bytes, bytes | None], modes.Mode]) -> Build:
    def build(key: memoryview, iv: bytes, tag: bytes | None) -> Cipher[Any]:
        return Cipher(algorithms.AES(key), mode(iv, tag))

    return build


def _chacha(key: memoryview, iv: bytes, tag: bytes | None) -> Cipher[Any]:
    return Cipher(algorithms.ChaCha20(key, iv), None)


def _gcm(iv: bytes, tag: bytes | None) -> modes.Mode:
    return modes.GCM(iv, tag, len(tag) if tag is not None else 16)


@dataclass(frozen=True, slots=True)
class Scheme:
    """One algorithm and mode: what IVs and tags it takes, how to build it."""

    name: str
    ivs: frozenset[int]  # accepted IV/Counter/Nonce lengths in bytes; empty: none
    default_iv: int  # the length generated when the client sends none
    build: Build | None
    block: bool = False  # a block mode: PKCS#5 padding, or else whole blocks only
    tags: frozenset[int] = frozenset()  # accepted tag lengths; empty: not AEAD
    oneshot: OneShot | None = None  # the AEAD class for whole messages (16-byte tag)
    expand: Callable[[bytes, Params], bytes] = _same  # IV as the cipher takes it
    block_bytes: int = 16  # the cipher's block size (padding, whole blocks)

    @property
    def aead(self) -> bool:
        return bool(self.tags)


_A = CryptographicAlgorithm
_M = BlockCipherMode
_CHACHA_POLY = Scheme(
    "ChaCha20-Poly1305", frozenset((12,)), 12, None, tags=TAG_LENGTHS,
    oneshot=ChaCha20Poly1305,
)  # fmt: skip


def _tdes(mode: Callable[[bytes], modes.Mode]) -> Build:
    """Triple DES (SP 800-67): for data made under legacy keys. The CS-BC profile
    test cases register and use such keys; nothing here makes a 3DES key by default."""

    def build(key: memoryview, iv: bytes, tag: bytes | None) -> Cipher[Any]:
        return Cipher(TripleDES(bytes(key)), mode(iv))

    return build


# ECB only when a client (or its key) asks for it by name: the CS-BC profile requires it.
_ECB = _aes(lambda iv, t: modes.ECB())  # noqa: S305
_TDES_ECB = _tdes(lambda iv: modes.ECB())  # noqa: S305
SCHEMES: dict[tuple[int, int | None], Scheme] = {
    (_A.AES, _M.ECB): Scheme("AES-ECB", frozenset(), 0, _ECB, block=True),
    (_A.AES, _M.CBC): Scheme(
        "AES-CBC", frozenset((16,)), 16, _aes(lambda iv, t: modes.CBC(iv)), block=True
    ),
    (_A.AES, _M.CTR): Scheme(
        "AES-CTR", frozenset(range(1, 17)), 16, _aes(lambda iv, t: modes.CTR(iv)),
        expand=_counter_block,
    ),
    (_A.AES, _M.GCM): Scheme(
        "AES-GCM", frozenset(range(8, 129)), 12, _aes(_gcm), tags=TAG_LENGTHS, oneshot=AESGCM
    ),
    (_A.DES3, _M.ECB): Scheme("3DES-ECB", frozenset(), 0, _TDES_ECB, block=True, block_bytes=8),
    (_A.DES3, _M.CBC): Scheme(
        "3DES-CBC", frozenset((8,)), 8, _tdes(modes.CBC), block=True, block_bytes=8
    ),
    (_A.CHACHA20, None): Scheme(
        "ChaCha20", frozenset((8, 12, 16)), 12, _chacha, expand=_chacha_nonce
    ),
    (_A.CHACHA20POLY1305, None): _CHACHA_POLY,
    (_A.CHACHA20POLY1305, _M.AEAD): _CHACHA_POLY,
}  # fmt: skip
_MODE_OPTIONAL = frozenset((_A.CHACHA20, _A.CHACHA20POLY1305))


def scheme_for(algorithm: int, params: Params) -> Scheme:
    if params.algorithm is not None and params.algorithm != algorithm:
        raise BadParameters("the Cryptographic Algorithm does not match the key's")
    mode = None if algorithm in _MODE_OPTIONAL and params.mode is None else params.mode
    if mode is None and algorithm in (_A.AES, _A.DES3):
        raise BadParameters("a block cipher needs a Block Cipher Mode (in the request or key)")
    scheme = SCHEMES.get((algorithm, mode))
    if scheme is None:
        raise UnsupportedParameters(
            "supported: AES in ECB, CBC, CTR or GCM mode, Triple DES in ECB or CBC mode, "
            "ChaCha20, ChaCha20-Poly1305"
        )
    return scheme


def pads(scheme: Scheme, params: Params) -> bool:
    """Whether PKCS#5/#7 padding applies."""
    padding = params.padding
    if padding is None or padding == PaddingMethod.NONE:
        return False
    if not scheme.block:
        raise BadParameters(f"{scheme.name}: a Padding Method does not apply")
    if padding != PaddingMethod.PKCS5:
        raise UnsupportedParameters(f"{scheme.name}: supported Padding Methods: None, PKCS5")
    return True


# -- a cipher in progress ---------------------------------------------------------------
class Work:
    """One encryption or decryption under way: a whole single-part request, or a
    stream continued across requests. Holds the cipher context (which holds its
    own copy of the key inside OpenSSL), never the unwrapped key buffer."""

    __slots__ = ("context", "decrypting", "padder", "scheme", "tag_length")

    def __init__(
        self, scheme: Scheme, context: CipherContext, pad: bool, decrypting: bool, tag_length: int
    ) -> None:
        self.scheme = scheme
        self.context = context
        self.decrypting = decrypting
        self.tag_length = tag_length
        self.padder: Any = None
        if pad:
            pkcs7 = block_padding.PKCS7(scheme.block_bytes * 8)
            self.padder = pkcs7.unpadder() if decrypting else pkcs7.padder()

    def update(self, data: bytes) -> bytes:
        if self.decrypting:
            out = self.context.update(data)
            return bytes(self.padder.update(out)) if self.padder is not None else out
        if self.padder is not None:
            data = self.padder.update(data)
        return self.context.update(data)

    def finish(self) -> tuple[bytes, bytes | None]:
        try:
            if self.decrypting:
                out = self.context.finalize()
                if self.padder is not None:
                    out = self.padder.update(out) + self.padder.finalize()
                return out, None
            tail = self.padder.finalize() if self.padder is not None else b""
            out = self.context.update(tail) + self.context.finalize()
        except InvalidTag:
            raise CryptographicFailure("Decrypt: the authentication tag does not match") from None
        except ValueError:
            if self.decrypting:
                raise CryptographicFailure(
                    f"Decrypt: {self.scheme.name} failed (bad padding or length)"
                ) from None
            raise BadParameters(
                f"{self.scheme.name}: without padding the data must be a multiple of "
                f"{self.scheme.block_bytes} bytes"
            ) from None
        context = self.context
        tag = context.tag[: self.tag_length] if isinstance(context, AEADEncryptionContext) else None
        return out, tag


def start(
    scheme: Scheme, key: memoryview, iv: bytes, tag: bytes | None, aad: bytes | None, *,
    pad: bool, decrypting: bool, tag_length: int,
) -> Work:  # fmt: skip
    assert scheme.build is not None
    cipher = scheme.build(key, iv, tag)
    context = cipher.decryptor() if decrypting else cipher.encryptor()
    if aad:
        if not isinstance(context, AEADEncryptionContext | AEADDecryptionContext):
            raise BadParameters(f"{scheme.name} is not an authenticated mode")
        context.authenticate_additional_data(aad)
    return Work(scheme, context, pad, decrypting, tag_length)


def whole(
    scheme: Scheme, key: memoryview, iv: bytes, data: bytes, *, aad: bytes | None,
    tag: bytes | None, pad: bool, decrypting: bool, tag_length: int,
) -> tuple[bytes, bytes | None]:  # fmt: skip
    """A single-part request: the AEAD class when it can, else a Work started and finished."""
    aad = aad or None
    if scheme.oneshot is not None and (not decrypting or tag_length == 16):
        aead = scheme.oneshot(key)
        if not decrypting:
            out = aead.encrypt(iv, data, aad)
            return out[:-16], out[-16:][:tag_length]
        try:
            return aead.decrypt(iv, data + (tag or b""), aad), None
        except InvalidTag:
            raise CryptographicFailure("Decrypt: the authentication tag does not match") from None
    if scheme.build is None:  # ChaCha20-Poly1305 with a truncated tag
        return _chacha_poly_open(key, iv, data, aad or b"", tag or b""), None
    work = start(scheme, key, iv, tag, aad, pad=pad, decrypting=decrypting, tag_length=tag_length)
    head = work.update(data)
    tail, out_tag = work.finish()
    return head + tail, out_tag


def _pad16(n: int) -> bytes:
    return bytes(-n % 16)


def _chacha_poly_open(key: memoryview, nonce: bytes, data: bytes, aad: bytes, tag: bytes) -> bytes:
    """RFC 8439 §2.8 decryption checking a truncated tag (the AEAD class takes only
    16-byte tags): the Poly1305 key is the first keystream block, the tag covers
    AAD, ciphertext and their lengths, and the data is keystream from block 1."""
    stream = Cipher(algorithms.ChaCha20(key, bytes(4) + nonce), None).encryptor()
    mac = Poly1305(stream.update(bytes(64))[:32])
    mac.update(aad + _pad16(len(aad)) + data + _pad16(len(data)))
    mac.update(len(aad).to_bytes(8, "little") + len(data).to_bytes(8, "little"))
    if not hmac.compare_digest(mac.finalize()[: len(tag)], tag):
        raise CryptographicFailure("Decrypt: the authentication tag does not match")
    return stream.update(data)


# -- streams ----------------------------------------------------------------------------
@dataclass(slots=True)
class Stream:
    tenant: str
    uid: str
    operation: int
    work: Work
    expires: float
    identity: str = ""


@dataclass
class Streams:
    """Open multi-part operations by Correlation Value, bounded in number and time,
    and per tenant and per client identity (so no one tenant can take the pool)."""

    limit: int = MAX_STREAMS
    seconds: float = STREAM_SECONDS
    clock: Callable[[], float] = time.monotonic
    per_tenant: int = STREAMS_PER_TENANT
    per_identity: int = STREAMS_PER_IDENTITY
    _open: OrderedDict[bytes, Stream] = field(default_factory=OrderedDict)
    _held: Counter[str] = field(default_factory=Counter)  # by "t:" tenant and "i:" identity

    def _prune(self) -> None:
        """Drop the expired streams: the oldest deadlines come first (``put_back``
        re-inserts at the end with a later one)."""
        now = self.clock()
        while self._open:
            value, stream = next(iter(self._open.items()))
            if stream.expires > now:
                return
            self._remove(value, stream)

    def _remove(self, value: bytes, stream: Stream) -> None:
        del self._open[value]
        self._held.subtract(("t:" + stream.tenant, "i:" + stream.identity))

    def _add(self, value: bytes, stream: Stream) -> None:
        self._open[value] = stream
        self._held.update(("t:" + stream.tenant, "i:" + stream.identity))

    def open(self, tenant: str, uid: str, operation: int, work: Work, identity: str = "") -> bytes:
        self._prune()
        if len(self._open) >= self.limit:
            raise GeneralFailure("too many multi-part operations are open at this gateway")
        if self._held["t:" + tenant] >= self.per_tenant:
            raise GeneralFailure("too many multi-part operations are open for this tenant")
        if self._held["i:" + identity] >= self.per_identity:
            raise GeneralFailure("too many multi-part operations are open for this client")
        value = secrets.token_bytes(16)
        expires = self.clock() + self.seconds
        self._add(value, Stream(tenant, uid, operation, work, expires, identity))
        return value

    def take(self, tenant: str, value: bytes, operation: int) -> Stream:
        """Remove and return the stream (``put_back`` keeps it open)."""
        self._prune()
        stream = self._open.get(value)
        if stream is None or stream.tenant != tenant or stream.operation != operation:
            raise InvalidCorrelation("no open multi-part operation has this Correlation Value")
        self._remove(value, stream)
        return stream

    def put_back(self, value: bytes, stream: Stream) -> None:
        stream.expires = self.clock() + self.seconds
        self._add(value, stream)

    def __len__(self) -> int:
        return len(self._open)

