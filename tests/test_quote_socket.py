"""Which relay connection sends ``quote_response``: the executor's own (default) or the ingest's (the
connection that received the request), chosen by ``EXECUTOR_QUOTE_SOCKET``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from e2e_kit import InProcessRun, e2e_env, e2e_scenario, wait_accepted
from intents_mm.app import start_services
from intents_mm.bus import make_bus
from intents_mm.config import load_config
from intents_mm.errors import IntentsMMError
from intents_mm.services.near_intents_ingest import NearIntentsIngest
from intents_mm.services.trade_executor import TradeExecutor


@pytest.mark.parametrize(("socket", "connections"), [("ingest", 1), ("executor", 2)])
async def test_quotes_are_answered_on_the_chosen_connection(
    tmp_path: Path, socket: str, connections: int
) -> None:
    run = InProcessRun(
        tmp=tmp_path, scenario=e2e_scenario(), env=e2e_env(tmp_path, EXECUTOR_QUOTE_SOCKET=socket)
    )
    async with asyncio.timeout(90):
        await run.start()
        try:
            await run.arm()
            assert run.venue is not None
            await run.venue.start_flow()
            await wait_accepted(run, 3)
            assert run.running is not None
            executor = run.running.service("trade-executor")
            ingest = run.running.service("near-intents-ingest")
            assert isinstance(executor, TradeExecutor) and isinstance(ingest, NearIntentsIngest)
            assert (executor.relay is ingest.client) is (socket == "ingest")
            assert run.venue.relay.stats()["connections_by_partner"]["market-maker"] == connections
            answered = [s for s in run.venue.relay.latency_samples() if s.partner_id == "market-maker"]
            assert any(s.response_ns is not None for s in answered)
        finally:
            await run.stop_flow()
            await run.shutdown()


async def test_answering_on_the_ingest_connection_needs_the_ingest_in_the_same_process() -> None:
    config = load_config({"EXECUTOR_QUOTE_SOCKET": "ingest"}, dotenv=None)
    bus = make_bus(None)
    with pytest.raises(IntentsMMError, match="needs near-intents-ingest in the same process"):
        await start_services(["trade-executor"], config, bus=bus, store=None)  # type: ignore[arg-type]


def test_check_config_refuses_an_unknown_socket() -> None:
    with pytest.raises(IntentsMMError, match="EXECUTOR_QUOTE_SOCKET must be executor or ingest"):
        load_config({"EXECUTOR_QUOTE_SOCKET": "both"}, dotenv=None)
