"""The committed fuzz corpus (fuzz/corpus/<target>) replayed through the fuzz properties.

The atheris harnesses check fuzz/properties.py's properties for every input
they make; this runs the same checks over the minimised corpus they leave
behind, so CI holds the decoder, the fast-path scanners and the dispatcher to
them without atheris (``make fuzz`` runs the fuzzer itself).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fuzz.properties import Env, check_dispatch, check_fastpath, check_ttlv, close_env, open_env

from krypton.gateway.fast import fastcreateget
from krypton.kmip import client_messages as cm
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.codec import encode

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
TARGETS = ("ttlv", "fastpath", "dispatch")


def _inputs(target: str) -> list[Path]:
    return sorted((CORPUS / target).iterdir())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = open_env(tmp_path_factory.mktemp("fuzz"))
    try:
        yield e
    finally:
        close_env(e)


@pytest.mark.parametrize("target", TARGETS)
def test_the_corpus_is_committed_and_small(target: str) -> None:
    files = _inputs(target)
    assert len(files) >= 20, f"fuzz/corpus/{target} is missing or nearly empty"
    assert sum(f.stat().st_size for f in files) < 2 << 20


def test_ttlv_corpus(env: Env) -> None:
    for path in _inputs("ttlv"):
        check_ttlv(path.read_bytes())


def test_fastpath_corpus(env: Env) -> None:
    for path in _inputs("fastpath"):
        check_fastpath(path.read_bytes(), env)


def test_dispatch_corpus(env: Env) -> None:
    for path in _inputs("dispatch"):
        check_dispatch(path.read_bytes(), env)


def test_the_properties_can_fail(env: Env) -> None:
    """The dispatcher check is not vacuous: an error the dispatcher logs (its
    catch-all for unexpected exceptions) fails it, even when the answer is fine."""
    env.internal_errors.append(_record())
    with pytest.raises(AssertionError, match="logged an error"):
        check_dispatch(b"", env)
    assert not env.internal_errors


def test_the_createget_property_can_fail(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Create + Get fast path that answered with another batch id than the generic
    path's fails the fastpath check; the real one passes it."""
    v = ProtocolVersion(1, 4)
    frame = encode(
        cm.request_message(
            v, [cm.create_item(v, cm.aes_attributes(), b"\x01"), cm.get_item(None, b"\x02")]
        )
    )
    assert fastcreateget.scan(frame) is not None
    check_fastpath(frame, env)
    real = fastcreateget.FastCreateGet.answer

    async def wrong(self: fastcreateget.FastCreateGet, *args: Any) -> tuple[bytes, float] | None:
        found = await real(self, *args)
        assert found is not None
        out, stored = found
        bid = b"\x42\x00\x93\x08\x00\x00\x00\x01\x02"  # the Get's Unique Batch Item ID
        assert out.count(bid) == 1
        return out.replace(bid, bid[:-1] + b"\x03"), stored

    monkeypatch.setattr(fastcreateget.FastCreateGet, "answer", wrong)
    with pytest.raises(AssertionError, match="Create \\+ Get fast path answers otherwise"):
        check_fastpath(frame, env)


def _record() -> logging.LogRecord:
    return logging.LogRecord("krypton.dispatch", logging.ERROR, __file__, 1, "boom", None, None)
