"""Destination-address validation for bridge withdrawals (pure, stdlib only).

A withdrawal through the PoA bridge burns tokens on NEAR with memo ``WITHDRAW_TO:<address>``; a
malformed address there loses the funds. :func:`validate_destination` checks an address for the
bridge chain it is meant for and returns its canonical spelling, or raises :class:`InputError`.

Supported chains:

* ``btc:mainnet`` — SegWit ``bc1…`` addresses (BIP-173 bech32 for witness version 0, BIP-350
  bech32m for versions 1..16, with the BIP-141 program-length rules), and legacy base58check
  addresses: P2PKH ``1…`` (version byte 0x00) and P2SH ``3…`` (0x05), double-SHA-256 checksum.
  Canonical form: bech32 in lower case; base58 unchanged.
* ``eth:<chain id>`` (EVM, e.g. ``eth:100`` Gnosis) — ``0x`` + 40 hex digits. All-lower or all-upper
  hex carries no checksum; mixed case must be a correct EIP-55 checksum. Canonical form: EIP-55.

EIP-55 needs Keccak-256 (the pre-standard padding, not hashlib's ``sha3_256``), implemented here
with the Keccak-f[1600] permutation.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from intents_mm.errors import InputError

__all__ = [
    "b58check_decode",
    "b58check_encode",
    "bech32_decode",
    "bech32_encode",
    "decode_segwit_address",
    "encode_segwit_address",
    "keccak256",
    "parse_withdraw_memo",
    "to_checksum_address",
    "validate_destination",
    "withdraw_memo",
]

# ---------------------------------------------------------------------------------------------------
# Keccak-f[1600] and the Keccak sponge
# ---------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1

_ROUND_CONSTANTS = (
    0x0000000000000001,
    0x0000000000008082,
    0x800000000000808A,
    0x8000000080008000,
    0x000000000000808B,
    0x0000000080000001,
    0x8000000080008081,
    0x8000000000008009,
    0x000000000000008A,
    0x0000000000000088,
    0x0000000080008009,
    0x000000008000000A,
    0x000000008000808B,
    0x800000000000008B,
    0x8000000000008089,
    0x8000000000008003,
    0x8000000000008002,
    0x8000000000000080,
    0x000000000000800A,
    0x800000008000000A,
    0x8000000080008081,
    0x8000000000008080,
    0x0000000080000001,
    0x8000000080008008,
)

# Rotation offsets r[x][y], indexed as lane x + 5*y.
_ROTATIONS = (
    0, 1, 62, 28, 27,
    36, 44, 6, 55, 20,
    3, 10, 43, 25, 39,
    41, 45, 15, 21, 8,
    18, 2, 61, 56, 14,
)  # fmt: skip


def _rotl64(value: int, shift: int) -> int:
    shift %= 64
    return ((value << shift) | (value >> (64 - shift))) & _MASK64


def _keccak_f1600(lanes: list[int]) -> None:
    """Apply the 24-round Keccak-f[1600] permutation in place; ``lanes[x + 5*y]`` are 64-bit words."""
    for rc in _ROUND_CONSTANTS:
        # theta
        c = [lanes[x] ^ lanes[x + 5] ^ lanes[x + 10] ^ lanes[x + 15] ^ lanes[x + 20] for x in range(5)]
        d = [c[(x - 1) % 5] ^ _rotl64(c[(x + 1) % 5], 1) for x in range(5)]
        for i in range(25):
            lanes[i] ^= d[i % 5]
        # rho and pi: B[y, 2x+3y] = rot(A[x, y], r[x, y])
        b = [0] * 25
        for x in range(5):
            for y in range(5):
                b[y + 5 * ((2 * x + 3 * y) % 5)] = _rotl64(lanes[x + 5 * y], _ROTATIONS[x + 5 * y])
        # chi
        for y in range(0, 25, 5):
            row = b[y : y + 5]
            for x in range(5):
                lanes[y + x] = row[x] ^ ((~row[(x + 1) % 5]) & row[(x + 2) % 5])
        # iota
        lanes[0] ^= rc


def _keccak_sponge(data: bytes, *, rate_bytes: int, suffix: int, out_bytes: int) -> bytes:
    """The Keccak sponge over Keccak-f[1600].

    ``suffix`` is the domain-separation byte that starts the multi-rate padding: 0x01 for the
    original Keccak (Ethereum), 0x06 for FIPS-202 SHA-3. Exposed (privately) so tests can check the
    permutation against hashlib's SHA-3 as well as against Keccak vectors.
    """
    lanes = [0] * 25
    padded = bytearray(data)
    padded.append(suffix)
    while len(padded) % rate_bytes:
        padded.append(0)
    padded[-1] |= 0x80
    for off in range(0, len(padded), rate_bytes):
        block = padded[off : off + rate_bytes]
        for i in range(rate_bytes // 8):
            lanes[i] ^= int.from_bytes(block[8 * i : 8 * i + 8], "little")
        _keccak_f1600(lanes)
    out = bytearray()
    while True:
        for i in range(rate_bytes // 8):
            out += lanes[i].to_bytes(8, "little")
        if len(out) >= out_bytes:
            return bytes(out[:out_bytes])
        _keccak_f1600(lanes)


def keccak256(data: bytes) -> bytes:
    """Keccak-256 as used by Ethereum (32-byte digest; padding byte 0x01, not SHA3-256's 0x06)."""
    return _keccak_sponge(bytes(data), rate_bytes=136, suffix=0x01, out_bytes=32)


# ---------------------------------------------------------------------------------------------------
# EVM addresses (EIP-55)
# ---------------------------------------------------------------------------------------------------

_EVM_RE = re.compile(r"0x[0-9a-fA-F]{40}")


def to_checksum_address(address: str) -> str:
    """Return the EIP-55 mixed-case spelling of ``0x`` + 40 hex digits (input case is ignored)."""
    if not _EVM_RE.fullmatch(address):
        raise InputError(f"not an EVM address (want 0x + 40 hex digits): {address!r}")
    body = address[2:].lower()
    digest = keccak256(body.encode("ascii")).hex()
    return "0x" + "".join(
        ch.upper() if ch.isalpha() and int(digest[i], 16) >= 8 else ch for i, ch in enumerate(body)
    )


def _validate_evm(address: str) -> str:
    if not _EVM_RE.fullmatch(address):
        raise InputError(f"not an EVM address (want 0x + 40 hex digits): {address!r}")
    body = address[2:]
    checksummed = to_checksum_address(address)
    if body != body.lower() and body != body.upper() and address != checksummed:
        raise InputError(f"EVM address has a wrong EIP-55 checksum: {address!r}")
    return checksummed


# ---------------------------------------------------------------------------------------------------
# Bech32 / bech32m (BIP-173, BIP-350) and SegWit addresses
# ---------------------------------------------------------------------------------------------------

_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_CONST = 1
_BECH32M_CONST = 0x2BC830A3
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _bech32_polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _BECH32_GEN[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def bech32_encode(hrp: str, data: list[int], *, bech32m: bool) -> str:
    """Encode 5-bit ``data`` under human-readable part ``hrp`` (lower case) with its checksum."""
    const = _BECH32M_CONST if bech32m else _BECH32_CONST
    polymod = _bech32_polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ const
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32_CHARSET[d] for d in [*data, *checksum])


def bech32_decode(text: str) -> tuple[str, list[int], bool]:
    """Decode a bech32 or bech32m string into ``(hrp, 5-bit data without checksum, is_bech32m)``.

    Raises :class:`InputError` on mixed case, bad characters, bad length or a bad checksum.
    """
    if any(ord(ch) < 33 or ord(ch) > 126 for ch in text):
        raise InputError(f"bech32 string has a character out of range: {text!r}")
    if text.lower() != text and text.upper() != text:
        raise InputError(f"bech32 string mixes upper and lower case: {text!r}")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text) or len(text) > 90:
        raise InputError(f"bech32 string has a bad separator position or length: {text!r}")
    hrp, payload = text[:pos], text[pos + 1 :]
    if any(ch not in _BECH32_CHARSET for ch in payload):
        raise InputError(f"bech32 string has an invalid data character: {text!r}")
    data = [_BECH32_CHARSET.find(ch) for ch in payload]
    const = _bech32_polymod(_hrp_expand(hrp) + data)
    if const not in (_BECH32_CONST, _BECH32M_CONST):
        raise InputError(f"bech32 checksum mismatch: {text!r}")
    return hrp, data[:-6], const == _BECH32M_CONST


def _convert_bits(data: list[int] | bytes, from_bits: int, to_bits: int, *, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        if value < 0 or value >> from_bits:
            raise InputError("bit conversion: value out of range")
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & maxv):
        raise InputError("bit conversion: invalid padding")
    return out


def _check_witness(version: int, program: bytes) -> None:
    if not 0 <= version <= 16:
        raise InputError(f"invalid segwit witness version {version}")
    if not 2 <= len(program) <= 40:
        raise InputError(f"invalid segwit program length {len(program)}")
    if version == 0 and len(program) not in (20, 32):
        raise InputError(f"invalid segwit v0 program length {len(program)} (want 20 or 32)")


def decode_segwit_address(hrp: str, address: str) -> tuple[int, bytes]:
    """Decode a SegWit address for ``hrp`` (``"bc"`` on mainnet) into ``(version, program)``.

    Enforces BIP-350: version 0 must use bech32, versions 1..16 bech32m.
    """
    got_hrp, data, is_m = bech32_decode(address)
    if got_hrp != hrp:
        raise InputError(f"segwit address has prefix {got_hrp!r}, expected {hrp!r}: {address!r}")
    if not data:
        raise InputError(f"segwit address has an empty data section: {address!r}")
    version = data[0]
    program = bytes(_convert_bits(data[1:], 5, 8, pad=False))
    _check_witness(version, program)
    if (version == 0) == is_m:
        want = "bech32" if version == 0 else "bech32m"
        raise InputError(f"segwit v{version} address must use {want} checksum: {address!r}")
    return version, program


def encode_segwit_address(version: int, program: bytes, hrp: str = "bc") -> str:
    """Encode a SegWit address (bech32 for version 0, bech32m otherwise), lower case."""
    _check_witness(version, program)
    return bech32_encode(hrp, [version, *_convert_bits(program, 8, 5, pad=True)], bech32m=version != 0)


# ---------------------------------------------------------------------------------------------------
# Base58check (legacy Bitcoin addresses)
# ---------------------------------------------------------------------------------------------------

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {ch: i for i, ch in enumerate(_B58_ALPHABET)}


def _double_sha256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def b58check_encode(payload: bytes) -> str:
    """Base58 of ``payload || sha256d(payload)[:4]`` (Bitcoin alphabet; leading zero bytes → '1')."""
    raw = payload + _double_sha256(payload)[:4]
    num = int.from_bytes(raw, "big")
    chars: list[str] = []
    while num:
        num, rem = divmod(num, 58)
        chars.append(_B58_ALPHABET[rem])
    zeros = len(raw) - len(raw.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(chars))


def b58check_decode(text: str) -> bytes:
    """Inverse of :func:`b58check_encode`: returns the payload after checking the 4-byte checksum."""
    if not text:
        raise InputError("empty base58 string")
    num = 0
    for ch in text:
        digit = _B58_INDEX.get(ch)
        if digit is None:
            raise InputError(f"invalid base58 character {ch!r} in {text!r}")
        num = num * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    raw = b"\0" * zeros + body
    if len(raw) < 5:
        raise InputError(f"base58check string too short: {text!r}")
    payload, checksum = raw[:-4], raw[-4:]
    if _double_sha256(payload)[:4] != checksum:
        raise InputError(f"base58check checksum mismatch: {text!r}")
    return payload


_BTC_P2PKH_VERSION = 0x00
_BTC_P2SH_VERSION = 0x05


def _validate_btc(address: str) -> str:
    if address[:3].lower() == "bc1":
        decode_segwit_address("bc", address)
        return address.lower()
    if address[:1] in ("1", "3"):
        payload = b58check_decode(address)
        if len(payload) != 21:
            raise InputError(f"legacy bitcoin address has {len(payload) - 1}-byte hash, want 20: {address!r}")
        if payload[0] not in (_BTC_P2PKH_VERSION, _BTC_P2SH_VERSION):
            raise InputError(f"legacy bitcoin address has a non-mainnet version byte: {address!r}")
        return address
    raise InputError(f"not a bitcoin mainnet address (want bc1…, 1… or 3…): {address!r}")


# ---------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------

_EVM_CHAIN_RE = re.compile(r"eth:[1-9][0-9]*")


#: Well-known unspendable Bitcoin addresses (P2PKH of a zero hash, vanity "eater" addresses).
BTC_BURN_ADDRESSES: Final = frozenset(
    {
        "1111111111111111111114oLvT2",
        "1BitcoinEaterAddressDontSendf59kuE",
        "1CounterpartyXXXXXXXXXXXXXXXUWLpVr",
    }
)
#: Well-known EVM burn addresses (lower case); every address up to 0xffff (the zero address and the
#: precompiles) is refused as well.
EVM_BURN_ADDRESSES: Final = frozenset(
    {
        "0x000000000000000000000000000000000000dead",
        "0xdead000000000000000042069420694206942069",
        "0xffffffffffffffffffffffffffffffffffffffff",
    }
)


def _refuse_burn(chain: str, canonical: str) -> str:
    if chain == "btc:mainnet":
        if canonical.lower().startswith("bc1"):
            program = decode_segwit_address("bc", canonical)[1]
        else:
            program = b58check_decode(canonical)[1:]  # the hash after the version byte
        if canonical in BTC_BURN_ADDRESSES or not any(program):  # an all-zero hash or witness program
            raise InputError(f"{canonical} is a known unspendable (burn) address on {chain}: refused")
    else:
        lowered = canonical.lower()
        if int(lowered, 16) <= 0xFFFF or lowered in EVM_BURN_ADDRESSES:
            raise InputError(
                f"{canonical} is the zero address, a precompile or a known burn address on {chain}: refused"
            )
    return canonical


def validate_destination(chain: str, address: str) -> str:
    """Check ``address`` as a withdrawal destination on bridge chain ``chain``; return its canonical form.

    Raises :class:`InputError` for an unknown chain, an invalid address, or an address that can never
    spend what it receives (the zero address, precompiles and known burn addresses). See the module
    docstring.
    """
    if not isinstance(address, str) or not address:
        raise InputError(f"destination address for {chain} is empty")
    if chain == "btc:mainnet":
        return _refuse_burn(chain, _validate_btc(address))
    if _EVM_CHAIN_RE.fullmatch(chain):
        return _refuse_burn(chain, _validate_evm(address))
    raise InputError(f"unsupported destination chain {chain!r} (supported: btc:mainnet, eth:<chain id>)")


WITHDRAW_MEMO_PREFIX = "WITHDRAW_TO:"


def withdraw_memo(chain: str, destination: str, tag: str | None = None) -> str:
    """The ``ft_withdraw`` memo that makes the PoA bridge pay out to ``destination`` on ``chain``.

    ``WITHDRAW_TO:<address>[:<destination memo/tag>]`` (protocol reference 6.5); the address is
    validated and written in its canonical form.
    """
    address = validate_destination(chain, destination)
    if tag is not None and (not tag or any(ch.isspace() for ch in tag)):
        raise InputError("withdrawal memo tag must be non-empty and contain no whitespace")
    return WITHDRAW_MEMO_PREFIX + address + (f":{tag}" if tag is not None else "")


def parse_withdraw_memo(memo: str) -> tuple[str, str | None]:
    """Split ``WITHDRAW_TO:<address>[:<tag>]`` into ``(address, tag)``; ``InputError`` if it is not one.

    The address is returned as written (not validated: the caller knows the chain).
    """
    if not isinstance(memo, str) or not memo.startswith(WITHDRAW_MEMO_PREFIX):
        raise InputError(f"not a bridge withdrawal memo (want {WITHDRAW_MEMO_PREFIX}<address>): {memo!r}")
    address, sep, tag = memo[len(WITHDRAW_MEMO_PREFIX) :].partition(":")
    if not address or (sep and not tag):
        raise InputError(f"bridge withdrawal memo has an empty address or tag: {memo!r}")
    return address, (tag if sep else None)
