"""The storage-free code both sides share (krypton.engine): one reading of a stored
object as attributes, one tenant check, one usability check."""

from __future__ import annotations

import pytest

from krypton.engine.object_errors import IncompatibleUsageMask, ObjectNotFound
from krypton.engine.objects import all_attributes, belongs, date_attr, owned
from krypton.engine.usable import Use, check_usable
from krypton.errors import WrongKeyLifecycleState
from krypton.kmip.attributes import Attribute, attributes_v2
from krypton.model.record import KeyRecord
from krypton.model.registry import ObjectRecord
from krypton.ttlv.codec import encode
from krypton.ttlv.enums import CryptographicUsageMask, ObjectType, State
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

NOW = 1_790_000_000
M = CryptographicUsageMask


def _names(*texts: str) -> list[Attribute]:
    return [
        Attribute("Name", Item.structure(Tag.NAME, Item.text(Tag.NAME_VALUE, t))) for t in texts
    ]


def test_a_vault_record_and_a_registry_record_read_as_the_same_attributes() -> None:
    blob = encode(attributes_v2(_names("a", "b")))
    key = KeyRecord("u1", "t", ObjectType.SYMMETRIC_KEY, 3, 128, State.ACTIVE, 1, b"w", blob, NOW)
    obj = ObjectRecord("u1", "t", ObjectType.SYMMETRIC_KEY, State.ACTIVE, NOW, 3, 128, 1, b"w",
                       blob)  # fmt: skip
    assert all_attributes(key) == all_attributes(obj)
    names = [a for a in all_attributes(key) if a.name == "Name"]
    assert [a.index for a in names] == [0, 1]  # the 1.x Attribute Index, on both sides


def test_another_tenants_object_does_not_exist_for_the_caller() -> None:
    rec = ObjectRecord("u1", "t", ObjectType.SYMMETRIC_KEY, State.ACTIVE, NOW)
    assert owned(rec, "t", "u1") is rec and belongs(rec, "t")
    assert not belongs(rec, "other") and not belongs(None, "t")
    for tenant, found in (("other", rec), ("t", None)):
        with pytest.raises(ObjectNotFound):
            owned(found, tenant, "u1")


_ENCRYPT = Use("Encrypt", M.ENCRYPT, protects=True)
_DECRYPT = Use("Decrypt", M.DECRYPT, processes=True)


def _mask(mask: int) -> Attribute:
    return Attribute("Cryptographic Usage Mask", Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, mask))


@pytest.mark.parametrize(
    ("use", "state", "stored", "material", "error"),
    [
        (_ENCRYPT, State.ACTIVE, [], True, None),
        (_ENCRYPT, State.ACTIVE, [_mask(M.UNRESTRICTED)], True, None),
        (_ENCRYPT, State.ACTIVE, [_mask(M.DECRYPT)], True, IncompatibleUsageMask),
        (_ENCRYPT, State.ACTIVE, [], False, WrongKeyLifecycleState),
        (_ENCRYPT, State.PRE_ACTIVE, [], True, WrongKeyLifecycleState),
        (_ENCRYPT, State.PRE_ACTIVE, [date_attr("Activation Date", NOW)], True, None),
        (_ENCRYPT, State.ACTIVE, [date_attr("Deactivation Date", NOW)], True,
         WrongKeyLifecycleState),
        (_ENCRYPT, State.ACTIVE, [date_attr("Protect Stop Date", NOW)], True,
         WrongKeyLifecycleState),
        (_DECRYPT, State.ACTIVE, [date_attr("Protect Stop Date", NOW)], True, None),
        (_DECRYPT, State.ACTIVE, [date_attr("Process Start Date", NOW + 1)], True,
         WrongKeyLifecycleState),
        (Use("Get Usage Allocation", protects=True), State.ACTIVE, [_mask(M.DECRYPT)], True,
         None),
    ],
)  # fmt: skip
def test_one_check_says_whether_a_key_may_do_this_now(
    use: Use, state: int, stored: list[Attribute], material: bool,
    error: type[Exception] | None,
) -> None:  # fmt: skip
    if error is None:
        check_usable(use, "u1", state, stored, NOW, has_material=material)
    else:
        with pytest.raises(error):
            check_usable(use, "u1", state, stored, NOW, has_material=material)
