"""How much memory this process may use, for the bounds that default to a share of it.

``[gateway.cache] bytes = "auto"`` (the default) bounds the record cache by a
quarter of it, split between the workers (each worker has its own cache),
the JVM's default heap rule: a gateway on a 16 GiB host caches ~4 GiB of
wrapped records (~5 million AES keys), one in a container limited to 512 MiB
caches 128 MiB (~170,000). The limit is the smallest of the machine's
physical memory and the control group's limit: cgroup v2's ``memory.max``
at the root of the container's cgroup filesystem, else cgroup v1's
``memory.limit_in_bytes`` ("no limit" there is a number near 2**63, which the
minimum with physical memory takes care of).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

CGROUP: Final = Path("/sys/fs/cgroup")
AUTO_SHARE: Final = 4  # the cache may take 1/AUTO_SHARE of the memory available
AUTO_FLOOR: Final = 16 * 1024 * 1024  # never less than this per worker


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_memory(cgroup: Path = CGROUP, physical: int | None = None) -> int:
    """Bytes this process may use: physical memory, or the cgroup's limit if lower."""
    limits = [physical_memory() if physical is None else physical]
    for path in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        limit = _read_limit(path)
        if limit is not None and limit > 0:
            limits.append(limit)
    return min(limits)


def auto_cache_bytes(workers: int, available: int) -> int:
    """Each worker's cache bound under ``bytes = "auto"``."""
    return max(AUTO_FLOOR, available // AUTO_SHARE // max(1, workers))
