"""Attribute operations on registry objects: Add, Modify, Delete, Set, Get, Get List.

How this works
--------------
The two dialects name an attribute instance differently. KMIP 1.x sends an
``Attribute`` structure (name, optional Attribute Index, value) and, for
Delete, an Attribute Name and Index; the index counts the instances of that
attribute in stored order. KMIP 2.x sends ``New Attribute`` / ``Current
Attribute`` (the attribute in its own tag) and, for Delete, an ``Attribute
Reference``; an instance is chosen by its current value. Each handler reads
whichever form the payload carries, turns it into "which instance of which
attribute" and edits the object's attribute list through
:func:`~krypton.core.engine.objects.mutate`.

Who may change what comes from :data:`~krypton.engine.attr_rules.RULES`:
server-maintained attributes are Attribute Read Only; a date the spec lets a
client move only in some states (Activation Date: Pre-Active) is Wrong Key
Lifecycle State outside them. Moving a date into the past makes the state
transition it implies (KMIP 3.22: Pre-Active → Active, Active → Deactivated).
A 1.x answer echoes the attribute added, modified or deleted; a 2.x answer
carries only the Unique Identifier.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from krypton.core.engine.objects import (
    CoreServices,
    check_names_free,
    load,
    mutate,
    name_value,
    rebuild,
    uid_payload,
)
from krypton.engine import server_attrs
from krypton.engine.attr_rules import Rule, check_type, rule_for
from krypton.engine.attr_view import (
    attribute_list_payload,
    attributes_payload,
    non_selector_fields,
    pick,
    selected_names,
)
from krypton.engine.object_errors import (
    AttributeInstanceNotFound,
    AttributeSingleValued,
    InvalidAttribute,
    MultiValuedAttribute,
)
from krypton.engine.objects import (
    Outcome,
    all_attributes,
    date_driven_state,
    numbered,
    payload_fields,
    request_uid,
    stored_attributes,
)
from krypton.errors import (
    AttributeNotFound,
    InvalidField,
    MissingField,
    OperationNotSupported,
    ReadOnlyAttribute,
    WrongKeyLifecycleState,
)
from krypton.kmip.attributes import Attribute, canonical_name, parse_reference, parse_v2, to_v1
from krypton.model.context import RequestContext
from krypton.model.registry import ObjectRecord
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

_S = ItemType.STRUCTURE


@dataclass(frozen=True, slots=True)
class Edit:
    """The object's new stored attributes, and the instance a 1.x answer echoes."""

    stored: list[Attribute]
    echo: Attribute | None = None


Editor = Callable[[ObjectRecord, list[Attribute]], Awaitable[Edit]]


def _one(container: Item, what: str) -> Attribute:
    if container.type is not _S or len(container.children) != 1:
        raise InvalidField(f"{what} must hold exactly one attribute")
    return parse_v2(container.children[0])


def _editable(name: str, rec: ObjectRecord) -> Rule:
    rule = rule_for(name)
    if rule is None:
        raise InvalidAttribute(f"attribute {name!r} is not managed by this server")
    if not rule.editable:
        raise ReadOnlyAttribute(f"attribute {name!r} cannot be changed by a client")
    if rule.states is not None and rec.state not in rule.states:
        raise WrongKeyLifecycleState(f"attribute {name!r} cannot be changed in this state")
    return rule


def _instances(stored: list[Attribute], name: str) -> list[int]:
    """Positions in ``stored`` of the instances of ``name``, in index order."""
    return [i for i, a in enumerate(stored) if a.name == name]


def _same(a: Item, b: Item) -> bool:
    return a.type is b.type and a.value == b.value


async def _names_ok(
    svc: CoreServices, rec: ObjectRecord, new: Attribute, replaced: Attribute | None = None
) -> None:
    if new.name != "Name":
        return
    text = name_value(new.value)
    if text is None:
        raise InvalidField("a Name needs a Name Value")
    keep = list(rec.names)
    old = name_value(replaced.value) if replaced is not None else None
    if old in keep:
        keep.remove(old)
    await check_names_free(svc, rec.tenant, [text], current=keep, skip=rec.uid)


async def _run(svc: CoreServices, ctx: RequestContext, f: dict[int, Item], edit: Editor) -> Outcome:
    uid = request_uid(f, ctx)
    assert uid is not None
    echoed: list[Attribute] = []

    async def change(rec: ObjectRecord) -> ObjectRecord:
        result = await edit(rec, stored_attributes(rec))
        echoed[:] = [] if result.echo is None else [result.echo]
        stored = server_attrs.follow_ups(result.stored)
        state = date_driven_state(rec.state, stored, ctx.now)
        return replace(rebuild(rec, stored, ctx.now), state=state)

    _, after, event = await mutate(svc, ctx, uid, change)
    extra = [] if ctx.version.v2 else [to_v1(e, with_index=e.index > 0) for e in echoed]
    return Outcome(uid_payload(after.uid, *extra), changes=(event,))


async def add_attribute(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = payload_fields(payload, "Add Attribute")
    if Tag.NEW_ATTRIBUTE in f:
        attr = _one(f[Tag.NEW_ATTRIBUTE], "New Attribute")
    elif Tag.ATTRIBUTE in f:
        if f[Tag.ATTRIBUTE].find(Tag.ATTRIBUTE_INDEX) is not None:
            raise InvalidField("Add Attribute: the new attribute must not carry an Attribute Index")
        attr = parse_v2(f[Tag.ATTRIBUTE])
    else:
        raise MissingField("Add Attribute: the attribute to add is missing")

    async def edit(rec: ObjectRecord, stored: list[Attribute]) -> Edit:
        rule = _editable(attr.name, rec)
        check_type(attr, rule)
        have = _instances(stored, attr.name)
        if have and not rule.multi:
            raise AttributeSingleValued(f"attribute {attr.name!r} already has a value")
        await _names_ok(svc, rec, attr)
        added = Attribute(attr.name, attr.value, len(have))
        return Edit([*stored, added], added)

    return await _run(svc, ctx, f, edit)


async def modify_attribute(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = payload_fields(payload, "Modify Attribute")
    current: Attribute | None = None
    index: int | None = None
    if Tag.NEW_ATTRIBUTE in f:
        new = _one(f[Tag.NEW_ATTRIBUTE], "New Attribute")
        if Tag.CURRENT_ATTRIBUTE in f:
            current = _one(f[Tag.CURRENT_ATTRIBUTE], "Current Attribute")
            if current.name != new.name:
                raise InvalidField("Modify Attribute: Current and New Attribute differ in name")
    elif Tag.ATTRIBUTE in f:
        new = parse_v2(f[Tag.ATTRIBUTE])
        index = new.index
    else:
        raise MissingField("Modify Attribute: the new attribute is missing")

    async def edit(rec: ObjectRecord, stored: list[Attribute]) -> Edit:
        rule = _editable(new.name, rec)
        check_type(new, rule)
        have = _instances(stored, new.name)
        if not have:
            raise AttributeNotFound(f"the object has no attribute {new.name!r}")
        if current is not None:
            match = [i for i in have if _same(stored[i].value, current.value)]
            if not match:
                raise AttributeInstanceNotFound(f"no instance of {new.name!r} has that value")
            pos = match[0]
        elif index is not None:
            if index >= len(have):
                raise AttributeInstanceNotFound(f"attribute {new.name!r} has no index {index}")
            pos = have[index]
        elif len(have) > 1:
            raise MultiValuedAttribute(f"attribute {new.name!r} has several instances")
        else:
            pos = have[0]
        await _names_ok(svc, rec, new, stored[pos])
        changed = Attribute(new.name, new.value, stored[pos].index)
        return Edit([*stored[:pos], changed, *stored[pos + 1 :]], changed)

    return await _run(svc, ctx, f, edit)


async def set_attribute(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    if not ctx.version.v2:
        raise OperationNotSupported("Set Attribute is a KMIP 2.x operation")
    f = payload_fields(payload, "Set Attribute")
    if Tag.NEW_ATTRIBUTE not in f:
        raise MissingField("Set Attribute: New Attribute is missing")
    new = _one(f[Tag.NEW_ATTRIBUTE], "New Attribute")

    async def edit(rec: ObjectRecord, stored: list[Attribute]) -> Edit:
        rule = _editable(new.name, rec)
        check_type(new, rule)
        have = _instances(stored, new.name)
        if len(have) > 1:
            raise MultiValuedAttribute(f"attribute {new.name!r} has several instances")
        await _names_ok(svc, rec, new, stored[have[0]] if have else None)
        if not have:
            return Edit([*stored, new], new)
        pos = have[0]
        return Edit([*stored[:pos], new, *stored[pos + 1 :]], new)

    return await _run(svc, ctx, f, edit)


def _delete_target(f: dict[int, Item]) -> tuple[str, int | None, Item | None]:
    """(name, 1.x index or None for every instance, 2.x current value or None)."""
    if Tag.CURRENT_ATTRIBUTE in f:
        current = _one(f[Tag.CURRENT_ATTRIBUTE], "Current Attribute")
        return current.name, None, current.value
    if Tag.ATTRIBUTE_REFERENCE in f:
        return canonical_name(parse_reference(f[Tag.ATTRIBUTE_REFERENCE])), None, None
    name = f.get(Tag.ATTRIBUTE_NAME)
    if name is None or not isinstance(name.value, str):
        raise MissingField("Delete Attribute: name the attribute to delete")
    index = f.get(Tag.ATTRIBUTE_INDEX)
    number = index.value if index is not None and isinstance(index.value, int) else 0
    return canonical_name(name.value), int(number), None


async def delete_attribute(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = payload_fields(payload, "Delete Attribute")
    name, index, value = _delete_target(f)

    async def edit(rec: ObjectRecord, stored: list[Attribute]) -> Edit:
        rule = rule_for(name)
        if rule is None:
            raise InvalidAttribute(f"attribute {name!r} is not managed by this server")
        if not (rule.editable and rule.deletable):
            raise ReadOnlyAttribute(f"attribute {name!r} cannot be deleted")
        have = _instances(stored, name)
        if not have:
            raise AttributeNotFound(f"the object has no attribute {name!r}")
        if value is not None:
            gone = [i for i in have if _same(stored[i].value, value)][:1]
        elif index is not None:
            gone = [have[index]] if 0 <= index < len(have) else []
        else:
            gone = have
        if not gone:
            raise AttributeInstanceNotFound(f"no such instance of attribute {name!r}")
        echo = stored[gone[0]]
        return Edit(numbered(a for i, a in enumerate(stored) if i not in gone), echo)

    return await _run(svc, ctx, f, edit)


async def get_attributes(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = non_selector_fields(payload)
    uid = request_uid(f, ctx)
    assert uid is not None
    rec = await load(svc, ctx, uid)
    attrs = pick(all_attributes(rec), selected_names(payload))
    return Outcome(attributes_payload(ctx, rec.uid, attrs))


async def get_attribute_list(
    svc: CoreServices, ctx: RequestContext, payload: Item | None
) -> Outcome:
    f = payload_fields(payload, "Get Attribute List")
    uid = request_uid(f, ctx)
    assert uid is not None
    rec = await load(svc, ctx, uid)
    return Outcome(attribute_list_payload(ctx, rec.uid, all_attributes(rec)))
