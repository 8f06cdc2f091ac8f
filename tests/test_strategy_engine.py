"""strategy-engine as a service: memory bus, real store, control API over HTTP."""

from __future__ import annotations

import asyncio
import logging
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
from intents_mm.errors import BusError
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
from intents_mm.services.strategy_engine import VENUE_ERROR_STREAK, is_late_rejection
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
    exact_in: int | None = 5_000,
    exact_out: int | None = None,
    min_deadline_ms: int = 60_000,
    *,
    age_ms: int = 0,
    window_ms: int = 3000,
) -> SwapRequest:
    """A swap request whose relay frame was read ``age_ms`` ago, with a ``window_ms`` relay window."""
    now = SYSTEM_CLOCK.now_ns() - age_ms * MS
    return SwapRequest(
        quote_id=f"q-{next(_seq)}",
        asset_in=BTC.token_id,
        asset_out=EURE.token_id,
        exact_amount_in=exact_in,
        exact_amount_out=exact_out,
        min_deadline_ms=min_deadline_ms,
        partner_id="1click",
        received_ts_ns=now,
        relay_deadline_ns=now + window_ms * MS,
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
    """The guard reads the flow-adjusted mark-to-market PnL, not trade PnL: the issue's informed-flow
    case (+7.5 EURe trade PnL, -92.5 EURe mark-to-market) pauses quoting at the 25 EURe daily limit."""
    running, col, url = engine
    await publish(running.bus, "market.reference_price", reference())
    await publish(running.bus, "inventory.snapshot", inventory())
    # a zero-edge trade after a price move: trade PnL -30 (it would trip a trade-PnL guard), mtm 0
    fair = PortfolioMetrics(
        computed_ts_ns=SYSTEM_CLOCK.now_ns(),
        price_stale=False,
        baseline_inventory={},
        current_inventory={},
        trade_pnl_eure=Decimal(-30),
        flow_adjusted_trade_pnl_eure=Decimal(-30),
        mark_to_market_pnl_eure=Decimal(0),
        flow_adjusted_mark_to_market_pnl_eure=Decimal(0),
        flow_adjusted_portfolio_value_eure=Decimal(1600),
    )
    await publish(running.bus, "portfolio.metrics", fair)
    await asyncio.sleep(0.05)
    await publish(running.bus, "demand.swap_request", request())
    assert (await col.wait_decisions(1))[-1].reason == "ok"
    informed = PortfolioMetrics(
        computed_ts_ns=SYSTEM_CLOCK.now_ns(),
        price_stale=False,
        baseline_inventory={},
        current_inventory={},
        trade_pnl_eure=Decimal("7.5"),
        flow_adjusted_trade_pnl_eure=Decimal("7.5"),
        mark_to_market_pnl_eure=Decimal("-92.5"),
        flow_adjusted_mark_to_market_pnl_eure=Decimal("-92.5"),
        flow_adjusted_portfolio_value_eure=Decimal("1507.5"),
    )
    await publish(running.bus, "portfolio.metrics", informed)
    await asyncio.sleep(0.05)
    await publish(running.bus, "demand.swap_request", request())
    assert (await col.wait_decisions(2))[-1].reason == "loss_limit"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/state") as resp:
            state = await resp.json()
            assert state["paused_reason"] == ("daily_loss_limit: -92.5 EURe mark-to-market today (limit -25)")
            guard = state["loss_guard"]
            assert guard["figure"] == "flow_adjusted_mark_to_market_pnl_eure"
            assert guard["last_mtm_pnl_eure"] == "-92.5" and guard["daily_pnl_eure"] == "-92.5"
            assert guard["drawdown_eure"] == "92.5" and guard["portfolio_drop_eure"] == "92.5"
            assert guard["portfolio_drop_limit_eure"] == "0"  # off by default: never trips
        async with http.post(f"{url}/arm") as resp:
            assert (await resp.json())["cleared_pause"].startswith("daily_loss_limit")
        async with http.get(f"{url}/state") as resp:
            guard = (await resp.json())["loss_guard"]
            # measured afresh from the current figures
            assert Decimal(guard["daily_pnl_eure"]) == 0 and guard["peak_mtm_pnl_eure"] == "-92.5"
    await publish(running.bus, "demand.swap_request", request())
    assert (await col.wait_decisions(3))[-1].outcome == "quote"


async def test_portfolio_drop_limit_over_put_limits(engine: tuple[Running, Collector, str]) -> None:
    """The optional inventory-risk limit: the flow-adjusted portfolio value falling 40 EURe from its
    peak trips at a 40 EURe limit set with PUT /limits, while mark-to-market stays flat."""
    running, col, url = engine
    await publish(running.bus, "market.reference_price", reference())
    await publish(running.bus, "inventory.snapshot", inventory())
    async with aiohttp.ClientSession() as http:
        for body, status in [
            ('{"max_portfolio_drop_eure": "-1"}', 400),
            ('{"max_portfolio_drop_eure": "40"}', 200),
        ]:
            async with http.put(
                f"{url}/limits", data=body, headers={"content-type": "application/json"}
            ) as resp:
                assert resp.status == status, body
    for value, reason in [
        ("1600", "ok"),
        ("1640", "ok"),
        ("1600.000000000000000001", "ok"),
        ("1600", "loss_limit"),
    ]:
        metrics = PortfolioMetrics(
            computed_ts_ns=SYSTEM_CLOCK.now_ns(),
            price_stale=False,
            baseline_inventory={},
            current_inventory={},
            flow_adjusted_mark_to_market_pnl_eure=Decimal(0),
            flow_adjusted_portfolio_value_eure=Decimal(value),
        )
        await publish(running.bus, "portfolio.metrics", metrics)
        await asyncio.sleep(0.05)
        n = len(col.decisions)
        await publish(running.bus, "demand.swap_request", request())
        assert (await col.wait_decisions(n + 1))[-1].reason == reason, value
    async with aiohttp.ClientSession() as http, http.get(f"{url}/state") as resp:
        state = await resp.json()
    assert state["paused_reason"] == "portfolio_drop_limit: portfolio value 40 EURe below peak (limit 40)"
    assert state["limit_sources"]["max_portfolio_drop_eure"] == "stored PUT /limits"


async def test_put_limits_validated_persisted_and_audited(
    engine: tuple[Running, Collector, str], sqlite_url: str, caplog: pytest.LogCaptureFixture
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
            # the strict grammar: ASCII digits with an optional fraction, nothing else
            ('{"max_notional_eure": "5_0"}', 400),
            ('{"max_notional_eure": "\u0665"}', 400),  # Arabic-Indic five
            ('{"max_notional_eure": "\uff15"}', 400),  # fullwidth five
            ('{"max_notional_eure": " 5"}', 400),
            ('{"max_notional_eure": 1e-400}', 400),
            ('{"max_notional_eure": "1e2"}', 400),
            ('{"max_notional_eure": true}', 400),
            ('{"max_notional_eure": "12345678901234567"}', 400),
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
        if len(audits) >= 16:
            break
        await asyncio.sleep(0.01)
    assert [a.result for a in audits] == ["refused"] * 14 + ["ok"] * 2
    assert len(attempts) == 14  # the 2 malformed bodies never reached the handler
    assert all(a.service == "strategy-engine" and a.action == "limits" for a in audits)
    assert audits[-1].params == {"max_notional_eure": "7.5"}
    saved = await running.store.get_state("strategy-engine.limits")
    assert saved["max_notional_eure"] == "7.5"
    assert saved["_set"] == ["max_notional_eure"]  # which limits the operator set
    # a restarted engine keeps them; the others follow the environment; the start-up log and /state
    # say where each limit came from
    await stop_services(running, close_bus=False)
    config = load_config({"STRATEGY_MAX_BTC": "0.2", "STRATEGY_MAX_NOTIONAL_EURE": "9"}, dotenv=None)
    caplog.set_level(logging.INFO, logger="intents_mm.services.strategy_engine")
    again = await start_services(
        ["strategy-engine"], config, bus=running.bus, store=running.store, ports={"strategy-engine": 0}
    )
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{again.url('strategy-engine')}/state") as resp:
            state = await resp.json()
        assert state["limits"]["max_notional_eure"] == "7.5"  # the stored PUT wins over the environment
        assert state["limits"]["max_btc"] == "0.2"
        assert state["limit_sources"]["max_notional_eure"] == "stored PUT /limits"
        assert state["limit_sources"]["max_btc"] == "environment"
        assert state["limit_sources"]["daily_loss_limit_eure"] == "default"
        assert set(state["limit_sources"]) == set(state["limits"])
        assert state["armed"] is False  # never armed after a restart
        lines = [r.getMessage() for r in caplog.records if "limits at start" in r.getMessage()]
        assert len(lines) == 1 and lines[0].startswith("strategy-engine limits at start: ")
        assert "max_notional_eure=7.5 (stored PUT /limits)" in lines[0]
        assert "max_btc=0.2 (environment)" in lines[0]
        assert "daily_loss_limit_eure=25 (default)" in lines[0]
        assert "max_portfolio_drop_eure=0 (default)" in lines[0]
        assert all(r.levelno == logging.INFO for r in caplog.records if "limits at start" in r.getMessage())
    finally:
        await stop_services(again, close_bus=False)


async def test_limits_stored_before_sources_were_recorded(sqlite_url: str) -> None:
    """A stored record without ``_set`` (written by an older version): every stored limit applies."""
    await migrate(sqlite_url)
    store = HistoryStore(sqlite_url)
    await store.connect()
    await store.put_state("strategy-engine.limits", {"max_notional_eure": "6", "max_btc": "0.3"})
    bus = make_bus(None)
    await bus.start()
    running = await start_services(
        ["strategy-engine"], load_config({}, dotenv=None), bus=bus, store=store, ports={"strategy-engine": 0}
    )
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{running.url('strategy-engine')}/state") as resp,
        ):
            state = await resp.json()
        assert (state["limits"]["max_notional_eure"], state["limits"]["max_btc"]) == ("6", "0.3")
        assert state["limit_sources"]["max_btc"] == "stored PUT /limits"
        assert state["limit_sources"]["min_btc"] == "default"
    finally:
        await stop_services(running)
        await store.close()


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


async def test_a_tripped_loss_guard_announces_the_pause_on_the_bus(
    engine: tuple[Running, Collector, str],
) -> None:
    """The executor cancels the live quotes on this notice (cancel-on-move trigger ``strategy_pause``)."""
    running, _col, _url = engine
    actions: list[OperatorAction] = []

    async def on_action(d: Delivery) -> None:
        payload = decode(d.data).payload
        if isinstance(payload, OperatorAction):
            actions.append(payload)
        await d.ack()

    await running.bus.subscribe(["control.operator_action"], "test-actions", on_action)
    losing = PortfolioMetrics(
        computed_ts_ns=SYSTEM_CLOCK.now_ns(),
        price_stale=False,
        baseline_inventory={},
        current_inventory={},
        trade_pnl_eure=Decimal(0),
        flow_adjusted_trade_pnl_eure=Decimal(0),
        mark_to_market_pnl_eure=Decimal(-30),
        flow_adjusted_mark_to_market_pnl_eure=Decimal(-30),
    )
    for _ in range(2):  # the second observation of a tripped guard announces nothing more
        await publish(running.bus, "portfolio.metrics", losing)
    for _ in range(100):
        if actions:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    (pause,) = actions
    assert (pause.service, pause.action, pause.result) == ("strategy-engine", "pause", "ok")
    assert pause.actor == "strategy-engine/loss_guard" and pause.detail is not None
    assert pause.detail.startswith("daily_loss_limit")


def result(cmd: ExecuteTrade, outcome: str, error: str | None = None) -> TradeResult:
    return TradeResult(
        command_id=cmd.command_id,
        quote_id=cmd.quote_id,
        outcome=outcome,  # type: ignore[arg-type]
        error=error,
        amount_in=cmd.amount_in,
        amount_out=cmd.amount_out,
        asset_in=cmd.asset_in,
        asset_out=cmd.asset_out,
    )


async def test_a_request_that_waited_too_long_is_declined_at_once_with_its_age(
    engine: tuple[Running, Collector, str],
) -> None:
    running, col, url = engine
    await publish(running.bus, "market.reference_price", reference())
    await publish(running.bus, "inventory.snapshot", inventory())
    await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as http, http.post(f"{url}/arm") as resp:
        assert resp.status == 200
    await publish(running.bus, "demand.swap_request", request())
    fresh = (await col.wait_decisions(1))[-1]
    assert (fresh.outcome, fresh.reason) == ("quote", "ok") and 0 <= fresh.inputs["age_ms"] < 50
    # its relay window ends before a quote could be signed and sent (100 ms allowance)
    await publish(running.bus, "demand.swap_request", request(window_ms=50))
    assert (await col.wait_decisions(2))[-1].reason == "relay_window_passed"
    await publish(running.bus, "demand.swap_request", request(age_ms=4000))  # the window itself passed
    assert (await col.wait_decisions(3))[-1].reason == "relay_window_passed"
    # waited longer than SHED_REQUEST_AGE_MS (50 by default): shed, with the age in the record
    await publish(running.bus, "demand.swap_request", request(age_ms=400))
    shed = (await col.wait_decisions(4))[-1]
    assert (shed.outcome, shed.reason) == ("decline", "shed_overload")
    assert shed.inputs["age_ms"] >= 400 and shed.amount_out is None and shed.limit_checks == []
    await asyncio.sleep(0.05)
    assert [c.quote_id for c in col.commands] == [fresh.quote_id]  # nothing reserved or sent for the others
    async with aiohttp.ClientSession() as http, http.get(f"{url}/state") as resp:
        state = await resp.json()
    assert state["declined_by_reason"] == {"shed_overload": 1, "relay_window_passed": 2}
    assert state["quoting"] is True and state["pause_reasons"] == []  # shedding is not a pause
    assert state["shedding"]["overload_episodes"] == 1


LATE_ERRORS = [
    # what the simulated relay answers to a quote_response after the window (sim/relay.py)
    "quote window closed: quote_id q-1 no longer accepts responses",
    "unknown quote_id q-1",
    # the executor's note on a rejection that came after the relay window by its own clock
    "some undocumented error (the relay window had passed before the reply)",
]


@pytest.mark.parametrize("error", [*LATE_ERRORS, "invalid signature", "relay overloaded", None])
def test_late_rejections_are_told_from_venue_errors(error: str | None) -> None:
    assert is_late_rejection(error) is (error in LATE_ERRORS)


async def test_our_lateness_never_trips_the_venue_error_pause_but_venue_errors_do(
    engine: tuple[Running, Collector, str],
) -> None:
    running, col, url = engine
    await publish(running.bus, "market.reference_price", reference())
    await publish(running.bus, "inventory.snapshot", inventory())
    await asyncio.sleep(0.05)

    async def commands(n: int) -> list[ExecuteTrade]:
        before = len(col.commands)
        for _ in range(n):
            await publish(running.bus, "demand.swap_request", request())
        for _ in range(200):
            if len(col.commands) >= before + n:
                break
            await asyncio.sleep(0.01)
        return col.commands[before:]

    async def get_state(http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{url}/state") as resp:
            body: dict[str, Any] = await resp.json()
            return body

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/arm") as resp:
            assert resp.status == 200
        late = await commands(2 * len(LATE_ERRORS) + 3)
        outcomes = [("rejected", e) for e in LATE_ERRORS * 2] + [("dropped_late", "window passed")] * 3
        for cmd, (outcome, error) in zip(late, outcomes, strict=True):
            await publish(running.bus, "exec.trade_result", result(cmd, outcome, error))
        await asyncio.sleep(0.1)
        state = await get_state(http)
        assert state["quoting"] is True and state["venue_error_streak"] == 0
        assert state["counters"]["late_rejections"] == 2 * len(LATE_ERRORS)
        assert state["counters"]["late_drops"] == 3 and state["counters"]["venue_error_pauses"] == 0
        assert state["reservations"]["live"] == 0  # every one released
        (still_quoting,) = await commands(1)
        assert still_quoting.quote_id == col.decisions[-1].quote_id

        # genuine venue errors (rejections that are not about lateness, or no reply) still pause quoting
        errors = [("rejected", "invalid signature"), ("error", "quote_response not answered: timeout")]
        genuine = [errors[i % 2] for i in range(VENUE_ERROR_STREAK)]
        for cmd, (outcome, error) in zip(await commands(VENUE_ERROR_STREAK), genuine, strict=True):
            await publish(running.bus, "exec.trade_result", result(cmd, outcome, error))
        await asyncio.sleep(0.1)
        n = len(col.decisions)
        await publish(running.bus, "demand.swap_request", request())
        assert (await col.wait_decisions(n + 1))[-1].reason == "venue_errors"
        state = await get_state(http)
        assert state["quoting"] is False and "venue_errors" in state["pause_reasons"]
        assert state["counters"]["venue_error_pauses"] == 1


class _RefusingCommands:
    """The service's bus, refusing ``cmd.execute_trade`` publishes (as a bus that lost its server)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> None:
        if subject == "cmd.execute_trade":
            raise BusError("NATS publish of cmd.execute_trade not acknowledged")
        await self._bus.publish(subject, data, msg_id=msg_id)


async def test_a_request_whose_command_publish_fails_still_gets_its_decision_record(
    engine: tuple[Running, Collector, str],
) -> None:
    running, col, url = engine
    svc = running.service("strategy-engine")
    await publish(running.bus, "market.reference_price", reference())
    await publish(running.bus, "inventory.snapshot", inventory())
    async with aiohttp.ClientSession() as http, http.post(f"{url}/arm") as resp:
        assert resp.status == 200
    svc.bus = _RefusingCommands(running.bus)  # type: ignore[assignment]
    await asyncio.sleep(0.05)
    await publish(running.bus, "demand.swap_request", request())
    (decision,) = await col.wait_decisions(1)
    assert decision.outcome == "decline" and decision.reason == "command_publish_failed"
    assert "not acknowledged" in decision.inputs["command_error"]
    assert col.commands == []
    state = svc.state()
    assert state["counters"]["command_publish_failures"] == 1
    assert state["reservations"]["live"] == 1  # kept until its deadline: the command may have gone out
