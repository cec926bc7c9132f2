"""Authenticated vault records: a MAC over each record's security-relevant columns.

How this works
--------------
A record in the vault file is ``uid, tenant, object_type, algorithm, length,
state, l3_version, wrapped, attributes, created, synced`` plus ``mac``. The
wrapped blob is AES-GCM under the tenant's L3, bound to tenant and uid; the
other columns are not, so before schema v3 one flipped bit in the attribute
blob (Sensitive True -> False) made Get export a Sensitive key in the clear
(issue 11, finding 4).

The MAC is HMAC-SHA256 over :func:`krypton.model.record.authenticated_bytes`
(uid, tenant, object type, algorithm, length, state, L3 version, the wrapped
blob and the whole attribute blob, which holds the usage mask, Sensitive,
Extractable and the dates) under a key derived from the record's L3 version
(``HKDF(L3, "krypton record mac v1")``, :meth:`krypton.crypto.wrap.WrappingKey.mac`).

Why a MAC and not the wrap's associated data: state, usage-relevant dates
and attributes change through Core operations (Activate, Revoke, Modify
Attribute) that the gateway applies to its vault. Under AAD each change would
need the L4 unwrapped and re-wrapped; a MAC is recomputed from the new
columns without touching key material. Why keyed from L3: only holders of
the tenant's L3 can compute it — the gateway (in memory, leased) and the
Core (L3 under L2) — not whoever can write the vault file.

Where it is checked (:func:`check`):

- every record read from the file (``Vault.get`` on a cache miss,
  ``Vault.outbox``): the memory cache only ever holds records that were
  checked or written by this process, so the hot path (cache hits, the Get
  fast path) pays nothing;
- before every rewrite on the writer thread (state, attributes, reinstate):
  the old row is checked before the new MAC is computed, so a Core-driven
  Activate cannot launder a tampered row into a freshly MAC'd one.

A record that fails is refused with :class:`RecordTampered` (Cryptographic
Failure) and one log line naming the uid (never key material). If the L3
version is not held the check cannot run and the read fails closed with Key
Unavailable.

Migration: rows written before v3 have no MAC; the v3 step lists their uids
in ``unsealed``, the one place an empty MAC is accepted. ``Vault.seal_legacy``
(run by the gateway at start, once its L3 is installed) MACs them and empties
the list. An attacker who can write the file can make a row look legacy only
by also adding it to ``unsealed`` — the same as rewriting the file into a
pre-v3 vault, which no migration can tell from a real one (docs/security.md).
A vault opened without a sealer (tools, benchmarks) neither writes nor
checks MACs.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import replace

from krypton.errors import CryptographicFailure, KeyUnavailable
from krypton.model.record import KeyRecord, authenticated_bytes

log = logging.getLogger("krypton.vault")

# (tenant, l3_version, data) -> MAC; KeyRing.record_mac.
Sealer = Callable[[str, int, bytes], bytes]
# uid -> is it listed as a record written before MACs existed?
Unsealed = Callable[[str], bool]


class RecordTampered(CryptographicFailure):
    """A vault record's covered columns do not match its MAC."""


def seal(record: KeyRecord, sealer: Sealer | None) -> KeyRecord:
    """``record`` with its MAC computed (unchanged without a sealer)."""
    if sealer is None:
        return record
    mac = sealer(record.tenant, record.l3_version, authenticated_bytes(record))
    return replace(record, mac=mac)


def check(record: KeyRecord, sealer: Sealer | None, unsealed: Unsealed) -> KeyRecord:
    """``record`` if its MAC is right (or it is a listed legacy row); else
    :class:`RecordTampered`, logged with the uid."""
    if sealer is None:
        return record
    if record.mac:
        try:
            want = sealer(record.tenant, record.l3_version, authenticated_bytes(record))
        except KeyUnavailable:
            log.warning("vault record %r cannot be authenticated: its L3 is not held", record.uid)
            raise
        if hmac.compare_digest(want, record.mac):
            return record
    elif unsealed(record.uid):
        return record
    log.error("vault record %r failed authentication: refused", record.uid)
    raise RecordTampered(f"stored object {record.uid!r} failed authentication")
