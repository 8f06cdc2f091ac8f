"""SolverRelayClient against the simulated Solver Relay (intents_mm.sim.relay.SimRelay) over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from intents_mm.venues.relay import ConnectionState, QuoteRequestEvent, QuoteStatusEvent, SolverRelayClient
from relay_testkit import BTC, EUR, EURE, SimVenue, sign_diff

KEYS = {"key-mm": "mm", "key-other": "other"}


@pytest.fixture
async def venue() -> AsyncIterator[SimVenue]:
    v = await SimVenue.start(KEYS)
    try:
        yield v
    finally:
        await v.stop()


async def started(
    venue: SimVenue, *, instance_id: str | None = None, key: str = "key-mm"
) -> SolverRelayClient:
    client = SolverRelayClient(
        venue.relay.ws_url, api_key=key, instance_id=instance_id, backoff_initial_s=0.05, request_timeout_s=3
    )
    await client.subscribe_quotes([BTC, EURE], [BTC, EURE])
    await client.subscribe_status(guaranteed=instance_id is not None)
    await client.start()
    assert await client.wait_connected(5)
    return client


async def next_event(client: SolverRelayClient) -> QuoteRequestEvent | QuoteStatusEvent:
    return await asyncio.wait_for(client.next_event(), 5)


async def test_quote_response_accepted_refused_and_status_delivered(venue: SimVenue) -> None:
    client = await started(venue)
    venue.relay.early_close = False  # keep the window open for three answers from one solver
    try:
        assert venue.relay.stats()["subscriptions"] == {"quote": 1, "quote_status": 1}
        s_key, s_acc = venue.account("mm-signer", {EURE: 100 * EUR})
        asking = asyncio.create_task(
            venue.relay.request_quote(
                {
                    "defuse_asset_identifier_in": BTC,
                    "defuse_asset_identifier_out": EURE,
                    "exact_amount_in": "5000",
                    "min_deadline_ms": 60000,
                },
                partner_id="router-solver",
            )
        )
        ev = await next_event(client)
        assert isinstance(ev, QuoteRequestEvent)
        assert (ev.asset_in, ev.asset_out, ev.exact_amount_in, ev.exact_amount_out) == (
            BTC,
            EURE,
            "5000",
            None,
        )
        assert ev.min_deadline_ms == 60000 and ev.partner_id == "router-solver"
        assert isinstance(ev.traceparent, str) and ev.traceparent.startswith("00-")
        assert ev.subscription in client.subscription_ids

        bogus = await client.send_quote_response(
            {"quote_id": ev.quote_id, "quote_output": {"amount_out": "1"}, "signed_data": {"standard": "x"}}
        )
        assert not bogus.ok and bogus.error_code == -32000
        assert bogus.error_message is not None and "invalid signed_data" in bogus.error_message

        signed = sign_diff(
            s_key,
            s_acc,
            {BTC: 5000, EURE: -2 * EUR},
            deadline_ns=venue.deadline(),
            salt=venue.verifier.current_salt(),
        )
        body = {"quote_id": ev.quote_id, "quote_output": {"amount_out": str(2 * EUR)}, "signed_data": signed}
        accepted = await client.send_quote_response(body)
        assert accepted.ok and accepted.result == "OK"
        duplicate = await client.send_quote_response(body)
        assert not duplicate.ok and "duplicate quote" in (duplicate.error_message or "")
        quotes = await asking
        assert quotes is not None and quotes[0]["amount_out"] == str(2 * EUR)

        # a settled quote of ours comes back as quote_status on our status subscription
        venue.relay.early_close = True
        other = SolverRelayClient(venue.relay.ws_url, api_key="key-other")
        await other.subscribe_status()
        await other.start()
        assert await other.wait_connected(5)
        try:
            quote_hash, intent_hash = await venue.answer_and_settle(client, solver_label="mm-2")
            st = await next_event(client)
            assert isinstance(st, QuoteStatusEvent)
            assert (st.quote_hash, st.intent_hash) == (quote_hash, intent_hash)
            assert isinstance(st.tx_hash, str) and venue.chain.tx_record(st.tx_hash) is not None
            assert st.seq is None and not st.guaranteed
            with pytest.raises(TimeoutError):  # another partner does not see our settlement
                await asyncio.wait_for(other.next_event(), 0.3)
        finally:
            await other.close()
    finally:
        await client.close()


async def test_guaranteed_status_is_redelivered_until_acknowledged(venue: SimVenue) -> None:
    client = await started(venue, instance_id="prod-1")
    try:
        quote_hash, _ = await venue.answer_and_settle(client)
        st = await next_event(client)
        assert isinstance(st, QuoteStatusEvent) and st.guaranteed and st.seq == 1
        assert st.quote_hash == quote_hash
        first_sub = st.subscription

        # not acknowledged: a forced disconnect brings it back on the new connection
        assert await venue.relay.disconnect_all() == 1
        again = await next_event(client)
        assert isinstance(again, QuoteStatusEvent) and again.seq == 1 and again.quote_hash == quote_hash
        assert again.subscription != first_sub and again.subscription in client.subscription_ids
        assert client.connections == 2
        assert not await client.acknowledge(str(first_sub), 1)  # old connection's id: not sent

        assert await client.acknowledge(str(again.subscription), 1, wait=True)
        queue = venue.relay.stats()["guaranteed_queues"]["QS_mm_prod-1"]
        assert queue["pending"] == 0
        await venue.relay.disconnect_all()
        for _ in range(100):
            if client.connected and client.connections == 3:
                break
            await asyncio.sleep(0.05)
        assert client.connected and client.connections == 3
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.next_event(), 0.3)
    finally:
        await client.close()


async def test_forced_disconnect_resubscribes_within_seconds(venue: SimVenue) -> None:
    client = await started(venue)
    try:
        before = set(client.subscription_ids)
        await venue.relay.disconnect_all()
        for _ in range(100):
            if client.connected and client.connections == 2:
                break
            await asyncio.sleep(0.05)
        assert client.connected and client.connections == 2
        assert set(client.subscription_ids).isdisjoint(before) and len(client.subscription_ids) == 2
        assert venue.relay.stats()["subscriptions"] == {"quote": 1, "quote_status": 1}
    finally:
        await client.close()


async def test_wrong_key_is_an_auth_failure(venue: SimVenue) -> None:
    client = SolverRelayClient(venue.relay.ws_url, api_key="not-a-key")
    await client.subscribe_quotes()
    await client.start()
    try:
        assert not await client.wait_connected(3)
        assert client.state is ConnectionState.AUTH_FAILED
        assert "HTTP 403" in (client.auth_problem or "")
        assert venue.relay.stats()["counts"]["ws_rejected_auth"] == 1
    finally:
        await client.close()


async def test_docs_envelope_from_the_simulated_relay() -> None:
    venue = await SimVenue.start(KEYS, envelope="docs")
    client = await started(venue)
    try:
        quote_hash, intent_hash = await venue.answer_and_settle(client)
        st = await next_event(client)
        assert isinstance(st, QuoteStatusEvent) and (st.quote_hash, st.intent_hash) == (
            quote_hash,
            intent_hash,
        )
        assert client.counts["events_quote"] == 1 and client.counts["events_unknown_subscription"] == 0
    finally:
        await client.close()
        await venue.stop()
