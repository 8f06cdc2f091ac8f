"""`intents-mm sim-venue` as an operator runs it: a subprocess that prints its URLs, stops on a signal."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from intents_mm.config import load_config, read_dotenv

START_BOUND_S = 5.0  # the product promises < 2 s; asserted loosely, the measured figure is printed


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    lines: list[str]
    env: dict[str, str]
    admin: str
    start_s: float


async def launch(*args: str, cwd: Path) -> Running:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "intents_mm",
        "sim-venue",
        "--port-base",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not (lines and lines[-1].startswith("Ctrl-C")):
                raw = await proc.stdout.readline()
                if not raw:
                    break
                lines.append(raw.decode().rstrip("\n"))
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    start_s = time.monotonic() - t0
    if not lines or not lines[-1].startswith("Ctrl-C"):
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
        await proc.wait()
        pytest.fail(f"sim-venue did not start: {err or lines}")
    env = {}
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.isupper() and " " not in name:
            env[name] = value
    admin = next(line.split()[1] for line in lines if line.strip().startswith("admin "))
    return Running(proc, lines, env, admin, start_s)


async def finish(run: Running, sig: int) -> tuple[int, str]:
    run.proc.send_signal(sig)
    async with asyncio.timeout(15):
        _, err = await run.proc.communicate()
    assert run.proc.returncode is not None
    return run.proc.returncode, err.decode()


@pytest.fixture
async def sessions() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_prints_urls_key_and_env_fast_and_stops_on_sigint(
    sessions: aiohttp.ClientSession, tmp_path: Path
) -> None:
    run = await launch("--seed", "3", cwd=tmp_path)
    try:
        print(f"\nintents-mm sim-venue: URLs printed {run.start_s:.2f} s after the process was spawned")
        assert run.start_s < START_BOUND_S
        text = "\n".join(run.lines)
        assert "PLAY MONEY" in text and "play money" in text
        env = run.env
        for name in (
            "NEAR_INTENTS_RELAY_WS_URL",
            "NEAR_INTENTS_RELAY_RPC_URL",
            "NEAR_RPC_URLS",
            "NEAR_INTENTS_BRIDGE_RPC_URL",
            "KRAKEN_WS_URL",
            "KRAKEN_REST_URL",
            "BITSTAMP_WS_URL",
            "BITSTAMP_REST_URL",
            "COINBASE_WS_URL",
            "COINBASE_REST_URL",
            "BINANCE_WS_URL",
            "BINANCE_REST_URL",
            "NEAR_INTENTS_API_KEY",
            "NEAR_INTENTS_ACCOUNT_ID",
            "NEAR_INTENTS_SIGNER_PRIVATE_KEY",
        ):
            assert env.get(name), name
        assert f"relay API key     {env['NEAR_INTENTS_API_KEY']}" in text
        assert f"solver account    {env['NEAR_INTENTS_ACCOUNT_ID']}" in text
        assert env["NEAR_INTENTS_SIGNER_PRIVATE_KEY"] in text
        assert "accounts (every funded solver account" in text and "sim-solver-2" in text
        # the block pasted into .env is a valid configuration for the services
        dotenv = tmp_path / ".env"
        dotenv.write_text("\n".join(f"{k}={v}" for k, v in env.items()) + "\n", encoding="utf-8")
        assert read_dotenv(dotenv) == env
        config = load_config({}, dotenv=dotenv)
        assert config["NEAR_INTENTS_ACCOUNT_ID"] == env["NEAR_INTENTS_ACCOUNT_ID"]
        # the endpoints answer
        async with sessions.get(f"{run.admin}/state") as resp:
            assert resp.status == 200
            state = await resp.json()
        assert state["mm_account"] == env["NEAR_INTENTS_ACCOUNT_ID"]
        assert state["flow_started"] is True  # the venue runs its request flow for external solvers
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await sessions.ws_connect(env["NEAR_INTENTS_RELAY_WS_URL"])
        assert refused.value.status == 403
        headers = {"Authorization": f"Bearer {env['NEAR_INTENTS_API_KEY']}"}
        async with sessions.ws_connect(env["NEAR_INTENTS_RELAY_WS_URL"], headers=headers) as ws:
            await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": ["quote"]})
            assert isinstance((await asyncio.wait_for(ws.receive_json(), 5))["result"], str)
    finally:
        code, err = await finish(run, signal.SIGINT)
    assert code == 0, err
    assert "sim-venue stopped:" in err
    assert "Traceback" not in err
    # at exit: every solver's scoreboard row (ours, the two competitors of the default scenario)
    assert "scoreboard (PLAY MONEY" in err
    assert all(label in err for label in ("market-maker", "sim-solver-1", "sim-solver-2"))


async def test_allow_anonymous_admits_keyless_solvers_and_sigterm_stops(
    sessions: aiohttp.ClientSession, tmp_path: Path
) -> None:
    run = await launch("--allow-anonymous", "--scenario", "faults", cwd=tmp_path)
    try:
        assert "anonymous solvers allowed" in "\n".join(run.lines)
        async with sessions.ws_connect(run.env["NEAR_INTENTS_RELAY_WS_URL"]) as ws:
            await ws.send_json({"jsonrpc": "2.0", "id": 7, "method": "subscribe", "params": ["quote"]})
            reply = await asyncio.wait_for(ws.receive_json(), 5)
            assert reply["id"] == 7 and isinstance(reply["result"], str)
    finally:
        code, err = await finish(run, signal.SIGTERM)
    assert code == 0, err


async def test_bad_scenario_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[relay]\nwindow_ms = 'soon'\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "intents_mm",
        "sim-venue",
        "--scenario",
        str(bad),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 2
    assert out == b""
    assert err.decode().strip().splitlines() == [
        "intents-mm: bad.toml: [relay] window_ms: must be an integer >= 1, got 'soon'"
    ]
