"""Figures for the key engine and the vault (a measurement, not a test).

    python -m krypton.vault.bench [--dir DIR] [--rounds N]

Prints wrap/unwrap cost through the key ring, ``put`` latency with one
writer and with 16 concurrent writers, and how many commits (fsyncs) 200
concurrent puts take. ``--dir`` picks the filesystem the vault file lives on
(default: a temporary directory), which is what decides the fsync cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import timeit
from pathlib import Path

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import generate_key
from krypton.model.record import KeyRecord, new_uid
from krypton.vault.sqlite import Vault


def _record() -> KeyRecord:
    return KeyRecord(new_uid(), "demo", 2, 3, 256, 1, 1, os.urandom(65), b"\x42" * 48)


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _line(name: str, samples_ms: list[float]) -> str:
    return (
        f"{name:<26} mean {statistics.fmean(samples_ms):7.3f} ms   p50 "
        f"{_pct(samples_ms, 0.5):7.3f} ms   p99 {_pct(samples_ms, 0.99):7.3f} ms"
    )


def bench_wrap(number: int = 100_000) -> tuple[float, float]:
    """Microseconds per ring.wrap and ring.unwrap of a 256-bit key."""
    ring = KeyRing()
    ring.install("demo", 1, generate_key(256), L3State.ACTIVE, ring.lease_deadline(3600))
    l4 = generate_key(256)
    uid = new_uid()
    _, blob = ring.wrap("demo", uid, l4)
    w = min(timeit.repeat(lambda: ring.wrap("demo", uid, l4), number=number, repeat=3))
    u = min(timeit.repeat(lambda: ring.unwrap("demo", uid, 1, blob), number=number, repeat=3))
    return w / number * 1e6, u / number * 1e6


async def _bench_vault(vault: Vault, rounds: int) -> None:
    single: list[float] = []
    for _ in range(rounds):
        t = time.perf_counter()
        await vault.put(_record())
        single.append((time.perf_counter() - t) * 1e3)
    print(_line("put, 1 writer", single))

    concurrent: list[float] = []

    async def worker() -> None:
        for _ in range(max(1, rounds // 16) * 4):
            t = time.perf_counter()
            await vault.put(_record())
            concurrent.append((time.perf_counter() - t) * 1e3)

    c0, t0 = vault.commits, time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(16)))
    elapsed = time.perf_counter() - t0
    print(_line("put, 16 concurrent writers", concurrent))
    print(
        f"{'':<26} {len(concurrent) / elapsed:,.0f} puts/s, "
        f"{len(concurrent) / (vault.commits - c0):.1f} puts per commit"
    )

    per_burst = []
    for _ in range(5):
        c0 = vault.commits
        await asyncio.gather(*(vault.put(_record()) for _ in range(200)))
        per_burst.append(vault.commits - c0)
    print(f"{'commits per 200 puts':<26} {per_burst} (5 bursts of 200 concurrent puts)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m krypton.vault.bench")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the vault file")
    parser.add_argument("--rounds", type=int, default=400, help="sequential puts to time")
    args = parser.parse_args(argv)

    wrap_us, unwrap_us = bench_wrap()
    print(f"{'ring.wrap (256-bit L4)':<26} {wrap_us:7.2f} us")
    print(f"{'ring.unwrap (256-bit L4)':<26} {unwrap_us:7.2f} us")

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        vault = Vault.open(Path(tmp) / "bench.db")
        try:
            asyncio.run(_bench_vault(vault, args.rounds))
        finally:
            vault.close()


if __name__ == "__main__":
    main()
