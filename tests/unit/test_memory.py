"""The memory a gateway may use, and the record cache's "auto" share of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from krypton.config import GatewayConfig, load_gateway_config
from krypton.gateway._memory import AUTO_FLOOR, auto_cache_bytes, available_memory
from krypton.gateway.app import cache_bytes
from krypton.pki.dev import init_dev_dir

GiB = 1 << 30


def _cgroup(root: Path, v2: str | None = None, v1: str | None = None) -> Path:
    if v2 is not None:
        (root / "memory.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "memory").mkdir()
        (root / "memory" / "memory.limit_in_bytes").write_text(v1 + "\n")
    return root


@pytest.mark.parametrize(
    ("v2", "v1", "want"),
    [
        (None, None, 16 * GiB),  # no cgroup files: physical memory
        ("max", None, 16 * GiB),  # cgroup v2 without a limit
        (str(512 << 20), None, 512 << 20),  # cgroup v2 limit
        (str(64 * GiB), None, 16 * GiB),  # a limit above the machine's memory
        (None, "9223372036854771712", 16 * GiB),  # cgroup v1's "no limit"
        (None, str(2 * GiB), 2 * GiB),  # cgroup v1 limit
        ("garbage", None, 16 * GiB),
    ],
)
def test_available_memory_is_the_smallest_limit(
    tmp_path: Path, v2: str | None, v1: str | None, want: int
) -> None:
    assert available_memory(_cgroup(tmp_path, v2, v1), physical=16 * GiB) == want


def test_the_machine_has_some_memory() -> None:
    assert available_memory() > 0


def test_auto_is_a_quarter_split_between_workers_with_a_floor() -> None:
    assert auto_cache_bytes(1, 16 * GiB) == 4 * GiB
    assert auto_cache_bytes(4, 16 * GiB) == 1 * GiB
    assert auto_cache_bytes(0, 16 * GiB) == 4 * GiB
    assert auto_cache_bytes(8, 64 << 20) == AUTO_FLOOR


def test_the_gateway_takes_the_setting_or_the_auto_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import krypton.gateway.app as app

    monkeypatch.setattr(app, "available_memory", lambda: 8 * GiB)
    base = load_gateway_config(init_dev_dir(tmp_path).gateway_config, env={})
    assert base.cache.bytes is None  # the default is "auto"
    assert cache_bytes(base) == 2 * GiB
    assert cache_bytes(_with(base, workers=2)) == 1 * GiB
    explicit = _with(base, cache=type(base.cache)(bytes=1 << 20))
    assert cache_bytes(explicit) == 1 << 20


def _with(cfg: GatewayConfig, **changes: object) -> GatewayConfig:
    from dataclasses import replace

    return replace(cfg, **changes)  # type: ignore[arg-type]
