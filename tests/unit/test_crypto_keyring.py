from __future__ import annotations

import contextlib
import threading

import pytest

from krypton.crypto.keyring import KeyRing, L3Grant, L3State
from krypton.crypto.secret import SecretBytes, generate_key
from krypton.errors import CryptographicFailure, InvalidField, KeyUnavailable, UnwrapFailed

UID = "0b6c8c64-5c8e-4c4e-9f0a-3d1f3e1d2c01"
DAY = 86400.0


class Clock:
    """A settable clock for the ring (time is an input, not a component)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ring(clock: Clock) -> KeyRing:
    return KeyRing(clock=clock)


def _install(ring: KeyRing, tenant: str, version: int, state: L3State = L3State.ACTIVE,
             lease: float = DAY) -> SecretBytes:
    material = generate_key(256)
    ring.install(tenant, version, material, state, ring.lease_deadline(lease))
    return material


def test_wrap_unwrap_round_trip(ring: KeyRing) -> None:
    _install(ring, "demo", 1)
    l4 = generate_key(256)
    version, blob = ring.wrap("demo", UID, l4)
    assert version == 1
    assert ring.unwrap("demo", UID, 1, blob) == l4
    assert ring.tenants() == ["demo"]
    assert ring.active_version("demo") == 1
    assert ring.wrap_count("demo", 1) == 1


def test_unknown_tenant_fails_closed_naming_the_tenant(ring: KeyRing) -> None:
    with pytest.raises(KeyUnavailable, match="'nobody'"):
        ring.wrap("nobody", UID, generate_key(256))
    with pytest.raises(KeyUnavailable, match="'nobody'"):
        ring.unwrap("nobody", UID, 1, b"\x01" * 70)
    assert ring.active_version("nobody") is None


def test_tenant_with_only_deactivated_versions_cannot_wrap(ring: KeyRing) -> None:
    _install(ring, "demo", 1, L3State.DEACTIVATED)
    with pytest.raises(KeyUnavailable, match="no active service key"):
        ring.wrap("demo", UID, generate_key(256))


def test_rotation_new_wraps_old_still_unwraps(ring: KeyRing) -> None:
    _install(ring, "demo", 1)
    l4_old = generate_key(256)
    _, old_blob = ring.wrap("demo", UID, l4_old)
    _install(ring, "demo", 2)
    ring.set_state("demo", 1, L3State.DEACTIVATED)
    version, new_blob = ring.wrap("demo", UID, generate_key(256))
    assert version == 2
    assert ring.active_version("demo") == 2
    assert ring.unwrap("demo", UID, 1, old_blob) == l4_old
    assert ring.versions("demo") == {1: L3State.DEACTIVATED, 2: L3State.ACTIVE}
    with pytest.raises(UnwrapFailed):
        ring.unwrap("demo", UID, 1, new_blob)  # the header names version 2


def test_highest_active_version_wins(ring: KeyRing) -> None:
    _install(ring, "demo", 3)
    _install(ring, "demo", 2)
    assert ring.wrap("demo", UID, generate_key(128))[0] == 3


def test_lease_expiry_fails_closed_and_renewal_restores(ring: KeyRing, clock: Clock) -> None:
    material = generate_key(256)
    raw = material.reveal()
    ring.install("demo", 1, material, L3State.ACTIVE, clock.now + 60)
    l4 = generate_key(256)
    _, blob = ring.wrap("demo", UID, l4)
    clock.now += 60
    with pytest.raises(KeyUnavailable, match="lease of tenant 'demo' has expired"):
        ring.wrap("demo", UID, generate_key(256))
    with pytest.raises(KeyUnavailable, match="expired"):
        ring.unwrap("demo", UID, 1, blob)
    assert ring.active_version("demo") is None
    # The Core renews: same bytes, new lease.
    ring.install("demo", 1, SecretBytes(raw), L3State.ACTIVE, clock.now + 60)
    assert ring.unwrap("demo", UID, 1, blob) == l4
    assert ring.wrap_count("demo", 1) == 1


def test_expire_wipes_expired_versions(ring: KeyRing, clock: Clock) -> None:
    short = _install(ring, "demo", 1, L3State.DEACTIVATED, lease=10)
    long = _install(ring, "demo", 2, lease=1000)
    clock.now += 11
    assert ring.expire() == 1
    assert short.wiped
    assert not any(short.view())
    assert not long.wiped
    assert ring.versions("demo") == {2: L3State.ACTIVE}


@pytest.mark.parametrize("state", [L3State.COMPROMISED, L3State.DESTROYED])
def test_compromised_or_destroyed_drops_and_wipes(ring: KeyRing, state: L3State) -> None:
    material = _install(ring, "demo", 1)
    _, blob = ring.wrap("demo", UID, generate_key(256))
    ring.set_state("demo", 1, state)
    assert material.wiped
    assert not any(material.view())
    assert ring.versions("demo") == {}
    assert ring.tenants() == []
    with pytest.raises(KeyUnavailable):
        ring.unwrap("demo", UID, 1, blob)
    with pytest.raises(KeyUnavailable):
        ring.wrap("demo", UID, generate_key(256))


def test_install_in_a_dropped_state_drops_at_once(ring: KeyRing) -> None:
    held = _install(ring, "demo", 1)
    pushed = generate_key(256)
    ring.install("demo", 1, pushed, L3State.COMPROMISED, ring.lease_deadline(DAY))
    assert held.wiped
    assert pushed.wiped
    assert ring.versions("demo") == {}


def test_reinstall_refreshes_and_wipes_the_duplicate(ring: KeyRing, clock: Clock) -> None:
    material = generate_key(256)
    copy = SecretBytes(material.view())
    ring.install("demo", 1, material, L3State.ACTIVE, clock.now + 5)
    ring.install("demo", 1, copy, L3State.DEACTIVATED, clock.now + 500)
    assert copy.wiped
    assert not material.wiped
    assert ring.versions("demo") == {1: L3State.DEACTIVATED}
    assert ring.lease_expires_at("demo", 1) == clock.now + 500


def test_conflicting_material_for_a_held_version_is_refused(ring: KeyRing) -> None:
    _install(ring, "demo", 1)
    l4 = generate_key(256)
    _, blob = ring.wrap("demo", UID, l4)
    with pytest.raises(CryptographicFailure, match="conflicting"):
        _install(ring, "demo", 1)
    assert ring.unwrap("demo", UID, 1, blob) == l4


def test_bad_material_is_wiped_and_refused(ring: KeyRing) -> None:
    short = generate_key(128)
    with pytest.raises(InvalidField):
        ring.install("demo", 1, short, L3State.ACTIVE, ring.lease_deadline(DAY))
    assert short.wiped
    assert ring.tenants() == []


def test_tenants_are_isolated(ring: KeyRing) -> None:
    material = generate_key(256)
    ring.install("a", 1, material, L3State.ACTIVE, ring.lease_deadline(DAY))
    ring.install("b", 1, SecretBytes(material.view()), L3State.ACTIVE, ring.lease_deadline(DAY))
    _, blob = ring.wrap("a", UID, generate_key(256))
    with pytest.raises(UnwrapFailed):
        ring.unwrap("b", UID, 1, blob)  # same L3 bytes, other tenant: AAD differs


def test_set_state_of_unknown_version(ring: KeyRing) -> None:
    with pytest.raises(KeyUnavailable):
        ring.set_state("demo", 9, L3State.ACTIVE)
    ring.set_state("demo", 9, L3State.COMPROMISED)  # idempotent
    ring.drop("demo", 9)


def test_drop_tenant(ring: KeyRing) -> None:
    material = _install(ring, "demo", 1)
    ring.drop_tenant("demo")
    assert material.wiped
    assert ring.tenants() == []


def test_rotation_is_requested_once_at_the_threshold(clock: Clock) -> None:
    asked: list[tuple[str, int]] = []
    ring = KeyRing(clock=clock, rotate_after=3, on_rotation_due=lambda t, v: asked.append((t, v)))
    _install(ring, "demo", 4)
    for _ in range(6):
        ring.wrap("demo", UID, generate_key(128))
    assert asked == [("demo", 4)]


def test_install_grant_and_grant_repr(clock: Clock) -> None:
    ring = KeyRing(clock=clock)
    material = generate_key(256)
    grant = L3Grant("demo", 1, material, L3State.ACTIVE, 30.0)
    assert material.reveal().hex() not in repr(grant)
    ring.install_grant(grant)
    assert ring.lease_expires_at("demo", 1) == clock.now + 30.0


def test_writer_thread_rotating_while_the_loop_wraps() -> None:
    ring = KeyRing()
    _install(ring, "demo", 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def rotate() -> None:
        try:
            for version in range(2, 200):
                _install(ring, "demo", version)
                ring.set_state("demo", version - 1, L3State.DEACTIVATED)
                if version > 3:
                    ring.drop("demo", version - 3)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    writer = threading.Thread(target=rotate)
    writer.start()
    wrapped = 0
    while not stop.is_set() or wrapped < 100:
        l4 = generate_key(256)
        version, blob = ring.wrap("demo", UID, l4)
        # The version may be dropped in between (KeyUnavailable): never a wrong key.
        with contextlib.suppress(KeyUnavailable):
            assert ring.unwrap("demo", UID, version, blob) == l4
        wrapped += 1
    writer.join()
    assert not errors
    assert ring.active_version("demo") == 199
