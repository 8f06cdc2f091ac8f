"""The simulated BTC/EUR price path: deterministic, Decimal out, statistically what it says."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal

import pytest

from intents_mm.clock import ManualClock
from intents_mm.errors import InputError
from intents_mm.sim.pricepath import PricePath

T0 = 1_760_000_000_000_000_000
S = 1_000_000_000
MS = 1_000_000


def test_same_seed_same_path_in_any_query_order() -> None:
    a = PricePath(7, start_ns=T0)
    b = PricePath(7, start_ns=T0)
    times = [T0 + k * 137 * MS for k in range(2000)]
    late_first = {t: b.mid_at(t) for t in reversed(times)}
    assert [a.mid_at(t) for t in times] == [late_first[t] for t in times]
    c = PricePath(8, start_ns=T0)
    assert [c.mid_at(t) for t in times] != [a.mid_at(t) for t in times]


def test_prices_are_cent_decimals_and_constant_within_a_step() -> None:
    p = PricePath(1, start_ns=T0)
    assert p.mid_at(T0) == Decimal("60000.00")
    assert p.mid_at(T0 - S) == Decimal("60000")
    for k in range(1, 500):
        mid = p.mid_at(T0 + k * 100 * MS)
        assert isinstance(mid, Decimal)
        assert mid.as_tuple().exponent == -2
        assert p.mid_at(T0 + k * 100 * MS + 99 * MS) == mid
    assert p.mid_at(T0 + 100 * MS) != p.mid_at(T0 + 5 * S)


def test_origin_comes_from_the_clock_or_the_first_query() -> None:
    clock = ManualClock(T0)
    p = PricePath(3, clock=clock)
    assert p.origin_ns == T0
    clock.advance(10 * S)
    assert p.mid_now() == p.mid_at(T0 + 10 * S)
    q = PricePath(3)
    origins = [q.origin_ns]
    assert q.mid_at(T0 + 5 * S) == Decimal("60000.00")
    origins.append(q.origin_ns)
    assert origins == [None, T0 + 5 * S]
    with pytest.raises(InputError):
        q.mid_now()


def test_realised_volatility_matches_the_parameter() -> None:
    p = PricePath(11, vol_annual=0.6, jump_rate_per_hour=0.0, start_ns=T0)
    steps = 36_000  # one hour of 100 ms steps
    prices = [float(p.mid_at(T0 + k * 100 * MS)) for k in range(steps + 1)]
    rets = [math.log(b / a) for a, b in itertools.pairwise(prices)]
    realised_annual = math.sqrt(sum(r * r for r in rets) / len(rets)) * math.sqrt(365 * 24 * 3600 / 0.1)
    # Cent rounding adds a little noise on top of the 0.6 diffusion.
    assert 0.55 < realised_annual < 0.70


def test_jumps_arrive_at_the_configured_rate_and_size() -> None:
    p = PricePath(5, vol_annual=0.0, jump_rate_per_hour=360.0, jump_size_bps=100.0, start_ns=T0)
    prices = [p.mid_at(T0 + k * 100 * MS) for k in range(36_001)]
    moves = [abs(b / a - 1) * 10_000 for a, b in itertools.pairwise(prices) if b != a]
    # 360 per hour expected; Poisson spread is about +-19.
    assert 290 < len(moves) < 430
    assert all(Decimal(49) < m < Decimal(151) for m in moves)


def test_shock_moves_the_path_from_its_time_on() -> None:
    clock = ManualClock(T0)
    p = PricePath(9, clock=clock)
    before = p.mid_at(T0 + 10 * S)
    unshocked_later = p.mid_at(T0 + 20 * S)
    p.shock(200, at_ns=T0 + 15 * S)
    assert p.mid_at(T0 + 10 * S) == before
    shocked = p.mid_at(T0 + 20 * S)
    assert abs(shocked / unshocked_later - Decimal("1.02")) < Decimal("0.0000002")
    clock.advance(30 * S)
    now_before = p.mid_now()
    p.shock(-100)
    assert abs(p.mid_now() / now_before - Decimal("0.99")) < Decimal("0.0000002")
    # Two shocks at the same step add up; the path itself is unchanged by them.
    twin = PricePath(9, start_ns=T0)
    twin.shock(100, at_ns=T0 + 15 * S)
    twin.shock((1.02 / 1.01 - 1) * 10_000, at_ns=T0 + 15 * S)
    assert abs(twin.mid_at(T0 + 20 * S) - shocked) <= Decimal("0.01")
    with pytest.raises(InputError):
        p.shock(float("nan"))
    with pytest.raises(InputError):
        PricePath(1).shock(10)


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(InputError):
        PricePath(1, start_price=Decimal(0))
    with pytest.raises(InputError):
        PricePath(1, vol_annual=-0.1)
    with pytest.raises(InputError):
        PricePath(1, tick_s=0)
