"""Load in the background for the multi-process tests: one step function run in a
loop on its own KMIP connection, in a thread, for the length of a ``with`` block.

The step records what it needs (keys made, errors, timings) in its own
object; the block's end stops the loop after the step under way and closes
the connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from krypton.client.sync import KmipClient


class Background:
    def __init__(self, client: KmipClient, step: Callable[[KmipClient], None],
                 name: str = "load") -> None:
        self.client = client
        self._step = step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name)

    def __enter__(self) -> Background:
        self.client.connect()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._step(self.client)
