"""Runs one property under atheris (libFuzzer): ``main(check, with_env)``.

A harness module imports :mod:`fuzz.properties` inside
``atheris.instrument_imports`` (so that krypton's code is instrumented for
coverage) and hands its check to :func:`main`, which passes the command line
to libFuzzer (``-max_total_time``, ``-merge=1``, a corpus directory...).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Generator

import atheris

from fuzz.mutator import mutate
from fuzz.properties import Env, temp_env


def _mutator(data: bytes, max_size: int, seed: int) -> bytes:
    return mutate(data, max_size, seed, atheris.Mutate)


def _argv() -> list[str]:
    """``sys.argv`` with, as its first word, the command that runs this harness again:
    libFuzzer re-runs ``argv[0]`` through the shell for ``-merge=1`` and ``-fork``,
    and a harness run with ``python -m`` is not a program of its own."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        return sys.argv
    return [f"{shlex.quote(sys.executable)} -m {spec.name}", *sys.argv[1:]]


def main(check: Callable[..., None], with_env: bool) -> None:
    envs: Generator[Env, None, None] | None = temp_env() if with_env else None
    env = next(envs) if envs is not None else None

    def one_input(data: bytes) -> None:
        if env is None:
            check(data)
        else:
            check(data, env)

    atheris.Setup(_argv(), one_input, custom_mutator=_mutator)
    try:
        atheris.Fuzz()
    finally:
        if envs is not None:
            envs.close()
