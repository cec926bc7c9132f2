"""Authorisation policy: which identities belong to which tenant, and may do what.

The policy file is TOML, a list of rules::

    [[rule]]
    identity = "spiffe://krypton.dev/tenant/demo/"   # exact, or a prefix if it ends in / or *
    tenant = "demo"
    operations = ["*"]                               # or ["Create", "Get", "Get Attributes"]

An identity that ends with ``/`` is a prefix (the ``/`` included); one that
ends with ``*`` is a prefix without the ``*`` (so ``"*"`` alone matches
everyone). An exact rule beats any prefix; among prefixes the longest wins.
Operation names may be spelt as in the specification (``"Get Attributes"``,
``"Re-key"``), in CamelCase (``"GetAttributes"``) or as the enum member
(``"GET_ATTRIBUTES"``): case, spaces, ``-`` and ``_`` are ignored.

:meth:`Policy.lookup` caches its answer (also "no grant") per identity, so the
hot path pays one dict lookup; the cache is bounded and simply cleared when full.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krypton.errors import ConfigError
from krypton.model.grant import Grant
from krypton.ttlv.enums import Operation

CACHE_MAX = 65_536
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_RULE_KEYS = frozenset({"identity", "tenant", "operations"})


def _fold(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", name).upper()


_OPERATIONS: dict[str, Operation] = {_fold(op.name): op for op in Operation}


def operation_by_name(name: str) -> Operation | None:
    """``"Get Attributes"``, ``"GetAttributes"`` or ``"GET_ATTRIBUTES"`` → the Operation."""
    return _OPERATIONS.get(_fold(name))


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: str
    grant: Grant

    @property
    def is_prefix(self) -> bool:
        return self.pattern.endswith(("/", "*"))

    @property
    def prefix(self) -> str:
        return self.pattern.removesuffix("*")


class Policy:
    """Rules by exact identity, and prefixes longest first."""

    __slots__ = ("_cache", "_cache_max", "_exact", "_prefixes", "rules")

    def __init__(
        self, rules: Iterable[Rule], *, source: str = "policy", cache_max: int = CACHE_MAX
    ) -> None:
        """``cache_max``: how many identities :meth:`lookup` remembers before it
        forgets them all and starts again (a bound on memory, not an LRU)."""
        self.rules = tuple(rules)
        self._cache_max = cache_max
        self._exact: dict[str, Grant] = {}
        by_prefix: dict[str, Grant] = {}
        for rule in self.rules:
            table, key = (by_prefix, rule.prefix) if rule.is_prefix else (self._exact, rule.pattern)
            if key in table:
                raise ConfigError(f"{source}: identity {rule.pattern!r}: more than one rule")
            table[key] = rule.grant
        self._prefixes = sorted(by_prefix.items(), key=lambda kv: len(kv[0]), reverse=True)
        self._cache: dict[str, Grant | None] = {}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Read a policy file; any problem is a ConfigError naming the file and the rule."""
        file = Path(path)
        try:
            with file.open("rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{file}: policy file not found") from None
        except OSError as e:
            raise ConfigError(f"{file}: cannot read policy file: {e.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file}: not valid TOML: {e}") from None
        return cls.from_dict(doc, source=str(file))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, source: str = "policy") -> Policy:
        for key in doc:
            if key != "rule":
                raise ConfigError(f"{source}: {key}: unknown setting (expected [[rule]] tables)")
        rules = doc.get("rule", [])
        if not isinstance(rules, list):
            raise ConfigError(f"{source}: rule: must be an array of tables ([[rule]])")
        return cls(
            (_parse_rule(r, f"{source}: rule[{i}]") for i, r in enumerate(rules, 1)),
            source=source,
        )

    def lookup(self, identity: str) -> Grant | None:
        """The grant for ``identity``, or None when no rule matches."""
        try:
            return self._cache[identity]
        except KeyError:
            pass
        grant = self._exact.get(identity)
        if grant is None:
            grant = next((g for p, g in self._prefixes if identity.startswith(p)), None)
        if len(self._cache) >= self._cache_max:
            self._cache.clear()
        self._cache[identity] = grant
        return grant

    @property
    def cached(self) -> int:
        """How many identities (matched or not) :meth:`lookup` remembers now."""
        return len(self._cache)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(rule.grant.tenant for rule in self.rules)


def _parse_rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    for key in raw:
        if key not in _RULE_KEYS:
            raise ConfigError(f"{where}.{key}: unknown setting")
    missing = sorted(_RULE_KEYS - raw.keys())
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: required setting is missing")
    identity, tenant, operations = raw["identity"], raw["tenant"], raw["operations"]
    if not isinstance(identity, str) or not identity:
        raise ConfigError(f"{where}.identity: must be a non-empty string, got {identity!r}")
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise ConfigError(
            f"{where}.tenant: must be a tenant name (letters, digits, '.', '_', '-'), "
            f"got {tenant!r}"
        )
    return Rule(identity, Grant(tenant, _parse_operations(operations, f"{where}.operations")))


def _parse_operations(raw: Any, where: str) -> frozenset[int] | None:
    if not isinstance(raw, list) or not raw or not all(isinstance(n, str) for n in raw):
        raise ConfigError(
            f'{where}: must be ["*"] or a non-empty list of operation names, got {raw!r}'
        )
    if "*" in raw:
        return None
    ops: set[int] = set()
    for name in raw:
        op = operation_by_name(name)
        if op is None:
            raise ConfigError(f"{where}: unknown operation {name!r}")
        ops.add(int(op))
    return frozenset(ops)
