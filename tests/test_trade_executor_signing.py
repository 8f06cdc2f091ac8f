"""The executor's quote signing, in isolation: signs, quote_output, deadline, nonce, both standards."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from intents_mm.cli import verify_signed_data
from intents_mm.clock import ManualClock
from intents_mm.errors import InputError
from intents_mm.messages import ExecuteTrade
from intents_mm.near.encoding import b64decode
from intents_mm.near.keys import SigningKey
from intents_mm.near.nonce import VersionedNonce, decode_nonce
from intents_mm.near.payload import parse_multipayload
from intents_mm.near.timefmt import format_deadline
from intents_mm.services.trade_executor import (
    is_invalid_salt,
    quote_deadline_ns,
    quote_token_diff,
    sign_quote,
)
from intents_mm.sim.verifier import Verifier

BTC = "nep141:btc.omft.near"
EURE = "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"
MS = 1_000_000
KEY = SigningKey.from_seed(bytes(range(32)))
SALT = bytes.fromhex("252812b3")
NOW = 1_760_000_000_123_456_789  # not on a millisecond boundary


def command(exact_side: str = "in", amount_in: int = 5000, amount_out: int = 3 * 10**18) -> ExecuteTrade:
    return ExecuteTrade(
        command_id="cmd-1",
        decision_id="dec-1",
        quote_id="q-1",
        asset_in=BTC,
        asset_out=EURE,
        amount_in=amount_in,
        amount_out=amount_out,
        exact_side=exact_side,  # type: ignore[arg-type]
        min_deadline_ms=60_000,
        relay_deadline_ns=NOW + 3000 * MS,
        reference_mid=Decimal("60000"),
    )


def test_exact_in_signs_receive_in_give_out_and_quotes_amount_out() -> None:
    q = sign_quote(
        command("in"),
        key=KEY,
        signer_id="mm.near",
        contract_id="intents.near",
        salt=SALT,
        now_ns=NOW,
        buffer_ms=10_000,
    )
    assert q.params["quote_id"] == "q-1"
    assert q.params["quote_output"] == {"amount_out": str(3 * 10**18)}
    message = json.loads(q.params["signed_data"]["payload"]["message"])
    assert message == {
        "signer_id": "mm.near",
        "deadline": format_deadline(q.deadline_ns),
        "intents": [{"intent": "token_diff", "diff": {BTC: "5000", EURE: "-3000000000000000000"}}],
    }
    assert q.params["signed_data"]["payload"]["recipient"] == "intents.near"
    assert q.params["signed_data"]["standard"] == "nep413"


def test_exact_out_quotes_amount_in_with_the_same_signs() -> None:
    q = sign_quote(
        command("out", amount_in=4321, amount_out=2 * 10**18),
        key=KEY,
        signer_id="mm.near",
        contract_id="intents.near",
        salt=SALT,
        now_ns=NOW,
        buffer_ms=0,
    )
    assert q.params["quote_output"] == {"amount_in": "4321"}
    (intent,) = parse_multipayload(q.params["signed_data"]).intents
    assert intent["diff"] == {BTC: "4321", EURE: "-2000000000000000000"}


def test_deadline_nonce_and_hash_agree_with_verify_signed_data() -> None:
    q = sign_quote(
        command(),
        key=KEY,
        signer_id="mm.near",
        contract_id="intents.near",
        salt=SALT,
        now_ns=NOW,
        buffer_ms=10_000,
    )
    assert q.deadline_ns == (NOW + 70_000 * MS) // MS * MS
    assert q.deadline_ns % MS == 0 and NOW + 69_999 * MS < q.deadline_ns <= NOW + 70_000 * MS
    nonce = decode_nonce(q.nonce)
    assert isinstance(nonce, VersionedNonce)
    assert nonce.salt == SALT and nonce.deadline_ns == q.deadline_ns
    assert b64decode(q.nonce_b64) == q.nonce
    report = verify_signed_data(json.dumps(q.params), parse_multipayload)
    assert report["valid"] is True
    assert report["hash"] == q.quote_hash == q.payload.hash_b58()
    assert report["nonce"]["kind"] == "versioned" and report["nonce"]["salt"] == SALT.hex()
    # every quote gets a fresh nonce, hence a distinct hash
    again = sign_quote(
        command(),
        key=KEY,
        signer_id="mm.near",
        contract_id="intents.near",
        salt=SALT,
        now_ns=NOW,
        buffer_ms=10_000,
    )
    assert again.nonce != q.nonce and again.quote_hash != q.quote_hash


@pytest.mark.parametrize("standard", ["nep413", "raw_ed25519"])
def test_the_verifier_accepts_both_standards(standard: str) -> None:
    clock = ManualClock(NOW)
    verifier = Verifier(clock)
    account = KEY.public_key.implicit_account_id()
    q = sign_quote(
        command(),
        key=KEY,
        signer_id=account,
        contract_id="intents.near",
        salt=verifier.current_salt(),
        now_ns=NOW,
        buffer_ms=10_000,
        standard=standard,  # type: ignore[arg-type]
    )
    assert q.params["signed_data"]["standard"] == standard
    checked = verifier.check_signed(q.params["signed_data"])
    assert checked.hash_b58() == q.quote_hash
    if standard == "raw_ed25519":
        inner = json.loads(q.params["signed_data"]["payload"])
        assert list(inner) == ["signer_id", "verifying_contract", "deadline", "nonce", "intents"]
        assert inner["nonce"] == q.nonce_b64 and inner["verifying_contract"] == "intents.near"


def test_deadline_buffer_and_refusals() -> None:
    assert quote_deadline_ns(command(), NOW, 0) == (NOW + 60_000 * MS) // MS * MS
    with pytest.raises(InputError, match="same asset"):
        quote_token_diff(
            ExecuteTrade(
                command_id="c",
                decision_id="d",
                quote_id="q",
                asset_in=BTC,
                asset_out=BTC,
                amount_in=1,
                amount_out=1,
                exact_side="in",
                min_deadline_ms=0,
                relay_deadline_ns=0,
                reference_mid=Decimal(1),
            )
        )
    with pytest.raises(InputError, match="positive"):
        quote_token_diff(command(amount_out=0))
    assert is_invalid_salt("verifier check failed: invalid salt")
    assert not is_invalid_salt("verifier check failed: nonce was already used")
    assert not is_invalid_salt(None)
