"""Development PKI: certificate shape, chains, file modes, idempotent dev dir."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from krypton.config import load_core_config, load_gateway_config
from krypton.errors import ConfigError
from krypton.gateway.policy import Policy
from krypton.pki import (
    DevLayout,
    init_dev_dir,
    issue_ca,
    issue_client,
    issue_leaf,
    load_cert_pem,
    load_key_pem,
    policy_rule,
    write_key_pem,
)
from krypton.pki.dev import CORE_TOML, GATEWAY_TOML, core_spiffe_id, gateway_spiffe_id

DEV_FILES = (
    "ca", "ca-key", "client", "client-key", "other-client", "other-client-key",
    "gateway", "gateway-key", "core", "core-key",
)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevLayout:
    return init_dev_dir(tmp_path_factory.mktemp("dev"))


def snapshot(layout: DevLayout) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(layout.root.rglob("*")) if p.is_file()}


def spiffe_ids(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_ca_is_a_p256_ca_limited_to_leaves() -> None:
    cert, key = issue_ca("test CA")
    assert isinstance(key.curve, ec.SECP256R1)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca
    assert bc.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    cert.verify_directly_issued_by(cert)


def test_leaf_has_spiffe_and_ip_sans_and_roles() -> None:
    ca, ca_key = issue_ca("test CA")
    cert, key = issue_leaf(
        ca, ca_key, common_name="svc", spiffe_id="spiffe://krypton.dev/x/y",
        dns=["localhost"], ips=["127.0.0.1", "::1"], server=True, client=False, days=3,
    )
    cert.verify_directly_issued_by(ca)
    assert isinstance(key.curve, ec.SECP256R1)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://krypton.dev/x/y"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")
    ]
    assert eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert not ku.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 3 * 86400 <= lifetime.total_seconds() <= 3 * 86400 + 600


def test_leaf_rejects_bad_arguments() -> None:
    ca, ca_key = issue_ca("test CA")
    with pytest.raises(ValueError, match="SPIFFE"):
        issue_leaf(ca, ca_key, common_name="x", spiffe_id="https://x", server=True)
    with pytest.raises(ValueError, match="usage"):
        issue_leaf(ca, ca_key, common_name="x", spiffe_id=None, server=False, client=False)


def test_dev_dir_files_and_modes(dev: DevLayout) -> None:
    for stem in DEV_FILES:
        path = dev.pki / f"{stem}.pem"
        assert path.is_file(), path
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if stem.endswith("key") else 0o644), (stem, oct(mode))
    for path in (dev.gateway_config, dev.core_config, dev.policy):
        assert path.is_file()
    assert not list(dev.root.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("stem", "spiffe", "roles"),
    [
        ("client", "spiffe://krypton.dev/tenant/demo/workload/client",
         {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("other-client", "spiffe://krypton.dev/tenant/other/workload/client",
         {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("gateway", "spiffe://krypton.dev/gateway/gw-dev",
         {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}),
        ("core", "spiffe://krypton.dev/core/core-dev",
         {ExtendedKeyUsageOID.SERVER_AUTH}),  # role-specific: the Core is never a client
    ],
)
def test_dev_leaves(dev: DevLayout, stem: str, spiffe: str,
                    roles: set[x509.ObjectIdentifier]) -> None:
    ca = load_cert_pem(dev.ca)
    cert = load_cert_pem(dev.pki / f"{stem}.pem")
    key = load_key_pem(dev.pki / f"{stem}-key.pem")
    assert cert.public_key() == key.public_key()
    assert spiffe_ids(cert) == [spiffe]
    assert eku(cert) == roles
    verifier = PolicyBuilder().store(Store([ca]))
    if ExtendedKeyUsageOID.SERVER_AUTH in roles:
        for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                     x509.IPAddress(ipaddress.ip_address("::1"))):
            verifier.build_server_verifier(name).verify(cert, [])
    else:
        verified = verifier.build_client_verifier().verify(cert, [])
        assert verified.subjects is not None
        assert x509.UniformResourceIdentifier(spiffe) in verified.subjects


def test_foreign_leaf_does_not_verify(dev: DevLayout) -> None:
    other_ca, other_key = issue_ca("other CA")
    cert, _ = issue_leaf(other_ca, other_key, common_name="x",
                         spiffe_id="spiffe://krypton.dev/tenant/demo/workload/evil")
    verifier = PolicyBuilder().store(Store([load_cert_pem(dev.ca)])).build_client_verifier()
    with pytest.raises(VerificationError):
        verifier.verify(cert, [])


def test_init_is_idempotent(tmp_path: Path) -> None:
    first = init_dev_dir(tmp_path)
    assert len(first.written) == len(DEV_FILES) + 3
    before = snapshot(first)
    again = init_dev_dir(tmp_path)
    assert again.written == ()
    assert snapshot(again) == before


def test_missing_leaf_is_reissued_alone(tmp_path: Path) -> None:
    layout = init_dev_dir(tmp_path)
    before = snapshot(layout)
    layout.client_key.unlink()
    again = init_dev_dir(tmp_path)
    assert set(again.written) == {layout.client, layout.client_key}
    after = snapshot(again)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"client.pem", "client-key.pem"}
    load_cert_pem(layout.client).verify_directly_issued_by(load_cert_pem(layout.ca))


def test_new_ca_reissues_every_leaf(tmp_path: Path) -> None:
    layout = init_dev_dir(tmp_path)
    (tmp_path / "gateway.toml").write_text("# mine\n")
    layout.ca.unlink()
    layout.ca_key.unlink()
    again = init_dev_dir(tmp_path)
    ca = load_cert_pem(layout.ca)
    for stem in ("client", "other-client", "gateway", "core"):
        load_cert_pem(layout.pki / f"{stem}.pem").verify_directly_issued_by(ca)
    assert layout.gateway_config not in again.written
    assert (tmp_path / "gateway.toml").read_text() == "# mine\n"


def test_force_rewrites_everything(tmp_path: Path) -> None:
    layout = init_dev_dir(tmp_path)
    before = snapshot(layout)
    (tmp_path / "policy.toml").write_text("# mine\n")
    forced = init_dev_dir(tmp_path, force=True)
    after = snapshot(forced)
    assert all(before[n] != after[n] for n in before if n.endswith(".pem"))
    assert "# mine" not in layout.policy.read_text()


def test_half_a_ca_is_an_error(tmp_path: Path) -> None:
    layout = init_dev_dir(tmp_path)
    layout.ca_key.unlink()
    with pytest.raises(ConfigError, match=r"ca-key\.pem"):
        init_dev_dir(tmp_path)


def test_key_written_0600_even_over_a_looser_file(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("old")
    path.chmod(0o644)
    write_key_pem(path, issue_ca("x")[1])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    load_key_pem(path)


def test_issue_client(dev: DevLayout) -> None:
    issued = issue_client(dev.root, "acme", "billing")
    assert issued.cert == dev.pki / "acme-billing.pem"
    assert issued.spiffe_id == "spiffe://krypton.dev/tenant/acme/workload/billing"
    cert = load_cert_pem(issued.cert)
    assert spiffe_ids(cert) == [issued.spiffe_id]
    assert eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    cert.verify_directly_issued_by(load_cert_pem(dev.ca))
    assert stat.S_IMODE(issued.key.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="already exists"):
        issue_client(dev.root, "acme", "billing")
    again = issue_client(dev.root, "acme", "billing", force=True)
    assert load_cert_pem(again.cert) != cert


@pytest.mark.parametrize(("tenant", "name"), [("", "x"), ("a/b", "x"), ("t", ".."), ("t", "a b")])
def test_issue_client_rejects_bad_names(dev: DevLayout, tenant: str, name: str) -> None:
    with pytest.raises(ConfigError, match=r"^(tenant|name): "):
        issue_client(dev.root, tenant, name)


def test_issue_client_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ca\.pem"):
        issue_client(tmp_path, "demo", "x")


def test_policy_rule_grants_the_new_tenant() -> None:
    import tomllib

    policy = Policy.from_dict(tomllib.loads(policy_rule("acme")))
    grant = policy.lookup("spiffe://krypton.dev/tenant/acme/workload/billing")
    assert grant is not None
    assert grant.tenant == "acme"
    assert policy.lookup("spiffe://krypton.dev/tenant/demo/workload/client") is None


def test_dev_configs_of_an_older_init_are_upgraded(tmp_path: Path) -> None:
    """A dev directory from before per-gateway tenants and core_id still starts."""
    layout = init_dev_dir(tmp_path)
    old_gateway = GATEWAY_TOML.replace(f'core_id = "{core_spiffe_id()}"', "#")
    old_core = CORE_TOML.replace(
        f'[[core.gateway]]\nid = "{gateway_spiffe_id()}"\ntenants = ["demo", "other"]\n',
        f'gateways = ["{gateway_spiffe_id()}"]\n')
    layout.gateway_config.write_text(old_gateway)
    layout.core_config.write_text(old_core)
    again = init_dev_dir(tmp_path)
    assert set(again.written) == {layout.gateway_config, layout.core_config}
    assert load_gateway_config(layout.gateway_config, env={}).uplink.core_id == core_spiffe_id()
    assert load_core_config(layout.core_config, env={}).authorised_gateways() == {
        gateway_spiffe_id(): frozenset({"demo", "other"})}
    assert init_dev_dir(tmp_path).written == ()


def test_a_dev_config_with_the_old_fixed_cache_bound_takes_the_auto_share(tmp_path: Path) -> None:
    layout = init_dev_dir(tmp_path)
    old = GATEWAY_TOML.replace(
        'bytes = "auto"  # a quarter of the memory available (RAM or cgroup limit), split'
        ' between workers\n', "bytes = 268435456  # 256 MiB of wrapped records, at most\n")
    assert old != GATEWAY_TOML
    layout.gateway_config.write_text(old)
    assert load_gateway_config(layout.gateway_config, env={}).cache.bytes == 268435456
    assert init_dev_dir(tmp_path).written == (layout.gateway_config,)
    assert load_gateway_config(layout.gateway_config, env={}).cache.bytes is None
