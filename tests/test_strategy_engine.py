"""strategy-engine as a service: memory bus, real store, control API over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from intents_mm.app import Running, start_services, stop_services
from intents_mm.bus import make_bus
from intents_mm.bus.port import Bus, Delivery
from intents_mm.clock import SYSTEM_CLOCK
from intents_mm.config import load_config
from intents_mm.domain.assets import BTC, EURE
from intents_mm.messages import (
    ExecuteTrade,
    InventorySnapshot,
    OperatorAction,
    PortfolioMetrics,
    ReferencePrice,
    SwapRequest,
    TradeDecision,
    TradeResult,
    decode,
    encode,
    new_envelope,
)
from intents_mm.storage.migrate import migrate
from intents_mm.storage.store import HistoryStore

MS = 1_000_000


class Collector:
    def __init__(self) -> None:
        self.decisions: list[TradeDecision] = []
        self.commands: list[ExecuteTrade] = []
        self.changed = asyncio.Event()

    async def handler(self, d: Delivery) -> None:
        payload = decode(d.data).payload
        if isinstance(payload, TradeDecision):
            self.decisions.append(payload)
        elif isinstance(payload, ExecuteTrade):
            self.commands.append(payload)
        self.changed.set()
        await d.ack()

    async def wait_decisions(self, n: int) -> list[TradeDecision]:
        for _ in range(200):
            if len(self.decisions) >= n:
                return self.decisions
            await asyncio.sleep(0.01)
        raise AssertionError(f"expected {n} decisions, got {len(self.decisions)}")


async def publish(bus: Bus, subject: str, payload: Any) -> None:
    env = new_envelope(subject, payload, clock=SYSTEM_CLOCK)
    await bus.publish(subject, encode(env), msg_id=env.msg_id)


def reference(mid: str = "60000", quality: str = "ok", jump: bool = False) -> ReferencePrice:
    now = SYSTEM_CLOCK.now_ns()
    return ReferencePrice(
        pair="BTC/EUR",
        mid=Decimal(mid) if quality != "stale" else None,
        quality=quality,  # type: ignore[arg-type]
        sources=[],
        fresh_sources=4,
        quorum=2,
        volatility_bps_per_sqrt_s=Decimal("1.5"),
        jump_detected=jump,
        computed_ts_ns=now,
    )


def inventory(btc: int = 5_000_000, eure: int = 1000 * 10**18) -> InventorySnapshot:
    return InventorySnapshot(
        account_id="mm.near",
        credited={BTC.token_id: btc, EURE.token_id: eure},
        pending_deposits={},
        inflight_withdrawals={},
        block_height=1,
        read_ts_ns=SYSTEM_CLOCK.now_ns(),
        stale=False,
        fee_pips=1,
    )


_seq = iter(range(10**6))


def request(
    exact_in: int | None = 5_000, exact_out: int | None = None, min_deadline_ms: int = 60_000
) -> SwapRequest:
    now = SYSTEM_CLOCK.now_ns()
    return SwapRequest(
        quote_id=f"q-{next(_seq)}",
        asset_in=BTC.token_id,
        asset_out=EURE.token_id,
        exact_amount_in=exact_in,
        exact_amount_out=exact_out,
        min_deadline_ms=min_deadline_ms,
        partner_id="1click",
        received_ts_ns=now,
        relay_deadline_ns=now + 3000 * MS,
    )


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[tuple[Running, Collector, str]]:
    await migrate(sqlite_url)
    config = load_config({"STRATEGY_INVENTORY_STALE_MS": "60000"}, dotenv=None)
    bus = make_bus(None)
    await bus.start()
    store = HistoryStore(sqlite_url)
    await store.connect()
    collector = Collector()
    await bus.subscribe(["decision.trade_decision", "cmd.execute_trade"], "test-collector", collector.handler)
    running = await start_services(
        ["strategy-engine"], config, bus=bus, store=store, ports={"strategy-engine": 0}
    )
    try:
        yield running, collector, running.url("strategy-engine")
    finally:
        await stop_services(running)


async def test_disarmed_decides_but_never_commands_then_armed_commands(
    engine: tuple[Running, Collector, str],
) -> None:
    running, col, url = engine
    await publish(running.bus, "market.reference_price", reference())
    await publish(running.bus, "inventory.snapshot", inventory())
    await asyncio.sleep(0.05)
    await publish(running.bus, "demand.swap_request", request())
    (d,) = await col.wait_decisions(1)
    assert d.reason == "ok", (d.reason, d.limit_checks, d.inputs)
    assert d.outcome == "quote" and d.armed is False
    assert set(d.price_terms) == {
        "base_edge",
        "volatility",
        "free_option",
        "size",
        "protocol_fee",
        "inventory_skew",
    }
    assert all(c.passed for c in d.limit_checks)
    assert col.commands == []
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/arm") as resp:
            assert resp.status == 200
        await publish(running.bus, "demand.swap_request", request())
        await col.wait_decisions(2)
        for _ in range(100):
            if col.commands:
                break
            await asyncio.sleep(0.01)
        (cmd,) = col.commands
        assert cmd.amount_in == 5_000 and cmd.exact_side == "in"
        assert 2 * 10**18 < cmd.amount_out < 3 * 10**18  # 0.00005 BTC at a bid below 60000 EURe/BTC
        async with http.get(f"{url}/state") as resp:
            state = await resp.json()
        assert state["armed"] is True
        assert state["reservations"]["live"] == 1
        # a failed submission releases the reservation
        await publish(
            running.bus,
            "exec.trade_result",
            TradeResult(
                command_id=cmd.command_id,
                quote_id=cmd.quote_id,
                outcome="rejected",
                error="nope",
                amount_in=cmd.amount_in,
                amount_out=cmd.amount_out,
                asset_in=cmd.asset_in,
                asset_out=cmd.asset_out,
            ),
        )
        await asyncio.sleep(0.05)
        async with http.get(f"{url}/state") as resp:
            assert (await resp.json())["reservations"]["live"] == 0
        async with http.post(f"{url}/disarm") as resp:
            assert resp.status == 200
        await publish(running.bus, "demand.swap_request", request())
        await col.wait_decisions(3)
        await asyncio.sleep(0.05)
        assert len(col.commands) == 1


async def test_guards_decline_with_reason(engine: tuple[Running, Collector, str]) -> None:
    running, col, _ = engine
    await publish(running.bus, "demand.swap_request", request())
    assert (await col.wait_decisions(1))[-1].reason == "reference_stale"
    await publish(running.bus, "market.reference_price", reference())
    await publish(running.bus, "demand.swap_request", request())
    assert (await col.wait_decisions(2))[-1].reason == "inventory_stale"
    await publish(running.bus, "inventory.snapshot", inventory())
    await publish(running.bus, "demand.swap_request", request(min_deadline_ms=120_000))
    assert (await col.wait_decisions(3))[-1].reason == "min_deadline_ms"
    await publish(running.bus, "demand.swap_request", request(exact_in=10_000_000))  # 0.1 BTC >> 5 EURe
    assert (await col.wait_decisions(4))[-1].reason == "max_notional_eure"
    await publish(running.bus, "market.reference_price", reference(quality="stale"))
    await publish(running.bus, "demand.swap_request", request())
    assert (await col.wait_decisions(5))[-1].reason == "reference_stale"
    await publish(running.bus, "market.reference_price", reference(jump=True))
    await publish(running.bus, "demand.swap_request", request())
    assert (await col.wait_decisions(6))[-1].reason == "price_jump"


async def test_loss_limit_pauses_until_arm(engine: tuple[Running, Collector, str]) -> None:
    running, col, url = engine
    await publish(running.bus, "market.reference_price", reference())
    await publish(running.bus, "inventory.snapshot", inventory())
    metrics = PortfolioMetrics(
        computed_ts_ns=SYSTEM_CLOCK.now_ns(),
        price_stale=False,
        baseline_inventory={},
        current_inventory={},
        trade_pnl_eure=Decimal(-30),
    )
    await publish(running.bus, "portfolio.metrics", metrics)
    await asyncio.sleep(0.05)
    await publish(running.bus, "demand.swap_request", request())
    assert (await col.wait_decisions(1))[-1].reason == "loss_limit"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/state") as resp:
            assert (await resp.json())["paused_reason"].startswith("daily_loss_limit")
        async with http.post(f"{url}/arm") as resp:
            assert (await resp.json())["cleared_pause"].startswith("daily_loss_limit")
    await publish(running.bus, "demand.swap_request", request())
    assert (await col.wait_decisions(2))[-1].outcome == "quote"


async def test_put_limits_validated_persisted_and_audited(
    engine: tuple[Running, Collector, str], sqlite_url: str
) -> None:
    running, _, url = engine
    audits: list[OperatorAction] = []
    attempts: list[OperatorAction] = []

    async def on_audit(d: Delivery) -> None:
        payload = decode(d.data).payload
        assert isinstance(payload, OperatorAction)
        (attempts if payload.result == "attempt" else audits).append(payload)  # attempt: before it runs
        await d.ack()

    await running.bus.subscribe(["control.operator_action"], "test-audit", on_audit)
    async with aiohttp.ClientSession() as http:
        for body, status in [
            ("{not json", 400),
            ("[1]", 400),
            ('{"max_notional_eure": "lots"}', 400),
            ('{"unknown_limit": 1}', 400),
            ('{"max_notional_eure": -1}', 400),
            ('{"min_btc": 2, "max_btc": 1}', 400),
            ('{"max_notional_eure": 5}', 200),
            ('{"max_notional_eure": 7.5}', 200),
        ]:
            async with http.put(
                f"{url}/limits", data=body, headers={"content-type": "application/json"}
            ) as resp:
                assert resp.status == status, body
                doc = await resp.json()
                if status == 400:
                    assert "error" in doc
        async with http.get(f"{url}/state") as resp:
            assert (await resp.json())["limits"]["max_notional_eure"] == "7.5"
    assert running.store is not None
    for _ in range(100):
        if len(audits) >= 8:
            break
        await asyncio.sleep(0.01)
    assert [a.result for a in audits] == ["refused"] * 6 + ["ok"] * 2
    assert len(attempts) == 6  # the 2 malformed bodies never reached the handler
    assert all(a.service == "strategy-engine" and a.action == "limits" for a in audits)
    assert audits[-1].params == {"max_notional_eure": "7.5"}
    saved = await running.store.get_state("strategy-engine.limits")
    assert saved["max_notional_eure"] == "7.5"
    # a restarted engine keeps them
    await stop_services(running, close_bus=False)
    config = load_config({}, dotenv=None)
    again = await start_services(
        ["strategy-engine"], config, bus=running.bus, store=running.store, ports={"strategy-engine": 0}
    )
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{again.url('strategy-engine')}/state") as resp:
            state = await resp.json()
        assert state["limits"]["max_notional_eure"] == "7.5"
        assert state["armed"] is False  # never armed after a restart
    finally:
        await stop_services(again, close_bus=False)


async def test_emergency_stop_over_the_bus_disarms(engine: tuple[Running, Collector, str]) -> None:
    running, _, url = engine
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/arm") as resp:
            assert resp.status == 200
        kill = OperatorAction(
            service="strategy-engine",
            action="disarm",
            params={"reason": "test"},
            actor="trade-executor/kill",
            remote="",
            result="ok",
            detail="emergency stop from trade-executor /kill",
        )
        await publish(running.bus, "control.operator_action", kill)
        for _ in range(100):
            async with http.get(f"{url}/state") as resp:
                state = await resp.json()
            if not state["armed"]:
                break
            await asyncio.sleep(0.01)
        assert state["armed"] is False
        assert state["disarmed_by"].startswith("trade-executor/kill")
