#!/usr/bin/env python3
"""Issue 13's eight findings, measured on a live ``krypton dev``: the before/after table.

    .venv/bin/python scripts/exhaustion_figures.py --dir /tmp/figures            # this checkout
    .venv/bin/python scripts/exhaustion_figures.py --dir /tmp/figures-before \\
        --src /path/to/checkout-before-issue-13/src                             # an older one

Each finding gets a fresh ``krypton dev`` (``PYTHONPATH=--src``, so the code
measured is the one given; the client side is this checkout's) in a folder of
``--dir`` of its own, driven the way ``tests/e2e/test_exhaustion.py``,
``test_hygiene.py`` and ``test_undo_journal.py`` drive it (their helpers are
reused), and prints one markdown row per figure. Settings an older checkout
does not know are passed as environment variables it ignores. ``--only``
picks findings by number (``--only 1 5``).

1. amplification: the answer to 1,024 x RNG Retrieve(64 KiB); RSS growth while
   15 connections send it 20 times each and read nothing;
2. descriptors: legitimate connect + Discover Versions round trips (of 10, each
   within 3 s) under 1,100 bare TCP connections, ``prlimit --nofile=1024``;
3. memory before authentication: RSS growth under 500 half-sent 1 MiB
   messages, and whether another client is served meanwhile;
4. unknown identities: round trips of a known client among 1,000 idle
   connections of an identity the policy does not know (200 connections max);
5. shared pools: multi-part streams tenant demo gets and whether tenant other
   still gets one; another tenant's Get p50/p99 under a 4-connection flood of
   ~1 MiB messages (``scripts/flood_fairness.py``);
6. core dumps: ``Max core file size`` of ``/proc/PID/limits``;
7. file modes of the databases and their -wal/-shm files (umask 022);
8. Undo: two ``--workers`` whose alike batches overlap (what batch A's answer
   says of its Activate, and the key's state at the Core after it);
9. whole messages in hand: peak RSS growth while 48 connections each pipeline
   16 messages of ~1 MiB and read no answer (5 s), and another tenant's round
   trips meanwhile;
10. a burst: 400 connections of one client each send one ~66 KB message at
   once, then read: how many are answered (each read waits at most 15 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e import test_exhaustion as tx  # noqa: E402
from tests.e2e import test_undo_journal as tu  # noqa: E402
from tests.helpers.servers import DevServer, recv_message, rss_kib  # noqa: E402

from flood_fairness import measure as flood_measure  # noqa: E402
from flood_fairness import start_server, stop_server  # noqa: E402
from krypton.client.sync import KmipClient, tls_context  # noqa: E402
from krypton.kmip import client_messages as cm  # noqa: E402
from krypton.pki.dev import DevLayout  # noqa: E402
from krypton.ttlv.enums import CryptographicUsageMask, Operation, ResultStatus, State  # noqa: E402  # noqa: E402
from krypton.ttlv.item import Item  # noqa: E402
from krypton.ttlv.tags import Tag  # noqa: E402

Row = tuple[str, str]
DECRYPT = CryptographicUsageMask.DECRYPT


@contextlib.contextmanager
def server(
    base: Path,
    name: str,
    src: Path,
    env: dict[str, str] | None = None,
    *,
    nofile: int | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[DevServer]:
    root = base / name
    shutil.rmtree(root, ignore_errors=True)
    proc, port = start_server(root, src, known(src, env or {}), nofile=nofile, args=args)
    try:
        popen = cast("subprocess.Popen[str]", proc)
        yield DevServer(DevLayout(root), port, popen, root / "server.log")
    finally:
        stop_server(proc)


def known(src: Path, env: dict[str, str]) -> dict[str, str]:
    """The settings of ``env`` that the checkout at ``src`` has (an older one
    refuses a variable that names no setting)."""
    config = (src / "krypton" / "config.py").read_text()
    prefix = "KRYPTON_GATEWAY_LIMITS_"
    return {k: v for k, v in env.items() if f'"{k.removeprefix(prefix).lower()}"' in config}


def grown_mib(pid: int, before: int) -> str:
    return f"{(rss_kib(pid) - before) / 1024:.0f} MiB"


def served(times: list[float | None]) -> str:
    return f"{sum(t is not None for t in times)}/{len(times)}"


# -- the findings ------------------------------------------------------------------------
def amplification(base: Path, src: Path) -> list[Row]:
    with server(base, "1-amplification", src) as srv:
        message = tx.amplifier()
        with srv.connect(timeout=60) as sock:
            sock.sendall(message)
            answer = recv_message(sock)
        before = rss_kib(srv.proc.pid)
        held = []
        try:
            for _ in range(15):
                sock = srv.connect(timeout=30)
                sock.settimeout(0.05)
                with contextlib.suppress(TimeoutError, ssl.SSLWantWriteError):
                    for _ in range(20):
                        sock.sendall(message)
                held.append(sock)
            time.sleep(3.0)
            grown = grown_mib(srv.proc.pid, before)
        finally:
            for sock in held:
                sock.close()
    return [
        ("1 amplification: answer to 1,024 x RNG(64 KiB)", f"{len(answer):,} bytes"),
        ("1 amplification: RSS growth, 15 connections not reading (3 s)", grown),
    ]


def descriptors(base: Path, src: Path) -> list[Row]:
    env = {"KRYPTON_GATEWAY_LIMITS_HANDSHAKE_TIMEOUT": "30"}
    with (
        server(base, "2-descriptors", src, env, nofile=1024) as srv,
        tx.bare_connections(srv, 1100) as held,
    ):
        time.sleep(0.5)
        times = [tx.round_trip(srv) for _ in range(10)]
        n = len(held)
    return [(f"2 descriptors: round trips within 3 s under {n:,} bare connections", served(times))]


def half_sent(base: Path, src: Path) -> list[Row]:
    env = {
        "KRYPTON_GATEWAY_LIMITS_READ_TIMEOUT": "60",
        "KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS_PER_TENANT": "1000",
        "KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS_PER_IDENTITY": "1000",
    }
    with server(base, "3-half-sent", src, env) as srv:
        for _ in range(20):
            tx.round_trip(srv, "other-client")
        before = rss_kib(srv.proc.pid)
        with tx.half_sent(srv, 500, 1 << 20):
            time.sleep(1.0)
            times = [tx.round_trip(srv, "other-client") for _ in range(5)]
            grown = grown_mib(srv.proc.pid, before)
    return [
        ("3 memory: RSS growth under 500 half-sent 1 MiB messages", grown),
        ("3 memory: another client's round trips meanwhile", served(times)),
    ]


def unknown_identities(base: Path, src: Path) -> list[Row]:
    with server(base, "4-unknown", src, {"KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS": "200"}) as srv:
        _, times = tx.unknown_among_known(srv, 1000)
    return [("4 identities: known client's round trips among 1,000 unknown", served(times))]


def streams(base: Path, src: Path) -> list[Row]:
    with (
        server(base, "5-streams", src) as srv,
        srv.connect(timeout=30) as demo,
        srv.connect("other-client", timeout=30) as other,
    ):
        mine, theirs = tx.new_key(demo), tx.new_key(other)
        opened = 0
        for _ in range(1100):
            if tx.open_stream(demo, mine).status is not ResultStatus.SUCCESS:
                break
            opened += 1
        answer = tx.open_stream(other, theirs)
    got = "yes" if answer.status is ResultStatus.SUCCESS else f"no ({answer.message})"
    return [
        ("5 streams: multi-part streams tenant demo opens", f"{opened:,}"),
        ("5 streams: tenant other still gets one", got),
    ]


def flood(base: Path, src: Path) -> list[Row]:
    with server(base, "5-flood", src) as srv:
        result = flood_measure(srv.pki, srv.port, 10.0, 2.0, 4)
    alone, flooded = result["alone"], result["flooded"]
    return [
        (
            "5 flood: other tenant's Get p50 / p99, alone",
            f"{alone['p50']:.2f} / {alone['p99']:.2f} ms",
        ),
        (
            "5 flood: ... under 4 connections of ~1 MiB messages",
            f"{flooded['p50']:.1f} / {flooded['p99']:.1f} ms (max {flooded['max']:.0f} ms, "
            f"n={flooded['n']}, {flooded['stalled']:.0%} of the time in Gets over 100 ms; "
            f"flood {result['flood_answers_per_s']:.1f} answers/s)",
        ),
    ]


def core_dumps(base: Path, src: Path) -> list[Row]:
    with server(base, "6-core", src) as srv:
        line = next(
            ln for ln in Path(f"/proc/{srv.proc.pid}/limits").read_text().splitlines()
            if ln.startswith("Max core file size")
        )
    soft, hard = line.split()[4:6]
    return [("6 core dumps: Max core file size (soft / hard)", f"{soft} / {hard}")]


def file_modes(base: Path, src: Path) -> list[Row]:
    old = os.umask(0o022)
    try:
        with server(base, "7-modes", src) as srv:
            tx.round_trip(srv)
            with srv.connect() as sock:
                tx.new_key(sock)  # the vault and the registry written
            modes = []
            for name in ("gateway.db", "core.db"):
                for suffix in ("", "-wal", "-shm"):
                    path = srv.layout.root / (name + suffix)
                    if path.exists():
                        modes.append(f"{path.name} {stat.S_IMODE(path.stat().st_mode):o}")
    finally:
        os.umask(old)
    return [("7 file modes (umask 022)", ", ".join(modes))]


def undo(base: Path, src: Path) -> list[Row]:
    with server(base, "8-undo", src, args=("--workers", "2")) as srv:
        time.sleep(2.0)  # both workers up
        children = tu._children(srv.proc.pid)
        ctx = tls_context(srv.pki / "ca.pem", srv.pki / "client.pem", srv.pki / "client-key.pem")
        first: dict[int, KmipClient] = {}
        spare: list[KmipClient] = []
        while len(first) < 2 and len(spare) < 40:
            c = KmipClient(srv.host, srv.port, ctx, version=tu.V21, timeout=60.0).connect()
            owner = tu._server_side_owner(c, srv.port, children)
            (spare.append(c) if owner in first else first.__setitem__(owner, c))
        try:
            a, b = (first[p] for p in sorted(first))
            x, y = tu._encrypt_only_key(a), tu._encrypt_only_key(b)
            locates = [cm.batch_item(Operation.LOCATE, cm.payload())] * 1000

            def slow_failing_batch() -> list[Any]:
                check = cm.batch_item(
                    Operation.CHECK,
                    cm.payload(tu._uid(x), Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, DECRYPT)),
                )
                activate = cm.batch_item(Operation.ACTIVATE, cm.payload(tu._uid(x)))
                return tu._undo_batch(a, [activate, *locates, check])

            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(slow_failing_batch)
                until = time.monotonic() + 20.0
                while tu._core_states(srv.layout.root, [x]) != [State.ACTIVE]:
                    if time.monotonic() > until or pending.done():
                        break
                    time.sleep(0.01)
                activate_y = cm.batch_item(Operation.ACTIVATE, cm.payload(tu._uid(y)))
                tu._undo_batch(b, [activate_y, tu._get_attrs(y)])
                overlapped = not pending.done()
                answers = pending.result(timeout=120)
        finally:
            for c in (*first.values(), *spare):
                c.close()
        state = tu._core_states(srv.layout.root, [x])[0]
    said = answers[0].status.name + (f" ({answers[0].message})" if answers[0].message else "")
    names = {int(s): s.name for s in State}
    return [
        (
            "8 undo: batch A's Activate, answered" + ("" if overlapped else " (no overlap!)"),
            said,
        ),
        ("8 undo: the key's state at the Core after it", names.get(state or -1, str(state))),
    ]


def pipelined(base: Path, src: Path) -> list[Row]:
    env = {
        "KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS_PER_TENANT": "1000",
        "KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS_PER_IDENTITY": "1000",
    }
    with server(base, "9-pipelined", src, env) as srv:
        for _ in range(20):
            tx.round_trip(srv, "other-client")
        before = rss_kib(srv.proc.pid)
        with tx.pipelined_unread(srv, 48, tx.flood_message(), 16):
            peak = tx.peak_rss_kib(srv.proc.pid, 5.0, 1 << 40)
            times = [tx.round_trip(srv, "other-client") for _ in range(3)]
    return [
        ("9 in hand: peak RSS growth, 48 connections x 16 pipelined 1 MiB, none read",
         f"{(peak - before) / 1024:.0f} MiB"),
        ("9 in hand: another tenant's round trips meanwhile", served(times)),
    ]


def burst(base: Path, src: Path) -> list[Row]:
    env = {
        "KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS_PER_TENANT": "1000",
        "KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS_PER_IDENTITY": "1000",
        "KRYPTON_GATEWAY_LIMITS_READ_TIMEOUT": "60",
    }
    with server(base, "10-burst", src, env) as srv:
        started = time.monotonic()
        answered = tx.burst_answered(srv, 400, tx.medium_message(), 15.0)
        took = time.monotonic() - started
    return [("10 burst: 400 connections x one 66 KB message, answered",
             f"{answered}/400 in {took:.1f} s")]


FINDINGS: dict[int, list[Callable[[Path, Path], list[Row]]]] = {
    1: [amplification],
    2: [descriptors],
    3: [half_sent],
    4: [unknown_identities],
    5: [streams, flood],
    6: [core_dumps],
    7: [file_modes],
    8: [undo],
    9: [pipelined],
    10: [burst],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--dir", type=Path, required=True, help="a folder per finding is made in it")
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the server's PYTHONPATH")
    ap.add_argument("--only", type=int, nargs="*", default=sorted(FINDINGS))
    args = ap.parse_args(argv)
    print(f"| figure ({args.src}) | value |\n| --- | --- |", flush=True)
    for n in args.only:
        for figure in FINDINGS[n]:
            try:
                rows = figure(args.dir, args.src)
            except (Exception, SystemExit) as exc:  # one finding's failure is a figure too
                rows = [(f"{n} {figure.__name__}", f"failed: {exc!r}")]
            for name, value in rows:
                print(f"| {name} | {value} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
