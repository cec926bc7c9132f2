"""Issue 2 with an independent client: PyKMIP 0.11 against a real `krypton dev` process.

Every protocol version PyKMIP speaks (KMIP 1.0-1.4, 2.0) creates AES keys and
reads them back; attributes come back as they were sent; Query and Discover
Versions tell the truth; another tenant's workload gets Item Not Found; an
operation the gateway does not serve fails alone and leaves the connection
usable.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kmip.core import enums
from kmip.core.messages.contents import ProtocolVersion as PyKmipProtocolVersion
from kmip.core.misc import KeyFormatType
from kmip.pie.exceptions import KmipOperationFailure

from krypton.kmip.versions import SUPPORTED

VERSIONS = tuple(enums.KMIPVersion)
VERSION_IDS = [v.name for v in VERSIONS]
AES = enums.CryptographicAlgorithm.AES
_MASK = enums.CryptographicUsageMask
# PyKMIP's create always adds Encrypt and Decrypt to the mask it is given.
DEFAULT_USAGE = _MASK.ENCRYPT.value | _MASK.DECRYPT.value
USAGE = [_MASK.MAC_GENERATE, _MASK.MAC_VERIFY, _MASK.WRAP_KEY]
USAGE_VALUE = DEFAULT_USAGE | sum(m.value for m in USAGE)

# What the gateway claims in Discover Versions, written out independently of SUPPORTED.
SERVER_VERSIONS = [(2, 1), (2, 0), (1, 4), (1, 3), (1, 2), (1, 1), (1, 0)]
SERVED_OPERATIONS = {
    enums.Operation.CREATE,
    enums.Operation.GET,
    enums.Operation.GET_ATTRIBUTES,
    enums.Operation.GET_ATTRIBUTE_LIST,
    enums.Operation.DISCOVER_VERSIONS,
    enums.Operation.QUERY,
    enums.Operation.ENCRYPT,
    enums.Operation.DECRYPT,
    enums.Operation.RNG_RETRIEVE,
    # delegated to the Krypton Core
    enums.Operation.REGISTER,
    enums.Operation.REKEY,
    enums.Operation.LOCATE,
    enums.Operation.CHECK,
    enums.Operation.ADD_ATTRIBUTE,
    enums.Operation.MODIFY_ATTRIBUTE,
    enums.Operation.DELETE_ATTRIBUTE,
    enums.Operation.SET_ATTRIBUTE,
    enums.Operation.ACTIVATE,
    enums.Operation.REVOKE,
    enums.Operation.DESTROY,
    enums.Operation.CREATE_KEY_PAIR,
    enums.Operation.GET_USAGE_ALLOCATION,
    # the test harness's (Interop only on a development gateway, as this one)
    enums.Operation.LOG,
    enums.Operation.INTEROP,
}
# The last Operation each version defines (KMIP 1.0-1.4 §9.1.3.2.27): Query answers
# a 1.x client with the served operations it has names for.
LAST_OPERATION = {
    enums.KMIPVersion.KMIP_1_0: enums.Operation.PUT,
    enums.KMIPVersion.KMIP_1_1: enums.Operation.DISCOVER_VERSIONS,
    enums.KMIPVersion.KMIP_1_2: enums.Operation.JOIN_SPLIT_KEY,
    enums.KMIPVersion.KMIP_1_3: enums.Operation.JOIN_SPLIT_KEY,
    enums.KMIPVersion.KMIP_1_4: enums.Operation.EXPORT,
}
SERVED_OBJECTS = [
    enums.ObjectType.SYMMETRIC_KEY,
    enums.ObjectType.SECRET_DATA,
    enums.ObjectType.OPAQUE_DATA,
    enums.ObjectType.PRIVATE_KEY,
    enums.ObjectType.PUBLIC_KEY,
    enums.ObjectType.CERTIFICATE,
]
# Attributes every key the server makes has, which PyKMIP 0.11 cannot decode in a
# Get Attributes answer (it fails the whole answer): a 1.0 Digest (PyKMIP reads a Key
# Format Type the 1.0 Digest does not have), the 1.3+ Random Number Generator, and
# in 2.0 every attribute its tag table lacks. Asked for by name, the rest is read.
PYKMIP_CANNOT_DECODE: dict[Any, set[str]] = {
    enums.KMIPVersion.KMIP_1_0: {"Digest"},
    enums.KMIPVersion.KMIP_1_3: {"Random Number Generator"},
    enums.KMIPVersion.KMIP_1_4: {"Random Number Generator"},
    enums.KMIPVersion.KMIP_2_0: {
        "Random Number Generator", "Original Creation Date", "Short Unique Identifier",
        "Protection Storage Mask", "Key Format Type", "Always Sensitive", "Extractable",
        "Never Extractable",
    },
}  # fmt: skip
# Attributes every new key has, whatever the client sent.
SERVER_ATTRIBUTES = {
    "Unique Identifier",
    "Object Type",
    "Cryptographic Algorithm",
    "Cryptographic Length",
    "State",
    "Initial Date",
    "Last Change Date",
}

OpenClient = Callable[..., Any]

by_version = pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)


def _values(attributes: list[Any]) -> dict[str, Any]:
    """PyKMIP attribute objects as {name: value}; a repeated name would be a bug here."""
    out: dict[str, Any] = {}
    for a in attributes:
        name = a.attribute_name.value
        assert name not in out, f"{name} returned twice"
        out[name] = a.attribute_value
    return out


def _reason(exc: pytest.ExceptionInfo[KmipOperationFailure]) -> Any:
    return exc.value.reason


# -- Create and Get ----------------------------------------------------------------
@by_version
@pytest.mark.parametrize("length", [128, 192, 256])
def test_create_then_get_returns_an_aes_key_of_the_requested_length(
    pykmip: OpenClient, version: Any, length: int
) -> None:
    client = pykmip(version)
    uids = [client.create(AES, length) for _ in range(2)]
    keys = [client.get(uid) for uid in uids]

    assert uids[0] != uids[1]
    assert all(isinstance(uid, str) and uid for uid in uids)
    for uid, key in zip(uids, keys, strict=True):
        # The high-level client drops Get's identifier; the proxy shows it.
        raw = client.proxy.get(uid)
        assert raw.result_status.value == enums.ResultStatus.SUCCESS
        assert raw.uuid == uid
        assert raw.object_type == enums.ObjectType.SYMMETRIC_KEY
        assert key.cryptographic_algorithm == AES
        assert key.cryptographic_length == length
        assert key.key_format_type == enums.KeyFormatType.RAW
        assert len(key.value) == length // 8
    assert keys[0].value != keys[1].value
    assert client.get(uids[0]).value == keys[0].value


def test_a_key_reads_the_same_under_every_version(pykmip: OpenClient) -> None:
    """A key created in one protocol version is the same key in every other."""
    clients = {v: pykmip(v) for v in VERSIONS}
    created = {v: c.create(AES, 256) for v, c in clients.items()}
    material = {v: clients[v].get(uid).value for v, uid in created.items()}
    assert len(set(material.values())) == len(VERSIONS)
    for reader in clients.values():
        for v, uid in created.items():
            assert reader.get(uid).value == material[v]


@by_version
def test_get_serves_raw_and_refuses_formats_of_other_key_types(
    pykmip: OpenClient, version: Any
) -> None:
    client = pykmip(version)
    uid = client.create(AES, 256)
    raw = client.proxy.get(uid, key_format_type=KeyFormatType(enums.KeyFormatType.RAW))
    assert raw.result_status.value == enums.ResultStatus.SUCCESS
    assert raw.secret.key_block.key_format_type.value == enums.KeyFormatType.RAW
    assert raw.secret.key_block.key_value.key_material.value == client.get(uid).value

    pkcs8 = client.proxy.get(uid, key_format_type=KeyFormatType(enums.KeyFormatType.PKCS_8))
    assert pkcs8.result_status.value == enums.ResultStatus.OPERATION_FAILED
    assert pkcs8.result_reason.value == enums.ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED
    assert pkcs8.secret is None


# -- attributes -------------------------------------------------------------------
@pytest.fixture(params=VERSIONS, ids=VERSION_IDS)
def named_key(request: pytest.FixtureRequest, pykmip: OpenClient) -> tuple[Any, str, str]:
    """(client, uid, name) of a 192-bit key created with a Name and a usage mask."""
    client = pykmip(request.param)
    name = f"interop-{request.param.name}-{uuid.uuid4().hex[:8]}"
    uid = client.create(AES, 192, name=name, cryptographic_usage_mask=USAGE)
    return client, uid, name


def _all_attributes(client: Any, uid: str) -> tuple[str, list[Any]]:
    """Get Attributes of every attribute PyKMIP can decode (all of them where it can)."""
    skip = PYKMIP_CANNOT_DECODE.get(client.kmip_version, set())
    if not skip:
        uid_and_attributes: tuple[str, list[Any]] = client.get_attributes(uid)
        return uid_and_attributes
    names = [n for n in client.get_attribute_list(uid) if n not in skip]
    assert skip <= set(client.get_attribute_list(uid))
    return client.get_attributes(uid, names)  # type: ignore[no-any-return]


def test_get_attributes_returns_what_create_set(named_key: tuple[Any, str, str]) -> None:
    client, uid, name = named_key
    returned_uid, attributes = _all_attributes(client, uid)
    values = _values(attributes)

    assert returned_uid == uid
    assert SERVER_ATTRIBUTES | {"Name", "Cryptographic Usage Mask"} <= set(values)
    assert values["Unique Identifier"].value == uid
    assert values["Object Type"].value == enums.ObjectType.SYMMETRIC_KEY
    assert values["Cryptographic Algorithm"].value == AES
    assert values["Cryptographic Length"].value == 192
    assert values["State"].value == enums.State.PRE_ACTIVE
    assert values["Cryptographic Usage Mask"].value == USAGE_VALUE
    assert values["Name"].name_value.value == name
    assert values["Name"].name_type.value == enums.NameType.UNINTERPRETED_TEXT_STRING
    assert values["Initial Date"].value > 0
    assert values["Last Change Date"].value >= values["Initial Date"].value


def test_get_attributes_by_name_returns_only_those(named_key: tuple[Any, str, str]) -> None:
    client, uid, name = named_key
    wanted = ["State", "Cryptographic Length", "Name"]
    returned_uid, attributes = client.get_attributes(uid, wanted)
    values = _values(attributes)

    assert returned_uid == uid
    assert set(values) == set(wanted)
    assert values["State"].value == enums.State.PRE_ACTIVE
    assert values["Cryptographic Length"].value == 192
    assert values["Name"].name_value.value == name


def test_get_attributes_by_one_name(named_key: tuple[Any, str, str]) -> None:
    client, uid, _ = named_key
    _, attributes = client.get_attributes(uid, ["Cryptographic Usage Mask"])
    assert {k: v.value for k, v in _values(attributes).items()} == {
        "Cryptographic Usage Mask": USAGE_VALUE
    }


def test_get_attribute_list_names_every_attribute_get_attributes_returns(
    named_key: tuple[Any, str, str],
) -> None:
    client, uid, _ = named_key
    names = client.get_attribute_list(uid)
    _, attributes = _all_attributes(client, uid)

    assert len(names) == len(set(names))
    skip = PYKMIP_CANNOT_DECODE.get(client.kmip_version, set())
    assert set(names) - skip == set(_values(attributes))
    assert SERVER_ATTRIBUTES | {"Name", "Cryptographic Usage Mask"} <= set(names)


@pytest.mark.parametrize(
    "version", [enums.KMIPVersion.KMIP_1_0, enums.KMIPVersion.KMIP_1_4], ids=lambda v: v.name
)
def test_create_with_an_operation_policy_name_keeps_it(pykmip: OpenClient, version: Any) -> None:
    """PyKMIP sends Operation Policy Name in 1.x (it refuses to send it in 2.0 itself)."""
    client = pykmip(version)
    uid = client.create(AES, 128, operation_policy_name="default")
    _, attributes = client.get_attributes(uid, ["Operation Policy Name"])
    assert _values(attributes)["Operation Policy Name"].value == "default"


@by_version
def test_a_key_created_without_name_has_none_and_the_default_mask(
    pykmip: OpenClient, version: Any
) -> None:
    client = pykmip(version)
    uid = client.create(AES, 128)
    names = set(client.get_attribute_list(uid))
    assert names >= SERVER_ATTRIBUTES
    assert "Name" not in names
    _, attributes = client.get_attributes(uid, ["Cryptographic Usage Mask", "Name"])
    assert {k: v.value for k, v in _values(attributes).items()} == {
        "Cryptographic Usage Mask": DEFAULT_USAGE
    }


# -- Query and Discover Versions ------------------------------------------------------
@by_version
def test_query_reports_operations_objects_and_server(pykmip: OpenClient, version: Any) -> None:
    client = pykmip(version)
    result = client.proxy.query(
        query_functions=[
            enums.QueryFunction.QUERY_OPERATIONS,
            enums.QueryFunction.QUERY_OBJECTS,
            enums.QueryFunction.QUERY_SERVER_INFORMATION,
        ]
    )
    assert result.result_status.value == enums.ResultStatus.SUCCESS
    assert len(result.operations) == len(set(result.operations))
    last = LAST_OPERATION.get(version)
    assert set(result.operations) == {
        op for op in SERVED_OPERATIONS if last is None or op.value <= last.value
    }
    assert list(result.object_types) == SERVED_OBJECTS
    assert result.vendor_identification == "OpenKCM Krypton"
    if version >= enums.KMIPVersion.KMIP_2_0:
        # PyKMIP keeps 2.x Server Information as its raw TTLV bytes.
        assert b"Krypton Gateway" in bytes(result.server_information.data.buffer)


@by_version
def test_query_answers_only_what_was_asked(pykmip: OpenClient, version: Any) -> None:
    result = pykmip(version).proxy.query(query_functions=[enums.QueryFunction.QUERY_OBJECTS])
    assert result.result_status.value == enums.ResultStatus.SUCCESS
    assert not result.operations
    assert list(result.object_types) == SERVED_OBJECTS
    assert result.vendor_identification is None


def _versions(result: Any) -> list[tuple[int, int]]:
    assert result.result_status.value == enums.ResultStatus.SUCCESS
    return [(v.major, v.minor) for v in result.protocol_versions or []]


@by_version
def test_discover_versions_lists_every_version_the_server_speaks(
    pykmip: OpenClient, version: Any
) -> None:
    versions = _versions(pykmip(version).proxy.discover_versions())
    assert versions == SERVER_VERSIONS
    assert versions == [(v.major, v.minor) for v in SUPPORTED]


@by_version
def test_discover_versions_with_a_client_list_returns_the_intersection(
    pykmip: OpenClient, version: Any
) -> None:
    offered = [(1, 2), (3, 0), (2, 0), (1, 7), (1, 0)]
    result = pykmip(version).proxy.discover_versions(
        protocol_versions=[PyKmipProtocolVersion(a, b) for a, b in offered]
    )
    # Only versions both sides speak, in the client's order of preference.
    assert _versions(result) == [(1, 2), (2, 0), (1, 0)]


@by_version
def test_discover_versions_with_no_common_version_returns_none(
    pykmip: OpenClient, version: Any
) -> None:
    result = pykmip(version).proxy.discover_versions(
        protocol_versions=[PyKmipProtocolVersion(3, 0), PyKmipProtocolVersion(0, 9)]
    )
    assert _versions(result) == []


# -- tenants ------------------------------------------------------------------------
_LOOKUPS: dict[str, Callable[[Any, str], Any]] = {
    "get": lambda c, uid: c.get(uid),
    "get_attributes": lambda c, uid: c.get_attributes(uid),
    "get_attributes_by_name": lambda c, uid: c.get_attributes(uid, ["State"]),
    "get_attribute_list": lambda c, uid: c.get_attribute_list(uid),
}


@pytest.mark.parametrize(
    "version",
    [enums.KMIPVersion.KMIP_1_0, enums.KMIPVersion.KMIP_1_2, enums.KMIPVersion.KMIP_2_0],
    ids=lambda v: v.name,
)
@pytest.mark.parametrize(
    ("owner", "stranger"), [("client", "other-client"), ("other-client", "client")]
)
@pytest.mark.parametrize("lookup", list(_LOOKUPS))
def test_another_tenant_gets_item_not_found(
    pykmip: OpenClient, version: Any, owner: str, stranger: str, lookup: str
) -> None:
    mine, theirs = pykmip(version, owner), pykmip(version, stranger)
    uid = mine.create(AES, 256)
    absent = str(uuid.uuid4())

    with pytest.raises(KmipOperationFailure) as foreign:
        _LOOKUPS[lookup](theirs, uid)
    with pytest.raises(KmipOperationFailure) as missing:
        _LOOKUPS[lookup](theirs, absent)

    assert foreign.value.status == enums.ResultStatus.OPERATION_FAILED
    not_found = enums.ResultReason.ITEM_NOT_FOUND  # KMIP 2.x: Object Not Found
    if version >= enums.KMIPVersion.KMIP_2_0:
        not_found = enums.ResultReason.OBJECT_NOT_FOUND
    assert _reason(foreign) == not_found
    # Indistinguishable from a key that does not exist at all.
    assert _reason(missing) == not_found
    assert foreign.value.message.replace(uid, "<uid>") == missing.value.message.replace(
        absent, "<uid>"
    )
    # The owner still sees it.
    assert mine.get(uid).cryptographic_length == 256


def test_each_tenant_keeps_its_own_keys(pykmip: OpenClient) -> None:
    demo = pykmip(enums.KMIPVersion.KMIP_1_4, "client")
    other = pykmip(enums.KMIPVersion.KMIP_1_4, "other-client")
    demo_uid, other_uid = demo.create(AES, 128), other.create(AES, 128)
    assert demo.get(demo_uid).value != other.get(other_uid).value
    for client, uid in ((demo, other_uid), (other, demo_uid)):
        with pytest.raises(KmipOperationFailure) as exc:
            client.get(uid)
        assert _reason(exc) == enums.ResultReason.ITEM_NOT_FOUND


# -- what the gateway does not do ------------------------------------------------------
@by_version
def test_unserved_operation_fails_alone_and_the_connection_stays_usable(
    pykmip: OpenClient, version: Any
) -> None:
    client = pykmip(version)
    uid = client.create(AES, 128)
    with pytest.raises(KmipOperationFailure) as exc:
        client.mac(b"data", uid, enums.CryptographicAlgorithm.HMAC_SHA256)
    assert _reason(exc) == enums.ResultReason.OPERATION_NOT_SUPPORTED
    # Same client, same TLS connection.
    assert len(client.get(uid).value) == 16
    _, attributes = client.get_attributes(uid, ["State"])
    assert _values(attributes)["State"].value == enums.State.PRE_ACTIVE


@pytest.mark.parametrize(
    ("algorithm", "length"),
    [(enums.CryptographicAlgorithm.TRIPLE_DES, 112), (AES, 100), (AES, 512)],
    ids=["3des-112", "aes-100", "aes-512"],
)
def test_create_refuses_what_it_cannot_make(
    pykmip: OpenClient, algorithm: Any, length: int
) -> None:
    client = pykmip(enums.KMIPVersion.KMIP_1_4)
    with pytest.raises(KmipOperationFailure) as exc:
        client.create(algorithm, length)
    assert _reason(exc) == enums.ResultReason.INVALID_FIELD
    assert len(client.get(client.create(AES, 128)).value) == 16


def test_get_of_an_unknown_identifier_is_object_not_found(pykmip: OpenClient) -> None:
    with pytest.raises(KmipOperationFailure) as exc:
        pykmip(enums.KMIPVersion.KMIP_2_0).get(str(uuid.uuid4()))
    assert _reason(exc) == enums.ResultReason.OBJECT_NOT_FOUND


def test_create_makes_triple_des_keys(pykmip: OpenClient) -> None:
    client = pykmip(enums.KMIPVersion.KMIP_1_4)
    uid = client.create(enums.CryptographicAlgorithm.TRIPLE_DES, 168)
    # (PyKMIP's SymmetricKey wants 168 bits of material: read the answer as sent.)
    block = client.proxy.get(uid).secret.key_block
    assert block.cryptographic_length.value == 168
    material = block.key_value.key_material.value
    assert len(material) == 24  # three DES keys, odd parity (FIPS 46-3)
    assert all(bin(b).count("1") % 2 == 1 for b in material)
