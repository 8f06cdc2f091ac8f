"""Bus message envelope: round trips for every subject, validation, big integers."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intents_mm import messages as m
from intents_mm.clock import ManualClock
from intents_mm.errors import InputError
from test_messages_samples import BTC, EURE, T0, U128_MAX, sample_envelopes, sample_payloads

CLOCK = ManualClock(T0)


def test_every_subject_has_a_sample() -> None:
    assert set(sample_payloads()) == set(m.ALL_SUBJECTS)
    assert len(m.ALL_SUBJECTS) == 12


@pytest.mark.parametrize("subject", m.ALL_SUBJECTS)
def test_round_trip_every_subject(subject: str) -> None:
    payload = sample_payloads()[subject]
    env = m.new_envelope(subject, payload, clock=CLOCK, msg_id=f"id-{subject}")
    data = m.encode(env)
    assert m.decode(data) == env
    assert m.decode(data, subject=subject) == env
    doc = json.loads(data)
    assert doc["subject"] == subject
    assert doc["type"] == type(payload).__name__
    assert doc["version"] == 1
    assert doc["msg_id"] == f"id-{subject}"
    assert doc["ts_ns"] == T0


def test_new_envelope_defaults() -> None:
    payload = sample_payloads()[m.QUOTE_STATUS]
    a = m.new_envelope(m.QUOTE_STATUS, payload, clock=CLOCK)
    b = m.new_envelope(m.QUOTE_STATUS, payload, clock=CLOCK)
    assert len(a.msg_id) == 32 and int(a.msg_id, 16) >= 0
    assert a.msg_id != b.msg_id
    assert a.ts_ns == CLOCK.now_ns()


def test_new_envelope_rejects_wrong_payload_and_subject() -> None:
    payload = sample_payloads()[m.QUOTE_STATUS]
    with pytest.raises(InputError, match="carries SwapRequest"):
        m.new_envelope(m.SWAP_REQUEST, payload, clock=CLOCK)
    with pytest.raises(InputError, match="unknown subject"):
        m.new_envelope("demand.nope", payload, clock=CLOCK)
    with pytest.raises(InputError, match="msg_id"):
        m.new_envelope(m.QUOTE_STATUS, payload, clock=CLOCK, msg_id="")


def test_big_integers_survive_exactly() -> None:
    env = m.new_envelope(m.SWAP_REQUEST, sample_payloads()[m.SWAP_REQUEST], clock=CLOCK, msg_id="x")
    data = m.encode(env)
    assert str(U128_MAX).encode() in data
    out = m.decode(data).payload
    assert isinstance(out, m.SwapRequest)
    assert out.exact_amount_in == U128_MAX
    inv = m.decode(m.encode(sample_envelopes()[3])).payload
    assert isinstance(inv, m.InventorySnapshot)
    assert inv.unexplained_changes[0].delta == -(2**127)
    assert inv.credited[EURE] == U128_MAX


def test_prices_are_decimals_encoded_as_strings() -> None:
    env = sample_envelopes()[2]
    doc = json.loads(m.encode(env))
    assert doc["payload"]["mid"] == "95123.123456789012345678"
    out = m.decode(m.encode(env)).payload
    assert isinstance(out, m.ReferencePrice)
    assert out.mid == Decimal("95123.123456789012345678")
    assert isinstance(out.mid, Decimal)


def _doc(subject: str) -> dict[str, Any]:
    env = m.new_envelope(subject, sample_payloads()[subject], clock=CLOCK, msg_id="x")
    doc: dict[str, Any] = json.loads(m.encode(env))
    return doc


def _raw(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_unknown_subject_is_input_error() -> None:
    doc = _doc(m.QUOTE_STATUS)
    doc["subject"] = "demand.unknown"
    with pytest.raises(InputError, match=r"unknown subject 'demand\.unknown'"):
        m.decode(_raw(doc))
    with pytest.raises(InputError, match="unknown subject"):
        m.decode(_raw(_doc(m.QUOTE_STATUS)), subject="nope")


def test_subject_mismatch_with_delivery_is_input_error() -> None:
    with pytest.raises(InputError, match="delivered on"):
        m.decode(_raw(_doc(m.QUOTE_STATUS)), subject=m.SWAP_REQUEST)


def test_type_and_version_are_checked() -> None:
    doc = _doc(m.QUOTE_STATUS)
    doc["type"] = "SwapRequest"
    with pytest.raises(InputError, match="expected 'QuoteStatus'"):
        m.decode(_raw(doc))
    doc = _doc(m.QUOTE_STATUS)
    doc["version"] = 2
    with pytest.raises(InputError, match="unsupported version 2"):
        m.decode(_raw(doc))
    doc = _doc(m.QUOTE_STATUS)
    doc["msg_id"] = ""
    with pytest.raises(InputError, match="empty msg_id"):
        m.decode(_raw(doc))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: p.update(exact_amount_in="12"), r"Expected `int \| null`, got `str` - at `\$.payload"),
        (lambda p: p.pop("quote_id"), "missing required field `quote_id`"),
        (lambda p: p.update(exact_amount_out=5), "exactly one of exact_amount_in and exact_amount_out"),
        (lambda p: p.update(exact_amount_in=2**128), "between 0 and 2"),
        (lambda p: p.update(exact_amount_in=-1), "between 0 and 2"),
        (lambda p: p.update(min_deadline_ms=-5), "Expected `int` >= 0"),
        (lambda p: p.update(relay_deadline_ns=2**63), "Expected `int` <= 9223372036854775807"),
    ],
)
def test_malformed_swap_request_is_input_error(mutate: Any, reason: str) -> None:
    doc = _doc(m.SWAP_REQUEST)
    mutate(doc["payload"])
    with pytest.raises(InputError, match=reason) as info:
        m.decode(_raw(doc))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("malformed demand.swap_request message")


def test_malformed_nested_and_enum_values() -> None:
    doc = _doc(m.REFERENCE_PRICE)
    doc["payload"]["quality"] = "great"
    with pytest.raises(InputError, match="Invalid enum value 'great'"):
        m.decode(_raw(doc))
    doc = _doc(m.REFERENCE_PRICE)
    doc["payload"]["sources"][0]["bid"] = "abc"
    with pytest.raises(InputError, match=r"sources\[0\]\.bid"):
        m.decode(_raw(doc))
    doc = _doc(m.REFERENCE_PRICE)
    doc["payload"]["mid"] = "NaN"
    with pytest.raises(InputError, match="finite decimal"):
        m.decode(_raw(doc))
    doc = _doc(m.REFERENCE_PRICE)
    doc["payload"]["mid"] = "1e20"
    with pytest.raises(InputError, match="below 1e20"):
        m.decode(_raw(doc))


@pytest.mark.parametrize("data", [b"", b"not json", b"{", b"[]", b'{"subject": 5}', b"\xff\xfe"])
def test_garbage_is_input_error(data: bytes) -> None:
    with pytest.raises(InputError):
        m.decode(data)


def test_unknown_payload_fields_are_ignored() -> None:
    doc = _doc(m.QUOTE_STATUS)
    doc["payload"]["added_later"] = {"x": 1}
    env = m.decode(_raw(doc))
    assert env.payload == sample_payloads()[m.QUOTE_STATUS]


def test_payloads_are_frozen() -> None:
    payload = sample_payloads()[m.EXECUTE_TRADE]
    with pytest.raises(AttributeError):
        payload.quote_id = "other"  # type: ignore[attr-defined]


def test_direct_construction_validates() -> None:
    with pytest.raises(InputError, match="exactly one"):
        m.SwapRequest(
            quote_id="q",
            asset_in=BTC,
            asset_out=EURE,
            min_deadline_ms=1,
            received_ts_ns=1,
            relay_deadline_ns=1,
        )


amounts = st.integers(min_value=0, max_value=U128_MAX)
prices = st.decimals(min_value=Decimal("-1e19"), max_value=Decimal("1e19"), allow_nan=False, places=18)
texts = st.text(max_size=20)


@settings(max_examples=150)
@given(
    quote_id=texts,
    amount=amounts,
    exact_in=st.booleans(),
    partner=st.none() | texts,
    deadline=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_swap_request_round_trip_property(
    quote_id: str, amount: int, exact_in: bool, partner: str | None, deadline: int
) -> None:
    payload = m.SwapRequest(
        quote_id=quote_id,
        asset_in=BTC,
        asset_out=EURE,
        exact_amount_in=amount if exact_in else None,
        exact_amount_out=None if exact_in else amount,
        min_deadline_ms=deadline,
        partner_id=partner,
        received_ts_ns=deadline,
        relay_deadline_ns=deadline,
    )
    env = m.new_envelope(m.SWAP_REQUEST, payload, clock=CLOCK, msg_id="p")
    assert m.decode(m.encode(env), subject=m.SWAP_REQUEST) == env


@settings(max_examples=100)
@given(
    terms=st.dictionaries(texts, prices, max_size=5),
    mid=st.none() | prices,
    amount_out=st.none() | amounts,
    inputs=st.dictionaries(
        texts,
        st.recursive(
            st.none() | st.booleans() | st.integers() | texts,
            lambda kids: st.lists(kids, max_size=3) | st.dictionaries(texts, kids, max_size=3),
            max_leaves=8,
        ),
        max_size=4,
    ),
)
def test_trade_decision_round_trip_property(
    terms: dict[str, Decimal], mid: Decimal | None, amount_out: int | None, inputs: dict[str, Any]
) -> None:
    payload = m.TradeDecision(
        decision_id="d",
        quote_id="q",
        outcome="decline",
        reason="stale_reference",
        armed=False,
        asset_in=EURE,
        asset_out=BTC,
        exact_amount_out=1,
        amount_out=amount_out,
        reference_mid=mid,
        price_terms=terms,
        inputs=inputs,
    )
    env = m.new_envelope(m.TRADE_DECISION, payload, clock=CLOCK, msg_id="p")
    assert m.decode(m.encode(env)) == env


@settings(max_examples=100)
@given(
    credited=st.dictionaries(texts, amounts, max_size=4),
    pnl=st.none() | prices,
    deposits=st.dictionaries(texts, st.integers(min_value=-(2**127), max_value=2**127 - 1), max_size=3),
)
def test_portfolio_metrics_round_trip_property(
    credited: dict[str, int], pnl: Decimal | None, deposits: dict[str, int]
) -> None:
    payload = m.PortfolioMetrics(
        computed_ts_ns=T0,
        price_stale=True,
        baseline_inventory=credited,
        current_inventory=credited,
        trade_pnl_eure=pnl,
        net_deposits=deposits,
    )
    env = m.new_envelope(m.PORTFOLIO_METRICS, payload, clock=CLOCK, msg_id="p")
    assert m.decode(m.encode(env)) == env


def test_settlement_struct_validates_and_encodes() -> None:
    s = m.Settlement(
        quote_hash="h",
        intent_hash="h",
        tx_hash="t",
        asset_in=BTC,
        asset_out=EURE,
        amount_in=U128_MAX,
        amount_out=1,
        markout_1s_bps=Decimal("-2.5"),
        settled_ts_ns=T0,
    )
    assert json.loads(m.encode_payload(s))["markout_1s_bps"] == "-2.5"
    with pytest.raises(InputError, match="amount_in"):
        m.Settlement(
            quote_hash="h",
            intent_hash="h",
            tx_hash="t",
            asset_in=BTC,
            asset_out=EURE,
            amount_in=-1,
            amount_out=1,
            settled_ts_ns=T0,
        )


@pytest.mark.parametrize(
    "value",
    ["6f1bd0a4-1a8e-4b47-9b55-0d2b8e1b4c21", "q", "q-1", "1click", "router-solver", "x" * 200, "a:b/c~!"],
)
def test_check_id_accepts_printable_ascii_ids(value: str) -> None:
    assert m.is_valid_id(value) and m.check_id("quote_id", value) == value


@pytest.mark.parametrize(
    "value",
    ["", "x" * 201, "a\x00b", "a\tb", "a\nb", "a b", "é", "\ud800", "\x7f", "ａ", 12, None, b"q"],
)
def test_check_id_refuses_anything_else_with_an_escaped_reason(value: object) -> None:
    assert not m.is_valid_id(value)
    with pytest.raises(InputError, match="quote_id must be 1 to 200 printable ASCII") as info:
        m.check_id("quote_id", value)
    assert "\x00" not in str(info.value) and "\ud800" not in str(info.value)


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_safe_text_leaves_nothing_unprintable(text: str) -> None:
    out = m.safe_text(text)
    assert out.isprintable() or all(ch.isprintable() or ch == " " for ch in out)
    assert "\x00" not in out
    out.encode("utf-8")  # no lone surrogate left: storable everywhere
    if text.isprintable():
        assert out == text


def test_safe_text_escapes() -> None:
    assert m.safe_text("a\x00b\x1b\ud800\u2028c\td") == "a\\x00b\\x1b\\ud800 c d"
