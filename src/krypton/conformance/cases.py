"""Finding OASIS test-case files and telling their profile and version from the path.

A case is named by its file stem, ``<PROFILE>-<M|O>-<rest>-<version>``:
``SKLC-M-1-21`` (profile SKLC, mandatory, KMIP 2.1), ``CS-BC-M-GCM-2-14``
(profile CS-BC, mandatory, the GCM variant, KMIP 1.4). Its *version folder*
is the nearest ancestor directory named like ``v1.4`` (``v1.0`` holds the
1.0, 1.1 and 1.2 cases), so ``--cases kmip-test-cases`` (the whole folder) finds
every version and the report groups them per folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CLAIMED_PROFILES", "ERRATA", "Case", "discover", "select"]

# The profiles Krypton claims (see docs/conformance.md).
CLAIMED_PROFILES = ("BL", "SKLC", "SKFF", "OMOS", "CS-BC", "CS-RNG", "QS", "AX")

# Published cases that no correct server can pass, and why (shown after their FAIL line).
ERRATA: dict[str, str] = {
    "CS-BC-M-6-13": "its expected cipher text is not AES-128-ECB of the data under the "
    "registered key (d9bcce11..., as CS-BC-M-6-14 corrects it)",
}

_NAME = re.compile(r"^(?P<profile>.+?)-(?P<kind>[MO])-(?P<rest>.+)$")
_VERSION_DIR = re.compile(r"^v\d+\.\d+$")
_SUFFIX = re.compile(r"-(\d)(\d)$")


@dataclass(frozen=True, slots=True)
class Case:
    path: Path
    name: str
    profile: str
    mandatory: bool
    version_dir: str
    protocol: str

    @property
    def suite(self) -> str:
        """The profile plus its variant: ``CS-BC-M``, ``CS-BC-M-GCM``."""
        return "-".join(t for t in self.name.split("-") if not t.isdigit())


def _natural(text: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def case_of(path: Path) -> Case:
    name = path.stem
    m = _NAME.match(name)
    profile = m.group("profile") if m else name
    mandatory = bool(m and m.group("kind") == "M")
    version_dir = next((p.name for p in path.resolve().parents if _VERSION_DIR.match(p.name)), "")
    suffix = _SUFFIX.search(name)
    protocol = f"{suffix.group(1)}.{suffix.group(2)}" if suffix else ""
    return Case(path, name, profile, mandatory, version_dir, protocol)


def discover(paths: Iterable[Path]) -> list[Case]:
    """Every ``*.xml`` case under ``paths`` (files or folders), in a stable natural order."""
    files: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            for f in path.rglob("*.xml"):
                files[f] = None
        elif path.is_file():
            files[path] = None
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    cases = [case_of(f) for f in files]
    return sorted(cases, key=lambda c: (_natural(c.version_dir), _natural(c.name)))


def select(
    cases: Sequence[Case],
    *,
    profiles: Sequence[str] = (),
    mandatory: bool = False,
    version_dirs: Sequence[str] = (),
) -> list[Case]:
    """The cases of these profiles (``CS-BC`` or a variant ``CS-BC-M-GCM``), folders."""
    out = []
    for case in cases:
        if mandatory and not case.mandatory:
            continue
        if version_dirs and case.version_dir not in version_dirs:
            continue
        if profiles and not any(
            p in (case.profile, case.suite) or case.name.startswith(p + "-") for p in profiles
        ):
            continue
        out.append(case)
    return out
