"""End to end: the invariants after a seeded run, single-process (memory bus + SQLite) and distributed
(seven processes, NATS JetStream + PostgreSQL).

Each run warms up, arms, runs the simulated user flow for a few seconds while sampling balances and
reservations, stops the flow, stops every producer and lets history-writer drain, then checks
:func:`e2e_kit.check_invariants` and the producers' own counters against the store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from e2e_kit import DistributedRun, E2ERun, InProcessRun, Report, e2e_env, e2e_scenario, exercise

FLOW_S = 8.0

pytestmark = pytest.mark.slow


async def seeded_run(run: E2ERun) -> Report:
    """The flow for a few seconds, then every invariant, and the producers' counters against the store."""
    ex = await exercise(run, flow_s=FLOW_S)
    report, states = ex.report, ex.states
    # the producers' own counters match what the store holds
    assert states["near-intents-ingest"]["quotes"]["published"] == report.requests
    assert states["strategy-engine"]["counters"]["requests"] == report.requests
    assert states["strategy-engine"]["counters"]["commands"] == report.commands
    assert sum(states["trade-executor"]["counts"].values()) == sum(report.results.values())
    # ...and the run did something worth checking
    assert report.requests >= 20, report
    assert report.commands >= 5 and report.results["accepted"] >= 5, report
    assert report.settlements >= 2 and report.signed >= report.results["accepted"], report
    assert report.metrics_checked >= 2, report
    return report


async def test_invariants_single_process_memory_bus_and_sqlite(tmp_path: Path) -> None:
    run = InProcessRun(tmp=tmp_path, scenario=e2e_scenario())
    async with asyncio.timeout(90):
        report = await seeded_run(run)
    assert run.store_url.startswith("sqlite")
    assert report.stored["demand.swap_request"] == report.requests


async def test_invariants_distributed_processes_nats_and_postgresql(
    tmp_path: Path, pg_url: str, nats_server_url: str, stream_prefix: str
) -> None:
    env = e2e_env(tmp_path, NATS_URL=nats_server_url, NATS_STREAM=stream_prefix, POSTGRES_URL=pg_url)
    run = DistributedRun(tmp=tmp_path, scenario=e2e_scenario(), env=env)
    async with asyncio.timeout(150):
        report = await seeded_run(run)
    assert run.store_url.startswith("postgresql")
    # every service ran in its own process, and every process was stopped
    pids = {p.pid for p in run.processes.values()}
    assert len(pids) == 7 and None not in pids
    assert all(not p.running() for p in run.processes.values())
    assert report.stored["exec.trade_result"] == sum(report.results.values())
