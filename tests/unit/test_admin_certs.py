"""The certificate figures of the admin endpoint come from the material in use."""

from __future__ import annotations

import time

from cryptography.hazmat.primitives import serialization

from krypton.admin.certs import Expiry, expiry_family
from krypton.pki import issue_ca, issue_leaf
from krypton.tls.material import Material


def material(days: int) -> Material:
    ca, ca_key = issue_ca("expiry test CA")
    leaf, _ = issue_leaf(ca, ca_key, common_name="leaf", spiffe_id=None, server=True, days=days)
    pem = serialization.Encoding.PEM
    return Material(chain=leaf.public_bytes(pem), key=b"unused", ca=ca.public_bytes(pem),
                    not_after=leaf.not_valid_after_utc.timestamp(), serial=leaf.serial_number,
                    origin="test")


def test_nothing_loaded_is_not_ready_and_shows_no_figure() -> None:
    expiry = Expiry(lambda: None)
    assert expiry.check() == ["no TLS certificate loaded"]
    assert expiry_family(expiry, "gateway").values == ()


def test_a_valid_certificate_is_ready_and_both_roles_are_shown() -> None:
    m = material(days=30)
    expiry = Expiry(lambda: m)
    assert expiry.check() == []
    family = expiry_family(expiry, "gateway")
    shown = {labels: value for labels, value in family.values}
    assert shown[("gateway",)] == m.not_after
    assert shown[("ca",)] > time.time()


def test_an_expired_certificate_makes_the_process_unready() -> None:
    m = material(days=30)
    expired = Material(chain=m.chain, key=m.key, ca=m.ca, not_after=time.time() - 1,
                       serial=m.serial, origin="test")
    assert Expiry(lambda: expired).check() == ["the TLS certificate in use has expired"]
