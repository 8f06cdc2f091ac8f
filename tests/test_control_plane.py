"""Control-plane security and the shared control API contract, over real sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from intents_mm.app import start_services, stop_services
from intents_mm.bus import make_bus
from intents_mm.config import SERVICES, load_config
from intents_mm.errors import ConfigError, IntentsMMError
from intents_mm.storage.migrate import migrate
from intents_mm.storage.store import HistoryStore

ROOT = Path(__file__).resolve().parents[1]


def test_non_loopback_bind_without_token_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTROL_", "POSTGRES", "NATS"))}
    env.update({"CONTROL_API_HOST": "0.0.0.0", "INTENTS_MM_VAR_DIR": str(tmp_path)})
    out = subprocess.run(
        [sys.executable, "-m", "intents_mm", "run-all"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "CONTROL_API_TOKEN must be set when CONTROL_API_HOST=0.0.0.0" in out.stderr
    assert "Traceback" not in out.stderr
    with pytest.raises(ConfigError):
        load_config({"CONTROL_API_HOST": "10.1.2.3"}, dotenv=None)


async def test_control_server_itself_refuses_non_loopback_without_token(sqlite_url: str) -> None:
    config = load_config({}, dotenv=None).with_overrides(CONTROL_API_HOST="0.0.0.0")
    bus = make_bus(None)
    await bus.start()
    store = HistoryStore(sqlite_url)
    await migrate(sqlite_url)
    await store.connect()
    try:
        with pytest.raises(IntentsMMError, match="without CONTROL_API_TOKEN"):
            await start_services(
                ["strategy-engine"], config, bus=bus, store=store, ports={"strategy-engine": 0}
            )
    finally:
        await bus.close()
        await store.close()


async def test_mutating_calls_need_the_token_reads_do_not(sqlite_url: str) -> None:
    await migrate(sqlite_url)
    config = load_config({"CONTROL_API_TOKEN": "s3cret-token"}, dotenv=None)
    bus = make_bus(None)
    await bus.start()
    store = HistoryStore(sqlite_url)
    await store.connect()
    running = await start_services(
        ["strategy-engine"], config, bus=bus, store=store, ports={"strategy-engine": 0}
    )
    url = running.url("strategy-engine")
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/state", "/healthz", "/metrics", "/limits"):
                async with http.get(url + path) as resp:
                    assert resp.status in (200, 503), path  # healthz may be 503 (no data yet) but never 401
            async with http.post(url + "/arm") as resp:
                assert resp.status == 401
                assert "Bearer" in (await resp.json())["error"]
            async with http.post(url + "/arm", headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
            async with http.put(url + "/limits", json={"max_notional_eure": 1}) as resp:
                assert resp.status == 401
            async with http.get(url + "/state") as resp:
                assert (await resp.json())["armed"] is False
            headers = {"Authorization": "Bearer s3cret-token", "X-Operator": "alice"}
            async with http.post(url + "/arm", headers=headers) as resp:
                assert resp.status == 200
            async with http.get(url + "/state") as resp:
                state = await resp.json()
                assert state["armed"] is True
                assert "s3cret-token" not in str(state)
    finally:
        await stop_services(running)


def test_run_all_serves_every_control_api_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`intents-mm run-all`: all seven control APIs answer /healthz; SIGTERM stops with exit 0."""
    from conftest import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTROL_", "POSTGRES", "NATS", "NEAR_"))}
    ports = {name: free_port() for name in SERVICES}
    for name, port in ports.items():
        env[name.upper().replace("-", "_") + "_PORT"] = str(port)
    # venues point at a closed loopback port: nothing leaves the machine, services report themselves unhealthy
    dead = f"127.0.0.1:{free_port()}"
    env.update(
        {
            "INTENTS_MM_VAR_DIR": str(tmp_path / "var"),
            "NEAR_INTENTS_RELAY_WS_URL": f"ws://{dead}/ws",
            "NEAR_INTENTS_RELAY_RPC_URL": f"http://{dead}/rpc",
            "NEAR_RPC_URLS": f"http://{dead}",
            "NEAR_INTENTS_BRIDGE_RPC_URL": f"http://{dead}/rpc",
            **{
                f"{x}_WS_URL": f"ws://{dead}/{x.lower()}"
                for x in ("KRAKEN", "BITSTAMP", "COINBASE", "BINANCE")
            },
            **{f"{x}_REST_URL": f"http://{dead}" for x in ("KRAKEN", "BITSTAMP", "COINBASE", "BINANCE")},
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "intents_mm", "run-all", "--log-level", "warning"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        async def probe() -> dict[str, int]:
            seen: dict[str, int] = {}
            async with aiohttp.ClientSession() as http:
                for _ in range(300):
                    for name, port in ports.items():
                        if name in seen:
                            continue
                        try:
                            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                                body = await resp.json()
                                assert body["service"] == name
                                seen[name] = resp.status
                        except aiohttp.ClientConnectionError:
                            pass
                    if len(seen) == len(ports):
                        return seen
                    await asyncio.sleep(0.1)
            return seen

        seen = asyncio.run(probe())
        assert set(seen) == set(SERVICES), (seen, proc.stderr.read() if proc.poll() is not None else "")
        assert all(status in (200, 503) for status in seen.values())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)  # reap and close the pipes


async def test_port_in_use_is_a_one_line_error(sqlite_url: str) -> None:
    import socket

    await migrate(sqlite_url)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = load_config({}, dotenv=None)
        bus = make_bus(None)
        await bus.start()
        store = HistoryStore(sqlite_url)
        await store.connect()
        try:
            with pytest.raises(
                IntentsMMError, match=f"cannot listen on 127.0.0.1:{port}.*STRATEGY_ENGINE_PORT"
            ):
                await start_services(
                    ["strategy-engine"], config, bus=bus, store=store, ports={"strategy-engine": port}
                )
        finally:
            await bus.close()
            await store.close()
