"""``krypton pki issue`` (krypton.pki.dev.issue_role): each role's certificate shape."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from krypton.errors import ConfigError
from krypton.pki import DevLayout, init_dev_dir, load_cert_pem
from krypton.pki.dev import issue_role

SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevLayout:
    return init_dev_dir(tmp_path_factory.mktemp("dev"))


@pytest.mark.parametrize(
    ("role", "spiffe", "usages", "names"),
    [
        ("workload", "spiffe://krypton.dev/tenant/demo/workload/w1", {CLIENT}, False),
        ("gateway", "spiffe://krypton.dev/gateway/gw-z", {SERVER, CLIENT}, True),
        ("core", "spiffe://krypton.dev/core/core-z", {SERVER}, True),
    ],
)
def test_each_role_gets_its_usages(dev: DevLayout, role: str, spiffe: str,
                                   usages: set[x509.ObjectIdentifier], names: bool) -> None:
    issued = issue_role(dev.root, spiffe, role)
    assert issued.cert == dev.pki / f"{role}-{spiffe.rsplit('/', 1)[1]}.pem"
    cert = load_cert_pem(issued.cert)
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe]
    assert bool(san.get_values_for_type(x509.DNSName)) is names
    assert cert.issuer == load_cert_pem(dev.ca).subject
    assert stat.S_IMODE(issued.key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("spiffe", "role", "complaint"),
    [
        ("https://krypton.dev/x", "workload", "--spiffe-id"),
        ("spiffe://krypton.dev/a/../b", "workload", "--spiffe-id"),
        ("spiffe://krypton.dev", "workload", "--spiffe-id"),
        ("spiffe://krypton.dev/gateway/x", "admin", "--role"),
    ],
)
def test_bad_input_is_refused_naming_the_option(dev: DevLayout, spiffe: str, role: str,
                                                complaint: str) -> None:
    with pytest.raises(ConfigError, match=f"^{complaint}"):
        issue_role(dev.root, spiffe, role)


def test_no_ca_no_certificate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="krypton dev init"):
        issue_role(tmp_path, "spiffe://krypton.dev/gateway/g", "gateway")
