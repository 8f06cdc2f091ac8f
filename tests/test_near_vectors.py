"""Golden vectors from the protocol reference (sections 3.4, 3.5, 3.7, 5.5): byte-exact checks."""

from __future__ import annotations

import hashlib
import json

import pytest

from intents_mm.errors import InputError
from intents_mm.near.encoding import b58decode, b58encode, b64decode, b64encode
from intents_mm.near.keys import PublicKey, SigningKey, format_signature, parse_signature
from intents_mm.near.nep413 import NEP413_TAG, nep413_bytes, nep413_hash
from intents_mm.near.nonce import (
    VERSIONED_MAGIC,
    LegacyNonce,
    VersionedNonce,
    decode_nonce,
    encode_versioned_nonce,
)
from intents_mm.near.payload import SignedPayload, parse_multipayload
from intents_mm.near.timefmt import format_deadline, parse_deadline
from intents_mm.near.transaction import (
    FunctionCall,
    SignedTransaction,
    Transaction,
    Transfer,
    deserialize_signed_transaction,
    serialize_signed_transaction,
    serialize_transaction,
    sign_transaction,
    transaction_hash,
)

# --- NEP-413 vector A (verifier unit test) ---------------------------------------------------------
A_PUBKEY_HEX = "e2e9cb7ac57cb46d4da1ce1d1cc2c33bdfe17407c517916b522724a8ea2c6c50"
A_PUBKEY = "ed25519:GGmuj19BsuQ4fwgk3rMsWyDuxEPcTttWjtdqFPfLtPX5"
A_BYTES_HEX = (
    "9d010080"
    + "0d000000"
    + "48656c6c6f2c20776f726c6421"
    + "00" * 32
    + "0c000000"
    + "696e74656e74732e6e656172"
    + "00"
)
A_HASH_HEX = "94648d7168d4a58d1eecd11fc2ecad210ef7cb5efce7a22d15a19e1764031f59"
A_HASH_B58 = "AzGGZxvTRTNbjp9NX6YpgUsLeeZ8oenamuG1cqdgNV44"
A_SIG_HEX = (
    "e2ff6254871a3fec1853c167b42f0f14248c4cf7fef5452dc24d8dbdc5c4bf18"
    "3ab707322b4d782d5f5a05571bae476c5f7ee41c473f3002e600865e46b75d0f"
)
A_SIG = "ed25519:5YED3xqeBL4b8bbdvtD27X9DnmtGqHb2sDfHJawpPghHHoYJciRJfjzrEPLRZwVBjjdQdF4RpMTSaPTV6Jc6B9ie"

# --- raw_ed25519 vector (core/src/payload/multi.rs) ------------------------------------------------
RAW_PUBKEY = "ed25519:8rVvtHWFr8hasdQGGD5WiQBTyr4iH2ruEPPVfj491RPN"
RAW_SIG = "ed25519:3vtbNQJHZfuV1s5DykzyjkbNLc583hnkrhTz57eDhd966iqzkor6Twgr4Loh2C195SCSEsiGfrd6KcxpjNq9ZbVj"
RAW_PAYLOAD = (
    '{"signer_id":"74affa71ab030d400fdfa1bed033dfa6fd3ae34f92d17c046ebe368e80d53751",'
    '"verifying_contract":"intents.near","deadline":{"timestamp":1732035219},'
    '"nonce":"XVoKfmScb3G+XqH9ke/fSlJ/3xO59sNhCxhpG821BH8=","intents":[{"intent":"token_diff","diff":'
    '{"nep141:base-0x833589fcd6edb6e08f4c7c32d4f71b54bda02913.omft.near":"-1000",'
    '"nep141:eth-0xdac17f958d2ee523a2206206994597c13d831ec7.omft.near":"998"}}]}'
)
RAW_HASH_B58 = "8LKE47o44ybZQR9ozLyDnvMDTh4Ao5ipy2mJWsYByG5Q"

# --- transaction vectors (near-api-js test key) ----------------------------------------------------
TX_SECRET = "ed25519:3hoMW1HvnRLSFCLZnvPzWeoGwtdHzke34B2cTHM8rhcbG3TbuLKtShTv3DvyejnXKXKBiV7YPkLeqUHN1ghnqpFv"
TX_PUBKEY = "ed25519:Anu7LYDfpLtkP7E16LT9imXF694BdQaa9ufVkQiwTQxC"
TX_BLOCK_HASH = "244ZQ9cgj3CQ6bWBdytfrJMuMQ1jdXLFGnr4HhvtCTnM"
TRANSFER_TX_HEX = (
    "09000000746573742e6e65617200917b3d268d4b58f7fec1b150bd68d69be3ee5d4cc39855e341538465bb77860d"
    "01000000000000000d00000077686174657665722e6e6561720fa473fd26901df296be6adc4cc4df34d040efa24352"
    "24b6986910e630c2fef6010000000301000000000000000000000000000000"
)
TRANSFER_TX_SHA256 = "eea6e680f3ea51a7f667e9a801d0bfadf66e03d41ed54975b3c6006351461b32"
TRANSFER_SIGNED_B64 = (
    "CQAAAHRlc3QubmVhcgCRez0mjUtY9/7BsVC9aNab4+5dTMOYVeNBU4Rlu3eGDQEAAAAAAAAADQAAAHdoYXRldmVyLm5lYXIP"
    "pHP9JpAd8pa+atxMxN800EDvokNSJLaYaRDmMML+9gEAAAADAQAAAAAAAAAAAAAAAAAAAACWmoMzIYbul1Xkg5MlUlgG4Ymj"
    "0tK7S0dg6URD6X4cTyLe7vAFmo6XExAO2m4ZFE2n6KDvflObIHCLodjQIb0B"
)
WITHDRAW_ARGS = (
    b'{"token":"btc.omft.near","receiver_id":"btc.omft.near","amount":"100000",'
    b'"memo":"WITHDRAW_TO:bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"}'
)
WITHDRAW_TX_HASH_B58 = "Bnow9tQBD2kWBG264RNjH5aMcn8Ww15v6nGvzt9m3QTT"
WITHDRAW_SIGNED_B64 = (
    "CQAAAHRlc3QubmVhcgCRez0mjUtY9/7BsVC9aNab4+5dTMOYVeNBU4Rlu3eGDQIAAAAAAAAADAAAAGludGVudHMubmVhcg+k"
    "c/0mkB3ylr5q3EzE3zTQQO+iQ1IktphpEOYwwv72AQAAAAILAAAAZnRfd2l0aGRyYXeJAAAAeyJ0b2tlbiI6ImJ0Yy5vbWZ0"
    "Lm5lYXIiLCJyZWNlaXZlcl9pZCI6ImJ0Yy5vbWZ0Lm5lYXIiLCJhbW91bnQiOiIxMDAwMDAiLCJtZW1vIjoiV0lUSERSQVdf"
    "VE86YmMxcXh5MmtnZHlnanJzcXR6cTJuMHlyZjI0OTNwODNra2ZqaHgwd2xoIn0AQHoQ81oAAAEAAAAAAAAAAAAAAAAAAAAA"
    "JKBUXxU1Rzaf+MMnj5RvfV6r2B175B4wQHRzEA83WU0s77bDaN3aeoT+7NUs1lLd1RBK/GFf3ds7tEK+7ESxDg=="
)


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


# ------------------------------------------------------------------------------- NEP-413 vector A


def test_nep413_tag_bytes() -> None:
    assert NEP413_TAG.to_bytes(4, "little") == bytes.fromhex("9d010080")


def test_nep413_vector_a_bytes_and_hash() -> None:
    data = nep413_bytes("Hello, world!", bytes(32), "intents.near")
    assert data.hex() == A_BYTES_HEX
    digest = nep413_hash("Hello, world!", bytes(32), "intents.near")
    assert digest.hex() == A_HASH_HEX
    assert b58encode(digest) == A_HASH_B58


def test_nep413_vector_a_key_and_signature_strings() -> None:
    key = PublicKey.from_string(A_PUBKEY)
    assert key.raw.hex() == A_PUBKEY_HEX
    assert parse_signature(A_SIG).hex() == A_SIG_HEX
    assert format_signature(bytes.fromhex(A_SIG_HEX)) == A_SIG


def vector_a_envelope() -> dict[str, object]:
    payload = {"message": "Hello, world!", "nonce": b64encode(bytes(32)), "recipient": "intents.near"}
    return {"standard": "nep413", "payload": payload, "public_key": A_PUBKEY, "signature": A_SIG}


def test_nep413_vector_a_envelope_verifies() -> None:
    obj = vector_a_envelope()
    signed = parse_multipayload(obj)
    assert signed.verify()
    assert signed.hash_b58() == A_HASH_B58
    assert signed.to_json_obj() == obj


def test_nep413_callback_url_is_borsh_option() -> None:
    with_cb = nep413_bytes("m", bytes(32), "intents.near", "https://x")
    assert with_cb.endswith(b"\x01" + (9).to_bytes(4, "little") + b"https://x")
    assert nep413_hash("m", bytes(32), "intents.near", "https://x") != nep413_hash(
        "m", bytes(32), "intents.near"
    )


@pytest.mark.parametrize("part", ["message", "nonce", "recipient", "signature", "public_key"])
def test_nep413_vector_a_tampered_fails(part: str) -> None:
    base = parse_multipayload(
        {
            "standard": "nep413",
            "payload": {
                "message": "Hello, world!",
                "nonce": b64encode(bytes(32)),
                "recipient": "intents.near",
            },
            "public_key": A_PUBKEY,
            "signature": A_SIG,
        }
    )
    fields = {
        "standard": base.standard,
        "message": base.message,
        "nonce": base.nonce,
        "recipient": base.recipient,
        "callback_url": base.callback_url,
        "public_key": base.public_key,
        "signature": base.signature,
    }
    if part == "message":
        fields["message"] = "Hello, world?"
    elif part == "nonce":
        fields["nonce"] = flip(base.nonce, 31)
    elif part == "recipient":
        fields["recipient"] = "intents.nea"
    elif part == "signature":
        fields["signature"] = flip(base.signature, 10)
    else:
        fields["public_key"] = PublicKey(flip(base.public_key.raw, 0))
    tampered = SignedPayload(**fields)  # type: ignore[arg-type]
    assert not tampered.verify()


# ------------------------------------------------------------------------------ raw_ed25519 vector


def raw_envelope() -> dict[str, object]:
    return {"standard": "raw_ed25519", "payload": RAW_PAYLOAD, "public_key": RAW_PUBKEY, "signature": RAW_SIG}


def test_raw_ed25519_vector_verifies_and_hashes() -> None:
    signed = parse_multipayload(raw_envelope())
    assert signed.verify()
    assert signed.hash_b58() == RAW_HASH_B58
    assert signed.hash() == hashlib.sha256(RAW_PAYLOAD.encode()).digest()
    assert signed.recipient == "intents.near"
    assert signed.nonce == b64decode("XVoKfmScb3G+XqH9ke/fSlJ/3xO59sNhCxhpG821BH8=")
    assert signed.signer_id == "74affa71ab030d400fdfa1bed033dfa6fd3ae34f92d17c046ebe368e80d53751"
    assert signed.deadline_ns == 1732035219 * 10**9
    assert signed.intents[0]["intent"] == "token_diff"
    assert signed.to_json_obj() == raw_envelope()


def test_raw_ed25519_vector_tampered_fails() -> None:
    signed = parse_multipayload(raw_envelope())
    tampered_payload = RAW_PAYLOAD.replace('"998"', '"999"')
    assert not parse_multipayload({**raw_envelope(), "payload": tampered_payload}).verify()
    bad_sig = format_signature(flip(signed.signature, 63))
    assert not parse_multipayload({**raw_envelope(), "signature": bad_sig}).verify()


# ---------------------------------------------------------------------------------------- nonces


def test_versioned_nonce_vector() -> None:
    salt = bytes.fromhex("252812b3")
    rnd = bytes.fromhex("027015ec13dc11864973138fe6812f")
    raw = encode_versioned_nonce(salt, 2280047743000000000, rnd)
    assert raw.hex() == "5628f6c6" + "00" + "252812b3" + "00367290575ba41f" + rnd.hex()
    assert b64encode(raw) == "Vij2xgAlKBKzADZykFdbpB8CcBXsE9wRhklzE4/mgS8="
    decoded = decode_nonce(raw)
    assert decoded == VersionedNonce(salt=salt, deadline_ns=2280047743000000000, random=rnd)
    assert isinstance(decoded, VersionedNonce) and decoded.to_bytes() == raw
    assert format_deadline(decoded.deadline_ns) == "2042-04-02T10:35:43.000Z"


def test_versioned_magic_is_sha256_prefix() -> None:
    assert hashlib.sha256(b"versioned_nonce").digest()[:4] == VERSIONED_MAGIC


def test_docs_nonce_decodes_to_message_deadline() -> None:
    decoded = decode_nonce(b64decode("Vij2xgAlKBKzAEiS6N1S/hcQLaHzX2s1fNKhBDblXT4="))
    assert isinstance(decoded, VersionedNonce)
    assert decoded.salt.hex() == "252812b3"
    assert decoded.deadline_ns == parse_deadline("2024-10-14T12:53:40Z")
    assert format_deadline(decoded.deadline_ns) == "2024-10-14T12:53:40.000Z"


def test_legacy_and_bad_nonces() -> None:
    legacy = hashlib.sha256(b"reserves:1:2").digest()
    assert decode_nonce(legacy) == LegacyNonce(legacy)
    with pytest.raises(InputError):
        decode_nonce(bytes(31))
    with pytest.raises(InputError):
        decode_nonce(bytes(33))
    with pytest.raises(InputError, match="version"):
        decode_nonce(VERSIONED_MAGIC + b"\x01" + bytes(27))


# ---------------------------------------------------------------------------------- transactions


def tx_key() -> SigningKey:
    return SigningKey.from_string(TX_SECRET)


def test_tx_key_derives_published_public_key() -> None:
    key = tx_key()
    assert key.public_key.to_string() == TX_PUBKEY
    assert key.to_secret_string() == TX_SECRET


def test_transfer_transaction_vector() -> None:
    key = tx_key()
    tx = Transaction(
        signer_id="test.near",
        public_key=key.public_key,
        nonce=1,
        receiver_id="whatever.near",
        block_hash=b58decode(TX_BLOCK_HASH),
        actions=[Transfer(deposit=1)],
    )
    assert serialize_transaction(tx).hex() == TRANSFER_TX_HEX
    assert transaction_hash(tx).hex() == TRANSFER_TX_SHA256
    signed = sign_transaction(tx, key)
    assert signed.to_base64() == TRANSFER_SIGNED_B64
    assert signed.hash_b58() == b58encode(bytes.fromhex(TRANSFER_TX_SHA256))
    decoded = deserialize_signed_transaction(b64decode(TRANSFER_SIGNED_B64))
    assert decoded == signed
    assert PublicKey.from_string(TX_PUBKEY).verify(transaction_hash(decoded.transaction), decoded.signature)


def test_ft_withdraw_function_call_vector() -> None:
    key = tx_key()
    tx = Transaction(
        signer_id="test.near",
        public_key=key.public_key,
        nonce=2,
        receiver_id="intents.near",
        block_hash=b58decode(TX_BLOCK_HASH),
        actions=[FunctionCall("ft_withdraw", WITHDRAW_ARGS, 100_000_000_000_000, 1)],
    )
    raw = serialize_transaction(tx)
    assert "02" + "0b000000" + b"ft_withdraw".hex() + "89000000" in raw.hex()
    assert raw.hex().endswith("00407a10f35a0000" + "01" + "00" * 15)
    signed = sign_transaction(tx, key)
    assert signed.hash_b58() == WITHDRAW_TX_HASH_B58
    assert signed.to_base64() == WITHDRAW_SIGNED_B64
    decoded = deserialize_signed_transaction(b64decode(WITHDRAW_SIGNED_B64))
    assert decoded == signed
    assert json.loads(decoded.transaction.actions[0].args)["amount"] == "100000"  # type: ignore[union-attr]


def test_signed_transaction_bad_bytes() -> None:
    raw = b64decode(TRANSFER_SIGNED_B64)
    with pytest.raises(InputError, match="trailing"):
        deserialize_signed_transaction(raw + b"\x00")
    with pytest.raises(InputError, match="truncated"):
        deserialize_signed_transaction(raw[:-1])
    # action tag lives right after the u32 action count; turn Transfer (3) into AddKey (5)
    idx = bytes.fromhex(TRANSFER_TX_HEX).rindex(bytes.fromhex("0301000000"))
    with pytest.raises(InputError, match="unsupported"):
        deserialize_signed_transaction(raw[:idx] + b"\x05" + raw[idx + 1 :])
    with pytest.raises(InputError, match="unknown"):
        deserialize_signed_transaction(raw[:idx] + b"\x63" + raw[idx + 1 :])
    with pytest.raises(InputError, match="key type"):
        deserialize_signed_transaction(raw[:-65] + b"\x01" + raw[-64:])


def test_sign_transaction_rejects_wrong_key() -> None:
    tx = Transaction("test.near", tx_key().public_key, 1, "x.near", bytes(32), [Transfer(1)])
    with pytest.raises(InputError):
        sign_transaction(tx, SigningKey.generate())


def test_signed_transaction_roundtrip_object() -> None:
    key = tx_key()
    tx = Transaction("test.near", key.public_key, 7, "intents.near", bytes(range(32)), [])
    stx = sign_transaction(tx, key)
    assert isinstance(stx, SignedTransaction)
    assert deserialize_signed_transaction(serialize_signed_transaction(stx)) == stx
