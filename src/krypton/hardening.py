"""Process hardening: no core dumps, so that no crash writes key material to disk.

How this works
--------------
A core dump is a copy of the process's memory: in a gateway or a Core that
means tenants' L3 keys, the master key, TLS private keys. :func:`harden` runs
first thing in every Krypton server process (``krypton gateway``, ``krypton
core``, ``krypton dev`` and each ``--workers`` worker) and

* sets ``RLIMIT_CORE`` to 0 (soft and hard: a child cannot raise it back), and
* clears the process's *dumpable* flag (``prctl(PR_SET_DUMPABLE, 0)``, Linux):
  the kernel then writes no core even through a pipe ``core_pattern`` (which
  ignores ``RLIMIT_CORE``), and other processes of the same user can neither
  ptrace it nor read ``/proc/PID/mem`` (those files become root's).

``allow_core_dumps = true`` (``[gateway]`` or ``[core]``) leaves both alone, for
debugging only, and says so in a WARNING. Where a call is not available (not
Linux, a sandbox refusing it) the process still starts, with a WARNING.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys

log = logging.getLogger("krypton.hardening")

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def _prctl() -> ctypes._NamedFuncPointer | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn: ctypes._NamedFuncPointer = libc.prctl
    fn.restype = ctypes.c_int
    return fn


def dumpable() -> bool | None:
    """This process's dumpable flag (None: not known on this platform)."""
    prctl = _prctl()
    if prctl is None:
        return None
    return bool(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def harden(*, allow_core_dumps: bool = False, who: str = "krypton") -> None:
    """Forbid core dumps of this process (see the module docstring)."""
    if allow_core_dumps:
        log.warning(
            "%s: core dumps ALLOWED (allow_core_dumps = true): a crash may write key "
            "material to disk; for debugging only", who,
        )  # fmt: skip
        return
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        log.warning("%s: could not set RLIMIT_CORE to 0: %s", who, exc)
    prctl = _prctl()
    if prctl is None or prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("%s: could not clear the dumpable flag (PR_SET_DUMPABLE)", who)
