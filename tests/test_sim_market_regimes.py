"""A market with regimes (issue 16): volatility clustering, clustered jumps, a crash, EUR/USD and
BTC/USD paths whose cross is BTC/EUR, and the scenario keys that switch them on."""

from __future__ import annotations

import itertools
import math
import statistics
from decimal import Decimal

import pytest

from intents_mm.errors import InputError
from intents_mm.sim.pricepath import PricePath
from intents_mm.sim.scenario import PriceConfig, Scenario, builtin_scenario

T0 = 1_760_000_000_000_000_000
S = 1_000_000_000
MS = 1_000_000


def log_returns(p: PricePath, seconds: int, every_s: int = 1) -> list[float]:
    prices = [float(p.mid_at(T0 + k * every_s * S)) for k in range(seconds // every_s + 1)]
    return [math.log(b / a) for a, b in itertools.pairwise(prices)]


def lag1_corr(xs: list[float]) -> float:
    return statistics.correlation(xs[:-1], xs[1:])


def test_defaults_leave_the_btc_eur_path_as_it_was() -> None:
    # Golden values of seed 7 from the path before regimes existed: the new features draw from
    # their own streams, so with the defaults the BTC/EUR path is bit-for-bit unchanged.
    p = PricePath.from_config(7, PriceConfig(), start_ns=T0)
    got = [str(p.mid_at(T0 + s * S)) for s in (1, 60, 600, 3600)]
    assert got == ["59990.98", "60014.07", "59939.34", "60012.54"]
    assert builtin_scenario("default").price == PriceConfig()


def test_volatility_regimes_cluster_squared_returns() -> None:
    kw = {
        "jump_rate_per_hour": 0.0,
        "start_ns": T0,
        "regime_calm_mean_s": 300.0,
        "regime_turbulent_mean_s": 60.0,
    }
    plain = PricePath(5, **kw)  # type: ignore[arg-type]
    regimes = PricePath(5, regime_vol_multiplier=6.0, **kw)  # type: ignore[arg-type]
    seconds = 4 * 3600
    r_plain = [x * x for x in log_returns(plain, seconds)]
    r_regime = [x * x for x in log_returns(regimes, seconds)]
    # Clustering: today's squared return predicts tomorrow's; without regimes it does not.
    assert lag1_corr(r_regime) > 0.15
    assert abs(lag1_corr(r_plain)) < 0.05
    # And the turbulent steps really are the volatile ones (about 6x the sigma).
    turbulent = [regimes.turbulent_at(T0 + (k + 1) * S) for k in range(len(r_regime))]
    assert 0.05 < sum(turbulent) / len(turbulent) < 0.4
    hot = statistics.fmean(x for x, t in zip(r_regime, turbulent, strict=True) if t)
    calm = statistics.fmean(x for x, t in zip(r_regime, turbulent, strict=True) if not t)
    assert 15 < hot / calm < 60
    assert not plain.turbulent_at(T0 + 100 * S)


def window_counts(p: PricePath, hours: int, window_s: int) -> list[int]:
    steps = p.jump_steps(T0 + hours * 3600 * S)
    per_window = round(window_s / p.tick_s)
    counts = [0] * (hours * 3600 // window_s)
    for k in steps:
        if k // per_window < len(counts):
            counts[k // per_window] += 1
    return counts


def test_hawkes_jumps_cluster_and_poisson_jumps_do_not() -> None:
    hawkes = PricePath(9, jump_rate_per_hour=20.0, jump_branching=0.8, jump_decay_s=30.0, start_ns=T0)
    # The same long-run rate (base / (1 - branching) = 100 per hour), without excitation.
    poisson = PricePath(9, jump_rate_per_hour=100.0, start_ns=T0)
    hours = 10
    h, q = window_counts(hawkes, hours, 300), window_counts(poisson, hours, 300)
    assert 0.6 < sum(h) / sum(q) < 1.5  # comparable totals
    dispersion_h = statistics.pvariance(h) / statistics.fmean(h)
    dispersion_q = statistics.pvariance(q) / statistics.fmean(q)
    assert dispersion_q < 1.6  # Poisson: variance ~ mean
    assert dispersion_h > 2.5  # Hawkes: bursts

    # A jump is followed by another within 10 s far more often than under Poisson.
    def quick_followers(steps: list[int]) -> float:
        gaps = [b - a for a, b in itertools.pairwise(steps)]
        return sum(g <= 100 for g in gaps) / len(gaps)

    end = T0 + hours * 3600 * S
    assert quick_followers(hawkes.jump_steps(end)) > 1.5 * quick_followers(poisson.jump_steps(end))


def test_crash_moves_ten_percent_within_its_window_and_leaves_the_walk_alone() -> None:
    calm = PricePath(3, jump_rate_per_hour=0.0, start_ns=T0)
    crash = PricePath(3, jump_rate_per_hour=0.0, start_ns=T0, crash_at_s=60.0, crash_duration_s=120.0)
    before, after = T0 + 60 * S - 1, T0 + 180 * S
    assert crash.mid_at(before) == calm.mid_at(before)
    move = crash.mid_at(after) / crash.mid_at(before) - 1
    assert Decimal("-0.11") < move < Decimal("-0.09"), move
    assert abs(calm.mid_at(after) / calm.mid_at(before) - 1) < Decimal("0.01")
    # Halfway through, about half the move; afterwards the level stays (exactly -10 % of the walk).
    half = crash.mid_at(T0 + 120 * S) / calm.mid_at(T0 + 120 * S) - 1
    assert Decimal("-0.06") < half < Decimal("-0.045")
    for s in (181, 600, 3600):
        ratio = crash.mid_at(T0 + s * S) / calm.mid_at(T0 + s * S)
        assert abs(ratio - Decimal("0.9")) < Decimal("0.000001")


def test_btc_usd_over_eur_usd_is_btc_eur_and_eur_usd_moves() -> None:
    p = PricePath(4, start_ns=T0, eurusd_start=Decimal("1.08"), eurusd_vol_annual=0.07)
    fx = []
    for k in range(0, 7200, 7):
        t = T0 + k * S
        btceur, btcusd, eurusd = p.mid_at(t), p.btcusd_at(t), p.eurusd_at(t)
        assert (p.pair_mid_at("btceur", t), p.pair_mid_at("btcusd", t), p.pair_mid_at("eurusd", t)) == (
            btceur,
            btcusd,
            eurusd,
        )
        assert abs(btcusd / eurusd / btceur - 1) < Decimal("0.0000003")  # quantisation only
        assert btcusd.as_tuple().exponent == -2 and eurusd.as_tuple().exponent == -8
        fx.append(float(eurusd))
    assert p.eurusd_at(T0 - S) == Decimal("1.08")
    assert len(set(fx)) > 1000
    returns = [math.log(b / a) for a, b in itertools.pairwise(fx)]
    realised = statistics.pstdev(returns) * math.sqrt(365 * 24 * 3600 / 7)
    assert 0.05 < realised < 0.09
    # A shock on BTC/EUR moves BTC/USD with it and leaves EUR/USD alone.
    t = T0 + 8000 * S
    fx_before, usd_before = p.eurusd_at(t), p.btcusd_at(t)
    p.shock(-100, t)
    assert p.eurusd_at(t) == fx_before
    assert abs(p.btcusd_at(t) / usd_before - Decimal("0.99")) < Decimal("0.000001")
    with pytest.raises(InputError):
        p.pair_mid_at("ethusd", t)


def test_same_seed_same_regime_path() -> None:
    kw = {
        "start_ns": T0,
        "regime_vol_multiplier": 4.0,
        "jump_branching": 0.7,
        "jump_rate_per_hour": 30.0,
        "crash_at_s": 100.0,
    }
    a, b = PricePath(11, **kw), PricePath(11, **kw)  # type: ignore[arg-type]
    times = [T0 + k * 333 * MS for k in range(5000)]
    late_first = {t: b.btcusd_at(t) for t in reversed(times)}
    assert [a.btcusd_at(t) for t in times] == [late_first[t] for t in times]
    assert a.jump_steps(times[-1]) == b.jump_steps(times[-1])
    c = PricePath(12, **kw)  # type: ignore[arg-type]
    assert [c.mid_at(t) for t in times] != [a.mid_at(t) for t in times]


def test_bad_regime_parameters_are_refused() -> None:
    for kw in (
        {"regime_vol_multiplier": 0.5},
        {"jump_branching": 1.0},
        {"jump_decay_s": 0.0},
        {"crash_bps": -10_000.0},
        {"eurusd_start": Decimal(0)},
    ):
        with pytest.raises(InputError):
            PricePath(1, **kw)  # type: ignore[arg-type]


def test_scenario_price_and_exchanges_keys() -> None:
    s = Scenario.from_toml(
        """
        [price]
        regime_vol_multiplier = 5
        regime_calm_mean_s = 300
        regime_turbulent_mean_s = 45
        jump_branching = 0.6
        jump_decay_s = 20
        crash_at_s = 90
        crash_bps = -1000
        crash_duration_s = 180
        eurusd_start = 1.1
        eurusd_vol_annual = 0.1

        [exchanges]
        pairs = ["btceur", "btcusd"]
        lag_ms = { btceur = 400, btcusd = -200 }

        [exchanges.kraken]
        noise_ar = 0.5
        jitter_bps = 1.5
        lag_ms = { btceur = 0 }
        stale = [[10, 5], [40, 2.5]]
        dead_at_s = 100
        disconnect_at_s = [30, 20]
        stale_per_hour = 12
        stale_s = [1, 3]
        disconnect_per_hour = 2
        """
    )
    p = s.price
    assert (p.regime_vol_multiplier, p.regime_calm_mean_s, p.regime_turbulent_mean_s) == (5.0, 300.0, 45.0)
    assert (p.jump_branching, p.jump_decay_s) == (0.6, 20.0)
    assert (p.crash_at_s, p.crash_bps, p.crash_duration_s) == (90.0, -1000.0, 180.0)
    assert (p.eurusd_start, p.eurusd_vol_annual) == (Decimal("1.1"), 0.1)
    e = s.exchanges
    assert e.pairs == ("btceur", "btcusd") and dict(e.lag_ms) == {"btceur": 400, "btcusd": -200}
    k = e.per_venue["kraken"]
    assert (k.noise_ar, k.jitter_bps, dict(k.lag_ms)) == (0.5, 1.5, {"btceur": 0})
    assert k.stale == ((10.0, 5.0), (40.0, 2.5)) and k.dead_at_s == 100.0
    assert k.disconnect_at_s == (20.0, 30.0)
    assert (k.stale_per_hour, k.stale_s, k.disconnect_per_hour) == (12.0, (1.0, 3.0), 2.0)
    d = Scenario()
    assert d.exchanges.pairs == ("btceur", "btcusd", "eurusd") and not d.exchanges.lag_ms
    assert d.price.crash_at_s is None and d.price.regime_vol_multiplier == 1.0


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[price]\njump_branching = 0.99", "jump_branching"),
        ("[price]\nregime_vol_multiplier = 0.5", "regime_vol_multiplier"),
        ("[exchanges]\npairs = ['btcusd']", "pairs"),
        ("[exchanges]\npairs = ['btceur', 'ethusd']", "pairs"),
        ("[exchanges]\nlag_ms = { ethusd = 3 }", "lag_ms.ethusd"),
        ("[exchanges]\nlag_ms = { btceur = 1.5 }", "lag_ms.btceur"),
        ("[exchanges.kraken]\nstale = [[1]]", "stale"),
        ("[exchanges.kraken]\ndisconnect_at_s = [-1]", "disconnect_at_s"),
        ("[exchanges.kraken]\nnoise_ar = 1", "noise_ar"),
        ("[exchanges.kraken]\nstale_soon = 1", "stale_soon"),
    ],
)
def test_bad_market_keys_name_the_key(toml: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Scenario.from_toml(toml, "bad.toml")
