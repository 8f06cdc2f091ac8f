"""Cancel payloads (same key and nonce, ``intents: []``) and the cancel-on-move watch (pure parts)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intents_mm.domain.cancel import MoveWatch, WatchedQuote
from intents_mm.near.keys import SigningKey
from intents_mm.near.nonce import random_versioned_nonce
from intents_mm.near.payload import parse_multipayload, sign_cancel
from intents_mm.near.timefmt import format_deadline

KEY = SigningKey.from_seed(b"cancel-test".ljust(32, b"\0"))
DEADLINE_NS = 2_280_047_743_000_000_000  # 2042-04-02T10:35:43Z


@pytest.mark.parametrize("standard", ["nep413", "raw_ed25519"])
def test_cancel_payload_has_the_same_nonce_and_no_intents(standard: str) -> None:
    nonce = random_versioned_nonce(bytes.fromhex("252812b3"), DEADLINE_NS)
    signed = sign_cancel(
        KEY,
        signer_id="mm.near",
        contract_id="intents.near",
        nonce=nonce,
        deadline_ns=DEADLINE_NS,
        standard=standard,  # type: ignore[arg-type]
    )
    doc = signed.to_json_obj()
    again = parse_multipayload(json.loads(json.dumps(doc)))  # what the relay and the Verifier read
    assert again.verify() and again.standard == standard
    assert again.nonce == nonce and again.intents == []
    assert again.signer_id == "mm.near" and again.deadline_ns == DEADLINE_NS
    assert again.public_key == KEY.public_key
    assert again.message_obj()["deadline"] == format_deadline(DEADLINE_NS)
    if standard == "raw_ed25519":
        assert again.message_obj()["verifying_contract"] == "intents.near"


def test_cancel_payload_refuses_a_short_nonce() -> None:
    with pytest.raises(Exception, match="32 bytes"):
        sign_cancel(KEY, signer_id="mm.near", contract_id="intents.near", nonce=b"\x01" * 31, deadline_ns=1)


def _q(n: int, mid: str, buys: bool) -> WatchedQuote:
    return WatchedQuote(f"n{n}", Decimal(mid), buys)


def test_a_move_against_the_quote_beyond_the_threshold_cancels_it() -> None:
    watch = MoveWatch(Decimal(10))
    watch.add(_q(1, "60000", True))  # we buy BTC: a falling mid hurts
    watch.add(_q(2, "60000", False))  # we sell BTC: a rising mid hurts
    assert watch.moved(Decimal("59941")) == []  # -9.83 bps
    assert watch.moved(Decimal("60059")) == []  # +9.83 bps
    assert watch.moved(Decimal("61000")) == [_q(2, "60000", False)]  # +166 bps: the sell only
    assert "n2" not in watch and "n1" in watch
    assert watch.moved(Decimal("59939")) == [_q(1, "60000", True)]  # -10.17 bps
    assert len(watch) == 0


def test_exactly_at_the_threshold_is_not_yet_a_cancel() -> None:
    watch = MoveWatch(Decimal(10))
    watch.add(_q(1, "10000", True))
    watch.add(_q(2, "10000", False))
    assert watch.moved(Decimal("9990")) == []  # priced_mid == mid / (1 - t) exactly
    assert watch.moved(Decimal("10010")) == []
    assert len(watch) == 2


def test_removed_quotes_are_never_returned() -> None:
    watch = MoveWatch(Decimal(5))
    for n in range(100):
        watch.add(_q(n, "100", n % 2 == 0))
    for n in range(0, 100, 3):
        assert watch.remove(f"n{n}") is not None
    gone = {q.nonce_b64 for q in watch.moved(Decimal("1"))}  # everything bought is hit
    assert gone == {f"n{n}" for n in range(0, 100, 2) if n % 3}
    assert watch.remove("n0") is None


@settings(max_examples=200, deadline=None)
@given(
    quotes=st.lists(
        st.tuples(st.integers(9_000, 11_000), st.booleans()), min_size=0, max_size=40, unique_by=lambda q: q
    ),
    mids=st.lists(st.integers(8_000, 12_000), min_size=1, max_size=10),
    threshold=st.integers(1, 500),
)
def test_the_watch_agrees_with_checking_every_quote(
    quotes: list[tuple[int, bool]], mids: list[int], threshold: int
) -> None:
    t = Decimal(threshold) / 10_000
    watch = MoveWatch(Decimal(threshold))
    live = {}
    for n, (mid, buys) in enumerate(quotes):
        q = WatchedQuote(f"n{n}", Decimal(mid), buys)
        watch.add(q)
        live[q.nonce_b64] = q
    for m in mids:
        mid = Decimal(m)
        expected = {
            q.nonce_b64
            for q in live.values()
            if (q.buys_base and mid < q.priced_mid * (1 - t))
            or (not q.buys_base and mid > q.priced_mid * (1 + t))
        }
        got = {q.nonce_b64 for q in watch.moved(mid)}
        assert got == expected
        for nonce in got:
            del live[nonce]
    assert len(watch) == len(live)
