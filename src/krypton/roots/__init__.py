"""Roots of trust: seal and unseal small secrets under a key held elsewhere.

The Core's L1 (``[core.root]``: the tenants' L2 keys) and the gateway's seal
(``[gateway.seal]``: its copies of L3 versions in the vault) are both a
:class:`RootSealer`: :class:`FileSealer` (development: a key file),
:class:`~krypton.roots.pkcs11.Pkcs11Sealer` (a PKCS#11 token) or
:class:`~krypton.roots.openbao.OpenBaoSealer` (OpenBao Transit).
:func:`open_root` builds one from its configuration; secrets (the PIN, the
OpenBao token or AppRole credentials) come from the environment variables the
configuration names, never from the configuration itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from krypton.config import RootConfig
from krypton.crypto.secret import SecretBytes
from krypton.errors import ConfigError, OpenBaoError, RootUnavailable
from krypton.roots.base import KINDS, RootHealth, RootSealer, kind_of, probe
from krypton.roots.file import FileSealer

__all__ = [
    "KINDS",
    "FileSealer",
    "RootHealth",
    "RootSealer",
    "kind_of",
    "open_root",
    "probe",
]


async def open_root(
    config: RootConfig,
    *,
    setting: str = "core.root",
    create: bool = False,
    file_key: Callable[[], SecretBytes] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RootSealer:
    """The root ``config`` describes, reached and checked. ``create``: make the
    root key where this process may (a key file, a PKCS#11 key; never a Transit
    key). ``file_key`` loads the key of a ``file`` root. Errors name ``setting``."""
    env = os.environ if environ is None else environ
    if config.kind == "file":
        if file_key is None:
            raise ConfigError(f"{setting}.kind: 'file' is not available here")
        return FileSealer(file_key(), "key file" if config.key_file is None
                          else str(config.key_file))
    if config.kind == "pkcs11":
        from krypton.roots.pkcs11 import Pkcs11Sealer

        pin = _secret(env, config.pin_env, f"{setting}.pin_env", "the PKCS#11 user PIN")
        return await Pkcs11Sealer.open(config.module, config.token_label, config.key_label,
                                       pin, create=create)
    if config.kind == "openbao":
        from krypton.openbao import OpenBaoClient
        from krypton.roots.openbao import OpenBaoSealer

        token = env.get(config.token_env, "").strip() or None
        role_id = env.get(config.role_id_env, "").strip() or None
        secret_id = env.get(config.secret_id_env, "").strip() or None
        if token is None and not (role_id and secret_id):
            raise ConfigError(
                f"{setting}: no OpenBao credentials: set {config.token_env} (a token) or "
                f"{config.role_id_env} and {config.secret_id_env} (an AppRole)")
        try:
            client = OpenBaoClient(
                config.address, token=token, role_id=role_id, secret_id=secret_id,
                approle_mount=config.approle_mount, ca=config.ca, timeout=config.timeout,
            )
        except OpenBaoError as exc:
            raise RootUnavailable(exc.message) from None
        return await OpenBaoSealer.open(client, config.transit_key, config.mount)
    raise ConfigError(f"{setting}.kind: {config.kind!r} is not a root of trust")


def _secret(env: Mapping[str, str], name: str, setting: str, what: str) -> str:
    value = env.get(name, "")
    if not value:
        raise ConfigError(f"{setting}: {what} is read from ${name}, which is not set")
    return value
