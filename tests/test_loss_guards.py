"""Loss guards on the right figure, and funding that never looks like PnL (pure, hand-computed).

Book: baseline 0.01 BTC + 5000 EURe at 60000 EURe/BTC (value 5600 EURe); daily limit 25 EURe,
drawdown limit 50 EURe. Every expected figure below is worked out by hand in the comments.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from intents_mm import messages as m
from intents_mm.config import load_config
from intents_mm.domain.assets import BTC, EURE, AssetRegistry
from intents_mm.domain.pnl import compute_pnl
from intents_mm.domain.risk import NS_PER_DAY, LossGuard
from intents_mm.errors import ConfigError
from intents_mm.services.history_writer import (
    Baseline,
    FillTotals,
    Flow,
    FundingLedger,
    PricePoint,
    portfolio_metrics,
)

PAIR = AssetRegistry.default().active_pair
B, E = BTC.token_id, EURE.token_id
S = 1_000_000_000
EURE_1 = 10**18
DAY5 = 5 * NS_PER_DAY
B0, E0, P0 = 1_000_000, 5000 * EURE_1, Decimal(60000)


def figures(base_t: int, quote_t: int, price_t: str) -> tuple[Decimal, Decimal, Decimal]:
    """(trade PnL, mark-to-market PnL, portfolio value) against the baseline."""
    pnl = compute_pnl(
        PAIR, base0=B0, quote0=E0, price0=P0, base_t=base_t, quote_t=quote_t, price_t=Decimal(price_t)
    )
    return pnl.trade_pnl_eure, pnl.mark_to_market_pnl_eure, pnl.portfolio_value_eure


def guard() -> LossGuard:
    return LossGuard(daily_limit_eure=Decimal(25), drawdown_limit_eure=Decimal(50))


def test_informed_sellers_trip_the_mark_to_market_guard() -> None:
    # Informed sellers sell us 0.05 BTC at 59850 (2992.5 EURe); then the mid falls to 58000.
    base_t, quote_t = B0 + 5_000_000, E0 - 2_992_500_000_000_000_000_000
    trade, mtm, value = figures(base_t, quote_t, "58000")
    assert trade == Decimal("7.5")  # 0.05*60000 - 2992.5: the old figure shows a profit
    assert mtm == Decimal("-92.5")  # 0.05*58000 - 2992.5
    assert value == Decimal("5487.5")  # 0.06*58000 + 2007.5
    old = guard()
    assert old.observe(trade, DAY5) is None  # watching trade PnL: silent (the bug in issue 13)
    g = guard()
    _, at_fill, _ = figures(base_t, quote_t, "59900")
    assert at_fill == Decimal("2.5")  # 0.05*59900 - 2992.5
    assert g.observe(at_fill, DAY5) is None
    assert g.observe(mtm, DAY5 + 60 * S) == "daily_loss_limit: -92.5 EURe mark-to-market today (limit -25)"
    assert g.drawdown() == Decimal("95.0")  # peak 2.5 -> -92.5
    assert g.observe(Decimal(100), DAY5 + 61 * S) is not None  # stays tripped until reset


def test_fair_trade_after_a_price_move_does_not_trip() -> None:
    # The mid moves +5 % (60000 -> 63000); we buy 0.01 BTC at exactly 63000 (630 EURe): zero edge.
    trade, mtm, value = figures(B0 + 1_000_000, E0 - 630 * EURE_1, "63000")
    assert trade == Decimal(-30)  # 0.01*60000 - 630: trips a trade-PnL guard at 25
    assert mtm == Decimal(0)  # 0.01*63000 - 630
    assert value == Decimal(5630)  # 0.02*63000 + 4370: the held 0.01 BTC gained 30
    assert guard().observe(trade, DAY5) is not None  # the old reading paused quoting
    g = guard()
    assert g.observe(mtm, DAY5, value) is None
    assert (g.daily_pnl(), g.drawdown(), g.portfolio_drop()) == (Decimal(0), Decimal(0), Decimal(0))


def test_drawdown_day_roll_and_reset() -> None:
    g = guard()
    assert g.observe(Decimal(40), DAY5) is None  # peak 40
    assert g.observe(Decimal(20), DAY5 + S) is None  # +20 today (day starts at 0), 20 below peak
    assert g.daily_pnl() == Decimal(20) and g.drawdown() == Decimal(20)
    assert g.observe(Decimal(5), DAY5 + NS_PER_DAY) is None  # new UTC day starts at 5; drawdown 35
    assert g.daily_pnl() == Decimal(0)
    reason = g.observe(Decimal(-10), DAY5 + NS_PER_DAY + S)  # daily -15; drawdown 50 from peak 40
    assert reason == "drawdown_limit: 50 EURe mark-to-market below peak (limit 50)"
    g.reset(Decimal(-10))
    assert g.tripped is None and g.drawdown() == Decimal(0) and g.daily_pnl() == Decimal(0)
    assert g.observe(Decimal(-34), DAY5 + NS_PER_DAY + 2 * S) is None  # -24 today
    assert g.observe(Decimal(-35), DAY5 + NS_PER_DAY + 3 * S) == (
        "daily_loss_limit: -25 EURe mark-to-market today (limit -25)"
    )


def test_portfolio_drop_limit_is_optional() -> None:
    # No trades; the mid falls 60000 -> 56000: mark-to-market 0, portfolio value 5600 -> 5560.
    _, mtm, value = figures(B0, E0, "56000")
    assert (mtm, value) == (Decimal(0), Decimal(5560))
    off = guard()
    assert off.observe(Decimal(0), DAY5, Decimal(5600)) is None
    assert off.observe(mtm, DAY5 + S, value) is None  # 0 = off
    on = LossGuard(Decimal(25), Decimal(50), portfolio_drop_limit_eure=Decimal(40))
    assert on.observe(Decimal(0), DAY5, Decimal(5600)) is None
    assert on.observe(mtm, DAY5 + S, Decimal("5560.000000000000000001")) is None
    assert on.observe(mtm, DAY5 + 2 * S, value) == (
        "portfolio_drop_limit: portfolio value 40 EURe below peak (limit 40)"
    )
    on.reset(mtm, value)
    assert on.tripped is None and on.portfolio_drop() == Decimal(0)


# ------------------------------------------------------------------ funding counted at its snapshot


def snap(btc: int, eure: int, read_ts: int) -> m.InventorySnapshot:
    return m.InventorySnapshot(
        account_id="mm.near",
        credited={B: btc, E: eure},
        pending_deposits={},
        inflight_withdrawals={},
        block_height=read_ts // S,
        read_ts_ns=read_ts,
        stale=False,
    )


def withdraw(status: m.LiquidityActionStatus, amount: int = 100 * EURE_1, **kw: object) -> m.LiquidityAction:
    return m.LiquidityAction(
        action_id="w-1",
        kind="withdraw",
        asset_id=E,
        amount=amount,
        status=status,
        **kw,  # type: ignore[arg-type]
    )


def ledger() -> FundingLedger:
    return FundingLedger([B, E], grace_ns=30 * S)


def test_withdrawal_counted_at_the_snapshot_that_shows_the_burn() -> None:
    f = ledger()
    assert f.on_snapshot(snap(B0, E0, 1 * S), 1 * S) == []  # the first one: nothing to compare
    f.on_action(withdraw("requested"), 2 * S)
    f.on_action(withdraw("submitted", near_tx_hash="TX"), 3 * S)
    # read at a block before the burn (finality lag): nothing moved, nothing counted
    assert f.on_snapshot(snap(B0, E0, 4 * S), 4 * S) == []
    assert f.net_flows(0) == {}
    # the burn shows: counted at this snapshot, exactly
    assert f.on_snapshot(snap(B0, E0 - 100 * EURE_1, 9 * S), 9 * S) == [Flow(9 * S, E, -100 * EURE_1)]
    assert f.net_flows(0) == {E: -100 * EURE_1}
    assert f.net_flows(9 * S) == {}  # a baseline read at that snapshot already holds it
    # the bridge's later steps change nothing
    f.on_action(withdraw("pending", near_tx_hash="TX"), 60 * S)
    f.on_action(withdraw("completed", near_tx_hash="TX"), 600 * S)
    assert f.on_snapshot(snap(B0, E0 - 100 * EURE_1, 601 * S), 601 * S) == []
    assert f.net_flows(0) == {E: -100 * EURE_1} and f.pending() == 0


def test_burn_seen_before_submitted_and_with_a_fill_in_the_same_change() -> None:
    f = ledger()
    f.on_snapshot(snap(B0, E0, 1 * S), 1 * S)
    f.on_action(withdraw("requested"), 2 * S)  # a candidate: the burn may land before "submitted"
    fill = m.TradeResult(
        command_id="c1",
        quote_id="q1",
        outcome="accepted",
        quote_hash="QH1",
        deadline_ns=70 * S,
        amount_in=100_000,
        amount_out=59_700_000_000_000_000_000,
        asset_in=B,
        asset_out=E,
    )
    f.reconciler.on_trade_result(fill, 2 * S)
    f.reconciler.on_quote_status(
        m.QuoteStatus(quote_hash="QH1", intent_hash="I1", tx_hash="T1", received_ts_ns=3 * S), 3 * S
    )
    # one read shows both: +0.001 BTC, -59.7 - 100 EURe
    after = snap(B0 + 100_000, E0 - 159_700_000_000_000_000_000, 5 * S)
    assert f.on_snapshot(after, 5 * S) == [Flow(5 * S, E, -100 * EURE_1)]
    f.on_action(withdraw("submitted", near_tx_hash="TX"), 6 * S)  # already counted: ignored
    assert f.on_snapshot(snap(B0 + 100_000, E0 - 159_700_000_000_000_000_000, 7 * S), 7 * S) == []
    assert f.net_flows(0) == {E: -100 * EURE_1}


def test_deposit_counted_when_credited_even_before_the_bridge_says_so() -> None:
    f = ledger()
    f.on_snapshot(snap(B0, E0, 1 * S), 1 * S)
    pending = m.PendingDeposit(
        tx_hash="0xdep", chain="eth:100", asset_id=E, amount=200 * EURE_1, status="PENDING"
    )
    state = m.LiquidityState(
        deposit_addresses={}, pending_deposits=[pending], withdrawals=[], withdrawals_frozen=True
    )
    f.reconciler.on_liquidity_state(state, 2 * S)
    assert f.on_snapshot(snap(B0, E0 + 200 * EURE_1, 3 * S), 3 * S) == [Flow(3 * S, E, 200 * EURE_1)]
    credited = m.LiquidityAction(
        action_id="dep",
        kind="deposit_credited",
        asset_id=E,
        amount=200 * EURE_1,
        status="completed",
        detail={"tx_hash": "0xdep"},
    )
    f.on_action(credited, 4 * S)  # the bridge's word arrives later: not counted twice
    assert f.on_snapshot(snap(B0, E0 + 200 * EURE_1, 5 * S), 5 * S) == []
    assert f.net_flows(0) == {E: 200 * EURE_1}


def test_refused_withdrawal_and_state_round_trip() -> None:
    f = ledger()
    f.on_snapshot(snap(B0, E0, 1 * S), 1 * S)
    f.on_action(withdraw("requested"), 2 * S)
    f.on_action(withdraw("failed", detail={"error": "no burn sent"}), 3 * S)  # forgotten
    assert f.pending() == 0
    f.on_action(
        m.LiquidityAction(action_id="w-2", kind="withdraw", asset_id=B, amount=5000, status="submitted"),
        4 * S,
    )
    assert f.on_snapshot(snap(B0 - 5000, E0, 5 * S), 5 * S) == [Flow(5 * S, B, -5000)]
    again = ledger()
    assert again.load_state(f.to_state()) is True
    assert again.landed == f.landed
    assert again.load_state(None) is False
    # a restored flow is never fed again
    again.on_action(
        m.LiquidityAction(action_id="w-2", kind="withdraw", asset_id=B, amount=5000, status="completed"),
        9 * S,
    )
    assert again.pending() == 0


def test_no_figure_moves_on_deposit_or_withdrawal() -> None:
    """portfolio_metrics on the snapshots around a 200 EURe deposit and a 100 EURe withdrawal, with the
    flows counted by the ledger: every flow-adjusted figure stays put while the raw ones jump."""
    f = ledger()
    base = Baseline(command_ts_ns=2 * S, snapshot_ts_ns=1 * S, inventory={B: B0, E: E0}, price=P0)
    price = PricePoint(1 * S, P0, "ok", 1 * S)
    books = [
        (snap(B0, E0, 1 * S), None),
        (snap(B0, E0 + 200 * EURE_1, 10 * S), None),  # the credit lands
        (snap(B0, E0 + 200 * EURE_1, 20 * S), withdraw("submitted", near_tx_hash="TX")),
        (snap(B0, E0 + 100 * EURE_1, 30 * S), None),  # the burn lands
    ]
    f.on_action(
        m.LiquidityAction(
            action_id="d", kind="deposit_credited", asset_id=E, amount=200 * EURE_1, status="completed"
        ),
        5 * S,
    )
    seen = []
    for book, action in books:
        f.on_snapshot(book, book.read_ts_ns)
        pm = portfolio_metrics(
            PAIR,
            now_ns=book.read_ts_ns,
            stale_after_ns=10**18,
            baseline=base,
            no_baseline_reason=None,
            current=book,
            latest_price=price,
            latest_mid=price,
            net_flows=f.net_flows(base.snapshot_ts_ns),
            fills=FillTotals(),
        )
        seen.append(pm)
        if action is not None:
            f.on_action(action, book.read_ts_ns + 1)
    assert [pm.mark_to_market_pnl_eure for pm in seen] == [0, 200, 200, 100]
    assert [pm.flow_adjusted_mark_to_market_pnl_eure for pm in seen] == [0, 0, 0, 0]
    assert [pm.flow_adjusted_trade_pnl_eure for pm in seen] == [0, 0, 0, 0]
    assert [pm.flow_adjusted_portfolio_value_eure for pm in seen] == [5600] * 4
    assert [pm.portfolio_value_eure for pm in seen] == [5600, 5800, 5800, 5700]
    assert seen[-1].net_deposits == {E: 100 * EURE_1}
    g = LossGuard(Decimal(0), Decimal(0), Decimal("0.000000000000000001"))  # the tightest limits
    for i, pm in enumerate(seen):
        assert (
            g.observe(
                pm.flow_adjusted_mark_to_market_pnl_eure, DAY5 + i, pm.flow_adjusted_portfolio_value_eure
            )
            is None
        )


def test_portfolio_drop_variable_empty_is_off_and_bad_values_are_named() -> None:
    assert load_config({}, dotenv=None)["STRATEGY_MAX_PORTFOLIO_DROP_EURE"] == Decimal(0)
    assert (
        load_config({"STRATEGY_MAX_PORTFOLIO_DROP_EURE": ""}, dotenv=None)["STRATEGY_MAX_PORTFOLIO_DROP_EURE"]
        == 0
    )
    assert load_config({"STRATEGY_MAX_PORTFOLIO_DROP_EURE": " 40.5 "}, dotenv=None)[
        "STRATEGY_MAX_PORTFOLIO_DROP_EURE"
    ] == Decimal("40.5")
    with pytest.raises(ConfigError) as bad:
        load_config({"STRATEGY_MAX_PORTFOLIO_DROP_EURE": "-1"}, dotenv=None)
    assert bad.value.problems == ["STRATEGY_MAX_PORTFOLIO_DROP_EURE must be >= 0, got -1"]
    with pytest.raises(ConfigError) as bad:
        load_config({"STRATEGY_MAX_PORTFOLIO_DROP_EURE": "lots"}, dotenv=None)
    assert bad.value.problems == ["STRATEGY_MAX_PORTFOLIO_DROP_EURE must be a decimal number, got 'lots'"]
