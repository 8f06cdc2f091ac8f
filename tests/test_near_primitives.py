"""Keys, encodings, deadlines, envelope parsing and builders, Borsh; with Hypothesis round trips."""

from __future__ import annotations

import json
from typing import Any

import base58
import pytest
from hypothesis import given
from hypothesis import strategies as st

from intents_mm.errors import InputError
from intents_mm.near.borsh import BorshReader, BorshWriter
from intents_mm.near.encoding import b58decode, b58encode, b64decode, b64encode
from intents_mm.near.keys import (
    PublicKey,
    SigningKey,
    format_signature,
    is_implicit_account,
    parse_signature,
    validate_account_id,
)
from intents_mm.near.nonce import (
    VersionedNonce,
    decode_nonce,
    encode_versioned_nonce,
    random_versioned_nonce,
)
from intents_mm.near.payload import (
    build_intent_message,
    parse_multipayload,
    sign_nep413,
    sign_raw_ed25519,
    token_diff_intent,
)
from intents_mm.near.timefmt import format_deadline, parse_deadline
from intents_mm.near.transaction import (
    FunctionCall,
    Transaction,
    Transfer,
    deserialize_signed_transaction,
    serialize_signed_transaction,
    sign_transaction,
)

SEED = bytes(range(32))

# ------------------------------------------------------------------------------------- encodings


def test_b58_roundtrip_and_leading_zeros() -> None:
    assert b58encode(b"\x00\x00\x01") == "112"
    assert b58decode("112") == b"\x00\x00\x01"
    assert b58encode(b"") == ""


@pytest.mark.parametrize("bad", ["0abc", "Olol", "Il", "abc!", "ab c"])
def test_b58_rejects_bad_characters(bad: str) -> None:
    with pytest.raises(InputError):
        b58decode(bad)


def test_b64_strict() -> None:
    assert b64encode(b"\xff\xfe") == "//4="
    assert b64decode("//4=") == b"\xff\xfe"
    for bad in ["__4=", "//4", "//4=\n", "//5=", "a", "ab=c", " //4="]:
        with pytest.raises(InputError):
            b64decode(bad)


@given(st.binary(max_size=80))
def test_encodings_roundtrip(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data
    assert b64decode(b64encode(data)) == data


@given(
    st.binary(max_size=80) | st.builds(lambda n, b: b"\0" * n + b, st.integers(0, 5), st.binary(max_size=40))
)
def test_b58encode_equals_the_reference_package(data: bytes) -> None:
    # our two-digits-at-a-time encoder against the digit-by-digit one of the ``base58`` package
    assert b58encode(data) == base58.b58encode(data).decode("ascii")


def test_b58encode_edges() -> None:
    for data in (
        b"\0",
        b"\0" * 40,
        b"\xff" * 64,
        (58**10).to_bytes(8, "big"),
        (58**10 - 1).to_bytes(8, "big"),
    ):
        assert b58encode(data) == base58.b58encode(data).decode("ascii")


# ------------------------------------------------------------------------------------------ keys


def test_signing_key_forms_and_secrecy() -> None:
    key = SigningKey.from_seed(SEED)
    secret = key.to_secret_string()
    assert secret.startswith("ed25519:")
    assert SigningKey.from_string(secret) == key
    assert SigningKey.from_string("ed25519:" + b58encode(SEED)) == key
    assert SigningKey.from_string(b58encode(SEED)).public_key == key.public_key
    body = secret.removeprefix("ed25519:")
    for shown in (repr(key), str(key), f"{key}", repr([key])):
        assert body not in shown
        assert b58encode(SEED) not in shown
        assert key.public_key.to_string() in shown


def test_signing_key_rejects_mismatched_public_half() -> None:
    other = SigningKey.generate().public_key.raw
    with pytest.raises(InputError, match="does not match"):
        SigningKey.from_string("ed25519:" + b58encode(SEED + other))
    with pytest.raises(InputError):
        SigningKey.from_string("ed25519:" + b58encode(SEED[:31]))
    with pytest.raises(InputError):
        SigningKey.from_string("secp256k1:" + b58encode(SEED))


def test_secret_not_in_error_messages() -> None:
    other = SigningKey.generate().public_key.raw
    text = "ed25519:" + b58encode(SEED + other)
    with pytest.raises(InputError) as info:
        SigningKey.from_string(text)
    assert b58encode(SEED + other) not in str(info.value)


def test_public_key_parsing() -> None:
    key = SigningKey.from_seed(SEED).public_key
    assert PublicKey.from_string(key.to_string()) == key
    assert PublicKey.from_string(key.to_string().removeprefix("ed25519:")) == key
    assert key.implicit_account_id() == key.raw.hex()
    assert is_implicit_account(key.implicit_account_id())
    with pytest.raises(InputError, match="curve"):
        PublicKey.from_string("secp256k1:" + b58encode(key.raw))
    with pytest.raises(InputError, match="32 bytes"):
        PublicKey.from_string("ed25519:" + b58encode(key.raw[:31]))
    with pytest.raises(InputError):
        PublicKey.from_string("ed25519:0OIl")


def test_sign_and_verify() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"hello")
    assert len(sig) == 64
    assert key.public_key.verify(b"hello", sig)
    assert not key.public_key.verify(b"hellp", sig)
    assert not key.public_key.verify(b"hello", sig[:63])
    assert parse_signature(format_signature(sig)) == sig
    with pytest.raises(InputError):
        parse_signature("ed25519:" + b58encode(sig[:63]))
    with pytest.raises(InputError):
        format_signature(sig[:63])


@pytest.mark.parametrize(
    "account",
    [
        "ab",
        "solver.near",
        "a-b_c.near",
        "0x1234",
        "a" * 64,
        "74affa71ab030d400fdfa1bed033dfa6fd3ae34f92d17c046ebe368e80d53751",
    ],
)
def test_valid_account_ids(account: str) -> None:
    assert validate_account_id(account) == account


@pytest.mark.parametrize(
    "account",
    ["a", "a" * 65, "Solver.near", "-a.near", "a.near.", "a..near", "a-_b", "a b", "a.near\n", "", "a@b"],
)
def test_invalid_account_ids(account: str) -> None:
    with pytest.raises(InputError):
        validate_account_id(account)


def test_implicit_account() -> None:
    assert not is_implicit_account("solver.near")
    assert not is_implicit_account("A" * 64)
    assert not is_implicit_account("a" * 63)


# -------------------------------------------------------------------------------------- deadlines


def test_format_deadline_ms_floor() -> None:
    assert format_deadline(1728910420_000_000_000) == "2024-10-14T12:53:40.000Z"
    assert format_deadline(1728910420_123_999_999) == "2024-10-14T12:53:40.123Z"
    assert format_deadline(0) == "1970-01-01T00:00:00.000Z"
    with pytest.raises(InputError):
        format_deadline(-1)


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2024-10-14T12:53:40Z", 1728910420_000_000_000),
        ("2024-10-14T12:53:40.000Z", 1728910420_000_000_000),
        ("2024-10-14T12:53:40.5Z", 1728910420_500_000_000),
        ("2024-10-14T12:53:40.123456Z", 1728910420_123_456_000),
        ("2024-10-14T12:53:40.123456789123Z", 1728910420_123_456_789),
        ("2024-10-14T14:53:40.001+02:00", 1728910420_001_000_000),
        ("2024-10-14T11:53:40-01:00", 1728910420_000_000_000),
    ],
)
def test_parse_deadline(text: str, ns: int) -> None:
    assert parse_deadline(text) == ns


def test_parse_deadline_legacy_and_bad() -> None:
    assert parse_deadline({"timestamp": 1732035219}) == 1732035219_000_000_000
    for bad in [
        "2024-10-14 12:53:40",
        "2024-13-14T12:53:40Z",
        "2024-10-14T12:53:40",
        "yesterday",
        "2024-10-14T12:53:40Z\n",
        {"timestamp": 1.5},
        {"timestamp": "1"},
        {"ts": 1},
    ]:
        with pytest.raises(InputError):
            parse_deadline(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=253402300799_999_999_999))
def test_deadline_roundtrip_ms(ns: int) -> None:
    text = format_deadline(ns)
    assert parse_deadline(text) == ns - ns % 1_000_000


# ----------------------------------------------------------------------------------------- nonces


@given(
    st.binary(min_size=4, max_size=4),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.binary(min_size=15, max_size=15),
)
def test_nonce_roundtrip(salt: bytes, deadline_ns: int, rnd: bytes) -> None:
    raw = encode_versioned_nonce(salt, deadline_ns, rnd)
    assert len(raw) == 32
    assert decode_nonce(raw) == VersionedNonce(salt, deadline_ns, rnd)


def test_random_versioned_nonce() -> None:
    a = random_versioned_nonce(b"\x01\x02\x03\x04", 5)
    b = random_versioned_nonce(b"\x01\x02\x03\x04", 5)
    assert a != b and a[:17] == b[:17]
    with pytest.raises(InputError):
        encode_versioned_nonce(b"\x01", 5, bytes(15))
    with pytest.raises(InputError):
        encode_versioned_nonce(bytes(4), 2**64, bytes(15))


# ------------------------------------------------------------------------------ envelopes, builders


def test_build_intent_message_and_sign_nep413() -> None:
    key = SigningKey.from_seed(SEED)
    intent = token_diff_intent({"nep141:btc.omft.near": 100000, "nep141:eure.omft.near": -95 * 10**18})
    assert intent == {
        "intent": "token_diff",
        "diff": {"nep141:btc.omft.near": "100000", "nep141:eure.omft.near": "-95000000000000000000"},
    }
    deadline = 1728910420_000_000_000
    msg = build_intent_message("solver.near", deadline, [intent])
    assert msg.startswith('{"signer_id":"solver.near","deadline":"2024-10-14T12:53:40.000Z","intents":[{')
    assert " " not in msg
    nonce = random_versioned_nonce(b"\x25\x28\x12\xb3", deadline)
    signed = sign_nep413(key, msg, nonce)
    assert signed.verify()
    wire = signed.to_json_obj()
    assert list(wire) == ["standard", "payload", "public_key", "signature"]
    assert list(wire["payload"]) == ["message", "nonce", "recipient"]  # type: ignore[call-overload]
    again = parse_multipayload(json.loads(json.dumps(wire)))
    assert again == signed
    assert again.signer_id == "solver.near"
    assert again.deadline_ns == deadline
    assert again.intents == [intent]


def test_sign_raw_ed25519_roundtrip() -> None:
    key = SigningKey.from_seed(SEED)
    payload = json.dumps(
        {
            "signer_id": key.public_key.implicit_account_id(),
            "verifying_contract": "intents.near",
            "deadline": "2030-01-01T00:00:00.000Z",
            "nonce": b64encode(bytes(32)),
            "intents": [],
        }
    )
    signed = sign_raw_ed25519(key, payload)
    assert signed.verify()
    assert parse_multipayload(signed.to_json_obj()) == signed
    assert signed.intents == []
    with pytest.raises(InputError, match="nonce"):
        sign_raw_ed25519(key, '{"verifying_contract":"intents.near"}')


def test_token_diff_rejects_bad() -> None:
    for bad in [{}, {"nep141:a": 0}, {"nep141:a": True}, {"nep141:a": 2**127}, {"": 1}]:
        with pytest.raises(InputError):
            token_diff_intent(bad)  # type: ignore[arg-type]


def _good_nep413() -> dict[str, Any]:
    key = SigningKey.from_seed(SEED)
    return sign_nep413(key, "{}", bytes(32)).to_json_obj()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda o: o.update(standard="erc191"), "unsupported"),
        (lambda o: o.pop("standard"), "standard"),
        (lambda o: o.pop("signature"), "signature"),
        (lambda o: o.update(public_key="ed25519:abc"), "32 bytes"),
        (lambda o: o.update(public_key="secp256k1:" + o["public_key"][8:]), "curve"),
        (lambda o: o["payload"].update(nonce=b64encode(bytes(31))), "32 bytes"),
        (lambda o: o["payload"].update(nonce="***"), "base64"),
        (lambda o: o["payload"].pop("recipient"), "recipient"),
        (lambda o: o["payload"].update(message=5), "message"),
        (lambda o: o["payload"].update(callbackUrl=5), "callbackUrl"),
        (lambda o: o.update(payload="x"), "payload"),
    ],
)
def test_parse_multipayload_rejects(mutate: Any, reason: str) -> None:
    obj = _good_nep413()
    mutate(obj)
    with pytest.raises(InputError, match=reason) as info:
        parse_multipayload(obj)
    assert "\n" not in str(info.value)


def test_parse_multipayload_rejects_non_object_and_bad_message() -> None:
    with pytest.raises(InputError):
        parse_multipayload([1])
    signed = sign_nep413(SigningKey.from_seed(SEED), "[1,2]", bytes(32))
    assert signed.verify()
    with pytest.raises(InputError, match="object"):
        signed.message_obj()
    with pytest.raises(InputError, match="signer_id"):
        _ = sign_nep413(SigningKey.from_seed(SEED), "{}", bytes(32)).signer_id


def test_callback_url_roundtrip() -> None:
    obj = _good_nep413()
    obj["payload"]["callbackUrl"] = "https://cb.example"
    signed = parse_multipayload(obj)
    assert signed.callback_url == "https://cb.example"
    assert signed.to_json_obj() == obj
    assert not signed.verify()  # signature was over the payload without the callback


# ------------------------------------------------------------------------------------------- borsh


def test_borsh_primitives() -> None:
    w = BorshWriter().u8(1).u32(2).u64(3).u128(4).string("hé").bytes(b"\x09").fixed_bytes(b"ab", 2)
    w.option(None, BorshWriter.string).option("x", BorshWriter.string).vec([1, 2], BorshWriter.u32)
    r = BorshReader(w.getvalue())
    assert (r.u8(), r.u32(), r.u64(), r.u128()) == (1, 2, 3, 4)
    assert r.string() == "hé"
    assert r.bytes() == b"\x09"
    assert r.fixed_bytes(2) == b"ab"
    assert r.option(BorshReader.string) is None
    assert r.option(BorshReader.string) == "x"
    assert r.vec(BorshReader.u32) == [1, 2]
    r.finish()


def test_borsh_errors() -> None:
    with pytest.raises(InputError):
        BorshWriter().u8(256)
    with pytest.raises(InputError):
        BorshWriter().u64(-1)
    with pytest.raises(InputError):
        BorshWriter().fixed_bytes(b"a", 2)
    with pytest.raises(InputError, match="truncated"):
        BorshReader(b"\x05\x00\x00\x00ab").string()
    with pytest.raises(InputError, match="option"):
        BorshReader(b"\x02").option(BorshReader.u8)
    with pytest.raises(InputError):
        BorshReader(b"\xff\xff\xff\xff").vec(BorshReader.u8)
    with pytest.raises(InputError, match="UTF-8"):
        BorshReader(b"\x01\x00\x00\x00\xff").string()
    r = BorshReader(b"\x01\x02")
    r.u8()
    with pytest.raises(InputError, match="trailing"):
        r.finish()


_ACCOUNT = st.from_regex(r"\A[a-z0-9]{2,20}(\.[a-z0-9]{1,10}){0,2}\Z")
_ACTION = st.one_of(
    st.builds(
        FunctionCall,
        method_name=st.text(min_size=1, max_size=20),
        args=st.binary(max_size=200),
        gas=st.integers(min_value=0, max_value=2**64 - 1),
        deposit=st.integers(min_value=0, max_value=2**128 - 1),
    ),
    st.builds(Transfer, deposit=st.integers(min_value=0, max_value=2**128 - 1)),
)
_KEY = SigningKey.from_seed(SEED)


@given(
    signer=_ACCOUNT,
    receiver=_ACCOUNT,
    nonce=st.integers(min_value=0, max_value=2**64 - 1),
    block_hash=st.binary(min_size=32, max_size=32),
    actions=st.lists(_ACTION, max_size=4),
)
def test_transaction_roundtrip(
    signer: str, receiver: str, nonce: int, block_hash: bytes, actions: list[FunctionCall | Transfer]
) -> None:
    tx = Transaction(signer, _KEY.public_key, nonce, receiver, block_hash, actions)
    stx = sign_transaction(tx, _KEY)
    assert deserialize_signed_transaction(serialize_signed_transaction(stx)) == stx
    assert _KEY.public_key.verify(stx.hash(), stx.signature)
