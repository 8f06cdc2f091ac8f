"""Issue 16 competitors and relay realism: the constant-product solver (one nonce per reserve state),
the tight solver that widens on its own markouts, ranking drops and user fallback, the window
setting and the settlement delay, against the real relay sockets and the simulated Verifier."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from intents_mm.clock import ManualClock, SystemClock
from intents_mm.errors import InputError
from intents_mm.near.nonce import LegacyNonce, decode_nonce
from intents_mm.sim.competitors import (
    ConstantProductSolver,
    TightSolver,
    amm_amount_in,
    amm_amount_out,
    reserves_nonce,
    solver_class,
    solver_kwargs,
)
from intents_mm.sim.near_rpc import SimNear
from intents_mm.sim.participants import CompetingSolver, PlannedRequest, SimUser, SolverConfig, UserFlowConfig
from intents_mm.sim.relay import SimRelay
from intents_mm.sim.scenario import Scenario
from intents_mm.sim.verifier import Verifier

BTC = "nep141:btc.omft.near"
EURE = "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"
EUR = 10**18
MID = Decimal(60000)
POOL = {BTC: 10**8, EURE: 60_000 * EUR}  # 1 BTC and 60 000 EURe: priced at the mid


@dataclass
class Venue:
    clock: SystemClock
    verifier: Verifier
    chain: SimNear
    relay: SimRelay
    base: str


async def _venue(**relay_kw: Any) -> tuple[Venue, SimRelay]:
    clock = SystemClock()
    verifier = Verifier(clock)
    chain = SimNear(clock, verifier, block_time_ms=100)
    relay = SimRelay(
        clock,
        chain,
        verifier,
        api_keys={"k-a": "a", "k-b": "b", "k-c": "c"},
        **{"window_ms": 300, **relay_kw},
    )
    base = await relay.start()
    return Venue(clock, verifier, chain, relay, base), relay


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    v, relay = await _venue()
    try:
        yield v
    finally:
        await relay.stop()


def flat(_ns: int) -> Decimal:
    return MID


def ws(venue: Venue) -> str:
    return venue.base.replace("http", "ws") + "/ws"


def amm(venue: Venue, *, margin_bps: int = 10, key: str = "k-a", seed: int = 1) -> ConstantProductSolver:
    return ConstantProductSolver(
        venue.clock, venue.verifier, ws(venue), flat, api_key=key, seed=seed,
        initial_balances=POOL, margin_bps=margin_bps,
    )  # fmt: skip


def fixed(venue: Venue, *, spread: int = 40, key: str = "k-b", seed: int = 2, **kw: Any) -> CompetingSolver:
    return CompetingSolver(
        venue.clock, venue.verifier, ws(venue), flat, api_key=key, seed=seed,
        config=SolverConfig(spread_bps=Decimal(spread), **kw),
        initial_balances={BTC: 10**8, EURE: 10**5 * EUR},
    )  # fmt: skip


def user(venue: Venue, seed: int) -> SimUser:
    u = SimUser(
        venue.clock, venue.relay, venue.verifier, flat, seed=seed, config=UserFlowConfig(),
        initial_balances={BTC: 10**8, EURE: 10**4 * EUR},
    )  # fmt: skip
    u.fund()
    return u


SELL_60 = PlannedRequest(
    seq=1, delay_s=0.0, sell_base=True, exact_in=True, notional_eur=Decimal(60), informed=False,
    min_deadline_ms=60000,
)  # fmt: skip
REQ = {"defuse_asset_identifier_in": BTC, "defuse_asset_identifier_out": EURE, "exact_amount_in": "100000"}


def quote_event(quote_id: str = "q1", amount: str = "100000", *, exact_in: bool = True) -> dict[str, Any]:
    side = "exact_amount_in" if exact_in else "exact_amount_out"
    return {
        "quote_id": quote_id,
        "defuse_asset_identifier_in": BTC,
        "defuse_asset_identifier_out": EURE,
        side: amount,
        "min_deadline_ms": 60000,
    }


# ---------------------------------------------------------------------- constant product: pure parts


def test_amm_formulas_match_the_reference_and_round_against_the_pool() -> None:
    r_in, r_out, m = 10**8, 60_000 * EUR, 30
    out = amm_amount_out(10**6, r_in, r_out, m)
    assert out == (10**6 * 9970 * r_out) // (r_in * 10000 + 10**6 * 9970)
    # k never falls: the pool ends with at least its product
    assert (r_in + 10**6) * (r_out - out) >= r_in * r_out
    needed = amm_amount_in(out, r_in, r_out, m)
    assert needed is not None and needed <= 10**6  # ceiled, and never more than the exact-in ask
    assert amm_amount_in(out, r_in, r_out, m) == -(-(r_in * out * 10000) // ((r_out - out) * 9970))
    assert amm_amount_in(r_out, r_in, r_out, m) is None  # cannot pay its whole reserve
    assert amm_amount_out(0, r_in, r_out, m) == 0


def test_one_legacy_nonce_per_reserve_state(venue: Venue) -> None:
    solver = amm(venue)
    solver.fund()
    first = solver.make_response(quote_event("q1"))
    second = solver.make_response(quote_event("q2", "50000"))
    assert first is not None and second is not None
    n1, n2 = (base64.b64decode(r["signed_data"]["payload"]["nonce"]) for r in (first, second))
    assert n1 == n2 == reserves_nonce(10**8, 60_000 * EUR)  # sha256("reserves:<base>:<quote>")
    assert isinstance(decode_nonce(n1), LegacyNonce)
    venue.verifier.credit(solver.account_id, BTC, 1)  # balances change: a new state, a new nonce
    third = solver.make_response(quote_event("q3"))
    assert third is not None
    assert base64.b64decode(third["signed_data"]["payload"]["nonce"]) == reserves_nonce(
        10**8 + 1, 60_000 * EUR
    )
    assert len(solver.nonces_used) == 2
    # priced from the reserves: 0.001 BTC at the 60 000 pool, 10 bips margin, floored
    assert int(first["quote_output"]["amount_out"]) == amm_amount_out(100_000, 10**8, 60_000 * EUR, 10)
    assert solver.make_response(quote_event("q4", str(60_000 * EUR), exact_in=False)) is None


# ---------------------------------------------------------------------- ranking drops and fallback


async def test_second_quote_on_one_nonce_is_dropped_at_ranking_and_user_gets_next_best() -> None:
    v, relay = await _venue(early_close=False)
    pool, wide = amm(v), fixed(v, spread=40)
    taker = user(v, 7)
    for s in (pool, wide):
        await s.start()
    try:
        await asyncio.gather(pool.wait_ready(), wide.wait_ready())
        first = await relay.request_quote(dict(REQ))
        assert first is not None and len(first) == 2
        assert first[0]["quote_hash"] in pool.sent  # the pool is best
        second_task = asyncio.create_task(relay.request_quote(dict(REQ)))
        await asyncio.sleep(0.15)  # both solvers answered the second request; its window is open
        pool_second = [q for q in pool.sent.values() if q.quote_hash != first[0]["quote_hash"]]
        assert len(pool_second) == 1 and pool_second[0].nonce == pool.sent[first[0]["quote_hash"]].nonce
        result = await relay.publish_intent([first[0]["quote_hash"]], taker.sign_acceptance(first[0]))
        assert result["status"] == "OK", result
        second = await second_task
        assert second is not None and len(second) == 1  # the pool's dead quote is not offered
        assert second[0]["quote_hash"] in wide.sent
        assert relay.stats()["counts"]["quote_candidates_dropped_nonce"] == 1
        again = await relay.publish_intent([second[0]["quote_hash"]], taker.sign_acceptance(second[0]))
        assert again["status"] == "OK", again
    finally:
        for s in (pool, wide):
            await s.stop()
        await relay.stop()


async def test_user_falls_back_when_the_best_quote_nonce_died_after_ranking() -> None:
    # while the first fill is on its way to the chain the second user ranks and publishes the same
    # nonce; it lands second, fails with "nonce was already used", and the user takes the next best
    venue, relay = await _venue(settlement_delay_ms=200)
    pool, wide = amm(venue), fixed(venue, spread=40)
    one, two = user(venue, 1), user(venue, 2)
    for s in (pool, wide):
        await s.start()
    try:
        await asyncio.gather(pool.wait_ready(), wide.wait_ready())
        sell_50 = dataclasses.replace(SELL_60, notional_eur=Decimal(50))  # another amount: another quote hash
        a, b = await asyncio.gather(one.handle(SELL_60), two.handle(sell_50))
        assert a.quotes == b.quotes == 2  # both ranked the pool's one-nonce quote first
        assert all(o.publish is not None and o.publish["status"] == "OK" for o in (a, b)), (a, b)
        assert one.counts["fallbacks"] + two.counts["fallbacks"] == 1
        assert one.counts["published_ok"] + two.counts["published_ok"] == 2
        assert venue.verifier.balance_of(wide.account_id, BTC) > 10**8  # one of them fell back to it
        assert venue.verifier.balance_of(pool.account_id, BTC) > 10**8
    finally:
        for s in (pool, wide):
            await s.stop()
        await relay.stop()


# ---------------------------------------------------------------------- the tight solver


def tight(clock: Any, verifier: Verifier, price_at: Any, **kw: Any) -> TightSolver:
    solver = TightSolver(
        clock, verifier, "ws://unused", price_at, api_key=None, seed=3,
        config=SolverConfig(spread_bps=Decimal(10)), initial_balances={BTC: 10**8, EURE: 10**5 * EUR}, **kw,
    )  # fmt: skip
    solver.fund()
    return solver


def _fill_then_mark(path_after: Decimal) -> TightSolver:
    clock = ManualClock()
    t0 = clock.now_ns()

    def price(ns: int) -> Decimal:
        return MID if ns < t0 + 2 * 10**9 else path_after

    solver = tight(clock, Verifier(clock), price, markout_ms=5000, lead_ms=0)
    response = solver.make_response(quote_event())  # the solver buys 0.001 BTC at mid - 10 bps
    assert response is not None
    assert solver.spread_bps() == Decimal(10)
    qh = next(iter(solver.sent))
    solver.on_fill({"quote_hash": qh, "intent_hash": "x", "tx_hash": "y"})
    clock.advance(4 * 10**9)
    assert solver.spread_bps() == Decimal(10)  # not marked before the horizon
    clock.advance(2 * 10**9)
    solver.spread_bps()
    return solver


def test_tight_solver_widens_after_adverse_fills_only() -> None:
    adverse = _fill_then_mark(MID * Decimal("0.99"))  # it bought, then the price fell 100 bps
    assert adverse.markouts[0].bps < 0 and adverse.average_markout_bps is not None
    assert adverse.spread_bps() == Decimal(10) - adverse.average_markout_bps  # ~ 10 + 90
    assert adverse.spread_bps() > 90
    good = _fill_then_mark(MID * Decimal("1.01"))
    assert good.markouts[0].bps > 0 and good.spread_bps() == Decimal(10)
    capped = _fill_then_mark(MID * Decimal("0.5"))
    assert capped.spread_bps() == Decimal(200)
    # same fills, same path: the same spread (deterministic)
    assert _fill_then_mark(MID * Decimal("0.99")).spread_bps() == adverse.spread_bps()


def test_tight_solver_prices_off_the_leading_price() -> None:
    clock = ManualClock()
    t0 = clock.now_ns()

    def price(ns: int) -> Decimal:
        return MID if ns < t0 + 200 * 10**6 else MID * Decimal("1.01")

    ahead = tight(clock, Verifier(clock), price, lead_ms=300)
    late = tight(clock, Verifier(clock), price, lead_ms=0)
    a, b = (s.make_response(quote_event()) for s in (ahead, late))
    assert a is not None and b is not None
    # 0.001 BTC bought at (lead mid) * (1 - 10 bps): the leading solver already pays the new price
    assert int(a["quote_output"]["amount_out"]) == 60_000 * 101 * 9990 * EUR // 10**9
    assert int(b["quote_output"]["amount_out"]) == 60 * 9990 * EUR // 10**4
    with pytest.raises(InputError):
        tight(clock, Verifier(clock), price, max_spread_bps=Decimal(5))


# ---------------------------------------------------------------------- window and settlement


@pytest.mark.parametrize("early_close", [True, False])
async def test_window_setting_changes_when_the_relay_closes(early_close: bool) -> None:
    v, relay = await _venue(window_ms=800, early_close=early_close)
    solver = fixed(v, key="k-a", seed=1)
    await solver.start()
    try:
        await solver.wait_ready()
        started = time.monotonic()
        quotes = await relay.request_quote(dict(REQ))
        took = time.monotonic() - started
        assert quotes is not None and len(quotes) == 1
        if early_close:  # every subscribed solver answered: closes at once
            assert took < 0.4
        else:  # always the full window
            assert took >= 0.79
    finally:
        await solver.stop()
        await relay.stop()


async def test_settlement_delay_lands_the_fill_later() -> None:
    v, relay = await _venue(settlement_delay_ms=400)
    solver = fixed(v, key="k-a", seed=1)
    taker = user(v, 9)
    await solver.start()
    try:
        await solver.wait_ready()
        quotes = await relay.request_quote(dict(REQ))
        assert quotes is not None
        height = v.chain.height
        started = time.monotonic()
        task = asyncio.create_task(
            relay.publish_intent([quotes[0]["quote_hash"]], taker.sign_acceptance(quotes[0]))
        )
        await asyncio.sleep(0.1)
        assert not task.done() and v.verifier.balance_of(solver.account_id, BTC) == 10**8  # not on chain yet
        result = await task
        assert result["status"] == "OK" and time.monotonic() - started >= 0.39
        assert relay.intent_status(result["intent_hash"])["status"] == "SETTLED"
        record = v.chain.transactions[-1]
        assert record.block_height >= height + 3  # 100 ms blocks: landed four blocks later
        assert v.verifier.balance_of(solver.account_id, BTC) == 10**8 + 100_000
    finally:
        await solver.stop()
        await relay.stop()


# ---------------------------------------------------------------------- scenario


def test_scenario_solver_kinds_and_chain_settings() -> None:
    s = Scenario.from_toml(
        """
[price]
start_price = 50000
[near]
final_lag_blocks = 3
settlement_delay_ms = 1200
[[solvers]]
kind = "amm"
margin_bps = 25
[[solvers]]
kind = "tight"
spread_bps = 8
lead_ms = 250
widen_factor = 2
[[solvers]]
spread_bps = 35
""",
        "t.toml",
    )
    amm_spec, tight_spec, plain = s.solvers
    assert (s.near.final_lag_blocks, s.near.settlement_delay_ms, s.near.lagged_views) == (3, 1200, True)
    assert solver_class(amm_spec) is ConstantProductSolver and solver_kwargs(amm_spec) == {"margin_bps": 25}
    assert dict(amm_spec.balances) == {BTC: 10**8, EURE: 50_000 * EUR}  # a pool at the start price
    assert solver_class(tight_spec) is TightSolver and solver_kwargs(tight_spec)["lead_ms"] == 250
    assert solver_kwargs(tight_spec)["widen_factor"] == Decimal(2)
    assert solver_class(plain) is CompetingSolver and plain.kind == "fixed"
    assert Scenario().near.final_lag_blocks == 2 and Scenario().near.settlement_delay_ms == 0
    with pytest.raises(InputError, match=r"kind: must be one of fixed, amm, tight"):
        Scenario.from_toml('[[solvers]]\nkind = "x"\n', "t.toml")
    with pytest.raises(InputError, match="max_spread_bps"):
        Scenario.from_toml('[[solvers]]\nkind = "tight"\nspread_bps = 50\nmax_spread_bps = 10\n', "t.toml")
    with pytest.raises(InputError, match="history_blocks"):
        Scenario.from_toml("[near]\nfinal_lag_blocks = 5\nhistory_blocks = 5\n", "t.toml")


def test_same_seed_same_quotes() -> None:
    def run(seed: int) -> list[Any]:
        clock = ManualClock(1_800_000_000 * 10**9)
        verifier = Verifier(clock)
        pool = ConstantProductSolver(
            clock,
            verifier,
            "ws://unused",
            flat,
            api_key=None,
            seed=seed,
            initial_balances=POOL,
            margin_bps=10,
        )
        pool.fund()
        lead = tight(clock, verifier, lambda ns: MID + Decimal(ns % 997), lead_ms=300)
        out: list[Any] = []
        for i in range(5):
            clock.advance(250 * 10**6)
            out.append(pool.make_response(quote_event(f"q{i}", str(10_000 * (i + 1)))))
            quoted = lead.make_response(quote_event(f"q{i}", str(10_000 * (i + 1))))
            out.append(None if quoted is None else quoted["quote_output"])  # its nonces are random
            verifier.credit(pool.account_id, BTC, 1 + i)  # its reserves move: the next nonce differs
        return out

    assert run(4) == run(4)
    assert run(4) != run(5)  # another key: other signatures
