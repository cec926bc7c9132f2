"""Pages for long-lived key material that a core dump leaves out and swap never sees.

How this works
--------------
The key ring's L3 keys live for the whole life of a process. :func:`slot`
hands out fixed-size slots (:data:`SLOT` bytes) cut from anonymous ``mmap``
pages that are marked ``MADV_DONTDUMP`` (no core dump, even one allowed for
debugging, holds them) and ``mlock``-ed (never written to swap) where the
platform and ``RLIMIT_MEMLOCK`` allow. Where a step is not available the slot
still works: the failure is counted (:func:`stats`) and logged once.

A page is cut into slots only as they are asked for, and a slot is never given
out twice: a wiped key's slot stays zero, so a view someone kept of it can only
ever show zeros, never a later key. The cost is :data:`SLOT` bytes per L3
version a process ever installs. Per-request keys (L4) do not come here: they
are short-lived, and an ``mmap`` per key would slow the hot path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import threading
from dataclasses import dataclass

log = logging.getLogger("krypton.crypto")

SLOT = 64  # bytes: any AES key, and a 512-bit HMAC key
PAGE = mmap.PAGESIZE


@dataclass(slots=True)
class _Stats:
    pages: int = 0
    slots: int = 0
    not_dontdump: int = 0
    not_locked: int = 0


_lock = threading.Lock()
_stats = _Stats()
_page: mmap.mmap | None = None
_next = PAGE  # the next free offset in _page; PAGE: a new page is needed
_pages: list[mmap.mmap] = []  # kept for the life of the process
_warned: set[str] = set()


def _libc_mlock() -> ctypes._NamedFuncPointer | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn: ctypes._NamedFuncPointer = libc.mlock
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    fn.restype = ctypes.c_int
    return fn


_mlock = _libc_mlock()


def _once(what: str, why: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning("key ring pages: %s (%s); counted from here on", what, why)


def _new_page() -> mmap.mmap:
    page = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    _stats.pages += 1
    dontdump = getattr(mmap, "MADV_DONTDUMP", None)
    try:
        if dontdump is None:
            raise OSError("MADV_DONTDUMP is not available on this platform")
        page.madvise(dontdump)
    except OSError as exc:
        _stats.not_dontdump += 1
        _once("not excluded from core dumps", str(exc))
    locked = False
    if _mlock is not None:
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        locked = _mlock(address, PAGE) == 0
    if not locked:
        _stats.not_locked += 1
        _once("not locked in memory", "mlock unavailable or over RLIMIT_MEMLOCK")
    _pages.append(page)
    return page


def slot(n: int) -> memoryview:
    """``n`` (≤ :data:`SLOT`) zero bytes on a no-dump, locked page."""
    if not 0 < n <= SLOT:
        raise ValueError(f"an arena slot holds 1 to {SLOT} bytes, not {n}")
    global _page, _next
    with _lock:
        if _page is None or _next + SLOT > PAGE:
            _page, _next = _new_page(), 0
        start = _next
        _next += SLOT
        _stats.slots += 1
        return memoryview(_page)[start : start + n]


def stats() -> tuple[int, int, int, int]:
    """(pages, slots, pages not excluded from dumps, pages not locked)."""
    with _lock:
        return _stats.pages, _stats.slots, _stats.not_dontdump, _stats.not_locked
