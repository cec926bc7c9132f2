"""Symmetric key material: which algorithms and lengths this server makes and accepts.

One table, :data:`KEY_BYTES`, shared by Create (gateway), Register and Re-key
(Core): for each algorithm, each Cryptographic Length it takes and the size
of the key material. Triple DES is named by its strength (168, as the KMIP
profiles and NIST SP 800-67 do) or by its size with parity bits (192); both
are three 8-byte DES keys, made with odd parity as FIPS 46-3 defines the key.

:func:`check_quantum_safe` answers a Create whose attributes ask for a
Quantum Safe object (KMIP 2.0 §4.45): Grover's search halves the strength of
a symmetric key against a quantum computer, so only keys of 256 bits or
more keep the 128-bit strength that is the accepted bar (NSA CNSA 2.0 asks
AES-256 for this reason). For anything else the server cannot do what is
asked and says so with General Failure.
"""

from __future__ import annotations

import os

from krypton.crypto.secret import SecretBytes
from krypton.errors import GeneralFailure, InvalidField
from krypton.ttlv.enums import CryptographicAlgorithm

_A = CryptographicAlgorithm
KEY_BYTES: dict[int, dict[int, int]] = {
    _A.AES: {128: 16, 192: 24, 256: 32},
    _A.DES3: {168: 24, 192: 24},
}
QUANTUM_SAFE_BITS = 256
_NAMES: dict[int, str] = {_A.AES: "AES", _A.DES3: "Triple DES"}


def key_bytes(algorithm: int, length: int, operation: str) -> int:
    """The size of the key material, or Invalid Field for what this server does not make."""
    sizes = KEY_BYTES.get(algorithm)
    if sizes is None:
        raise InvalidField(f"{operation}: only AES and Triple DES symmetric keys are supported")
    size = sizes.get(length)
    if size is None:
        allowed = ", ".join(str(n) for n in sizes)
        raise InvalidField(
            f"{operation}: Cryptographic Length must be {allowed} for {_NAMES[algorithm]}"
        )
    return size


def _odd_parity(key: bytearray) -> None:
    for i, b in enumerate(key):
        high = b & 0xFE
        key[i] = high | (bin(high).count("1") + 1) % 2


def generate(algorithm: int, length: int, operation: str) -> SecretBytes:
    """Fresh key material from the kernel CSPRNG (``os.urandom``)."""
    material = bytearray(os.urandom(key_bytes(algorithm, length, operation)))
    if algorithm == _A.DES3:
        _odd_parity(material)
    return SecretBytes.adopt(material)


def fits(algorithm: int, length: int, material_bytes: int) -> bool:
    """Whether registered material of this size is a key of this algorithm and length
    (for algorithms not in the table: the length is the material's size in bits)."""
    sizes = KEY_BYTES.get(algorithm)
    if sizes is None or length not in sizes:
        return length == material_bytes * 8
    return sizes[length] == material_bytes


def check_quantum_safe(algorithm: int, length: int, operation: str) -> None:
    if algorithm != _A.AES or length < QUANTUM_SAFE_BITS:
        raise GeneralFailure(
            f"{operation}: {_NAMES.get(algorithm, 'this algorithm')} with {length} bits is not "
            f"quantum safe (this server makes AES-{QUANTUM_SAFE_BITS} for that)"
        )
