"""Fuzz target: the fast-path scanners (Get, Create, Create + Get), against the generic path.

The property is fuzz/properties.py's ``check_fastpath``. From the repository root:
``python -m fuzz.fuzz_fastpath CORPUS_DIR -max_total_time=60`` (or ``make fuzz``).
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["krypton"]):
    from fuzz import properties

from fuzz.harness import main

if __name__ == "__main__":
    main(properties.check_fastpath, with_env=True)
