"""Policy: exact and prefix matching, operations, errors in the file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from krypton.errors import ConfigError
from krypton.gateway.policy import Policy, operation_by_name
from krypton.model.grant import Grant
from krypton.pki import init_dev_dir
from krypton.ttlv.enums import Operation

DEMO = "spiffe://krypton.dev/tenant/demo/workload/client"

POLICY = """
[[rule]]
identity = "spiffe://krypton.dev/tenant/demo/"
tenant = "demo"
operations = ["*"]

[[rule]]
identity = "spiffe://krypton.dev/tenant/demo/workload/reader"
tenant = "demo"
operations = ["Get", "GetAttributes", "Get Attribute List"]

[[rule]]
identity = "spiffe://krypton.dev/tenant/demo/batch/*"
tenant = "demo-batch"
operations = ["Create"]

[[rule]]
identity = "spiffe://krypton.dev/tenant/"
tenant = "fallback"
operations = ["Query"]

[[rule]]
identity = "CN=legacy,O=Acme"
tenant = "acme"
operations = ["*", "Get"]
"""


@pytest.fixture
def policy() -> Policy:
    return Policy.from_dict(tomllib.loads(POLICY))


def from_text(text: str) -> Policy:
    return Policy.from_dict(tomllib.loads(text), source="p.toml")


def test_prefix_match(policy: Policy) -> None:
    assert policy.lookup(DEMO) == Grant("demo", None)


def test_exact_beats_prefix(policy: Policy) -> None:
    grant = policy.lookup("spiffe://krypton.dev/tenant/demo/workload/reader")
    assert grant == Grant("demo", frozenset({
        Operation.GET, Operation.GET_ATTRIBUTES, Operation.GET_ATTRIBUTE_LIST}))
    assert grant.allows(Operation.GET)
    assert not grant.allows(Operation.CREATE)
    assert not grant.allows(Operation.DESTROY)


def test_exact_rule_does_not_act_as_prefix(policy: Policy) -> None:
    grant = policy.lookup("spiffe://krypton.dev/tenant/demo/workload/reader2")
    assert grant == Grant("demo", None)


def test_longest_prefix_wins(policy: Policy) -> None:
    star = policy.lookup("spiffe://krypton.dev/tenant/demo/batch/job1")
    assert star == Grant("demo-batch", frozenset({Operation.CREATE}))
    assert policy.lookup("spiffe://krypton.dev/tenant/zzz/workload/a") == Grant(
        "fallback", frozenset({Operation.QUERY}))


def test_unknown_identity_gets_nothing(policy: Policy) -> None:
    assert policy.lookup("spiffe://other.dev/tenant/demo/workload/client") is None
    assert policy.lookup("spiffe://krypton.dev/tenant") is None
    assert policy.lookup("CN=legacy,O=Acme,C=DE") is None
    assert policy.lookup("") is None


def test_subject_identity_and_star_operations(policy: Policy) -> None:
    grant = policy.lookup("CN=legacy,O=Acme")
    assert grant == Grant("acme", None)
    assert grant.allows(Operation.DESTROY)


def test_star_alone_matches_everyone() -> None:
    p = from_text('[[rule]]\nidentity = "*"\ntenant = "t"\noperations = ["Query"]\n')
    assert p.lookup("anything") == Grant("t", frozenset({Operation.QUERY}))


def test_lookup_is_cached(policy: Policy) -> None:
    policy = Policy(policy.rules, cache_max=2)
    assert policy.cached == 0
    first = policy.lookup(DEMO)
    assert policy.lookup(DEMO) is first
    assert policy.cached == 1
    assert policy.lookup("nobody") is None  # a miss is remembered too
    assert policy.lookup("nobody") is None
    assert policy.cached == 2
    policy.lookup("third")  # full: forget all, then remember this one
    assert policy.cached == 1
    assert policy.lookup(DEMO) == first
    assert policy.cached == 2


def test_a_full_cache_forgets_everything() -> None:
    assert Policy([]).cached == 0
    p = Policy([], cache_max=1)
    for n in range(3):
        assert p.lookup(f"id-{n}") is None
        assert p.cached == 1


@pytest.mark.parametrize(
    ("name", "op"),
    [
        ("Create", Operation.CREATE),
        ("Get Attributes", Operation.GET_ATTRIBUTES),
        ("GetAttributes", Operation.GET_ATTRIBUTES),
        ("GET_ATTRIBUTES", Operation.GET_ATTRIBUTES),
        ("Re-key", Operation.RE_KEY),
        ("ReKeyKeyPair", Operation.RE_KEY_KEY_PAIR),
        ("Discover Versions", Operation.DISCOVER_VERSIONS),
        ("MACVerify", Operation.MAC_VERIFY),
        ("RNG Retrieve", Operation.RNG_RETRIEVE),
    ],
)
def test_operation_spellings(name: str, op: Operation) -> None:
    assert operation_by_name(name) is op


def test_operation_names_do_not_collide() -> None:
    folded = {operation_by_name(op.name) for op in Operation}
    assert folded == set(Operation)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('identity = "x"\ntenant = "t"\noperations = ["Create", "Fly"]',
         "p.toml: rule[1].operations: unknown operation 'Fly'"),
        ('identity = "x"\ntenant = "t"\noperations = []', "rule[1].operations: must be"),
        ('identity = "x"\ntenant = "t"\noperations = "*"', "rule[1].operations: must be"),
        ('identity = "x"\ntenant = "t"', "rule[1].operations: required"),
        ('identity = ""\ntenant = "t"\noperations = ["*"]', "rule[1].identity: must be"),
        ('identity = "x"\ntenant = "a/b"\noperations = ["*"]', "rule[1].tenant: must be"),
        ('identity = "x"\ntenant = "t"\noperations = ["*"]\ntennant = "u"',
         "rule[1].tennant: unknown setting"),
    ],
)
def test_bad_rule_names_it(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_text("[[rule]]\n" + text + "\n")
    assert message in err.value.args[0]


def test_duplicate_patterns_are_an_error() -> None:
    rule = '[[rule]]\nidentity = "{}"\ntenant = "t"\noperations = ["*"]\n'
    with pytest.raises(ConfigError, match="more than one rule"):
        from_text(rule.format("a/") + rule.format("a/*"))
    with pytest.raises(ConfigError, match="more than one rule"):
        from_text(rule.format("x") + rule.format("x"))


def test_bad_document_shapes() -> None:
    with pytest.raises(ConfigError, match="rules: unknown setting"):
        from_text('[[rules]]\nidentity = "x"\n')
    with pytest.raises(ConfigError, match="array of tables"):
        from_text('rule = "x"\n')
    assert from_text("").lookup(DEMO) is None


def test_load_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy file not found"):
        Policy.load(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("[[rule]\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        Policy.load(tmp_path / "bad.toml")
    (tmp_path / "unknown.toml").write_text(
        '[[rule]]\nidentity = "x"\ntenant = "t"\noperations = ["Fly"]\n')
    with pytest.raises(ConfigError, match=r"unknown\.toml: rule\[1\]\.operations: .*'Fly'"):
        Policy.load(tmp_path / "unknown.toml")


def test_dev_policy(tmp_path: Path) -> None:
    layout = init_dev_dir(tmp_path)
    policy = Policy.load(layout.policy)
    assert policy.lookup(DEMO) == Grant("demo", None)
    other = policy.lookup("spiffe://krypton.dev/tenant/other/workload/client")
    assert other == Grant("other", None)
    assert policy.lookup("spiffe://krypton.dev/gateway/gw-dev") is None
    assert policy.tenants == {"demo", "other"}
