"""PyKMIP's client against a real `krypton dev`: Create Key Pair (at the Core) and Get of
both keys, Encrypt / Decrypt (at the gateway) with a server-drawn IV and with the
client's, and the refusals a client sees when the key may not be used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from kmip.core import enums
from kmip.pie.exceptions import KmipOperationFailure

OpenClient = Callable[..., Any]
V = enums.KMIPVersion
VERSIONS = (V.KMIP_1_2, V.KMIP_1_4, V.KMIP_2_0)
by_version = pytest.mark.parametrize("version", VERSIONS, ids=[v.name for v in VERSIONS])
CBC_PKCS5 = {
    "block_cipher_mode": enums.BlockCipherMode.CBC,
    "padding_method": enums.PaddingMethod.PKCS5,
    "cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
}


@by_version
def test_create_key_pair_and_get_both(pykmip: OpenClient, version: Any) -> None:
    client = pykmip(version)
    public_uid, private_uid = client.create_key_pair(
        enums.CryptographicAlgorithm.RSA,
        2048,
        public_name=f"interop-public-{version.name}",
        private_name=f"interop-private-{version.name}",
    )
    public = client.get(public_uid)
    private = client.get(private_uid)
    assert public.key_format_type == private.key_format_type == enums.KeyFormatType.PKCS_1
    assert public.cryptographic_algorithm == enums.CryptographicAlgorithm.RSA
    assert private.cryptographic_length == 2048
    pub = serialization.load_der_public_key(public.value)
    key = serialization.load_der_private_key(private.value, None)
    assert isinstance(pub, rsa.RSAPublicKey) and isinstance(key, rsa.RSAPrivateKey)
    assert key.public_key().public_numbers() == pub.public_numbers()
    # (PyKMIP cannot decode a Link attribute; the unit tests check the links.)
    attrs = client.get_attributes(private_uid, ["Object Type", "State"])[1]
    by_name = {a.attribute_name.value: a.attribute_value for a in attrs}
    assert by_name["Object Type"].value == enums.ObjectType.PRIVATE_KEY
    assert by_name["State"].value == enums.State.PRE_ACTIVE
    # Another tenant's workload does not see the pair.
    with pytest.raises(KmipOperationFailure) as failure:
        pykmip(version, who="other-client").get(private_uid)
    not_found = enums.ResultReason.ITEM_NOT_FOUND
    if version >= V.KMIP_2_0:
        not_found = enums.ResultReason.OBJECT_NOT_FOUND
    assert failure.value.reason == not_found


@by_version
def test_encrypt_decrypt_cbc_pkcs5(pykmip: OpenClient, version: Any) -> None:
    client = pykmip(version)
    uid = client.create(enums.CryptographicAlgorithm.AES, 256)
    with pytest.raises(KmipOperationFailure) as failure:  # Pre-Active
        client.encrypt(b"too early", uid=uid, cryptographic_parameters=CBC_PKCS5)
    # KMIP 1.4 §11.30 and the 2.0 error tables (2.1 says Wrong Key Lifecycle State)
    assert failure.value.reason == enums.ResultReason.PERMISSION_DENIED
    client.activate(uid)
    key = client.get(uid).value
    plain = b"attack at dawn, then have breakfast"

    drawn_params = dict(CBC_PKCS5, random_iv=True)
    ciphertext, iv = client.encrypt(plain, uid=uid, cryptographic_parameters=drawn_params)
    assert iv is not None and len(iv) == 16
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    expected = enc.update(padder.update(plain) + padder.finalize()) + enc.finalize()
    assert ciphertext == expected
    back = client.decrypt(
        ciphertext, uid=uid, cryptographic_parameters=CBC_PKCS5, iv_counter_nonce=iv
    )
    assert back == plain

    mine = bytes(range(16))
    ciphertext, none = client.encrypt(
        plain, uid=uid, cryptographic_parameters=CBC_PKCS5, iv_counter_nonce=mine
    )
    assert none is None  # the client's own IV is not sent back
    assert client.decrypt(
        ciphertext, uid=uid, cryptographic_parameters=CBC_PKCS5, iv_counter_nonce=mine
    ) == plain


def test_decrypt_without_iv_or_with_cut_data_fails(pykmip: OpenClient) -> None:
    client = pykmip(V.KMIP_1_4)
    uid = client.create(enums.CryptographicAlgorithm.AES, 128)
    client.activate(uid)
    ciphertext, iv = client.encrypt(
        b"sixteen byte msg", uid=uid, cryptographic_parameters=dict(CBC_PKCS5, random_iv=True)
    )
    with pytest.raises(KmipOperationFailure) as failure:
        client.decrypt(ciphertext, uid=uid, cryptographic_parameters=CBC_PKCS5)
    assert failure.value.reason == enums.ResultReason.INVALID_MESSAGE  # missing IV
    with pytest.raises(KmipOperationFailure) as failure:
        client.decrypt(
            ciphertext[:-1], uid=uid, cryptographic_parameters=CBC_PKCS5, iv_counter_nonce=iv
        )
    assert failure.value.reason == enums.ResultReason.CRYPTOGRAPHIC_FAILURE  # not whole blocks
