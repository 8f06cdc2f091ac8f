"""The venue's scoreboard of every solver (sim/scoreboard.py): exact PnL, markouts, informed share,
same seed same board, the banner's account list, and the scenario catalogue."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from fractions import Fraction
from typing import Any

import aiohttp
import pytest

from intents_mm.clock import ManualClock
from intents_mm.domain.assets import BTC, EURE
from intents_mm.sim.participants import CompetingSolver, SolverConfig
from intents_mm.sim.relay import FillRecord
from intents_mm.sim.scenario import BUILTIN_SCENARIOS, Scenario, builtin_scenario, key_from_label
from intents_mm.sim.scoreboard import SolverEntry, build_scoreboard, exact_text, render_scoreboard
from intents_mm.sim.venue import SimVenue, banner

BOARD = """
name = "board"
[price]
vol_annual = 8.0
jump_rate_per_hour = 0
[relay]
window_ms = 200
api_keys = ["outside-solver-key"]
[flow]
users = 2
informed_share = 0.4
informed_horizon_ms = 30000
informed_edge_bps = 0
alt_deadline_share = 0.5
[[solvers]]
spread_bps = 30
[[solvers]]
spread_bps = 50
[[accounts]]
seed = "outside"
balances = { BTC = "1", EURe = "100000" }
[[accounts]]
seed = "idle"
balances = { EURe = 7 }
"""

STEP_NS = 400_000_000


async def run_board(seed: int, n: int = 24) -> tuple[dict[str, Any], SimVenue, dict[str, dict[str, int]]]:
    """Drive the first ``n`` planned requests one after the other on a hand-moved clock, with an
    outside solver quoting (only the alternate-deadline requests) for the ``outside`` account."""
    clock = ManualClock()
    venue = SimVenue(Scenario.from_toml(BOARD, "board.toml"), seed=seed, clock=clock)
    await venue.start()
    outside_key = key_from_label("account:outside")
    outside = CompetingSolver(
        clock,
        venue.verifier,
        venue.relay.ws_url,
        venue.path.mid_at,
        api_key="outside-solver-key",
        key=outside_key,
        config=SolverConfig(spread_bps=Decimal(20), max_min_deadline_ms=30_000),
    )
    try:
        await outside.start()
        await outside.wait_ready(5.0)
        accounts = [e.account_id for e in venue.scoreboard_entries()]
        venue.start_scoreboard()
        start = {a: dict(venue.verifier.balances(a)) for a in accounts}
        for arrival in venue.planned_requests(n):
            clock.advance(STEP_NS)
            await venue.users[arrival.user].handle(arrival.request)
        clock.advance(STEP_NS)
        board = venue.scoreboard()
    finally:
        await outside.stop()
        await venue.stop()
    return board, venue, start


def expected_pnl(venue: SimVenue, account: str, start: dict[str, int], mid: Decimal) -> Fraction:
    end = venue.verifier.balances(account)
    d_btc = end.get(BTC.token_id, 0) - start.get(BTC.token_id, 0)
    d_eure = end.get(EURE.token_id, 0) - start.get(EURE.token_id, 0)
    return Fraction(d_btc) * Fraction(mid) / 10**8 + Fraction(d_eure, 10**18)


async def test_scoreboard_pnl_is_the_verifier_balance_change_at_the_final_true_price() -> None:
    board, venue, start = await run_board(3)
    mark_ns = board["mark"]["ns"]
    mid = venue.path.mid_at(mark_ns)
    assert board["mark"]["price_eur"] == str(mid) and mid != venue.scenario.price.start_price
    rows = {r["label"]: r for r in board["solvers"]}
    outside_id = key_from_label("account:outside").public_key.implicit_account_id()
    assert list(rows) == ["market-maker", "sim-solver-1", "sim-solver-2", outside_id, rows_label_idle(venue)]
    moved = 0
    for row in board["solvers"]:
        want = expected_pnl(venue, row["account_id"], start[row["account_id"]], mid)
        assert Fraction(Decimal(row["pnl_eur"])) == want  # exact, not approximately
        moved += want != 0
    assert moved >= 2  # the competitor and the outside solver both traded

    users = [o for u in venue.users for o in u.outcomes]
    settled = [o for o in users if o.publish and o.publish.get("status") == "OK"]
    assert sum(r["fills"] for r in board["solvers"]) == len(settled) == len(venue.relay.fills) > 0
    informed = sum(1 for o in settled if o.planned.informed)
    assert sum(r["informed_fills"] for r in board["solvers"]) == informed > 0

    one, outside = rows["sim-solver-1"], rows[outside_id]
    assert one["fills"] > 0 and outside["fills"] > 0
    assert outside["role"] == "external" and outside["partners"] == ["external-1"]
    assert outside["requests_seen"] == one["requests_seen"] == 24
    assert outside["quotes"] < one["quotes"]  # it only quotes the 30 s requests
    assert one["wins"] + outside["wins"] >= one["fills"] + outside["fills"]
    assert rows["sim-solver-2"]["wins"] == 0 == rows["sim-solver-2"]["fills"]  # always out-quoted
    assert rows["market-maker"]["requests_seen"] == 0  # ours is not connected in this test
    for row in (one, outside):
        assert set(row["markouts_bps"]) == {"1s", "10s", "60s"}
        assert all(v is not None for v in row["markouts_bps"].values())
        assert row["markouts_n"]["60s"] == row["fills"]
        assert Decimal(row["volume"]["EURe"]) > 0
    assert "sim-solver-1" in render_scoreboard(board)


def rows_label_idle(venue: SimVenue) -> str:
    return venue.scenario.accounts[1].account_id


async def test_same_seed_same_scoreboard_other_seed_differs() -> None:
    a, _, _ = await run_board(5, n=12)
    b, _, _ = await run_board(5, n=12)
    c, _, _ = await run_board(6, n=12)
    assert a == b
    assert a["solvers"] != c["solvers"]


def fill(asset_in: str, amount_in: int, asset_out: str, amount_out: int, intent: str) -> FillRecord:
    users = ("user",)
    return FillRecord(
        "qh", "q", "p", "solver.near", intent, users, asset_in, asset_out, amount_in, amount_out, 0, "t"
    )


def test_markouts_are_signed_from_the_solvers_side_and_informed_share_is_read_from_the_flow() -> None:
    # the solver buys 0.01 BTC for 590 EURe (59000/BTC), then sells 0.01 BTC for 610 EURe (61000/BTC);
    # the true path is 60000 at every horizon: +169.49 bps on the buy, +163.93 bps on the sell
    fills = [
        fill(BTC.token_id, 10**6, EURE.token_id, 590 * 10**18, "i1"),
        fill(EURE.token_id, 610 * 10**18, BTC.token_id, 10**6, "i2"),
    ]
    flows = {"i1": ("latency_arb", True), "i2": ("uninformed", False)}
    board = build_scoreboard(
        [SolverEntry("s", "competitor", "solver.near", ("p",))],
        start_balances={"solver.near": {BTC.token_id: 10**8, EURE.token_id: 0}},
        end_balances={"solver.near": {BTC.token_id: 10**8, EURE.token_id: 20 * 10**18}},
        fills=fills,
        partner_stats={"p": {"requests_seen": 3, "quotes": 2, "wins": 2}},
        latency_ms={"p": [1.0, 2.0, 30.0]},
        price_at=lambda ns: Decimal(60000),
        mark_ns=0,
        flow_of=flows.get,
    )
    row = board["solvers"][0]
    assert row["markouts_bps"] == {"1s": "166.71", "10s": "166.71", "60s": "166.71"}
    assert row["fills_by_kind"] == {"latency_arb": 1, "uninformed": 1}
    assert row["informed_fills"] == 1 and row["informed_share"] == "0.5000"
    assert row["pnl_eur"] == "20" and row["volume"] == {"BTC": "0.02", "EURe": "1200"}
    assert row["quote_latency_ms"] == {"n": 3, "p50": 2.0, "p99": 30.0}
    assert row["markouts_n_matured"] == {"1s": 0, "10s": 0, "60s": 0}
    # a losing fill: the solver sold BTC at 59000 and the path went to 60000
    losing = build_scoreboard(
        [SolverEntry("s", "competitor", "solver.near", ("p",))],
        start_balances={},
        end_balances={},
        fills=[fill(EURE.token_id, 590 * 10**18, BTC.token_id, 10**6, "x")],
        partner_stats={},
        latency_ms={},
        price_at=lambda ns: Decimal(60000),
        mark_ns=10**12,
        flow_of=flows.get,
    )["solvers"][0]
    assert Decimal(losing["markouts_bps"]["1s"]) < 0 and losing["fills_by_kind"] == {"unknown": 1}
    assert losing["markouts_n_matured"]["60s"] == 1


def test_exact_text() -> None:
    assert exact_text(Fraction(1, 8)) == "0.125"
    assert exact_text(Fraction(-6000012345, 10**8)) == "-60.00012345"
    assert exact_text(Fraction(0)) == "0"
    assert exact_text(Fraction(10)) == "10"
    assert exact_text(Fraction(1, 3)) == "1/3"


async def test_banner_lists_every_configured_account_and_state_has_their_balances() -> None:
    venue = SimVenue(Scenario.from_toml(BOARD, "board.toml"), seed=2)
    await venue.start()
    try:
        text = banner(venue, 0.5)
        for account in venue.scenario.accounts:
            assert account.account_id in text and account.public_key in text
        assert key_from_label("account:outside").to_secret_string() in text
        for solver in venue.solvers:
            assert solver.account_id in text
        assert venue.mm_account in text and "1 extra key(s) from [relay] api_keys" in text
        async with aiohttp.ClientSession() as http, http.get(venue.urls["admin"] + "/state") as resp:
            state = await resp.json()
        outside = venue.scenario.accounts[0].account_id
        assert state["balances"]["accounts"][outside] == {
            BTC.token_id: "100000000",
            EURE.token_id: str(10**23),
        }
        labels = [r["label"] for r in state["scoreboard"]["solvers"]]
        assert labels[:3] == ["market-maker", "sim-solver-1", "sim-solver-2"] and len(labels) == 5
    finally:
        await venue.stop()


@pytest.mark.parametrize("name", BUILTIN_SCENARIOS)
async def test_every_named_scenario_loads_and_runs(name: str) -> None:
    scenario = builtin_scenario(name)
    assert scenario.name == name and scenario.description
    venue = SimVenue(scenario, seed=1)
    await venue.start()
    try:
        await venue.start_flow()
        async with asyncio.timeout(10):
            while sum(u.counts["requests"] for u in venue.users) < 3:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        board = venue.stats()["scoreboard"]
        assert [r["role"] for r in board["solvers"]][:1] == ["ours"]
        assert sum(r["requests_seen"] for r in board["solvers"]) >= 3
    finally:
        await venue.stop()


def sample_board() -> dict[str, Any]:
    return build_scoreboard(
        [
            SolverEntry("market-maker", "ours", "mm.near", ("market-maker",)),
            SolverEntry("sim-solver-1", "competitor", "solver.near", ("p",)),
        ],
        start_balances={"solver.near": {EURE.token_id: 0}},
        end_balances={"solver.near": {EURE.token_id: 3 * 10**17}},
        fills=[fill(BTC.token_id, 10**6, EURE.token_id, 590 * 10**18, "i1")],
        partner_stats={},
        latency_ms={},
        price_at=lambda ns: Decimal(60000),
        mark_ns=0,
        flow_of={"i1": ("uninformed", False)}.get,
    )


def test_simulate_summary_prints_the_scoreboard() -> None:
    from intents_mm.simulate import render_summary

    summary: dict[str, Any] = {
        "seed": 7,
        "duration_s": 1.0,
        "requests_seen": 0,
        "declined_by_reason": {},
        "quotes_sent": 0,
        "accepted_by_relay": 0,
        "won": 0,
        "settled": 0,
        "volume": {},
        "inventory_start": {},
        "inventory_end": {},
        "pnl": {},
        "markouts_avg_bps": {},
        "quote_latency_ms": {"p50": None, "p90": None, "p99": None, "max": None, "count": 0},
        "history_store": "sqlite",
        "scoreboard": sample_board(),
    }
    text = render_summary(summary)
    assert "scoreboard (PLAY MONEY" in text and "sim-solver-1" in text and "0.3000" in text


def test_catalogue_script_row_reads_the_summary() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "sim" / "catalogue.py"
    spec = importlib.util.spec_from_file_location("catalogue", path)
    assert spec is not None and spec.loader is not None
    catalogue = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(catalogue)
    board = sample_board()
    board["solvers"][0].update(
        fills=2, informed_fills=1, markouts_bps={"1s": "1.5", "10s": "-2", "60s": None}
    )
    summary = {
        "pnl": {"trade_pnl_eure": "0.12346", "flow_adjusted_mark_to_market_pnl_eure": "-1"},
        "settled": 2,
    }
    line = catalogue.row("toxic", 3, {**summary, "scoreboard": board})
    assert line == ("| toxic | 3 | 0.1235 | -1.0000 | 2 | 1.50 | -2.00 | n/a | 1/2 | solver-1: 0.3000 |")
    assert line.count("|") == catalogue.HEADER.count("|")
