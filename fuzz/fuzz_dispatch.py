"""Fuzz target: the dispatcher over a real SQLite vault and key ring.

The property is fuzz/properties.py's ``check_dispatch``. From the repository root:
``python -m fuzz.fuzz_dispatch CORPUS_DIR -max_total_time=60`` (or ``make fuzz``).
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["krypton"]):
    from fuzz import properties

from fuzz.harness import main

if __name__ == "__main__":
    main(properties.check_dispatch, with_env=True)
