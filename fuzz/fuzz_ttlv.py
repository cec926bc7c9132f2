"""Fuzz target: the TTLV decoder and framer (see fuzz/properties.py).

Run from the repository root: ``python -m fuzz.fuzz_ttlv fuzz/corpus/ttlv -max_total_time=60``
(or ``make fuzz``).
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["krypton"]):
    from fuzz import properties

from fuzz.harness import main

if __name__ == "__main__":
    main(properties.check_ttlv, with_env=False)
