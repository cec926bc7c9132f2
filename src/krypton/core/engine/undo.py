"""Undo batches, the Core's side: journal a marked item, write the journal back.

The protocol is :mod:`krypton.engine.undo`; the gateway's side is
:mod:`krypton.gateway.engine.undo`. A batch's journal is opened by its first
marked item (:func:`begin`), so that an Undo can tell "nothing to write back"
from "the journal is gone" — the latter fails.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from krypton.core.engine.objects import CoreServices, load
from krypton.engine.objects import Outcome, payload_fields
from krypton.engine.undo import PRIVATE, is_marked, journal_token
from krypton.errors import GeneralFailure, InvalidMessage
from krypton.model.context import RequestContext
from krypton.model.registry import RegistryConflict, StateChange
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

log = logging.getLogger("krypton.undo")


def token(ctx: RequestContext, gateway: str | None, raw: Item) -> str | None:
    """The journal of the batch a marked item belongs to (None: not an Undo batch):
    the gateway's random token for the batch, under the gateway and the tenant."""
    if not is_marked(raw):
        return None
    batch = journal_token(raw)
    if batch is None:
        raise InvalidMessage("an Undo batch item without its journal token")
    return f"{gateway or ''}|{ctx.tenant}|{batch}"


def begin(svc: CoreServices, ctx: RequestContext, operation: int) -> None:
    """A marked item of the batch arrived: its journal exists from now on (until
    it ends, expires or is evicted), even if nothing in it changes."""
    if ctx.undo_token is not None and operation not in PRIVATE:
        svc.journal.open(ctx.undo_token)


def _journal_of(ctx: RequestContext) -> str:
    if ctx.undo_token is None:
        raise InvalidMessage("this operation is for a Krypton gateway only")
    return ctx.undo_token


async def undo(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    """Write the batch's journaled records back, newest first."""
    payload_fields(payload, "Undo")
    entries = svc.journal.take(_journal_of(ctx))
    if entries is None:
        log.warning("undo of request %s: the batch's journal is gone", ctx.request_id)
        raise GeneralFailure(
            "Undo: the batch's journal is gone (expired, evicted or the Core restarted); "
            "nothing was undone"
        )
    changes: list[StateChange] = []
    stuck: list[str] = []
    for entry in reversed(entries):
        current = await load(svc, ctx, entry.uid)
        if current.revision != entry.revision:
            stuck.append(entry.uid)  # changed by someone else since: leave it
            continue
        try:
            stored = await svc.registry.update_object(
                replace(entry.before, revision=current.revision)
            )
        except RegistryConflict:
            stuck.append(entry.uid)
            continue
        changes.append(StateChange(stored.tenant, stored.uid, stored.state, stored.revision))
    if stuck:
        log.warning("undo of request %s: %d object(s) changed since", ctx.request_id, len(stuck))
        raise GeneralFailure(f"Undo: {len(stuck)} object(s) changed since, left as they are")
    return Outcome(Item.structure(Tag.RESPONSE_PAYLOAD), changes=tuple(changes))


async def forget(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    payload_fields(payload, "Forget")
    svc.journal.take(_journal_of(ctx))
    return Outcome(Item.structure(Tag.RESPONSE_PAYLOAD))
