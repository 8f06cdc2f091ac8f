"""The simulated intents.near Verifier: ledger, fees, invariant, nonces, salts, keys, views."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intents_mm.clock import ManualClock
from intents_mm.errors import InputError
from intents_mm.near.encoding import b64encode
from intents_mm.near.keys import SigningKey
from intents_mm.near.nonce import encode_versioned_nonce, random_versioned_nonce
from intents_mm.near.payload import (
    build_intent_message,
    parse_multipayload,
    sign_nep413,
    sign_raw_ed25519,
    token_diff_intent,
)
from intents_mm.near.timefmt import format_deadline
from intents_mm.sim.verifier import (
    MethodNotFoundError,
    ProhibitedInViewError,
    Verifier,
    VerifierError,
    counterparty_diff,
    protocol_fee,
)

BTC = "nep141:btc.omft.near"
EURE = "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"
MM = "solver.near"
USER = "alice.near"
MS = 1_000_000
MM_KEY = SigningKey.from_seed(b"\x01" * 32)
USER_KEY = SigningKey.from_seed(b"\x02" * 32)


def make_verifier(fee_pips: int = 1, **kwargs: Any) -> tuple[ManualClock, Verifier]:
    clock = ManualClock()
    verifier = Verifier(clock, fee_pips=fee_pips, salt=bytes.fromhex("252812b3"), **kwargs)
    verifier.add_public_key(MM, MM_KEY.public_key.to_string())
    verifier.add_public_key(USER, USER_KEY.public_key.to_string())
    return clock, verifier


def signed(
    verifier: Verifier,
    clock: ManualClock,
    key: SigningKey,
    signer: str,
    intents: list[dict[str, object]],
    *,
    deadline_ms: int = 60_000,
    nonce: bytes | None = None,
    nonce_deadline_ns: int | None = None,
    recipient: str = "intents.near",
) -> dict[str, Any]:
    deadline_ns = clock.now_ns() + deadline_ms * MS
    if nonce is None:
        nonce = random_versioned_nonce(
            verifier.current_salt(), deadline_ns if nonce_deadline_ns is None else nonce_deadline_ns
        )
    message = build_intent_message(signer, deadline_ns, intents)
    return sign_nep413(key, message, nonce, recipient).to_json_obj()


def diff_payload(
    verifier: Verifier, clock: ManualClock, key: SigningKey, signer: str, diff: dict[str, int], **kw: Any
) -> dict[str, Any]:
    return signed(verifier, clock, key, signer, [token_diff_intent(diff)], **kw)


def snapshot(verifier: Verifier) -> dict[str, dict[str, int]]:
    return {a: verifier.balances(a) for a in (MM, USER, verifier.fee_collector)}


def swap(verifier: Verifier, clock: ManualClock, amount_in: int, amount_out: int) -> list[dict[str, Any]]:
    """MM receives ``amount_in`` EURe and gives ``amount_out`` BTC; the user signs the closure."""
    mm_diff = {EURE: amount_in, BTC: -amount_out}
    user_diff = counterparty_diff(mm_diff, verifier.fee_pips)
    return [
        diff_payload(verifier, clock, MM_KEY, MM, mm_diff),
        diff_payload(verifier, clock, USER_KEY, USER, user_diff),
    ]


# --- fees and the two-party swap ---------------------------------------------------------------------


@pytest.mark.parametrize("fee_pips", [0, 1, 100, 10_000])
def test_two_party_swap_balances_and_fees_exact(fee_pips: int) -> None:
    clock, v = make_verifier(fee_pips)
    v.credit(MM, BTC, 10_000_000)
    v.credit(USER, EURE, 10**24)
    x, a = 1_000_000, 950 * 10**18  # MM gives 0.01 BTC, receives 950 EURe
    u = counterparty_diff({EURE: a}, fee_pips)[EURE]
    y = counterparty_diff({BTC: -x}, fee_pips)[BTC]
    assert -u == (a * 10**6 + (10**6 - fee_pips) - 1) // (10**6 - fee_pips)  # ceil(A·1e6/(1e6−f))
    assert -u - protocol_fee(EURE, u, fee_pips) == a
    assert y == x - protocol_fee(BTC, -x, fee_pips)

    outcome = v.execute_intents(swap(v, clock, a, x))

    assert v.balance_of(MM, BTC) == 10_000_000 - x
    assert v.balance_of(MM, EURE) == a
    assert v.balance_of(USER, EURE) == 10**24 + u
    assert v.balance_of(USER, BTC) == y
    fee_btc = -(-x * fee_pips // 10**6)
    fee_eure = -(u * fee_pips // 10**6)
    assert v.balance_of(v.fee_collector, BTC) == fee_btc
    assert v.balance_of(v.fee_collector, EURE) == fee_eure
    expected_fees = {t: f for t, f in ((BTC, fee_btc), (EURE, fee_eure)) if f}
    assert outcome.fees_collected == expected_fees
    assert v.total_of(BTC) == 10_000_000 and v.total_of(EURE) == 10**24
    assert len(outcome.intent_hashes) == 2 and outcome.signer_ids == [MM, USER]

    events = [json.loads(line.removeprefix("EVENT_JSON:")) for line in outcome.logs]
    assert all(line.startswith("EVENT_JSON:") for line in outcome.logs)
    diffs = [e for e in events if e["event"] == "token_diff"]
    assert [d["data"][0]["account_id"] for d in diffs] == [MM, USER]
    assert diffs[0]["standard"] == "dip4"
    assert diffs[0]["data"][0]["diff"] == {BTC: str(-x), EURE: str(a)}
    assert diffs[0]["data"][0]["intent_hash"] == outcome.intent_hashes[0]
    if fee_pips:
        assert diffs[0]["data"][0]["fees_collected"] == {BTC: str(fee_btc)}
    else:
        assert "fees_collected" not in diffs[0]["data"][0]
    executed = [e for e in events if e["event"] == "intents_executed"]
    assert len(executed) == 1
    assert [d["intent_hash"] for d in executed[0]["data"]] == outcome.intent_hashes
    assert all(len(d["nonce"]) == 44 for d in executed[0]["data"])


def test_counterparty_diff_closure_matches_contract_rules() -> None:
    assert counterparty_diff({BTC: -100_000, EURE: 95 * 10**18}, 1) == {
        BTC: 99_999,
        EURE: -95_000_095_000_095_000_096,
    }
    assert counterparty_diff({BTC: 5}, 0) == {BTC: -5}
    assert counterparty_diff({"nep171:nft.near:1": -1}, 100) == {"nep171:nft.near:1": 1}
    # a 1-unit outflow whose fee eats everything closes to nothing
    assert counterparty_diff({BTC: -1}, 1) == {}
    with pytest.raises(InputError):
        counterparty_diff({BTC: 0}, 1)
    with pytest.raises(InputError):
        counterparty_diff({BTC: 1}, 1_000_001)


# --- the order of checks and the contract's error strings ----------------------------------------------


def test_rejections_with_exact_error_strings() -> None:
    clock, v = make_verifier()
    v.credit(MM, BTC, 1000)
    diff = {BTC: -10, EURE: 10}

    stranger = SigningKey.from_seed(b"\x03" * 32)
    with pytest.raises(VerifierError) as err:
        v.execute_intents([diff_payload(v, clock, stranger, MM, diff)])
    assert err.value.reason == (
        f"public key '{stranger.public_key.to_string()}' doesn't exist for account '{MM}'"
    )

    tampered = diff_payload(v, clock, MM_KEY, MM, diff)
    tampered["payload"]["message"] = tampered["payload"]["message"].replace("-10", "-11")
    with pytest.raises(VerifierError, match=r"^invalid signature$"):
        v.execute_intents([tampered])

    with pytest.raises(VerifierError, match=r"^wrong verifying_contract$"):
        v.execute_intents([diff_payload(v, clock, MM_KEY, MM, diff, recipient="other.near")])

    with pytest.raises(VerifierError, match=r"^deadline has expired$"):
        v.execute_intents([diff_payload(v, clock, MM_KEY, MM, diff, deadline_ms=-1)])

    bad_salt = encode_versioned_nonce(b"\xde\xad\xbe\xef", clock.now_ns() + 60_000 * MS, b"\x00" * 15)
    with pytest.raises(VerifierError, match=r"^invalid salt$"):
        v.execute_intents([diff_payload(v, clock, MM_KEY, MM, diff, nonce=bad_salt)])

    short = diff_payload(v, clock, MM_KEY, MM, diff, nonce_deadline_ns=clock.now_ns() + 30_000 * MS)
    with pytest.raises(VerifierError, match=r"^deadline is greater than nonce$"):
        v.execute_intents([short])

    with pytest.raises(VerifierError, match=r"^insufficient balance or overflow$"):
        v.execute_intents([diff_payload(v, clock, MM_KEY, MM, {BTC: -1001, EURE: 1001})])

    zero = signed(v, clock, MM_KEY, MM, [{"intent": "token_diff", "diff": {BTC: "0"}}])
    with pytest.raises(VerifierError, match=r"^invalid intent$"):
        v.execute_intents([zero])
    empty = signed(v, clock, MM_KEY, MM, [{"intent": "token_diff", "diff": {}}])
    with pytest.raises(VerifierError, match=r"^invalid intent$"):
        v.execute_intents([empty])

    numeric = signed(v, clock, MM_KEY, MM, [{"intent": "token_diff", "diff": {BTC: -5}}])
    with pytest.raises(VerifierError, match=r"^JSON: "):
        v.execute_intents([numeric])
    unknown = signed(v, clock, MM_KEY, MM, [{"intent": "teleport"}])
    with pytest.raises(VerifierError, match=r"^JSON: unknown variant `teleport`"):
        v.execute_intents([unknown])

    with pytest.raises(VerifierError, match=r"^Failed to deserialize input from JSON\.$"):
        v.execute_intents([{"standard": "nep413"}])

    # nothing above changed the ledger or consumed a nonce
    assert v.balances(MM) == {BTC: 1000}
    assert v.balances(v.fee_collector) == {}


def test_reused_nonce_rejected_and_nonce_marked_used() -> None:
    clock, v = make_verifier(accept_legacy_nonces=True)
    v.credit(MM, BTC, 100)
    nonce = random_versioned_nonce(v.current_salt(), clock.now_ns() + 60_000 * MS)
    first = signed(v, clock, MM_KEY, MM, [], nonce=nonce)  # empty intents only burn the nonce
    assert not v.is_nonce_used(MM, nonce)
    v.check_signed(first)  # passes, commits nothing
    assert not v.is_nonce_used(MM, nonce)
    outcome = v.execute_intents([first])
    assert v.is_nonce_used(MM, nonce) and len(outcome.intent_hashes) == 1
    with pytest.raises(VerifierError, match=r"^nonce was already used$"):
        v.check_signed(first)
    again = signed(v, clock, MM_KEY, MM, [], nonce=nonce)
    with pytest.raises(VerifierError, match=r"^nonce was already used$"):
        v.execute_intents([again])
    # the same nonce is independent per account
    v.execute_intents([signed(v, clock, USER_KEY, USER, [], nonce=nonce)])


def test_deadline_checked_before_nonce_and_expiry_boundary() -> None:
    clock, v = make_verifier()
    p = signed(v, clock, MM_KEY, MM, [], deadline_ms=1000)
    clock.advance(1000 * MS)  # deadline == now is still valid
    v.check_signed(p)
    clock.advance(1)
    with pytest.raises(VerifierError, match=r"^deadline has expired$"):
        v.check_signed(p)


def test_legacy_nonces_accepted_unless_disabled() -> None:
    legacy = b"\x11" * 32
    clock, v = make_verifier()
    v.execute_intents([signed(v, clock, MM_KEY, MM, [], nonce=legacy)])
    assert v.is_nonce_used(MM, legacy)
    clock2, strict = make_verifier(accept_legacy_nonces=False)
    with pytest.raises(VerifierError, match=r"^invalid nonce$"):
        strict.execute_intents([signed(strict, clock2, MM_KEY, MM, [], nonce=legacy)])
    unknown_version = bytes.fromhex("5628f6c601") + b"\x00" * 27
    with pytest.raises(VerifierError, match=r"^invalid nonce$"):
        v.execute_intents([signed(v, clock, MM_KEY, MM, [], nonce=unknown_version)])


def test_invariant_violation_reverts_the_whole_batch() -> None:
    clock, v = make_verifier(fee_pips=1)
    v.credit(MM, BTC, 10_000_000)
    v.credit(USER, EURE, 10**21)
    before = snapshot(v)
    ok = swap(v, clock, 10**18, 100_000)  # a valid swap first in the batch
    lonely = diff_payload(v, clock, MM_KEY, MM, {BTC: -500, EURE: 7})  # nobody takes the other side
    nonces = [b64_nonce(p) for p in [*ok, lonely]]
    with pytest.raises(VerifierError) as err:
        v.execute_intents([*ok, lonely])
    expected = {"error": "unmatched_deltas", "unmatched_deltas": {BTC: "-499", EURE: "7"}}
    assert err.value.reason == "invariant violated: " + json.dumps(expected, separators=(",", ":"))
    assert snapshot(v) == before
    assert not any(v.is_nonce_used(a, n) for a, n in zip([MM, USER, MM], nonces, strict=True))
    # the valid part alone goes through
    v.execute_intents(ok)
    assert v.balance_of(USER, BTC) == 99_999


def b64_nonce(payload: dict[str, Any]) -> bytes:
    from intents_mm.near.encoding import b64decode

    return b64decode(payload["payload"]["nonce"])


def test_user_underpaying_the_fee_violates_invariant() -> None:
    clock, v = make_verifier(fee_pips=100)
    v.credit(MM, BTC, 10**8)
    v.credit(USER, EURE, 10**22)
    mm_diff = {EURE: 10**18, BTC: -(10**6)}
    naive_user = {EURE: -(10**18), BTC: 10**6}  # ignores the protocol fee (as the reference AMM does)
    with pytest.raises(VerifierError, match=r"^invariant violated: "):
        v.execute_intents(
            [
                diff_payload(v, clock, MM_KEY, MM, mm_diff),
                diff_payload(v, clock, USER_KEY, USER, naive_user),
            ]
        )
    assert v.balances(USER) == {EURE: 10**22}


# --- cancels: empty-intents payloads (there is no invalidate_nonces) ---------------------------------------


def cancel_of(
    verifier: Verifier, clock: ManualClock, key: SigningKey, signer: str, nonce: bytes, **kw: Any
) -> dict[str, Any]:
    """The cancel of a quote: same key, same nonce, ``intents: []``."""
    return signed(verifier, clock, key, signer, [], nonce=nonce, **kw)


def test_cancel_commits_the_nonce_and_moves_nothing_then_the_quote_fails() -> None:
    clock, v = make_verifier(fee_pips=100)
    v.credit(MM, BTC, 10**8)
    v.credit(USER, EURE, 10**24)
    quotes = swap(v, clock, 950 * 10**18, 10**6)  # [MM quote, user closure]
    nonce = parse_multipayload(quotes[0]).nonce
    before = snapshot(v)
    cancel = cancel_of(v, clock, MM_KEY, MM, nonce, deadline_ms=30_000)
    outcome = v.execute_intents([cancel])
    assert v.is_nonce_used(MM, nonce)
    assert v.view("is_nonce_used", {"account_id": MM, "nonce": b64encode(nonce)}) is True
    assert snapshot(v) == before and outcome.fees_collected == {} and outcome.withdrawals == []
    assert outcome.intent_hashes == [parse_multipayload(cancel).hash_b58()] and outcome.signer_ids == [MM]
    events = [json.loads(line.removeprefix("EVENT_JSON:")) for line in outcome.logs]
    assert [e["event"] for e in events] == ["intents_executed"]
    assert events[0]["data"] == [
        {"intent_hash": outcome.intent_hashes[0], "account_id": MM, "nonce": b64encode(nonce)}
    ]
    # the user accepting the cancelled quote now fails, and the whole batch reverts
    with pytest.raises(VerifierError, match=r"^nonce was already used$"):
        v.execute_intents(quotes)
    assert snapshot(v) == before
    assert not v.is_nonce_used(USER, parse_multipayload(quotes[1]).nonce)


def test_cancel_with_intents_field_omitted_and_raw_ed25519() -> None:
    clock, v = make_verifier()
    v.credit(MM, BTC, 500)
    deadline_ns = clock.now_ns() + 60_000 * MS
    n1 = random_versioned_nonce(v.current_salt(), deadline_ns)
    omitted = json.dumps({"signer_id": MM, "deadline": format_deadline(deadline_ns)}, separators=(",", ":"))
    v.execute_intents([sign_nep413(MM_KEY, omitted, n1).to_json_obj()])
    assert v.is_nonce_used(MM, n1)
    n2 = random_versioned_nonce(v.current_salt(), deadline_ns)
    raw = json.dumps(
        {
            "signer_id": MM,
            "verifying_contract": "intents.near",
            "deadline": format_deadline(deadline_ns),
            "nonce": b64encode(n2),
            "intents": [],
        },
        separators=(",", ":"),
    )
    v.execute_intents([sign_raw_ed25519(MM_KEY, raw).to_json_obj()])
    assert v.is_nonce_used(MM, n2) and v.balances(MM) == {BTC: 500}
    # an explicit null is not the serde default: a JSON error, nothing committed
    n3 = random_versioned_nonce(v.current_salt(), deadline_ns)
    null = json.dumps({"signer_id": MM, "deadline": format_deadline(deadline_ns), "intents": None})
    with pytest.raises(VerifierError, match=r"^JSON: invalid type for `intents`"):
        v.execute_intents([sign_nep413(MM_KEY, null, n3).to_json_obj()])
    assert not v.is_nonce_used(MM, n3)


def test_cancel_goes_through_every_payload_check() -> None:
    clock, v = make_verifier()
    nonce_deadline = clock.now_ns() + 60_000 * MS
    nonce = random_versioned_nonce(v.current_salt(), nonce_deadline)
    stranger = SigningKey.from_seed(b"\x0b" * 32)
    good = cancel_of(v, clock, MM_KEY, MM, nonce)  # deadline == the nonce's deadline: allowed
    cases: list[tuple[dict[str, Any], str]] = [
        (
            cancel_of(v, clock, stranger, MM, nonce),
            f"^public key '{stranger.public_key.to_string()}' doesn't exist",
        ),
        (cancel_of(v, clock, MM_KEY, MM, nonce, deadline_ms=60_001), "^deadline is greater than nonce$"),
        (cancel_of(v, clock, MM_KEY, MM, nonce, deadline_ms=-1), "^deadline has expired$"),
        (cancel_of(v, clock, MM_KEY, MM, nonce, recipient="evil.near"), "^wrong verifying_contract$"),
        (
            {**good, "signature": cancel_of(v, clock, USER_KEY, USER, nonce)["signature"]},
            "^invalid signature$",
        ),
        (
            cancel_of(
                v,
                clock,
                MM_KEY,
                MM,
                encode_versioned_nonce(b"\xde\xad\xbe\xef", nonce_deadline, b"\x01" * 15),
            ),
            "^invalid salt$",
        ),
    ]
    for payload, expected in cases:
        with pytest.raises(VerifierError, match=expected):
            v.execute_intents([payload])
    assert not v.is_nonce_used(MM, nonce)
    v.execute_intents([good])
    assert v.is_nonce_used(MM, nonce)


def test_batch_of_cancels_with_one_used_nonce_reverts_all() -> None:
    clock, v = make_verifier()
    deadline_ns = clock.now_ns() + 60_000 * MS
    nonces = [random_versioned_nonce(v.current_salt(), deadline_ns) for _ in range(4)]
    v.execute_intents([cancel_of(v, clock, MM_KEY, MM, nonces[3])])  # the quote that settled
    batch = [cancel_of(v, clock, MM_KEY, MM, n) for n in nonces]
    with pytest.raises(VerifierError, match=r"^nonce was already used$"):
        v.execute_intents(batch)
    assert [v.is_nonce_used(MM, n) for n in nonces] == [False, False, False, True]
    # the same nonce twice in one batch fails too
    with pytest.raises(VerifierError, match=r"^nonce was already used$"):
        v.execute_intents([batch[0], cancel_of(v, clock, MM_KEY, MM, nonces[0], deadline_ms=1000)])
    assert not v.is_nonce_used(MM, nonces[0])
    # simulate reports the cancels and commits nothing
    sim = v.simulate_intents(batch[:3])
    assert [d["nonce"] for d in sim["intents_executed"]] == [b64encode(n) for n in nonces[:3]]
    assert "invariant_violated" not in sim and not v.is_nonce_used(MM, nonces[0])
    outcome = v.execute_intents(batch[:3])
    assert len(outcome.intent_hashes) == 3 and all(v.is_nonce_used(MM, n) for n in nonces)


def test_invalidate_nonces_does_not_exist() -> None:
    clock, v = make_verifier()
    nonce = b"\x21" * 32
    assert "invalidate_nonces" not in v.CHANGE_METHODS + v.VIEW_METHODS
    for deposit in (0, 1):
        with pytest.raises(MethodNotFoundError, match="invalidate_nonces"):
            v.call(MM, "invalidate_nonces", {"nonces": [b64encode(nonce)]}, deposit)
    with pytest.raises(MethodNotFoundError):
        v.view("invalidate_nonces", {"nonces": [b64encode(nonce)]})
    # as an intent it is an unknown variant of today's Intent enum: the payload fails, nothing commits
    intent: dict[str, object] = {"intent": "invalidate_nonces", "nonces": [b64encode(nonce)]}
    payload = signed(v, clock, MM_KEY, MM, [intent])
    with pytest.raises(VerifierError, match=r"^JSON: unknown variant `invalidate_nonces`, expected one of"):
        v.execute_intents([payload])
    assert not v.is_nonce_used(MM, nonce)
    assert not v.is_nonce_used(MM, parse_multipayload(payload).nonce)


# --- simulate ------------------------------------------------------------------------------------------


def test_simulate_intents_shape_and_no_mutation() -> None:
    clock, v = make_verifier(fee_pips=100)
    v.credit(MM, BTC, 10**8)
    v.credit(USER, EURE, 10**22)
    batch = swap(v, clock, 10**18, 10**6)
    before = snapshot(v)
    out = v.simulate_intents(batch)
    assert snapshot(v) == before
    assert not any(v.is_nonce_used(MM, b64_nonce(p)) for p in batch[:1])
    assert out["state"] == {"fee": 100, "current_salt": "252812b3"}
    assert "invariant_violated" not in out
    assert [e["account_id"] for e in out["intents_executed"]] == [MM, USER]
    assert set(out["intents_executed"][0]) == {"intent_hash", "account_id", "nonce"}
    assert out["min_deadline"].endswith("Z")
    assert all(line.startswith("EVENT_JSON:") for line in out["logs"])
    # executing for real gives the same hashes
    outcome = v.execute_intents(batch)
    assert outcome.intent_hashes == [e["intent_hash"] for e in out["intents_executed"]]

    lonely = diff_payload(v, clock, MM_KEY, MM, {BTC: -10, EURE: 10})
    sim = v.simulate_intents([lonely])
    assert sim["invariant_violated"]["error"] == "unmatched_deltas"
    with pytest.raises(VerifierError, match=r"^deadline has expired$"):
        v.simulate_intents([diff_payload(v, clock, MM_KEY, MM, {BTC: -1}, deadline_ms=-5)])
    assert v.simulate_intents([])["min_deadline"].startswith("+262142")


# --- other intents, keys, nonces, salts ------------------------------------------------------------------


def test_transfer_and_ft_withdraw_intents() -> None:
    clock, v = make_verifier()
    v.credit(MM, BTC, 1000)
    transfer: dict[str, object] = {
        "intent": "transfer",
        "receiver_id": USER,
        "tokens": {BTC: "300"},
        "memo": "pay",
    }
    withdraw: dict[str, object] = {
        "intent": "ft_withdraw",
        "token": "btc.omft.near",
        "receiver_id": "btc.omft.near",
        "amount": "200",
        "memo": "WITHDRAW_TO:bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh",
    }
    outcome = v.execute_intents([signed(v, clock, MM_KEY, MM, [transfer, withdraw])])
    assert v.balance_of(MM, BTC) == 500
    assert v.balance_of(USER, BTC) == 300
    assert v.total_of(BTC) == 800
    assert len(outcome.withdrawals) == 1
    w = outcome.withdrawals[0]
    assert (w.account_id, w.asset_id, w.amount) == (MM, BTC, 200)
    assert w.poa_destination == "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"
    kinds = [json.loads(x.removeprefix("EVENT_JSON:"))["event"] for x in outcome.logs]
    assert kinds == ["transfer", "ft_withdraw", "intents_executed", "mt_burn"]
    with pytest.raises(VerifierError, match=r"^invalid intent$"):
        self_transfer: dict[str, object] = {"intent": "transfer", "receiver_id": MM, "tokens": {BTC: "1"}}
        v.execute_intents([signed(v, clock, MM_KEY, MM, [self_transfer])])
    with pytest.raises(VerifierError, match=r"^insufficient balance or overflow$"):
        too_much: dict[str, object] = {"intent": "transfer", "receiver_id": USER, "tokens": {BTC: "501"}}
        v.execute_intents([signed(v, clock, MM_KEY, MM, [too_much])])


def test_direct_ft_withdraw() -> None:
    _, v = make_verifier()
    v.credit(MM, BTC, 1000)
    assert v.ft_withdraw(MM, "btc.omft.near", "bob.near", 400, None, None) == 400
    assert v.balance_of(MM, BTC) == 600
    with pytest.raises(VerifierError, match=r"^insufficient balance or overflow$"):
        v.ft_withdraw(MM, "btc.omft.near", "bob.near", 601, None, None)
    with pytest.raises(VerifierError, match=r"^invalid intent$"):
        v.ft_withdraw(MM, "btc.omft.near", "bob.near", 0, None, None)
    assert v.balance_of(MM, BTC) == 600
    assert not hasattr(v, "invalidate_nonces")


def test_public_keys_named_and_implicit_accounts() -> None:
    clock, v = make_verifier()
    k = SigningKey.from_seed(b"\x05" * 32)
    pk = k.public_key.to_string()
    with pytest.raises(VerifierError, match=r"already exists for account 'solver.near'"):
        v.add_public_key(MM, MM_KEY.public_key.to_string())
    v.add_public_key(MM, pk)
    assert v.public_keys_of(MM) == [MM_KEY.public_key.to_string(), pk]
    v.remove_public_key(MM, pk)
    assert not v.has_public_key(MM, pk)
    with pytest.raises(VerifierError, match=r"^public key '.*' doesn't exist for account 'solver.near'$"):
        v.remove_public_key(MM, pk)

    implicit = k.public_key.implicit_account_id()
    assert v.has_public_key(implicit, pk) and v.public_keys_of(implicit) == [pk]
    v.credit(implicit, BTC, 50)
    v.execute_intents([signed(v, clock, k, implicit, [])])  # signs with its own implicit key
    # intent forms: add another key, then remove the implicit one
    other = SigningKey.from_seed(b"\x06" * 32).public_key.to_string()
    v.execute_intents(
        [
            signed(
                v,
                clock,
                k,
                implicit,
                [
                    {"intent": "add_public_key", "public_key": other},
                    {"intent": "remove_public_key", "public_key": pk},
                ],
            )
        ]
    )
    assert v.public_keys_of(implicit) == [other]
    with pytest.raises(VerifierError, match=r"doesn't exist for account"):
        v.execute_intents([signed(v, clock, k, implicit, [])])


def test_salt_rotation_and_invalidation() -> None:
    clock, v = make_verifier(salt_grace_ns=10_000 * MS)
    old = v.current_salt()
    new = v.rotate_salt()
    assert new != old and v.current_salt() == new
    assert v.is_valid_salt(old) and v.is_valid_salt(new)
    with_old = signed(
        v, clock, MM_KEY, MM, [], nonce=random_versioned_nonce(old, clock.now_ns() + 60_000 * MS)
    )
    v.check_signed(with_old)
    clock.advance(10_001 * MS)
    assert not v.is_valid_salt(old)
    with pytest.raises(VerifierError, match=r"^invalid salt$"):
        v.check_signed(with_old)

    _, forever = make_verifier()
    first = forever.current_salt()
    forever.rotate_salt()
    assert forever.is_valid_salt(first)
    forever.invalidate_salt(first)
    assert not forever.is_valid_salt(first)
    with pytest.raises(VerifierError, match=r"^invalid salt$"):
        forever.invalidate_salt(b"\x00\x00\x00\x00")


# --- dispatch by method name -------------------------------------------------------------------------------


def test_views_by_name() -> None:
    clock, v = make_verifier(fee_pips=100)
    v.credit(MM, BTC, 123)
    v.credit(MM, EURE, 7)
    nonce = b"\x09" * 32
    v.execute_intents([signed(v, clock, MM_KEY, MM, [], nonce=nonce)])  # a cancel commits the nonce
    assert v.view("mt_balance_of", {"account_id": MM, "token_id": BTC}) == "123"
    assert v.view("mt_batch_balance_of", {"account_id": MM, "token_ids": [EURE, "nep141:x.near", BTC]}) == [
        "7",
        "0",
        "123",
    ]
    assert v.view("has_public_key", {"account_id": MM, "public_key": MM_KEY.public_key.to_string()}) is True
    assert v.view("public_keys_of", {"account_id": USER}) == [USER_KEY.public_key.to_string()]
    assert v.view("is_nonce_used", {"account_id": MM, "nonce": b64encode(nonce)}) is True
    assert v.view("is_nonce_used", {"account_id": USER, "nonce": b64encode(nonce)}) is False
    assert v.view("current_salt", {}) == "252812b3"
    assert v.view("is_valid_salt", {"salt": "252812b3"}) is True
    assert v.view("is_valid_salt", {"salt": "00000000"}) is False
    assert v.view("fee", {}) == 100
    assert v.view("fee_collector", {}) == "fees.intents.near"
    assert v.view("is_auth_by_predecessor_id_enabled", {"account_id": MM}) is True
    assert v.view("mt_tokens_for_owner", {"account_id": MM}) == [{"token_id": BTC}, {"token_id": EURE}]
    assert v.view("mt_tokens_for_owner", {"account_id": MM, "from_index": "1", "limit": 5}) == [
        {"token_id": EURE}
    ]
    sim = v.view("simulate_intents", {"signed": []})
    assert isinstance(sim, dict) and sim["state"]["fee"] == 100
    with pytest.raises(MethodNotFoundError):
        v.view("nope", {})
    with pytest.raises(ProhibitedInViewError):
        v.view("execute_intents", {"signed": []})
    with pytest.raises(VerifierError, match=r"^Failed to deserialize input from JSON\.$"):
        v.view("mt_balance_of", {"account_id": MM})


def test_change_methods_by_name_check_deposit_and_revert() -> None:
    _, v = make_verifier()
    v.credit(MM, BTC, 100)
    pk = SigningKey.from_seed(b"\x07" * 32).public_key.to_string()
    with pytest.raises(VerifierError, match=r"^Requires attached deposit of exactly 1 yoctoNEAR$"):
        v.call(MM, "add_public_key", {"public_key": pk}, 0)
    res = v.call(MM, "add_public_key", {"public_key": pk}, 1)
    assert res.value is None and "public_key_added" in res.logs[0]
    assert v.has_public_key(MM, pk)
    with pytest.raises(VerifierError, match=r"^Method execute_intents doesn't accept deposit$"):
        v.call(MM, "execute_intents", {"signed": []}, 1)
    res = v.call(
        MM, "ft_withdraw", {"token": "btc.omft.near", "receiver_id": "btc.omft.near", "amount": "60"}, 1
    )
    assert res.value == "60" and v.balance_of(MM, BTC) == 40
    assert res.withdrawals[0].poa_destination is None  # no WITHDRAW_TO memo
    with pytest.raises(MethodNotFoundError):
        v.call(MM, "steal", {}, 1)
    v.call(MM, "disable_auth_by_predecessor_id", {}, 1)
    assert v.view("is_auth_by_predecessor_id_enabled", {"account_id": MM}) is False
    with pytest.raises(VerifierError, match=r"disabled for account 'solver.near'"):
        v.call(MM, "ft_withdraw", {"token": "btc.omft.near", "receiver_id": "bob.near", "amount": "1"}, 1)
    # a multi-step atomic block reverts every step
    other = SigningKey.from_seed(b"\x08" * 32).public_key.to_string()
    with pytest.raises(VerifierError, match="already exists"), v.atomic():
        v.call(USER, "add_public_key", {"public_key": other}, 1)
        v.call(USER, "add_public_key", {"public_key": other}, 1)
    assert not v.has_public_key(USER, other)


# --- properties ------------------------------------------------------------------------------------------

_FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(
    fee_pips=st.one_of(st.sampled_from([0, 1, 100, 10_000]), st.integers(0, 999_999)),
    amount_in=st.integers(1, 10**30),
    amount_out=st.integers(1, 10**15),
)
def test_property_valid_swaps_conserve_supply(fee_pips: int, amount_in: int, amount_out: int) -> None:
    clock, v = make_verifier(fee_pips)
    mm_diff = {EURE: amount_in, BTC: -amount_out}
    user_diff = counterparty_diff(mm_diff, fee_pips)
    v.credit(MM, BTC, amount_out + 5)
    v.credit(USER, EURE, -user_diff[EURE] + 3)
    supply = {BTC: v.total_of(BTC), EURE: v.total_of(EURE)}
    batch = [diff_payload(v, clock, MM_KEY, MM, mm_diff)]
    if user_diff:
        batch.append(diff_payload(v, clock, USER_KEY, USER, user_diff))
    try:
        v.execute_intents(batch)
    except VerifierError as exc:
        # only possible when the whole BTC leg is eaten by the fee (user gets nothing)
        assert BTC not in user_diff and exc.reason.startswith("invariant violated")
        assert v.balance_of(MM, BTC) == amount_out + 5
    else:
        assert v.balance_of(MM, BTC) == 5 and v.balance_of(MM, EURE) == amount_in
    for token, total in supply.items():
        assert v.total_of(token) == total
    for account in (MM, USER, v.fee_collector):
        assert all(b > 0 for b in v.balances(account).values())


@_FAST
@given(
    fee_pips=st.integers(0, 20_000),
    deltas=st.lists(
        st.tuples(st.sampled_from([MM, USER]), st.sampled_from([BTC, EURE]), st.integers(-(10**9), 10**9)),
        min_size=1,
        max_size=6,
    ),
)
def test_property_arbitrary_batches_never_break_supply(
    fee_pips: int, deltas: list[tuple[str, str, int]]
) -> None:
    clock, v = make_verifier(fee_pips)
    for account in (MM, USER):
        v.credit(account, BTC, 10**9)
        v.credit(account, EURE, 10**9)
    before = snapshot(v)
    batch = []
    for account, token, delta in deltas:
        key = MM_KEY if account == MM else USER_KEY
        batch.append(signed(v, clock, key, account, [{"intent": "token_diff", "diff": {token: str(delta)}}]))
    try:
        v.execute_intents(batch)
    except VerifierError:
        assert snapshot(v) == before
    for token in (BTC, EURE):
        assert v.total_of(token) == 2 * 10**9
    for account in (MM, USER, v.fee_collector):
        assert all(b > 0 for b in v.balances(account).values())
