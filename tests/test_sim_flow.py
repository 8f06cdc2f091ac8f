"""Issue 16 flow: latency arbitrageurs, option holders, size-informed flow, price-comparing users,
heavy-tailed sizes and bursty arrivals. Each test shows the behaviour exists and bites."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest

from intents_mm.clock import SystemClock
from intents_mm.errors import InputError
from intents_mm.sim.near_rpc import SimNear
from intents_mm.sim.participants import (
    CompetingSolver,
    PlannedRequest,
    SimUser,
    SolverConfig,
    UserFlowConfig,
)
from intents_mm.sim.relay import SimRelay
from intents_mm.sim.scenario import Scenario
from intents_mm.sim.venue import SimVenue
from intents_mm.sim.verifier import Verifier

BTC = "nep141:btc.omft.near"
EURE = "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"
EUR = 10**18
MID = Decimal(60000)
MS = 1_000_000


class Env:
    def __init__(self) -> None:
        self.clock = SystemClock()
        self.verifier = Verifier(self.clock)
        self.relay = SimRelay(
            self.clock,
            SimNear(self.clock, self.verifier),
            self.verifier,
            api_keys={"k-a": "a"},
            window_ms=300,
        )
        self.base = ""


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = Env()
    e.base = await e.relay.start()
    try:
        yield e
    finally:
        await e.relay.stop()


def flat(_ns: int) -> Decimal:
    return MID


def user(env: Env, price_at: Callable[[int], Decimal] = flat, seed: int = 1, **cfg: Any) -> SimUser:
    u = SimUser(
        env.clock,
        env.relay,
        env.verifier,
        price_at,
        seed=seed,
        config=UserFlowConfig(**cfg),
        initial_balances={BTC: 10**8, EURE: 10_000 * EUR},
    )
    u.fund()
    return u


def solver(env: Env, price_at: Callable[[int], Decimal] = flat, **kw: Any) -> CompetingSolver:
    return CompetingSolver(
        env.clock,
        env.verifier,
        env.base.replace("http", "ws") + "/ws",
        price_at,
        api_key="k-a",
        config=SolverConfig(spread_bps=Decimal(40), **kw),
        initial_balances={BTC: 10**8, EURE: 100_000 * EUR},
    )


def planned(
    kind: str, *, sell_base: bool = True, min_deadline_ms: int = 60000, u: float = 0.0
) -> PlannedRequest:
    return PlannedRequest(
        seq=1,
        delay_s=0.0,
        sell_base=sell_base,
        exact_in=True,
        notional_eur=Decimal(60),
        informed=kind == "informed",
        min_deadline_ms=min_deadline_ms,
        kind=kind,  # type: ignore[arg-type]
        accept_u=u,
    )


def solver_value_eur(s: CompetingSolver, env: Env, mid: Decimal) -> Decimal:
    """The solver's BTC and EURe balances valued exactly at ``mid`` (EUR)."""
    btc = env.verifier.balance_of(s.account_id, BTC)
    eure = env.verifier.balance_of(s.account_id, EURE)
    return Decimal(btc) * mid / 10**8 + Decimal(eure) / EUR


def step(at_ns: int, before: Decimal, after: Decimal) -> Callable[[int], Decimal]:
    return lambda ns: before if ns < at_ns else after


# ---------------------------------------------------------------------------- defaults unchanged


def test_default_flow_draws_what_it_drew_before() -> None:
    """The default config (no new kinds, Poisson, lognormal, limit) consumes the seed's stream exactly
    as before issue 16, so today's `default` scenario keeps its flow."""
    clock = SystemClock()
    cfg = UserFlowConfig()
    u = SimUser(clock, None, Verifier(clock), flat, seed=9, config=cfg)  # type: ignore[arg-type]
    rng = random.Random(9)
    for _ in range(300):
        r = u.next_request()
        delay = rng.expovariate(cfg.rate_per_s)
        sell = rng.random() < cfg.sell_base_share
        exact_in = rng.random() >= cfg.exact_out_share
        raw = rng.lognormvariate(math.log(float(cfg.median_notional_eur)), cfg.notional_sigma)
        informed = rng.random() < cfg.informed_share
        alt = rng.random() < cfg.alt_deadline_share
        notional = min(max(Decimal(f"{raw:.6f}"), cfg.min_notional_eur), cfg.max_notional_eur)
        assert (r.delay_s, r.sell_base, r.exact_in, r.notional_eur, r.informed) == (
            delay,
            sell,
            exact_in,
            notional,
            informed,
        )
        assert r.min_deadline_ms == (cfg.alt_min_deadline_ms if alt else cfg.min_deadline_ms)
        assert r.kind == ("informed" if informed else "uninformed")


def test_same_seed_same_flow_in_every_mode() -> None:
    clock = SystemClock()
    cfg = UserFlowConfig(
        latency_arb_share=0.2,
        option_share=0.2,
        informed_by_size=((Decimal(1), 0.0), (Decimal(100), 0.5)),
        acceptance="logistic",
        size_dist="pareto",
        arrivals="hawkes",
    )
    for arrivals in ("hawkes", "mmpp"):
        c = UserFlowConfig(**{**cfg.__dict__, "arrivals": arrivals})
        a, b, other = (SimUser(clock, None, Verifier(clock), flat, seed=s, config=c) for s in (3, 3, 4))  # type: ignore[arg-type]
        seq_a = [a.next_request() for _ in range(500)]
        assert seq_a == [b.next_request() for _ in range(500)]
        assert seq_a != [other.next_request() for _ in range(500)]


def test_kinds_take_their_shares() -> None:
    clock = SystemClock()
    cfg = UserFlowConfig(informed_share=0.1, latency_arb_share=0.2, option_share=0.3)
    u = SimUser(clock, None, Verifier(clock), flat, seed=5, config=cfg)  # type: ignore[arg-type]
    kinds = Counter(u.next_request().kind for _ in range(10_000))
    assert abs(kinds["informed"] - 1000) < 120
    assert abs(kinds["latency_arb"] - 2000) < 160
    assert abs(kinds["option"] - 3000) < 180
    assert abs(kinds["uninformed"] - 4000) < 200


def test_shares_beyond_one_and_bad_curves_are_refused() -> None:
    with pytest.raises(InputError, match="sum to <= 1"):
        UserFlowConfig(informed_share=0.5, latency_arb_share=0.3, option_share=0.3)
    with pytest.raises(InputError, match="strictly increasing"):
        UserFlowConfig(informed_by_size=((Decimal(10), 0.1), (Decimal(10), 0.2)))
    with pytest.raises(InputError, match="hawkes_branching"):
        UserFlowConfig(arrivals="hawkes", hawkes_branching=1.0)


# ---------------------------------------------------------------------------- size-informed flow


def test_larger_requests_are_more_often_informed() -> None:
    clock = SystemClock()
    curve = ((Decimal(2), 0.0), (Decimal(20), 0.5), (Decimal(100), 1.0))
    cfg = UserFlowConfig(
        informed_share=0.0, informed_by_size=curve, max_notional_eur=Decimal(1000), notional_sigma=1.5
    )
    assert cfg.informed_probability(Decimal(1)) == 0.0
    assert cfg.informed_probability(Decimal(11)) == pytest.approx(0.25)
    assert cfg.informed_probability(Decimal(60)) == pytest.approx(0.75)
    assert cfg.informed_probability(Decimal(500)) == 1.0
    u = SimUser(clock, None, Verifier(clock), flat, seed=8, config=cfg)  # type: ignore[arg-type]
    reqs = [u.next_request() for _ in range(5000)]
    buckets: dict[str, list[bool]] = {"small": [], "mid": [], "large": []}
    for r in reqs:
        name = "small" if r.notional_eur < 2 else "large" if r.notional_eur >= 100 else "mid"
        buckets[name].append(r.informed)
    assert not any(buckets["small"]) and len(buckets["small"]) > 500
    assert all(buckets["large"]) and len(buckets["large"]) > 30
    share_mid = sum(buckets["mid"]) / len(buckets["mid"])
    assert 0.1 < share_mid < 0.6
    flat_cfg = UserFlowConfig(informed_share=0.3, max_notional_eur=Decimal(1000), notional_sigma=1.5)
    v = SimUser(clock, None, Verifier(clock), flat, seed=8, config=flat_cfg)  # type: ignore[arg-type]
    small_informed = [r.informed for r in (v.next_request() for _ in range(5000)) if r.notional_eur < 2]
    assert 0.2 < sum(small_informed) / len(small_informed) < 0.4  # without the curve size does not matter


# ---------------------------------------------------------------------------- sizes and arrivals


def test_pareto_sizes_are_heavy_tailed_with_the_same_median_and_capped() -> None:
    clock = SystemClock()

    def notionals(**kw: Any) -> list[float]:
        cfg = UserFlowConfig(median_notional_eur=Decimal(3), max_notional_eur=Decimal(250), **kw)
        u = SimUser(clock, None, Verifier(clock), flat, seed=2, config=cfg)  # type: ignore[arg-type]
        return sorted(float(u.next_request().notional_eur) for _ in range(20_000))

    logn = notionals(notional_sigma=0.8)
    pareto = notionals(size_dist="pareto", pareto_alpha=1.2)
    assert statistics.median(pareto) == pytest.approx(3.0, rel=0.05)
    assert statistics.median(logn) == pytest.approx(3.0, rel=0.05)
    p999 = int(0.999 * len(logn))
    assert pareto[p999] > 5 * logn[p999]  # the tail
    assert max(pareto) == 250.0 and sum(1 for x in pareto if x == 250.0) > 10  # capped


def _counts_per_window(u: SimUser, n: int, width_s: float = 10.0) -> list[int]:
    t = 0.0
    counts: Counter[int] = Counter()
    for _ in range(n):
        t += u.next_request().delay_s
        counts[int(t / width_s)] += 1
    return [counts[i] for i in range(int(t / width_s))]


@pytest.mark.parametrize("arrivals", ["hawkes", "mmpp"])
def test_bursty_arrivals_keep_the_mean_rate_and_cluster(arrivals: str) -> None:
    clock = SystemClock()
    cfg = UserFlowConfig(rate_per_s=2.0, arrivals=arrivals)  # type: ignore[arg-type]
    bursty = _counts_per_window(SimUser(clock, None, Verifier(clock), flat, seed=4, config=cfg), 40_000)  # type: ignore[arg-type]
    plain = _counts_per_window(
        SimUser(clock, None, Verifier(clock), flat, seed=4, config=UserFlowConfig(rate_per_s=2.0)),  # type: ignore[arg-type]
        40_000,
    )
    for counts in (bursty, plain):
        assert statistics.mean(counts) == pytest.approx(20.0, rel=0.06)  # 2/s in 10 s windows
    dispersion = statistics.variance(bursty) / statistics.mean(bursty)
    assert statistics.variance(plain) / statistics.mean(plain) == pytest.approx(1.0, abs=0.15)
    assert dispersion > 2.0  # bursts: far more variable than Poisson


# ---------------------------------------------------------------------------- price comparers


def test_logistic_acceptance_falls_with_distance_from_fair_value() -> None:
    clock = SystemClock()
    cfg = UserFlowConfig(informed_share=0.0, acceptance="logistic")  # 50 % at 50 bps, scale 15 bps
    u = SimUser(clock, None, Verifier(clock), flat, seed=42, config=cfg)  # type: ignore[arg-type]
    reqs = [u.next_request() for _ in range(2000)]
    counts = []
    for d in (0, 25, 50, 75, 100):
        k = Decimal(d) / 10_000
        counts.append(sum(u.accepts(r, MID * (1 - k) if r.sell_base else MID * (1 + k), 0) for r in reqs))
    assert counts == EXPECTED_LOGISTIC_COUNTS
    expected = [2000 / (1 + math.exp((d - 50) / 15)) for d in (0, 25, 50, 75, 100)]
    assert all(abs(c - e) < 60 for c, e in zip(counts, expected, strict=True))
    # the limit rule (today's default) accepts everything within 100 bps
    limit = SimUser(clock, None, Verifier(clock), flat, seed=42, config=UserFlowConfig(informed_share=0.0))  # type: ignore[arg-type]
    assert all(
        limit.accepts(r, MID * Decimal("0.9925") if r.sell_base else MID * Decimal("1.0075"), 0) for r in reqs
    )


EXPECTED_LOGISTIC_COUNTS = [1936, 1693, 973, 305, 65]  # seed 42; theory 1931, 1682, 1000, 318, 68


# ---------------------------------------------------------------------------- latency arbitrage


def test_latency_arb_rule_is_strictly_beyond_the_threshold() -> None:
    clock = SystemClock()
    lead = Decimal(60600)
    path = step(1000 * MS, MID, lead)  # the price rises 1 % at t = 1 s; the arb sees 500 ms ahead
    u = SimUser(
        clock,
        None,
        Verifier(clock),
        path,
        seed=1,
        config=UserFlowConfig(latency_arb_threshold_bps=Decimal(5)),
    )  # type: ignore[arg-type]
    buy, sell = planned("latency_arb", sell_base=False), planned("latency_arb")
    at = 600 * MS  # 600 ms + 500 ms lead sees the new price
    assert u.accepts(buy, Decimal(60240), at)  # stale ask far below the leading price
    assert not u.accepts(buy, lead * Decimal("0.9995"), at)  # exactly 5 bps under: not more than 5
    assert u.accepts(buy, lead * Decimal("0.9994"), at)
    assert not u.accepts(sell, Decimal(59760), at)  # selling into a rise: no
    assert not u.accepts(buy, Decimal(60240), 400 * MS)  # 400 + 500 < 1000: no lead yet, quote is fresh


async def test_latency_arbs_pick_off_stale_quotes_and_leave_fresh_ones(env: Env) -> None:
    t0 = env.clock.now_ns()
    lead_ms = 500
    true = step(t0 + 100 * MS, MID, MID * Decimal("1.01"))  # +1 % shortly after the start
    stale, fresh = solver(env, flat), solver(env, lambda ns: true(ns + lead_ms * MS))
    # a 200 bps tolerance would make an uninformed user take the fresh quote too: the arb does not
    arb = user(
        env,
        true,
        latency_arb_share=1.0,
        informed_share=0.0,
        latency_arb_lead_ms=lead_ms,
        tolerance_bps=Decimal(200),
    )
    for who, expect in ((fresh, "declined"), (stale, "accepted")):
        await who.start()
        try:
            await who.wait_ready()
            before = solver_value_eur(who, env, true(t0 + 10**9))
            out = await arb.handle(planned("latency_arb", sell_base=False))
            assert out.decision == expect, out
            if expect == "accepted":
                assert out.publish is not None and out.publish["status"] == "OK", out.publish
                assert (
                    out.best_price_eur is not None and abs(out.best_price_eur - 60240) < 1
                )  # 60000 + 40 bps
                # the stale quote's markout at the leading (soon true) price is negative for the solver
                after = solver_value_eur(who, env, true(t0 + 10**9))
                assert Decimal("-0.4") < after - before < Decimal("-0.3")  # ~60 EUR x 60 bps lost
            else:
                assert out.best_price_eur is not None and out.best_price_eur > Decimal(
                    60840
                )  # 60600 + 40 bps
        finally:
            await who.stop()
    assert arb.counts["latency_arb_requests"] == 2 and arb.counts["latency_arb_accepted"] == 1


# ---------------------------------------------------------------------------- option holders


async def test_option_holders_exercise_only_quotes_that_moved_their_way(env: Env) -> None:
    t0 = env.clock.now_ns()
    move_ns = t0 + 900 * MS  # after the relay's window: the quote is held, not decided at once
    falling = step(move_ns, MID, MID * Decimal("0.99"))
    s = solver(env, flat)  # quotes 60000 -/+ 40 bps, not watching the price
    holder = user(
        env, falling, option_share=1.0, informed_share=0.0, option_poll_ms=50, option_max_hold_ms=2500
    )
    await s.start()
    try:
        await s.wait_ready()
        value_before = solver_value_eur(s, env, MID * Decimal("0.99"))
        sell, buy = await asyncio.gather(
            holder.handle(planned("option", sell_base=True)),
            holder.handle(planned("option", sell_base=False)),
        )
        # selling BTC at the 59760 bid is worth exercising once the mid fell to 59400
        assert sell.decision == "accepted" and sell.publish is not None and sell.publish["status"] == "OK", (
            sell
        )
        assert sell.decided_ns is not None and sell.published_ns is not None
        assert sell.decided_ns < move_ns <= sell.published_ns  # held, then exercised after the move
        # buying at the 60240 ask never pays in a falling market: the option lapses, nothing settles
        assert buy.decision == "lapsed" and buy.publish is None, buy
        assert holder.counts["option_taken"] == 2
        assert holder.counts["option_exercised"] == 1
        assert holder.counts["option_accepted"] == 1 and holder.counts["option_lapsed"] == 1
        # the exercised fill's markout at the true price is negative for the quoting solver (exactly)
        qh = sell.best_quote["quote_hash"] if sell.best_quote else ""
        sent = s.sent[qh]
        assert sent.amount_in == 100_000  # 0.001 BTC received by the solver
        markout = Decimal(sent.amount_in) * MID * Decimal("0.99") / 10**8 - Decimal(sent.amount_out) / EUR
        assert markout == Decimal("59.4") - Decimal("59.76")
        assert solver_value_eur(s, env, MID * Decimal("0.99")) - value_before == markout
    finally:
        await s.stop()


async def test_an_unmoved_option_lapses_before_the_quote_deadline(env: Env) -> None:
    s = solver(env, flat, deadline_margin_ms=1500)  # the quote is valid for ~1.5 s
    holder = user(
        env, flat, option_share=1.0, informed_share=0.0, option_poll_ms=50, option_exercise_margin_ms=500
    )
    await s.start()
    try:
        await s.wait_ready()
        started = env.clock.now_ns()
        out = await holder.handle(planned("option", min_deadline_ms=0))
        elapsed_ms = (env.clock.now_ns() - started) / MS
        assert out.decision == "lapsed" and out.publish is None
        assert 800 <= elapsed_ms < 1500, elapsed_ms  # deadline (~1.5 s) - 500 ms margin: before the deadline
        assert s.statuses_received == 0
    finally:
        await s.stop()


def test_exercise_rule_needs_the_threshold_in_the_users_favour() -> None:
    clock = SystemClock()
    u = SimUser(
        clock, None, Verifier(clock), flat, seed=1, config=UserFlowConfig(option_threshold_bps=Decimal(10))
    )  # type: ignore[arg-type]
    assert u.exercisable(planned("option"), Decimal(60060), 0)  # sells 10 bps above mid
    assert not u.exercisable(planned("option"), Decimal(60059), 0)
    assert u.exercisable(planned("option", sell_base=False), Decimal(59940), 0)
    assert not u.exercisable(planned("option", sell_base=False), Decimal(60000), 0)
    assert u.accepts(planned("option"), Decimal(1), 0)  # taking the quote costs nothing


# ---------------------------------------------------------------------------- scenario


def test_scenario_flow_keys_reach_the_users() -> None:
    text = """
[flow]
rate_per_s = 4.0
users = 2
informed_share = 0.0
informed_by_size = [[5, 0.0], [100, 0.4]]
latency_arb_share = 0.3
latency_arb_lead_ms = 250
latency_arb_threshold_bps = 3
option_share = 0.2
option_threshold_bps = 8
option_max_hold_ms = 20000
acceptance = "logistic"
logistic_mid_bps = 40
logistic_scale_bps = 10
size_dist = "pareto"
pareto_alpha = 1.3
arrivals = "mmpp"
mmpp_burst_multiplier = 8
"""
    scenario = Scenario.from_toml(text, "kinds.toml")
    f = scenario.flow
    assert f.informed_by_size == ((Decimal(5), 0.0), (Decimal(100), 0.4))
    assert (f.latency_arb_lead_ms, f.option_max_hold_ms, f.arrivals) == (250, 20000, "mmpp")
    venue = SimVenue(scenario, seed=3)
    cfg = venue._user_config()
    assert (cfg.latency_arb_share, cfg.option_share, cfg.acceptance, cfg.size_dist) == (
        0.3,
        0.2,
        "logistic",
        "pareto",
    )
    assert cfg.logistic_mid_bps == Decimal(40) and cfg.mmpp_burst_multiplier == 8.0
    kinds = Counter(a.request.kind for a in venue.planned_requests(2000))
    assert kinds["latency_arb"] > 450 and kinds["option"] > 300 and kinds["informed"] > 0
    assert SimVenue(scenario, seed=3).planned_requests(200) == venue.planned_requests(200)
    assert scenario.describe()["flow_mix"] == {
        "informed": "by_size",
        "latency_arb": 0.3,
        "option": 0.2,
        "acceptance": "logistic",
        "size_dist": "pareto",
        "arrivals": "mmpp",
    }
    assert Scenario.from_toml("").flow.latency_arb_share == 0.0  # default: today's flow


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[flow]\nlatency_arb_share = 0.6\noption_share = 0.5\n", "shares exceed 1"),
        ("[flow]\ninformed_by_size = [[10, 0.5], [5, 0.6]]\n", "informed_by_size"),
        ("[flow]\ninformed_by_size = [[10, 1.5]]\n", "informed_by_size"),
        ('[flow]\narrivals = "storm"\n', "arrivals: must be one of"),
        ('[flow]\nacceptance = "maybe"\n', "acceptance: must be one of"),
        ("[flow]\nhawkes_branching = 1.0\n", "hawkes_branching"),
    ],
)
def test_bad_flow_keys_are_refused(text: str, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        Scenario.from_toml(text, "bad.toml")
