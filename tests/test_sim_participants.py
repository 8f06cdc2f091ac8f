"""Simulated users and the competing solver, against the real relay sockets and the simulated Verifier."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from intents_mm.clock import SystemClock
from intents_mm.domain.assets import BTC_EURE
from intents_mm.sim.near_rpc import SimNear
from intents_mm.sim.participants import (
    CompetingSolver,
    PlannedRequest,
    SimUser,
    SolverConfig,
    UserFlowConfig,
    quote_other_side,
)
from intents_mm.sim.relay import SimRelay
from intents_mm.sim.verifier import Verifier

BTC = "nep141:btc.omft.near"
EURE = "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"
EUR = 10**18
MID = Decimal(60000)


@dataclass
class Venue:
    clock: SystemClock
    verifier: Verifier
    relay: SimRelay
    base: str


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    clock = SystemClock()
    verifier = Verifier(clock)
    relay = SimRelay(
        clock,
        SimNear(clock, verifier),
        verifier,
        api_keys={"k-a": "a", "k-b": "b", "k-u": "u"},
        window_ms=300,
    )
    base = await relay.start()
    try:
        yield Venue(clock, verifier, relay, base)
    finally:
        await relay.stop()


def flat(_ns: int) -> Decimal:
    return MID


def make_user(venue: Venue, seed: int = 1, **cfg: Any) -> SimUser:
    return SimUser(
        venue.clock,
        venue.relay,
        venue.verifier,
        cfg.pop("price_at", flat),
        seed=seed,
        config=UserFlowConfig(**cfg),
        initial_balances={BTC: 10**8, EURE: 10_000 * EUR},
    )


def make_solver(
    venue: Venue, *, key: str = "k-a", seed: int = 1, spread: int = 40, **kw: Any
) -> CompetingSolver:
    return CompetingSolver(
        venue.clock,
        venue.verifier,
        venue.base.replace("http", "ws") + "/ws",
        kw.pop("price_at", flat),
        api_key=key,
        seed=seed,
        config=SolverConfig(spread_bps=Decimal(spread), **kw),
        initial_balances={BTC: 10**8, EURE: 100_000 * EUR},
    )


def planned(
    *, sell_base: bool = True, exact_in: bool = True, notional: str = "60", informed: bool = False
) -> PlannedRequest:
    return PlannedRequest(
        seq=1,
        delay_s=0.0,
        sell_base=sell_base,
        exact_in=exact_in,
        notional_eur=Decimal(notional),
        informed=informed,
        min_deadline_ms=60000,
    )


# ---------------------------------------------------------------------------- pure parts


def test_same_seed_same_request_sequence(venue: Venue) -> None:
    a, b, c = make_user(venue, 5), make_user(venue, 5), make_user(venue, 6)
    seq_a = [a.next_request() for _ in range(50)]
    assert seq_a == [b.next_request() for _ in range(50)]
    assert seq_a != [c.next_request() for _ in range(50)]
    assert a.account_id == b.account_id != c.account_id
    assert len(a.account_id) == 64


def test_request_distribution(venue: Venue) -> None:
    user = make_user(
        venue,
        11,
        median_notional_eur=Decimal(3),
        max_notional_eur=Decimal(50),
        exact_out_share=0.3,
        informed_share=0.2,
        rate_per_s=2.0,
    )
    reqs = [user.next_request() for _ in range(4000)]
    notionals = [r.notional_eur for r in reqs]
    assert max(notionals) <= 50 and min(notionals) >= Decimal("0.5")
    assert Decimal("2.5") < statistics.median(notionals) < Decimal("3.6")
    assert 0.25 < sum(not r.exact_in for r in reqs) / 4000 < 0.35
    assert 0.15 < sum(r.informed for r in reqs) / 4000 < 0.25
    assert 0.45 < sum(r.sell_base for r in reqs) / 4000 < 0.55
    assert 0.45 < statistics.fmean(r.delay_s for r in reqs) < 0.55
    assert {r.min_deadline_ms for r in reqs} == {60000, 30000}
    assert sum(r.min_deadline_ms == 60000 for r in reqs) > 3000


def test_build_request_fixed_side(venue: Venue) -> None:
    user = make_user(venue)
    sell_in = user.build_request(planned(notional="60"), MID)
    assert sell_in == {
        "defuse_asset_identifier_in": BTC,
        "defuse_asset_identifier_out": EURE,
        "exact_amount_in": "100000",
        "min_deadline_ms": 60000,
    }
    buy_out = user.build_request(planned(sell_base=False, exact_in=False, notional="60"), MID)
    assert buy_out["defuse_asset_identifier_in"] == EURE and buy_out["exact_amount_out"] == "100000"
    buy_in = user.build_request(planned(sell_base=False, notional="2.5"), MID)
    assert buy_in["exact_amount_in"] == str(25 * EUR // 10)


def test_quote_other_side_rounds_against_the_solver() -> None:
    s = Decimal(50)
    # solver buys BTC at 59700: exact-in sats -> gives EURe (floor); exact-out EURe -> asks sats (ceil)
    assert quote_other_side(BTC_EURE, MID, s, asset_in=BTC, exact_in=True, fixed=100_000) == 597 * EUR // 10
    assert quote_other_side(BTC_EURE, MID, s, asset_in=BTC, exact_in=True, fixed=1) == 597_000_000_000_000
    assert (
        quote_other_side(BTC_EURE, MID, s, asset_in=BTC, exact_in=False, fixed=597 * EUR // 10 + 1) == 100_001
    )
    # solver sells BTC at 60300: exact-in EURe -> gives sats (floor); exact-out sats -> asks EURe (ceil)
    assert (
        quote_other_side(BTC_EURE, MID, s, asset_in=EURE, exact_in=True, fixed=603 * EUR // 10 - 1) == 99_999
    )
    assert quote_other_side(BTC_EURE, MID, s, asset_in=EURE, exact_in=False, fixed=100_000) == 603 * EUR // 10
    assert (
        quote_other_side(BTC_EURE, Decimal("60000.01"), s, asset_in=EURE, exact_in=False, fixed=1)
        == 603_000_100_500_000
    )


def test_user_decisions(venue: Venue) -> None:
    now = venue.clock.now_ns()
    falling = make_user(
        venue, price_at=lambda ns: MID if ns <= now else MID * Decimal("0.99"), tolerance_bps=Decimal(100)
    )
    # uninformed: limit is mid -/+ 100 bps
    assert falling.accepts(planned(), Decimal(59401), now)
    assert not falling.accepts(planned(), Decimal(59399), now)
    assert falling.accepts(planned(sell_base=False), Decimal(60599), now)
    assert not falling.accepts(planned(sell_base=False), Decimal(60601), now)
    # informed: the price will fall 1%; selling at 59700 is stale (good for the user), buying at 60300 is not
    assert falling.accepts(planned(informed=True), Decimal(59700), now)
    assert not falling.accepts(planned(informed=True, sell_base=False), Decimal(60300), now)
    assert not falling.accepts(planned(informed=True), Decimal(59410), now)  # within 5 bps edge of 59400


# ---------------------------------------------------------------------------- against the relay


async def test_user_trades_with_competing_solver_in_process(venue: Venue) -> None:
    solver = make_solver(venue)
    user = make_user(venue)
    user.fund()
    await solver.start()
    try:
        await solver.wait_ready()
        user_btc = venue.verifier.balance_of(user.account_id, BTC)
        user_eure = venue.verifier.balance_of(user.account_id, EURE)
        outcome = await user.handle(planned(notional="60"))
        assert outcome.decision == "accepted", outcome
        assert outcome.publish is not None and outcome.publish["status"] == "OK", outcome.publish
        assert outcome.best_price_eur == Decimal(59760)  # mid 60000 - 40 bps
        await solver.wait_status(1)
        qh = solver.statuses[-1]["quote_hash"]
        assert solver.sent[qh].amount_in == 100_000 and solver.sent[qh].amount_out == 5976 * EUR // 100
        fee = venue.verifier.fee_pips
        gives = -(-100_000 * 1_000_000 // (1_000_000 - fee))
        gets = 5976 * EUR // 100 - (-(-5976 * EUR // 100 * fee // 1_000_000))
        assert venue.verifier.balance_of(user.account_id, BTC) == user_btc - gives
        assert venue.verifier.balance_of(user.account_id, EURE) == user_eure + gets
        assert solver.stats.responses_rejected == 0, list(solver.stats.rejections)
    finally:
        await solver.stop()


async def test_user_over_http_takes_best_of_two_solvers(venue: Venue) -> None:
    wide = make_solver(venue, key="k-a", seed=1, spread=60)
    tight = make_solver(venue, key="k-b", seed=2, spread=30)
    user = SimUser(
        venue.clock,
        venue.relay,
        venue.verifier,
        flat,
        seed=3,
        transport="http",
        rpc_url=venue.base + "/rpc",
        api_key="k-u",
        initial_balances={BTC: 10**8, EURE: 10**4 * EUR},
    )
    for s in (wide, tight):
        await s.start()
    try:
        for s in (wide, tight):
            await s.wait_ready()
        user.fund()
        outcome = await user.handle(planned(sell_base=False, exact_in=False, notional="60"))
        assert outcome.quotes == 2 and outcome.decision == "accepted"
        assert outcome.publish is not None and outcome.publish["status"] == "OK"
        assert outcome.best_price_eur == Decimal(60180)
        await tight.wait_status(1)
        assert wide.statuses_received == 0
        assert venue.verifier.balance_of(tight.account_id, BTC) == 10**8 - 100_000
        assert venue.verifier.balance_of(wide.account_id, BTC) == 10**8
        sent = tight.sent[tight.statuses[0]["quote_hash"]]
        assert sent.status == "ok" and sent.amount_in == 6018 * EUR // 100
    finally:
        await user.stop()
        for s in (wide, tight):
            await s.stop()


async def test_informed_user_only_hits_stale_quotes(venue: Venue) -> None:
    now = venue.clock.now_ns()
    rising = lambda ns: MID if ns <= now + 10**9 else MID * Decimal("1.02")  # noqa: E731
    solver = make_solver(venue)
    user = make_user(venue, price_at=rising)
    user.fund()
    await solver.start()
    try:
        await solver.wait_ready()
        sells = await user.handle(planned(informed=True))  # price will rise: selling now is bad
        assert sells.decision == "declined"
        buys = await user.handle(planned(informed=True, sell_base=False))  # buying at 60240 < 61200
        assert buys.decision == "accepted" and buys.publish is not None and buys.publish["status"] == "OK"
        assert user.counts["informed_accepted"] == 1 and user.counts["declined"] == 1
    finally:
        await solver.stop()


async def test_solver_reconnects_and_skips_what_it_cannot_fund(venue: Venue) -> None:
    solver = make_solver(venue, reconnect_delay_s=0.05)
    user = make_user(venue)
    user.fund()
    await solver.start()
    try:
        await solver.wait_ready()
        assert await venue.relay.disconnect_all() == 1
        for _ in range(200):
            if solver.stats.connects == 2 and solver.ready:
                break
            await asyncio.sleep(0.01)
        assert solver.stats.connects == 2 and solver.ready
        big = await user.handle(planned(sell_base=False, exact_in=False, notional="1000000"))  # > 1 BTC
        assert big.decision == "no_quote" and solver.stats.skipped["balance"] == 1
        ok = await user.handle(planned(notional="6"))
        assert ok.decision == "accepted" and ok.publish is not None and ok.publish["status"] == "OK"
    finally:
        await solver.stop()


async def test_user_loop_runs_and_stops_cleanly(venue: Venue) -> None:
    solver = make_solver(venue)
    user = make_user(venue, 9, rate_per_s=40.0, wait_ms=100)
    await solver.start()
    try:
        await solver.wait_ready()
        await user.start()
        await asyncio.sleep(0.6)
        await user.stop()
        assert user.counts["requests"] >= 5
        assert user.counts["errors"] == 0
        assert (
            user.counts["accepted"] + user.counts["declined"] + user.counts["no_quote"]
            <= user.counts["requests"]
        )
        assert user.counts["published_ok"] >= 1
        published = [o.publish for o in user.outcomes if o.publish is not None]
        assert published and all(p["status"] == "OK" for p in published), published
    finally:
        await solver.stop()
