"""What the fuzz targets hold true for any input bytes.

How this works
--------------
Each ``check_*`` function takes one input and raises (``AssertionError`` or
whatever escaped) when a property fails; returning normally means the input
is fine. The atheris harnesses (``fuzz/fuzz_*.py``) call them for every input
the fuzzer makes, and ``tests/unit/test_fuzz_corpus.py`` replays the committed
corpus through the same functions, so CI checks the corpus without atheris.

* :func:`check_ttlv` -- the decoder and the framer: any bytes decode or raise
  a :class:`~krypton.errors.KryptonError` (nothing else: no ``struct.error``,
  ``IndexError``, ``RecursionError``...); what decodes re-encodes to a tree
  that decodes the same; the framer cuts the same frames whichever way the
  stream is split; a decoded request either parses or raises a KryptonError.
* :func:`check_fastpath` -- the scanners never raise; what a scanner accepts,
  the decoder and the request parser accept with the same values (the fast
  path reads a strict subset); a learned shape reads exactly what the full
  scan reads; a dispatcher with the fast paths answers every non-Create
  input byte for byte as one without them (``tests/unit/test_fastget.py``'s
  differential property), and a Create + Get the fast path takes with an
  answer of the same size and items (its own key: ``tests/unit/test_fastcreateget.py``
  holds the two paths to the same bytes under fixed entropy).
* :func:`check_dispatch` -- the dispatcher answers every input, within
  :data:`DISPATCH_TIMEOUT`, with a message that decodes as a Response Message
  whose items each carry a Result Status; nothing reaches its catch-all for
  unexpected exceptions (logged as "internal error": treated as a failure).

The environment (:class:`Env`) is a real SQLite vault in a temporary
directory and a real key ring with two tenants, its keys made with
predictable identifiers (``k1``..``k5``) so that seeds can name them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import generate_key
from krypton.errors import KryptonError, UnsupportedVersion
from krypton.gateway.engine.dispatch import Dispatcher, Session
from krypton.gateway.engine.services import Services
from krypton.gateway.fast import fastcreate, fastcreateget, fastget
from krypton.gateway.fast.fastwire import VERSIONS, envelope
from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute
from krypton.kmip.messages import parse_request
from krypton.kmip.versions import ProtocolVersion
from krypton.model.grant import Grant
from krypton.ttlv.codec import DEFAULT_LIMITS, Limits, decode, encode
from krypton.ttlv.enums import Operation, ResultStatus
from krypton.ttlv.framing import Framer
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.vault.sqlite import Vault

__all__ = [
    "DISPATCH_TIMEOUT",
    "NOW",
    "TARGETS",
    "Env",
    "check_dispatch",
    "check_fastpath",
    "check_ttlv",
    "open_env",
]

NOW = 1_790_000_000
DISPATCH_TIMEOUT = 5.0
# Small limits as well as the defaults: the limit checks are code paths too.
_SMALL = Limits(max_message_size=4096, max_depth=4, max_items=40, max_batch_items=4)
# What the fast paths need of the decoder (krypton.gateway.engine.dispatch keeps the same).
_FAST_GET_LIMITS = Limits(max_message_size=4096, max_depth=3, max_items=14)
_FAST_CREATE_LIMITS = Limits(max_message_size=4096, max_depth=5, max_items=23)
_FAST_CREATEGET_LIMITS = Limits(max_message_size=4096, max_depth=5, max_items=28, max_batch_items=2)
_V14 = ProtocolVersion(1, 4)


# -- the decoder and the framer --------------------------------------------------
def _decoded(data: bytes, limits: Limits) -> Item | None:
    try:
        return decode(data, limits)
    except KryptonError:
        return None


def check_ttlv(data: bytes) -> None:
    small = _decoded(data, _SMALL)
    item = _decoded(data, DEFAULT_LIMITS)
    if small is not None:
        assert item == small, "a message within the small limits decodes differently"
    if item is not None:
        again = encode(item)
        assert decode(again) == item, "decode(encode(item)) != item"
        assert len(again) <= len(data), "re-encoding grew the message"
        with contextlib.suppress(KryptonError):
            parse_request(item, DEFAULT_LIMITS)
    _check_framer(data)


def _frames(data: bytes, cuts: list[int]) -> tuple[list[bytes], bool]:
    framer = Framer(_SMALL)
    frames: list[bytes] = []
    last = 0
    try:
        for cut in [*cuts, len(data)]:
            frames += framer.feed(data[last:cut])
            last = cut
    except KryptonError:
        return frames, True
    return frames, False


def _check_framer(data: bytes) -> None:
    whole, failed = _frames(data, [])
    joined = b"".join(whole)
    assert data.startswith(joined), "the framer's frames are not the stream's prefix"
    n = len(data)
    cuts = sorted({data[0] % (n + 1), n // 3, n // 2}) if n else []
    parts, failed_parts = _frames(data, cuts)
    assert failed == failed_parts, "the framer fails or not depending on how data arrives"
    if not failed:
        assert parts == whole, "the framer cuts other frames when data arrives in pieces"
    else:
        assert whole[: len(parts)] == parts or parts[: len(whole)] == whole


# -- the environment: a real vault and key ring ------------------------------------
def _counter(prefix: str) -> Callable[[], str]:
    n = iter(range(1, 1 << 62))
    return lambda: f"{prefix}{next(n)}"


@dataclass
class Env:
    fast: Dispatcher
    slow: Dispatcher
    vault: Vault
    loop: asyncio.AbstractEventLoop
    sessions: tuple[Session, ...]
    fast_get: fastget.FastGet = field(default_factory=fastget.FastGet)
    internal_errors: list[logging.LogRecord] = field(default_factory=list)

    def run(self, dispatcher: Dispatcher, frame: bytes) -> bytes:
        return self.loop.run_until_complete(
            asyncio.wait_for(dispatcher.handle(frame, self.session(frame)), DISPATCH_TIMEOUT)
        )

    def session(self, frame: bytes) -> Session:
        """The connection an input arrives on, by its length (so that replaying an
        input replays its session): tenant ``demo`` with every operation or with
        Get and Create only, or tenant ``other``."""
        return self.sessions[len(frame) % len(self.sessions)]


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


def _create(env: Env, length: int, *extra: Attribute, tenant: str = "demo") -> str:
    item = cm.create_item(_V14, [*cm.aes_attributes(length), *extra])
    msg = encode(cm.request_message(_V14, [item]))
    session = Session(f"spiffe://t/{tenant}", Grant(tenant, None), 1)
    out = env.loop.run_until_complete(env.slow.handle(msg, session))
    r = cm.parse_response(decode(out))
    assert r.items[0].payload is not None, r.items[0].message
    return cm.unique_identifier(r.items[0].payload)


def open_env(directory: Path) -> Env:
    """A fast and a generic dispatcher over one vault in ``directory``, one key ring
    (tenants ``demo`` and ``other``), one fixed clock; keys ``k1``..``k3`` (AES
    128/192/256), ``k4`` (Sensitive), ``k5`` (tenant ``other``)."""
    loop = asyncio.new_event_loop()
    vault = Vault.open(directory / "fuzz.db")
    ring = KeyRing()
    for tenant in ("demo", "other"):
        ring.install(tenant, 1, generate_key(256), L3State.ACTIVE, ring.lease_deadline(1 << 30))
    svc = Services(store=vault, keyring=ring, new_uid=_counter("k"))
    sessions = (
        Session("spiffe://t/demo", Grant("demo", None), 1),
        Session("spiffe://t/demo", Grant("demo", frozenset({Operation.GET, Operation.CREATE})), 2),
        Session("spiffe://t/other", Grant("other", None), 3),
    )
    env = Env(
        fast=Dispatcher(svc, clock=lambda: NOW),
        slow=Dispatcher(svc, fast=False, clock=lambda: NOW),
        vault=vault,
        loop=loop,
        sessions=sessions,
    )
    for length in (128, 192, 256):
        _create(env, length)
    _create(env, 256, Attribute("Sensitive", Item.boolean(Tag.SENSITIVE, True)))
    _create(env, 256, tenant="other")
    logging.getLogger("krypton").addHandler(_Collect(env.internal_errors))
    return env


def close_env(env: Env) -> None:
    for handler in list(logging.getLogger("krypton").handlers):
        if isinstance(handler, _Collect) and handler.into is env.internal_errors:
            logging.getLogger("krypton").removeHandler(handler)
    env.vault.close()
    env.loop.close()


def temp_env() -> Generator[Env, None, None]:
    """An :class:`Env` in a temporary directory, removed afterwards (a generator for
    fixtures and harnesses)."""
    with tempfile.TemporaryDirectory(prefix="krypton-fuzz-") as tmp:
        env = open_env(Path(tmp))
        try:
            yield env
        finally:
            close_env(env)


# -- the fast-path scanners ------------------------------------------------------
def check_fastpath(data: bytes, env: Env) -> None:
    envelope(data, Operation.GET)
    get = fastget.scan_in_full(data)
    assert env.fast_get.scan(data) == get, "a learned shape reads other values than the scan"
    create = fastcreate.scan(data)
    both = fastcreateget.scan(data)
    assert sum(x is not None for x in (get, create, both)) <= 1, "two fast paths accept one message"
    if both is not None:
        _check_createget(data, both, env)
    if get is not None:
        version = (get.major, get.minor)
        ri = _single(data, _FAST_GET_LIMITS, Operation.GET, version, get.batch_id)
        if ri is None:
            return
        uid = ri.payload.find(Tag.UNIQUE_IDENTIFIER)
        assert uid is not None
        assert uid.value == get.uid
        assert ri.max_response_size == get.max_response_size
    if create is not None:
        e = create.envelope
        ri = _single(data, _FAST_CREATE_LIMITS, Operation.CREATE, (e.major, e.minor), e.batch_id)
        if ri is None:
            return
        assert ri.max_response_size == e.max_response_size
        for tag, want in (
            (Tag.CRYPTOGRAPHIC_ALGORITHM, create.algorithm),
            (Tag.CRYPTOGRAPHIC_LENGTH, create.length),
        ):
            found = [i for i in _walk(ri.payload) if i.tag in (tag, Tag.ATTRIBUTE_VALUE)]
            assert any(i.value == want for i in found), "the scan read another attribute value"
    if get is None:
        return
    fast = env.fast.answer_now(data, env.session(data))
    slow = env.run(env.slow, data)
    assert fast is None or fast == slow, "the fast path answers other bytes than the generic path"
    assert env.run(env.fast, data) == slow, "the dispatchers answer a plain Get differently"
    _check_no_internal_error(env)


def _check_createget(data: bytes, both: fastcreateget.CreateGetRequest, env: Env) -> None:
    """What the Create + Get scan read is what the parser reads; the two dispatchers'
    answers have the same shape (each makes its own key: uid and key bytes differ)."""
    try:
        request = parse_request(decode(data, _FAST_CREATEGET_LIMITS), DEFAULT_LIMITS)
    except UnsupportedVersion:
        assert (both.major, both.minor) not in VERSIONS, "a supported version the parser refuses"
        return
    header = request.header
    assert (header.requested or header.version) == ProtocolVersion(both.major, both.minor)
    assert header.max_response_size == both.max_response_size
    assert [i.operation for i in request.items] == [Operation.CREATE, Operation.GET]
    assert [i.batch_id for i in request.items] == [both.create_id, both.get_id]
    assert request.items[1].payload.find(Tag.UNIQUE_IDENTIFIER) is None, "a Get of a uid"
    found = [i.value for i in _walk(request.items[0].payload)]
    assert both.algorithm in found, "the scan read another algorithm"
    assert both.length in found, "the scan read another length"
    fast, slow = _shape(env.run(env.fast, data)), _shape(env.run(env.slow, data))
    assert fast == slow, "the Create + Get fast path answers otherwise than the generic path"
    _check_no_internal_error(env)


def _shape(answer: bytes) -> tuple[object, ...]:
    """An answer less its key's uid and bytes: size, and per item operation, batch
    id, status, reason, message, and the Get's key length."""
    items = cm.parse_response(decode(answer)).items
    keys = [len(cm.key_material(i.payload)) if i.operation == Operation.GET and i.payload
            else None for i in items]  # fmt: skip
    return len(answer), keys, [(i.operation, i.batch_id, i.status, i.reason, i.message)
                               for i in items]  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Single:
    payload: Item
    max_response_size: int | None


def _single(
    data: bytes, limits: Limits, operation: int, version: tuple[int, int], batch_id: bytes | None
) -> _Single | None:
    """The one batch item of a request a scanner accepted, as the generic path reads
    it, checked against what the scanner read: the message must decode under the
    limits the fast path needs and parse -- unless its version is one the fast paths
    leave to the generic path, which refuses it (None then)."""
    try:
        request = parse_request(decode(data, limits), DEFAULT_LIMITS)
    except UnsupportedVersion:
        assert version not in VERSIONS, "a supported version the parser refuses"
        return None
    header = request.header
    assert (header.requested or header.version) == ProtocolVersion(*version)
    assert len(request.items) == 1
    item = request.items[0]
    assert item.operation == operation
    assert item.batch_id == batch_id
    return _Single(item.payload, header.max_response_size)


def _walk(item: Item) -> Iterator[Item]:
    yield item
    if item.type is ItemType.STRUCTURE:
        for child in item.children:
            yield from _walk(child)


# -- the dispatcher ------------------------------------------------------------------
def _check_no_internal_error(env: Env) -> None:
    if env.internal_errors:
        record = env.internal_errors[0]
        env.internal_errors.clear()
        cause = record.exc_info[1] if record.exc_info else None
        raise AssertionError(f"the dispatcher logged an error: {record.getMessage()}") from cause


def check_dispatch(data: bytes, env: Env) -> None:
    out = env.run(env.fast, data)
    _check_no_internal_error(env)
    response = decode(out)
    assert response.tag == Tag.RESPONSE_MESSAGE, "the answer is not a Response Message"
    parsed = cm.parse_response(response)
    assert parsed.items, "the answer has no batch item"
    assert all(isinstance(i.status, ResultStatus) for i in parsed.items)


TARGETS: dict[str, Callable[..., None]] = {
    "ttlv": check_ttlv,
    "fastpath": check_fastpath,
    "dispatch": check_dispatch,
}
