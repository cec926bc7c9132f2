"""The Core's control handlers over a real SQLite registry and key ring: lifecycle,
Register, Re-key, Check, tenant isolation, audit, and 1.x vs 2.x answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.control_env import (
    V10,
    V14,
    V20,
    V21,
    Answer,
    Env,
    attributes_item,
    core_env,
    date,
    file_bytes,
    name,
    symmetric_key,
    uid_item,
)

from krypton.core.engine.control import CONTROL_HANDLERS
from krypton.core.engine.register import open_object
from krypton.engine.object_errors import ObjectDestroyed
from krypton.kmip.attributes import Attribute
from krypton.kmip.versions import ProtocolVersion
from krypton.model import ObjectRecord
from krypton.ttlv.codec import decode
from krypton.ttlv.enums import (
    CryptographicUsageMask,
    KeyFormatType,
    LinkType,
    ObjectType,
    Operation,
    ResultReason,
    RevocationReasonCode,
    SecretDataType,
    State,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

R = ResultReason
BOTH = (V14, V21)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with core_env(tmp_path) as e:
        yield e


def revoke(
    env: Env,
    uid: str,
    code: RevocationReasonCode,
    version: ProtocolVersion = V14,
    occurred: int | None = None,
) -> Answer:
    extra = [] if occurred is None else [Item.datetime(Tag.COMPROMISE_OCCURRENCE_DATE, occurred)]
    return env.run(
        Operation.REVOKE,
        uid_item(uid),
        Item.structure(Tag.REVOCATION_REASON, Item.enum(Tag.REVOCATION_REASON_CODE, code)),
        *extra,
        version=version,
    )


def state_of(env: Env, uid: str) -> int:
    return env.record(uid).state


def date_of(env: Env, uid: str, tag: int) -> int | None:
    item = env.attr(uid, tag)
    return None if item is None else int(item.value)  # type: ignore[arg-type]


# -- lifecycle ------------------------------------------------------------------------
@pytest.mark.parametrize("version", BOTH, ids=str)
def test_register_activate_revoke_destroy(env: Env, version: ProtocolVersion) -> None:
    uid = env.register_key(version=version)
    assert state_of(env, uid) == State.PRE_ACTIVE
    assert date_of(env, uid, Tag.INITIAL_DATE) == env.now
    revision = env.record(uid).revision

    env.now += 10
    a = env.run(Operation.ACTIVATE, uid_item(uid), version=version)
    assert a.ok and a.uid == uid
    assert a.outcome is not None and a.outcome.uid is None
    [change] = a.outcome.changes
    assert (change.uid, change.state, change.revision) == (uid, State.ACTIVE, revision + 1)
    assert state_of(env, uid) == State.ACTIVE
    assert date_of(env, uid, Tag.ACTIVATION_DATE) == env.now
    assert date_of(env, uid, Tag.LAST_CHANGE_DATE) == env.now

    env.now += 10
    refused = env.run(Operation.DESTROY, uid_item(uid), version=version)
    expected = R.WRONG_KEY_LIFECYCLE_STATE if version.v2 else R.PERMISSION_DENIED
    assert refused.failed(expected), refused.item
    assert refused.outcome is None
    assert state_of(env, uid) == State.ACTIVE and env.record(uid).sealed is not None

    a = revoke(env, uid, RevocationReasonCode.CESSATION_OF_OPERATION, version)
    assert a.ok and a.outcome is not None
    assert a.outcome.changes[0].state == State.DEACTIVATED
    assert state_of(env, uid) == State.DEACTIVATED
    assert date_of(env, uid, Tag.DEACTIVATION_DATE) == env.now
    reason = env.attr(uid, Tag.REVOCATION_REASON)
    assert reason is not None and reason.find(Tag.REVOCATION_REASON_CODE) == Item.enum(
        Tag.REVOCATION_REASON_CODE, RevocationReasonCode.CESSATION_OF_OPERATION
    )

    env.now += 10
    a = env.run(Operation.DESTROY, uid_item(uid), version=version)
    assert a.ok and a.uid == uid
    assert a.outcome is not None and a.outcome.changes[0].state == State.DESTROYED
    rec = env.record(uid)
    assert rec.state == State.DESTROYED and rec.sealed is None
    assert date_of(env, uid, Tag.DESTROY_DATE) == env.now
    assert date_of(env, uid, Tag.LAST_CHANGE_DATE) == env.now
    with pytest.raises(ObjectDestroyed):
        open_object(env.svc, rec)

    again = env.run(Operation.DESTROY, uid_item(uid), version=version)
    assert again.failed(R.OBJECT_DESTROYED if version.v2 else R.PERMISSION_DENIED)


def test_compromise_and_destroyed_compromised(env: Env) -> None:
    uid = env.register_key()
    a = revoke(env, uid, RevocationReasonCode.KEY_COMPROMISE, V21, occurred=6)
    assert a.ok
    assert state_of(env, uid) == State.COMPROMISED
    assert date_of(env, uid, Tag.COMPROMISE_DATE) == env.now
    assert date_of(env, uid, Tag.COMPROMISE_OCCURRENCE_DATE) == 6
    assert env.run(Operation.DESTROY, uid_item(uid), version=V21).ok
    assert state_of(env, uid) == State.DESTROYED_COMPROMISED
    assert env.record(uid).sealed is None

    # Destroyed -> Destroyed Compromised; the occurrence defaults to the Initial Date.
    other = env.register_key()
    assert env.run(Operation.DESTROY, uid_item(other)).ok
    env.now += 5
    assert revoke(env, other, RevocationReasonCode.CA_COMPROMISE).ok
    assert state_of(env, other) == State.DESTROYED_COMPROMISED
    assert date_of(env, other, Tag.COMPROMISE_OCCURRENCE_DATE) == env.now - 5


@pytest.mark.parametrize("version", BOTH, ids=str)
def test_transitions_the_spec_does_not_list_are_refused(env: Env, version: ProtocolVersion) -> None:
    wrong = R.WRONG_KEY_LIFECYCLE_STATE if version.v2 else R.PERMISSION_DENIED
    uid = env.register_key()
    # Pre-Active cannot be revoked for a reason other than compromise.
    assert revoke(env, uid, RevocationReasonCode.SUPERSEDED, version).failed(wrong)
    assert env.run(Operation.ACTIVATE, uid_item(uid), version=version).ok
    assert env.run(Operation.ACTIVATE, uid_item(uid), version=version).failed(wrong)
    assert revoke(env, uid, RevocationReasonCode.UNSPECIFIED, version).ok
    assert revoke(env, uid, RevocationReasonCode.UNSPECIFIED, version).failed(wrong)
    assert env.run(Operation.ACTIVATE, uid_item(uid), version=version).failed(wrong)
    assert state_of(env, uid) == State.DEACTIVATED


def test_revoke_needs_a_known_reason(env: Env) -> None:
    uid = env.register_key()
    assert env.run(Operation.REVOKE, uid_item(uid)).failed(R.INVALID_FIELD)
    bad = Item.structure(Tag.REVOCATION_REASON, Item.enum(Tag.REVOCATION_REASON_CODE, 0x99))
    assert env.run(Operation.REVOKE, uid_item(uid), bad).failed(R.INVALID_FIELD)
    assert state_of(env, uid) == State.PRE_ACTIVE


def test_id_placeholder_names_the_object(env: Env) -> None:
    uid = env.register_key()
    a = env.run(Operation.ACTIVATE, placeholder=uid)
    assert a.ok and a.uid == uid
    assert env.run(Operation.ACTIVATE).failed(R.INVALID_FIELD)  # no identifier at all
    enum_placeholder = Item.enum(Tag.UNIQUE_IDENTIFIER, 1)
    a = revoke(env, uid, RevocationReasonCode.UNSPECIFIED)
    assert a.ok
    assert env.run(Operation.DESTROY, enum_placeholder, placeholder=uid).ok


# -- tenant isolation -----------------------------------------------------------------
@pytest.mark.parametrize("version", BOTH, ids=str)
def test_another_tenants_object_does_not_exist(env: Env, version: ProtocolVersion) -> None:
    theirs = env.register_key(tenant="other")
    missing = R.OBJECT_NOT_FOUND if version.v2 else R.ITEM_NOT_FOUND
    for op in (
        Operation.ACTIVATE,
        Operation.DESTROY,
        Operation.GET_ATTRIBUTES,
        Operation.GET_ATTRIBUTE_LIST,
        Operation.CHECK,
        Operation.RE_KEY,
    ):
        a = env.run(op, uid_item(theirs), version=version)
        b = env.run(op, uid_item("no-such-object"), version=version)
        assert a.failed(missing), (op, a.item)
        assert b.failed(missing)
        assert a.item.message == (b.item.message or "").replace("no-such-object", theirs)
    assert revoke(env, theirs, RevocationReasonCode.KEY_COMPROMISE, version).failed(missing)
    located = env.run(Operation.LOCATE, version=version)
    assert located.ok and theirs not in located.uids
    desc = Attribute("Description", Item.text(Tag.DESCRIPTION, "mine now"))
    edits = [
        (Operation.ADD_ATTRIBUTE, attributes_item(version, [desc]).children[0]),
        (Operation.DELETE_ATTRIBUTE, Item.text(Tag.ATTRIBUTE_NAME, "Name")),
    ]
    if version.v2:
        edits = [
            (Operation.ADD_ATTRIBUTE, Item.structure(Tag.NEW_ATTRIBUTE, desc.value)),
            (Operation.SET_ATTRIBUTE, Item.structure(Tag.NEW_ATTRIBUTE, desc.value)),
            (Operation.MODIFY_ATTRIBUTE, Item.structure(Tag.NEW_ATTRIBUTE, desc.value)),
            (Operation.DELETE_ATTRIBUTE, Item.enum(Tag.ATTRIBUTE_REFERENCE, Tag.NAME)),
        ]
    for op, body in edits:
        assert env.run(op, uid_item(theirs), body, version=version).failed(missing), op
    rec = env.record(theirs, tenant="other")
    assert (rec.state, rec.revision) == (State.PRE_ACTIVE, 0)


# -- Register -------------------------------------------------------------------------
KEY = bytes.fromhex("5f1c0d3e9a7b4c2e8f6a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e")


@pytest.mark.parametrize("version", BOTH, ids=str)
@pytest.mark.parametrize("fmt", [KeyFormatType.RAW, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY])
def test_register_symmetric_key_is_sealed(
    env: Env, version: ProtocolVersion, fmt: KeyFormatType
) -> None:
    a = env.run(
        Operation.REGISTER,
        Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        attributes_item(version, [name("registered")]),
        symmetric_key(KEY, fmt),
        version=version,
    )
    assert a.ok, a.item
    assert [c.tag for c in a.payload.children] == [Tag.UNIQUE_IDENTIFIER]
    assert a.outcome is not None and a.outcome.uid == a.uid and a.outcome.changes == ()
    rec = env.record(a.uid)
    assert (rec.object_type, rec.algorithm, rec.length) == (ObjectType.SYMMETRIC_KEY, 3, 256)
    assert rec.sealed is not None and KEY not in rec.sealed and rec.l3_version == 1
    assert KEY not in rec.attributes
    assert KEY not in file_bytes(env.path)
    assert rec.names == ("registered",)
    opened = open_object(env.svc, rec)
    block = opened.find(Tag.KEY_BLOCK)
    assert block is not None
    value = block.find(Tag.KEY_VALUE)
    assert value is not None and value.find(Tag.KEY_MATERIAL) == Item.bytes_(Tag.KEY_MATERIAL, KEY)


@pytest.mark.parametrize("version", BOTH, ids=str)
def test_register_secret_data_and_opaque_object(env: Env, version: ProtocolVersion) -> None:
    password = b"correct horse battery staple"
    secret = Item.structure(
        Tag.SECRET_DATA,
        Item.enum(Tag.SECRET_DATA_TYPE, SecretDataType.PASSWORD),
        Item.structure(
            Tag.KEY_BLOCK,
            Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.OPAQUE),
            Item.structure(Tag.KEY_VALUE, Item.bytes_(Tag.KEY_MATERIAL, password)),
        ),
    )
    blob = b"opaque value that must stay sealed"
    opaque = Item.structure(
        Tag.OPAQUE_OBJECT,
        Item.enum(Tag.OPAQUE_DATA_TYPE, 0x80000001),
        Item.bytes_(Tag.OPAQUE_DATA_VALUE, blob),
    )
    for object_type, obj, plain in (
        (ObjectType.SECRET_DATA, secret, password),
        (ObjectType.OPAQUE_OBJECT, opaque, blob),
    ):
        a = env.run(
            Operation.REGISTER,
            Item.enum(Tag.OBJECT_TYPE, object_type),
            attributes_item(version, [name(f"obj-{object_type}")]),
            obj,
            version=version,
        )
        assert a.ok, a.item
        rec = env.record(a.uid)
        assert rec.object_type == object_type and rec.algorithm is None
        assert rec.sealed is not None and plain not in rec.sealed
        assert plain not in file_bytes(env.path)
        assert open_object(env.svc, rec) == obj
        assert env.run(Operation.DESTROY, uid_item(a.uid), version=version).ok
        assert env.record(a.uid).sealed is None


def test_register_is_lenient_with_index_policy_and_later_attributes(env: Env) -> None:
    tmpl = Item.structure(
        Tag.TEMPLATE_ATTRIBUTE,
        Item.structure(
            Tag.ATTRIBUTE,
            Item.text(Tag.ATTRIBUTE_NAME, "Cryptographic Algorithm"),
            Item.integer(Tag.ATTRIBUTE_INDEX, 0),
            Item.enum(Tag.ATTRIBUTE_VALUE, 3),
        ),
        Item.structure(
            Tag.ATTRIBUTE,
            Item.text(Tag.ATTRIBUTE_NAME, "Operation Policy Name"),
            Item.text(Tag.ATTRIBUTE_VALUE, "default"),
        ),
        Item.structure(  # a later version's attribute, unknown to our tables
            Tag.ATTRIBUTE,
            Item.text(Tag.ATTRIBUTE_NAME, "Rotate Interval"),
            Item(Tag.ATTRIBUTE_VALUE, ItemType.INTERVAL, 3600),
        ),
        Item.structure(  # a known attribute this server does not manage
            Tag.ATTRIBUTE,
            Item.text(Tag.ATTRIBUTE_NAME, "NIST Key Type"),
            Item.enum(Tag.ATTRIBUTE_VALUE, 6),
        ),
    )
    a = env.run(
        Operation.REGISTER,
        Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        tmpl,
        symmetric_key(KEY),
        version=ProtocolVersion(1, 2),
    )
    assert a.ok, a.item
    attrs = env.attrs(a.uid)
    assert attrs.find(Tag.OPERATION_POLICY_NAME) == Item.text(Tag.OPERATION_POLICY_NAME, "default")
    assert attrs.find(Tag.NIST_KEY_TYPE) is None
    unknown_tag = Item.integer(0x4201FF, 1)
    a = env.run(
        Operation.REGISTER,
        Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
        Item.structure(Tag.ATTRIBUTES, unknown_tag),
        symmetric_key(KEY),
        version=V21,
    )
    assert a.ok, a.item
    assert env.attrs(a.uid).find(0x4201FF) is None


def test_register_with_a_past_activation_date_is_active(env: Env) -> None:
    past = date("Activation Date", Tag.ACTIVATION_DATE, env.now - 60)
    uid = env.register_key([past])
    assert state_of(env, uid) == State.ACTIVE
    both = [past, date("Deactivation Date", Tag.DEACTIVATION_DATE, env.now - 1)]
    assert state_of(env, env.register_key(both)) == State.DEACTIVATED
    future = date("Activation Date", Tag.ACTIVATION_DATE, env.now + 3600)
    assert state_of(env, env.register_key([future])) == State.PRE_ACTIVE


@pytest.mark.parametrize("version", BOTH, ids=str)
def test_register_refusals(env: Env, version: ProtocolVersion) -> None:
    def reg(obj_type: int, attrs: list[Attribute], obj: Item) -> Answer:
        return env.run(
            Operation.REGISTER,
            Item.enum(Tag.OBJECT_TYPE, obj_type),
            attributes_item(version, attrs),
            obj,
            version=version,
        )

    sym = ObjectType.SYMMETRIC_KEY
    state = Attribute("State", Item.enum(Tag.STATE, State.ACTIVE))
    assert reg(sym, [state], symmetric_key(KEY)).failed(
        R.ATTRIBUTE_READ_ONLY if version.v2 else R.PERMISSION_DENIED
    )
    assert reg(sym, [name("dup")], symmetric_key(KEY)).ok
    assert reg(sym, [name("dup")], symmetric_key(KEY)).failed(
        R.NON_UNIQUE_NAME_ATTRIBUTE if version.v2 else R.INVALID_FIELD
    )
    split = Item.structure(Tag.SPLIT_KEY, Item.integer(Tag.SPLIT_KEY_PARTS, 2))
    assert reg(ObjectType.SPLIT_KEY, [], split).failed(
        R.INVALID_OBJECT_TYPE if version.v2 else R.INVALID_FIELD
    )
    cert = Item.structure(Tag.CERTIFICATE, Item.bytes_(Tag.CERTIFICATE_VALUE, b"x"))
    assert reg(ObjectType.CERTIFICATE, [], cert).failed(R.INVALID_FIELD)  # no Certificate Type
    opaque = Item.structure(
        Tag.OPAQUE_OBJECT,
        Item.enum(Tag.OPAQUE_DATA_TYPE, 0x80000001),
        Item.bytes_(Tag.OPAQUE_DATA_VALUE, b"v"),
    )
    assert reg(sym, [], opaque).failed(R.INVALID_FIELD)
    wrong_length = Attribute("Cryptographic Length", Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, 128))
    assert reg(sym, [wrong_length], symmetric_key(KEY)).failed(R.INVALID_FIELD)
    wrapped = Item.structure(
        Tag.SYMMETRIC_KEY,
        Item.structure(
            Tag.KEY_BLOCK,
            Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
            Item.bytes_(Tag.KEY_VALUE, b"\x00" * 40),
            Item.structure(Tag.KEY_WRAPPING_DATA, Item.enum(Tag.WRAPPING_METHOD, 1)),
        ),
    )
    assert reg(sym, [], wrapped).failed(R.FEATURE_NOT_SUPPORTED)
    two = [
        Attribute("Description", Item.text(Tag.DESCRIPTION, "a")),
        Attribute("Description", Item.text(Tag.DESCRIPTION, "b")),
    ]
    assert reg(sym, two, symmetric_key(KEY)).failed(
        R.ATTRIBUTE_SINGLE_VALUED if version.v2 else R.INVALID_FIELD
    )


def test_a_destroyed_objects_name_can_be_reused(env: Env) -> None:
    uid = env.register_key([name("reused")])
    assert env.run(Operation.DESTROY, uid_item(uid)).ok
    assert env.register_key([name("reused")]) != uid


# -- Re-key ---------------------------------------------------------------------------
def links(env: Env, uid: str) -> list[tuple[int, str]]:
    out = []
    for item in env.attrs(uid).find_all(Tag.LINK):
        kind, target = item.find(Tag.LINK_TYPE), item.find(Tag.LINKED_OBJECT_IDENTIFIER)
        assert kind is not None and target is not None
        assert isinstance(kind.value, int)
        out.append((kind.value, str(target.value)))
    return out


@pytest.mark.parametrize("version", BOTH, ids=str)
def test_re_key(env: Env, version: ProtocolVersion) -> None:
    activation = env.now - 100
    old = env.register_key(
        [
            name("rotating"),
            date("Activation Date", Tag.ACTIVATION_DATE, activation),
            date("Deactivation Date", Tag.DEACTIVATION_DATE, env.now + 1000),
            Attribute("Description", Item.text(Tag.DESCRIPTION, "kept")),
        ]
    )
    env.now += 50
    a = env.run(Operation.RE_KEY, uid_item(old), version=version)
    assert a.ok, a.item
    new = a.uid
    assert new != old and a.outcome is not None and a.outcome.uid == new
    assert [c.uid for c in a.outcome.changes] == [old]
    new_rec, old_rec = env.record(new), env.record(old)
    assert new_rec.names == ("rotating",) and old_rec.names == ()
    assert links(env, old) == [(LinkType.REPLACEMENT_OBJECT_LINK, new)]
    assert links(env, new) == [(LinkType.REPLACED_OBJECT_LINK, old)]
    assert (new_rec.algorithm, new_rec.length, new_rec.state) == (3, 256, State.ACTIVE)
    assert date_of(env, new, Tag.INITIAL_DATE) == env.now
    assert date_of(env, new, Tag.ACTIVATION_DATE) == activation
    desc = env.attr(new, Tag.DESCRIPTION)
    assert desc is not None and desc.value == "kept"
    old_key, new_key = (open_object(env.svc, r) for r in (old_rec, new_rec))
    assert old_key != new_key
    block = new_key.find(Tag.KEY_BLOCK)
    value = block.find(Tag.KEY_VALUE) if block is not None else None
    material = value.find(Tag.KEY_MATERIAL) if value is not None else None
    assert material is not None and isinstance(material.value, bytes)
    assert len(material.value) == 32 and material.value not in file_bytes(env.path)


def test_re_key_with_offset_moves_the_dates(env: Env) -> None:
    activation, deactivation = env.now - 100, env.now + 1000
    old = env.register_key(
        [
            date("Activation Date", Tag.ACTIVATION_DATE, activation),
            date("Deactivation Date", Tag.DEACTIVATION_DATE, deactivation),
        ]
    )
    a = env.run(Operation.RE_KEY, uid_item(old), Item(Tag.OFFSET, ItemType.INTERVAL, 60))
    assert a.ok, a.item
    assert date_of(env, a.uid, Tag.ACTIVATION_DATE) == env.now + 60
    assert date_of(env, a.uid, Tag.DEACTIVATION_DATE) == deactivation + env.now + 60 - activation
    assert state_of(env, a.uid) == State.PRE_ACTIVE


def test_re_key_refuses_what_it_cannot_re_key(env: Env) -> None:
    uid = env.register_key()
    assert env.run(Operation.DESTROY, uid_item(uid)).ok
    assert env.run(Operation.RE_KEY, uid_item(uid), version=V21).failed(R.KEY_VALUE_NOT_PRESENT)
    opaque = env.run(
        Operation.REGISTER,
        Item.enum(Tag.OBJECT_TYPE, ObjectType.OPAQUE_OBJECT),
        attributes_item(V21, []),
        Item.structure(
            Tag.OPAQUE_OBJECT,
            Item.enum(Tag.OPAQUE_DATA_TYPE, 0x80000001),
            Item.bytes_(Tag.OPAQUE_DATA_VALUE, b"v"),
        ),
        version=V21,
    )
    assert env.run(Operation.RE_KEY, uid_item(opaque.uid), version=V21).failed(
        R.INVALID_OBJECT_TYPE
    )
    assert env.run(Operation.RE_KEY, uid_item(opaque.uid), version=V14).failed(R.PERMISSION_DENIED)


# -- Check ----------------------------------------------------------------------------
@pytest.mark.parametrize("version", BOTH, ids=str)
def test_check_usage_mask(env: Env, version: ProtocolVersion) -> None:
    mask = Attribute(
        "Cryptographic Usage Mask",
        Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, CryptographicUsageMask.ENCRYPT),
    )
    uid = env.register_key([mask])
    enc = Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, CryptographicUsageMask.ENCRYPT)
    dec = Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, CryptographicUsageMask.DECRYPT)
    a = env.run(Operation.CHECK, uid_item(uid), enc, version=version)
    assert a.ok and a.uid == uid and a.outcome is not None and a.outcome.uid == uid
    assert env.run(Operation.CHECK, uid_item(uid), version=version).ok
    assert env.run(Operation.CHECK, uid_item(uid), dec, version=version).failed(
        R.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK if version.v2 else R.PERMISSION_DENIED
    )


# -- execute_item and audit ------------------------------------------------------------
def test_every_item_is_audited(env: Env) -> None:
    uid = env.register_key(version=V14)
    env.run(Operation.ACTIVATE, uid_item(uid), version=V21)
    env.run(Operation.DESTROY, uid_item(uid), version=V21)
    env.run(Operation.DESTROY, uid_item(uid), version=V14)
    env.run(Operation.GET, uid_item(uid))
    records = env.wait(env.registry.audit("demo"))
    got = [(r.operation, r.uid, r.result) for r in records]
    assert got == [
        ("REGISTER", uid, "Success"),
        ("ACTIVATE", uid, "Success"),
        ("DESTROY", uid, "WRONG_KEY_LIFECYCLE_STATE"),
        ("DESTROY", uid, "PERMISSION_DENIED"),
        ("GET", uid, "OPERATION_NOT_SUPPORTED"),
    ]
    for r in records:
        assert (r.identity, r.tenant, r.gateway, r.correlation_id) == (
            "spiffe://test/demo",
            "demo",
            "gw-1",
            "corr-1",
        )
        assert r.time > 0
        assert (r.detail == "") == (r.result == "Success")
    assert env.wait(env.registry.audit("other")) == []


def test_failures_of_every_operation_are_audited(env: Env) -> None:
    for op in CONTROL_HANDLERS:
        env.run(Operation(op), uid_item("missing"), version=V21)
    records = env.wait(env.registry.audit("demo"))
    assert [r.operation for r in records] == [Operation(op).name for op in CONTROL_HANDLERS]
    for r in records:
        if r.operation == "LOCATE":
            assert r.result == "Success"
        else:
            assert r.result in ("OBJECT_NOT_FOUND", "INVALID_FIELD"), r
            assert r.detail


def test_execute_item_echoes_the_batch_item_and_refuses_what_it_cannot_run(env: Env) -> None:
    from krypton.kmip import client_messages as cm

    uid = env.register_key()
    a = env.item(cm.batch_item(Operation.ACTIVATE, cm.payload(uid_item(uid)), b"\x07"))
    assert a.ok and a.item.batch_id == b"\x07" and a.item.operation == Operation.ACTIVATE
    a = env.item(cm.batch_item(Operation.DERIVE_KEY, cm.payload(), b"\x08"))
    assert a.failed(R.OPERATION_NOT_SUPPORTED) and a.item.batch_id == b"\x08"
    assert a.item.operation == Operation.DERIVE_KEY
    broken = Item.structure(Tag.BATCH_ITEM, Item.bytes_(Tag.UNIQUE_BATCH_ITEM_ID, b"\x09"))
    a = env.item(broken)
    assert a.failed(R.INVALID_MESSAGE) and a.item.operation is None
    a = env.run(Operation.SET_ATTRIBUTE, uid_item(uid), version=V14)
    assert a.failed(R.OPERATION_NOT_SUPPORTED)


def test_version_one_never_sees_a_version_two_reason(env: Env) -> None:
    for version in (V10, ProtocolVersion(1, 3), V14, V20):
        for op in CONTROL_HANDLERS:
            a = env.run(Operation(op), uid_item("missing"), version=version)
            if a.ok:
                assert op == Operation.LOCATE
                continue
            assert a.item.reason is not None
            if not version.v2:
                assert a.item.reason < 0x19, (op, a.item)
            elif op not in (Operation.REGISTER, Operation.ADD_ATTRIBUTE):
                assert a.item.reason in (R.OBJECT_NOT_FOUND, R.INVALID_FIELD), (op, a.item)


def test_registry_record_repr_hides_material(env: Env) -> None:
    uid = env.register_key(key=KEY)
    rec: ObjectRecord = env.record(uid)
    assert KEY.hex() not in repr(rec) and "sealed=<" in repr(rec)
    assert decode(rec.attributes).tag == Tag.ATTRIBUTES
