"""The closed appliances' KMIP flows: VMware vSphere, Synology DSM, Veeam Backup.

Their clients are closed; the requests below follow what their vendors and
users report (the issue text): protocol version, operations and order, the
fields they send and the ones they read back.

* **vSphere** speaks KMIP 1.1, gives every batch item an 8-byte Unique Batch
  Item ID and expects it back as sent; it probes a KMS with Discover Versions
  on many short connections, asks Query for operations, objects and server
  information, creates AES-256 keys, activates them, reads State and its own
  ``x-`` attributes, and tags each key with three Add Attribute items in one
  batch.
* **Synology DSM** speaks KMIP 1.2 and keeps secrets as Secret Data registered
  with an Operation Policy Name; it renames them with Modify Attribute.
* **Veeam** speaks KMIP 1.4 and uses RSA key pairs made by the server; its
  decoder rejects Attributes inside a Key Value.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kmip.core import enums as pk
from kmip.core.factories.attributes import AttributeFactory
from kmip.pie.exceptions import KmipOperationFailure
from tests.helpers.servers import DevServer
from tests.interop.product_wire import (
    Header,
    Reply,
    Session,
    assert_only_tags_of,
    attr,
    enum,
    get_attributes,
    integer,
    key_block,
    locate,
    material,
    name_value,
    object_type_attr,
    op,
    register,
    revoke,
    template,
    text,
    v1_attributes,
    with_uid,
)

from krypton.ttlv.enums import (
    CryptographicAlgorithm,
    CryptographicUsageMask,
    KeyFormatType,
    ObjectType,
    Operation,
    QueryFunction,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    SecretDataType,
    State,
)
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

V11, V12, V14 = (1, 1), (1, 2), (1, 4)
ENCRYPT_DECRYPT = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT


def _batch_id() -> bytes:
    return os.urandom(8)


def _checked(reply: Reply) -> Reply:
    assert_only_tags_of(reply)
    reply.pykmip()
    return reply


def _version(item: Item) -> tuple[int, int]:
    major, minor = item.find(Tag.PROTOCOL_VERSION_MAJOR), item.find(Tag.PROTOCOL_VERSION_MINOR)
    assert major is not None and minor is not None
    return int(major.value), int(minor.value)  # type: ignore[arg-type]


def _aes_256() -> Item:
    return op(
        Operation.CREATE,
        Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        template(
            attr("Cryptographic Algorithm", enum(CryptographicAlgorithm.AES)),
            attr("Cryptographic Length", integer(256)),
            attr("Cryptographic Usage Mask", integer(ENCRYPT_DECRYPT)),
        ),
        batch_id=_batch_id(),
    )


# -- VMware vSphere (KMIP 1.1) ------------------------------------------------------------------
def _discover(kms: Session, offered: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    versions = [
        Item.structure(
            Tag.PROTOCOL_VERSION,
            Item.integer(Tag.PROTOCOL_VERSION_MAJOR, major),
            Item.integer(Tag.PROTOCOL_VERSION_MINOR, minor),
        )
        for major, minor in offered
    ]
    bid = _batch_id()
    answer = _checked(kms.send(op(Operation.DISCOVER_VERSIONS, *versions, batch_id=bid))).ok()
    assert answer.batch_id == bid
    assert answer.payload is not None
    return [_version(v) for v in answer.payload.find_all(Tag.PROTOCOL_VERSION)]


def test_vsphere_probe_with_discover_versions_and_query(srv: DevServer) -> None:
    kms = Session(srv, V11)
    # vCenter probes the KMS cluster on many short connections at once.
    offers = (((1, 1), (1, 0)), (), ((1, 1),)) * 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda offered: _discover(kms, offered), offers))
    for offered, got in zip(offers, answers, strict=True):
        if offered:
            assert got == list(offered)
        else:
            assert got[0] == (2, 1) and (1, 1) in got and (1, 0) in got

    bid = _batch_id()
    query = _checked(
        kms.send(
            op(
                Operation.QUERY,
                Item.enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_OPERATIONS),
                Item.enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_OBJECTS),
                Item.enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_SERVER_INFORMATION),
                batch_id=bid,
            )
        )
    )
    answer = query.ok()
    assert answer.batch_id == bid
    operations = set(answer.all(Tag.OPERATION))
    wanted = {
        Operation.CREATE, Operation.GET, Operation.ACTIVATE, Operation.GET_ATTRIBUTES,
        Operation.ADD_ATTRIBUTE, Operation.LOCATE, Operation.REVOKE, Operation.DESTROY,
        Operation.DISCOVER_VERSIONS, Operation.QUERY,
    }  # fmt: skip
    assert wanted <= operations
    # Nothing a 1.1 client has no name for (Operation values above Discover Versions
    # arrived in 1.2; RNG Retrieve, Encrypt, Decrypt are 1.2 operations).
    assert all(o <= Operation.DISCOVER_VERSIONS for o in operations), sorted(operations)
    assert ObjectType.SYMMETRIC_KEY in answer.all(Tag.OBJECT_TYPE)
    assert answer.all(Tag.VENDOR_IDENTIFICATION)
    pk_query = query.pykmip().batch_items[0].response_payload
    assert pk_query.vendor_identification


def test_vsphere_create_activate_tag_and_get(srv: DevServer) -> None:
    kms = Session(srv, V11)
    created = _checked(kms.send(_aes_256()))
    uid = created.ok().uid

    bid = _batch_id()
    activated = _checked(kms.send(with_uid(Operation.ACTIVATE, uid, batch_id=bid)))
    assert activated.ok().batch_id == bid

    custom = {
        "x-Vendor": "VMware, Inc.",
        "x-Product": "VMware vSphere",
        "x-Product_Version": "8.0.2",
    }
    selectors = ("State", *custom)
    before = _checked(kms.send(get_attributes(uid, *selectors, batch_id=_batch_id())))
    values = v1_attributes(before.ok())
    assert [v.value for v in values.pop("State")] == [State.ACTIVE]
    assert values == {}  # not tagged yet

    ids = [_batch_id() for _ in custom]
    tagged = kms.send(
        *(
            with_uid(Operation.ADD_ATTRIBUTE, uid, attr(name, text(value)), batch_id=bid)
            for bid, (name, value) in zip(ids, custom.items(), strict=True)
        )
    )
    assert_only_tags_of(tagged)  # PyKMIP 0.11 has no Add Attribute payload to read it with
    assert [a.batch_id for a in tagged.answers] == ids
    assert [a.operation for a in tagged.answers] == [Operation.ADD_ATTRIBUTE] * 3
    for answer, (name, value) in zip(tagged.answers, custom.items(), strict=True):
        assert answer.ok, answer.message
        assert answer.uid == uid
        assert {k: [v.value for v in vs] for k, vs in v1_attributes(answer).items()} == {
            name: [value]
        }

    bid = _batch_id()
    after = _checked(kms.send(get_attributes(uid, *selectors, batch_id=bid)))
    answer = after.ok()
    assert answer.batch_id == bid
    assert {k: [v.value for v in vs] for k, vs in v1_attributes(answer).items()} == {
        "State": [State.ACTIVE],
        **{name: [value] for name, value in custom.items()},
    }

    bid = _batch_id()
    got = _checked(kms.send(with_uid(Operation.GET, uid, batch_id=bid)))
    assert got.ok().batch_id == bid
    assert len(material(got.ok(), Tag.SYMMETRIC_KEY)) == 32
    pk_get = got.pykmip().batch_items[0]
    assert pk_get.unique_batch_item_id.value == bid


# -- Synology DSM (KMIP 1.2) ------------------------------------------------------------------
def test_synology_secret_data_lifecycle(srv: DevServer) -> None:
    kms = Session(srv, V12)
    assert _checked(kms.send(op(Operation.DISCOVER_VERSIONS))).ok()
    _checked(
        kms.send(
            op(
                Operation.QUERY,
                Item.enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_OPERATIONS),
                Item.enum(Tag.QUERY_FUNCTION, QueryFunction.QUERY_OBJECTS),
            )
        )
    ).ok()

    name = f"DSM-volume1-{uuid.uuid4()}"
    by_name = (object_type_attr(ObjectType.SECRET_DATA), attr("Name", name_value(name)))
    assert _checked(kms.send(locate(*by_name))).ok().all(Tag.UNIQUE_IDENTIFIER) == []

    secret = os.urandom(32)
    registered = _checked(
        kms.send(
            register(
                ObjectType.SECRET_DATA,
                template(
                    attr("Cryptographic Usage Mask", integer(CryptographicUsageMask.EXPORT)),
                    attr("Name", name_value(name)),
                    attr("Operation Policy Name", text("default")),
                ),
                Item.structure(
                    Tag.SECRET_DATA,
                    Item.enum(Tag.SECRET_DATA_TYPE, SecretDataType.PASSWORD),
                    key_block(KeyFormatType.OPAQUE, secret),
                ),
            )
        )
    )
    uid = registered.ok().uid
    assert _checked(kms.send(with_uid(Operation.ACTIVATE, uid))).ok().uid == uid
    assert _checked(kms.send(locate(*by_name))).ok().all(Tag.UNIQUE_IDENTIFIER) == [uid]
    # DSM reads the secret back once registered: the gateway now holds a copy.
    assert (
        material(_checked(kms.send(with_uid(Operation.GET, uid))).ok(), Tag.SECRET_DATA) == secret
    )

    renamed = f"{name}-renamed"
    modified = _checked(
        kms.send(with_uid(Operation.MODIFY_ATTRIBUTE, uid, attr("Name", name_value(renamed))))
    ).ok()
    assert modified.uid == uid
    (echo,) = v1_attributes(modified)["Name"]
    assert echo.find(Tag.NAME_VALUE).value == renamed  # type: ignore[union-attr]

    read = _checked(
        kms.send(get_attributes(uid, "Name", "State", "Operation Policy Name", "Object Type"))
    ).ok()
    everything = kms.send(get_attributes(uid))
    assert_only_tags_of(everything)
    every = v1_attributes(everything.ok())
    # Secret Data has no algorithm or length to report.
    assert "Cryptographic Algorithm" not in every and "Cryptographic Length" not in every
    assert [v.value for v in every["Cryptographic Usage Mask"]] == [CryptographicUsageMask.EXPORT]
    values = v1_attributes(read)
    assert [v.find(Tag.NAME_VALUE).value for v in values["Name"]] == [renamed]  # type: ignore[union-attr]
    assert [v.value for v in values["State"]] == [State.ACTIVE]
    assert [v.value for v in values["Operation Policy Name"]] == ["default"]
    assert [v.value for v in values["Object Type"]] == [ObjectType.SECRET_DATA]

    assert _checked(kms.send(locate(*by_name))).ok().all(Tag.UNIQUE_IDENTIFIER) == []
    renamed_query = (object_type_attr(ObjectType.SECRET_DATA), attr("Name", name_value(renamed)))
    assert _checked(kms.send(locate(*renamed_query))).ok().all(Tag.UNIQUE_IDENTIFIER) == [uid]

    got = _checked(kms.send(with_uid(Operation.GET, uid))).ok()
    assert material(got, Tag.SECRET_DATA) == secret

    revoked = _checked(
        kms.send(revoke(uid, RevocationReasonCode.CESSATION_OF_OPERATION, "volume removed"))
    ).ok()
    assert revoked.uid == uid
    assert _checked(kms.send(with_uid(Operation.DESTROY, uid))).ok().uid == uid
    gone = _checked(kms.send(with_uid(Operation.GET, uid))).one()
    assert (gone.status, gone.reason) == (
        ResultStatus.OPERATION_FAILED,
        ResultReason.ITEM_NOT_FOUND,
    )
    assert _checked(kms.send(locate(*renamed_query))).ok().all(Tag.UNIQUE_IDENTIFIER) == []


# -- Veeam (KMIP 1.4) -------------------------------------------------------------------------
def _create_key_pair(name: str) -> Item:
    return op(
        Operation.CREATE_KEY_PAIR,
        Item.structure(
            Tag.COMMON_TEMPLATE_ATTRIBUTE,
            attr("Cryptographic Algorithm", enum(CryptographicAlgorithm.RSA)),
            attr("Cryptographic Length", integer(2048)),
        ),
        Item.structure(
            Tag.PRIVATE_KEY_TEMPLATE_ATTRIBUTE,
            attr("Name", name_value(f"{name}-private")),
            attr("Cryptographic Usage Mask", integer(CryptographicUsageMask.DECRYPT)),
        ),
        Item.structure(
            Tag.PUBLIC_KEY_TEMPLATE_ATTRIBUTE,
            attr("Name", name_value(f"{name}-public")),
            attr("Cryptographic Usage Mask", integer(CryptographicUsageMask.ENCRYPT)),
        ),
    )


def test_veeam_rsa_key_pair_lifecycle(srv: DevServer) -> None:
    kms = Session(srv, V14, Header(), per_call=False)
    name = f"veeam-{uuid.uuid4()}"
    private_query = (
        object_type_attr(ObjectType.PRIVATE_KEY),
        attr("Name", name_value(f"{name}-private")),
    )
    assert _checked(kms.send(locate(*private_query))).ok().all(Tag.UNIQUE_IDENTIFIER) == []

    pair = _checked(kms.send(_create_key_pair(name))).ok()
    private_uid = pair.field(Tag.PRIVATE_KEY_UNIQUE_IDENTIFIER)
    public_uid = pair.field(Tag.PUBLIC_KEY_UNIQUE_IDENTIFIER)
    assert isinstance(private_uid, str) and isinstance(public_uid, str)
    assert _checked(kms.send(locate(*private_query))).ok().all(Tag.UNIQUE_IDENTIFIER) == [
        private_uid
    ]

    for uid in (private_uid, public_uid):
        assert _checked(kms.send(with_uid(Operation.ACTIVATE, uid))).ok().uid == uid

    private_get = _checked(kms.send(with_uid(Operation.GET, private_uid))).ok()
    public_get = _checked(kms.send(with_uid(Operation.GET, public_uid))).ok()
    assert private_get.field(Tag.OBJECT_TYPE) == ObjectType.PRIVATE_KEY
    assert public_get.field(Tag.OBJECT_TYPE) == ObjectType.PUBLIC_KEY
    private_der = material(private_get, Tag.PRIVATE_KEY)  # no Attributes in the Key Value
    public_der = material(public_get, Tag.PUBLIC_KEY)
    private_key = serialization.load_der_private_key(private_der, None)
    assert isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size == 2048
    assert (
        private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1
        )
        == public_der
    )

    # The same keys in the other formats a 1.4 client may ask for.
    pkcs8 = _checked(
        kms.send(
            with_uid(
                Operation.GET, private_uid, Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.PKCS_8)
            )
        )
    ).ok()
    again = serialization.load_der_private_key(material(pkcs8, Tag.PRIVATE_KEY), None)
    assert isinstance(again, rsa.RSAPrivateKey)
    assert again.private_numbers() == private_key.private_numbers()
    spki = _checked(
        kms.send(
            with_uid(Operation.GET, public_uid, Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.X_509))
        )
    ).ok()
    public_key = serialization.load_der_public_key(material(spki, Tag.PUBLIC_KEY))
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert public_key.public_numbers() == private_key.public_key().public_numbers()

    # Active keys are not destroyed (KMIP 1.4 §4.21); revoked ones are.
    refused = _checked(kms.send(with_uid(Operation.DESTROY, private_uid))).one()
    assert (refused.status, refused.reason) == (
        ResultStatus.OPERATION_FAILED,
        ResultReason.PERMISSION_DENIED,
    )
    for uid in (private_uid, public_uid):
        _checked(kms.send(revoke(uid, RevocationReasonCode.SUPERSEDED))).ok()
        assert _checked(kms.send(with_uid(Operation.DESTROY, uid))).ok().uid == uid
    assert _checked(kms.send(locate(*private_query))).ok().all(Tag.UNIQUE_IDENTIFIER) == []
    assert kms.connections == 1

    # A pair that was never activated is destroyed directly.
    spare = _checked(kms.send(_create_key_pair(f"{name}-spare"))).ok()
    for tag in (Tag.PRIVATE_KEY_UNIQUE_IDENTIFIER, Tag.PUBLIC_KEY_UNIQUE_IDENTIFIER):
        uid = spare.field(tag)
        assert _checked(kms.send(with_uid(Operation.DESTROY, uid))).ok().uid == uid
    kms.close()


def test_veeam_flow_through_pykmip_client(pykmip: Callable[..., Any]) -> None:
    """The same flow through PyKMIP's ProxyKmipClient, which writes Create Key Pair as
    Veeam does (Common: algorithm and length; each key: Name and Usage Mask)."""
    client = pykmip(pk.KMIPVersion.KMIP_1_4)
    name = f"veeam-pykmip-{uuid.uuid4()}"
    factory = AttributeFactory()
    by_name = [
        factory.create_attribute(pk.AttributeType.OBJECT_TYPE, pk.ObjectType.PRIVATE_KEY),
        factory.create_attribute(pk.AttributeType.NAME, f"{name}-private"),
    ]
    assert client.locate(attributes=by_name) == []
    public_uid, private_uid = client.create_key_pair(
        pk.CryptographicAlgorithm.RSA,
        2048,
        public_name=f"{name}-public",
        public_usage_mask=[pk.CryptographicUsageMask.ENCRYPT],
        private_name=f"{name}-private",
        private_usage_mask=[pk.CryptographicUsageMask.DECRYPT],
    )
    assert client.locate(attributes=by_name) == [private_uid]
    for uid in (private_uid, public_uid):
        client.activate(uid)
    private_key, public_key = client.get(private_uid), client.get(public_uid)
    assert private_key.key_format_type == pk.KeyFormatType.PKCS_1
    assert public_key.key_format_type == pk.KeyFormatType.PKCS_1
    assert (private_key.cryptographic_algorithm, private_key.cryptographic_length) == (
        pk.CryptographicAlgorithm.RSA,
        2048,
    )
    loaded = serialization.load_der_private_key(private_key.value, None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert (
        loaded.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1
        )
        == public_key.value
    )
    for uid in (private_uid, public_uid):
        raw = client.proxy.get(uid)
        assert raw.result_status.value == pk.ResultStatus.SUCCESS
        assert raw.secret.key_block.key_value.attributes == []
    with pytest.raises(KmipOperationFailure) as refused:
        client.destroy(private_uid)
    assert refused.value.reason == pk.ResultReason.PERMISSION_DENIED
    for uid in (private_uid, public_uid):
        client.revoke(pk.RevocationReasonCode.SUPERSEDED, uid)
        client.destroy(uid)
    assert client.locate(attributes=by_name) == []


# Standard attributes of KMIP 1.0 (1.0 §3) and those 1.1-1.3 added (1.1-1.3 §3).
V1_0_NAMES = {
    "Unique Identifier", "Name", "Object Type", "Cryptographic Algorithm",
    "Cryptographic Domain Parameters", "Cryptographic Length", "Cryptographic Parameters",
    "Certificate Type", "Certificate Identifier", "Certificate Subject", "Certificate Issuer",
    "Digest", "Operation Policy Name", "Cryptographic Usage Mask", "Lease Time",
    "Usage Limits", "State", "Initial Date", "Activation Date", "Process Start Date",
    "Protect Stop Date", "Deactivation Date", "Destroy Date", "Compromise Occurrence Date",
    "Compromise Date", "Revocation Reason", "Archive Date", "Object Group", "Link",
    "Application Specific Information", "Contact Information", "Last Change Date",
}  # fmt: skip
ADDED = {
    (1, 1): {"Certificate Length", "X.509 Certificate Identifier", "X.509 Certificate Subject",
             "X.509 Certificate Issuer", "Digital Signature Algorithm", "Fresh"},
    (1, 2): {"Alternative Name", "Key Value Present", "Key Value Location",
             "Original Creation Date"},
}  # fmt: skip


def test_a_veeam_key_pair_read_by_1_0_and_1_2_clients(srv: DevServer) -> None:
    """Objects made in 1.4 are shown to an older client in that client's terms."""
    kms = Session(srv, V14, per_call=False)
    pair = _checked(kms.send(_create_key_pair(f"veeam-{uuid.uuid4()}"))).ok()
    private_uid = pair.field(Tag.PRIVATE_KEY_UNIQUE_IDENTIFIER)
    for version in ((1, 0), (1, 2)):
        known = V1_0_NAMES | (ADDED[(1, 2)] | ADDED[(1, 1)] if version == (1, 2) else set())
        everything = kms.send(get_attributes(private_uid), version=version)
        assert_only_tags_of(everything)
        values = v1_attributes(everything.ok())
        assert set(values) <= known, set(values) - known
        assert {"Unique Identifier", "Object Type", "State", "Link", "Digest"} <= set(values)
        listed = kms.send(
            op(Operation.GET_ATTRIBUTE_LIST, Item.text(Tag.UNIQUE_IDENTIFIER, private_uid)),
            version=version,
        )
        assert_only_tags_of(listed)
        listed.pykmip()
        names = set(listed.ok().all(Tag.ATTRIBUTE_NAME))
        assert names == set(values)
    kms.close()
