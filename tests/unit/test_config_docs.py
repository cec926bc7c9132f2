"""docs/configuration.md is generated from the configuration schema
(scripts/gen_config_docs.py): the committed file must be what the generator
writes now, and it must list every setting with its environment variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from krypton.config import describe

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"


def _generate(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_committed_file_is_what_the_generator_writes(tmp_path: Path) -> None:
    out = tmp_path / "configuration.md"
    assert _generate(out).returncode == 0
    assert DOC.read_text(encoding="utf-8") == out.read_text(encoding="utf-8"), (
        "docs/configuration.md is stale: run `make config-docs`")


def test_every_setting_is_listed_with_its_variable_and_default() -> None:
    text = DOC.read_text(encoding="utf-8")
    for root in ("gateway", "core"):
        for info in describe(root):
            section = info.name.rsplit(".", 1)[0]
            assert f"## `[{section}]`" in text
            row = next(line for line in text.splitlines() if f"`{info.env}`" in line)
            assert row.startswith(f"| `{info.field}` | `")
    limit = "`KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS`"
    assert f"| `max_connections` | `int` | `1024` | {limit} |" in text
    assert "| `cert` | `Path \\| None` | (none) | `KRYPTON_CORE_TLS_CERT` |" in text


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(DOC.read_text(encoding="utf-8").replace("KRYPTON_CORE_NAME", "X"))
    done = _generate(stale, "--check")
    assert done.returncode == 1 and "make config-docs" in done.stderr
    assert _generate(tmp_path / "fresh.md").returncode == 0
    assert _generate(tmp_path / "fresh.md", "--check").returncode == 0
