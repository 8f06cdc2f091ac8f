"""Pricing, limits, reservations and PnL with exact integer expectations."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from intents_mm.domain.assets import BTC, BTC_EURE, EURE
from intents_mm.domain.pnl import compute_pnl, markout_bps
from intents_mm.domain.pricing import (
    Inventory,
    PricedQuote,
    PricingParams,
    QuoteRequest,
    price_quote,
    realised_edge_bps,
)
from intents_mm.domain.risk import (
    Limits,
    LossGuard,
    Reservation,
    ReservationBook,
    check_limits,
    first_failure,
)

FLAT = PricingParams(
    base_edge_bps=Decimal(20),
    vol_multiplier=Decimal(0),
    option_multiplier=Decimal(0),
    skew_bps=Decimal(0),
    size_bps_per_eure=Decimal(0),
    fee_in_price=False,
)
NEUTRAL = Inventory(base_units=50_000_000, min_base_units=0, max_base_units=100_000_000)


def req(
    asset_in: str, asset_out: str, *, exact_in: int | None = None, exact_out: int | None = None
) -> QuoteRequest:
    return QuoteRequest("q1", asset_in, asset_out, exact_in, exact_out, 60_000)


def quote(
    r: QuoteRequest, params: PricingParams = FLAT, inv: Inventory = NEUTRAL, mid: str = "60000", fee: int = 0
) -> PricedQuote:
    return price_quote(
        BTC_EURE,
        r,
        reference_mid_fiat=Decimal(mid),
        sigma_bps_per_sqrt_s=Decimal(2),
        deadline_ms=70_000,
        inventory=inv,
        fee_pips=fee,
        params=params,
    )


def test_buy_exact_in_floors_what_we_give() -> None:
    # user gives 10_000 sats (0.0001 BTC) at bid 60000*(1-0.002)=59880 EURe/BTC -> 5.988 EURe exactly
    q = quote(req(BTC.token_id, EURE.token_id, exact_in=10_000))
    assert q.side == "buy"
    assert q.amount_in == 10_000
    assert q.amount_out == 5_988_000_000_000_000_000
    # 3 sats -> 0.0017964 EURe exactly (no rounding needed)
    q = quote(req(BTC.token_id, EURE.token_id, exact_in=3))
    assert q.amount_out == 1_796_400_000_000_000
    # a price that does not divide: mid 60000.01 -> bid 59880.00998 EURe/BTC; 1 sat -> floor
    q = quote(req(BTC.token_id, EURE.token_id, exact_in=1), mid="60000.01")
    exact = Fraction("60000.01") * Fraction(998, 1000) * 10**18 / 10**8
    assert q.amount_out == int(exact) and Fraction(q.amount_out) <= exact


def test_buy_exact_out_ceils_what_we_ask() -> None:
    # user wants 5 EURe from us: BTC in = ceil(5 / 59880 * 1e8) = ceil(8350.0334...) = 8351 sats
    q = quote(req(BTC.token_id, EURE.token_id, exact_out=5 * 10**18))
    assert q.amount_out == 5 * 10**18
    assert q.amount_in == 8351


def test_sell_exact_in_and_exact_out() -> None:
    # ask = 60000*1.002 = 60120 EURe/BTC
    q = quote(req(EURE.token_id, BTC.token_id, exact_in=5 * 10**18))  # user gives 5 EURe
    assert q.side == "sell"
    assert q.amount_out == 8316  # floor(5/60120*1e8) = floor(8316.699...)
    q = quote(req(EURE.token_id, BTC.token_id, exact_out=10_000))  # user wants 0.0001 BTC
    assert q.amount_in == 6_012_000_000_000_000_000  # 6.012 EURe, exact
    q = quote(req(EURE.token_id, BTC.token_id, exact_out=1), mid="60000.01")
    exact = Fraction("60000.01") * Fraction(1002, 1000) * 10**18 / 10**8
    assert q.amount_in >= exact and q.amount_in - exact < 1


def test_terms_sum_to_edge_and_skew_direction() -> None:
    params = PricingParams(
        base_edge_bps=Decimal(10),
        vol_multiplier=Decimal(1),
        option_multiplier=Decimal("0.4"),
        skew_bps=Decimal(30),
        size_bps_per_eure=Decimal("0.5"),
        reaction_ms=4000,
        fee_in_price=True,
    )
    long_inv = Inventory(base_units=100_000_000, min_base_units=0, max_base_units=100_000_000)
    buy = quote(req(BTC.token_id, EURE.token_id, exact_in=10_000), params, long_inv, fee=100)
    sell = quote(req(EURE.token_id, BTC.token_id, exact_out=10_000), params, long_inv, fee=100)
    assert buy.terms_bps["volatility"] == Decimal("4.000000")  # 1 * 2 * sqrt(4)
    assert buy.terms_bps["protocol_fee"] == Decimal("1.000000")  # 100 pips = 1 bps
    assert buy.terms_bps["size"] == Decimal("3.000000")  # 0.5 bps/EURe * 6 EURe
    assert sum(buy.terms_bps.values()) == buy.edge_bps
    # long inventory: bid lower (positive skew on buy), offer lower (negative skew on sell)
    assert buy.terms_bps["inventory_skew"] > 0
    assert sell.terms_bps["inventory_skew"] < 0
    assert realised_edge_bps(buy) >= buy.edge_bps - Decimal("0.01")


def test_limits_decline_with_reason() -> None:
    book = ReservationBook()
    credited = {BTC.token_id: 100_000, EURE.token_id: 10 * 10**18}
    q = quote(req(BTC.token_id, EURE.token_id, exact_in=20_000))  # ~12 EURe notional
    checks = check_limits(BTC_EURE, q, min_deadline_ms=60_000, credited=credited, book=book, limits=Limits())
    assert first_failure(checks) == "max_notional_eure"
    q = quote(req(BTC.token_id, EURE.token_id, exact_in=5_000))
    limits = Limits(max_notional_eure=Decimal(100))
    ok = check_limits(BTC_EURE, q, min_deadline_ms=60_000, credited=credited, book=book, limits=limits)
    assert first_failure(ok) is None
    too_long = check_limits(BTC_EURE, q, min_deadline_ms=120_000, credited=credited, book=book, limits=limits)
    assert first_failure(too_long) == "min_deadline_ms"
    poor = {BTC.token_id: 0, EURE.token_id: 10**18}
    short = check_limits(BTC_EURE, q, min_deadline_ms=60_000, credited=poor, book=book, limits=limits)
    assert first_failure(short) == "inventory_available"


def test_reservations_block_overcommit_and_release() -> None:
    book = ReservationBook()
    credited = {BTC.token_id: 0, EURE.token_id: 10 * 10**18}
    limits = Limits(max_notional_eure=Decimal(100))
    q = quote(req(BTC.token_id, EURE.token_id, exact_out=4 * 10**18))
    for i in range(2):
        assert (
            first_failure(
                check_limits(BTC_EURE, q, min_deadline_ms=1, credited=credited, book=book, limits=limits)
            )
            is None
        )
        book.reserve(
            Reservation(f"c{i}", "q", BTC.token_id, q.amount_in, EURE.token_id, q.amount_out, Decimal(4), 100)
        )
    third = check_limits(BTC_EURE, q, min_deadline_ms=1, credited=credited, book=book, limits=limits)
    assert first_failure(third) == "inventory_available"
    assert book.expire(now_ns=101) and not book.live
    book.reserve(
        Reservation("c9", "q", BTC.token_id, q.amount_in, EURE.token_id, q.amount_out, Decimal(4), 100)
    )
    assert book.bind("c9", "h9", deadline_ns=120) is not None  # signed: expiry is the signed deadline
    assert book.fill("h9", now_ns=50) is not None
    assert book.expire(now_ns=1000) == []  # filled ones wait for a snapshot that shows the settlement
    assert book.reserved_out(EURE.token_id) == q.amount_out and book.outstanding_eure() == 0
    assert book.confirm(["other"]) == []
    assert [r.command_id for r in book.confirm(["h9"])] == ["c9"]
    assert book.reserved_out(EURE.token_id) == 0
    # a confirmation that arrives before the reservation learns its hash still releases it
    book.reserve(Reservation("c10", "q", BTC.token_id, 1, EURE.token_id, 2, Decimal(1), 100))
    assert book.confirm(["h10"]) == []
    assert book.bind("c10", "h10", deadline_ns=120) is None and not book.live
    # an unfilled reservation past its deadline waits for balances read after deadline + grace
    book.reserve(Reservation("c11", "q", BTC.token_id, 1, EURE.token_id, 2, Decimal(1), 100))
    assert book.expire(now_ns=1000, grace_ns=10, seen_until_ns=105) == []
    assert [r.command_id for r in book.expire(now_ns=1000, grace_ns=10, seen_until_ns=111)] == ["c11"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.booleans(), st.integers(min_value=1, max_value=10**6)),
        min_size=1,
        max_size=30,
    ),
    st.integers(min_value=0, max_value=10**7),
    st.integers(min_value=0, max_value=50 * 10**18),
)
def test_property_reservations_never_exceed_inventory_and_limits_hold(
    requests: list[tuple[bool, bool, int]], btc: int, eure: int
) -> None:
    credited = {BTC.token_id: btc, EURE.token_id: eure}
    book = ReservationBook()
    limits = Limits(max_notional_eure=Decimal(5), max_outstanding_eure=Decimal(40), max_base_units=10**9)
    for i, (buy, exact_in, size) in enumerate(requests):
        if buy:
            r = (
                req(BTC.token_id, EURE.token_id, exact_in=size)
                if exact_in
                else req(BTC.token_id, EURE.token_id, exact_out=size * 10**12)
            )
        else:
            r = (
                req(EURE.token_id, BTC.token_id, exact_in=size * 10**12)
                if exact_in
                else req(EURE.token_id, BTC.token_id, exact_out=size)
            )
        q = quote(r)
        checks = check_limits(
            BTC_EURE, q, min_deadline_ms=60_000, credited=credited, book=book, limits=limits
        )
        if first_failure(checks) is None:
            assert q.notional_quote <= limits.max_notional_eure
            assert q.edge_bps >= limits.min_edge_bps
            book.reserve(
                Reservation(
                    f"c{i}", "q", r.asset_in, q.amount_in, r.asset_out, q.amount_out, q.notional_quote, 10**30
                )
            )
        for asset, held in credited.items():
            assert book.reserved_out(asset) <= held
        assert book.outstanding_eure() <= limits.max_outstanding_eure


def test_loss_guard_daily_and_drawdown() -> None:
    guard = LossGuard(daily_limit_eure=Decimal(10), drawdown_limit_eure=Decimal(15))
    day = 86_400 * 10**9
    assert guard.observe(Decimal(0), 5 * day) is None
    assert guard.observe(Decimal(4), 5 * day + 1) is None
    assert guard.observe(Decimal(-9), 5 * day + 2) is None  # 9 below day start 0, 13 below peak 4
    reason = guard.observe(Decimal(-10), 5 * day + 3)  # 10 below day start 0 -> daily limit
    assert reason is not None and reason.startswith("daily_loss_limit")
    assert guard.observe(Decimal(50), 5 * day + 3) == reason  # stays tripped until reset
    guard.reset(Decimal(50))
    assert guard.observe(Decimal(40), 6 * day) is None  # new UTC day starts at 40
    reason = guard.observe(Decimal(35), 6 * day + 1)  # 15 below peak 50
    assert reason is not None and reason.startswith("drawdown_limit")


def test_pnl_identity_exact_and_values() -> None:
    pnl = compute_pnl(
        BTC_EURE,
        base0=10_000_000,
        quote0=1000 * 10**18,
        price0=Decimal("60000"),
        base_t=10_010_000,
        quote_t=1000 * 10**18 - 5_988_000_000_000_000_000,
        price_t=Decimal("61000.5"),
    )
    assert pnl.portfolio_value_eure == Decimal("0.10010000") * Decimal("61000.5") + Decimal("994.012")
    assert pnl.trade_pnl_eure == Decimal("0.012")  # 0.0001 BTC * 60000 - 5.988
    assert pnl.mark_to_market_pnl_eure == Decimal("0.112050")
    assert pnl.trade_pnl_eure + pnl.price_move_pnl_eure == pnl.mark_to_market_pnl_eure


@given(
    st.integers(min_value=0, max_value=10**10),
    st.integers(min_value=0, max_value=10**24),
    st.integers(min_value=0, max_value=10**10),
    st.integers(min_value=0, max_value=10**24),
    st.decimals(min_value=1, max_value=10**6, places=2),
    st.decimals(min_value=1, max_value=10**6, places=2),
)
def test_property_pnl_identity(b0: int, e0: int, bt: int, et: int, p0: Decimal, pt: Decimal) -> None:
    pnl = compute_pnl(BTC_EURE, base0=b0, quote0=e0, price0=p0, base_t=bt, quote_t=et, price_t=pt)
    assert pnl.trade_pnl_eure + pnl.price_move_pnl_eure == pnl.mark_to_market_pnl_eure


def test_markout_sign() -> None:
    assert markout_bps("buy", Decimal(100), Decimal(101)) == Decimal("100.00")
    assert markout_bps("sell", Decimal(100), Decimal(101)) == Decimal("-100.00")


def test_notional_is_rounded_against_us_for_the_limit() -> None:
    # 5.0000004 EURe asked from us: exactly above the 5 EURe limit; the 6-place notional must not hide it
    q = quote(req(BTC.token_id, EURE.token_id, exact_out=5 * 10**18 + 4 * 10**11))
    assert q.notional_quote == Decimal("5.000001")
    checks = check_limits(
        BTC_EURE,
        q,
        min_deadline_ms=60_000,
        credited={EURE.token_id: 10**21},
        book=ReservationBook(),
        limits=Limits(),
    )
    assert first_failure(checks) == "max_notional_eure"
