"""The OASIS documents the tests read, found through krypton's one setting each.

Tests that need them mark themselves with ``needs_cases`` / ``needs_spec``:
where the documents are absent only those tests skip, saying what is missing.
"""

from __future__ import annotations

import pytest

from krypton.conformance.oasis import (
    CASES_ENV,
    SPEC_ENV,
    missing_reason,
    spec_dir,
    test_cases_dir,
)

CASES = test_cases_dir()
SPEC = spec_dir()

needs_cases = pytest.mark.skipif(
    not (CASES / "v1.4").is_dir(),
    reason=missing_reason("the OASIS KMIP XML test cases", CASES, CASES_ENV),
)
needs_spec = pytest.mark.skipif(
    not (SPEC / "kmip-spec-v1.4-os.txt").is_file(),
    reason=missing_reason("the KMIP 1.4 and 2.1 specification text", SPEC, SPEC_ENV),
)
