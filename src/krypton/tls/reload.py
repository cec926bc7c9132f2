"""Live rotation: watch where the TLS material comes from, and swap it in when it changes.

How this works
--------------
A :class:`Reloader` holds the current :class:`~krypton.tls.material.Material`
and a *source*: the files of a ``[*.tls]`` section (:class:`FileSource`) or the
SPIFFE Workload API (:class:`krypton.tls.workload.WorkloadSource`). A source
has a cheap ``stamp()`` (the files' inode, size and modification time; the
Workload API's update count) and a ``load()`` that reads and checks the
material (:func:`krypton.tls.material.check`).

:meth:`Reloader.poll` is one step, driven by a clock (the asyncio task
:meth:`Reloader.run` calls it; unit tests call it with a fake clock). Every
``interval`` seconds it compares the stamp; a new stamp, or :meth:`request`
(SIGHUP), makes it load. Material that loads is handed to each subscriber in
two steps: every ``prepare`` first (build the new SSL context, which may still
fail), then every ``commit`` (one attribute swap each), so either all of the
process uses the new material or none does. Material equal to the current one
is not applied again.

Material that does not load — a file caught half-written, a key that does not
match its certificate, a bundle without a CA — is tried again ``retries``
times, ``retry_delay`` seconds apart (a writer usually finishes within
that); if it is still bad, the failure is logged, counted (:attr:`failures`,
and ``on_failure`` is called with the reason, e.g. to bump a metric) and the
current material stays in use until the stamp changes again or the next
request.

A new context is made for every reload: open connections keep the context
they were made with, the next handshake gets the new one, and nothing of the
old one (its CAs, its session-ticket key) carries over — a trust bundle is
replaced, never added to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Hashable
from typing import Protocol

from krypton.config import TLSConfig
from krypton.errors import ConfigError
from krypton.tls.material import Material, read_files

log = logging.getLogger("krypton.tls")

Commit = Callable[[], None]
Prepare = Callable[[Material], Commit]
FailureHook = Callable[[str], None]

DEFAULT_RETRIES = 3
DEFAULT_RETRY_DELAY = 0.5


class Source(Protocol):
    """Where TLS material comes from."""

    @property
    def name(self) -> str:
        """What logs call it (``gateway.tls files``)."""
        ...

    def stamp(self) -> Hashable:
        """Changes whenever new material may be there."""
        ...

    def load(self) -> Material:
        """The material now; ConfigError when it is not usable."""
        ...


def _stamp(path: os.PathLike[str] | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class FileSource:
    """The ``cert``, ``key`` and ``ca`` files of a TLS section (symbolic links followed,
    so a Kubernetes secret's ``..data`` swap is seen)."""

    def __init__(self, tls: TLSConfig, setting: str) -> None:
        self.tls = tls
        self.setting = setting

    @property
    def name(self) -> str:
        return f"{self.setting} files"

    def stamp(self) -> Hashable:
        return tuple(_stamp(p) for p in (self.tls.cert, self.tls.key, self.tls.ca))

    def load(self) -> Material:
        return read_files(self.tls, self.setting)


class Reloader:
    """The current TLS material of one process side, kept fresh (module docstring)."""

    def __init__(
        self,
        source: Source,
        *,
        interval: float = 1.0,
        retries: int = DEFAULT_RETRIES,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        clock: Callable[[], float] = time.monotonic,
        on_failure: FailureHook | None = None,
    ) -> None:
        if interval <= 0 or retry_delay < 0 or retries < 0:
            raise ValueError("interval must be > 0, retries and retry_delay ≥ 0")
        self.source = source
        self.interval = interval
        self.retries = retries
        self.retry_delay = retry_delay
        self.clock = clock
        self.on_failure = on_failure
        self.failures = 0  # material that stayed bad after its retries
        self.reloads = 0  # material applied after the first
        self.last_error = ""
        self._current: Material | None = None
        self._subscribers: list[Prepare] = []
        self._stamp: Hashable = None
        self._next_look = 0.0
        self._due: float | None = None  # when to (re)try loading
        self._attempt = 0
        self._wake: asyncio.Event | None = None

    # -- state -----------------------------------------------------------------------
    @property
    def current(self) -> Material:
        if self._current is None:
            raise RuntimeError("the reloader has not loaded its first material")
        return self._current

    @property
    def loaded(self) -> Material | None:
        """The material in use, None before the first load."""
        return self._current

    def certificate_expiry(self) -> float:
        """When the certificate in use expires (seconds since the epoch)."""
        return self.current.not_after

    def subscribe(self, prepare: Prepare) -> None:
        """``prepare(material)`` builds what the new material needs and returns the
        commit that puts it in use; it may raise ConfigError (nothing is swapped)."""
        self._subscribers.append(prepare)

    # -- driving ---------------------------------------------------------------------
    def load_first(self) -> Material:
        """The material at start-up (a ConfigError here stops the process)."""
        self._stamp = self.source.stamp()
        self._current = self.source.load()
        self._next_look = self.clock() + self.interval
        return self._current

    def request(self) -> None:
        """Load now (SIGHUP), whatever the stamp says."""
        self._due, self._attempt = self.clock(), 0
        if self._wake is not None:
            self._wake.set()

    def poll(self, now: float | None = None) -> bool:
        """One step at ``now``: look at the stamp when due, load when asked to. True
        when new material was put in use."""
        if now is None:
            now = self.clock()
        if now >= self._next_look:
            self._next_look = now + self.interval
            stamp = self.source.stamp()
            if stamp != self._stamp:
                self._stamp, self._due, self._attempt = stamp, now, 0
        if self._due is None or now < self._due:
            return False
        return self._try(now)

    def _try(self, now: float) -> bool:
        try:
            material = self.source.load()
            if self._current is not None and material.digest == self._current.digest:
                self._due = None
                log.info("%s: TLS material unchanged", self.source.name)
                return False
            commits = [prepare(material) for prepare in self._subscribers]
        except ConfigError as e:
            self._attempt += 1
            self.last_error = str(e)
            if self._attempt <= self.retries:
                self._due = now + self.retry_delay
                log.info("%s: new TLS material not usable yet (%s); trying again",
                         self.source.name, str(e))
                return False
            self._due, self._attempt = None, 0
            self.failures += 1
            log.error("%s: new TLS material refused, the current one stays in use: %s",
                      self.source.name, str(e))
            if self.on_failure is not None:
                try:
                    self.on_failure(str(e))
                except Exception:
                    log.exception("%s: the reload-failure hook failed", self.source.name)
            return False
        for commit in commits:
            commit()
        self._current, self._due, self._attempt = material, None, 0
        self.reloads += 1
        self.last_error = ""
        log.info("%s: new TLS material in use (certificate serial %x, valid until %s)",
                 self.source.name, material.serial,
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(material.not_after)))
        return True

    def _sleep_for(self) -> float:
        now = self.clock()
        until = self._next_look if self._due is None else min(self._next_look, self._due)
        return max(0.01, until - now)

    async def run(self) -> None:
        """Poll until cancelled (one task per process side)."""
        self._wake = asyncio.Event()
        while True:
            try:
                self.poll()
            except Exception:  # a bug must not end the watch
                log.exception("%s: TLS reload failed", self.source.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sleep_for())
            self._wake.clear()
