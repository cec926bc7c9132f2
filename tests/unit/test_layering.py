"""Who may import whom (DESIGN.md §9), read off the source of ``src/krypton``.

Every import counts: at module level, inside a function, or under
``TYPE_CHECKING``. A package not in ``ALLOWED`` fails the test, so a new
package has to be placed in the layering before it can land.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "krypton"

# package -> the other krypton packages (or top-level modules) it may import.
_BASE = frozenset({"errors"})
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset({"ttlv"}),
    "ttlv": _BASE,
    "kmip": _BASE | {"ttlv"},
    "config": _BASE,
    "hardening": _BASE,
    "logs": _BASE,
    "model": _BASE | {"ttlv", "kmip"},
    "crypto": _BASE,
    "engine": _BASE | {"ttlv", "kmip", "model", "crypto"},
    "metrics": _BASE | {"ttlv", "kmip"},
    "admin": _BASE | {"config", "metrics", "tls"},
    "storage": _BASE | {"metrics"},
    "vault": _BASE | {"ttlv", "kmip", "model", "crypto", "storage", "metrics", "openbao"},
    "registry": _BASE | {"ttlv", "kmip", "model", "storage"},
    "tls": _BASE | {"config"},
    "pki": _BASE,
    "openbao": _BASE,
    "roots": _BASE | {"crypto", "config", "openbao"},
    "uplink": _BASE | {"ttlv", "kmip", "model", "crypto", "config", "tls", "logs"},
    "gateway": _BASE
    | {"ttlv", "kmip", "model", "crypto", "config", "tls", "engine", "vault", "uplink", "logs"}
    | {"metrics", "admin", "roots"},
    "core": _BASE
    | {"ttlv", "kmip", "model", "crypto", "config", "tls", "engine", "registry", "uplink", "logs"}
    | {"metrics", "admin", "roots"},
    "client": _BASE | {"ttlv", "kmip"},
    "conformance": _BASE | {"ttlv", "kmip", "client"},
    "bench": _BASE | {"ttlv", "kmip", "client", "config", "tls"},
    "stack": _BASE | {"config", "core", "gateway", "registry", "tls", "openbao"},
    "cli": _BASE
    | {"config", "core", "gateway", "registry", "vault", "tls", "stack", "bench", "conformance"}
    | {"crypto", "pki", "client", "hardening", "admin", "logs", "roots"},
    "__init__": frozenset(),
}


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``."""
    module = _module_name(path, root)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            else:
                yield node.lineno, node.module or ""


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "krypton":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def violations(root: Path = SRC) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if "v1" in path.relative_to(root).parts:  # generated gRPC stubs
            continue
        source = _package_of(_module_name(path, root))
        assert source is not None
        allowed = ALLOWED.get(source)
        if allowed is None:
            found.append(f"{path.relative_to(root)}: package {source!r} has no place in ALLOWED")
            continue
        for line, target in _imports(path, root):
            dest = _package_of(target)
            if dest is not None and dest != source and dest not in allowed:
                found.append(f"{path.relative_to(root)}:{line}: {source} may not import {target}")
    return found


def test_no_import_crosses_the_layering() -> None:
    assert violations() == []


def test_gateway_and_core_never_import_each_other() -> None:
    assert "core" not in ALLOWED["gateway"] and "gateway" not in ALLOWED["core"]
    sides = {"core", "gateway"}
    assert [p for p, allowed in ALLOWED.items() if sides <= allowed] == ["stack", "cli"]


def test_model_is_a_leaf() -> None:
    assert ALLOWED["model"] == {"errors", "ttlv", "kmip"}


@pytest.mark.parametrize(
    ("package", "line"),
    [
        ("engine", "from krypton.gateway.policy import Policy"),
        ("engine", "import krypton.vault.sqlite"),
        ("model", "from krypton.crypto.keyring import KeyRing"),
        ("uplink", "def f() -> None:\n    from krypton.gateway import app\n"),
        ("core", "from ..gateway import app"),
        ("nosuchpackage", "import os"),
    ],
)
def test_the_checker_catches_a_forbidden_import(tmp_path: Path, package: str, line: str) -> None:
    pkg = tmp_path / "krypton" / package
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(line + "\n")
    assert violations(tmp_path / "krypton")
