"""Percona's and Oracle's KMIP flows: PSMDB, pg_tde, MySQL keyring_kmip and keyring_okv.

The Percona products all sit on libkmip (Percona-Lab/libkmip: kmip_bio.c,
kmippp.cpp), which writes requests with a fixed field order and decodes
answers *sequentially*: Response Header = Protocol Version, Time Stamp,
Batch Count; Batch Item = Operation, Unique Batch Item ID, Result Status,
Result Reason, Result Message, payload; a failed item must carry a Result
Message (libkmip copies it unconditionally); exactly one batch item. Each
request carries Maximum Response Size (8192) and a Time Stamp in its header.
libkmip opens its context in KMIP 1.0 for Activate, Get, Destroy, Revoke and
Locate and in 1.4 for Register and for Get Attributes (Name). pg_tde and MySQL
open a new TLS connection for every call (BIO_do_connect per call, a new
context per keyring operation); PSMDB runs a few exchanges on one connection
and ends it with a TLS close_notify it expects answered.

keyring_okv (Oracle's SDK) sends an Attribute Index with every template
attribute and a Storage Status Mask in Locate typed Integer.
"""

from __future__ import annotations

import os
import time
import uuid

from tests.helpers.servers import DevServer
from tests.interop.product_wire import (
    OBJECT_TAG,
    Answer,
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
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    SecretDataType,
    State,
    StorageStatusMask,
)
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

V10, V11, V14 = (1, 0), (1, 1), (1, 4)
LIBKMIP = Header(max_response_size=8192, time_stamp=True)
ENCRYPT_DECRYPT = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT


# -- what libkmip's sequential decoder needs ----------------------------------------------
RESPONSE_HEADER_ORDER = [Tag.PROTOCOL_VERSION, Tag.TIME_STAMP, Tag.BATCH_COUNT]
BATCH_ITEM_ORDER = [
    Tag.OPERATION,
    Tag.UNIQUE_BATCH_ITEM_ID,
    Tag.RESULT_STATUS,
    Tag.RESULT_REASON,
    Tag.RESULT_MESSAGE,
    Tag.RESPONSE_PAYLOAD,
]


def libkmip_reads(reply: Reply, operation: int) -> Answer:
    """What kmip_decode_response_message + the kmip_bio_* caller accept, or fail."""
    header = reply.message.children[0]
    assert [c.tag for c in header.children] == RESPONSE_HEADER_ORDER
    answer = reply.one()
    item = reply.message.children[1]
    tags = [c.tag for c in item.children]
    assert tags == [t for t in BATCH_ITEM_ORDER if t in tags], f"batch item order {tags}"
    assert answer.operation == operation  # PSMDB checks it, failures included
    if answer.status != ResultStatus.SUCCESS:
        assert answer.message is not None  # libkmip dereferences it
        assert answer.payload is None
    assert_only_tags_of(reply)
    reply.pykmip()
    return answer


def _symmetric_key(key: bytes) -> Item:
    return Item.structure(
        Tag.SYMMETRIC_KEY,
        key_block(
            KeyFormatType.RAW,
            key,
            Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
            Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, len(key) * 8),
        ),
    )


def _aes_template(length: int, *extra: Item) -> Item:
    return template(
        attr("Cryptographic Algorithm", enum(CryptographicAlgorithm.AES)),
        attr("Cryptographic Length", integer(length)),
        attr("Cryptographic Usage Mask", integer(ENCRYPT_DECRYPT)),
        *extra,
    )


def _create_aes_256(batch_id: bytes) -> Item:
    return op(
        Operation.CREATE,
        Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        _aes_template(256),
        batch_id=batch_id,
    )


def _get_symmetric(kms: Session, uid: str) -> bytes:
    answer = libkmip_reads(kms.send(with_uid(Operation.GET, uid), version=V10), Operation.GET)
    assert answer.ok
    assert answer.payload is not None
    assert [c.tag for c in answer.payload.children] == [
        Tag.OBJECT_TYPE,
        Tag.UNIQUE_IDENTIFIER,
        Tag.SYMMETRIC_KEY,
    ]
    block = answer.payload.children[2].children[0]
    assert [c.tag for c in block.children] == [
        Tag.KEY_FORMAT_TYPE,
        Tag.KEY_VALUE,
        Tag.CRYPTOGRAPHIC_ALGORITHM,
        Tag.CRYPTOGRAPHIC_LENGTH,
    ]
    return material(answer, Tag.SYMMETRIC_KEY)


def _locate_all(kms: Session, *attributes: Item) -> list[str]:
    """kmippp's paging loop in 1.0: Maximum Items 16, Offset Items when not 0, until empty."""
    found: list[str] = []
    while True:
        reply = kms.send(locate(*attributes, maximum=16, offset=len(found) or None), version=V10)
        answer = libkmip_reads(reply, Operation.LOCATE)
        assert answer.ok
        page = answer.all(Tag.UNIQUE_IDENTIFIER)
        assert answer.all(Tag.LOCATED_ITEMS) == []  # a 1.0 answer has none
        assert len(page) <= 16
        if not page:
            return found
        found.extend(page)


# -- Percona Server for MongoDB (KMIP 1.0) ----------------------------------------------------
# PSMDB's KmipClient runs a "session" per task on one TLS connection: Register then
# Activate; or Get then Get Attributes (State). It ends each with a TLS shutdown.
def test_psmdb_register_activate_get_state(srv: DevServer) -> None:
    key = os.urandom(32)
    with Session(srv, V10, LIBKMIP, per_call=False) as kms:
        registered = kms.send(
            register(ObjectType.SYMMETRIC_KEY, _aes_template(256), _symmetric_key(key))
        )
        uid = libkmip_reads(registered, Operation.REGISTER).uid
        assert registered.one().ok
        activated = libkmip_reads(kms.send(with_uid(Operation.ACTIVATE, uid)), Operation.ACTIVATE)
        assert activated.ok and activated.uid == uid  # PSMDB compares it
        kms.shutdown()
        assert kms.connections == 1

    with Session(srv, V10, LIBKMIP, per_call=False) as kms:
        assert _get_symmetric(kms, uid) == key
        state = libkmip_reads(kms.send(get_attributes(uid, "State")), Operation.GET_ATTRIBUTES)
        assert state.ok and state.uid == uid
        assert state.payload is not None
        # libkmip decodes the Unique Identifier and then exactly one Attribute.
        assert [c.tag for c in state.payload.children] == [Tag.UNIQUE_IDENTIFIER, Tag.ATTRIBUTE]
        assert {k: [v.value for v in vs] for k, vs in v1_attributes(state).items()} == {
            "State": [State.ACTIVE]
        }
        kms.shutdown()
        assert kms.connections == 1


def test_psmdb_absent_key_is_item_not_found(srv: DevServer) -> None:
    missing = str(uuid.uuid4())
    with Session(srv, V10, LIBKMIP, per_call=False) as kms:
        for operation, item in (
            (Operation.GET, with_uid(Operation.GET, missing)),
            (Operation.GET_ATTRIBUTES, get_attributes(missing, "State")),
        ):
            answer = libkmip_reads(kms.send(item), operation)
            assert answer.status == ResultStatus.OPERATION_FAILED
            assert answer.reason == ResultReason.ITEM_NOT_FOUND
        kms.shutdown()


# -- pg_tde ---------------------------------------------------------------------------------
def test_pg_tde_register_named_key_locate_by_name_get(srv: DevServer) -> None:
    kms = Session(srv, V14, LIBKMIP)
    name = f"pg_tde-principal-{uuid.uuid4()}"
    key = os.urandom(16)
    uid = libkmip_reads(
        kms.send(
            register(
                ObjectType.SYMMETRIC_KEY,
                _aes_template(128, attr("Name", name_value(name))),
                _symmetric_key(key),
            )
        ),
        Operation.REGISTER,
    ).uid

    by_name = (object_type_attr(ObjectType.SYMMETRIC_KEY), attr("Name", name_value(name)))
    located = libkmip_reads(kms.send(locate(*by_name, maximum=16), version=V10), Operation.LOCATE)
    assert located.ok
    assert located.all(Tag.UNIQUE_IDENTIFIER) == [uid]  # exactly one match
    assert _get_symmetric(kms, uid) == key

    nothing = libkmip_reads(
        kms.send(
            locate(
                object_type_attr(ObjectType.SYMMETRIC_KEY),
                attr("Name", name_value(name + "-absent")),
                maximum=16,
            ),
            version=V10,
        ),
        Operation.LOCATE,
    )
    assert nothing.ok and nothing.all(Tag.UNIQUE_IDENTIFIER) == []
    assert kms.connections == 4


# -- MySQL: Percona keyring_kmip (kmippp) ------------------------------------------------------
def test_mysql_keyring_kmip_lifecycle(srv: DevServer) -> None:
    kms = Session(srv, V14, LIBKMIP)
    group = f"mysql-{uuid.uuid4()}"

    # op_register(name, group, key) + op_activate, for three keys.
    keys: dict[str, tuple[str, bytes]] = {}
    for n in range(3):
        name, key = f"{group}-key{n}", os.urandom(32)
        uid = libkmip_reads(
            kms.send(
                register(
                    ObjectType.SYMMETRIC_KEY,
                    _aes_template(
                        256, attr("Name", name_value(name)), attr("Object Group", text(group))
                    ),
                    _symmetric_key(key),
                )
            ),
            Operation.REGISTER,
        ).uid
        assert libkmip_reads(
            kms.send(with_uid(Operation.ACTIVATE, uid), version=V10), Operation.ACTIVATE
        ).ok
        keys[uid] = (name, key)

    # op_register_secret: Secret Data (Password) with a mask, Name and Object Group.
    secret = os.urandom(24)
    secret_uid = libkmip_reads(
        kms.send(
            register(
                ObjectType.SECRET_DATA,
                template(
                    attr(
                        "Cryptographic Usage Mask",
                        integer(CryptographicUsageMask.DERIVE_KEY | CryptographicUsageMask.EXPORT),
                    ),
                    attr("Name", name_value(f"{group}-secret")),
                    attr("Object Group", text(group)),
                ),
                Item.structure(
                    Tag.SECRET_DATA,
                    Item.enum(Tag.SECRET_DATA_TYPE, SecretDataType.PASSWORD),
                    key_block(KeyFormatType.OPAQUE, secret),
                ),
            )
        ),
        Operation.REGISTER,
    ).uid

    # op_locate_by_group, op_all (paged), op_all_secrets.
    by_group = (object_type_attr(ObjectType.SYMMETRIC_KEY), attr("Object Group", text(group)))
    assert sorted(_locate_all(kms, *by_group)) == sorted(keys)
    # Enough keys that op_all needs more than one page of 16.
    batch = Session(srv, V14, per_call=False)
    made = batch.send(*(_create_aes_256(bytes([n]) * 8) for n in range(17)))
    assert all(a.ok for a in made.answers)
    batch.close()
    everything = _locate_all(kms, object_type_attr(ObjectType.SYMMETRIC_KEY))
    assert set(keys) | {a.uid for a in made.answers} <= set(everything)
    assert len(everything) == len(set(everything))
    assert secret_uid in _locate_all(kms, object_type_attr(ObjectType.SECRET_DATA))

    # Get + Get Attributes (Name) per key.
    for uid, (name, key) in keys.items():
        assert _get_symmetric(kms, uid) == key
        named = libkmip_reads(kms.send(get_attributes(uid, "Name")), Operation.GET_ATTRIBUTES)
        assert named.ok
        assert named.payload is not None
        assert [c.tag for c in named.payload.children] == [Tag.UNIQUE_IDENTIFIER, Tag.ATTRIBUTE]
        (value,) = v1_attributes(named)["Name"]
        assert value.find(Tag.NAME_VALUE).value == name  # type: ignore[union-attr]

    # op_get_secret.
    got = libkmip_reads(kms.send(with_uid(Operation.GET, secret_uid), version=V10), Operation.GET)
    assert got.ok and material(got, OBJECT_TAG[ObjectType.SECRET_DATA]) == secret

    # op_revoke(id, Unspecified, "", 0) then op_destroy.
    doomed = next(iter(keys))
    revoked = libkmip_reads(
        kms.send(revoke(doomed, RevocationReasonCode.UNSPECIFIED, ""), version=V10),
        Operation.REVOKE,
    )
    assert revoked.ok and revoked.uid == doomed
    destroyed = libkmip_reads(
        kms.send(with_uid(Operation.DESTROY, doomed), version=V10), Operation.DESTROY
    )
    assert destroyed.ok and destroyed.uid == doomed
    gone = libkmip_reads(kms.send(with_uid(Operation.GET, doomed), version=V10), Operation.GET)
    assert gone.status == ResultStatus.OPERATION_FAILED
    assert gone.reason == ResultReason.ITEM_NOT_FOUND
    assert doomed not in _locate_all(kms, *by_group)

    # An Active key cannot be destroyed (KMIP 1.0 §4.19): revoke first.
    active = list(keys)[1]
    refused = libkmip_reads(
        kms.send(with_uid(Operation.DESTROY, active), version=V10), Operation.DESTROY
    )
    assert refused.status == ResultStatus.OPERATION_FAILED
    assert refused.reason == ResultReason.PERMISSION_DENIED

    # kmippp passes its caller's time as Compromise Occurrence Date whatever the reason;
    # for Unspecified the spec says not to send it, and it is ignored.
    revoked = libkmip_reads(
        kms.send(
            revoke(active, RevocationReasonCode.UNSPECIFIED, "", occurred=int(time.time())),
            version=V10,
        ),
        Operation.REVOKE,
    )
    assert revoked.ok
    state = libkmip_reads(kms.send(get_attributes(active, "State")), Operation.GET_ATTRIBUTES)
    assert [v.value for v in v1_attributes(state)["State"]] == [State.DEACTIVATED]
    assert libkmip_reads(
        kms.send(with_uid(Operation.DESTROY, active), version=V10), Operation.DESTROY
    ).ok


# -- MySQL: Oracle keyring_okv ------------------------------------------------------------------
def test_mysql_keyring_okv_create_with_attribute_index_and_integer_storage_mask(
    srv: DevServer,
) -> None:
    kms = Session(srv, V11)
    name = f"okv-{uuid.uuid4()}"
    created = kms.send(
        op(
            Operation.CREATE,
            Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
            template(
                attr("Cryptographic Algorithm", enum(CryptographicAlgorithm.AES), index=0),
                attr("Cryptographic Length", integer(256), index=0),
                attr("Cryptographic Usage Mask", integer(ENCRYPT_DECRYPT), index=0),
                attr("Name", name_value(name), index=0),
            ),
        )
    )
    uid = created.ok().uid
    assert_only_tags_of(created)
    created.pykmip()
    assert kms.send(with_uid(Operation.ACTIVATE, uid)).ok().uid == uid

    storage = Item.integer(Tag.STORAGE_STATUS_MASK, StorageStatusMask.ON_LINE_STORAGE)
    located = kms.send(
        locate(
            object_type_attr(ObjectType.SYMMETRIC_KEY),
            attr("Name", name_value(name), index=0),
            storage_mask=storage,
        )
    )
    assert located.ok().all(Tag.UNIQUE_IDENTIFIER) == [uid]
    assert_only_tags_of(located)
    located.pykmip()
    listed = kms.send(locate(storage_mask=storage))  # every key, nothing else asked
    assert uid in listed.ok().all(Tag.UNIQUE_IDENTIFIER)
    listed.pykmip()

    got = kms.send(with_uid(Operation.GET, uid))
    assert len(material(got.ok(), Tag.SYMMETRIC_KEY)) == 32
    assert_only_tags_of(got)
    got.pykmip()
