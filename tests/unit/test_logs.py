"""The shared log setup (krypton.logs): text and JSON lines, pid and worker on
every line, and the rate-limited logger's budget (fake clock)."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest

from krypton import logs
from krypton.config import load_core_config, load_gateway_config
from krypton.errors import ConfigError
from krypton.pki.dev import init_dev_dir


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_text_lines_carry_pid_and_worker() -> None:
    out = io.StringIO()
    logs.setup("info", "text", worker="3", stream=out)
    logging.getLogger("krypton.test").info("hello %s", "there")
    logging.getLogger("krypton.test").debug("below the level")
    (line,) = _lines(out)
    assert f" INFO pid={os.getpid()} worker=3 krypton.test: hello there" in line
    assert line[:4].isdigit() and "T" in line.split()[0] and line.split()[0].endswith("Z")


def test_json_lines_parse_with_the_fields() -> None:
    out = io.StringIO()
    logs.setup("debug", "json", stream=out)
    log = logging.getLogger("krypton.test")
    log.debug("one", extra={"peer": "127.0.0.1:4000", "identity": "spiffe://td/x"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("two")
    first, second = (json.loads(line) for line in _lines(out))
    assert first["message"] == "one" and first["level"] == "DEBUG"
    assert first["logger"] == "krypton.test" and first["pid"] == os.getpid()
    assert first["worker"] == logs.SINGLE
    assert first["peer"] == "127.0.0.1:4000" and first["identity"] == "spiffe://td/x"
    assert "ValueError: boom" in second["exception"] and "peer" not in second


def test_setup_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="log_format"):
        logs.setup("info", "xml")


def test_setup_replaces_the_handlers() -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.setup("info", "text", stream=first)
    logs.setup("info", "text", worker="1", stream=second)
    logging.getLogger("krypton.test").warning("once")
    assert first.getvalue() == "" and len(_lines(second)) == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_keeps_a_budget_per_kind() -> None:
    out = io.StringIO()
    logs.setup("info", "json", stream=out)
    clock = FakeClock()
    limited = logs.RateLimitedLog(logging.getLogger("krypton.test"), per=10.0, burst=2,
                                  clock=clock)
    written = [limited.warning("denied", "denied %d", n, peer="p") for n in range(5)]
    assert written == [True, True, False, False, False]
    assert limited.suppressed("denied") == 3
    assert limited.warning("refused", "another kind")  # its own budget
    clock.now += 10.0
    assert limited.warning("denied", "denied again")
    rows = [json.loads(line) for line in _lines(out)]
    assert [r["message"] for r in rows] == [
        "denied 0", "denied 1", "another kind", "denied again (3 similar line(s) suppressed)"]
    assert rows[-1]["suppressed"] == 3 and rows[-1]["event"] == "denied"
    assert rows[0]["peer"] == "p" and "suppressed" not in rows[0]
    assert limited.suppressed("denied") == 0


def test_log_settings_for_both_processes(tmp_path: Path) -> None:
    layout = init_dev_dir(tmp_path)
    gw = load_gateway_config(layout.gateway_config, {"KRYPTON_GATEWAY_LOG_FORMAT": "JSON"})
    assert gw.log_format == "json"
    core = load_core_config(layout.core_config, {"KRYPTON_CORE_LOG_LEVEL": "debug"})
    assert core.log_level == "debug" and core.log_format == "text"
    with pytest.raises(ConfigError, match=r"^core\.log_format: must be one of 'text', 'json'"):
        load_core_config(layout.core_config, {"KRYPTON_CORE_LOG_FORMAT": "xml"})
