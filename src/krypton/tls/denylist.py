"""A deny list of certificate serials and identities, reloaded when its file changes.

The file (``gateway.tls.deny_list`` / ``core.tls.deny_list``) holds one entry
per line; ``#`` starts a comment. An entry is either a certificate serial
number in hexadecimal (``0x`` prefix and ``:`` separators optional, any case)
or an identity (a SPIFFE ID, or a subject DN as the policy writes it)::

    # lost laptop
    5f:3a:09:1c:77:e2:4b:10
    spiffe://krypton.dev/tenant/demo/workload/old-batch-job

The file is looked at (``stat``) at most once per ``recheck`` seconds and
read again when its modification time, size or inode changed, so an operator
edits it in place (or replaces it) and the next connection sees the change. A
file that cannot be read keeps the last good list and logs why; a missing
file denies nothing (it may not have been created yet) and is logged once.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("krypton.tls")

RECHECK = 1.0
_HEX = re.compile(r"(0x)?[0-9a-f]+([:][0-9a-f]+)*", re.IGNORECASE)


def parse_deny_list(text: str) -> tuple[frozenset[int], frozenset[str]]:
    """The serials and identities listed in ``text``."""
    serials: set[int] = set()
    identities: set[str] = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if _HEX.fullmatch(line) and "=" not in line:
            serials.add(int(line.lower().removeprefix("0x").replace(":", ""), 16))
        else:
            identities.add(line)
    return frozenset(serials), frozenset(identities)


class DenyList:
    """Implements :class:`krypton.tls.identity.DenyCheck` over a file."""

    def __init__(
        self,
        path: Path,
        *,
        recheck: float = RECHECK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._recheck = recheck
        self._clock = clock
        self._checked = float("-inf")
        self._stamp: tuple[int, int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._identities: frozenset[str] = frozenset()
        self._missing_logged = False
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._checked < self._recheck:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self._missing_logged:
                log.warning("deny list %s: not found; denying nothing", self.path)
                self._missing_logged = True
            self._stamp, self._serials, self._identities = None, frozenset(), frozenset()
            return
        except OSError as e:
            log.error("deny list %s: cannot stat (%s); keeping the last list", self.path,
                      e.strerror)
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            log.error("deny list %s: cannot read (%s); keeping the last list", self.path,
                      type(e).__name__)
            return
        self._stamp, self._missing_logged = stamp, False
        self._serials, self._identities = parse_deny_list(text)
        log.info("deny list %s: %d serial(s), %d identit(y/ies)", self.path,
                 len(self._serials), len(self._identities))

    def denies(self, serial: int, identity: str) -> bool:
        self.refresh()
        return serial in self._serials or identity in self._identities
