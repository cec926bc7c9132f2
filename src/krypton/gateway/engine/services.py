"""What the gateway's handlers share: their services and the tenant-checked key load."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from krypton.crypto.keyring import KeyRing
from krypton.engine.ciphers import Streams
from krypton.engine.objects import Outcome, owned
from krypton.errors import KryptonError
from krypton.model import record
from krypton.model.context import RequestContext
from krypton.model.ports import KeyStore, Upstream
from krypton.model.record import KeyRecord
from krypton.ttlv.item import Item


@dataclass(frozen=True, slots=True)
class ServerInfo:
    vendor: str = "OpenKCM Krypton"
    product: str = "Krypton Gateway"
    version: str = "0.1.0"


class NotLocal(Exception):
    """A handler cannot serve this request at the gateway: the Core must.

    ``fallback`` is the error to answer with when there is no Core to ask.
    """

    def __init__(self, fallback: KryptonError) -> None:
        super().__init__(fallback.message)
        self.fallback = fallback


@dataclass(frozen=True, slots=True)
class Services:
    store: KeyStore
    keyring: KeyRing
    info: ServerInfo = field(default_factory=ServerInfo)
    new_uid: Callable[[], str] = record.new_uid  # the one uid maker
    upstream: Upstream | None = None
    interop: bool = False  # the Interop operation (test servers only: KMIP 2.1 §6.1.26)
    # Open multi-part Encrypt/Decrypt streams: this gateway's own pool (its limits).
    streams: Streams = field(default_factory=Streams)


Handler = Callable[[Services, RequestContext, "Item | None"], Awaitable[Outcome]]


async def load(svc: Services, ctx: RequestContext, uid: str) -> KeyRecord:
    """A record of the caller's tenant; another tenant's key does not exist for them.
    A cache miss is read off the event loop (``KeyStore.read_through``)."""
    return owned(await svc.store.read_through(uid), ctx.tenant, uid)


async def load_through(svc: Services, ctx: RequestContext, uid: str) -> KeyRecord:
    """Like :func:`load`, asking the Core for a key made at another gateway."""
    rec = await svc.store.read_through(uid)
    if rec is None and svc.upstream is not None:
        rec = await svc.upstream.fetch(ctx.tenant, uid)
    return owned(rec, ctx.tenant, uid)
