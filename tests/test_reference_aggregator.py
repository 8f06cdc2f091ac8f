"""Pure reference-price aggregation: exact Decimal expectations and a robustness property."""

from __future__ import annotations

from decimal import Context, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intents_mm.domain.reference import (
    ReferenceAggregator,
    ReferenceConfig,
    SourceTick,
    median,
)
from intents_mm.errors import InputError

T0 = 1_760_000_000_000_000_000
MS = 1_000_000
S = 1_000_000_000
Q12 = Decimal("1e-12")


def tick(source: str, mid: str, at_ns: int = T0, exchange_ts_ns: int | None = None) -> SourceTick:
    """A book one euro wide around ``mid`` (so the source mid is exactly ``mid``)."""
    m = Decimal(mid)
    return SourceTick(source, m - Decimal("0.50"), m + Decimal("0.50"), exchange_ts_ns, at_ns)


def feed(agg: ReferenceAggregator, mids: dict[str, str], at_ns: int = T0) -> None:
    for source, mid in mids.items():
        agg.update(tick(source, mid, at_ns))


# --- SourceTick ---------------------------------------------------------------------------------


def test_source_tick_mid_and_spread_are_exact() -> None:
    t = SourceTick("kraken", Decimal("60000.10"), Decimal("60000.25"), None, T0)
    assert t.mid == Decimal("60000.175")
    assert t.spread_bps.quantize(Q12) == Decimal("0.024999927084")


@pytest.mark.parametrize(
    ("bid", "ask"),
    [("60001", "60000"), ("0", "1"), ("-1", "1"), ("NaN", "1"), ("1", "Infinity")],
)
def test_source_tick_rejects_bad_books(bid: str, ask: str) -> None:
    with pytest.raises(InputError):
        SourceTick("kraken", Decimal(bid), Decimal(ask), None, T0)


def test_locked_book_is_allowed() -> None:
    assert SourceTick("kraken", Decimal("60000"), Decimal("60000"), None, T0).mid == Decimal("60000")


# --- median / outliers / quorum -----------------------------------------------------------------


def test_median_of_four_is_mean_of_middle_pair() -> None:
    agg = ReferenceAggregator()
    feed(agg, {"kraken": "60000.00", "bitstamp": "60010.00", "coinbase": "60020.01", "binance": "60100.00"})
    res = agg.compute(T0)
    assert res.fresh_median == Decimal("60015.005")
    assert res.mid == Decimal("60015.005")
    assert res.quality == "ok"
    assert res.survivors == ("kraken", "bitstamp", "coinbase", "binance")
    assert res.reason is None
    assert res.spread_bps is not None


def test_median_of_three_is_middle_value() -> None:
    agg = ReferenceAggregator(ReferenceConfig(sources=("kraken", "bitstamp", "coinbase")))
    feed(agg, {"kraken": "60003.00", "bitstamp": "59990.50", "coinbase": "60001.25"})
    res = agg.compute(T0)
    assert res.mid == Decimal("60001.25")
    assert res.quality == "ok"


def test_median_helper() -> None:
    assert median([Decimal(3), Decimal(1), Decimal(2)]) == Decimal(2)
    assert median([Decimal("1.01"), Decimal("1.02")]) == Decimal("1.015")
    with pytest.raises(InputError):
        median([])


def test_outlier_is_dropped_not_averaged() -> None:
    agg = ReferenceAggregator()
    feed(agg, {"kraken": "60000.00", "bitstamp": "60002.00", "coinbase": "60004.00", "binance": "60600.00"})
    res = agg.compute(T0)
    # Fresh median (60002 + 60004) / 2 = 60003; binance is 99.5 bps away (> 50) and dropped.
    assert res.fresh_median == Decimal("60003")
    assert res.survivors == ("kraken", "bitstamp", "coinbase")
    assert res.mid == Decimal("60002.00")
    assert res.quality == "degraded"
    view = res.source("binance")
    assert view.status == "outlier"
    assert view.deviation_bps is not None
    assert view.deviation_bps.quantize(Decimal("0.0001")) == Decimal("99.4950")
    assert view.reason is not None and "bps from median" in view.reason
    assert res.source("kraken").status == "fresh"


def test_outlier_at_exactly_the_limit_survives() -> None:
    cfg = ReferenceConfig(sources=("kraken", "bitstamp", "coinbase"))
    agg = ReferenceAggregator(cfg)
    # median 60000; 60300 is exactly 50 bps above it, so it survives; the new median is unchanged.
    feed(agg, {"kraken": "60000", "bitstamp": "59990", "coinbase": "60300"})
    res = agg.compute(T0)
    assert res.source("coinbase").deviation_bps == Decimal(50)
    assert res.source("coinbase").status == "fresh"
    assert res.mid == Decimal("60000")
    feed(agg, {"coinbase": "60300.02"}, T0 + 1)
    assert agg.compute(T0 + 1).source("coinbase").status == "outlier"


def test_two_sources_that_disagree_leave_no_quorum() -> None:
    agg = ReferenceAggregator()
    feed(agg, {"kraken": "60000", "bitstamp": "61000"})
    res = agg.compute(T0)
    assert res.mid is None
    assert res.quality == "stale"
    assert res.survivors == ()
    assert res.reason is not None and "quorum is 2" in res.reason


def test_quorum_and_never_seen_sources() -> None:
    agg = ReferenceAggregator()
    feed(agg, {"kraken": "60000.00"})
    res = agg.compute(T0)
    assert res.quality == "stale" and res.mid is None
    assert res.source("binance").status == "down"
    assert res.source("binance").reason == "no data yet"
    feed(agg, {"coinbase": "60001.00"})
    res = agg.compute(T0)
    assert res.quality == "degraded"
    assert res.mid == Decimal("60000.50")
    strict = ReferenceAggregator(ReferenceConfig(quorum=3))
    feed(strict, {"kraken": "60000.00", "coinbase": "60001.00"})
    assert strict.compute(T0).quality == "stale"


# --- staleness / down ---------------------------------------------------------------------------


def test_staleness_boundary_is_inclusive() -> None:
    agg = ReferenceAggregator()
    feed(agg, {"kraken": "60000", "bitstamp": "60001", "coinbase": "60002", "binance": "60003"})
    feed(agg, {"binance": "60003"}, T0 + 1)
    at_limit = agg.compute(T0 + 3000 * MS)
    assert at_limit.quality == "ok"
    assert at_limit.source("kraken").age_ms == 3000
    past = agg.compute(T0 + 3000 * MS + 1)
    assert past.quality == "stale"
    assert past.mid is None
    assert [v.status for v in past.sources] == ["stale", "stale", "stale", "fresh"]
    assert past.source("kraken").reason == "last price 3000 ms old > 3000 ms"


def test_age_counts_from_exchange_timestamp_when_earlier() -> None:
    agg = ReferenceAggregator()
    agg.update(tick("kraken", "60000", T0, exchange_ts_ns=T0 - 2500 * MS))
    agg.update(tick("bitstamp", "60000", T0, exchange_ts_ns=T0 + 10 * MS))  # clock skew: ignored
    res = agg.compute(T0 + 600 * MS)
    assert res.source("kraken").status == "stale"
    assert res.source("kraken").age_ms == 3100
    assert res.source("bitstamp").age_ms == 600
    lax = ReferenceAggregator(ReferenceConfig(age_from_exchange_ts=False))
    lax.update(tick("kraken", "60000", T0, exchange_ts_ns=T0 - 2500 * MS))
    assert lax.compute(T0 + 600 * MS).source("kraken").status == "fresh"


def test_heartbeat_does_not_refresh_a_price() -> None:
    agg = ReferenceAggregator()
    feed(agg, {"kraken": "60000"})
    agg.note_heartbeat("kraken", T0 + 4000 * MS)
    view = agg.compute(T0 + 4000 * MS).source("kraken")
    assert view.status == "stale"
    assert view.last_heartbeat_ns == T0 + 4000 * MS


def test_mark_down_excludes_until_next_tick() -> None:
    agg = ReferenceAggregator()
    feed(agg, {"kraken": "60000", "bitstamp": "60001", "coinbase": "60002", "binance": "60003"})
    agg.mark_down("coinbase", "websocket closed")
    res = agg.compute(T0)
    assert res.source("coinbase").status == "down"
    assert res.source("coinbase").reason == "websocket closed"
    assert res.quality == "degraded"
    assert res.mid == Decimal("60001")
    feed(agg, {"coinbase": "60002"}, T0 + 1)
    assert agg.compute(T0 + 1).quality == "ok"


def test_older_tick_never_overwrites_newer() -> None:
    agg = ReferenceAggregator()
    agg.update(tick("kraken", "60010", T0 + 5))
    agg.update(tick("kraken", "59000", T0))
    assert agg.compute(T0 + 5).source("kraken").mid == Decimal("60010")


def test_unknown_source_and_bad_config_are_rejected() -> None:
    agg = ReferenceAggregator()
    with pytest.raises(InputError, match="unknown reference source"):
        agg.update(tick("bitfinex", "60000"))
    with pytest.raises(InputError):
        ReferenceConfig(quorum=5)
    with pytest.raises(InputError):
        ReferenceConfig(outlier_bps=Decimal(0))
    with pytest.raises(InputError):
        ReferenceConfig(sources=("kraken", "kraken"))


# --- jump guard ---------------------------------------------------------------------------------


def test_jump_guard_trips_and_clears_after_the_window() -> None:
    agg = ReferenceAggregator(ReferenceConfig(stale_after_ms=60_000))
    both = ("kraken", "bitstamp", "coinbase", "binance")
    feed(agg, dict.fromkeys(both, "60000"))
    first = agg.compute(T0)
    assert not first.jump_detected and first.jump_bps == 0
    # +1% one second later: 100 bps, under the 150 bps guard.
    feed(agg, dict.fromkeys(both, "60600"), T0 + S)
    res = agg.compute(T0 + S)
    assert res.jump_bps == Decimal(100)
    assert not res.jump_detected
    # Another +1% at 2 s: 201 bps against the first point, still inside the 5 s window.
    feed(agg, dict.fromkeys(both, "61206"), T0 + 2 * S)
    res = agg.compute(T0 + 2 * S)
    assert res.jump_bps == Decimal(201)
    assert res.jump_detected
    # Flat afterwards: at 5 s the 0 s point (60000) is still inside the window (boundary included).
    feed(agg, dict.fromkeys(both, "61206"), T0 + 5 * S)
    assert agg.compute(T0 + 5 * S).jump_detected
    # At 6 s only the 1 s point (60600, 100 bps away) and later ones remain.
    feed(agg, dict.fromkeys(both, "61206"), T0 + 6 * S)
    res = agg.compute(T0 + 6 * S)
    assert res.jump_bps == Decimal(100)
    assert not res.jump_detected
    feed(agg, dict.fromkeys(both, "61206"), T0 + 7_500 * MS)
    cleared = agg.compute(T0 + 7_500 * MS)
    assert not cleared.jump_detected
    assert cleared.jump_bps == 0


# --- volatility ---------------------------------------------------------------------------------


def test_ewma_vol_of_a_constant_magnitude_series() -> None:
    agg = ReferenceAggregator(ReferenceConfig(stale_after_ms=60_000))
    both = ("kraken", "bitstamp", "coinbase", "binance")
    assert agg.compute(T0).vol_bps_per_sqrt_s is None
    feed(agg, dict.fromkeys(both, "60000"))
    assert agg.compute(T0).vol_bps_per_sqrt_s is None  # one mid: no return yet
    prices = ["60060", "60000", "60060", "60000", "60060"]
    res = None
    for i, p in enumerate(prices, start=1):
        feed(agg, dict.fromkeys(both, p), T0 + i * S)
        res = agg.compute(T0 + i * S)
    assert res is not None and res.vol_bps_per_sqrt_s is not None
    # Every return is +-ln(1.001) over 1 s, so the EWMA is ln(1.001) * 1e4 bps/sqrt(s).
    assert res.vol_bps_per_sqrt_s.quantize(Q12) == Decimal("9.995003330835")


def test_ewma_vol_weights_with_the_half_life() -> None:
    agg = ReferenceAggregator(ReferenceConfig(stale_after_ms=60_000, ewma_halflife_s=Decimal(1)))
    both = ("kraken", "bitstamp", "coinbase", "binance")
    for i, p in enumerate(["60000", "60060", "60180.12"]):
        feed(agg, dict.fromkeys(both, p), T0 + i * S)
        res = agg.compute(T0 + i * S)
    # dt equals the half-life (d = 1/2): S = 1/4 r1^2 + 1/2 r2^2, W = 1/4 + 1/2, v = (r1^2 + 2 r2^2) / 3.
    assert res.vol_bps_per_sqrt_s is not None
    assert res.vol_bps_per_sqrt_s.quantize(Q12) == Decimal("17.304171169530")
    ctx = Context(prec=34)
    r1, r2 = ctx.ln(Decimal("1.001")), ctx.ln(Decimal("1.002"))
    expected = ctx.sqrt((r1 * r1 + 2 * r2 * r2) / 3) * 10_000
    assert res.vol_bps_per_sqrt_s.quantize(Q12) == expected.quantize(Q12)


def test_ewma_vol_scales_with_elapsed_time_not_call_rate() -> None:
    cfg = ReferenceConfig(stale_after_ms=60_000, ewma_halflife_s=Decimal(60))
    sparse, dense = ReferenceAggregator(cfg), ReferenceAggregator(cfg)
    both = ("kraken", "bitstamp", "coinbase", "binance")
    prices = ["60000", "60030", "59990", "60050", "60010", "60070", "60000"]
    for i, p in enumerate(prices):
        feed(sparse, dict.fromkeys(both, p), T0 + i * S)
        last_sparse = sparse.compute(T0 + i * S)
        # The dense aggregator sees the same moves but is also asked every 100 ms in between.
        feed(dense, dict.fromkeys(both, p), T0 + i * S)
        last_dense = dense.compute(T0 + i * S)
        for k in range(1, 10):
            dense.compute(T0 + i * S + k * 100 * MS)
    assert last_sparse.vol_bps_per_sqrt_s is not None and last_dense.vol_bps_per_sqrt_s is not None
    ratio = last_dense.vol_bps_per_sqrt_s / last_sparse.vol_bps_per_sqrt_s
    assert Decimal("0.9") < ratio < Decimal("1.1")
    # A 1-s move series of ~5-10 bps gives a vol of that order.
    assert Decimal(3) < last_sparse.vol_bps_per_sqrt_s < Decimal(15)


def test_as_dict_is_json_ready() -> None:
    import json

    agg = ReferenceAggregator()
    feed(agg, {"kraken": "60000.00", "bitstamp": "60001.00"})
    doc = agg.compute(T0).as_dict()
    text = json.dumps(doc)
    assert '"mid": "60000.50"' in text
    assert doc["quality"] == "degraded"


# --- property -----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    base_cents=st.integers(min_value=100_000, max_value=50_000_000),
    offsets_bps=st.lists(st.integers(min_value=0, max_value=40), min_size=3, max_size=6),
    wild_cents=st.integers(min_value=1, max_value=10**14),
)
def test_one_wild_source_cannot_move_the_median_outside_the_agreeing_range(
    base_cents: int, offsets_bps: list[int], wild_cents: int
) -> None:
    names = (*(f"s{i}" for i in range(len(offsets_bps))), "wild")
    agg = ReferenceAggregator(ReferenceConfig(sources=names, quorum=2))
    base = Decimal(base_cents) / 100
    agreeing = [(base * (1 + Decimal(o) / 10_000)).quantize(Decimal("0.01")) for o in offsets_bps]
    for name, mid in zip(names, agreeing, strict=False):
        agg.update(SourceTick(name, mid, mid, None, T0))
    wild = Decimal(wild_cents) / 100
    agg.update(SourceTick("wild", wild, wild, None, T0))
    res = agg.compute(T0)
    assert res.mid is not None
    assert min(agreeing) <= res.mid <= max(agreeing)
    assert set(res.survivors) >= set(names[:-1])
