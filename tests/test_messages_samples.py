"""Sample payloads for every subject, shared by the message and store tests (no tests here).

Values are chosen to exercise the edges: amounts at the u128/i128 limits, prices with 18 decimals,
optional fields both set and unset, nested lists and free-form JSON.
"""

from __future__ import annotations

from decimal import Decimal

from intents_mm import messages as m
from intents_mm.clock import ManualClock

BTC = "nep141:btc.omft.near"
EURE = "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"
T0 = 1_760_000_000_000_000_000
U128_MAX = 2**128 - 1
I128_MIN = -(2**127)
I128_MAX = 2**127 - 1


def sample_payloads() -> dict[str, m.Payload]:
    """One payload per subject, keyed by subject."""
    return {
        m.SWAP_REQUEST: m.SwapRequest(
            quote_id="q-1",
            asset_in=BTC,
            asset_out=EURE,
            exact_amount_in=U128_MAX,
            min_deadline_ms=60_000,
            partner_id="1click",
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            received_ts_ns=T0,
            relay_deadline_ns=T0 + 3_000_000_000,
        ),
        m.QUOTE_STATUS: m.QuoteStatus(
            quote_hash="7Qj2cJ2gDsMeXGGcpvwqyPbNNs4UPpt9p3F2u7ufPZVJ",
            intent_hash="7Qj2cJ2gDsMeXGGcpvwqyPbNNs4UPpt9p3F2u7ufPZVJ",
            tx_hash="9xK5e8Z3Zj3cNpTx8yXn7WqzVQqeWZ4gV6E7o1m2n3p4",
            received_ts_ns=T0 + 5,
            seq=17,
        ),
        m.REFERENCE_PRICE: m.ReferencePrice(
            pair="BTC/EUR",
            mid=Decimal("95123.123456789012345678"),
            quality="degraded",
            sources=[
                m.SourceQuote(
                    source="kraken",
                    bid=Decimal("95120.1"),
                    ask=Decimal("95126.1"),
                    mid=Decimal("95123.1"),
                    exchange_ts_ns=T0 - 1_000_000,
                    received_ts_ns=T0,
                    status="ok",
                ),
                m.SourceQuote(source="bitstamp", received_ts_ns=T0, status="error", reason="timeout"),
            ],
            fresh_sources=1,
            quorum=2,
            volatility_bps_per_sqrt_s=Decimal("1.25"),
            jump_detected=True,
            computed_ts_ns=T0 + 10,
        ),
        m.INVENTORY_SNAPSHOT: m.InventorySnapshot(
            account_id="mm.near",
            credited={BTC: 12_345_678, EURE: U128_MAX},
            pending_deposits={BTC: 1000},
            inflight_withdrawals={},
            block_height=150_000_000,
            read_ts_ns=T0,
            stale=False,
            unexplained_changes=[m.UnexplainedChange(asset=EURE, delta=I128_MIN, detail="unmatched debit")],
        ),
        m.LIQUIDITY_ACTION: m.LiquidityAction(
            action_id="a-1",
            kind="withdraw",
            asset_id=EURE,
            amount=5 * 10**18,
            destination="0xabc",
            chain="eth:100",
            status="submitted",
            near_tx_hash="Hx1",
            detail={"fee": "1000", "nested": {"ok": True, "n": 2**100}},
            actor="alice",
        ),
        m.LIQUIDITY_STATE: m.LiquidityState(
            deposit_addresses={"btc:mainnet": "bc1qxyz", "eth:100": "0xdef"},
            pending_deposits=[
                m.PendingDeposit(tx_hash="t1", chain="btc:mainnet", asset_id=BTC, amount=10, status="PENDING")
            ],
            withdrawals=[
                m.TrackedWithdrawal(
                    withdrawal_hash="w1", asset_id=BTC, chain="btc:mainnet", amount=1000, status="PENDING"
                )
            ],
            withdrawals_frozen=True,
        ),
        m.TRADE_DECISION: m.TradeDecision(
            decision_id="d-1",
            quote_id="q-1",
            outcome="quote",
            reason="ok",
            armed=True,
            asset_in=BTC,
            asset_out=EURE,
            exact_amount_in=1000,
            amount_in=1000,
            amount_out=950_000_000_000_000_000,
            reference_mid=Decimal("95123.12"),
            price_terms={"base_spread_bps": Decimal("12.5"), "skew_bps": Decimal("-3.25")},
            limit_checks=[
                m.LimitCheck(name="max_notional_eure", passed=True, value=Decimal("0.95"), limit=Decimal("5"))
            ],
            inputs={"volatility": "1.25", "fresh_sources": 3, "flags": ["a", "b"], "none": None},
            deadline_ms=70_000,
        ),
        m.EXECUTE_TRADE: m.ExecuteTrade(
            command_id="c-1",
            decision_id="d-1",
            quote_id="q-1",
            asset_in=BTC,
            asset_out=EURE,
            amount_in=1000,
            amount_out=U128_MAX,
            exact_side="in",
            min_deadline_ms=60_000,
            relay_deadline_ns=T0 + 3_000_000_000,
            reference_mid=Decimal("95123.12"),
        ),
        m.TRADE_RESULT: m.TradeResult(
            command_id="c-1",
            quote_id="q-1",
            outcome="accepted",
            relay_reply="OK",
            quote_hash="7Qj2cJ2gDsMeXGGcpvwqyPbNNs4UPpt9p3F2u7ufPZVJ",
            nonce_b64="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            deadline_ns=T0 + 70_000_000_000,
            latency_us=850,
            amount_in=1000,
            amount_out=U128_MAX,
            asset_in=BTC,
            asset_out=EURE,
        ),
        m.OPERATOR_ACTION: m.OperatorAction(
            service="strategy-engine",
            action="limits",
            params={"max_notional_eure": 5},
            actor="operator",
            remote="127.0.0.1",
            result="refused",
            detail="withdrawals are frozen",
        ),
        m.DEAD_LETTER: m.DeadLetter.of(
            "strategy-engine-demand", m.SWAP_REQUEST, "q-9", 1, "undecodable: bad JSON", b"{\x00oops\xff"
        ),
        m.PORTFOLIO_METRICS: m.PortfolioMetrics(
            computed_ts_ns=T0 + 99,
            baseline_ts_ns=T0,
            baseline_price=Decimal("95000"),
            current_price=Decimal("95123.12"),
            price_stale=False,
            baseline_inventory={BTC: 100_000, EURE: 10**20},
            current_inventory={BTC: 99_000, EURE: U128_MAX},
            baseline_value_eure=Decimal("195"),
            portfolio_value_eure=Decimal("195.5"),
            trade_pnl_eure=Decimal("0.37"),
            mark_to_market_pnl_eure=Decimal("0.5"),
            price_move_pnl_eure=Decimal("0.13"),
            flow_adjusted_trade_pnl_eure=Decimal("-0.000000000000000001"),
            net_deposits={BTC: I128_MAX, EURE: -(10**18)},
            fills=3,
            volume_eure=Decimal("2.85"),
            avg_edge_bps=Decimal("11.9"),
        ),
    }


def sample_envelopes(start_ns: int = T0, prefix: str = "m") -> list[m.Envelope[m.Payload]]:
    """One envelope per subject with deterministic msg_ids ``<prefix>-<n>`` and increasing ts_ns."""
    clock = ManualClock(start_ns)
    out: list[m.Envelope[m.Payload]] = []
    for n, (subject, payload) in enumerate(sample_payloads().items()):
        clock.advance(1_000)
        out.append(m.new_envelope(subject, payload, clock=clock, msg_id=f"{prefix}-{n}"))
    return out
