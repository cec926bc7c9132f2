"""MongoDB's KMIP flows (libmongocrypt's kms-message), byte for byte, against `krypton dev`.

libmongocrypt writes its requests by hand (kms-message/src/kms_kmip_request.c)
and reads the answers by searching for tags (kms_kmip_response.c): the first
Batch Item, its Result Status, then the payload field it wants. Two modes:

* **KMIP 1.0** (the default "kmip" KMS provider): Register a 96-byte Secret
  Data (Secret Data Type Seed, Key Format Type Opaque, a Cryptographic Usage
  Mask of 0 in the Template-Attribute), Activate it, Get it back. No Unique
  Batch Item ID, nothing in the header but Protocol Version and Batch Count.
* **KMIP 1.2, "delegated"**: Create an AES-256 key (Encrypt | Decrypt),
  Activate it (that request is written as KMIP 1.0), then Encrypt the data key
  with AES-CBC, PKCS5 padding and Random IV; the server returns the IV, which
  libmongocrypt stores and sends back on Decrypt. libmongocrypt does activate
  before the first Encrypt (mongocrypt-ctx-datakey.c, "Step 2").

Every request goes on its own TLS connection, as libmongocrypt's driver opens
one per KMS request.
"""

from __future__ import annotations

import os

from tests.helpers.servers import DevServer
from tests.interop.product_wire import (
    Header,
    Session,
    assert_only_tags_of,
    attr,
    enum,
    integer,
    material,
    op,
    register,
    template,
    with_uid,
)

from krypton.ttlv.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    KeyFormatType,
    ObjectType,
    Operation,
    PaddingMethod,
    ResultReason,
    ResultStatus,
    SecretDataType,
    State,
)
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

V10, V12 = (1, 0), (1, 2)
ENCRYPT_DECRYPT = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT


def _register_secret_data(seed: bytes) -> Item:
    return register(
        ObjectType.SECRET_DATA,
        template(attr("Cryptographic Usage Mask", integer(0))),
        Item.structure(
            Tag.SECRET_DATA,
            Item.enum(Tag.SECRET_DATA_TYPE, SecretDataType.SEED),
            Item.structure(
                Tag.KEY_BLOCK,
                Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.OPAQUE),
                Item.structure(Tag.KEY_VALUE, Item.bytes_(Tag.KEY_MATERIAL, seed)),
            ),
        ),
    )


def _crypt(operation: int, uid: str, data: bytes, iv: bytes | None = None) -> Item:
    params = [
        Item.enum(Tag.BLOCK_CIPHER_MODE, BlockCipherMode.CBC),
        Item.enum(Tag.PADDING_METHOD, PaddingMethod.PKCS5),
        Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
    ]
    if operation == Operation.ENCRYPT:
        params.append(Item.boolean(Tag.RANDOM_IV, True))
    tail = [] if iv is None else [Item.bytes_(Tag.IV_COUNTER_NONCE, iv)]
    return with_uid(
        operation,
        uid,
        Item.structure(Tag.CRYPTOGRAPHIC_PARAMETERS, *params),
        Item.bytes_(Tag.DATA, data),
        *tail,
    )


def test_kmip_1_0_register_activate_get_secret_data(srv: DevServer) -> None:
    seed = os.urandom(96)
    kms = Session(srv, V10, Header())

    registered = kms.send(_register_secret_data(seed))
    uid = registered.ok().uid
    assert registered.one().operation == Operation.REGISTER
    assert registered.one().batch_id is None  # none was sent

    activated = kms.send(with_uid(Operation.ACTIVATE, uid))
    assert activated.ok().uid == uid

    got = kms.send(with_uid(Operation.GET, uid))
    answer = got.ok()
    assert answer.field(Tag.OBJECT_TYPE) == ObjectType.SECRET_DATA
    assert material(answer, Tag.SECRET_DATA) == seed
    secret = answer.payload.find(Tag.SECRET_DATA) if answer.payload else None
    assert secret is not None
    assert secret.find(Tag.SECRET_DATA_TYPE).value == SecretDataType.SEED  # type: ignore[union-attr]
    block = secret.find(Tag.KEY_BLOCK)
    assert block is not None
    assert block.find(Tag.KEY_FORMAT_TYPE).value == KeyFormatType.OPAQUE  # type: ignore[union-attr]

    for reply in (registered, activated, got):
        assert_only_tags_of(reply)
        (item,) = reply.pykmip().batch_items
        assert item.result_status.value.value == ResultStatus.SUCCESS
    pk_get = got.pykmip().batch_items[0].response_payload
    assert pk_get.secret.key_block.key_value.key_material.value == seed
    assert kms.connections == 3

    # The registered seed is Active: the gateway knows the new state.
    state = kms.send(
        with_uid(Operation.GET_ATTRIBUTES, uid, Item.text(Tag.ATTRIBUTE_NAME, "State"))
    ).ok()
    (value,) = [a.find(Tag.ATTRIBUTE_VALUE) for a in state.payload.find_all(Tag.ATTRIBUTE)]  # type: ignore[union-attr]
    assert value is not None and value.value == State.ACTIVE


def test_kmip_1_0_get_of_an_unknown_identifier_fails_as_libmongocrypt_reads_it(
    srv: DevServer,
) -> None:
    reply = Session(srv, V10).send(with_uid(Operation.GET, "no-such-key"))
    answer = reply.one()
    assert answer.status == ResultStatus.OPERATION_FAILED
    assert answer.reason == ResultReason.ITEM_NOT_FOUND
    assert answer.message  # kms-message prints it
    assert_only_tags_of(reply)
    reply.pykmip()


def test_kmip_1_2_delegated_create_activate_encrypt_decrypt(srv: DevServer) -> None:
    kms = Session(srv, V12)
    created = kms.send(
        op(
            Operation.CREATE,
            Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
            template(
                attr("Cryptographic Algorithm", enum(CryptographicAlgorithm.AES)),
                attr("Cryptographic Length", integer(256)),
                attr("Cryptographic Usage Mask", integer(ENCRYPT_DECRYPT)),
            ),
        )
    )
    uid = created.ok().uid

    # kms_kmip_request_activate_new writes Activate as KMIP 1.0.
    activated = kms.send(with_uid(Operation.ACTIVATE, uid), version=V10)
    assert activated.ok().uid == uid

    dek = os.urandom(96)
    encrypted = kms.send(_crypt(Operation.ENCRYPT, uid, dek))
    enc = encrypted.ok()
    iv = enc.field(Tag.IV_COUNTER_NONCE)
    ciphertext = enc.field(Tag.DATA)
    assert isinstance(iv, bytes) and len(iv) == 16
    assert isinstance(ciphertext, bytes) and len(ciphertext) == 112  # 96 + a PKCS5 block
    assert enc.uid == uid

    decrypted = kms.send(_crypt(Operation.DECRYPT, uid, ciphertext, iv))
    assert decrypted.ok().field(Tag.DATA) == dek

    # A second Encrypt draws another IV.
    again = kms.send(_crypt(Operation.ENCRYPT, uid, dek)).ok()
    assert again.field(Tag.IV_COUNTER_NONCE) != iv

    for reply in (created, activated, encrypted, decrypted):
        assert_only_tags_of(reply)
        (item,) = reply.pykmip().batch_items
        assert item.result_status.value.value == ResultStatus.SUCCESS
    pk_enc = encrypted.pykmip().batch_items[0].response_payload
    assert pk_enc.iv_counter_nonce == iv
    assert kms.connections == 5


def test_kmip_1_2_encrypt_before_activate_is_refused_as_1_x_permission_denied(
    srv: DevServer,
) -> None:
    kms = Session(srv, V12)
    uid = (
        kms.send(
            op(
                Operation.CREATE,
                Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
                template(
                    attr("Cryptographic Algorithm", enum(CryptographicAlgorithm.AES)),
                    attr("Cryptographic Length", integer(256)),
                    attr("Cryptographic Usage Mask", integer(ENCRYPT_DECRYPT)),
                ),
            )
        )
        .ok()
        .uid
    )
    reply = kms.send(_crypt(Operation.ENCRYPT, uid, os.urandom(96)))
    answer = reply.one()
    assert answer.status == ResultStatus.OPERATION_FAILED
    assert answer.reason == ResultReason.PERMISSION_DENIED  # 1.x: Wrong Key Lifecycle State
    assert_only_tags_of(reply)
    reply.pykmip()
