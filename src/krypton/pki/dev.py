"""The development directory: a PKI plus gateway, core and policy configs.

``init_dev_dir(d)`` is idempotent: a file that exists is kept, a missing one
is written. The one exception is the CA: when it is (re)created, every leaf
is re-issued too, since old leaves would no longer chain to it. ``force=True``
rewrites everything.

Layout (all paths in the configs are relative to ``d``)::

    d/gateway.toml  d/core.toml  d/policy.toml
    d/pki/ca.pem  ca-key.pem
          client.pem  client-key.pem              .../tenant/demo/workload/client
          other-client.pem  other-client-key.pem  .../tenant/other/workload/client
          gateway.pem  gateway-key.pem            .../gateway/gw-dev
          core.pem  core-key.pem                  .../core/core-dev

where ``...`` is ``spiffe://krypton.dev``. Certificates are role-specific:
a workload's has clientAuth only (and no DNS/IP names); a gateway's has
serverAuth (its KMIP listener) and clientAuth (its uplink); the Core's has
serverAuth only (it is never a client). The gateway's config names the Core's
SPIFFE ID (``gateway.uplink.core_id``), so neither a workload's nor a
gateway's certificate can stand in for the Core; the Core's config lists the
gateway with the tenants it serves (``[[core.gateway]]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from krypton.errors import ConfigError
from krypton.pki.certs import (
    TRUST_DOMAIN,
    Certificate,
    PrivateKey,
    issue_ca,
    issue_leaf,
    load_cert_pem,
    load_key_pem,
    private_dir,
    write_atomic,
    write_cert_pem,
    write_key_pem,
)

DEV_TENANTS = ("demo", "other")
GATEWAY_NAME = "gw-dev"
CORE_NAME = "core-dev"
LOOPBACK_DNS = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def workload_spiffe_id(tenant: str, name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/tenant/{tenant}/workload/{name}"


def gateway_spiffe_id(name: str = GATEWAY_NAME) -> str:
    return f"spiffe://{TRUST_DOMAIN}/gateway/{name}"


def core_spiffe_id(name: str = CORE_NAME) -> str:
    return f"spiffe://{TRUST_DOMAIN}/core/{name}"


def tenant_prefix(tenant: str) -> str:
    """The policy pattern that matches every workload of ``tenant``."""
    return f"spiffe://{TRUST_DOMAIN}/tenant/{tenant}/"


@dataclass(frozen=True, slots=True)
class DevLayout:
    root: Path
    written: tuple[Path, ...] = field(default=(), compare=False)

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca(self) -> Path:
        return self.pki / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.pki / "ca-key.pem"

    @property
    def client(self) -> Path:
        return self.pki / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.pki / "client-key.pem"

    @property
    def other_client(self) -> Path:
        return self.pki / "other-client.pem"

    @property
    def other_client_key(self) -> Path:
        return self.pki / "other-client-key.pem"

    @property
    def gateway(self) -> Path:
        return self.pki / "gateway.pem"

    @property
    def gateway_key(self) -> Path:
        return self.pki / "gateway-key.pem"

    @property
    def core(self) -> Path:
        return self.pki / "core.pem"

    @property
    def core_key(self) -> Path:
        return self.pki / "core-key.pem"

    @property
    def gateway_config(self) -> Path:
        return self.root / "gateway.toml"

    @property
    def core_config(self) -> Path:
        return self.root / "core.toml"

    @property
    def policy(self) -> Path:
        return self.root / "policy.toml"


@dataclass(frozen=True, slots=True)
class IssuedCert:
    cert: Path
    key: Path
    spiffe_id: str


@dataclass(frozen=True, slots=True)
class _Leaf:
    stem: str
    common_name: str
    spiffe_id: str
    server: bool
    client: bool


_DEV_LEAVES = (
    _Leaf("client", "demo client", workload_spiffe_id("demo", "client"), False, True),
    _Leaf("other-client", "other client", workload_spiffe_id("other", "client"), False, True),
    _Leaf("gateway", GATEWAY_NAME, gateway_spiffe_id(), True, True),
    _Leaf("core", CORE_NAME, core_spiffe_id(), True, False),
)


def _check_segment(what: str, value: str) -> None:
    if not _SEGMENT.fullmatch(value):
        raise ConfigError(
            f"{what}: must be 1-63 characters of letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), got {value!r}"
        )


def _write_leaf(pki: Path, ca: tuple[Certificate, PrivateKey], leaf: _Leaf) -> list[Path]:
    dns, ips = (LOOPBACK_DNS, LOOPBACK_IPS) if leaf.server else ((), ())
    cert, key = issue_leaf(
        ca[0],
        ca[1],
        common_name=leaf.common_name,
        spiffe_id=leaf.spiffe_id,
        dns=dns,
        ips=ips,
        server=leaf.server,
        client=leaf.client,
    )
    cert_path, key_path = pki / f"{leaf.stem}.pem", pki / f"{leaf.stem}-key.pem"
    write_key_pem(key_path, key)
    write_cert_pem(cert_path, cert)
    return [cert_path, key_path]


def _load_or_create_ca(layout: DevLayout, force: bool) -> tuple[Certificate, PrivateKey, bool]:
    have = [p.exists() for p in (layout.ca, layout.ca_key)]
    if all(have) and not force:
        return load_cert_pem(layout.ca), load_key_pem(layout.ca_key), False
    if any(have) and not force:
        missing = layout.ca_key if have[0] else layout.ca
        raise ConfigError(f"{missing}: missing while its pair exists; remove both or use force")
    cert, key = issue_ca("Krypton development CA")
    write_key_pem(layout.ca_key, key)
    write_cert_pem(layout.ca, cert)
    return cert, key, True


def _load_ca(layout: DevLayout) -> tuple[Certificate, PrivateKey]:
    for p in (layout.ca, layout.ca_key):
        if not p.exists():
            raise ConfigError(f"{p}: not found; run `krypton dev init` first")
    return load_cert_pem(layout.ca), load_key_pem(layout.ca_key)


def init_dev_dir(d: Path, *, force: bool = False) -> DevLayout:
    """Write the development PKI and configs into ``d``; keep what already exists."""
    layout = DevLayout(Path(d))
    private_dir(layout.root)  # the databases and the master key live here
    private_dir(layout.pki)
    written: list[Path] = []
    ca_cert, ca_key, new_ca = _load_or_create_ca(layout, force)
    if new_ca:
        written += [layout.ca, layout.ca_key]
    for leaf in _DEV_LEAVES:
        paths = (layout.pki / f"{leaf.stem}.pem", layout.pki / f"{leaf.stem}-key.pem")
        if new_ca or not all(p.exists() for p in paths):
            written += _write_leaf(layout.pki, (ca_cert, ca_key), leaf)
    for path, text in (
        (layout.gateway_config, GATEWAY_TOML),
        (layout.core_config, CORE_TOML),
        (layout.policy, policy_toml(DEV_TENANTS)),
    ):
        if force or not path.exists():
            write_atomic(path, text.encode(), 0o644)
            written.append(path)
        elif _upgrade(path):
            written.append(path)
    return DevLayout(layout.root, tuple(written))


# Lines of configs written by an older ``krypton dev`` → what they say now: the
# record cache's bound is a share of the memory available (issue 16); the gateway
# names the Core it trusts, and the Core lists the dev gateway's tenants (issue 11).
_UPGRADES = (
    ('bytes = 268435456  # 256 MiB of wrapped records, at most\n',
     'bytes = "auto"  # a quarter of the memory available (RAM or cgroup limit), split between'
     ' workers\n', 'bytes = "auto"'),
    ('timeout = 2.0\n', f'timeout = 2.0\ncore_id = "{core_spiffe_id()}"\n', "\ncore_id ="),
    (f'\ngateways = ["{gateway_spiffe_id()}"]\n',
     f'\ngateways = ["{gateway_spiffe_id()}=demo+other"]\n', "\n[[core.gateway]]"),
)


def _upgrade(path: Path) -> bool:
    """Bring a dev config written by an older ``krypton dev init`` up to date, in place."""
    text = path.read_text(encoding="utf-8")
    new = text
    for old, replacement, done in _UPGRADES:
        if old in new and done not in new and new.count(old) == 1:
            new = new.replace(old, replacement)
    if new == text:
        return False
    write_atomic(path, new.encode(), 0o644)
    return True


def issue_client(d: Path, tenant: str, name: str, *, force: bool = False) -> IssuedCert:
    """Issue a client certificate for workload ``name`` of ``tenant`` from the dev CA in ``d``.

    Writes ``d/pki/<tenant>-<name>.pem`` and ``-key.pem``; the SPIFFE ID is
    ``spiffe://krypton.dev/tenant/<tenant>/workload/<name>``. An existing pair
    is an error unless ``force``. The tenant still needs a rule in the policy
    file (see :func:`policy_rule`) before the gateway lets the client in.
    """
    _check_segment("tenant", tenant)
    _check_segment("name", name)
    layout = DevLayout(Path(d))
    leaf = _Leaf(f"{tenant}-{name}", f"{tenant} {name}", workload_spiffe_id(tenant, name),
                 server=False, client=True)
    cert_path, key_path = layout.pki / f"{leaf.stem}.pem", layout.pki / f"{leaf.stem}-key.pem"
    if not force and (cert_path.exists() or key_path.exists()):
        raise ConfigError(f"{cert_path}: already exists (use force to re-issue)")
    _write_leaf(layout.pki, _load_ca(layout), leaf)
    return IssuedCert(cert_path, key_path, leaf.spiffe_id)


# -- config templates -------------------------------------------------------------
def policy_rule(tenant: str, operations: str = '["*"]') -> str:
    """A ``[[rule]]`` block granting every workload of ``tenant`` the given operations."""
    _check_segment("tenant", tenant)
    return (
        f'[[rule]]\nidentity = "{tenant_prefix(tenant)}"\n'
        f'tenant = "{tenant}"\noperations = {operations}\n'
    )


def policy_toml(tenants: tuple[str, ...]) -> str:
    head = (
        "# Who may do what at the gateway. `identity` is a client's SPIFFE ID (or subject\n"
        "# DN): an exact match, or a prefix when it ends with \"/\" or \"*\". Exact beats\n"
        "# prefix; the longest prefix wins. `operations`: [\"*\"] or KMIP operation names\n"
        '# such as ["Create", "Get", "Get Attributes"].\n'
    )
    return head + "\n".join(policy_rule(t) for t in tenants)


GATEWAY_TOML = f"""\
# Krypton Gateway (development). Relative paths are relative to this file's folder.
# Any setting can be overridden by an environment variable KRYPTON_<SECTION>_<KEY>,
# e.g. KRYPTON_GATEWAY_LISTEN_PORT=15696, KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS=10.

[gateway]
name = "{GATEWAY_NAME}"
listen_host = "127.0.0.1"
listen_port = 5696
vault_path = "gateway.db"
policy_file = "policy.toml"
workers = 1
log_level = "info"
# KMIP's Interop operation (Begin / End of a conformance test case). KMIP 2.1 §6.1.26:
# it SHALL NOT be available in a production server; set false (the default) there.
interop = true

[gateway.tls]
cert = "pki/gateway.pem"
key = "pki/gateway-key.pem"
ca = "pki/ca.pem"
min_version = "1.2"
session_tickets = true
session_lifetime = 3600.0  # seconds a TLS session may be resumed
trust_domain = "{TRUST_DOMAIN}"  # clients' SPIFFE IDs must be in it
# deny_list = "deny.txt"   # certificate serials (hex) / identities refused, one a line

[gateway.limits]
max_message_size = 1048576
max_depth = 32
max_items = 100000
max_batch_items = 1024
max_connections = 1024   # counted from accept, handshaking ones included
descriptor_reserve = 64   # descriptors kept from connections (never more than the limit less this)
max_pending_bytes = 16777216  # buffers of partly received messages, all connections together
receive_buffer = 32768    # each connection's socket receive buffer (SO_RCVBUF; 0: the kernel's)
read_timeout = 10.0       # seconds a started message has to complete
idle_timeout = 300.0      # seconds allowed between messages
handshake_timeout = 3.0   # a full budget drops the oldest unfinished handshake first
max_response_size = 4194304
max_rng_bytes = 1048576   # random bytes the RNG Retrieve items of one message may ask for together
write_timeout = 30.0      # seconds a client may leave its answers unread before it is dropped
# One tenant's (and one client identity's) share of each pool: below half by default.
max_connections_per_tenant = 511
max_connections_per_identity = 256
max_pending_bytes_per_tenant = 7340032
max_pending_bytes_per_identity = 4194304
max_streams = 1024        # multi-part Encrypt/Decrypt streams open at once
max_streams_per_tenant = 511
max_streams_per_identity = 256
refuse_grace = 0.25       # seconds a refused identity keeps its connection (and a newcomer waits)
max_large_messages = 4    # messages over 32 KiB worked on at once (in ~1 ms slices, by tenant)
max_large_messages_per_tenant = 1

[gateway.cache]
records = 1000000
bytes = "auto"  # a quarter of the memory available (RAM or cgroup limit), split between workers
warm = true

[gateway.uplink]
core_address = "127.0.0.1:5697"
timeout = 2.0
core_id = "{core_spiffe_id()}"  # the uplink refuses any other server

# /healthz, /readyz, /metrics (Prometheus) and a status page at /; "" turns it off.
# Set cert and key for HTTPS.
[gateway.admin]
listen = "127.0.0.1:9696"
"""

CORE_TOML = f"""\
# Krypton Core (development). Relative paths are relative to this file's folder.
# Any setting can be overridden by an environment variable KRYPTON_<SECTION>_<KEY>,
# e.g. KRYPTON_CORE_LISTEN_PORT=15697, KRYPTON_CORE_TENANTS=demo,other.

[core]
name = "{CORE_NAME}"
listen_host = "127.0.0.1"
listen_port = 5697
registry = "sqlite:core.db"
master_key_file = "master.key"
l3_lease_seconds = 86400
tenants = ["demo", "other"]

# Gateways allowed on the uplink (by their certificate's SPIFFE ID), each with
# the tenants it is served; any other tenant is refused to it. Shorthand:
# gateways = ["spiffe://.../gateway/gw-a=demo+other"] (or KRYPTON_CORE_GATEWAYS).
[[core.gateway]]
id = "{gateway_spiffe_id()}"
tenants = ["demo", "other"]

[core.tls]
cert = "pki/core.pem"
key = "pki/core-key.pem"
ca = "pki/ca.pem"
trust_domain = "{TRUST_DOMAIN}"  # gateways' SPIFFE IDs must be in it

# /healthz, /readyz, /metrics (Prometheus) and a status page at /; "" turns it off.
[core.admin]
listen = "127.0.0.1:9697"
"""


# -- certificates for new parties (krypton pki issue) -------------------------------
@dataclass(frozen=True, slots=True)
class Role:
    """What a certificate of one role may do (see the module docstring)."""

    server: bool
    client: bool
    names: bool  # DNS / IP SANs (a server is reached by name)
    next_step: str


ROLES: dict[str, Role] = {
    "workload": Role(False, True, False,
                     "give its SPIFFE ID (or a prefix of it) a [[rule]] in the gateway's "
                     "policy file"),
    "gateway": Role(True, True, True,
                    "list it at the Core ([[core.gateway]] id = ..., tenants = [...]) before "
                    "the gateway starts with it ([gateway.tls] cert / key)"),
    "core": Role(True, False, True,
                 "set gateway.uplink.core_id to its SPIFFE ID on every gateway, and "
                 "[core.tls] cert / key on the Core"),
}
_SPIFFE_ID = re.compile(r"spiffe://([a-z0-9._-]{1,255})((/[A-Za-z0-9._-]+)+)")


def _check_spiffe_id(spiffe_id: str) -> list[str]:
    """The path segments of a well-formed SPIFFE ID; ConfigError otherwise."""
    m = _SPIFFE_ID.fullmatch(spiffe_id)
    segments = m.group(2).split("/")[1:] if m else []
    if not m or {".", ".."} & set(segments):
        raise ConfigError(f"--spiffe-id: not a SPIFFE ID (spiffe://trust-domain/path, "
                          f"without '.' or '..' segments): {spiffe_id!r}")
    return segments


def issue_role(
    d: Path, spiffe_id: str, role: str, *, name: str | None = None,
    dns: tuple[str, ...] = LOOPBACK_DNS, ips: tuple[str, ...] = LOOPBACK_IPS,
    days: int | None = None, force: bool = False,
) -> IssuedCert:
    """Issue a certificate for ``role`` (workload, gateway or core) from the dev CA in ``d``.

    Writes ``d/pki/<name>.pem`` and ``<name>-key.pem`` (``name`` defaults to
    ``<role>-<last segment of the SPIFFE ID>``). A workload's certificate has
    clientAuth only and no DNS/IP names; a gateway's serverAuth and clientAuth;
    a Core's serverAuth only; both servers carry ``dns`` and ``ips``. An
    existing pair is an error unless ``force``."""
    if role not in ROLES:
        raise ConfigError(f"--role: must be one of {', '.join(ROLES)}, got {role!r}")
    what = ROLES[role]
    segments = _check_spiffe_id(spiffe_id)
    stem = name or f"{role}-{segments[-1]}"
    _check_segment("--name", stem)
    layout = DevLayout(Path(d))
    cert_path, key_path = layout.pki / f"{stem}.pem", layout.pki / f"{stem}-key.pem"
    if not force and (cert_path.exists() or key_path.exists()):
        raise ConfigError(f"{cert_path}: already exists (use --force to re-issue)")
    ca, ca_key = _load_ca(layout)
    cert, key = issue_leaf(
        ca, ca_key, common_name=stem, spiffe_id=spiffe_id,
        dns=dns if what.names else (), ips=ips if what.names else (),
        server=what.server, client=what.client,
        **({"days": days} if days is not None else {}),
    )
    write_key_pem(key_path, key)
    write_cert_pem(cert_path, cert)
    return IssuedCert(cert_path, key_path, spiffe_id)
