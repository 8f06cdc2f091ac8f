"""End to end: fault drills. Each injects one fault into a running, armed market maker, asserts the
recovery, and then checks every invariant of :func:`e2e_kit.check_invariants` (nothing lost, nothing
duplicated, nothing signed twice or late). How to run each drill by hand: ``docs/fault-drills.md``.

Single-process (``simulate``'s composition): relay disconnect; a stale and an outlier exchange, then
too many stale; a NATS server restart (a private nats-server, never the shared one); a PostgreSQL
outage with history catch-up (a private PostgreSQL cluster made with ``initdb`` on a free port, never
the shared one). Distributed (one process per service): ``kill -9`` of trade-executor and its restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import PrivatePostgres
from e2e_kit import (
    DistributedRun,
    E2ERun,
    InProcessRun,
    PrivateNats,
    e2e_env,
    e2e_scenario,
    exercise,
    stored,
    wait_accepted,
    wait_for,
)
from intents_mm import messages as m
from intents_mm.config import SERVICES
from intents_mm.sim.scenario import Fault

pytestmark = pytest.mark.slow


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateNats]:
    """A started nats-server of the test's own (restartable on its port and store), killed afterwards."""
    server = PrivateNats(tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def healthz(run: E2ERun, name: str) -> tuple[int, dict[str, Any]]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(f"{run.url(name)}/healthz") as resp,
        ):
            body = await resp.json(content_type=None)
            return resp.status, body if isinstance(body, dict) else {}
    except (aiohttp.ClientError, OSError, TimeoutError):
        return 0, {}


async def all_healthy(run: E2ERun) -> bool:
    return all([(await healthz(run, name))[0] == 200 for name in SERVICES])


# ------------------------------------------------------------------------------------ relay disconnect


async def test_relay_disconnect_ingest_resubscribes_and_quoting_resumes(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def drill(run: E2ERun) -> None:
        assert run.venue is not None
        await wait_accepted(run, 3, what="quotes before the disconnect")
        before = (await run.state("near-intents-ingest"))["relay"]
        closed = await run.venue.relay.disconnect_all()
        assert closed >= 4  # ingest, the executor's own connection and the two competitors
        seen["closed"] = closed

        async def resubscribed() -> bool:
            st = await run.state("near-intents-ingest")
            return (
                st["connection"] == "connected"
                and st["relay"]["connections"] > before["connections"]
                and len(st["subscriptions"]) == 2
            )

        await wait_for(resubscribed, timeout_s=15, what="near-intents-ingest to reconnect and resubscribe")
        await wait_accepted(run, 3, what="quotes after the disconnect")
        await wait_for(lambda: all_healthy(run), timeout_s=10, what="every /healthz 200")
        seen["ingest"] = await run.state("near-intents-ingest")

    run = InProcessRun(tmp=tmp_path, scenario=e2e_scenario())
    async with asyncio.timeout(90):
        ex = await exercise(run, drill=drill)
    # nothing was published twice: each quote once on the bus and once in the store
    assert ex.report.stored["demand.swap_request"] == ex.report.requests
    assert ex.states["near-intents-ingest"]["quotes"]["published"] == ex.report.requests
    assert ex.report.results["accepted"] >= 6
    assert seen["ingest"]["relay"]["connections"] >= 2


# ------------------------------------------------------------------------------------ reference faults


async def test_exchange_outlier_and_stale_then_too_many_stale_declines_and_recovers(tmp_path: Path) -> None:
    """An outlier venue is dropped and a stale one ignored while the reference stays usable; with three
    of four stale the reference goes stale, the strategy declines ``reference_stale`` and resumes when
    the venues recover."""
    seen: dict[str, Any] = {}

    async def reference(run: E2ERun) -> tuple[dict[str, Any], dict[str, Any]]:
        mri = await run.state("market-reference-ingest")
        strategy = await run.state("strategy-engine")
        return mri, strategy

    async def drill(run: E2ERun) -> None:
        venue = run.venue
        assert venue is not None
        await wait_accepted(run, 2, what="quotes before the faults")

        # 1. an outlier: kraken 300 bps off is excluded; the reference stays ok/degraded and near the path
        await venue.apply_fault(Fault(kind="exchange_outlier", venue="kraken", bps=300.0, duration_s=3.0))

        async def kraken_outlier() -> bool:
            mri, _ = await reference(run)
            return bool(mri["sources"]["kraken"]["status"] == "outlier")

        await wait_for(kraken_outlier, timeout_s=5, what="kraken marked an outlier")
        for _ in range(5):
            mri, strategy = await reference(run)
            assert strategy["reference"]["quality"] in ("ok", "degraded"), strategy["reference"]
            mid = Decimal(strategy["reference"]["mid"])
            path = venue.price_at(time.time_ns())
            assert abs(mid - path) / path < Decimal("0.002"), (mid, path)  # 20 bps, not kraken's 300
            await asyncio.sleep(0.3)
        seen["outlier"] = mri["sources"]["kraken"]

        # 2. one stale venue: marked stale, the reference stays usable, quoting goes on
        await venue.apply_fault(Fault(kind="exchange_stale", venue="bitstamp", duration_s=8.0))

        async def bitstamp_stale() -> bool:
            mri, _ = await reference(run)
            return bool(mri["sources"]["bitstamp"]["status"] == "stale")

        await wait_for(bitstamp_stale, timeout_s=6, what="bitstamp marked stale")
        _, strategy = await reference(run)
        assert strategy["reference"]["quality"] in ("ok", "degraded")
        await wait_accepted(run, 2, timeout_s=10, what="quotes with one venue stale")

        # 3. too many stale: below quorum, the reference is stale and the strategy declines
        for name in ("kraken", "coinbase"):
            await venue.apply_fault(Fault(kind="exchange_stale", venue=name, duration_s=4.0))

        async def reference_stale() -> bool:
            _, strategy = await reference(run)
            return bool(strategy["declined_by_reason"].get("reference_stale", 0) >= 2)

        await wait_for(reference_stale, timeout_s=10, what="declines for reference_stale")
        _, strategy = await reference(run)
        assert strategy["reference"]["quality"] == "stale" and strategy["quoting"] is False
        commands = strategy["counters"]["commands"]
        await asyncio.sleep(0.5)
        _, strategy = await reference(run)
        if strategy["reference"]["quality"] == "stale":
            assert strategy["counters"]["commands"] == commands, "no command while the reference is stale"
        seen["declined"] = strategy["declined_by_reason"]["reference_stale"]

        # recovery: the venues come back, the reference is fresh again and quoting resumes
        async def fresh() -> bool:
            _, strategy = await reference(run)
            return bool(strategy["reference"]["quality"] in ("ok", "degraded") and strategy["quoting"])

        await wait_for(fresh, timeout_s=15, what="a fresh reference after the venues recover")
        await wait_accepted(run, 3, what="quotes after the recovery")

    env = e2e_env(tmp_path, REFERENCE_STALE_MS="1500")
    run = InProcessRun(tmp=tmp_path, scenario=e2e_scenario(), env=env)
    async with asyncio.timeout(120):
        ex = await exercise(run, drill=drill)
    assert seen["outlier"]["status"] == "outlier"
    assert ex.states["strategy-engine"]["declined_by_reason"]["reference_stale"] >= seen["declined"] >= 2
    assert ex.report.stored["market.reference_price"] > 20


# ------------------------------------------------------------------------------------ NATS restart


async def test_nats_server_restart_loses_nothing_acked(tmp_path: Path, private_nats: PrivateNats) -> None:
    nats_server = private_nats
    seen: dict[str, Any] = {}

    async def drill(run: E2ERun) -> None:
        await wait_accepted(run, 3, what="quotes before the restart")
        nats_server.kill()

        async def bus_down() -> bool:
            status, body = await healthz(run, "strategy-engine")
            return status == 503 and "bus" in body.get("failing", {})

        await wait_for(bus_down, timeout_s=10, what="the bus reported down")
        await asyncio.sleep(1.0)
        nats_server.start()
        await wait_for(lambda: all_healthy(run), timeout_s=30, what="every service healthy again")
        await wait_accepted(run, 3, timeout_s=30, what="quotes after the restart")
        seen["reconnects"] = (await run.state("strategy-engine"))["bus"]["counters"]["reconnects"]

    env = e2e_env(tmp_path, NATS_URL=nats_server.url)
    run = InProcessRun(tmp=tmp_path, scenario=e2e_scenario(), env=env)
    async with asyncio.timeout(120):
        ex = await exercise(run, drill=drill)
    assert seen["reconnects"] >= 1
    assert ex.report.results["accepted"] >= 6
    # every acknowledged publish is stored (checked by exercise); the tap saw the outage's backlog too
    assert ex.report.stored["cmd.execute_trade"] == ex.report.commands


# ------------------------------------------------------------------------------------ PostgreSQL outage


async def test_postgresql_outage_history_catches_up_exactly_once(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    """history-writer holds or spills to its journal the messages while PostgreSQL is down (and says
    so on /healthz) and stores each exactly once when it is back. Quoting goes on meanwhile: the executor's
    signed-at-most-once ledger is a local file, mirrored into ``signed_commands`` once the store is
    back (the invariants then find every quote the relay got in it). The PostgreSQL stopped is a
    private cluster of this test's own (``private_postgres``), never the machine's shared server."""
    pg_url = private_postgres.create_database("imm_drill")
    seen: dict[str, Any] = {}

    async def drill(run: E2ERun) -> None:
        await wait_accepted(run, 3, what="quotes before the outage")
        try:
            await asyncio.to_thread(private_postgres.stop)  # the loop keeps running meanwhile

            async def store_down() -> bool:
                status, body = await healthz(run, "history-writer")
                return status == 503 and "store" in body.get("failing", {})

            await wait_for(store_down, timeout_s=15, what="history-writer to report the store down")
            await wait_accepted(run, 3, timeout_s=15, what="quotes while PostgreSQL is down")
            state = await run.state("history-writer")
            journal = (state["persister"] or {}).get("journal") or {}
            seen["backlog"] = state["backlog"] + journal.get("rows_pending", 0)  # held or spilled
        finally:
            await asyncio.to_thread(private_postgres.start)

        async def caught_up() -> bool:
            status, _ = await healthz(run, "history-writer")
            state = await run.state("history-writer")
            journal = (state["persister"] or {}).get("journal") or {}
            return status == 200 and state["backlog"] == 0 and journal.get("rows_pending", 0) == 0

        await wait_for(caught_up, timeout_s=30, what="history-writer to catch up")
        await wait_accepted(run, 2, what="quotes after the outage")

    env = e2e_env(tmp_path, POSTGRES_URL=pg_url)
    run = InProcessRun(tmp=tmp_path, scenario=e2e_scenario(), env=env)
    async with asyncio.timeout(120):
        ex = await exercise(run, drill=drill)
    assert seen["backlog"] > 0, "messages were held or spilled to the journal during the outage"
    assert run.store_url.startswith("postgresql")
    assert ex.report.stored["market.reference_price"] > 20
    assert ex.report.signed >= ex.report.results["accepted"] >= 8


# ------------------------------------------------------------------------------------ kill -9 executor


async def test_kill_9_trade_executor_and_restart_signs_nothing_stale(
    tmp_path: Path, pg_url: str, nats_server_url: str, stream_prefix: str
) -> None:
    """kill -9 of the trade-executor process mid-run; commands pile up; the runner restarts the process
    (as compose and k3s would); it comes back disarmed and is armed again. Every command is signed at
    most once and never after its relay deadline, none that came while it was down is signed, and
    every command still gets exactly one result (one delivered to the dead process comes back after
    the consumer's ack wait)."""
    seen: dict[str, Any] = {}

    async def drill(run: E2ERun) -> None:
        assert isinstance(run, DistributedRun)
        await wait_accepted(run, 3, what="quotes before the kill")
        executor = run.processes["trade-executor"]
        old_pid = executor.pid
        assert old_pid is not None
        seen["killed_ns"] = time.time_ns()
        os.kill(old_pid, signal.SIGKILL)  # from outside, as an operator or the OOM killer would

        async def restarted() -> bool:  # the runner restarts it, as compose and k3s would
            return (
                executor.pid != old_pid
                and executor.running()
                and (await healthz(run, "trade-executor"))[0] == 200
            )

        await wait_for(restarted, timeout_s=30, what="trade-executor restarted by the runner")
        assert executor.starts == 2
        await asyncio.sleep(1.0)  # commands that came meanwhile are consumed while it is disarmed
        state = await run.state("trade-executor")
        assert state["armed"] is False, "a restarted executor starts disarmed"
        seen["arming_ns"] = time.time_ns()
        await run.arm_service("trade-executor")
        await wait_accepted(run, 3, timeout_s=30, what="quotes after the restart")
        seen["restarted"] = await run.state("trade-executor")

    async def every_command_answered(run: E2ERun) -> None:
        """Commands delivered to the killed process come back after the consumer's ack wait."""
        store = run.store
        assert store is not None

        async def answered() -> bool:
            envs = await stored(store, "execute_trade_commands")
            commands = [e.payload for e in envs if isinstance(e.payload, m.ExecuteTrade)]
            created = {p.command_id: e.ts_ns for e in envs if isinstance(p := e.payload, m.ExecuteTrade)}
            results = {
                e.payload.command_id: e.payload
                for e in await stored(store, "trade_execution_results")
                if isinstance(e.payload, m.TradeResult)
            }
            seen["while_dead"] = [
                results.get(c.command_id)
                for c in commands
                if seen["killed_ns"] <= created[c.command_id] < seen["arming_ns"]
            ]
            return all(c.command_id in results for c in commands)

        await wait_for(answered, timeout_s=45, what="a result for every command", every_s=1.0)

    env = e2e_env(tmp_path, NATS_URL=nats_server_url, NATS_STREAM=stream_prefix, POSTGRES_URL=pg_url)
    run = DistributedRun(tmp=tmp_path, scenario=e2e_scenario(), env=env)
    async with asyncio.timeout(170):
        ex = await exercise(run, drill=drill, after_flow=every_command_answered)
    assert ex.report.results["accepted"] >= 6
    assert run.processes["trade-executor"].starts == 2
    assert seen["restarted"]["armed"] is True
    # the commands that came while the executor was dead or not yet armed again were never signed
    while_dead = seen["while_dead"]
    assert len(while_dead) >= 3, "commands piled up while the executor was down"
    for result in while_dead:
        assert result is not None and result.outcome in ("skipped_disarmed", "dropped_late"), result
        assert result.quote_hash is None
