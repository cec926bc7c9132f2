"""Every ``[gateway.limits]`` setting is documented where an operator looks: the
README's limits table, with its default first in its row, and the example
``gateway.toml`` that ``krypton dev init`` writes, set to that default."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from krypton.config import LimitsConfig
from krypton.pki.dev import GATEWAY_TOML

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULTS = {f.name: f.default for f in dataclasses.fields(LimitsConfig)}


def readme_limits() -> dict[str, str]:
    """The README's limits table: setting -> its default cell."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Limits", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (.+?) \|$", section, re.MULTILINE)
    return dict(rows)


def renderings(value: object) -> set[str]:
    """How a default may be written: 1048576, 1,048,576, 1 MiB; 30.0 as 30 s."""
    if isinstance(value, float):
        return {f"{value:g} s"}
    assert isinstance(value, int)
    out = {str(value), f"{value:,}"}
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if value and not value % (1 << shift):
            out.add(f"{value >> shift} {unit}")
    return out


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_in_the_readme_with_its_default(name: str) -> None:
    table = readme_limits()
    assert name in table, f"README's limits table has no row for {name}"
    cell = table[name]
    said = [r for r in renderings(DEFAULTS[name]) if re.match(re.escape(r) + r"(\D|$)", cell)]
    assert said, f"{name}: the row should start with its default {DEFAULTS[name]!r}: {cell!r}"


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_in_the_example_gateway_toml(name: str) -> None:
    limits = tomllib.loads(GATEWAY_TOML)["gateway"]["limits"]
    assert name in limits, f"the example gateway.toml does not set {name}"
    assert limits[name] == DEFAULTS[name]


def test_the_table_names_only_settings() -> None:
    assert set(readme_limits()) <= set(DEFAULTS)
