"""Crash-only services: a service task that dies takes its service down and its process out.

- in-process, through the real runtime: a service whose ``run()`` raises answers ``/healthz`` 503
  naming the task and the exception in one line, shows it in ``/state`` and ``/metrics``, logs it
  once with its traceback, and ``app.serve`` stops every service and returns ``EXIT_TASK_DIED``;
- ``simulate`` (the in-process composition) stops with ``simulate failed: ...``;
- a real ``intents-mm run-all`` process against the simulated venue's URLs, whose trade-executor
  housekeeping loop dies (quote expiry raising an exception the loop does not handle), exits with
  status 3 after logging it.

The failures are injected by the tests themselves (a Service subclass, or a launcher that patches
one real method in the child process before calling the ordinary CLI entry point); the product has
no switch for it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import free_port
from intents_mm import app
from intents_mm.app import EXIT_TASK_DIED, serve, start_services, stop_services
from intents_mm.bus import make_bus
from intents_mm.config import SERVICES, load_config, port_var
from intents_mm.errors import IntentsMMError
from intents_mm.services import trade_executor
from intents_mm.services.runtime import Service, ServiceContext, one_line_error
from intents_mm.sim.scenario import Scenario
from intents_mm.sim.venue import SimVenue
from intents_mm.simulate import Simulation
from intents_mm.storage.migrate import migrate
from intents_mm.storage.store import HistoryStore


class Crashing(Service):
    """A runbook-named service whose ``run()`` raises once :attr:`go` is set; a helper task it spawned
    raises when :attr:`helper_go` is set."""

    name = "inventory-sync"
    instances: list[Crashing] = []  # noqa: RUF012 - the tests find the instance serve made

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.go = asyncio.Event()
        self.helper_go = asyncio.Event()
        self.stopped = False
        Crashing.instances.append(self)

    async def run(self) -> None:
        self.spawn(self._helper(), "helper")
        await self.go.wait()
        raise RuntimeError("key re-check\n  exploded")

    async def _helper(self) -> None:
        await self.helper_go.wait()
        raise ValueError("a later failure")

    async def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def crashing(monkeypatch: pytest.MonkeyPatch) -> type[Crashing]:
    Crashing.instances = []
    monkeypatch.setattr(app, "service_class", lambda name: Crashing)
    monkeypatch.setattr(app, "freeze_startup_heap", lambda: None)  # leave the test process's GC alone
    return Crashing


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


def test_one_line_error_folds_whitespace_and_bounds_length() -> None:
    assert one_line_error(RuntimeError("a\n  b\tc")) == "RuntimeError: a b c"
    assert one_line_error(KeyError()) == "KeyError"
    long = one_line_error(ValueError("x" * 1000), limit=50)
    assert len(long) == 50 and long.endswith("...")


async def test_a_dead_run_loop_turns_healthz_503_with_the_reason_and_is_logged_once(
    crashing: type[Crashing], sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await migrate(sqlite_url)
    bus = make_bus(None)
    await bus.start()
    store = HistoryStore(sqlite_url)
    await store.connect()
    config = load_config({}, dotenv=None)
    running = await start_services(
        ["inventory-sync"], config, bus=bus, store=store, ports={"inventory-sync": 0}
    )
    try:
        url = running.url("inventory-sync")
        svc = crashing.instances[0]
        status, body = await _get(f"{url}/healthz")
        assert status == 200 and body["checks"]["tasks"] == {"ok": True, "detail": ""}
        assert running.failures() == []

        caplog.set_level(logging.ERROR)
        svc.go.set()
        await asyncio.wait_for(running.wait_died(), 5)
        status, body = await _get(f"{url}/healthz")
        assert status == 503
        assert body["failing"] == {"tasks": "task run died: RuntimeError: key re-check exploded"}
        status, state = await _get(f"{url}/state")
        assert status == 200 and state["failure"]["task"] == "run"
        assert state["failure"]["error"] == "RuntimeError: key re-check exploded"
        status, metrics = await _get(f"{url}/metrics")
        assert 'service_task_failures_total{task="run"} 1.0' in metrics
        assert running.failures() == ["inventory-sync: task run died: RuntimeError: key re-check exploded"]

        # a later failure of another task is logged too, but the reason stays the first one
        svc.helper_go.set()
        for _ in range(50):
            if 'task="helper"' in (await _get(f"{url}/metrics"))[1]:
                break
            await asyncio.sleep(0.02)
        status, body = await _get(f"{url}/healthz")
        assert status == 503 and body["failing"]["tasks"].startswith("task run died: RuntimeError")

        died = [r for r in caplog.records if "task run died" in r.getMessage()]
        assert len(died) == 1, [r.getMessage() for r in caplog.records]
        assert died[0].exc_info is not None and isinstance(died[0].exc_info[1], RuntimeError)
        assert "the service is down" in died[0].getMessage()
        later = [r for r in caplog.records if "task helper died" in r.getMessage()]
        assert len(later) == 1 and "already down" in later[0].getMessage()
        # the task ended without an exception of its own: asyncio reports nothing more
        assert not [r for r in caplog.records if r.name == "asyncio"]
    finally:
        await stop_services(running)
    assert svc.stopped


async def test_serve_stops_every_service_and_exits_non_zero_when_a_task_dies(
    crashing: type[Crashing], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    config = load_config(
        {"INTENTS_MM_VAR_DIR": str(tmp_path / "var"), port_var("inventory-sync"): str(port)}, dotenv=None
    )
    served = asyncio.ensure_future(serve(["inventory-sync"], config, distributed=False))
    try:
        for _ in range(200):  # up and healthy first
            if crashing.instances and crashing.instances[0].ready:
                break
            await asyncio.sleep(0.05)
        status, _ = await _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        crashing.instances[0].go.set()
        code = await asyncio.wait_for(served, 30)
    finally:
        if not served.done():
            served.cancel()
    assert code == EXIT_TASK_DIED == 3
    svc = crashing.instances[0]
    assert svc.stopped and not svc.ready
    with pytest.raises(OSError):  # the control API is gone with the process's services
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    err = capsys.readouterr().err
    assert (
        "intents-mm: inventory-sync: task run died: RuntimeError: key re-check exploded; exited with status 3"
        in err
    )


@pytest.mark.slow
async def test_simulate_stops_with_a_clear_message_when_a_service_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = trade_executor.TradeExecutor._expire_outstanding

    def expiry_that_fails_once_armed(self: trade_executor.TradeExecutor) -> None:
        if self.armed:
            raise RuntimeError("quote expiry failed")
        original(self)

    monkeypatch.setattr(trade_executor.TradeExecutor, "_expire_outstanding", expiry_that_fails_once_armed)
    monkeypatch.setattr("intents_mm.simulate.freeze_startup_heap", lambda: None)
    out = io.StringIO()
    sim = Simulation(
        duration_s=120,
        seed=7,
        scenario=None,
        environ={"INTENTS_MM_VAR_DIR": str(tmp_path / "var")},
        dotenv=None,
        ports={name: 0 for name in SERVICES},
        out=out,
    )
    with pytest.raises(IntentsMMError) as info:
        await asyncio.wait_for(sim.run(), 90)
    reason = "trade-executor: task run died: RuntimeError: quote expiry failed"
    assert str(info.value) == f"simulate failed: {reason}"
    text = out.getvalue()
    assert f"!! {reason}; stopping the run" in text
    assert "=== simulate summary" in text  # the summary is still printed
    assert sim.running is None  # every service stopped


LAUNCHER = textwrap.dedent(
    """
    # The test's own launcher: make the trade-executor's quote-expiry step (run() loop) raise an
    # exception the loop does not handle after a few ticks, then run the ordinary CLI entry point.
    import sys

    from intents_mm.services import trade_executor

    original = trade_executor.TradeExecutor._expire_outstanding
    calls = 0

    def failing(self):
        global calls
        calls += 1
        if calls >= 6:
            raise RuntimeError("injected by the test: quote expiry failed")
        return original(self)

    trade_executor.TradeExecutor._expire_outstanding = failing

    from intents_mm.cli import main

    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
async def test_run_all_process_exits_non_zero_when_a_real_loop_dies(tmp_path: Path) -> None:
    venue = SimVenue(Scenario(), seed=7)
    await venue.start()
    try:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("CONTROL_", "POSTGRES", "NATS", "NEAR_"))
        }
        ports = {name: free_port() for name in SERVICES}
        env.update({port_var(name): str(port) for name, port in ports.items()})
        env.update(venue.env())
        env["INTENTS_MM_VAR_DIR"] = str(tmp_path / "var")
        launcher = tmp_path / "launch.py"
        launcher.write_text(LAUNCHER, encoding="utf-8")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(launcher),
            "run-all",
            "--log-level",
            "warning",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 90)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        await venue.stop()
    stderr = err.decode(errors="replace")
    assert proc.returncode == EXIT_TASK_DIED, stderr[-3000:]
    assert "running; control APIs on" in out.decode()  # it was up before the loop died
    reason = "trade-executor: task run died: RuntimeError: injected by the test: quote expiry failed"
    assert f"intents-mm: {reason}; exited with status 3" in stderr
    assert stderr.count("Traceback (most recent call last)") == 1, stderr[-3000:]
    assert "_expire_outstanding" in stderr
    for port in ports.values():  # every control API closed with the process
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
