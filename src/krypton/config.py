"""Configuration: TOML files into frozen dataclasses, with environment overrides.

How this works
--------------
Each section (``gateway``, ``gateway.tls``, ``gateway.limits``, ...) is a frozen
dataclass plus a table that maps each of its keys to a converter. A converter
checks type and range and normalises (paths become absolute, log levels
lower-case). Defaults are the dataclass defaults; a field without a default is
required. Defaults go through the same converters, so a default relative path
is resolved against the config file's folder too. Every failure is a
:class:`krypton.errors.ConfigError` whose message starts with the dotted
setting name, says what is wanted and what was found, and where it came from::

    gateway.limits.max_connections: must be an integer ≥ 1, got 'abc'
        (from KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS)

Environment rule
----------------
Setting ``<section>.<key>`` is overridden by the variable ``KRYPTON_`` + the
dotted name upper-cased with every ``.`` replaced by ``_``::

    gateway.listen_port             KRYPTON_GATEWAY_LISTEN_PORT=15696
    gateway.limits.max_connections  KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS=10
    gateway.tls.min_version         KRYPTON_GATEWAY_TLS_MIN_VERSION=1.3
    core.tenants                    KRYPTON_CORE_TENANTS=demo,other
    core.gateways                   KRYPTON_CORE_GATEWAYS=spiffe://td/gateway/a=demo+other

Gateways at the Core
--------------------
The Core serves a gateway only the tenants listed for it, by its SPIFFE ID,
either as tables::

    [[core.gateway]]
    id = "spiffe://krypton.dev/gateway/gw-eu1"
    tenants = ["demo"]

or in the shorthand ``core.gateways = ["<SPIFFE ID>=<tenant>+<tenant>", ...]``
(handy in an environment variable). Both may be used; a gateway listed twice,
or given a tenant that is not in ``core.tenants``, is an error. A gateway is
never given every tenant by default.

The variable wins over the file, which wins over the default. Values are text:
integers in decimal, numbers as decimals, booleans as true/false, 1/0, yes/no
or on/off (any case), lists comma-separated (or a TOML array such as
``["a","b"]``), relative paths against the config file's folder. A variable
that is set but empty counts as set (and is usually an error). When loading
a gateway config, a ``KRYPTON_GATEWAY_*`` variable that names no setting is an
error (a typo must not be silently ignored); likewise ``KRYPTON_CORE_*`` for a
core config.

Unknown keys in the file are errors too. A file may hold both a ``[gateway]``
and a ``[core]`` table; each loader reads its own.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krypton.errors import ConfigError

ENV_PREFIX = "KRYPTON_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
TLS_VERSIONS = ("1.2", "1.3")


# -- the configuration objects ----------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    # The own certificate (chain, leaf first), its key and the trust bundle (one
    # or more CAs). Required with ``source = "file"`` (the Core's only source);
    # watched, and reloaded when they change (or on SIGHUP).
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    min_version: str = "1.2"
    session_tickets: bool = True
    # SPIFFE IDs of peers must be in this trust domain.
    trust_domain: str = "krypton.dev"
    # Certificate serials / identities refused, one a line (krypton.tls.denylist).
    deny_list: Path | None = None
    # How often (seconds) the files are looked at for a change.
    reload_interval: float = 1.0


TLS_SOURCES = ("file", "spiffe")


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayTLSConfig(TLSConfig):
    """The KMIP listener's TLS: also how long a TLS session may be resumed, and
    where the material comes from: the files, or the SPIFFE Workload API (the
    X.509-SVID and the bundle of its trust domain, for the listener and the uplink)."""

    session_lifetime: float = 3600.0
    source: str = "file"
    # The Workload API's socket (``unix:///run/spire/agent.sock`` or a path);
    # empty: $SPIFFE_ENDPOINT_SOCKET.
    spiffe_socket: str = ""
    # How long start-up waits for the first SVID (seconds).
    spiffe_timeout: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    max_message_size: int = 1_048_576
    max_depth: int = 32
    max_items: int = 100_000
    max_batch_items: int = 1024
    max_connections: int = 1024
    descriptor_reserve: int = 64
    max_pending_bytes: int = 16_777_216
    receive_buffer: int = 32_768
    read_timeout: float = 10.0
    idle_timeout: float = 300.0
    handshake_timeout: float = 3.0
    max_response_size: int = 4_194_304
    max_rng_bytes: int = 1_048_576
    max_connections_per_tenant: int = 511
    max_connections_per_identity: int = 256
    max_pending_bytes_per_tenant: int = 7_340_032
    max_pending_bytes_per_identity: int = 4_194_304
    max_streams: int = 1024
    max_streams_per_tenant: int = 511
    max_streams_per_identity: int = 256
    write_timeout: float = 30.0
    refuse_grace: float = 0.25
    max_large_messages: int = 4
    max_large_messages_per_tenant: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    """``[gateway.cache]``: the vault's in-memory cache of wrapped records (never
    plaintext), least recently used out first when either bound is reached; a
    record is charged its byte fields plus ~380 B (krypton.vault.cache.weight),
    ~700-800 B for an AES key. ``bytes`` None ("auto" in TOML): a quarter of the
    memory this process may use (physical, or its cgroup's limit if lower),
    split between the workers (krypton.gateway._memory)."""

    records: int = 1_000_000  # wrapped records kept in memory, at most (0: no cache)
    # memory the cached records may take, at most; "auto": a quarter of the memory
    # available (RAM or the cgroup's limit), split between the workers
    bytes: int | None = None
    # after a start, load the newest records into the free room in the background
    warm: bool = True


VAULT_BACKENDS = ("sqlite", "openbao")


@dataclass(frozen=True, slots=True, kw_only=True)
class VaultConfig:
    """``[gateway.vault]``: where the wrapped records live. ``sqlite`` is the file
    ``gateway.vault_path``; ``openbao`` a KV v2 mount of an OpenBao server
    (``krypton.vault.openbao``), authenticated by the token in the environment
    variable named ``token_env``, else by the AppRole whose role_id and
    secret_id are in the variables ``role_id_env`` and ``secret_id_env``.
    A gateway seal (``[gateway.seal]``) keeps its sealed L3 copies beside the
    records: a table of the SQLite file, or secrets under ``<prefix>/sealed_l3/``
    on OpenBao."""

    backend: str = "sqlite"
    address: str = "http://127.0.0.1:8200"
    mount: str = "kv"
    prefix: str = "krypton/gateway"
    token_env: str = "BAO_TOKEN"  # noqa: S105 - the name of a variable
    role_id_env: str = "BAO_ROLE_ID"
    secret_id_env: str = "BAO_SECRET_ID"  # noqa: S105 - the name of a variable
    ca: Path | None = None  # https: the CA that signs OpenBao's certificate
    connections: int = 16  # keep-alive HTTP connections (writes in flight at once)


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkConfig:
    # One Core or several ("host:port, host:port"; a name may resolve to several
    # addresses): each new connection tries them in turn, the last good one first.
    core_address: str = "127.0.0.1:5697"
    # A delegated call's bound (seconds).
    timeout: float = 2.0
    # The Core's SPIFFE ID: the uplink refuses any other server. Required in a
    # config file ("" only when built in code, e.g. by tests: no check).
    core_id: str = ""
    # The longest L3 lease this gateway accepts from the Core (a longer one is
    # cut to this).
    max_lease: float = 86_400.0
    # Liveness: a gRPC keepalive ping every ``keepalive`` seconds, the link dead
    # when one is not answered within ``keepalive_timeout`` (a silent partition
    # is noticed within their sum); the same bounds for TCP keepalive and the
    # TCP user timeout of each connection.
    keepalive: float = 2.0
    keepalive_timeout: float = 2.0
    # One connection attempt to one Core address (TCP and TLS handshake).
    connect_timeout: float = 2.0
    # The Subscribe stream is redone when nothing (not even a heartbeat) came for this long.
    stale_after: float = 15.0
    # Reconnection backoff cap (seconds).
    reconnect_max: float = 5.0

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every Core address, in the order given."""
        return split_addresses(self.core_address)

    @property
    def host(self) -> str:
        return self.addresses[0][0]

    @property
    def port(self) -> int:
        return self.addresses[0][1]


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """The admin endpoint (``/healthz``, ``/readyz``, ``/metrics``, the status page):
    ``listen`` is ``host:port`` (port 0: any free one), ``""`` turns it off; with
    ``cert`` and ``key`` it speaks HTTPS instead of plain HTTP."""

    listen: str = ""
    cert: Path | None = None
    key: Path | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port), or None when the endpoint is off."""
        return split_address(self.listen, allow_zero=True) if self.listen else None


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayAdminConfig(AdminConfig):
    listen: str = "127.0.0.1:9696"


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreAdminConfig(AdminConfig):
    listen: str = "127.0.0.1:9697"


@dataclass(frozen=True, slots=True, kw_only=True)
class RootConfig:
    """A root of trust (krypton.roots): the Core's ``[core.root]`` and the
    gateway's ``[gateway.seal]``. Only the settings of the chosen ``kind`` are used."""

    kind: str = "file"  # file | pkcs11 | openbao (the gateway seal: none | pkcs11 | openbao)
    # file: the 32-byte key file (the Core's default: core.master_key_file)
    key_file: Path | None = None
    # pkcs11: the module, the token and the root key's labels, the PIN's variable
    module: Path = Path("/usr/lib/softhsm/libsofthsm2.so")
    token_label: str = "krypton"  # noqa: S105 (a label, not a secret)
    key_label: str = "krypton-root"
    pin_env: str = "KRYPTON_PKCS11_PIN"
    # openbao: the server, the Transit mount and key, the token's (or AppRole's) variables
    address: str = "http://127.0.0.1:8200"
    mount: str = "transit"
    transit_key: str = "krypton-root"
    token_env: str = "BAO_TOKEN"  # noqa: S105 (the variable's name)
    role_id_env: str = "BAO_ROLE_ID"
    secret_id_env: str = "BAO_SECRET_ID"  # noqa: S105 (the variable's name)
    approle_mount: str = "approle"
    ca: Path | None = None  # https: the CA that signed OpenBao's certificate
    timeout: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SealConfig(RootConfig):
    """``[gateway.seal]``: L3 versions kept in the vault sealed by a gateway-local root."""

    kind: str = "none"
    key_label: str = "krypton-gateway-seal"
    transit_key: str = "krypton-gateway-seal"


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    name: str = "gw-dev"
    listen_host: str = "127.0.0.1"
    listen_port: int = 5696
    vault_path: Path = Path("gateway.db")
    policy_file: Path = Path("policy.toml")
    workers: int = 1
    # SIGTERM: how long requests in flight may take to finish (seconds).
    drain_timeout: float = 10.0
    log_level: str = "info"
    log_format: str = "text"  # "text" or "json" (one JSON object a line)
    interop: bool = False  # the KMIP Interop operation (test harnesses only, never production)
    allow_core_dumps: bool = False  # debugging only: core dumps hold key material
    tls: GatewayTLSConfig
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    admin: AdminConfig = field(default_factory=GatewayAdminConfig)
    seal: SealConfig = field(default_factory=SealConfig)
    vault: VaultConfig = field(default_factory=VaultConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreConfig:
    name: str = "core-dev"
    listen_host: str = "127.0.0.1"
    listen_port: int = 5697
    registry: str = "sqlite:core.db"
    master_key_file: Path = Path("master.key")
    l3_lease_seconds: int = 86_400
    # How many changes the registry's change feed keeps: a gateway further
    # behind reconciles every key it holds instead of replaying.
    feed_retention: int = 1_000_000
    tenants: tuple[str, ...] = ("demo", "other")
    gateway: tuple[GatewayGrant, ...] = ()
    gateways: tuple[GatewayGrant, ...] = ()
    allow_core_dumps: bool = False  # debugging only: core dumps hold key material
    log_level: str = "info"
    log_format: str = "text"  # "text" or "json" (one JSON object a line)
    # Undo batches (krypton.engine.undo): how long and how many batches' journals are
    # kept; an Undo whose journal is gone fails (0 batches: every such Undo fails).
    undo_journal_seconds: float = 60.0
    undo_journal_batches: int = 1024
    # SIGTERM: how long calls in flight may take to finish (seconds).
    drain_timeout: float = 10.0
    # Background re-wrap (krypton.core.rewrap): objects per batch, seconds between
    # looks for work, and a pause after each batch (to spare a busy registry).
    rewrap_batch: int = 256
    rewrap_interval: float = 5.0
    rewrap_pause: float = 0.0
    tls: TLSConfig
    admin: AdminConfig = field(default_factory=CoreAdminConfig)
    root: RootConfig = field(default_factory=RootConfig)

    def authorised_gateways(self) -> dict[str, frozenset[str]]:
        """Each gateway's SPIFFE ID → the tenants it is served (as listed for it)."""
        return {g.id: frozenset(g.tenants) for g in (*self.gateway, *self.gateways)}

    @property
    def sqlite_path(self) -> Path | None:
        """The registry file for ``sqlite:<path>`` (absolute), else None."""
        if self.registry.startswith("sqlite:") and self.registry != "sqlite::memory:":
            return Path(self.registry.removeprefix("sqlite:"))
        return None


@dataclass(frozen=True, slots=True)
class GatewayGrant:
    """One gateway the Core serves: its SPIFFE ID and the tenants it is given."""

    id: str
    tenants: tuple[str, ...]


# -- converters -------------------------------------------------------------------
class _Bad(Exception):
    """What a setting must be; ``show`` is False when the value must not be echoed."""

    def __init__(self, want: str, *, show: bool = True) -> None:
        super().__init__(want)
        self.want = want
        self.show = show


@dataclass(frozen=True, slots=True)
class _Ctx:
    base: Path
    from_env: bool


Convert = Callable[[Any, _Ctx], Any]
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _integer(lo: int, hi: int | None = None) -> Convert:
    want = f"must be an integer ≥ {lo}" + ("" if hi is None else f" and ≤ {hi}")

    def convert(v: Any, ctx: _Ctx) -> int:
        if ctx.from_env and isinstance(v, str):
            try:
                v = int(v.strip())
            except ValueError:
                raise _Bad(want) from None
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise _Bad(want)
        return v

    return convert


def _seconds(v: Any, ctx: _Ctx) -> float:
    want = "must be a number of seconds > 0"
    if ctx.from_env and isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise _Bad(want) from None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise _Bad(want)
    return float(v)


def _pause(v: Any, ctx: _Ctx) -> float:
    """Seconds ≥ 0 (0: no pause)."""
    if v in (0, 0.0, "0"):
        return 0.0
    try:
        return _seconds(v, ctx)
    except _Bad:
        raise _Bad("must be a number of seconds ≥ 0") from None


def _auto(convert: Convert) -> Convert:
    """``convert``, or the word "auto" for None (a default worked out at start-up)."""

    def auto(v: Any, ctx: _Ctx) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() == "auto"):
            return None
        try:
            return convert(v, ctx)
        except _Bad as bad:
            raise _Bad(f'{bad.want} or "auto"', show=bad.show) from None

    return auto


def _boolean(v: Any, ctx: _Ctx) -> bool:
    if ctx.from_env and isinstance(v, str):
        word = v.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
    if not isinstance(v, bool):
        raise _Bad("must be true or false")
    return v


def _text(v: Any, ctx: _Ctx) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _Bad("must be a non-empty string")
    return v.strip()


def _text_or_empty(v: Any, ctx: _Ctx) -> str:
    if not isinstance(v, str):
        raise _Bad("must be a string")
    return v.strip()


def _choice(choices: tuple[str, ...]) -> Convert:
    want = "must be one of " + ", ".join(repr(c) for c in choices)

    def convert(v: Any, ctx: _Ctx) -> str:
        if isinstance(v, float) and not isinstance(v, bool):
            v = repr(v)  # min_version = 1.3 written without quotes
        if not isinstance(v, str) or v.strip().lower() not in choices:
            raise _Bad(want)
        return v.strip().lower()

    return convert


def _path(*, must_exist: bool) -> Convert:
    def convert(v: Any, ctx: _Ctx) -> Path:
        if isinstance(v, Path):
            v = str(v)
        if not isinstance(v, str) or not v.strip():
            raise _Bad("must be a non-empty path")
        p = Path(v.strip()).expanduser()
        p = p if p.is_absolute() else ctx.base / p
        if must_exist and not p.is_file():
            raise _Bad(f"file not found: {p}" if not p.exists() else f"not a file: {p}",
                       show=False)
        return p

    return convert


def split_address(v: str, *, allow_zero: bool = False) -> tuple[str, int]:
    if v.startswith("["):
        host, sep, port = v[1:].partition("]:")
    else:
        host, sep, port = v.rpartition(":")
        if ":" in host:
            raise ValueError(v)
    if not sep or not host or not port.isdigit() or not int(not allow_zero) <= int(port) <= 65535:
        raise ValueError(v)
    return host, int(port)


def split_addresses(v: str) -> tuple[tuple[str, int], ...]:
    """``"a:1, b:2"`` → ``(("a", 1), ("b", 2))``; ValueError if any is not host:port."""
    parts = [p.strip() for p in v.split(",")]
    if not parts or not all(parts):
        raise ValueError(v)
    return tuple(split_address(p) for p in parts)


def _addresses(v: Any, ctx: _Ctx) -> str:
    want = ("must be 'host:port' (IPv6 as '[::1]:port') with a port from 1 to 65535, "
            "or several separated by commas")
    if ctx.from_env and isinstance(v, str) and v.strip()[:2] in ('["', "['"):
        v = _env_list(v)  # a TOML array of strings ('[::1]:5697' is an address)
    if isinstance(v, list | tuple) and v and all(isinstance(x, str) for x in v):
        v = ", ".join(x.strip() for x in v)
    if not isinstance(v, str):
        raise _Bad(want)
    try:
        split_addresses(v.strip())
    except ValueError:
        raise _Bad(want) from None
    return ", ".join(p.strip() for p in v.split(","))


def _registry(v: Any, ctx: _Ctx) -> str:
    want = "must be 'sqlite:<path>', 'sqlite::memory:' or 'postgresql://...'"
    if not isinstance(v, str):
        raise _Bad(want)
    url = v.strip()
    if url.startswith(("postgresql://", "postgres://")) or url == "sqlite::memory:":
        return url
    if url.startswith("sqlite:") and len(url) > len("sqlite:"):
        return "sqlite:" + str(_path(must_exist=False)(url.removeprefix("sqlite:"), ctx))
    raise _Bad(want, show=False)  # a mistyped URL may carry a password


def _tenants(v: Any, ctx: _Ctx) -> tuple[str, ...]:
    want = ("must be a non-empty list of distinct tenant names (letters, digits, "
            "'.', '_', '-')")
    if ctx.from_env and isinstance(v, str):
        v = _env_list(v)
    if not isinstance(v, list | tuple) or not v:
        raise _Bad(want)
    if not all(isinstance(t, str) and _SEGMENT.fullmatch(t) for t in v) or len(set(v)) < len(v):
        raise _Bad(want)
    return tuple(v)


_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SPIFFE = re.compile(r"spiffe://[a-z0-9._-]{1,255}(/[A-Za-z0-9._-]+)*")


def _spiffe_id(v: Any) -> str | None:
    if not isinstance(v, str) or not _SPIFFE.fullmatch(v.strip()):
        return None
    text = v.strip()
    return None if {".", ".."} & set(text.split("/")[3:]) else text


def _trust_domain(v: Any, ctx: _Ctx) -> str:
    if not isinstance(v, str) or not _TRUST_DOMAIN.fullmatch(v.strip()):
        raise _Bad("must be a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_')")
    return v.strip()


def _core_id(v: Any, ctx: _Ctx) -> str:
    if v == "" and not ctx.from_env:
        raise _Bad("required setting is missing: the Core's SPIFFE ID "
                   "(spiffe://trust-domain/path); `krypton dev init` writes it", show=False)
    spiffe = _spiffe_id(v)
    if spiffe is None:
        raise _Bad("must be the Core's SPIFFE ID (spiffe://trust-domain/path)")
    return spiffe


def _admin_listen(v: Any, ctx: _Ctx) -> str:
    want = ("must be 'host:port' (IPv6 as '[::1]:port'; port 0: any free one), "
            "or \"\" to turn the admin endpoint off")
    if not isinstance(v, str):
        raise _Bad(want)
    if not v.strip():
        return ""
    try:
        split_address(v.strip(), allow_zero=True)
    except ValueError:
        raise _Bad(want) from None
    return v.strip()


def _optional_existing(v: Any, ctx: _Ctx) -> Path | None:
    if v is None:
        return None
    path: Path = _FILE(v, ctx)
    return path


def _optional_file(v: Any, ctx: _Ctx) -> Path | None:
    if v is None:
        return None
    path: Path = _path(must_exist=False)(v, ctx)
    return path


_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _env_var(v: Any, ctx: _Ctx) -> str:
    """The name of an environment variable holding a secret (never the secret)."""
    if not isinstance(v, str) or not _ENV_VAR.fullmatch(v.strip()):
        raise _Bad("must be the name of an environment variable")
    name = v.strip()
    if name.startswith(("KRYPTON_CORE_", "KRYPTON_GATEWAY_")):
        raise _Bad("must not start with KRYPTON_CORE_ or KRYPTON_GATEWAY_ (those name settings)")
    return name


def _url(v: Any, ctx: _Ctx) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"https?://[^/\s]+/?", v.strip()):
        raise _Bad("must be an http:// or https:// address (scheme, host and port)")
    return v.strip().rstrip("/")


def _grant(gid: Any, tenants: Any, want: str) -> GatewayGrant:
    spiffe = _spiffe_id(gid)
    if spiffe is None or not isinstance(tenants, list | tuple) or not tenants:
        raise _Bad(want)
    if not all(isinstance(t, str) and _SEGMENT.fullmatch(t) for t in tenants):
        raise _Bad(want)
    return GatewayGrant(spiffe, tuple(dict.fromkeys(tenants)))


def _gateway_tables(v: Any, ctx: _Ctx) -> tuple[GatewayGrant, ...]:
    want = ("must be tables [[core.gateway]] each with id = \"<gateway SPIFFE ID>\" and "
            "tenants = [\"<tenant>\", ...] (and nothing else)")
    if ctx.from_env and isinstance(v, str):
        v = _env_list(v)
    if not isinstance(v, list | tuple):
        raise _Bad(want)
    grants = []
    for table in v:
        if not isinstance(table, dict) or set(table) != {"id", "tenants"}:
            raise _Bad(want)
        grants.append(_grant(table["id"], table["tenants"], want))
    return tuple(grants)


def _gateway_shorthand(v: Any, ctx: _Ctx) -> tuple[GatewayGrant, ...]:
    want = ("must be a list of '<gateway SPIFFE ID>=<tenant>[+<tenant>...]' "
            "(each gateway names its tenants)")
    if ctx.from_env and isinstance(v, str):
        v = _env_list(v)
    if not isinstance(v, list | tuple):
        raise _Bad(want)
    grants = []
    for entry in v:
        if not isinstance(entry, str) or "=" not in entry:
            raise _Bad(want)
        gid, _, tenants = entry.partition("=")
        grants.append(_grant(gid, [t.strip() for t in tenants.split("+")], want))
    return tuple(grants)


def _env_list(s: str) -> list[Any]:
    if s.strip().startswith("["):
        try:
            value = tomllib.loads(f"v = {s}")["v"]
        except tomllib.TOMLDecodeError:
            return []
        return value if isinstance(value, list) else []
    return [item.strip() for item in s.split(",") if item.strip()]


# -- the schema -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Section:
    cls: type[Any]
    settings: Mapping[str, Convert]
    subsections: Mapping[str, _Section] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(self.cls)}
        if names != set(self.settings) | set(self.subsections):
            raise AssertionError(f"schema of {self.cls.__name__} does not match its fields")


_FILE = _path(must_exist=True)
_PORT = _integer(0, 65535)


def _tls_file(v: Any, ctx: _Ctx) -> Path | None:
    return None if v is None else _FILE(v, ctx)


_ROOT_SETTINGS: dict[str, Convert] = {
    "kind": _choice(("file", "pkcs11", "openbao")),
    "key_file": _optional_file,
    "module": _path(must_exist=False),
    "token_label": _text,
    "key_label": _text,
    "pin_env": _env_var,
    "address": _url,
    "mount": _text,
    "transit_key": _text,
    "token_env": _env_var,
    "role_id_env": _env_var,
    "secret_id_env": _env_var,
    "approle_mount": _text,
    "ca": _optional_file,
    "timeout": _seconds,
}
_ROOT = _Section(RootConfig, _ROOT_SETTINGS)
_SEAL = _Section(SealConfig, {**_ROOT_SETTINGS, "kind": _choice(("none", "pkcs11", "openbao"))})
_TLS = _Section(
    TLSConfig,
    {
        "cert": _tls_file,
        "key": _tls_file,
        "ca": _tls_file,
        "min_version": _choice(TLS_VERSIONS),
        "session_tickets": _boolean,
        "trust_domain": _trust_domain,
        "deny_list": _optional_file,
        "reload_interval": _seconds,
    },
)
_ADMIN_SETTINGS: Mapping[str, Convert] = {
    "listen": _admin_listen,
    "cert": _optional_existing,
    "key": _optional_existing,
}
_GATEWAY_TLS = _Section(
    GatewayTLSConfig,
    {**_TLS.settings, "session_lifetime": _seconds, "source": _choice(TLS_SOURCES),
     "spiffe_socket": _text_or_empty, "spiffe_timeout": _seconds},
)
_GATEWAY = _Section(
    GatewayConfig,
    {
        "name": _text,
        "listen_host": _text,
        "listen_port": _PORT,
        "vault_path": _path(must_exist=False),
        "policy_file": _FILE,
        "workers": _integer(1, 1024),
        "drain_timeout": _seconds,
        "log_level": _choice(LOG_LEVELS),
        "log_format": _choice(LOG_FORMATS),
        "interop": _boolean,
        "allow_core_dumps": _boolean,
    },
    {
        "tls": _GATEWAY_TLS,
        "limits": _Section(
            LimitsConfig,
            {
                "max_message_size": _integer(8, 1 << 30),
                "max_depth": _integer(1, 512),
                "max_items": _integer(1),
                "max_batch_items": _integer(1),
                "max_connections": _integer(1),
                "descriptor_reserve": _integer(0),
                "max_pending_bytes": _integer(0),
                "receive_buffer": _integer(0, 1 << 30),
                "read_timeout": _seconds,
                "idle_timeout": _seconds,
                "handshake_timeout": _seconds,
                "max_response_size": _integer(8, 1 << 30),
                "max_rng_bytes": _integer(0, 1 << 30),
                "max_connections_per_tenant": _integer(1),
                "max_connections_per_identity": _integer(1),
                "max_pending_bytes_per_tenant": _integer(0),
                "max_pending_bytes_per_identity": _integer(0),
                "max_streams": _integer(1),
                "max_streams_per_tenant": _integer(1),
                "max_streams_per_identity": _integer(1),
                "write_timeout": _seconds,
                "refuse_grace": _seconds,
                "max_large_messages": _integer(1),
                "max_large_messages_per_tenant": _integer(1),
            },
        ),
        "cache": _Section(
            CacheConfig,
            {"records": _integer(0), "bytes": _auto(_integer(0)), "warm": _boolean},
        ),
        "vault": _Section(
            VaultConfig,
            {
                "backend": _choice(VAULT_BACKENDS),
                "address": _text,
                "mount": _text,
                "prefix": _text,
                "token_env": _text,
                "role_id_env": _text,
                "secret_id_env": _text,
                "ca": _optional_file,
                "connections": _integer(1, 256),
            },
        ),
        "uplink": _Section(
            UplinkConfig,
            {
                "core_address": _addresses,
                "timeout": _seconds,
                "core_id": _core_id,
                "max_lease": _seconds,
                "keepalive": _seconds,
                "keepalive_timeout": _seconds,
                "connect_timeout": _seconds,
                "stale_after": _seconds,
                "reconnect_max": _seconds,
            },
        ),
        "admin": _Section(GatewayAdminConfig, _ADMIN_SETTINGS),
        "seal": _SEAL,
    },
)
_CORE = _Section(
    CoreConfig,
    {
        "name": _text,
        "listen_host": _text,
        "listen_port": _PORT,
        "registry": _registry,
        "master_key_file": _path(must_exist=False),
        "l3_lease_seconds": _integer(1),
        "feed_retention": _integer(1),
        "tenants": _tenants,
        "gateway": _gateway_tables,
        "gateways": _gateway_shorthand,
        "allow_core_dumps": _boolean,
        "log_level": _choice(LOG_LEVELS),
        "log_format": _choice(LOG_FORMATS),
        "undo_journal_seconds": _seconds,
        "undo_journal_batches": _integer(0),
        "drain_timeout": _seconds,
        "rewrap_batch": _integer(1),
        "rewrap_interval": _seconds,
        "rewrap_pause": _pause,
    },
    {"tls": _TLS, "admin": _Section(CoreAdminConfig, _ADMIN_SETTINGS), "root": _ROOT},
)
_ROOTS: dict[str, _Section] = {"gateway": _GATEWAY, "core": _CORE}


# Variables with the section's prefix that are not settings: secrets read from
# the environment by the component itself, never stored in a config object
# (the Core master key: krypton.core.keystore.MASTER_KEY_ENV).
SECRETS_FROM_ENV: Mapping[str, frozenset[str]] = {
    "core": frozenset({"KRYPTON_CORE_MASTER_KEY"}),
}


def env_name(setting: str) -> str:
    """``gateway.limits.max_connections`` → ``KRYPTON_GATEWAY_LIMITS_MAX_CONNECTIONS``."""
    return ENV_PREFIX + setting.upper().replace(".", "_")


def settings(root: str) -> Iterator[str]:
    """Every dotted setting name under ``root`` (``"gateway"`` or ``"core"``)."""

    def walk(section: _Section, prefix: str) -> Iterator[str]:
        yield from (f"{prefix}.{key}" for key in section.settings)
        for key, sub in section.subsections.items():
            yield from walk(sub, f"{prefix}.{key}")

    return walk(_ROOTS[root], root)


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One setting as the schema defines it (for generated documentation)."""

    name: str  # dotted, e.g. gateway.limits.max_connections
    env: str  # the environment variable that overrides it
    owner: type[Any]  # the dataclass that holds it
    field: str
    type: str  # the annotation as written in the dataclass
    default: Any  # dataclasses.MISSING when the setting is required
    rule: str  # what a value must be, in the converter's own words ("" if anything goes)


class _Probe:
    """A value no converter accepts: what each one says about it is its rule."""


def describe(root: str) -> Iterator[SettingInfo]:
    """Every setting under ``root`` (``"gateway"`` or ``"core"``), in schema order."""

    def walk(section: _Section, prefix: str) -> Iterator[SettingInfo]:
        fields = {f.name: f for f in dataclasses.fields(section.cls)}
        for key, convert in section.settings.items():
            f = fields[key]
            try:
                convert(_Probe(), _Ctx(Path("/"), False))
                rule = ""
            except _Bad as bad:
                rule = bad.want.removeprefix("must be ")
            if rule == "a non-empty path":
                try:
                    convert("/nonexistent/krypton-probe", _Ctx(Path("/"), False))
                except _Bad:
                    rule = "a path to an existing file"
            default = f.default if f.default_factory is dataclasses.MISSING else (
                f.default_factory())
            name = f"{prefix}.{key}"
            yield SettingInfo(name, env_name(name), section.cls, key, str(f.type), default, rule)
        for key, sub in section.subsections.items():
            yield from walk(sub, f"{prefix}.{key}")

    return walk(_ROOTS[root], root)


# -- loading ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Loader:
    file: Path
    env: Mapping[str, str]

    def build(self, section: _Section, dotted: str, table: Mapping[str, Any]) -> Any:
        for key in table:
            if key not in section.settings and key not in section.subsections:
                raise ConfigError(f"{dotted}.{key}: unknown setting (in {self.file})")
        defaults = {f.name: f.default for f in dataclasses.fields(section.cls)}
        values: dict[str, Any] = {}
        raw: Any
        for key, convert in section.settings.items():
            name = f"{dotted}.{key}"
            var = env_name(name)
            if var in self.env:
                raw, ctx, where = self.env[var], _Ctx(self.file.parent, True), f"from {var}"
            elif key in table:
                raw, ctx, where = table[key], _Ctx(self.file.parent, False), f"in {self.file}"
            elif defaults[key] is not dataclasses.MISSING:
                raw, ctx, where = defaults[key], _Ctx(self.file.parent, False), "default"
            else:
                raise ConfigError(
                    f"{name}: required setting is missing (set it in {self.file} or {var})"
                )
            try:
                values[key] = convert(raw, ctx)
            except _Bad as bad:
                got = f", got {raw!r}" if bad.show else ""
                raise ConfigError(f"{name}: {bad.want}{got} ({where})") from None
        for key, sub in section.subsections.items():
            values[key] = self.build(sub, f"{dotted}.{key}", _table(table, key, f"{dotted}.{key}",
                                                                     self.file))
        return section.cls(**values)


def _table(parent: Mapping[str, Any], key: str, dotted: str, file: Path) -> Mapping[str, Any]:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{dotted}: must be a table ([{dotted}]) (in {file})")
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8") from None


def _load(root: str, path: str | os.PathLike[str], env: Mapping[str, str]) -> Any:
    file = Path(path).expanduser().absolute()
    doc = _read_toml(file)
    for key in doc:
        if key not in _ROOTS:
            raise ConfigError(f"{key}: unknown section (in {file}); expected [{root}]")
    known = {env_name(s) for s in settings(root)} | SECRETS_FROM_ENV.get(root, frozenset())
    prefix = env_name(root) + "_"
    for var in sorted(env):
        if var.startswith(prefix) and var not in known:
            raise ConfigError(f"{var}: names no {root} setting (see krypton.config docs)")
    return _Loader(file, env).build(_ROOTS[root], root, _table(doc, root, root, file))


def load_root_config(
    spec: str, base: Path, env: Mapping[str, str] = os.environ
) -> tuple[RootConfig, Path | None]:
    """A root named on the command line (``krypton core rewrap-root --to``): a TOML
    file holding a ``[core.root]`` table (a whole core.toml will do), or inline
    ``kind=pkcs11,token_label=t,...`` settings. Also the file's
    ``core.master_key_file``, if it names one (a ``file`` root's default key)."""
    text = spec.strip()
    if "=" in text and not Path(text).exists():
        table: dict[str, Any] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--to {spec!r}: expected key=value[,key=value...]")
            if key.strip() not in _ROOT.settings:
                raise ConfigError(f"--to: core.root.{key.strip()}: unknown setting")
            table[key.strip()] = value.strip()
        loader = _Loader(base / "(--to)", table_env(table))
        config: RootConfig = loader.build(_ROOT, "core.root", {})
        return config, None
    file = Path(text).expanduser().absolute()
    doc = _read_toml(file)
    core = _table(doc, "core", "core", file)
    master = core.get("master_key_file")
    key_file = None if master is None else _path(must_exist=False)(master, _Ctx(file.parent, False))
    root: RootConfig = _Loader(file, {}).build(_ROOT, "core.root",
                                               _table(core, "root", "core.root", file))
    return root, key_file


def table_env(table: Mapping[str, str]) -> dict[str, str]:
    """Inline ``core.root`` settings as the variables that would set them."""
    return {env_name(f"core.root.{key}"): value for key, value in table.items()}


def load_gateway_config(
    path: str | os.PathLike[str], env: Mapping[str, str] = os.environ
) -> GatewayConfig:
    """Load ``[gateway]`` from a TOML file, applying ``KRYPTON_GATEWAY_*`` overrides."""
    config: GatewayConfig = _load("gateway", path, env)
    _check_tls_files(config.tls, "gateway.tls", path, spiffe=config.tls.source == "spiffe")
    _check_admin("gateway", config.admin)
    return config


def load_core_config(
    path: str | os.PathLike[str], env: Mapping[str, str] = os.environ
) -> CoreConfig:
    """Load ``[core]`` from a TOML file, applying ``KRYPTON_CORE_*`` overrides."""
    config: CoreConfig = _load("core", path, env)
    _check_tls_files(config.tls, "core.tls", path, spiffe=False)
    _check_gateways(config)
    _check_admin("core", config.admin)
    return config


def _check_tls_files(tls: TLSConfig, setting: str, path: str | os.PathLike[str], *,
                     spiffe: bool) -> None:
    """cert, key and ca are required unless the material comes from SPIFFE."""
    if spiffe:
        return
    for name in ("cert", "key", "ca"):
        if getattr(tls, name) is None:
            raise ConfigError(
                f"{setting}.{name}: required setting is missing (set it in "
                f"{Path(path).expanduser().absolute()} or {env_name(f'{setting}.{name}')})"
            )


def _check_admin(root: str, admin: AdminConfig) -> None:
    """HTTPS needs both a certificate and its key."""
    if (admin.cert is None) != (admin.key is None):
        given, missing = ("cert", "key") if admin.key is None else ("key", "cert")
        raise ConfigError(f"{root}.admin.{missing}: required setting is missing "
                          f"({root}.admin.{given} is set: HTTPS needs both)")


def _check_gateways(config: CoreConfig) -> None:
    """Each gateway listed once, with tenants this Core has."""
    seen: set[str] = set()
    for setting, grants in (("core.gateway", config.gateway), ("core.gateways", config.gateways)):
        for grant in grants:
            if grant.id in seen:
                raise ConfigError(f"{setting}: gateway {grant.id} is listed twice")
            seen.add(grant.id)
            unknown = sorted(set(grant.tenants) - set(config.tenants))
            if unknown:
                raise ConfigError(
                    f"{setting}: gateway {grant.id} is given tenant(s) {', '.join(unknown)} "
                    "that are not in core.tenants"
                )
    if any(not g.startswith(f"spiffe://{config.tls.trust_domain}/") for g in seen):
        raise ConfigError(
            f"core.gateway: every gateway's SPIFFE ID must be in the trust domain "
            f"{config.tls.trust_domain!r} (core.tls.trust_domain)"
        )
