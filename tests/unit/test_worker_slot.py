"""``--workers N``: the stack is announced as up once, when every worker listens
(before: each worker announced itself, and a client told "up" by the first could
find only that worker listening: every connection went to it)."""

from __future__ import annotations

from pathlib import Path

from krypton.admin.peers import WorkerSlot


def test_only_the_worker_completing_the_set_announces(tmp_path: Path) -> None:
    slots = [WorkerSlot(n, tmp_path, 3) for n in range(3)]
    assert slots[2].mark_listening() is False  # 0 and 1 do not listen yet
    assert slots[0].mark_listening() is False
    assert slots[1].mark_listening() is True  # the last one in says "up"
    assert slots[1].mark_listening() is False  # a restarted worker: said once


def test_a_single_worker_announces_itself(tmp_path: Path) -> None:
    assert WorkerSlot(0, tmp_path, 1).mark_listening() is True
