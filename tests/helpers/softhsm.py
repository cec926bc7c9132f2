"""A SoftHSM2 token directory of a test's own: PKCS#11 roots of trust, for real.

:func:`softhsm` writes a ``softhsm2.conf`` whose token directory is in the
given folder and initialises tokens in it with ``softhsm2-util`` (Debian's
``softhsm2`` package, which ``.ci/run`` installs). Everything that loads the
SoftHSM2 module with ``SOFTHSM2_CONF`` pointing there (the test's process
through the ``softhsm`` fixture, a ``krypton`` process through
:attr:`SoftHsm.env`) sees those tokens and no others. A missing package is an
error that says what to install, never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "1234"
SO_PIN = "123456"
PIN_ENV = "TEST_PKCS11_PIN"


class SoftHsmUnavailable(RuntimeError):
    """The machine has no SoftHSM2."""


@dataclass(frozen=True)
class SoftHsm:
    """A token directory: ``conf`` (its softhsm2.conf), the module, the user PIN."""

    conf: Path
    module: Path = MODULE
    pin: str = PIN

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to find these tokens and log in (the PIN in PIN_ENV)."""
        return {"SOFTHSM2_CONF": str(self.conf), PIN_ENV: self.pin}

    def init_token(self, label: str) -> None:
        _util(self.conf, "--init-token", "--free", "--label", label, "--pin", self.pin,
              "--so-pin", SO_PIN)

    def delete_token(self, label: str) -> None:
        _util(self.conf, "--delete-token", "--token", label)

    def root_settings(self, token: str, key: str = "krypton-root") -> dict[str, str]:
        """``[core.root]`` / ``[gateway.seal]`` settings for a key in token ``token``."""
        return {"kind": "pkcs11", "module": str(self.module), "token_label": token,
                "key_label": key, "pin_env": PIN_ENV}


def softhsm(folder: Path) -> SoftHsm:
    """A fresh, empty token directory under ``folder``."""
    if not MODULE.exists() or shutil.which("softhsm2-util") is None:
        raise SoftHsmUnavailable(
            f"SoftHSM2 not found ({MODULE}, softhsm2-util): install the Debian package "
            "'softhsm2' (.ci/run does this)")
    tokens = folder / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    return SoftHsm(conf)


def _util(conf: Path, *args: str) -> None:
    done = subprocess.run(
        ["softhsm2-util", *args], env={"SOFTHSM2_CONF": str(conf), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise SoftHsmUnavailable(f"softhsm2-util {args[0]} failed: {done.stderr or done.stdout}")
