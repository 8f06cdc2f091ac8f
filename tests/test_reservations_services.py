"""Reservations across services over real sockets: strategy-engine, inventory-sync, liquidity-manager
and history-writer against the simulated venue (NEAR RPC and bridge on loopback), memory bus and a
migrated SQLite store; the withdrawal hold protocol also on NATS.

- a fill keeps its reservation until a snapshot whose balances show the settlement (the measured
  19,884-of-20,000 sat double promise cannot happen);
- a quote whose reply timed out (``error`` with a quote hash) keeps its reservation, and so do the
  live quotes and unconfirmed fills of a strategy-engine that restarts (rebuilt from the store);
- ``/withdraw`` and ``/withdrawal-estimate`` check credited minus reserved, refuse without a fresh
  reservation summary, and the strategy holds a withdrawal until a snapshot shows its burn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from intents_mm.bus.nats import NatsBus
from intents_mm.clock import SYSTEM_CLOCK
from intents_mm.messages import (
    ExecuteTrade,
    InventorySnapshot,
    LiquidityAction,
    QuoteStatus,
    ReferencePrice,
    ReservationSummary,
    SwapRequest,
    TradeDecision,
    TradeResult,
)
from liquidity_testkit import (
    BTC_ID,
    EURE_ID,
    EURE_UNIT,
    GNOSIS_ADDRESS,
    Services,
    eventually,
    run_services,
    sim_venue,
)

S = 10**9
MS = 10**6
STRATEGY, INVENTORY, LIQUIDITY, HISTORY = (
    "strategy-engine",
    "inventory-sync",
    "liquidity-manager",
    "history-writer",
)
LIMITS = {
    "STRATEGY_MAX_NOTIONAL_EURE": "50",
    "STRATEGY_MAX_OUTSTANDING_EURE": "100",
    "STRATEGY_INVENTORY_STALE_MS": "60000",
}
#: 20,000 sat is the middle of [0, 40,000]: no inventory skew against buying BTC
NEUTRAL = {**LIMITS, "STRATEGY_MAX_BTC": "0.0004"}
_n = iter(range(10**6))


def reference() -> ReferencePrice:
    now = SYSTEM_CLOCK.now_ns()
    return ReferencePrice(
        pair="BTC/EUR",
        mid=Decimal(60_000),
        quality="ok",
        sources=[],
        fresh_sources=4,
        quorum=2,
        volatility_bps_per_sqrt_s=Decimal("1.5"),
        computed_ts_ns=now,
    )


def sell_btc(sats: int) -> SwapRequest:
    """The user gives EURe and wants exactly ``sats`` of our BTC."""
    now = SYSTEM_CLOCK.now_ns()
    return SwapRequest(
        quote_id=f"rq-{next(_n)}",
        asset_in=EURE_ID,
        asset_out=BTC_ID,
        exact_amount_out=sats,
        min_deadline_ms=60_000,
        received_ts_ns=now,
        relay_deadline_ns=now + 3 * S,
    )


def buy_btc(sats: int) -> SwapRequest:
    """The user gives ``sats`` BTC and wants our EURe."""
    now = SYSTEM_CLOCK.now_ns()
    return SwapRequest(
        quote_id=f"rq-{next(_n)}",
        asset_in=BTC_ID,
        asset_out=EURE_ID,
        exact_amount_in=sats,
        min_deadline_ms=60_000,
        received_ts_ns=now,
        relay_deadline_ns=now + 3 * S,
    )


async def send(svc: Services, subject: str, payload: Any) -> None:
    await svc.running.service(STRATEGY).publish(subject, payload)


def snapshots(svc: Services) -> list[InventorySnapshot]:
    return [p for p in svc.payloads("inventory.snapshot") if isinstance(p, InventorySnapshot)]


async def decide(svc: Services, req: SwapRequest) -> TradeDecision:
    await send(svc, "market.reference_price", reference())
    await send(svc, "demand.swap_request", req)
    found: list[TradeDecision] = []

    def decided() -> bool:
        found[:] = [
            p
            for p in svc.payloads("decision.trade_decision")
            if isinstance(p, TradeDecision) and p.quote_id == req.quote_id
        ]
        return bool(found)

    await eventually(decided)
    return found[0]


def command_for(svc: Services, quote_id: str) -> ExecuteTrade:
    (cmd,) = [
        p for p in svc.payloads("cmd.execute_trade") if isinstance(p, ExecuteTrade) and p.quote_id == quote_id
    ]
    return cmd


def result(cmd: ExecuteTrade, outcome: str, quote_hash: str | None) -> TradeResult:
    return TradeResult(
        command_id=cmd.command_id,
        quote_id=cmd.quote_id,
        outcome=outcome,  # type: ignore[arg-type]
        quote_hash=quote_hash,
        nonce_b64="bm9uY2U=" if quote_hash else None,
        deadline_ns=SYSTEM_CLOCK.now_ns() + 70 * S if quote_hash else None,
        error="no reply from the relay within 3 s" if outcome == "error" else None,
        amount_in=cmd.amount_in,
        amount_out=cmd.amount_out,
        asset_in=cmd.asset_in,
        asset_out=cmd.asset_out,
    )


async def reservations(svc: Services) -> dict[str, Any]:
    status, body = await svc.get(STRATEGY, "/state")
    assert status == 200
    res: dict[str, Any] = body["reservations"]
    return res


async def quote_live(
    svc: Services, req: SwapRequest, outcome: str = "accepted", quote_hash: str | None = None
) -> ExecuteTrade:
    decision = await decide(svc, req)
    assert decision.outcome == "quote", (decision.reason, decision.inputs)
    await eventually(lambda: any(p.quote_id == req.quote_id for p in svc.payloads("cmd.execute_trade")))
    cmd = command_for(svc, req.quote_id)
    await send(svc, "exec.trade_result", result(cmd, outcome, quote_hash))
    return cmd


@pytest.fixture
async def nats_bus(nats_server_url: str, stream_prefix: str) -> AsyncIterator[NatsBus]:
    bus = NatsBus(nats_server_url, stream=f"{stream_prefix}_S", subject_prefix=stream_prefix.lower())
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
async def trading(sqlite_url: str) -> AsyncIterator[tuple[Any, Services]]:
    async with (
        sim_venue(btc=20_000, eure=100 * EURE_UNIT) as venue,
        run_services([STRATEGY, INVENTORY], venue.config(**LIMITS), sqlite_url) as svc,
    ):
        await eventually(lambda: bool(snapshots(svc)))
        status, _ = await svc.post(STRATEGY, "/arm")
        assert status == 200
        yield venue, svc


async def test_a_fill_keeps_its_reservation_until_a_snapshot_shows_the_settlement(
    trading: tuple[Any, Services],
) -> None:
    venue, svc = trading
    cmd = await quote_live(svc, sell_btc(19_884), quote_hash="QH1")
    # the relay reports the settlement, but the balances the RPC answers (final) do not show it yet
    count = len(snapshots(svc))
    await send(
        svc,
        "demand.quote_status",
        QuoteStatus(quote_hash="QH1", intent_hash="I1", tx_hash="T1", received_ts_ns=1),
    )
    await eventually(lambda: len(snapshots(svc)) > count + 1)  # read after the fill, settlement not in it
    assert all(s.credited[BTC_ID] == 20_000 and s.settled_quote_hashes == [] for s in snapshots(svc))
    res = await reservations(svc)
    assert res["live"] == 1 and res["filled_unconfirmed"] == 1 and res["reserved_out"]["BTC"] == "0.00019884"
    # so the same sats are not promised again
    again = await decide(svc, sell_btc(19_884))
    assert again.outcome == "decline" and again.reason == "inventory_available", again.reason
    # the settlement lands in the balances: that snapshot names it and the reservation goes with it
    venue.verifier.credit(venue.account, EURE_ID, cmd.amount_in)
    venue.verifier.ft_withdraw(venue.account, "btc.omft.near", "elsewhere.near", cmd.amount_out)
    await eventually(lambda: any(s.settled_quote_hashes == ["QH1"] for s in snapshots(svc)))
    shown = next(s for s in snapshots(svc) if s.settled_quote_hashes)
    assert shown.credited[BTC_ID] == 116 and shown.unexplained_changes == []
    await eventually(lambda: svc.running.service(STRATEGY).book.live == {})  # type: ignore[attr-defined]
    res = await reservations(svc)
    assert res["live"] == 0 and res["fills_confirmed"] == 1 and res["reserved_out"]["BTC"] == "0"
    after = await decide(svc, sell_btc(19_884))
    assert after.outcome == "decline" and after.reason == "inventory_available"  # 116 sat remain


async def test_reply_timeout_keeps_the_reservation_and_refusals_release(
    trading: tuple[Any, Services],
) -> None:
    _venue, svc = trading
    await quote_live(svc, sell_btc(15_000), outcome="error", quote_hash="QH-timeout")
    await quote_live(svc, sell_btc(4_000), outcome="rejected", quote_hash="QH-refused")
    await quote_live(svc, sell_btc(1_000), outcome="skipped_disarmed", quote_hash=None)  # never sent

    async def settled_to_one() -> bool:
        return (await reservations(svc))["live"] == 1

    await eventually(settled_to_one)
    res = await reservations(svc)
    assert res["reserved_out"]["BTC"] == "0.00015"  # only the quote that may be at the relay
    inventory = svc.running.service(INVENTORY)
    assert "settle:QH-timeout" in inventory.reconciler.expectations  # type: ignore[attr-defined]
    assert "settle:QH-refused" not in inventory.reconciler.expectations  # type: ignore[attr-defined]
    declined = await decide(svc, sell_btc(6_000))
    assert declined.reason == "inventory_available"


async def test_a_restarted_strategy_rebuilds_the_book_from_the_store(sqlite_url: str) -> None:
    async with sim_venue(btc=20_000, eure=100 * EURE_UNIT) as venue:
        config = venue.config(**LIMITS)
        async with run_services([STRATEGY, INVENTORY, HISTORY], config, sqlite_url) as svc:
            await eventually(lambda: bool(snapshots(svc)))
            assert (await svc.post(STRATEGY, "/arm"))[0] == 200
            await quote_live(svc, sell_btc(12_000), quote_hash="QH-live")
            await quote_live(svc, sell_btc(5_000), outcome="error", quote_hash="QH-maybe")
            await send(
                svc,
                "demand.quote_status",
                QuoteStatus(quote_hash="QH-live", intent_hash="I", tx_hash="T", received_ts_ns=1),
            )

            async def stored() -> bool:
                counts = await svc.store.counts()
                return counts["trade_execution_results"] >= 2 and counts["quote_status_events"] >= 1

            await eventually(stored)
        async with run_services([STRATEGY, INVENTORY], config, sqlite_url) as svc:
            res = await reservations(svc)
            assert res["rebuilt"]["live"] == 2 and res["rebuilt"]["filled_unconfirmed"] == 1
            assert res["reserved_out"]["BTC"] == "0.00017"
            await eventually(lambda: bool(snapshots(svc)))
            assert (await svc.post(STRATEGY, "/arm"))[0] == 200
            declined = await decide(svc, sell_btc(5_000))  # 20,000 credited, 17,000 still promised
            assert declined.outcome == "decline" and declined.reason == "inventory_available"
            ok = await decide(svc, sell_btc(2_500))
            assert ok.outcome == "quote", ok.reason


async def _unfreeze(svc: Services) -> None:
    status, body = await svc.post(LIQUIDITY, "/freeze-withdrawals", {"frozen": False})
    assert status == 200 and body == {"withdrawals_frozen": False}


def withdraw_body(amount: int, request_id: str) -> dict[str, Any]:
    return {
        "asset_id": EURE_ID,
        "amount": str(amount),
        "destination_address": GNOSIS_ADDRESS,
        "request_id": request_id,
    }


async def _withdrawals_against_reservations(svc: Services, venue: Any) -> None:
    assert (await svc.post(STRATEGY, "/arm"))[0] == 200
    await _unfreeze(svc)
    cmd = await quote_live(svc, buy_btc(5_000), quote_hash="QH-eure")  # promises ~3 EURe
    reserved = cmd.amount_out

    async def summary_shows_it() -> bool:
        status, body = await svc.get(LIQUIDITY, "/state")
        seen = body.get("reservations") or {}
        return status == 200 and seen.get("reserved_out", {}).get(EURE_ID) == str(reserved)

    await eventually(summary_shows_it)
    credited = 20 * EURE_UNIT
    too_much = credited - reserved + 1
    status, body = await svc.post(
        LIQUIDITY,
        "/withdrawal-estimate",
        {k: v for k, v in withdraw_body(too_much, "x").items() if k != "request_id"},
    )
    assert status == 200 and body["ok"] is False
    assert any("exceeds credited minus reserved" in p for p in body["problems"]), body["problems"]
    assert body["balance"]["available"] == str(credited - reserved)
    status, body = await svc.post(LIQUIDITY, "/withdraw", withdraw_body(too_much, "too-much"))
    assert status == 409 and "exceeds credited minus reserved" in body["error"], body
    assert f"reserved by live quotes {reserved}" in body["error"]
    assert venue.verifier.balance_of(venue.account, EURE_ID) == credited

    status, body = await svc.post(LIQUIDITY, "/withdraw", withdraw_body(10 * EURE_UNIT, "fits"))
    assert status == 200, (body.get("status"), body.get("error"))
    # the strategy held the withdrawal's 10 EURe until a snapshot showed the burn, then let go
    steps = [p for p in svc.payloads("risk.reservations") if isinstance(p, ReservationSummary)]
    assert steps == []  # not collected by the kit (a state broadcast, not history)
    await eventually(lambda: any(s.landed_withdrawals == ["fits"] for s in snapshots(svc)))

    async def hold_released() -> bool:
        return (await reservations(svc))["withdrawal_holds"] == {}

    await eventually(hold_released)
    assert venue.verifier.balance_of(venue.account, EURE_ID) == credited - 10 * EURE_UNIT
    # with the funds gone and ~3 EURe still promised, 8 EURe cannot leave
    status, body = await svc.post(LIQUIDITY, "/withdraw", withdraw_body(8 * EURE_UNIT, "after"))
    assert status == 409 and "exceeds credited minus reserved" in body["error"], body


async def test_withdraw_checks_credited_minus_reserved_and_holds_until_the_burn_shows(
    sqlite_url: str,
) -> None:
    async with (
        sim_venue(btc=20_000, eure=20 * EURE_UNIT) as venue,
        run_services([STRATEGY, INVENTORY, LIQUIDITY], venue.config(**NEUTRAL), sqlite_url) as svc,
    ):
        await eventually(lambda: bool(snapshots(svc)))
        await _withdrawals_against_reservations(svc, venue)


async def test_withdraw_and_hold_on_nats(sqlite_url: str, nats_bus: NatsBus) -> None:
    async with (
        sim_venue(btc=20_000, eure=20 * EURE_UNIT) as venue,
        run_services(
            [STRATEGY, INVENTORY, LIQUIDITY], venue.config(**NEUTRAL), sqlite_url, bus=nats_bus
        ) as svc,
    ):
        await eventually(lambda: bool(snapshots(svc)))
        await _withdrawals_against_reservations(svc, venue)


async def test_withdraw_without_a_reservation_summary_is_refused(sqlite_url: str) -> None:
    async with (
        sim_venue(eure=20 * EURE_UNIT) as venue,
        run_services([LIQUIDITY], venue.config(LIQUIDITY_RESERVATIONS_MAX_AGE_MS="500"), sqlite_url) as svc,
    ):
        await _unfreeze(svc)
        status, body = await svc.post(LIQUIDITY, "/withdraw", withdraw_body(5 * EURE_UNIT, "alone"))
        assert status == 409 and "no reservation summary (risk.reservations)" in body["error"]
        refused = [
            p
            for p in svc.payloads("liquidity.action")
            if isinstance(p, LiquidityAction) and p.status == "refused"
        ]
        assert refused and refused[-1].action_id == "alone"
        # a summary that stops coming goes stale
        lm = svc.running.service(LIQUIDITY)
        await lm.publish(  # type: ignore[attr-defined]
            "risk.reservations",
            ReservationSummary(reserved_out={}, live=0, seq=1, started_ns=1, ts_ns=SYSTEM_CLOCK.now_ns()),
        )
        await eventually(lambda: lm.reservations is not None)  # type: ignore[attr-defined]
        await asyncio.sleep(0.6)
        status, body = await svc.post(LIQUIDITY, "/withdraw", withdraw_body(5 * EURE_UNIT, "stale"))
        assert status == 409 and "reservation summary from strategy-engine is" in body["error"], body
        assert venue.verifier.balance_of(venue.account, EURE_ID) == 20 * EURE_UNIT
