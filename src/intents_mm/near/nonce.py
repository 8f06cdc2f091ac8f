"""Verifier nonces: 32 bytes, either legacy (any bytes) or versioned V1.

Versioned V1 layout: magic ``56 28 f6 c6`` | version ``00`` | salt (4) | nonce deadline in ns since the
Unix epoch (u64 little-endian, 8) | random (15). Any 32 bytes not starting with the magic are legacy.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from intents_mm.errors import InputError

VERSIONED_MAGIC = bytes.fromhex("5628f6c6")
VERSION_V1 = 0
NONCE_LEN = 32
SALT_LEN = 4
RANDOM_LEN = 15
_U64_LIMIT = 1 << 64


@dataclass(frozen=True)
class VersionedNonce:
    """A decoded V1 versioned nonce."""

    salt: bytes
    deadline_ns: int
    random: bytes

    def __post_init__(self) -> None:
        if len(self.salt) != SALT_LEN:
            raise InputError(f"nonce salt must be {SALT_LEN} bytes, got {len(self.salt)}")
        if len(self.random) != RANDOM_LEN:
            raise InputError(f"nonce random part must be {RANDOM_LEN} bytes, got {len(self.random)}")
        if isinstance(self.deadline_ns, bool) or not isinstance(self.deadline_ns, int):
            raise InputError("nonce deadline must be an int (ns)")
        if not 0 <= self.deadline_ns < _U64_LIMIT:
            raise InputError(f"nonce deadline {self.deadline_ns} ns is out of the u64 range")

    def to_bytes(self) -> bytes:
        return (
            VERSIONED_MAGIC
            + bytes([VERSION_V1])
            + self.salt
            + self.deadline_ns.to_bytes(8, "little")
            + self.random
        )


@dataclass(frozen=True)
class LegacyNonce:
    """A 32-byte nonce without the versioned magic prefix (no extra checks by the Verifier)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != NONCE_LEN:
            raise InputError(f"nonce must be {NONCE_LEN} bytes, got {len(self.raw)}")
        if self.raw.startswith(VERSIONED_MAGIC):
            raise InputError("a legacy nonce must not start with the versioned magic prefix")

    def to_bytes(self) -> bytes:
        return self.raw


def encode_versioned_nonce(salt: bytes, deadline_ns: int, random15: bytes) -> bytes:
    """The 32 bytes of a V1 versioned nonce."""
    return VersionedNonce(bytes(salt), deadline_ns, bytes(random15)).to_bytes()


def decode_nonce(raw: bytes) -> VersionedNonce | LegacyNonce:
    """Classify and decode 32 nonce bytes; ``InputError`` on a wrong length or unknown version."""
    if len(raw) != NONCE_LEN:
        raise InputError(f"nonce must be {NONCE_LEN} bytes, got {len(raw)}")
    raw = bytes(raw)
    if not raw.startswith(VERSIONED_MAGIC):
        return LegacyNonce(raw)
    version = raw[4]
    if version != VERSION_V1:
        raise InputError(f"versioned nonce has unknown version {version}")
    return VersionedNonce(
        salt=raw[5:9],
        deadline_ns=int.from_bytes(raw[9:17], "little"),
        random=raw[17:32],
    )


def random_versioned_nonce(salt: bytes, deadline_ns: int) -> bytes:
    """A fresh V1 nonce with 15 random bytes from ``secrets``."""
    return encode_versioned_nonce(salt, deadline_ns, secrets.token_bytes(RANDOM_LEN))
