"""Ed25519 keys and signatures in NEAR's string forms, and NEAR account-id rules.

* Public key: ``"ed25519:" + base58(32 bytes)`` (a bare base58 string is read as ed25519 too).
* Secret key: ``"ed25519:" + base58(seed(32) || public_key(32))``; a bare 32-byte seed is accepted.
* Signature: ``"ed25519:" + base58(64 bytes)``.

A ``SigningKey`` never shows its secret in ``repr``/``str``; only ``to_secret_string()`` reveals it.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from intents_mm.errors import InputError
from intents_mm.near.encoding import b58decode, b58encode

ED25519_PREFIX = "ed25519:"
PUBLIC_KEY_LEN = 32
SEED_LEN = 32
SIGNATURE_LEN = 64

_ACCOUNT_RE = re.compile(r"^(([a-z\d]+[\-_])*[a-z\d]+\.)*([a-z\d]+[\-_])*[a-z\d]+\Z")
_IMPLICIT_RE = re.compile(r"^[0-9a-f]{64}\Z")


def _strip_curve(text: str, what: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, got {type(text).__name__}")
    if ":" in text:
        curve, _, body = text.partition(":")
        if curve != "ed25519":
            raise InputError(f"{what} has unsupported curve {curve!r} (only ed25519)")
        return body
    return text


def _decode_exact(text: str, length: int, what: str) -> bytes:
    body = _strip_curve(text, what)
    raw = b58decode(body)
    if len(raw) != length:
        raise InputError(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key (32 raw bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != PUBLIC_KEY_LEN:
            raise InputError(f"public key must be {PUBLIC_KEY_LEN} bytes")

    @classmethod
    def from_string(cls, text: str) -> PublicKey:
        """Parse ``ed25519:<base58>`` or bare base58; ``InputError`` on another curve or a bad length."""
        return cls(_decode_exact(text, PUBLIC_KEY_LEN, "public key"))

    def to_string(self) -> str:
        return self._text

    @functools.cached_property
    def _text(self) -> str:  # encoded once: every signed quote carries the public key
        return ED25519_PREFIX + b58encode(self.raw)

    def __str__(self) -> str:
        return self.to_string()

    def __repr__(self) -> str:
        return f"PublicKey({self.to_string()!r})"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is a valid Ed25519 signature of ``message`` by this key."""
        if len(signature) != SIGNATURE_LEN:
            return False
        try:
            nacl.signing.VerifyKey(self.raw).verify(bytes(message), bytes(signature))
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
            return False
        return True

    def implicit_account_id(self) -> str:
        """The NEAR implicit account of this key: 64 lowercase hex characters."""
        return self.raw.hex()


class SigningKey:
    """An Ed25519 signing key. Its secret never appears in ``repr``/``str``."""

    __slots__ = ("_public", "_signer")

    def __init__(self, signer: nacl.signing.SigningKey) -> None:
        self._signer = signer
        self._public = PublicKey(bytes(signer.verify_key))

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        if not isinstance(seed, bytes) or len(seed) != SEED_LEN:
            raise InputError(f"ed25519 seed must be {SEED_LEN} bytes")
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls.from_seed(secrets.token_bytes(SEED_LEN))

    @classmethod
    def from_string(cls, text: str) -> SigningKey:
        """Parse ``ed25519:<base58 of seed||public (64 B) or seed (32 B)>``.

        For the 64-byte form the second half must equal the public key derived from the seed.
        Error messages never include the secret.
        """
        body = _strip_curve(text, "secret key")
        try:
            raw = b58decode(body)
        except InputError:
            raise InputError("secret key is not valid base58") from None
        if len(raw) == SEED_LEN:
            return cls.from_seed(raw)
        if len(raw) == 2 * SEED_LEN:
            key = cls.from_seed(raw[:SEED_LEN])
            if key.public_key.raw != raw[SEED_LEN:]:
                raise InputError("secret key's public half does not match its seed")
            return key
        raise InputError(f"secret key must be 32 or 64 bytes, got {len(raw)}")

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature (64 bytes) of ``message``; deterministic."""
        return bytes(self._signer.sign(bytes(message)).signature)

    def to_secret_string(self) -> str:
        """``ed25519:<base58(seed || public key)>``: the secret. Never log it."""
        return ED25519_PREFIX + b58encode(bytes(self._signer) + self._public.raw)

    def __repr__(self) -> str:
        return f"SigningKey(public_key={self._public.to_string()!r})"

    def __str__(self) -> str:
        return self.__repr__()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SigningKey):
            return NotImplemented
        return secrets.compare_digest(bytes(self._signer), bytes(other._signer))

    def __hash__(self) -> int:
        return hash(self._public)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("SigningKey cannot be pickled")


def parse_signature(text: str) -> bytes:
    """Parse ``ed25519:<base58 64 bytes>`` (bare base58 accepted) into 64 raw bytes."""
    return _decode_exact(text, SIGNATURE_LEN, "signature")


def format_signature(signature: bytes) -> str:
    if len(signature) != SIGNATURE_LEN:
        raise InputError(f"signature must be {SIGNATURE_LEN} bytes, got {len(signature)}")
    return ED25519_PREFIX + b58encode(signature)


def is_implicit_account(account_id: str) -> bool:
    """True for an ed25519 implicit account id: exactly 64 lowercase hex characters."""
    return bool(_IMPLICIT_RE.match(account_id))


def validate_account_id(account_id: str) -> str:
    """Return ``account_id`` if it follows NEAR's rules, else ``InputError``.

    2..64 characters of ``a-z``, ``0-9`` and the separators ``-``, ``_``, ``.``; no separator at
    either end and never two separators in a row.
    """
    if not isinstance(account_id, str):
        raise InputError(f"account id must be a string, got {type(account_id).__name__}")
    if not 2 <= len(account_id) <= 64:
        raise InputError(f"account id {account_id[:80]!r} must be 2..64 characters long")
    if not _ACCOUNT_RE.match(account_id):
        raise InputError(f"account id {account_id!r} is not a valid NEAR account id")
    return account_id
