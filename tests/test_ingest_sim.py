"""near-intents-ingest against the simulated Solver Relay over loopback sockets, end to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from intents_mm.bus.memory import MemoryBus
from intents_mm.messages import QUOTE_STATUS, SWAP_REQUEST, QuoteStatus, SwapRequest
from intents_mm.venues.relay import SolverRelayClient
from relay_testkit import BTC, EUR, EURE, Ingest, SimVenue, wait_until

KEYS = {"key-mm": "mm", "key-frontend": "frontend"}
MS = 1_000_000


@pytest.fixture
async def venue() -> AsyncIterator[SimVenue]:
    v = await SimVenue.start(KEYS, window_ms=300)
    try:
        yield v
    finally:
        await v.stop()


def env(venue: SimVenue, **extra: str) -> dict[str, str]:
    return {"NEAR_INTENTS_RELAY_WS_URL": venue.relay.ws_url, "NEAR_INTENTS_API_KEY": "key-mm", **extra}


async def frontend_quote(venue: SimVenue, request: dict[str, Any]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": "dontcare", "method": "quote", "params": [request]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            venue.relay.rpc_url, json=body, headers={"Authorization": "Bearer key-frontend"}
        ) as resp,
    ):
        doc: dict[str, Any] = await resp.json()
        return doc


async def executor_like(venue: SimVenue) -> SolverRelayClient:
    """A second connection with our key that answers quotes (as the trade-executor would)."""
    client = SolverRelayClient(venue.relay.ws_url, api_key="key-mm")
    await client.subscribe_quotes([BTC, EURE], [BTC, EURE])
    await client.start()
    assert await client.wait_connected(5)
    return client


async def test_frontend_quote_reaches_the_bus(venue: SimVenue, tmp_path: Path) -> None:
    ingest = await Ingest.start(env(venue), tmp=tmp_path)
    try:
        answer = await frontend_quote(
            venue,
            {
                "defuse_asset_identifier_in": EURE,
                "defuse_asset_identifier_out": BTC,
                "exact_amount_out": "250000",
                "min_deadline_ms": 90000,
            },
        )
        assert answer["result"] is None  # nobody answered within the window
        [req] = await ingest.wait_published(SWAP_REQUEST, 1)
        assert isinstance(req, SwapRequest)
        assert (req.asset_in, req.asset_out) == (EURE, BTC)
        assert req.exact_amount_out == 250000 and req.exact_amount_in is None
        assert req.min_deadline_ms == 90000 and req.partner_id == "1click"
        assert req.traceparent is not None and req.traceparent.startswith("00-")
        assert req.relay_deadline_ns - req.received_ts_ns == 3000 * MS
        assert ingest.published[0].msg_id == f"swap:{req.quote_id}"

        # the relay applies the pair filter: another pair never reaches the ingest
        await frontend_quote(
            venue,
            {
                "defuse_asset_identifier_in": "nep141:wrap.near",
                "defuse_asset_identifier_out": BTC,
                "exact_amount_in": "5",
            },
        )
        _, state = await ingest.get("/state")
        assert state["quotes"]["received"] == 1 and state["quotes"]["published"] == 1
        assert state["token_filter"] == [BTC, EURE] and state["pair"] == "BTC/EURe"
    finally:
        await ingest.stop()


class GateBus(MemoryBus):
    """Holds ``demand.quote_status`` publishes until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> None:
        if subject == QUOTE_STATUS:
            await self.gate.wait()
        await super().publish(subject, data, msg_id=msg_id)


async def test_status_and_forced_disconnect_publish_nothing_twice(venue: SimVenue, tmp_path: Path) -> None:
    bus = GateBus()
    ingest = await Ingest.start(env(venue, NEAR_INTENTS_INSTANCE_ID="prod-1"), bus=bus, tmp=tmp_path)
    solver = await executor_like(venue)
    try:
        quote_hash, intent_hash = await venue.answer_and_settle(solver, amount_in=2000, amount_out=EUR)
        [req] = await ingest.wait_published(SWAP_REQUEST, 1)
        assert req.exact_amount_in == 2000
        [status] = await ingest.wait_published(QUOTE_STATUS, 1)
        assert isinstance(status, QuoteStatus)
        assert (status.quote_hash, status.intent_hash, status.seq) == (quote_hash, intent_hash, 1)
        assert venue.chain.tx_record(status.tx_hash) is not None
        queues = venue.relay.stats()["guaranteed_queues"]
        await wait_until(lambda: venue.relay.stats()["guaranteed_queues"]["QS_mm_prod-1"]["pending"] == 0)
        assert queues["QS_mm_prod-1"]["next_seq"] == 2

        # the next status is held in the bus publish while the relay drops every socket: its ack
        # cannot go out, the relay redelivers it, and it is still published once
        bus.gate.clear()
        second_hash, _ = await venue.answer_and_settle(solver, amount_in=3000, amount_out=EUR)
        await wait_until(lambda: ingest.service.statuses["received"] == 2)
        first_subs = set(ingest.service.client.subscription_ids)
        assert await venue.relay.disconnect_all() == 2
        bus.gate.set()
        await wait_until(
            lambda: ingest.service.client.connected and ingest.service.client.connections == 2, timeout=5
        )
        assert set(ingest.service.client.subscription_ids).isdisjoint(first_subs)
        await wait_until(lambda: venue.relay.stats()["guaranteed_queues"]["QS_mm_prod-1"]["pending"] == 0)
        statuses = ingest.payloads(QUOTE_STATUS)
        assert [s.quote_hash for s in statuses] == [quote_hash, second_hash]
        assert ingest.service.statuses["duplicate"] == 1  # the redelivery
        assert ingest.service.statuses["ack_not_sent"] == 1  # the ack on the dropped socket

        # after the reconnect quotes keep flowing, each published once
        await wait_until(lambda: solver.connected and solver.connections == 2)
        await venue.answer_and_settle(solver, amount_in=4000, amount_out=EUR)
        swaps = await ingest.wait_published(SWAP_REQUEST, 3)
        await asyncio.sleep(0.1)
        assert [s.exact_amount_in for s in ingest.payloads(SWAP_REQUEST)] == [2000, 3000, 4000]
        assert len({s.quote_id for s in swaps}) == 3
        await ingest.wait_published(QUOTE_STATUS, 3)
        _, state = await ingest.get("/state")
        assert state["statuses"]["published"] == 3 and state["relay"]["connections"] == 2
        assert state["quotes"]["published"] == 3
    finally:
        await solver.close()
        await ingest.stop()


async def test_wrong_key_is_reported_by_state_and_healthz(venue: SimVenue, tmp_path: Path) -> None:
    ingest = await Ingest.start(env(venue, NEAR_INTENTS_API_KEY="stolen-key"), tmp=tmp_path)
    try:
        status, body = await ingest.get("/healthz")
        assert status == 503 and "HTTP 403" in body["failing"]["relay"]
        _, state = await ingest.get("/state")
        assert state["connection"] == "auth_failed"
        assert "NEAR_INTENTS_API_KEY is not accepted" in state["auth_problem"]
        assert venue.relay.stats()["counts"]["ws_rejected_auth"] == 1
    finally:
        await ingest.stop()
