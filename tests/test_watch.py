"""watch: --once and --json --backfill against a store we fill (SQLite and PostgreSQL), against services
started with start_services on ephemeral ports, and with them stopped (shown as down, exit 0)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import free_port
from intents_mm import messages as m
from intents_mm.app import start_services, stop_services
from intents_mm.bus import make_bus
from intents_mm.cli import main as cli_main
from intents_mm.config import SERVICES, Config, load_config
from intents_mm.domain.assets import BTC, EURE
from intents_mm.storage.migrate import migrate
from intents_mm.storage.store import HistoryStore
from intents_mm.watch import Watcher, add_arguments, options_from_args

REPO = Path(__file__).resolve().parents[1]
S = 1_000_000_000
T0 = 1_760_000_000 * S
B = BTC.token_id
E = EURE.token_id
OTHER = "nep141:wrap.near"


def envelope(subject: str, payload: m.Payload, at: int, msg_id: str) -> m.Envelope[m.Payload]:
    cls, version = m.SUBJECT_TYPES[subject]
    return m.Envelope(
        subject=subject, type=cls.__name__, version=version, msg_id=msg_id, ts_ns=at, payload=payload
    )


def command(i: int, at: int) -> m.Envelope[m.Payload]:
    return envelope(
        m.EXECUTE_TRADE,
        m.ExecuteTrade(
            command_id=f"cmd-{i}",
            decision_id=f"dec-{i}",
            quote_id=f"quote-{i}",
            asset_in=B,
            asset_out=E,
            amount_in=100_000,
            amount_out=59_700_000_000_000_000_000,
            exact_side="in",
            min_deadline_ms=60_000,
            relay_deadline_ns=at + 3 * S,
            reference_mid=Decimal(60000),
        ),
        at,
        f"cmd-{i}",
    )


async def fill_store(store: HistoryStore) -> None:
    """Five matching quote requests and one on another pair, four decisions, commands and results,
    one settlement, an inventory snapshot and a portfolio metrics snapshot."""
    envs: list[m.Envelope[m.Payload]] = []
    for i in range(1, 6):
        at = T0 + i * S
        envs.append(
            envelope(
                m.SWAP_REQUEST,
                m.SwapRequest(
                    quote_id=f"quote-{i}",
                    asset_in=B,
                    asset_out=E,
                    exact_amount_in=100_000,
                    min_deadline_ms=60_000,
                    received_ts_ns=at,
                    relay_deadline_ns=at + 3 * S,
                ),
                at,
                f"sr-{i}",
            )
        )
        if i == 5:
            envs.append(
                envelope(
                    m.SWAP_REQUEST,
                    m.SwapRequest(
                        quote_id="quote-other-pair",
                        asset_in=OTHER,
                        asset_out=E,
                        exact_amount_in=7,
                        min_deadline_ms=60_000,
                        received_ts_ns=at,
                        relay_deadline_ns=at + 3 * S,
                    ),
                    at + 1,
                    "sr-other",
                )
            )
            continue
        envs.append(
            envelope(
                m.TRADE_DECISION,
                m.TradeDecision(
                    decision_id=f"dec-{i}",
                    quote_id=f"quote-{i}",
                    outcome="quote",
                    reason="priced",
                    armed=True,
                    asset_in=B,
                    asset_out=E,
                    amount_in=100_000,
                    amount_out=59_700_000_000_000_000_000,
                    reference_mid=Decimal(60000),
                ),
                at + 10,
                f"dec-{i}",
            )
        )
        envs.append(command(i, at + 20))
        envs.append(
            envelope(
                m.TRADE_RESULT,
                m.TradeResult(
                    command_id=f"cmd-{i}",
                    quote_id=f"quote-{i}",
                    outcome="accepted",
                    quote_hash=f"QH{i}",
                    latency_us=1234,
                    amount_in=100_000,
                    amount_out=59_700_000_000_000_000_000,
                    asset_in=B,
                    asset_out=E,
                ),
                at + 30,
                f"res-{i}",
            )
        )
    envs.append(
        envelope(
            m.INVENTORY_SNAPSHOT,
            m.InventorySnapshot(
                account_id="mm.near",
                credited={B: 1_100_000, E: 940_300_000_000_000_000_000},
                pending_deposits={},
                inflight_withdrawals={},
                block_height=7,
                read_ts_ns=T0 + 6 * S,
                stale=False,
            ),
            T0 + 6 * S,
            "inv-1",
        )
    )
    envs.append(
        envelope(
            m.PORTFOLIO_METRICS,
            m.PortfolioMetrics(
                computed_ts_ns=T0 + 7 * S,
                baseline_ts_ns=T0,
                baseline_price=Decimal(60000),
                current_price=Decimal(61000),
                price_stale=False,
                baseline_inventory={B: 1_000_000, E: 1000 * 10**18},
                current_inventory={B: 1_100_000, E: 940_300_000_000_000_000_000},
                portfolio_value_eure=Decimal("1611.3"),
                trade_pnl_eure=Decimal("0.3"),
                mark_to_market_pnl_eure=Decimal("1.3"),
                price_move_pnl_eure=Decimal("1.0"),
                fills=1,
                volume_eure=Decimal("59.7"),
                avg_edge_bps=Decimal("50.25"),
            ),
            T0 + 7 * S,
            "pm-1",
        )
    )
    await store.write_batch(envs)
    await store.upsert_settlement(
        m.Settlement(
            quote_hash="QH1",
            intent_hash="I1",
            tx_hash="TX1",
            command_id="cmd-1",
            quote_id="quote-1",
            asset_in=B,
            asset_out=E,
            amount_in=100_000,
            amount_out=59_700_000_000_000_000_000,
            reference_mid_at_fill=Decimal(60000),
            markout_1s_bps=Decimal("217.76"),
            settled_ts_ns=T0 + 5 * S,
        )
    )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def down_urls() -> list[str]:
    """Every service on a port where nothing listens."""
    return [arg for name in SERVICES for arg in ("--service-url", f"{name}=http://127.0.0.1:{free_port()}")]


def config() -> Config:
    return load_config({}, dotenv=None)


async def run_watch(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    rc = await Watcher(options_from_args(parse(argv), config()), out=out).run()
    return rc, out.getvalue()


async def until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.02)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[HistoryStore]:
    await migrate(store_url)
    st = HistoryStore(store_url)
    await st.connect()
    try:
        await fill_store(st)
        yield st
    finally:
        await st.close()


async def test_once_text_against_the_store_with_services_down(store: HistoryStore, store_url: str) -> None:
    rc, text = await run_watch(["--once", "--store-url", store_url, *down_urls()])
    assert rc == 0
    lines = text.splitlines()
    # the last 3 of each stream (default backfill with --once), oldest first, only the active pair's quotes
    quotes = [ln for ln in lines if " quote " in ln]
    assert [ln.split()[2] for ln in quotes] == ["quote-3", "quote-4", "quote-5"]
    assert "0.001 BTC -> EURe (exact in)" in quotes[0]
    assert "quote-other-pair" not in text
    assert [ln.split()[2] for ln in lines if " command " in ln] == ["quote-2", "quote-3", "quote-4"]
    assert "receive 0.001 BTC give 59.7 EURe" in text
    assert sum(" decision " in ln for ln in lines) == 3 and "QUOTE (priced) [armed]" in text
    assert sum(" result " in ln for ln in lines) == 3 and "ACCEPTED hash=QH4 latency=1234us" in text
    settled = [ln for ln in lines if " settlement " in ln]
    assert len(settled) == 1 and "QH1  bought 0.001 BTC for 59.7 EURe  mid@fill 60000" in settled[0]
    assert "1s=217.76" in settled[0] and "10s=-" in settled[0]
    # the picture, after the events
    assert "  store     : " in text and "(ok)" in text
    assert all(f"{name} DOWN" in text for name in SERVICES)
    assert "arming    : strategy-engine down | trade-executor down" in text
    assert "inventory : 0.011 BTC  940.3 EURe  credited (intent_inventory_snapshots" in text
    assert "trade PnL 0.3 | MtM 1.3 | price move 1 | fills 1 | volume 59.7 EURe | avg edge 50.25 bps" in text
    assert "Traceback" not in text


async def test_json_backfill_then_tail_with_heartbeats(store: HistoryStore, store_url: str) -> None:
    out = io.StringIO()
    argv = [
        "--json",
        "--backfill",
        "3",
        "--poll-interval",
        "0.05",
        "--heartbeat-every",
        "0.2",
        "--duration",
        "8",
    ]
    watcher = Watcher(
        options_from_args(parse([*argv, "--store-url", store_url, *down_urls()]), config()), out=out
    )
    task = asyncio.create_task(watcher.run())
    try:
        await until(lambda: '"event":"settlement"' in out.getvalue())
        await store.write_batch([command(9, T0 + 60 * S)])
        await until(lambda: "cmd-9" in out.getvalue())
        await until(lambda: '"event":"heartbeat"' in out.getvalue())
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert objs[0]["event"] == "picture"
    assert objs[0]["store"]["ok"] is True
    assert all(not s["up"] for s in objs[0]["services"].values())
    assert (
        objs[0]["inventory"]["BTC"] == "0.011"
        and objs[0]["inventory"]["EURe_units"] == "940300000000000000000"
    )
    assert Decimal(objs[0]["portfolio"]["trade_pnl_eure"]) == Decimal("0.3")
    assert objs[0]["portfolio"]["source"] == "portfolio_metrics_snapshots"
    events = [o for o in objs if o["event"] in ("quote", "decision", "command", "result", "settlement")]
    by_kind: dict[str, list[Any]] = {}
    for o in events:
        by_kind.setdefault(o["event"], []).append(o)
    assert [o["data"]["quote_id"] for o in by_kind["quote"]] == ["quote-3", "quote-4", "quote-5"]
    assert [o["data"]["command_id"] for o in by_kind["command"]] == ["cmd-2", "cmd-3", "cmd-4", "cmd-9"]
    assert by_kind["command"][0]["data"]["amount_out"] == "59700000000000000000"
    assert [o["data"]["quote_hash"] for o in by_kind["result"]] == ["QH2", "QH3", "QH4"]
    assert Decimal(by_kind["settlement"][0]["data"]["markout_1s_bps"]) == Decimal("217.76")
    assert len(by_kind["decision"]) == 3
    beat = next(o for o in objs if o["event"] == "heartbeat")
    assert beat["services_up"] == 0 and beat["store_ok"] is True and beat["strategy_armed"] is None


def loopback_config() -> Config:
    """Every venue URL on a closed loopback port: the services start without leaving the machine."""
    dead = free_port()
    return load_config(
        {
            "NEAR_INTENTS_RELAY_WS_URL": f"ws://127.0.0.1:{dead}/ws",
            "NEAR_INTENTS_RELAY_RPC_URL": f"http://127.0.0.1:{dead}/rpc",
            "NEAR_RPC_URLS": f"http://127.0.0.1:{dead}",
            "NEAR_INTENTS_BRIDGE_RPC_URL": f"http://127.0.0.1:{dead}/rpc",
            "HISTORY_METRICS_MS": "600000",
        },
        dotenv=None,
    )


async def test_against_running_services_then_stopped(store: HistoryStore, store_url: str) -> None:
    started = ["inventory-sync", "history-writer", "strategy-engine", "trade-executor"]
    bus = make_bus(None)
    await bus.start()
    running = await start_services(
        started, loopback_config(), bus=bus, store=store, ports={name: 0 for name in started}
    )
    urls = {name: running.url(name) for name in started}
    argv = ["--once", "--json", "--backfill", "3", "--store-url", store_url]
    for name in SERVICES:
        argv += ["--service-url", f"{name}={urls.get(name, f'http://127.0.0.1:{free_port()}')}"]
    try:
        async with aiohttp.ClientSession() as http, http.post(urls["strategy-engine"] + "/arm") as resp:
            assert resp.status == 200
        rc, text = await run_watch(argv)
        assert rc == 0
        *events, pic = [json.loads(line) for line in text.splitlines()]
        assert pic["event"] == "picture"
        assert [e["data"]["command_id"] for e in events if e["event"] == "command"] == [
            "cmd-2",
            "cmd-3",
            "cmd-4",
        ]
        assert {n for n, s in pic["services"].items() if s["up"]} == set(started)
        assert pic["strategy"] == {"up": True, "armed": True}
        assert pic["executor"] == {"up": True, "armed": False}
        assert pic["portfolio"]["source"] == "history-writer"
        assert pic["inventory"]["BTC"] == "0.011"

        rc, text = await run_watch(argv[:1] + argv[2:])  # text
        assert rc == 0
        assert "strategy-engine ARMED" in text and "trade-executor disarmed" in text
        assert "history-writer up" in text or "history-writer UNHEALTHY" in text
        assert "near-intents-ingest DOWN" in text
    finally:
        await stop_services(running, close_bus=False)
        await bus.close()
    rc, text = await run_watch(argv)
    assert rc == 0
    *events, pic = [json.loads(line) for line in text.splitlines()]
    assert len(events) == 3 * 4 + 1  # the store still answers: 3 of each stream and the settlement
    assert not any(s["up"] for s in pic["services"].values())
    assert pic["strategy"] == {"up": False, "armed": None}
    assert pic["portfolio"]["source"] == "portfolio_metrics_snapshots"


def test_cli_watch_once(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(migrate(sqlite_url))
    rc = cli_main(["watch", "--once", "--store-url", sqlite_url, *down_urls()])
    assert rc == 0
    out = capsys.readouterr().out
    assert "intents-mm watch" in out and "strategy-engine DOWN" in out and "(ok)" in out
    assert "inventory : unknown" in out


def test_cli_watch_store_down_is_shown_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://postgres:pw@127.0.0.1:{free_port()}/nothing"
    rc = cli_main(["watch", "--once", "--store-url", url, *down_urls()])
    assert rc == 0
    out = capsys.readouterr().out
    assert "DOWN: history store" in out and ":pw@" not in out


@pytest.mark.parametrize("python", ["venv", "plain"])
def test_script_runs_from_the_repo_root(python: str, sqlite_url: str, tmp_path: Path) -> None:
    """`python3 scripts/ops/watch_live_mm.py --once` works with the venv's python and with plain python3."""
    exe = sys.executable if python == "venv" else shutil.which("python3")
    if exe is None:
        pytest.skip("no python3 on PATH")
    asyncio.run(migrate(sqlite_url))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "POSTGRES_URL", "INTENTS_MM_WATCH_REEXEC")
    }
    env["INTENTS_MM_VAR_DIR"] = str(tmp_path / "var")
    proc = subprocess.run(
        [exe, "scripts/ops/watch_live_mm.py", "--once", "--store-url", sqlite_url, *down_urls()],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "intents-mm watch" in proc.stdout and "trade-executor DOWN" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_script_names_missing_dependencies(tmp_path: Path) -> None:
    """A python without the packages and no venv to switch to: a clear message, exit 2, no traceback."""
    exe = shutil.which("python3")
    if exe is None:
        pytest.skip("no python3 on PATH")
    probe = subprocess.run([exe, "-c", "import msgspec"], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip("the plain python3 has the dependencies installed")
    copy = tmp_path / "repo" / "scripts" / "ops"
    copy.mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "ops" / "watch_live_mm.py", copy / "watch_live_mm.py")
    (tmp_path / "repo" / "src").symlink_to(REPO / "src")
    proc = subprocess.run(
        [exe, str(copy / "watch_live_mm.py"), "--once"],
        cwd=tmp_path / "repo",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "missing Python packages" in proc.stderr and "msgspec" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_amounts_above_ten_billion_eure_are_shown_exactly() -> None:
    """29+ significant digits: the default 28-digit Decimal context would round them."""
    from intents_mm.domain.amounts import from_units
    from intents_mm.domain.assets import EURE
    from intents_mm.watch import dec_text

    units = 123_456_789_012_345_678_901_234_567_891  # 123 456 789 012.345678901234567891 EURe
    assert dec_text(from_units(EURE, units), 18) == "123456789012.345678901234567891"
