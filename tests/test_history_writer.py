"""history-writer against a real store (SQLite and PostgreSQL) and the memory bus.

A scripted sequence (reference prices, inventory snapshots, a command, its accepted result, the relay's
quote_status, a new snapshot, a deposit) is published on the bus; the tests assert the stored
settlement with its markouts and the exact portfolio figures, including
``trade + price_move == mark_to_market``.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from conftest import free_port
from intents_mm import messages as m
from intents_mm.app import Running, start_services, stop_services
from intents_mm.bus import make_bus
from intents_mm.bus.port import Bus
from intents_mm.clock import ManualClock
from intents_mm.config import load_config
from intents_mm.domain.assets import BTC, EURE
from intents_mm.services.history_writer import (
    STATUS_MATCH_WINDOW_NS,
    Fill,
    HistoryWriter,
    PriceHistory,
    PricePoint,
)
from intents_mm.storage.migrate import migrate
from intents_mm.storage.store import HistoryStore

S = 1_000_000_000
T0 = 1_760_000_000 * S
B = BTC.token_id
E = EURE.token_id
EURE_1 = 10**18


async def until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.01)


@dataclass
class Env:
    bus: Bus
    store: HistoryStore
    clock: ManualClock
    running: Running
    n: int = 0

    @property
    def hw(self) -> HistoryWriter:
        svc = self.running.service("history-writer")
        assert isinstance(svc, HistoryWriter)
        return svc

    @property
    def url(self) -> str:
        return self.running.url("history-writer")

    async def pub(self, subject: str, payload: m.Payload, at_ns: int) -> None:
        self.n += 1
        cls, version = m.SUBJECT_TYPES[subject]
        env = m.Envelope(
            subject=subject,
            type=cls.__name__,
            version=version,
            msg_id=f"t-{self.n}",
            ts_ns=at_ns,
            payload=payload,
        )
        await self.bus.publish(subject, m.encode(env), msg_id=env.msg_id)

    async def price(self, mid: str | None, at_ns: int, quality: m.QuoteQuality = "ok") -> None:
        await self.pub(
            m.REFERENCE_PRICE,
            m.ReferencePrice(
                pair="BTC/EUR",
                mid=None if mid is None else Decimal(mid),
                quality=quality,
                sources=[],
                fresh_sources=2,
                quorum=2,
                computed_ts_ns=at_ns,
            ),
            at_ns,
        )

    async def snapshot(self, btc: int, eure: int, at_ns: int, *, stale: bool = False) -> None:
        await self.pub(
            m.INVENTORY_SNAPSHOT,
            m.InventorySnapshot(
                account_id="mm.near",
                credited={B: btc, E: eure},
                pending_deposits={},
                inflight_withdrawals={},
                block_height=at_ns // S,
                read_ts_ns=at_ns,
                stale=stale,
            ),
            at_ns,
        )

    async def command(
        self, cid: str, amount_in: int, amount_out: int, at_ns: int, *, buy: bool = True
    ) -> None:
        await self.pub(
            m.EXECUTE_TRADE,
            m.ExecuteTrade(
                command_id=cid,
                decision_id=f"d-{cid}",
                quote_id=f"q-{cid}",
                asset_in=B if buy else E,
                asset_out=E if buy else B,
                amount_in=amount_in,
                amount_out=amount_out,
                exact_side="in",
                min_deadline_ms=60_000,
                relay_deadline_ns=at_ns + 3 * S,
                reference_mid=Decimal(60000),
            ),
            at_ns,
        )

    async def result(
        self,
        cid: str,
        qh: str,
        amount_in: int,
        amount_out: int,
        at_ns: int,
        *,
        buy: bool = True,
        outcome: str = "accepted",
    ) -> None:
        await self.pub(
            m.TRADE_RESULT,
            m.TradeResult(
                command_id=cid,
                quote_id=f"q-{cid}",
                outcome=outcome,  # type: ignore[arg-type]
                quote_hash=qh,
                deadline_ns=at_ns + 70 * S,
                amount_in=amount_in,
                amount_out=amount_out,
                asset_in=B if buy else E,
                asset_out=E if buy else B,
            ),
            at_ns,
        )

    async def status(self, qh: str, at_ns: int) -> None:
        await self.pub(
            m.QUOTE_STATUS,
            m.QuoteStatus(quote_hash=qh, intent_hash=f"I-{qh}", tx_hash=f"TX-{qh}", received_ts_ns=at_ns),
            at_ns,
        )

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.url + path) as resp:
            return resp.status, await resp.json()


#: Parent of the tests' var directories, removed when the test process exits.
_VAR_ROOT = tempfile.TemporaryDirectory(prefix="hw-tests-")


async def make_env(store: HistoryStore, clock: ManualClock, bus: Bus | None = None) -> Env:
    # a private var directory: the spill journal of one test must never be replayed into another's store
    var_dir = tempfile.mkdtemp(prefix="hw-var-", dir=_VAR_ROOT.name)
    config = load_config({"HISTORY_METRICS_MS": "600000", "INTENTS_MM_VAR_DIR": var_dir}, dotenv=None)
    bus = bus or make_bus(None)
    await bus.start()
    running = await start_services(
        ["history-writer"], config, bus=bus, store=store, clock=clock, ports={"history-writer": 0}
    )
    return Env(bus=bus, store=store, clock=clock, running=running)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[HistoryStore]:
    await migrate(store_url)
    st = HistoryStore(store_url)
    await st.connect()
    try:
        yield st
    finally:
        await st.close()


@pytest.fixture
async def env(store: HistoryStore) -> AsyncIterator[Env]:
    clock = ManualClock(T0)
    e = await make_env(store, clock)
    try:
        yield e
    finally:
        await stop_services(e.running, close_bus=False)
        await e.bus.close()


async def settle_first_trade(env: Env) -> None:
    """Baseline 0.01 BTC + 1000 EURe at 60000; we buy 0.001 BTC for 59.7 EURe; settled at T0+10 s."""
    await env.price("60000", T0)
    await env.snapshot(1_000_000, 1000 * EURE_1, T0 + 1 * S)
    await env.price("60000", T0 + 2 * S)
    await env.command("c1", 100_000, 59_700_000_000_000_000_000, T0 + 3 * S)
    await env.result("c1", "QH1", 100_000, 59_700_000_000_000_000_000, T0 + 3 * S + 100_000_000)
    await env.status("QH1", T0 + 10 * S)
    await env.snapshot(1_100_000, 940_300_000_000_000_000_000, T0 + 11 * S)
    await env.price("61000", T0 + 11 * S)
    await until(lambda: env.hw.follow.settlements_written == 1 and env.hw.prices.latest_mid() is not None)
    await until(lambda: env.hw.prices.latest_mid().mid == Decimal(61000))  # type: ignore[union-attr]


async def test_settlement_markouts_and_exact_pnl(env: Env) -> None:
    await settle_first_trade(env)
    env.clock.advance(12 * S - (env.clock.now_ns() - T0))  # now = T0 + 12 s

    s = await env.store.get_settlement("QH1")
    assert s is not None
    assert (s.intent_hash, s.tx_hash, s.command_id, s.quote_id) == ("I-QH1", "TX-QH1", "c1", "q-c1")
    assert (s.asset_in, s.amount_in, s.asset_out, s.amount_out) == (B, 100_000, E, 59_700_000_000_000_000_000)
    assert s.settled_ts_ns == T0 + 10 * S
    assert s.reference_mid_at_fill == Decimal(60000)
    assert s.markout_1s_bps is None

    # markouts: fill price 59700 EURe/BTC, a buy; each horizon measured once it has passed
    await env.hw.step()
    s = await env.store.get_settlement("QH1")
    assert s is not None and s.markout_1s_bps == Decimal("217.76")  # mid 61000 at T0+11 s
    assert s.markout_10s_bps is None
    await env.price("62000", T0 + 15 * S)
    await env.price("59000", T0 + 65 * S)
    await until(lambda: len(env.hw.prices) >= 5)
    env.clock.advance(60 * S)  # T0 + 72 s: 10 s and 60 s horizons passed
    await env.hw.step()
    s = await env.store.get_settlement("QH1")
    assert s is not None
    assert (s.markout_1s_bps, s.markout_10s_bps, s.markout_60s_bps) == (
        Decimal("217.76"),
        Decimal("385.26"),
        Decimal("-117.25"),
    )
    assert s.markout_300s_bps is None
    env.clock.advance(240 * S)  # T0 + 312 s
    await env.hw.step()
    s = await env.store.get_settlement("QH1")
    assert s is not None and s.markout_300s_bps == Decimal("-117.25")
    assert s.reference_mid_at_fill == Decimal(60000)  # kept through the markout updates
    assert env.hw.follow.markouts_written == 4


async def test_portfolio_metrics_exact_figures_and_flow_adjustment(env: Env) -> None:
    await settle_first_trade(env)
    env.clock.advance(12 * S - (env.clock.now_ns() - T0))  # T0 + 12 s, price 1 s old

    pm = await env.hw.compute_metrics()
    assert pm.baseline_ts_ns == T0 + 1 * S
    assert pm.baseline_price == Decimal(60000) and pm.current_price == Decimal(61000)
    assert pm.baseline_inventory == {B: 1_000_000, E: 1000 * EURE_1}
    assert pm.current_inventory == {B: 1_100_000, E: 940_300_000_000_000_000_000}
    assert pm.price_stale is False and pm.reason is None
    assert pm.baseline_value_eure == Decimal("1600")
    assert pm.portfolio_value_eure == Decimal("1611.3")
    assert pm.trade_pnl_eure == Decimal("0.3")
    assert pm.mark_to_market_pnl_eure == Decimal("1.3")
    assert pm.price_move_pnl_eure == Decimal("1.0")
    assert pm.trade_pnl_eure + pm.price_move_pnl_eure == pm.mark_to_market_pnl_eure
    assert pm.flow_adjusted_trade_pnl_eure == Decimal("0.3") and pm.net_deposits == {}
    assert (pm.fills, pm.volume_eure, pm.avg_edge_bps) == (1, Decimal("59.7"), Decimal("50.25"))

    # HTTP: every figure a string
    status, body = await env.get("/portfolio-metrics")
    assert status == 200
    assert body["status"] == "ok"
    assert body["trade_pnl_eure"] == "0.300000000000000000"
    assert Decimal(body["mark_to_market_pnl_eure"]) == Decimal("1.3")
    assert body["fills"] == "1" and body["current_inventory"][E] == "940300000000000000000"
    assert body["current_balances"] == {"BTC": "0.011", "EURe": "940.3"}
    assert body["price_age_ms"] == "1000" and body["price_stale"] is False

    # an external deposit of 0.005 BTC: raw trade PnL jumps, the flow-adjusted figures do not
    await env.pub(
        m.LIQUIDITY_ACTION,
        m.LiquidityAction(
            action_id="dep-1", kind="deposit_credited", asset_id=B, amount=500_000, status="completed"
        ),
        T0 + 20 * S,
    )
    await env.snapshot(1_600_000, 940_300_000_000_000_000_000, T0 + 21 * S)
    await env.price("62000", T0 + 21 * S)
    await until(lambda: env.hw.prices.latest_mid().mid == Decimal(62000))  # type: ignore[union-attr]
    env.clock.advance(10 * S)  # T0 + 22 s
    pm = await env.hw.compute_metrics()
    assert pm.net_deposits == {B: 500_000}
    assert pm.trade_pnl_eure == Decimal("300.3")
    assert pm.flow_adjusted_trade_pnl_eure == Decimal("0.3")
    assert pm.flow_adjusted_mark_to_market_pnl_eure == Decimal("2.3")
    assert pm.flow_adjusted_price_move_pnl_eure == Decimal("2.0")
    assert pm.trade_pnl_eure + pm.price_move_pnl_eure == pm.mark_to_market_pnl_eure  # type: ignore[operator]
    assert (
        pm.flow_adjusted_trade_pnl_eure + pm.flow_adjusted_price_move_pnl_eure
        == pm.flow_adjusted_mark_to_market_pnl_eure
    )

    # stale: no new price for 10 s (limit 3 s) -> flagged, still valued at the last mid
    env.clock.advance(10 * S)
    pm = await env.hw.compute_metrics()
    assert pm.price_stale is True and pm.reason is not None and "ms old" in pm.reason
    assert pm.current_price == Decimal(62000) and pm.trade_pnl_eure == Decimal("300.3")
    # an explicitly stale aggregate without a mid is flagged too
    await env.price(None, T0 + 32 * S, quality="stale")
    await until(lambda: env.hw.prices.latest() is not None and env.hw.prices.latest().mid is None)  # type: ignore[union-attr]
    pm = await env.hw.compute_metrics()
    assert pm.price_stale is True and "stale" in (pm.reason or "")
    status, body = await env.get("/portfolio-metrics")
    assert body["status"] == "price_stale" and body["price_stale"] is True

    # published and persisted into portfolio_metrics_snapshots
    published = await env.hw.publish_metrics()
    assert env.hw.persister is not None
    await until(lambda: env.hw.persister.stored > 0 and env.hw.persister.backlog == 0)  # type: ignore[union-attr]

    rows = await env.store.recent("portfolio_metrics_snapshots", limit=50)
    for _ in range(200):
        if any(r.envelope.payload == published for r in rows):
            break
        await asyncio.sleep(0.02)
        rows = await env.store.recent("portfolio_metrics_snapshots", limit=50)
    assert any(r.envelope.payload == published for r in rows)


async def test_no_command_no_baseline(env: Env) -> None:
    await env.price("60000", T0)
    await env.snapshot(1_000_000, 1000 * EURE_1, T0)
    await until(lambda: env.hw._current is not None and env.hw.prices.latest() is not None)
    pm = await env.hw.compute_metrics()
    assert pm.baseline_ts_ns is None
    assert pm.trade_pnl_eure is None and pm.mark_to_market_pnl_eure is None and pm.price_move_pnl_eure is None
    assert pm.reason is not None and "no cmd.execute_trade yet" in pm.reason
    assert pm.portfolio_value_eure == Decimal("1600")
    status, body = await env.get("/portfolio-metrics")
    assert status == 200 and body["status"] == "no_baseline" and body["trade_pnl_eure"] is None
    assert body["portfolio_value_eure"] == "1600.000000000000000000"


async def test_status_first_then_result_and_unknown_hashes(env: Env) -> None:
    await env.price("60000", T0)
    await env.status("QH2", T0 + 1 * S)  # before its result
    await env.status("NOT-OURS", T0 + 1 * S)
    await env.result("c2", "QH2", 5 * EURE_1, 8_000, T0 + 2 * S, buy=False)  # we sell 0.00008 BTC for 5 EURe
    await env.result("c3", "QH3", 100, 6 * 10**16, T0 + 2 * S, outcome="rejected")
    await env.status("QH3", T0 + 3 * S)  # a rejected quote of ours cannot settle: not ours
    await until(lambda: env.hw.follow.settlements_written == 1)
    s = await env.store.get_settlement("QH2")
    assert s is not None and s.command_id == "c2" and s.asset_in == E and s.amount_out == 8_000
    assert s.settled_ts_ns == T0 + 1 * S and s.reference_mid_at_fill == Decimal(60000)
    assert env.hw.follow.unknown_quote_hashes == 0
    env.clock.advance(STATUS_MATCH_WINDOW_NS + 5 * S)
    await env.hw.step()
    assert env.hw.follow.unknown_quote_hashes == 2
    assert await env.store.get_settlement("NOT-OURS") is None
    assert await env.store.get_settlement("QH3") is None
    _status, body = await env.get("/state")
    assert body["settlements"]["unknown_quote_hashes"] == 2 and body["settlements"]["recorded"] == 1
    # a replayed quote_status does not settle twice
    await env.status("QH2", T0 + 1 * S)
    await asyncio.sleep(0.05)
    assert env.hw.follow.matched == 1


async def test_a_quote_whose_reply_timed_out_is_ours_when_it_settles(env: Env) -> None:
    """An ``error`` result that carries a quote hash (reply timeout, "already signed") is a live signed
    quote: its settlement is recorded like an accepted one (the store lookup by hash follows the same
    definition: tests/test_store_reservations.py)."""
    await env.price("60000", T0)
    await env.result("c4", "QH4", 5 * EURE_1, 8_000, T0 + 1 * S, buy=False, outcome="error")
    await env.status("QH4", T0 + 2 * S)
    await until(lambda: env.hw.follow.settlements_written == 1)
    s = await env.store.get_settlement("QH4")
    assert s is not None and s.command_id == "c4" and s.amount_out == 8_000
    assert env.hw.follow.unknown_quote_hashes == 0


async def test_restart_recovers_from_the_store(store: HistoryStore) -> None:
    """Everything before the restart is only in the store; the new process matches and values it."""
    clock = ManualClock(T0 + 20 * S)
    envelopes: list[m.Envelope[m.Payload]] = []

    def add(subject: str, payload: m.Payload, at: int) -> None:
        cls, version = m.SUBJECT_TYPES[subject]
        envelopes.append(
            m.Envelope(
                subject=subject,
                type=cls.__name__,
                version=version,
                msg_id=f"old-{len(envelopes)}",
                ts_ns=at,
                payload=payload,
            )
        )

    snap = m.InventorySnapshot(
        account_id="mm.near",
        credited={B: 1_000_000, E: 1000 * EURE_1},
        pending_deposits={},
        inflight_withdrawals={},
        block_height=1,
        read_ts_ns=T0 + 1 * S,
        stale=False,
    )
    add(
        m.REFERENCE_PRICE,
        m.ReferencePrice(
            pair="BTC/EUR",
            mid=Decimal(60000),
            quality="ok",
            sources=[],
            fresh_sources=2,
            quorum=2,
            computed_ts_ns=T0,
        ),
        T0,
    )
    add(m.INVENTORY_SNAPSHOT, snap, T0 + 1 * S)
    add(
        m.EXECUTE_TRADE,
        m.ExecuteTrade(
            command_id="c1",
            decision_id="d1",
            quote_id="q1",
            asset_in=B,
            asset_out=E,
            amount_in=100_000,
            amount_out=59_700_000_000_000_000_000,
            exact_side="in",
            min_deadline_ms=60_000,
            relay_deadline_ns=T0 + 5 * S,
            reference_mid=Decimal(60000),
        ),
        T0 + 3 * S,
    )
    add(
        m.TRADE_RESULT,
        m.TradeResult(
            command_id="c1",
            quote_id="q1",
            outcome="accepted",
            quote_hash="QH1",
            deadline_ns=T0 + 70 * S,
            amount_in=100_000,
            amount_out=59_700_000_000_000_000_000,
            asset_in=B,
            asset_out=E,
        ),
        T0 + 3 * S,
    )
    add(
        m.QUOTE_STATUS,
        m.QuoteStatus(quote_hash="QH1", intent_hash="I1", tx_hash="TX1", received_ts_ns=T0 + 10 * S),
        T0 + 10 * S,
    )
    add(
        m.LIQUIDITY_ACTION,
        m.LiquidityAction(action_id="w1", kind="withdraw", asset_id=E, amount=EURE_1, status="completed"),
        T0 + 12 * S,
    )
    await store.write_batch(envelopes)

    e = await make_env(store, clock)
    try:
        await until(lambda: e.hw.seeded and e.hw.follow.settlements_written == 1)
        s = await store.get_settlement("QH1")
        assert s is not None and s.reference_mid_at_fill == Decimal(60000) and s.command_id == "c1"
        # 1 s, 10 s markouts are due (clock T0+20 s); the store's price history answers them
        await e.hw.step()
        s = await store.get_settlement("QH1")
        assert s is not None and s.markout_1s_bps == s.markout_10s_bps == Decimal("50.25")
        await e.snapshot(1_100_000, 939_300_000_000_000_000_000, T0 + 19 * S)
        await e.price("61000", T0 + 19 * S)
        await until(lambda: e.hw._current is not None and e.hw._current[1].credited[B] == 1_100_000)
        await until(lambda: e.hw.prices.latest_mid().mid == Decimal(61000))  # type: ignore[union-attr]
        pm = await e.hw.compute_metrics()
        assert pm.baseline_ts_ns == T0 + 1 * S and pm.baseline_price == Decimal(60000)
        assert pm.net_deposits == {E: -EURE_1}
        assert pm.trade_pnl_eure == Decimal("-0.7")  # 60 - 59.7 - 1 (the withdrawal)
        assert pm.flow_adjusted_trade_pnl_eure == Decimal("0.3")
        assert pm.fills == 1
    finally:
        await stop_services(e.running, close_bus=False)
        await e.bus.close()


async def test_a_status_whose_result_is_only_in_the_store_is_matched(env: Env) -> None:
    """The result was consumed before a restart and is older than what the start-up read back: the
    status finds it in the store by its quote hash."""
    await env.price("60000", T0)
    result = m.TradeResult(
        command_id="c9",
        quote_id="q9",
        outcome="accepted",
        quote_hash="QH9",
        deadline_ns=T0 + 70 * S,
        amount_in=100_000,
        amount_out=59_700_000_000_000_000_000,
        asset_in=B,
        asset_out=E,
    )
    cls, version = m.SUBJECT_TYPES[m.TRADE_RESULT]
    stored = m.Envelope(
        subject=m.TRADE_RESULT,
        type=cls.__name__,
        version=version,
        msg_id="only-in-store",
        ts_ns=T0,
        payload=result,
    )
    assert await env.store.write_batch([stored]) == 1  # never on this process's bus
    await env.status("QH9", T0 + 2 * S)
    await env.status("NOT-OURS-9", T0 + 2 * S)
    await until(lambda: env.hw.follow.statuses == 2)
    await env.hw.step()
    await until(lambda: env.hw.follow.settlements_written == 1)
    s = await env.store.get_settlement("QH9")
    assert s is not None and s.command_id == "c9" and s.amount_out == 59_700_000_000_000_000_000
    assert env.hw.follow.results_from_store == 1
    _status, body = await env.get("/state")
    assert body["settlements"]["results_from_store"] == 1
    assert body["settlements"]["awaiting_result"] == 1  # NOT-OURS-9, looked up once, waits to expire
    await env.hw.step()
    assert env.hw.follow.results_from_store == 1


async def test_healthz_reports_store_connectivity(env: Env) -> None:
    status, body = await env.get("/healthz")
    assert status == 200 and body["checks"]["store"]["ok"] is True
    assert body["checks"]["store"]["detail"].startswith("connected to ")
    status, state = await env.get("/state")
    assert status == 200
    assert state["store"]["url"] == env.store.url and "backlog" in state and "last_error" in state


async def test_healthz_fails_while_the_store_is_unreachable() -> None:
    port = free_port()  # nothing listens there
    store = HistoryStore(f"postgresql+psycopg://postgres:sekret@127.0.0.1:{port}/nowhere")
    await store.connect(check=False)
    clock = ManualClock(T0)
    e = await make_env(store, clock)
    try:
        await e.price("60000", T0)
        hw = e.hw
        assert hw.persister is not None
        await until(lambda: hw.persister is not None and not hw.persister.healthy)
        status, body = await e.get("/healthz")
        assert status == 503
        detail = body["failing"]["store"]
        assert "history store unreachable" in detail and "PostgreSQL" in detail
        assert "sekret" not in detail
        status, state = await e.get("/state")
        assert state["store"]["reachable"] is False
        assert state["last_error"]
        assert "sekret" not in str(state)
        # what cannot be stored is held or, once a write failed, spilled to the local journal
        await until(lambda: hw.persister is not None and hw.persister.spilled >= 1)
        status, body = await e.get("/healthz")
        assert status == 503 and "in the spill journal" in body["failing"]["store"]
        status, state = await e.get("/state")
        journal = state["persister"]["journal"]
        assert journal["rows_pending"] >= 1 and journal["segments"] == 1
        assert journal["dir"].endswith("history-writer/journal")
        assert state["persister"]["spilled"] >= 1 and state["persister"]["failing_since_ns"] is not None
    finally:
        await stop_services(e.running, close_bus=False)
        await e.bus.close()
        await store.close()


def test_price_history_mid_at_and_retention() -> None:
    h = PriceHistory(retention_ns=10 * S)
    h.add(PricePoint(T0, Decimal(1), "ok", T0))
    h.add(PricePoint(T0 + 2 * S, None, "stale", T0 + 2 * S))
    h.add(PricePoint(T0 + 1 * S, Decimal(2), "ok", T0 + 1 * S))  # out of order
    assert h.mid_at(T0 + 3 * S) == PricePoint(T0 + 1 * S, Decimal(2), "ok", T0 + 1 * S)
    assert h.mid_at(T0 - 1) is None
    assert h.latest() is not None and h.latest().mid is None  # type: ignore[union-attr]
    h.add(PricePoint(T0 + 30 * S, None, "stale", T0 + 30 * S))
    assert len(h) == 1
    latest_mid = h.latest_mid()
    assert latest_mid is not None and latest_mid.mid == Decimal(2)  # kept however old
    assert h.mid_at(T0 + 31 * S) == latest_mid


def test_fill_edge_and_price() -> None:
    from intents_mm.domain.assets import BTC_EURE

    buy = Fill("buy", 100_000, 59_700_000_000_000_000_000)
    assert buy.price(BTC_EURE) == Decimal(59700)
    assert buy.edge_eure(BTC_EURE, Decimal(60000)) == Decimal("0.3")
    sell = Fill("sell", 8_000, 5 * EURE_1)
    assert sell.price(BTC_EURE) == Decimal(62500)
    assert sell.edge_eure(BTC_EURE, Decimal(60000)) == Decimal("0.2")


async def test_without_a_store_metrics_still_work_and_healthz_says_why() -> None:
    from intents_mm.services.runtime import ServiceContext

    bus = make_bus(None)
    await bus.start()
    clock = ManualClock(T0)
    hw = HistoryWriter(ServiceContext(config=load_config({}, dotenv=None), bus=bus, clock=clock, store=None))
    try:
        await hw.start()
        assert hw.persister is None
        check = hw.checks()["store"]
        assert check.ok is False and check.detail == "no history store configured"
        hw.observe(
            m.Envelope(
                subject=m.REFERENCE_PRICE,
                type="ReferencePrice",
                version=1,
                msg_id="p",
                ts_ns=T0,
                payload=m.ReferencePrice(
                    pair="BTC/EUR",
                    mid=Decimal(50000),
                    quality="ok",
                    sources=[],
                    fresh_sources=2,
                    quorum=2,
                    computed_ts_ns=T0,
                ),
            )
        )
        pm = await hw.compute_metrics()
        assert pm.current_price == Decimal(50000) and pm.portfolio_value_eure is None
        assert pm.reason is not None and "no inventory snapshot yet" in pm.reason
    finally:
        await hw.stop()
        await hw.cancel_tasks()
        await bus.close()


async def test_deposit_and_withdrawal_drill_no_pnl_jump_in_any_stored_snapshot(store: HistoryStore) -> None:
    """A 200 EURe deposit (credited before the bridge says so) and a 100 EURe withdrawal (burn seen one
    snapshot after ``submitted``, bridge ``completed`` minutes later): every published and stored
    ``portfolio.metrics`` has the same flow-adjusted figures; the counted flows survive a restart."""
    clock = ManualClock(T0)
    env = await make_env(store, clock)
    published: list[m.PortfolioMetrics] = []
    try:
        await settle_first_trade(env)  # mark-to-market 1.3, trade 0.3 at 61000 (see above)
        eure = 940_300_000_000_000_000_000

        async def book(eure_t: int, at_ns: int) -> None:
            await env.snapshot(1_100_000, eure_t, at_ns)
            await until(lambda: env.hw._current is not None and env.hw._current[1].read_ts_ns == at_ns)
            env.clock.advance(S)  # one stored row per publication (the msg_id is the computed time)
            published.append(await env.hw.publish_metrics())

        async def action(status: m.LiquidityActionStatus, at_ns: int, **kw: Any) -> None:
            await env.pub(
                m.LIQUIDITY_ACTION,
                m.LiquidityAction(asset_id=E, status=status, **kw),
                at_ns,
            )

        await book(eure, T0 + 12 * S)
        pending = m.PendingDeposit(
            tx_hash="0xdep", chain="eth:100", asset_id=E, amount=200 * EURE_1, status="PENDING"
        )
        await env.pub(
            m.LIQUIDITY_STATE,
            m.LiquidityState(
                deposit_addresses={}, pending_deposits=[pending], withdrawals=[], withdrawals_frozen=True
            ),
            T0 + 13 * S,
        )
        await book(eure + 200 * EURE_1, T0 + 14 * S)  # credited on the Verifier first
        await action(
            "completed",
            T0 + 15 * S,
            action_id="dep",
            kind="deposit_credited",
            amount=200 * EURE_1,
            detail={"tx_hash": "0xdep"},
        )
        await book(eure + 200 * EURE_1, T0 + 16 * S)
        await action("requested", T0 + 17 * S, action_id="w1", kind="withdraw", amount=100 * EURE_1)
        await action(
            "submitted", T0 + 18 * S, action_id="w1", kind="withdraw", amount=100 * EURE_1, near_tx_hash="TXW"
        )
        await book(eure + 200 * EURE_1, T0 + 19 * S)  # read at a block before the burn
        await book(eure + 100 * EURE_1, T0 + 20 * S)  # the burn
        await action(
            "completed",
            T0 + 300 * S,
            action_id="w1",
            kind="withdraw",
            amount=100 * EURE_1,
            near_tx_hash="TXW",
        )
        await book(eure + 100 * EURE_1, T0 + 301 * S)

        assert [pm.mark_to_market_pnl_eure for pm in published] == [
            Decimal("1.3"),
            Decimal("201.3"),
            Decimal("201.3"),
            Decimal("201.3"),
            Decimal("101.3"),
            Decimal("101.3"),
        ]
        for pm in published:
            assert pm.flow_adjusted_mark_to_market_pnl_eure == Decimal("1.3")
            assert pm.flow_adjusted_trade_pnl_eure == Decimal("0.3")
            assert pm.flow_adjusted_price_move_pnl_eure == Decimal("1.0")
            assert pm.flow_adjusted_portfolio_value_eure == Decimal("1611.3")  # 0.011*61000 + 940.3
        assert [pm.net_deposits for pm in published] == [
            {},
            {E: 200 * EURE_1},
            {E: 200 * EURE_1},
            {E: 200 * EURE_1},
            {E: 100 * EURE_1},
            {E: 100 * EURE_1},
        ]
        # every stored snapshot, as persisted
        assert env.hw.persister is not None
        await until(lambda: env.hw.persister.backlog == 0)  # type: ignore[union-attr]
        for _ in range(200):
            rows = await env.store.recent("portfolio_metrics_snapshots", limit=50)
            stored_pm = [
                r.envelope.payload for r in rows if isinstance(r.envelope.payload, m.PortfolioMetrics)
            ]
            if all(pm in stored_pm for pm in published):
                break
            await asyncio.sleep(0.02)
        assert all(pm in stored_pm for pm in published)  # (and the service's own periodic ones)
        assert {pm.flow_adjusted_mark_to_market_pnl_eure for pm in stored_pm} == {Decimal("1.3")}
        _status, body = await env.get("/state")
        assert body["funding"]["counted_flows"] == 2 and body["funding"]["pending_flows"] == 0
        assert body["metrics"]["flow_adjusted_portfolio_value_eure"] == "1611.300000000000000000"
        await env.hw.step()  # writes the counted flows to the store
    finally:
        await stop_services(env.running, close_bus=False)
        await env.bus.close()
    saved = await store.get_state("history-writer.funding")
    assert set(saved["landed"]) == {"deposit:0xdep", "withdraw:w1"}

    again = await make_env(store, ManualClock(T0 + 400 * S))
    try:
        await until(lambda: again.hw.seeded)
        await again.price("61000", T0 + 399 * S)
        await again.snapshot(1_100_000, 1_040_300_000_000_000_000_000, T0 + 400 * S)
        await until(lambda: again.hw._current is not None and again.hw._current[1].read_ts_ns == T0 + 400 * S)
        await until(lambda: again.hw.prices.latest_mid().mid == Decimal(61000))  # type: ignore[union-attr]
        pm = await again.hw.compute_metrics()
        assert pm.net_deposits == {E: 100 * EURE_1}
        assert pm.flow_adjusted_mark_to_market_pnl_eure == Decimal("1.3")
    finally:
        await stop_services(again.running, close_bus=False)
        await again.bus.close()
