"""End to end: a deposit and a withdrawal while quoting never look like PnL and never pause quoting.

``simulate``'s composition (all seven services, memory bus, SQLite) against the simulated venue on
loopback, armed and quoting, with tight loss limits (2 EURe daily, 2 EURe drawdown). During the
flow: a 200 EURe deposit to the Gnosis deposit address (the simulated bridge credits it on the
Verifier after a few seconds) and a 100 EURe ``POST /withdraw`` (the burn debits the Verifier at
once; the bridge says ``completed`` seconds later). Every stored ``portfolio.metrics`` is then
checked: the flow-adjusted mark-to-market PnL never jumps by anything near a funding amount
(between two stored snapshots it moves only by trading and the BTC price, well under 2 EURe), while
the raw figure does jump; the loss guard never tripped and nothing was declined for ``loss_limit``.
"""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

from e2e_kit import EURE, HW, E2ERun, InProcessRun, e2e_env, e2e_scenario, exercise, wait_accepted, wait_for
from intents_mm import messages as m
from intents_mm.storage.store import HistoryStore

pytestmark = pytest.mark.slow

EURE_1 = 10**18
GNOSIS_ADDRESS = "0x52908400098527886E0F7030069857D2E4169EE7"  # an EIP-55 address (EIP-55 test vector)


async def post(url: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def test_deposit_and_withdrawal_while_quoting_no_pnl_jump_and_no_pause(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    async def drill(run: E2ERun) -> None:
        assert run.venue is not None
        await wait_accepted(run, 3, what="quotes before the funding")
        lm = run.url("liquidity-manager")
        # the deposit: pending on the bridge, then credited on the Verifier
        run.venue.simulate_deposit({"chain": "eth:100", "amount": "200"})

        async def credited() -> bool:
            metrics = (await run.state(HW))["metrics"] or {}
            return metrics.get("net_deposits", {}).get(EURE) == str(200 * EURE_1)

        await wait_for(credited, timeout_s=30, what="the 200 EURe deposit counted at its snapshot")
        # the withdrawal: unfreeze, withdraw, wait for the bridge's completed
        status, body = await post(f"{lm}/freeze-withdrawals", {"frozen": False})
        assert status == 200, body
        status, body = await post(
            f"{lm}/withdraw",
            {"asset_id": EURE, "amount": str(100 * EURE_1), "destination_address": GNOSIS_ADDRESS},
        )
        assert status == 200, body
        seen["withdraw"] = body

        async def counted() -> bool:
            metrics = (await run.state(HW))["metrics"] or {}
            return metrics.get("net_deposits", {}).get(EURE) == str(100 * EURE_1)

        await wait_for(counted, timeout_s=30, what="the 100 EURe withdrawal counted at its snapshot")

        async def completed() -> bool:
            withdrawals = (await run.state("liquidity-manager"))["withdrawals"]
            return bool(withdrawals) and str(withdrawals[-1]["status"]).lower() == "completed"

        await wait_for(completed, timeout_s=30, what="the bridge to complete the withdrawal")
        await asyncio.sleep(2.5)  # two more metrics publications after the bridge's word
        await wait_accepted(run, 2, what="quotes after the funding")
        seen["strategy"] = await run.state("strategy-engine")

    env = e2e_env(
        tmp_path,
        STRATEGY_DAILY_LOSS_LIMIT_EURE="2",
        STRATEGY_MAX_DRAWDOWN_EURE="2",
        LIQUIDITY_POLL_MS="500",
    )
    run = InProcessRun(tmp=tmp_path, scenario=e2e_scenario(), env=env)
    async with asyncio.timeout(150):
        ex = await exercise(run, drill=drill)

    strategy = seen["strategy"]
    assert isinstance(strategy, dict)
    assert strategy["loss_guard"]["tripped"] is None
    assert "loss_limit" not in strategy["declined_by_reason"]
    assert ex.states["strategy-engine"]["loss_guard"]["tripped"] is None

    store = HistoryStore(f"sqlite+aiosqlite:///{tmp_path / 'var' / 'history.sqlite3'}")
    await store.connect()
    try:
        rows = await store.recent("portfolio_metrics_snapshots", limit=10_000)
    finally:
        await store.close()
    series = [
        r.envelope.payload
        for r in sorted(rows, key=lambda r: r.envelope.payload.computed_ts_ns)  # type: ignore[union-attr]
        if isinstance(r.envelope.payload, m.PortfolioMetrics)
        and r.envelope.payload.flow_adjusted_mark_to_market_pnl_eure is not None
    ]
    assert len(series) >= 10
    raw_jumps = [
        abs(b.mark_to_market_pnl_eure - a.mark_to_market_pnl_eure)  # type: ignore[operator]
        for a, b in itertools.pairwise(series)
    ]
    adjusted_jumps = [
        abs(b.flow_adjusted_mark_to_market_pnl_eure - a.flow_adjusted_mark_to_market_pnl_eure)  # type: ignore[operator]
        for a, b in itertools.pairwise(series)
    ]
    assert max(raw_jumps) >= Decimal(99)  # the funding is in the raw figure
    assert max(adjusted_jumps) < Decimal(2)  # and in no flow-adjusted one, for any snapshot
    assert series[-1].net_deposits == {EURE: 100 * EURE_1}
