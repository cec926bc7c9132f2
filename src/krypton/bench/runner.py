"""The parent side of ``krypton bench``: setup, worker processes, live progress, merge.

How this works
--------------
1. Setup: for ``get``, ``mixed`` and ``connect`` one key is created with the
   blocking client (unless ``--uid`` names one), so every worker Gets the
   same identifier -- or, for ``get`` with ``--keys-file``, every request
   Gets an identifier of that file drawn at random; ``create`` with
   ``--keys-file`` appends the identifier of every key it made to the file
   (the load phase). Then every request is encoded once (:func:`build_plan`).
2. ``--procs`` worker processes are forked, each with its share of the
   connections (and of ``--count``); each says ``ready`` once connected.
   ``go`` is sent to all at once.
3. While they run, the parent only reads their pipes: every tick a worker
   sends its counters and its new latency samples; once a second the parent
   prints ops/s, errors and p50/p99 of the last second to stderr.
4. At the end the samples (``array('q')``, nanoseconds) are concatenated and
   the CPU used is added up: the workers' own (``os.times`` in each, over
   the measured window), and -- with ``--server-pid`` -- the server's
   process tree and the whole host's, read from ``/proc``, so a reader can
   tell whether the generator or something else was the bottleneck.
"""

from __future__ import annotations

import multiprocessing
import os
import ssl
import sys
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from pathlib import Path
from typing import TextIO

from krypton.bench.wire import build_plan, read_keys
from krypton.bench.worker import Target, WorkerResult, WorkerSpec, client_context, worker_main
from krypton.client.sync import DEFAULT_VERSION, KmipClient
from krypton.errors import ConfigError, GeneralFailure, KryptonError
from krypton.kmip.versions import ProtocolVersion

_NEEDS_KEY = ("get", "mixed", "connect")


@dataclass(frozen=True, slots=True)
class BenchConfig:
    target: Target
    op: str = "get"
    ratio: tuple[int, int] = (9, 1)
    version: ProtocolVersion = DEFAULT_VERSION
    connections: int = 1
    procs: int = 1
    duration: float | None = 10.0
    count: int | None = None
    warmup: float = 0.0
    resume: bool = False
    uid: str | None = None
    length: int = 256
    full_check: bool = False
    timeout: float = 10.0
    server_pids: tuple[int, ...] = ()
    progress: bool = True
    keys_file: Path | None = None  # get: draw from it; create: append to it


@dataclass(slots=True)
class Outcome:
    config: BenchConfig
    uid: str | None = None
    keys: int = 0  # get --keys-file: how many identifiers it drew from
    created: list[str] = field(default_factory=list)  # create --keys-file
    samples: array[int] = field(default_factory=lambda: array("q"))
    kinds: array[int] = field(default_factory=lambda: array("B"))
    errors: dict[int, int] = field(default_factory=dict)
    warm_ops: int = 0
    warm_errors: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0
    generator_cpu: float = 0.0
    parent_cpu: float = 0.0
    server_cpu: float | None = None
    host_busy: float | None = None
    window: float = 0.0
    resumed: int = 0
    full: int = 0
    tls: dict[str, str] = field(default_factory=dict)


# -- /proc readings ---------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            out += [int(c) for c in text.split()]
    except OSError:
        pass
    return out


def process_tree_cpu(pids: tuple[int, ...]) -> float | None:
    """User + system seconds of ``pids`` and all their descendants (Linux), or None."""
    total, seen, todo = 0.0, set(), list(pids)
    found = False
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / _TICK
        found = True
        todo += _children(pid)
    return total if found else None


def host_cpu() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole host since boot, or None off Linux."""
    try:
        line = Path("/proc/stat").read_text().split("\n", 1)[0]
    except OSError:
        return None
    v = [int(x) for x in line.split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])
    return (total - idle) / _TICK, total / _TICK


# -- setup --------------------------------------------------------------------------
def make_context(target: Target) -> ssl.SSLContext:
    for what, path in (("--ca", target.ca), ("--cert", target.cert), ("--key", target.key)):
        if not Path(path).is_file():
            raise ConfigError(f"{what}: file not found: {path} (see --pki)")
    try:
        return client_context(target)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"cannot load the client TLS files ({target.ca}, {target.cert}, {target.key}): {e}"
        ) from None


def create_key(cfg: BenchConfig) -> str:
    t = cfg.target
    ctx = make_context(t)
    try:
        with KmipClient(
            t.host, t.port, ctx, version=cfg.version, timeout=cfg.timeout,
            server_hostname=t.server_name,
        ) as client:  # fmt: skip
            return client.create(cfg.length)
    except KryptonError as e:
        raise GeneralFailure(f"setup: Create of the key to Get failed: {e.message}") from None
    except (OSError, ssl.SSLError) as e:
        raise GeneralFailure(f"setup: cannot reach {t.host}:{t.port}: {e}") from None


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def worker_specs(
    cfg: BenchConfig, uid: str | None, keys: list[str] | None = None
) -> list[WorkerSpec]:
    plan = build_plan(cfg.op, cfg.version, uid, ratio=cfg.ratio, length=cfg.length, keys=keys)
    procs = max(1, min(cfg.procs, cfg.connections))
    quotas = split(cfg.count, cfg.connections) if cfg.count is not None else None
    specs, first = [], 0
    for n in split(cfg.connections, procs):
        specs.append(
            WorkerSpec(
                target=cfg.target,
                plan=plan,
                connect=cfg.op == "connect",
                resume=cfg.resume,
                connections=n,
                first=first,
                quotas=tuple(quotas[first : first + n]) if quotas is not None else None,
                duration=cfg.duration if cfg.count is None else None,
                warmup=cfg.warmup,
                full_check=cfg.full_check,
                timeout=cfg.timeout,
                record=cfg.keys_file is not None and cfg.op == "create",
            )
        )
        first += n
    return specs


# -- progress -------------------------------------------------------------------------
class _Progress:
    def __init__(self, cfg: BenchConfig, out: TextIO) -> None:
        self.out, self.enabled = out, cfg.progress
        self.tty = out.isatty()
        self.start = self.last = time.monotonic()
        self.last_ops = 0
        self.window = array("q")
        self.dirty = False

    def line(self, ops: int, warm_ops: int, errors: int, now: float) -> None:
        done = ops + warm_ops
        rate = (done - self.last_ops) / max(now - self.last, 1e-9)
        phase = "warmup " if ops == 0 and warm_ops else ""
        if self.window:
            w = sorted(self.window)
            p50, p99 = w[len(w) // 2] / 1e6, w[min(len(w) - 1, int(len(w) * 0.99))] / 1e6
            lat = f"p50 {p50:.3f} ms  p99 {p99:.3f} ms"
        else:
            lat = "p50 -  p99 -"
        text = (
            f"[{now - self.start:6.1f}s] {phase}{rate:9,.0f} ops/s  ops {ops:,}  "
            f"errors {errors:,}  {lat} (last {now - self.last:.1f}s)"
        )
        self.last, self.last_ops = now, done
        self.window = array("q")
        if self.enabled:
            if self.tty:
                self.out.write("\r\x1b[2K" + text)
                self.dirty = True
            else:
                self.out.write(text + "\n")
            self.out.flush()

    def close(self) -> None:
        if self.enabled and self.dirty:
            self.out.write("\n")
            self.out.flush()


# -- run ----------------------------------------------------------------------------
def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _recv(pipe: Pipe) -> tuple[object, ...]:
    msg = pipe.recv()
    if not isinstance(msg, tuple) or not msg:
        raise GeneralFailure(f"bench worker sent {type(msg).__name__}")
    return msg


def _keys(cfg: BenchConfig) -> list[str] | None:
    """The identifiers a ``get`` draws from (``--keys-file``), else None."""
    if cfg.keys_file is None or cfg.op == "create":
        return None
    if cfg.op != "get":
        raise ConfigError("--keys-file: a recorded key list is for --op get (and create)")
    try:
        keys = read_keys(cfg.keys_file)
    except OSError as exc:
        raise ConfigError(f"--keys-file: cannot read {cfg.keys_file}: {exc.strerror}") from None
    if not keys:
        raise ConfigError(f"--keys-file: {cfg.keys_file} holds no key identifiers")
    return keys


def run_bench(cfg: BenchConfig, out: TextIO = sys.stderr) -> Outcome:
    keys = _keys(cfg)
    uid = cfg.uid
    if uid is None and keys is None and cfg.op in _NEEDS_KEY:
        uid = create_key(cfg)
    else:
        make_context(cfg.target)
    specs = worker_specs(cfg, uid, keys)
    outcome = Outcome(cfg, uid, keys=len(keys or ()))
    mp = _context()
    procs, pipes = [], []
    parent_cpu0 = time.process_time()
    try:
        for spec in specs:
            mine, theirs = mp.Pipe()
            proc = mp.Process(target=worker_main, args=(spec, theirs), daemon=True)  # type: ignore[attr-defined]
            proc.start()
            theirs.close()
            procs.append(proc)
            pipes.append(mine)
        _gather_ready(cfg, pipes, outcome)
        for pipe in pipes:
            pipe.send("go")
        _collect(cfg, pipes, outcome, out)
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for pipe in pipes:
            pipe.close()
    outcome.parent_cpu = time.process_time() - parent_cpu0
    return outcome


def _gather_ready(cfg: BenchConfig, pipes: list[Pipe], outcome: Outcome) -> None:
    deadline = time.monotonic() + cfg.timeout * (1 + cfg.connections) + 10
    waiting = set(range(len(pipes)))
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise GeneralFailure("bench workers did not connect in time")
        for pipe in wait([pipes[i] for i in waiting], timeout=left):
            assert isinstance(pipe, Pipe)
            i = pipes.index(pipe)
            try:
                msg = _recv(pipe)
            except EOFError:
                raise GeneralFailure("a bench worker exited before it was ready") from None
            if msg[0] == "fail":
                raise GeneralFailure(str(msg[1]))
            if msg[0] == "ready":
                waiting.discard(i)
                if not outcome.tls and isinstance(msg[1], dict):
                    outcome.tls = dict(msg[1])


def _collect(cfg: BenchConfig, pipes: list[Pipe], outcome: Outcome, out: TextIO) -> None:
    progress = _Progress(cfg, out)
    n = len(pipes)
    ops, warm, errs = [0] * n, [0] * n, [0] * n
    results: list[WorkerResult | None] = [None] * n
    chunks: list[list[bytes]] = [[] for _ in range(n)]
    measure_at = time.monotonic() + cfg.warmup
    server0 = host0 = None
    started = False
    next_line = time.monotonic() + 1.0
    live = set(range(n))
    try:
        while live:
            now = time.monotonic()
            if not started and now >= measure_at:
                started = True
                server0 = process_tree_cpu(cfg.server_pids) if cfg.server_pids else None
                host0 = host_cpu()
                measure_at = now
            timeout = max(0.0, (next_line if started else min(next_line, measure_at)) - now)
            for pipe in wait([pipes[i] for i in live], timeout=timeout):
                assert isinstance(pipe, Pipe)
                i = pipes.index(pipe)
                try:
                    msg = _recv(pipe)
                except EOFError:
                    live.discard(i)
                    if results[i] is None:
                        raise GeneralFailure("a bench worker died during the run") from None
                    continue
                kind = msg[0]
                if kind == "tick":
                    _, o, e, w, we, data = msg
                    assert isinstance(data, bytes)
                    ops[i], warm[i], errs[i] = int(o), int(w), int(e) + int(we)  # type: ignore[call-overload]
                    chunks[i].append(data)
                    progress.window.frombytes(data)
                elif kind == "done":
                    result = msg[1]
                    assert isinstance(result, WorkerResult)
                    results[i] = result
                    chunks[i].append(result.samples)
                    live.discard(i)
                elif kind == "fail":
                    raise GeneralFailure(str(msg[1]))
            now = time.monotonic()
            if now >= next_line:
                progress.line(sum(ops), sum(warm), sum(errs), now)
                next_line = now + 1.0
    finally:
        progress.close()
    end = time.monotonic()
    if cfg.server_pids and server0 is not None:
        server1 = process_tree_cpu(cfg.server_pids)
        outcome.server_cpu = server1 - server0 if server1 is not None else None
    host1 = host_cpu()
    if host0 is not None and host1 is not None:
        outcome.host_busy = host1[0] - host0[0]
    outcome.window = end - measure_at
    _merge(outcome, results, chunks)


def _merge(
    outcome: Outcome, results: list[WorkerResult | None], chunks: list[list[bytes]]
) -> None:
    """Per worker, in the same order: its samples (tick by tick) and their kinds."""
    done: list[WorkerResult] = []
    for r, parts in zip(results, chunks, strict=True):
        if r is None:
            continue
        done.append(r)
        for data in parts:
            outcome.samples.frombytes(data)
        outcome.kinds.frombytes(r.kinds)
        for code, k in r.errors.items():
            outcome.errors[code] = outcome.errors.get(code, 0) + k
        for code, k in r.warm_errors.items():
            outcome.warm_errors[code] = outcome.warm_errors.get(code, 0) + k
        outcome.warm_ops += r.warm_ops
        outcome.generator_cpu += r.cpu
        outcome.resumed += r.resumed
        outcome.full += r.full
        outcome.created += r.uids
        if not outcome.tls and r.tls:
            outcome.tls = dict(r.tls)
    if done:
        outcome.elapsed = max(r.t_end for r in done) - min(r.t_start for r in done)
