"""inventory-sync reconciliation: which known events explain a balance change (pure, no I/O)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import msgspec
import pytest

from intents_mm.domain.assets import BTC, EURE
from intents_mm.messages import (
    LiquidityAction,
    LiquidityActionStatus,
    LiquidityState,
    PendingDeposit,
    QuoteStatus,
    TradeResult,
)
from intents_mm.services import inventory_sync
from intents_mm.services.inventory_sync import Expectation, Reconciler, explain_change

B, E = BTC.token_id, EURE.token_id
S = 1_000_000_000
GRACE = 30 * S


def exp(key: str, deltas: dict[str, int], *, confirmed: bool = True, seen: int = 0) -> Expectation:
    return Expectation(key, key, deltas, seen, confirmed)


def trade(quote_hash: str, btc_in: int, eure_out: int, deadline_ns: int = 10**18) -> TradeResult:
    return TradeResult(
        command_id=f"c-{quote_hash}",
        quote_id=f"q-{quote_hash}",
        outcome="accepted",
        quote_hash=quote_hash,
        amount_in=btc_in,
        amount_out=eure_out,
        asset_in=B,
        asset_out=E,
        deadline_ns=deadline_ns,
    )


def status(quote_hash: str) -> QuoteStatus:
    return QuoteStatus(quote_hash=quote_hash, intent_hash="i", tx_hash="t", received_ts_ns=1)


def test_explain_prefers_confirmed_and_finds_subsets() -> None:
    a = exp("a", {B: 100, E: -5})
    b = exp("b", {B: -30})
    c = exp("c", {E: 7}, confirmed=False)
    assert explain_change({B: 100, E: -5}, [a, b, c]) == [a]
    assert explain_change({B: 70, E: -5}, [a, b, c]) == [a, b]
    assert explain_change({B: 70, E: 2}, [a, b, c]) == [a, b, c]
    assert explain_change({}, [a, b, c]) == []
    assert explain_change({B: 1}, [a, b, c]) is None


def _explain_exhaustively(delta: dict[str, int], expectations: list[Expectation], max_search: int) -> object:
    """The search as first written: every subset of the pool, largest first, best score kept."""
    target = {a: d for a, d in delta.items() if d}
    confirmed = sorted((e for e in expectations if e.confirmed), key=lambda e: e.seen_ns)
    candidates = sorted((e for e in expectations if not e.confirmed), key=lambda e: -e.seen_ns)
    pool = confirmed + candidates[: max_search - len(confirmed)]
    best: tuple[int, int] | None = None
    best_subset = None
    for size in range(len(pool), -1, -1):
        for subset in itertools.combinations(pool, size):
            n_confirmed = sum(1 for e in subset if e.confirmed)
            score = (n_confirmed, -(size - n_confirmed))
            if best is not None and score <= best:
                continue
            total: dict[str, int] = {}
            for e in subset:
                for a, d in e.deltas.items():
                    total[a] = total.get(a, 0) + d
            if {a: d for a, d in total.items() if d} == target:
                best, best_subset = score, list(subset)
    return best_subset


def test_explain_finds_the_same_subset_as_the_exhaustive_search() -> None:
    rng = random.Random(5)
    for _ in range(300):
        items = [
            exp(
                f"e{i}",
                {B: rng.choice([-2, -1, 1, 2, 3]), E: rng.choice([0, -1, 1])},
                confirmed=rng.random() < 0.4,
                seen=rng.randrange(50),
            )
            for i in range(rng.randrange(0, 9))
        ]
        delta = {B: rng.randrange(-4, 6), E: rng.randrange(-2, 3)}
        assert explain_change(delta, items, max_search=6) == _explain_exhaustively(delta, items, 6)


def test_nothing_changed_is_explained_at_once_among_thousands_of_candidates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = [exp(f"q{i}", {B: 1000 + i, E: -5000 - i}, confirmed=False, seen=i) for i in range(8000)]
    sums = 0
    real_sum = inventory_sync._sum

    def counting_sum(subset: Iterable[Expectation]) -> dict[str, int]:
        nonlocal sums
        sums += 1
        return real_sum(subset)

    monkeypatch.setattr(inventory_sync, "_sum", counting_sum)
    assert explain_change({}, items) == []
    assert sums == 1  # the empty subset, tried first (the exhaustive search tried all 2**12)
    sums = 0
    assert explain_change({B: 1000 + 7999, E: -5000 - 7999}, items) == [items[-1]]
    assert sums == 2  # the empty subset, then the newest candidate


def test_explain_with_many_confirmed_uses_time_prefixes() -> None:
    items = [exp(f"e{i}", {B: 1}, seen=i) for i in range(20)]
    got = explain_change({B: 15}, items, max_search=12)
    assert got is not None and [e.key for e in got] == [f"e{i}" for i in range(15)]
    assert explain_change({B: 21}, items, max_search=12) is None


def test_settlement_needs_status_to_be_confirmed_but_explains_as_candidate() -> None:
    r = Reconciler([B, E], GRACE)
    r.on_trade_result(trade("q1", 1000, 50), now_ns=0)
    # no quote_status yet: the balance did not move -> nothing unexplained, the candidate stays
    rec = r.reconcile({B: 0, E: 100}, {B: 0, E: 100}, now_ns=GRACE * 5)
    assert rec.unexplained == [] and "settle:q1" in r.expectations
    # the fill lands even before its quote_status: explained by the candidate
    rec = r.reconcile({B: 0, E: 100}, {B: 1000, E: 50}, now_ns=GRACE * 5)
    assert rec.unexplained == [] and rec.explained_by == ["settlement of quote q1"]
    # a late quote_status for a consumed settlement changes nothing
    r.on_quote_status(status("q1"), now_ns=GRACE * 6)
    assert r.expectations == {}


def test_status_before_result_and_missing_settlement_is_flagged_after_grace() -> None:
    r = Reconciler([B, E], GRACE)
    r.on_quote_status(status("q2"), now_ns=0)
    r.on_trade_result(trade("q2", 10, 20), now_ns=1)
    assert r.expectations["settle:q2"].confirmed
    rec = r.reconcile({B: 0, E: 100}, {B: 0, E: 100}, now_ns=2)  # not visible yet: fine
    assert rec.unexplained == []
    rec = r.reconcile({B: 0, E: 100}, {B: 0, E: 100}, now_ns=GRACE + 2)  # overdue
    assert {(c.asset, c.delta) for c in rec.unexplained} == {(B, -10), (E, 20)}
    assert "not seen" in rec.unexplained[0].detail
    assert r.expectations == {}


def test_unknown_change_is_unexplained_and_landed_events_are_netted() -> None:
    r = Reconciler([B, E], GRACE)
    r.on_liquidity_action(
        LiquidityAction(
            action_id="deposit:btc:mainnet:tx1",
            kind="deposit_credited",
            asset_id=B,
            amount=500,
            status="completed",
            detail={"tx_hash": "tx1"},
        ),
        now_ns=0,
    )
    rec = r.reconcile({B: 0, E: 0}, {B: 700, E: 0}, now_ns=GRACE + 1)
    assert [(c.asset, c.delta) for c in rec.unexplained] == [(B, 200)]
    assert "+500 of it expected" in rec.unexplained[0].detail
    rec = r.reconcile({B: 700, E: 0}, {B: 700, E: 3}, now_ns=GRACE + 2)
    assert [(c.asset, c.delta) for c in rec.unexplained] == [(E, 3)]


def test_pending_deposit_candidate_then_confirmation_is_not_counted_twice() -> None:
    r = Reconciler([B, E], GRACE)
    pending = PendingDeposit(tx_hash="tx9", chain="btc:mainnet", asset_id=B, amount=40_000, status="PENDING")
    r.on_liquidity_state(
        LiquidityState(
            deposit_addresses={}, pending_deposits=[pending], withdrawals=[], withdrawals_frozen=True
        ),
        now_ns=0,
    )
    rec = r.reconcile({B: 0, E: 0}, {B: 40_000, E: 0}, now_ns=1)  # credited before the bridge said so
    assert rec.unexplained == []
    r.on_liquidity_action(
        LiquidityAction(
            action_id="deposit:btc:mainnet:tx9",
            kind="deposit_credited",
            asset_id=B,
            amount=40_000,
            status="completed",
            detail={"tx_hash": "tx9"},
        ),
        now_ns=2,
    )
    assert r.expectations == {}
    rec = r.reconcile({B: 40_000, E: 0}, {B: 40_000, E: 0}, now_ns=GRACE * 3)
    assert rec.unexplained == []


def test_withdrawal_requested_candidate_confirmed_by_submission() -> None:
    r = Reconciler([B, E], GRACE)

    def action(status: LiquidityActionStatus, tx: str | None = None) -> LiquidityAction:
        return LiquidityAction(
            action_id="wd-1", kind="withdraw", asset_id=E, amount=5 * 10**18, status=status, near_tx_hash=tx
        )

    r.on_liquidity_action(action("requested"), now_ns=0)
    assert [e.confirmed for e in r.expectations.values()] == [False]
    r.on_liquidity_action(action("submitted", "H"), now_ns=1)
    assert [e.confirmed for e in r.expectations.values()] == [True]
    rec = r.reconcile({B: 0, E: 6 * 10**18}, {B: 0, E: 10**18}, now_ns=2)
    assert rec.unexplained == [] and rec.explained_by == ["withdrawal H"]
    # a refused request withdraws its candidate
    r.on_liquidity_action(
        LiquidityAction(action_id="wd-2", kind="withdraw", asset_id=E, amount=1, status="requested"), now_ns=3
    )
    r.on_liquidity_action(
        LiquidityAction(action_id="wd-2", kind="withdraw", asset_id=E, amount=1, status="failed"), now_ns=4
    )
    assert "withdraw:wd-2" not in r.expectations


def test_candidates_expire_and_other_assets_are_ignored() -> None:
    r = Reconciler([B, E], GRACE)
    r.on_trade_result(trade("q3", 5, 6, deadline_ns=10), now_ns=0)
    r.expect("x", "other asset", {"nep141:wrap.near": 5}, 0, confirmed=True)
    assert set(r.expectations) == {"settle:q3"}
    r.reconcile({B: 0, E: 0}, {B: 0, E: 0}, now_ns=10 + GRACE + 1)
    assert r.expectations == {}


def test_young_confirmed_event_that_fits_is_netted_without_a_second_flag() -> None:
    r = Reconciler([B, E], GRACE)
    r.on_quote_status(status("q4"), now_ns=0)
    r.on_trade_result(trade("q4", 1000, 50), now_ns=0)
    # the fill landed together with an unknown +7 BTC units: only the +7 is unexplained
    rec = r.reconcile({B: 0, E: 100}, {B: 1007, E: 50}, now_ns=1)
    assert [(c.asset, c.delta) for c in rec.unexplained] == [(B, 7)]
    assert r.expectations == {}
    rec = r.reconcile({B: 1007, E: 50}, {B: 1007, E: 50}, now_ns=GRACE * 2)
    assert rec.unexplained == []


def test_confirmed_changes_from_before_the_baseline_are_part_of_it() -> None:
    r = Reconciler([B, E], GRACE)
    r.on_trade_result(trade("q5", 10, 20), now_ns=50)
    r.forget_before(100)  # the first read started at 100
    r.on_quote_status(status("q5"), now_ns=60)  # replayed late: it settled before the baseline
    assert r.expectations == {}
    r.on_liquidity_action(
        LiquidityAction(
            action_id="d", kind="deposit_credited", asset_id=B, amount=5, status="completed", detail={}
        ),
        now_ns=90,
    )
    assert r.expectations == {}
    rec = r.reconcile({B: 0, E: 0}, {B: 0, E: 0}, now_ns=GRACE * 9)
    assert rec.unexplained == []


def test_live_signed_quotes_are_candidates_and_shown_settlements_are_listed_once() -> None:
    r = Reconciler([B, E], GRACE)
    timeout = msgspec.structs.replace(trade("q7", 1000, 50), outcome="error")  # reply timed out
    refused = msgspec.structs.replace(trade("q8", 2000, 60), outcome="rejected")
    unsigned = msgspec.structs.replace(trade("q9", 3000, 70), outcome="error", quote_hash=None)
    for result in (timeout, refused, unsigned):
        r.on_trade_result(result, now_ns=0)
    assert set(r.expectations) == {"settle:q7"}
    r.on_quote_status(status("q7"), now_ns=1)
    # a read whose balances do not show it yet lists nothing
    r.reconcile({B: 0, E: 100}, {B: 0, E: 100}, now_ns=2)
    assert r.take_shown() == ([], [])
    # the read that shows it lists it, once
    rec = r.reconcile({B: 0, E: 100}, {B: 1000, E: 50}, now_ns=3)
    assert rec.unexplained == [] and r.take_shown() == (["q7"], [])
    assert r.take_shown() == ([], [])


def test_a_settlement_matched_before_its_status_is_listed_when_the_status_comes() -> None:
    r = Reconciler([B, E], GRACE)
    r.on_trade_result(trade("q1", 1000, 50), now_ns=0)
    r.reconcile({B: 0, E: 100}, {B: 1000, E: 50}, now_ns=1)  # balances first: matched as a candidate
    assert r.take_shown() == ([], [])  # unconfirmed: not listed (it could be a coincidence)
    r.on_quote_status(status("q1"), now_ns=2)
    assert r.take_shown() == (["q1"], [])


def test_withdrawal_burn_is_listed_and_overdue_confirmations_are_not() -> None:
    r = Reconciler([B, E], GRACE)
    submitted = LiquidityAction(action_id="w1", kind="withdraw", asset_id=E, amount=30, status="submitted")
    r.on_liquidity_action(submitted, now_ns=0)
    rec = r.reconcile({B: 0, E: 100}, {B: 0, E: 70}, now_ns=1)
    assert rec.unexplained == [] and r.take_shown() == ([], ["w1"])
    # a confirmed settlement the balances never showed is taken as landed once overdue: not listed
    r.on_trade_result(trade("q2", 10, 20), now_ns=0)
    r.on_quote_status(status("q2"), now_ns=0)
    r.reconcile({B: 0, E: 70}, {B: 5, E: 70}, now_ns=GRACE * 2)
    assert r.take_shown() == ([], [])
