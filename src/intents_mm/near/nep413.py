"""NEP-413 off-chain message hashing (the hash an intent signer signs).

``hash = sha256(u32_le(2**31 + 413) || borsh(Nep413Payload))`` where the payload is, in order,
``message: String``, ``nonce: [u8; 32]``, ``recipient: String``, ``callback_url: Option<String>``.
The signature is plain Ed25519 over these 32 hash bytes.
"""

from __future__ import annotations

import hashlib

from intents_mm.errors import InputError
from intents_mm.near.borsh import BorshWriter

NEP413_TAG = 2**31 + 413
NONCE_LEN = 32


def nep413_bytes(message: str, nonce: bytes, recipient: str, callback_url: str | None = None) -> bytes:
    """The exact bytes that are hashed: the tag followed by the Borsh payload."""
    if len(nonce) != NONCE_LEN:
        raise InputError(f"NEP-413 nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
    writer = BorshWriter().u32(NEP413_TAG).string(message).fixed_bytes(nonce, NONCE_LEN).string(recipient)
    writer.option(callback_url, BorshWriter.string)
    return writer.getvalue()


def nep413_hash(message: str, nonce: bytes, recipient: str, callback_url: str | None = None) -> bytes:
    """The 32-byte sha256 NEP-413 prehash of a payload (what gets signed; also the intent hash)."""
    return hashlib.sha256(nep413_bytes(message, nonce, recipient, callback_url)).digest()
