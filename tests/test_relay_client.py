"""SolverRelayClient against recorded frames served by a scripted loopback WebSocket server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from intents_mm.errors import InputError, RpcError, TransportError
from intents_mm.venues.relay import (
    ConnectionState,
    QuoteRequestEvent,
    QuoteStatusEvent,
    SolverRelayClient,
    rpc_error_parts,
)
from relay_testkit import ScriptedRelay, fixture, ok_reply, with_id

BTC = "nep141:btc.omft.near"
EURE = "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"


@pytest.fixture
async def relay() -> AsyncIterator[ScriptedRelay]:
    server = ScriptedRelay(api_key="test-key")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def make_client(relay: ScriptedRelay, **kw: Any) -> SolverRelayClient:
    kw.setdefault("api_key", "test-key")
    kw.setdefault("request_timeout_s", 2.0)
    return SolverRelayClient(relay.ws_url, **kw)


async def connected_client(relay: ScriptedRelay, **kw: Any) -> SolverRelayClient:
    client = make_client(relay, **kw)
    await client.subscribe_quotes([BTC, EURE], [BTC, EURE])
    await client.subscribe_status(guaranteed=bool(kw.get("instance_id")))
    await client.start()
    assert await client.wait_connected(5.0)
    return client


async def next_event(client: SolverRelayClient) -> Any:
    return await asyncio.wait_for(client.next_event(), 2.0)


def frame(name: str, relay: ScriptedRelay) -> str:
    text = fixture(name)
    if "{SUB_QUOTE}" in text:
        text = text.replace("{SUB_QUOTE}", relay.sub_id("quote"))
    if "{SUB_STATUS}" in text:
        text = text.replace("{SUB_STATUS}", relay.sub_id("quote_status"))
    return text


# ---------------------------------------------------------------------------- connection and subscribe


async def test_connects_with_bearer_key_instance_id_and_resubscribable_params(relay: ScriptedRelay) -> None:
    client = await connected_client(relay, instance_id="prod-1")
    try:
        conn = relay.conns[0]
        assert conn.headers["Authorization"] == "Bearer test-key"
        assert conn.query == {"instance_id": "prod-1"}
        assert relay.requests == [
            ("subscribe", ["quote", {"tokens_in": [BTC, EURE], "tokens_out": [BTC, EURE]}]),
            ("subscribe", ["quote_status", None, True]),
        ]
        assert client.state is ConnectionState.CONNECTED
        assert set(client.subscription_ids) == set(conn.subs)
        assert sorted(client.subscription_ids.values()) == ["quote", "quote_status"]
        snap = client.snapshot()
        assert snap["state"] == "connected" and snap["api_key"] == "<set>"
        assert "test-key" not in json.dumps(snap)
        assert snap["url"] == relay.ws_url  # no query, no key
    finally:
        await client.close()
    assert client.snapshot()["state"] == "closed"


async def test_no_key_means_no_authorization_header() -> None:
    relay = ScriptedRelay(api_key=None)
    await relay.start()
    client = SolverRelayClient(relay.ws_url)
    try:
        await client.subscribe_status()
        await client.start()
        assert await client.wait_connected(5.0)
        assert "Authorization" not in relay.conns[0].headers
        assert relay.conns[0].query == {}
        assert relay.requests == [("subscribe", ["quote_status"])]
        assert client.snapshot()["api_key"] == "<unset>"
    finally:
        await client.close()
        await relay.stop()


async def test_subscribe_while_connected_returns_the_id_and_unsubscribe_drops_it(
    relay: ScriptedRelay,
) -> None:
    client = await connected_client(relay)
    try:
        sub = await client.subscribe_quotes()
        assert sub is not None and relay.requests[-1] == ("subscribe", ["quote"])
        assert client.subscription_ids[sub] == "quote"
        await client.unsubscribe(sub)
        assert relay.requests[-1] == ("unsubscribe", [sub])
        assert sub not in client.subscription_ids
        assert len(client.snapshot()["subscriptions"]) == 2
        with pytest.raises(InputError):
            await client.unsubscribe(sub)
    finally:
        await client.close()


async def test_refused_subscription_is_reported_and_the_socket_stays(relay: ScriptedRelay) -> None:
    relay.replies["subscribe"] = lambda rid, params: (
        with_id(fixture("response_error_object.json"), rid)
        if params[0] == "quote_status"
        else with_id(fixture("response_subscribe.json"), rid)
    )
    client = await connected_client(relay)
    try:
        assert client.subscription_ids == {"00000000-0000-0000-0000-000000000000": "quote"}
        errors = client.subscription_errors()
        assert list(errors) == ["quote_status"] and "deadline too short" in errors["quote_status"]
        with pytest.raises(RpcError) as info:
            await client.subscribe_status()
        assert info.value.code == -32000
        relay.replies["subscribe"] = ok_reply({"not": "an id"})
        with pytest.raises(RpcError, match="not a subscription id"):
            await client.subscribe_quotes()
        assert client.connected and len(relay.conns) == 1
    finally:
        await client.close()


# ---------------------------------------------------------------------------- events


async def test_quote_event_both_envelopes(relay: ScriptedRelay) -> None:
    client = await connected_client(relay)
    try:
        await relay.push(frame("event_quote_event_form.json", relay))
        ev = await next_event(client)
        assert isinstance(ev, QuoteRequestEvent)
        assert ev.quote_id == "6f1bd0a4-1a8e-4b47-9b55-0d2b8e1b4c21"
        assert (ev.asset_in, ev.asset_out) == (BTC, EURE)
        assert ev.exact_amount_in == "100000" and ev.exact_amount_out is None
        assert ev.min_deadline_ms == 60000
        assert ev.partner_id == "1click"
        assert ev.traceparent == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        assert ev.subscription == relay.sub_id("quote") and ev.received_ts_ns > 0

        await relay.push(frame("event_quote_docs_form.json", relay))
        ev = await next_event(client)
        assert isinstance(ev, QuoteRequestEvent)
        assert (ev.asset_in, ev.asset_out) == (EURE, BTC)
        assert ev.exact_amount_out == "250000" and ev.exact_amount_in is None
        assert ev.min_deadline_ms == 120000 and ev.partner_id is None and ev.traceparent is None
        assert client.last_event_ts_ns == ev.received_ts_ns
        assert client.counts["events_quote"] == 2 and client.counts["events_unknown_subscription"] == 0
    finally:
        await client.close()


async def test_status_event_both_envelopes(relay: ScriptedRelay) -> None:
    client = await connected_client(relay, instance_id="i-1")
    try:
        await relay.push(frame("event_status_event_form.json", relay))
        ev = await next_event(client)
        assert isinstance(ev, QuoteStatusEvent)
        assert ev.quote_hash == "5zvNsXyuKoWd7GVi6CqrCX5YZdpBtxQZWHZBrLHUmYd2"
        assert ev.intent_hash == "AqkW2WxwzZ9EKDo6JNcLmhQfrJNqV6zzsDHQkN9dbtB6"
        assert ev.tx_hash == "9G8kkM5qo5G7ZGCsqwXb1Kq8eFtqRK2RyEMnDLWXAm1p"
        assert ev.seq == 17 and ev.guaranteed and ev.subscription == relay.sub_id("quote_status")

        # the docs' example has no subscription id: recognised by shape
        await relay.push(frame("event_status_docs_form.json", relay))
        ev = await next_event(client)
        assert isinstance(ev, QuoteStatusEvent)
        assert ev.quote_hash == "8XbQY8gZkMJcLw1xTZC5Jc3hFwW2vV7FqNrXqzjYbH1e"
        assert ev.seq is None and not ev.guaranteed and ev.subscription is None
        assert client.counts["events_unknown_subscription"] == 1
    finally:
        await client.close()


async def test_malformed_frames_are_counted_and_never_kill_the_socket(relay: ScriptedRelay) -> None:
    client = await connected_client(relay)
    try:
        cases = json.loads(fixture("malformed_frames.json"))
        cases.pop("_comment")
        for text in cases.values():
            await relay.push(text)
        await relay.push_bytes(b"\x00\x01")
        await relay.push(
            json.dumps({"jsonrpc": "2.0", "method": "event", "params": {"data": {"quote_hash": 5}}})
        )
        ev = await next_event(client)  # the frame after the junk still arrives
        assert isinstance(ev, QuoteStatusEvent) and ev.quote_hash == 5
        for reason in cases:
            assert client.counts[reason] == 1, reason
        assert client.counts["malformed_binary_frame"] == 1
        assert client.connected and len(relay.conns) == 1 and client.connections == 1
        assert "Parse error" in (client.last_error or "")
    finally:
        await client.close()


async def test_bad_seq_is_dropped_but_the_event_delivered(relay: ScriptedRelay) -> None:
    client = await connected_client(relay, instance_id="i-1")
    try:
        data = {"quote_hash": "a", "intent_hash": "b", "tx_hash": "c"}
        params = {"subscription": relay.sub_id("quote_status"), "data": data, "seq": "17"}
        await relay.push(json.dumps({"jsonrpc": "2.0", "method": "event", "params": params}))
        ev = await next_event(client)
        assert isinstance(ev, QuoteStatusEvent) and ev.seq is None
        assert client.counts["malformed_event_seq"] == 1
    finally:
        await client.close()


# ---------------------------------------------------------------------------- requests and replies


async def test_quote_response_reply_shapes(relay: ScriptedRelay) -> None:
    client = await connected_client(relay)
    params = {"quote_id": "q-1", "quote_output": {"amount_out": "300"}, "signed_data": {"standard": "nep413"}}
    try:
        relay.replies["quote_response"] = lambda rid, _p: with_id(fixture("response_ok.json"), rid)
        reply = await client.send_quote_response(params)
        assert reply.ok and reply.result == "OK" and reply.error_message is None
        assert relay.requests[-1] == ("quote_response", [params])

        relay.replies["quote_response"] = lambda rid, _p: with_id(fixture("response_error_object.json"), rid)
        reply = await client.send_quote_response(params)
        assert not reply.ok and reply.error_code == -32000
        assert reply.error_message is not None and reply.error_message.startswith("deadline too short")

        relay.replies["quote_response"] = lambda rid, _p: with_id(fixture("response_error_string.json"), rid)
        reply = await client.send_quote_response(params)
        assert not reply.ok and reply.error_message == "Quote not found" and reply.error_code is None
        assert client.counts["quote_responses_ok"] == 1 and client.counts["quote_responses_rejected"] == 2

        with pytest.raises(InputError):
            await client.send_quote_response({"bad": object()})
    finally:
        await client.close()


async def test_request_ids_are_unique_integers(relay: ScriptedRelay) -> None:
    seen: list[int] = []

    def record(rid: int, _p: list[Any]) -> str:
        seen.append(rid)
        return json.dumps({"jsonrpc": "2.0", "id": rid, "result": "OK"})

    relay.replies["quote_response"] = record
    client = await connected_client(relay)
    try:
        await asyncio.gather(*(client.send_quote_response({"quote_id": str(i)}) for i in range(20)))
        assert len(set(seen)) == 20 and all(type(i) is int for i in seen)
    finally:
        await client.close()


async def test_request_timeout_raises_transport_error(relay: ScriptedRelay) -> None:
    relay.replies["quote_response"] = lambda _rid, _p: None
    client = await connected_client(relay, request_timeout_s=0.2)
    try:
        with pytest.raises(TransportError, match=r"did not answer quote_response within 0\.2 s"):
            await client.send_quote_response({"quote_id": "q"})
        assert client.counts["request_timeouts"] == 1 and client.snapshot()["pending_requests"] == 0
        assert client.connected  # a slow reply does not drop the connection
    finally:
        await client.close()


async def test_not_connected_raises_transport_error(relay: ScriptedRelay) -> None:
    client = make_client(relay)
    with pytest.raises(TransportError, match="not connected"):
        await client.send_quote_response({"quote_id": "q"})
    assert not await client.acknowledge("sub", 1)


async def test_pending_request_fails_when_the_connection_drops(relay: ScriptedRelay) -> None:
    relay.replies["quote_response"] = lambda _rid, _p: None
    client = await connected_client(relay)
    try:
        task = asyncio.create_task(client.send_quote_response({"quote_id": "q"}))
        await asyncio.sleep(0.1)
        await relay.disconnect_all()
        with pytest.raises(TransportError, match="lost"):
            await asyncio.wait_for(task, 2.0)
    finally:
        await client.close()


async def test_acknowledge_sends_sub_and_seq_and_skips_stale_ids(relay: ScriptedRelay) -> None:
    client = await connected_client(relay, instance_id="i-1")
    try:
        sub = relay.sub_id("quote_status")
        assert await client.acknowledge(sub, 17)
        assert await client.acknowledge(sub, 18, wait=True)
        assert ("acknowledge", [sub, 17]) in relay.requests and ("acknowledge", [sub, 18]) in relay.requests
        for _ in range(50):
            if client.counts["acks_ok"] == 2:
                break
            await asyncio.sleep(0.02)
        assert client.counts["acks_ok"] == 2
        assert not await client.acknowledge("not-a-current-subscription", 19)
        assert client.counts["acks_skipped_stale"] == 1

        relay.replies["acknowledge"] = lambda rid, _p: with_id(fixture("response_error_string.json"), rid)
        with pytest.raises(RpcError, match="Quote not found"):
            await client.acknowledge(sub, 20, wait=True)
    finally:
        await client.close()


# ---------------------------------------------------------------------------- reconnect and auth


async def test_reconnects_and_resubscribes_with_new_ids(relay: ScriptedRelay) -> None:
    client = await connected_client(relay, backoff_initial_s=0.05)
    try:
        first = set(client.subscription_ids)
        await relay.disconnect_all()
        second_conn = await relay.wait_subscribed(2, connections=2)
        assert await client.wait_connected(5.0)
        assert set(client.subscription_ids) == set(second_conn.subs)
        assert first.isdisjoint(client.subscription_ids)
        assert client.connections == 2 and client.reconnects == 1
        assert [m for m, _ in relay.requests].count("subscribe") == 4
        # events on the new connection are routed by the new ids
        await relay.push(frame("event_quote_event_form.json", relay))
        ev = await next_event(client)
        assert isinstance(ev, QuoteRequestEvent) and ev.subscription in client.subscription_ids
        # an ack for the old connection's subscription is not sent
        assert not await client.acknowledge(next(iter(first)), 1)
    finally:
        await client.close()


async def test_backoff_grows_while_the_relay_is_down(relay: ScriptedRelay) -> None:
    client = make_client(relay, backoff_initial_s=0.05, backoff_max_s=0.4)
    await relay.stop()
    await client.start()
    try:
        await asyncio.sleep(0.8)
        assert client.state in (ConnectionState.DISCONNECTED, ConnectionState.CONNECTING)
        assert "cannot connect" in (client.last_error or "")
        # 0.05, 0.1, 0.2, 0.4 (times 0.5..1 jitter) fits at most ~7 attempts in 0.8 s, a tight loop many more
        assert 2 <= client.reconnects <= 8
        assert client.disconnected_for_ns() >= 700_000_000
    finally:
        await client.close()


async def test_403_sets_auth_failed_and_retries_slowly() -> None:
    relay = ScriptedRelay(api_key="right-key")
    await relay.start()
    client = SolverRelayClient(relay.ws_url, api_key="wrong-key", auth_retry_s=30.0)
    try:
        await client.subscribe_quotes()
        await client.start()
        assert not await client.wait_connected(2.0)
        assert client.state is ConnectionState.AUTH_FAILED
        assert client.auth_problem is not None and "HTTP 403" in client.auth_problem
        assert "NEAR_INTENTS_API_KEY is not accepted" in client.auth_problem
        assert "wrong-key" not in json.dumps(client.snapshot())
        await asyncio.sleep(0.5)
        assert relay.connection_attempts == 1 and relay.refused == 1
    finally:
        await client.close()
        await relay.stop()


def test_backoff_doubles_to_the_cap_with_jitter() -> None:
    client = SolverRelayClient("ws://127.0.0.1:9/ws", backoff_initial_s=0.25, backoff_max_s=10.0)
    for failures, base in ((1, 0.25), (2, 0.5), (3, 1.0), (6, 8.0), (7, 10.0), (50, 10.0)):
        delays = [client.backoff_delay_s(failures) for _ in range(50)]
        assert all(base / 2 <= d <= base for d in delays), (failures, delays)
        assert len(set(delays)) > 1  # jittered


def test_rpc_error_parts_handles_objects_strings_and_others() -> None:
    assert rpc_error_parts({"code": -32000, "message": "bad\nthing", "data": 1}) == ("bad thing", -32000, 1)
    assert rpc_error_parts("plain text") == ("plain text", None, None)
    assert rpc_error_parts({"code": True}) == ('{"code":true}', None, None)
    assert rpc_error_parts(42) == ("42", None, None)
    assert len(rpc_error_parts("x" * 1000)[0]) == 300


def test_rejects_a_non_websocket_url() -> None:
    with pytest.raises(InputError):
        SolverRelayClient("ftp://relay/ws")


async def test_socket_closed_during_subscribe_reconnects_without_waiting_for_the_timeout(
    relay: ScriptedRelay,
) -> None:
    answered = 0

    def first_connection_dies(rid: int, params: list[Any]) -> str | None:
        nonlocal answered
        answered += 1
        if answered == 1:  # drop the socket instead of answering the very first subscribe
            asyncio.get_running_loop().create_task(relay.disconnect_all())
            return None
        return json.dumps({"jsonrpc": "2.0", "id": rid, "result": f"sub-{answered}"})

    relay.replies["subscribe"] = first_connection_dies
    client = make_client(relay, request_timeout_s=30.0, backoff_initial_s=0.05)
    await client.subscribe_quotes()
    await client.start()
    try:
        assert await client.wait_connected(3.0)  # far less than the 30 s request timeout
        assert client.connections == 2 and client.subscription_ids == {"sub-2": "quote"}
        assert "lost" in (client.last_error or "") or "closed" in (client.last_error or "")
    finally:
        await client.close()


def test_rpc_error_parts_escape_nul_and_control_characters() -> None:
    message, code, _ = rpc_error_parts({"code": "E\x00", "message": "bad\x00thing\x07"})
    assert message == "bad\\x00thing\\x07" and code == "E\\x00"
    assert rpc_error_parts("nul\x00") == ("nul\\x00", None, None)
