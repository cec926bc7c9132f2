"""Where OASIS's KMIP documents are found: one setting each, no machine's path.

The KMIP specification text (for ``make tables``) and the OASIS XML test
cases (for ``krypton conformance`` and the conformance tests) are OASIS's
documents: they are not part of this repository. Each is found through one
environment variable, whose default is a folder beside the repository:

========================  ==================================
``KRYPTON_KMIP_SPEC``     ``<repo>/../shared/kmip-spec``
``KRYPTON_KMIP_CASES``    ``<repo>/../shared/kmip-test-cases``
========================  ==================================

A relative value is taken relative to the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CASES_ENV", "SPEC_ENV", "missing_reason", "repo_root", "spec_dir", "test_cases_dir"]

SPEC_ENV = "KRYPTON_KMIP_SPEC"
CASES_ENV = "KRYPTON_KMIP_CASES"


def repo_root() -> Path:
    """The checkout this module runs from (``src/krypton/conformance/`` → the root)."""
    return Path(__file__).resolve().parents[3]


def _setting(env: str, default: str) -> Path:
    value = os.environ.get(env)
    if value:
        return Path(value).expanduser()
    return repo_root().parent / "shared" / default


def spec_dir() -> Path:
    """The folder holding ``kmip-spec-v1.4-os.txt`` and ``kmip-spec-v2.1-os.txt``."""
    return _setting(SPEC_ENV, "kmip-spec")


def test_cases_dir() -> Path:
    """The folder holding the OASIS XML test cases (``v1.4/XML/mandatory/…``)."""
    return _setting(CASES_ENV, "kmip-test-cases")


def missing_reason(what: str, path: Path, env: str) -> str:
    """Why a test that needs an OASIS document is skipped."""
    return (
        f"{what} not found at {path}: set {env} to the folder holding them "
        "(OASIS publishes them with the KMIP specifications; they are not part of this repository)"
    )
