"""Development PKI: a CA, SPIFFE leaf certificates and the `krypton dev` directory."""

from __future__ import annotations

from krypton.pki.certs import (
    TRUST_DOMAIN,
    issue_ca,
    issue_leaf,
    load_cert_pem,
    load_key_pem,
    new_key,
    write_cert_pem,
    write_key_pem,
)
from krypton.pki.dev import (
    DevLayout,
    IssuedCert,
    core_spiffe_id,
    gateway_spiffe_id,
    init_dev_dir,
    issue_client,
    policy_rule,
    tenant_prefix,
    workload_spiffe_id,
)

__all__ = [
    "TRUST_DOMAIN",
    "DevLayout",
    "IssuedCert",
    "core_spiffe_id",
    "gateway_spiffe_id",
    "init_dev_dir",
    "issue_ca",
    "issue_client",
    "issue_leaf",
    "load_cert_pem",
    "load_key_pem",
    "new_key",
    "policy_rule",
    "tenant_prefix",
    "workload_spiffe_id",
    "write_cert_pem",
    "write_key_pem",
]
