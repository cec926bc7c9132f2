"""Batch Error Continuation Option Undo, across the gateway and the Core: the protocol.

How this works
--------------
KMIP 1.4 §6.7 / 2.1 §9.2: with Undo, "if any operation in the request fails,
then the server SHALL undo all the previous operations". A batch is accepted
with Undo only when every item but the last can be undone or changes nothing
(:func:`check_batch`); any other batch is refused whole, before anything runs,
with Feature Not Supported. The last item needs no undoing: each operation is
atomic, so if it fails it changed nothing, and if it succeeds nothing after it
can fail.

* Changes nothing: the reading operations (:data:`READ_ONLY`).
* Kept back (:data:`KEPT_BACK`): a Create at the gateway writes its key to a
  batch-local :class:`PendingStore`. The keys reach the vault — durably, before
  the answer — only once the whole batch has succeeded; otherwise they are
  dropped and never existed. An operation the Core runs cannot see such a key,
  so a batch with one after a Create is refused.
* Journaled at the Core (:data:`JOURNALED`): the gateway relays each such item
  with a Krypton Message Extension (:func:`marked`); the Core then keeps, in
  memory, the object's record as it was before the item
  (:class:`~krypton.core.engine.journal.UndoJournal`; for Destroy the sealed
  material too), under the batch's journal token. If an item fails, the gateway
  sends the private operation :data:`UNDO` and the Core writes the records back,
  newest first, each only if nobody has changed the object since
  (compare-and-set on its revision); if the batch succeeds it sends
  :data:`FORGET` and the Core drops them.

The journal token is random (:func:`new_token`, 128 bits from ``os.urandom``),
made by the gateway for each Undo batch and carried in the marker: gateways
sharing one identity (``--workers``) or a restarted gateway never name another
batch's journal. A journal the Core no longer has (expired, evicted, a Core
restart) fails the Undo: nothing is claimed undone that was not.

The items undone are answered with Result Status Operation Undone. The private
operations are in KMIP's extension range (8XXXXXXX); a client that sends one, or
an item with the Krypton extension, is answered Operation Not Supported.
"""

from __future__ import annotations

import secrets

from krypton.ttlv.enums import Operation
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

UNDO = 0x8000_4B01  # gateway → Core: write the batch's journaled records back
FORGET = 0x8000_4B02  # gateway → Core: the batch succeeded, drop its journal
PRIVATE = frozenset((UNDO, FORGET))
VENDOR = "Krypton"

_O = Operation
READ_ONLY = frozenset((
    _O.GET, _O.GET_ATTRIBUTES, _O.GET_ATTRIBUTE_LIST, _O.LOCATE, _O.CHECK, _O.QUERY,
    _O.DISCOVER_VERSIONS, _O.RNG_RETRIEVE, _O.LOG, _O.INTEROP,
))  # fmt: skip
KEPT_BACK = frozenset((_O.CREATE,))
JOURNALED = frozenset((
    _O.ACTIVATE, _O.REVOKE, _O.DESTROY, _O.ADD_ATTRIBUTE, _O.MODIFY_ATTRIBUTE,
    _O.DELETE_ATTRIBUTE, _O.SET_ATTRIBUTE,
))  # fmt: skip


def new_token() -> str:
    """A journal token for one Undo batch: 128 random bits (``os.urandom``)."""
    return secrets.token_hex(16)


def _marker(token: str) -> Item:
    return Item.structure(
        Tag.MESSAGE_EXTENSION,
        Item.text(Tag.VENDOR_IDENTIFICATION, VENDOR),
        Item.boolean(Tag.CRITICALITY_INDICATOR, False),
        Item.structure(
            Tag.VENDOR_EXTENSION,
            Item.text(Tag.ATTRIBUTE_NAME, "undo journal"),
            Item.text(Tag.ATTRIBUTE_VALUE, token),
        ),
    )


def marked(raw: Item, token: str) -> Item:
    """A request batch item with the extension that asks the Core to journal it
    under ``token``."""
    return Item(raw.tag, raw.type, (*raw.children, _marker(token)))


def is_marked(raw: Item) -> bool:
    ext = raw.find(Tag.MESSAGE_EXTENSION)
    vendor = ext.find(Tag.VENDOR_IDENTIFICATION) if ext is not None else None
    return vendor is not None and vendor.value == VENDOR


def journal_token(raw: Item) -> str | None:
    """The journal token a marked item carries (None: none, or not a text)."""
    ext = raw.find(Tag.MESSAGE_EXTENSION)
    vendor_ext = ext.find(Tag.VENDOR_EXTENSION) if ext is not None else None
    value = vendor_ext.find(Tag.ATTRIBUTE_VALUE) if vendor_ext is not None else None
    if value is None or not isinstance(value.value, str) or not value.value:
        return None
    return value.value


def private_item(operation: int, token: str) -> Item:
    return marked(
        Item.structure(
            Tag.BATCH_ITEM,
            Item.enum(Tag.OPERATION, operation),
            Item.structure(Tag.REQUEST_PAYLOAD),
        ),
        token,
    )
