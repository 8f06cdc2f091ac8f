"""Destination-address validation: Keccak-256, EIP-55, bech32/bech32m, base58check."""

from __future__ import annotations

import hashlib

import pytest

from intents_mm.domain.addresses import (
    _keccak_sponge,
    b58check_decode,
    b58check_encode,
    bech32_decode,
    decode_segwit_address,
    encode_segwit_address,
    keccak256,
    parse_withdraw_memo,
    to_checksum_address,
    validate_destination,
    withdraw_memo,
)
from intents_mm.errors import InputError

# --- Keccak -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "digest"),
    [
        (b"", "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"),
        (b"abc", "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"),
        (
            b"The quick brown fox jumps over the lazy dog",
            "4d741b6f1eb29cb2a9b9911c82f56fa8d73b04959d3d9d222895df6c0b28aa15",
        ),
    ],
)
def test_keccak256_known_vectors(data: bytes, digest: str) -> None:
    assert keccak256(data).hex() == digest


def test_keccak256_is_not_sha3_256() -> None:
    assert keccak256(b"") != hashlib.sha3_256(b"").digest()


@pytest.mark.parametrize("length", [0, 1, 71, 72, 73, 135, 136, 137, 167, 168, 169, 271, 272, 273, 500])
def test_sponge_matches_hashlib_sha3_and_shake_across_block_boundaries(length: int) -> None:
    # Same permutation and sponge, FIPS-202 padding: hashlib is an independent oracle for Keccak-f[1600].
    data = (bytes(range(256)) * 3)[:length]
    assert _keccak_sponge(data, rate_bytes=136, suffix=0x06, out_bytes=32) == hashlib.sha3_256(data).digest()
    assert _keccak_sponge(data, rate_bytes=72, suffix=0x06, out_bytes=64) == hashlib.sha3_512(data).digest()
    got = _keccak_sponge(data, rate_bytes=168, suffix=0x1F, out_bytes=400)  # multi-block squeeze
    assert got == hashlib.shake_128(data).digest(400)


# --- EVM / EIP-55 -------------------------------------------------------------------------------------

EIP55_EXAMPLES = [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]


@pytest.mark.parametrize("address", EIP55_EXAMPLES)
def test_eip55_examples_validate_and_round_trip(address: str) -> None:
    assert validate_destination("eth:100", address) == address
    assert to_checksum_address(address.lower()) == address
    assert to_checksum_address(address.upper().replace("0X", "0x")) == address


@pytest.mark.parametrize(
    "address",
    [
        "0x52908400098527886E0F7030069857D2E4169EE7",  # all caps (EIP-55 examples)
        "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
        "0xde709f2102306220921060314715629080e2fb77",  # all lower
        "0x27b1fdb04752bbc536007a920d24acb045561c26",
    ],
)
def test_single_case_evm_addresses_carry_no_checksum(address: str) -> None:
    assert validate_destination("eth:1", address) == to_checksum_address(address)


def _flip_one_letter_case(address: str) -> str:
    body = list(address[2:])
    for i, ch in enumerate(body):
        if ch.isalpha():
            body[i] = ch.swapcase()
            return "0x" + "".join(body)
    raise AssertionError("no letter")


@pytest.mark.parametrize("address", EIP55_EXAMPLES)
def test_wrong_eip55_checksum_is_rejected(address: str) -> None:
    with pytest.raises(InputError, match="EIP-55"):
        validate_destination("eth:100", _flip_one_letter_case(address))


@pytest.mark.parametrize(
    "address",
    [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe",  # 39 hex
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAedd",  # 41 hex
        "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",  # no prefix
        "0X5AAEB6053F3E94C9B9A09F33669435E7EF1BEAED",  # upper-case prefix
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg",  # non-hex
        " 0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",
        "",
    ],
)
def test_malformed_evm_addresses_are_rejected(address: str) -> None:
    with pytest.raises(InputError):
        validate_destination("eth:100", address)


# --- Bitcoin ------------------------------------------------------------------------------------------

# BIP-173 / BIP-350 mainnet vectors (address, scriptPubKey hex).
SEGWIT_VALID = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    (
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
        "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
    ),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
        "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
    ),
]


@pytest.mark.parametrize(("address", "script_hex"), SEGWIT_VALID)
def test_segwit_vectors_decode_to_their_script_and_re_encode(address: str, script_hex: str) -> None:
    version, program = decode_segwit_address("bc", address)
    script = bytes([version + 0x50 if version else 0, len(program)]) + program
    assert script.hex() == script_hex
    assert encode_segwit_address(version, program) == address.lower()
    assert validate_destination("btc:mainnet", address) == address.lower()


def test_well_known_bitcoin_addresses_validate() -> None:
    assert (
        validate_destination("btc:mainnet", "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh")
        == "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"
    )
    assert validate_destination("btc:mainnet", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa") == (
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
    )
    assert validate_destination("btc:mainnet", "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy") == (
        "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"
    )


@pytest.mark.parametrize(
    "address",
    [
        "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlj",  # last checksum char changed
        "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wLh",  # mixed case
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",  # testnet prefix
        # BIP-350 invalid vectors (mainnet ones)
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",  # v1 with bech32 checksum
        "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL",  # v16 with bech32 checksum
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",  # v0 with bech32m checksum
        "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4",  # invalid char in checksum
        "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R",  # invalid witness version
        "bc1pw5dgrnzv",  # 1-byte program
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",  # 41-byte program
        "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",  # v0 program of 16 bytes
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf",  # more than 4 padding bits
        "bc1gmk9yu",  # empty data section
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb",  # base58 checksum broken
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7Divf0a",  # '0' is not base58
        "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNL",  # truncated
        "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",  # testnet P2PKH
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",  # EVM address on the bitcoin chain
        "",
    ],
)
def test_invalid_bitcoin_addresses_are_rejected(address: str) -> None:
    with pytest.raises(InputError):
        validate_destination("btc:mainnet", address)


def test_bech32_decode_reports_the_variant() -> None:
    assert bech32_decode("a12uel5l") == ("a", [], False)
    assert bech32_decode("A1LQFN3A") == ("a", [], True)
    with pytest.raises(InputError):
        bech32_decode("A1G7SGD8")  # checksum computed over the upper-case HRP


def test_base58check_round_trip_and_checksum() -> None:
    payload = b"\x00" + bytes(range(20))
    text = b58check_encode(payload)
    assert text.startswith("1")
    assert b58check_decode(text) == payload
    # genesis-block address: version 0 + hash160 62e907b15cbf27d5425399ebf6f0fb50ebb88f18
    assert b58check_decode("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa").hex() == (
        "0062e907b15cbf27d5425399ebf6f0fb50ebb88f18"
    )


def test_encode_segwit_rejects_bad_programs() -> None:
    with pytest.raises(InputError):
        encode_segwit_address(0, bytes(21))
    with pytest.raises(InputError):
        encode_segwit_address(17, bytes(32))
    with pytest.raises(InputError):
        encode_segwit_address(1, bytes(1))


# --- chains -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chain", ["sol:mainnet", "btc:testnet", "eth:", "eth:abc", "eth:0", "", "ETH:1"])
def test_unknown_chain_is_an_input_error(chain: str) -> None:
    with pytest.raises(InputError, match="unsupported destination chain"):
        validate_destination(chain, "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")


# --- withdrawal memo ----------------------------------------------------------------------------------


def test_withdraw_memo_round_trip() -> None:
    memo = withdraw_memo("eth:100", "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")
    assert memo == "WITHDRAW_TO:0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    assert parse_withdraw_memo(memo) == ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", None)
    tagged = withdraw_memo("btc:mainnet", "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", tag="42")
    assert tagged == "WITHDRAW_TO:bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4:42"
    assert parse_withdraw_memo(tagged) == ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "42")


@pytest.mark.parametrize("memo", ["", "WITHDRAW_TO:", "WITHDRAW_TO:abc:", "withdraw_to:abc", "abc"])
def test_parse_withdraw_memo_rejects_other_memos(memo: str) -> None:
    with pytest.raises(InputError):
        parse_withdraw_memo(memo)


def test_withdraw_memo_validates_the_destination() -> None:
    with pytest.raises(InputError):
        withdraw_memo("btc:mainnet", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
    with pytest.raises(InputError):
        withdraw_memo("btc:mainnet", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", tag="a b")


@pytest.mark.parametrize(
    ("chain", "address"),
    [
        ("eth:100", "0x0000000000000000000000000000000000000000"),
        ("eth:100", "0x0000000000000000000000000000000000000001"),  # a precompile
        ("eth:1", "0x000000000000000000000000000000000000dEaD"),
        ("eth:1", "0xdEAD000000000000000042069420694206942069"),
        ("btc:mainnet", "1111111111111111111114oLvT2"),  # P2PKH of a zero hash
        ("btc:mainnet", "1BitcoinEaterAddressDontSendf59kuE"),
        ("btc:mainnet", encode_segwit_address(0, bytes(20))),  # all-zero witness programs
        ("btc:mainnet", encode_segwit_address(0, bytes(32))),
        ("btc:mainnet", encode_segwit_address(1, bytes(32))),
        ("btc:mainnet", b58check_encode(b"\x05" + bytes(20))),  # P2SH of a zero hash
    ],
)
def test_burn_and_zero_addresses_are_refused_as_destinations(chain: str, address: str) -> None:
    with pytest.raises(InputError, match="refused"):
        validate_destination(chain, address)


def test_an_ordinary_address_next_to_the_burn_ones_still_passes() -> None:
    assert validate_destination("eth:100", "0x0000000000000000000000000000000000010000").startswith("0x")
    assert validate_destination("btc:mainnet", encode_segwit_address(0, bytes(19) + b"\x01"))
