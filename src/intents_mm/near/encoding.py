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


# base58 digits two at a time (58**2 = 3364 pairs), ten per big-integer division: a signature takes
# 9 big divisions instead of the 88 of the digit-by-digit loop (~5 µs instead of ~14 µs; every signed
# quote encodes its signature and its hash). Checked against the ``base58`` package in the tests.
_B58_PAIRS = tuple(a + b for a in B58_ALPHABET for b in B58_ALPHABET)
_B58_TEN_DIGITS = 58**10


def b58encode(data: bytes) -> str:
    """Encode bytes as base58 (leading zero bytes become leading ``1`` characters)."""
    data = bytes(data)
    n = int.from_bytes(data, "big")
    chunks: list[int] = []
    while n:
        n, chunk = divmod(n, _B58_TEN_DIGITS)
        chunks.append(chunk)
    pairs = _B58_PAIRS
    parts: list[str] = []
    for chunk in reversed(chunks):  # most significant first, each exactly ten digits
        rest, d4 = divmod(chunk, 3364)
        rest, d3 = divmod(rest, 3364)
        rest, d2 = divmod(rest, 3364)
        d0, d1 = divmod(rest, 3364)
        parts.append(pairs[d0] + pairs[d1] + pairs[d2] + pairs[d3] + pairs[d4])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(parts).lstrip("1")


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
