"""Base58 (Bitcoin alphabet) and strict standard Base64, with errors as ``InputError``.

NEAR writes keys, signatures and hashes in base58 and nonces / transactions in base64 (standard
alphabet, with padding). Both decoders reject anything that is not canonical input for their alphabet.
"""

from __future__ import annotations

import base64
import binascii
import re

import base58

from intents_mm.errors import InputError

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_CHARS = frozenset(B58_ALPHABET)
_B64_RE = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")


def b58encode(data: bytes) -> str:
    """Encode bytes as base58 (leading zero bytes become leading ``1`` characters)."""
    return str(base58.b58encode(bytes(data)).decode("ascii"))


def b58decode(text: str) -> bytes:
    """Decode base58 text; ``InputError`` on any character outside the Bitcoin alphabet."""
    if not isinstance(text, str):
        raise InputError(f"base58 value must be a string, got {type(text).__name__}")
    bad = next((c for c in text if c not in _B58_CHARS), None)
    if bad is not None:
        raise InputError(f"invalid base58 character {bad!r}")
    return bytes(base58.b58decode(text.encode("ascii")))


def b64encode(data: bytes) -> str:
    """Encode bytes as standard base64 with padding."""
    return base64.b64encode(bytes(data)).decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode strict standard base64 (``+/`` alphabet, correct padding, no whitespace)."""
    if not isinstance(text, str):
        raise InputError(f"base64 value must be a string, got {type(text).__name__}")
    if not _B64_RE.match(text):
        raise InputError("invalid base64 (standard alphabet with padding expected)")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"invalid base64: {exc}") from None
    # Reject non-canonical encodings (non-zero unused trailing bits).
    if base64.b64encode(raw).decode("ascii") != text:
        raise InputError("invalid base64: non-canonical padding bits")
    return raw
