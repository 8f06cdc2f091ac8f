"""near-intents-ingest against a scripted Solver Relay: validation, publishing, acks, /state and /healthz."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from intents_mm.bus.memory import MemoryBus
from intents_mm.errors import BusError
from intents_mm.messages import QUOTE_STATUS, SWAP_REQUEST, QuoteStatus, SwapRequest
from intents_mm.services.near_intents_ingest import OVERLOAD_HOLD_NS, AgeShedder
from relay_testkit import BTC, EURE, INGEST, Ingest, ScriptedRelay, fixture, wait_until

MS = 1_000_000
OMIT = object()


@pytest.fixture
async def relay() -> AsyncIterator[ScriptedRelay]:
    server = ScriptedRelay(api_key="test-key")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def env(relay: ScriptedRelay, **extra: str) -> dict[str, str]:
    return {"NEAR_INTENTS_RELAY_WS_URL": relay.ws_url, "NEAR_INTENTS_API_KEY": "test-key", **extra}


@pytest.fixture
async def ingest(relay: ScriptedRelay, tmp_path: Path) -> AsyncIterator[Ingest]:
    running = await Ingest.start(env(relay), tmp=tmp_path)
    try:
        yield running
    finally:
        await running.stop()


def quote_frame(
    relay: ScriptedRelay,
    quote_id: object = "q-1",
    *,
    asset_in: object = BTC,
    asset_out: object = EURE,
    exact_amount_in: object = "100000",
    exact_amount_out: object = OMIT,
    min_deadline_ms: object = 60000,
    docs_form: bool = False,
) -> str:
    data: dict[str, Any] = {
        "quote_id": quote_id,
        "defuse_asset_identifier_in": asset_in,
        "defuse_asset_identifier_out": asset_out,
        "exact_amount_in": exact_amount_in,
        "exact_amount_out": exact_amount_out,
        "min_deadline_ms": min_deadline_ms,
    }
    data = {k: v for k, v in data.items() if v is not OMIT}
    sub = relay.sub_id("quote")
    if docs_form:
        params: dict[str, Any] = {"subscription": sub, **data}
        return json.dumps({"jsonrpc": "2.0", "method": "subscribe", "params": params})
    params = {
        "subscription": sub,
        "data": data,
        "metadata": {"partner_id": "1click", "traceparent": "00-ab-cd-01"},
    }
    return json.dumps({"jsonrpc": "2.0", "method": "event", "params": params})


def status_frame(relay: ScriptedRelay, quote_hash: object = "QH1", seq: int | None = None) -> str:
    params: dict[str, Any] = {
        "subscription": relay.sub_id("quote_status"),
        "data": {"quote_hash": quote_hash, "intent_hash": "IH1", "tx_hash": "TX1"},
    }
    if seq is not None:
        params["seq"] = seq
    return json.dumps({"jsonrpc": "2.0", "method": "event", "params": params})


# ---------------------------------------------------------------------------- quote requests


async def test_subscribes_with_the_pair_filter_and_publishes_valid_requests(
    relay: ScriptedRelay, ingest: Ingest
) -> None:
    assert relay.requests[:2] == [
        ("subscribe", ["quote", {"tokens_in": [BTC, EURE], "tokens_out": [BTC, EURE]}]),
        ("subscribe", ["quote_status"]),
    ]
    await relay.push(fixture("event_quote_event_form.json").replace("{SUB_QUOTE}", relay.sub_id("quote")))
    await relay.push(fixture("event_quote_docs_form.json").replace("{SUB_QUOTE}", relay.sub_id("quote")))
    exact_in, exact_out = await ingest.wait_published(SWAP_REQUEST, 2)
    assert isinstance(exact_in, SwapRequest) and isinstance(exact_out, SwapRequest)
    assert exact_in.quote_id == "6f1bd0a4-1a8e-4b47-9b55-0d2b8e1b4c21"
    assert (exact_in.asset_in, exact_in.asset_out) == (BTC, EURE)
    assert exact_in.exact_amount_in == 100000 and exact_in.exact_amount_out is None
    assert exact_in.min_deadline_ms == 60000
    assert exact_in.partner_id == "1click" and exact_in.traceparent is not None
    assert exact_in.relay_deadline_ns == exact_in.received_ts_ns + 3000 * MS
    assert (exact_out.asset_in, exact_out.asset_out) == (EURE, BTC)
    assert exact_out.exact_amount_out == 250000 and exact_out.exact_amount_in is None
    assert exact_out.min_deadline_ms == 120000 and exact_out.partner_id is None
    ids = [e.msg_id for e in ingest.published]
    assert ids == ["swap:6f1bd0a4-1a8e-4b47-9b55-0d2b8e1b4c21", "swap:0c0a3f0e-7a1e-4a0f-8a55-5b0e6c1d9f42"]
    status, state = await ingest.get("/state")
    assert status == 200 and state["quotes"]["published"] == 2 and state["quotes"]["received"] == 2
    assert state["connection"] == "connected" and sorted(state["subscriptions"].values()) == [
        "quote",
        "quote_status",
    ]
    assert state["last_event_age_ms"] is not None and state["last_event_age_ms"] < 5000


INVALID_CASES: list[tuple[str, dict[str, Any]]] = [
    ("amount_both", {"exact_amount_out": "5"}),
    ("amount_none", {"exact_amount_in": OMIT}),
    ("amount_none", {"exact_amount_in": None}),
    ("amount_not_digits", {"exact_amount_in": "1.5"}),
    ("amount_not_digits", {"exact_amount_in": "-1"}),
    ("amount_not_digits", {"exact_amount_in": "1e3"}),
    ("amount_not_digits", {"exact_amount_in": " 12"}),
    ("amount_not_digits", {"exact_amount_in": "١٢"}),  # non-ASCII digits
    ("amount_not_digits", {"exact_amount_in": 1000}),  # a JSON number, not a string
    ("amount_not_digits", {"exact_amount_in": 1.5}),
    ("amount_over_u128", {"exact_amount_in": str(2**128)}),
    ("amount_over_u128", {"exact_amount_in": "9" * 60}),
    ("amount_zero", {"exact_amount_in": "0"}),
    ("amount_zero", {"exact_amount_in": "000"}),
    ("same_asset", {"asset_out": BTC}),
    ("asset_missing", {"asset_in": OMIT}),
    ("asset_missing", {"asset_out": 7}),
    ("quote_id", {"quote_id": ""}),
    ("quote_id", {"quote_id": 12}),
    ("quote_id", {"quote_id": "x" * 201}),
    # ids are checked at the edge: no NUL, control character, space or non-ASCII text gets through
    ("quote_id", {"quote_id": "q\x00id"}),
    ("quote_id", {"quote_id": "q\x1bid"}),
    ("quote_id", {"quote_id": "q\nid"}),
    ("quote_id", {"quote_id": "q id"}),
    ("quote_id", {"quote_id": "q\u00e9"}),
    ("quote_id", {"quote_id": "q\u2028"}),
    ("min_deadline", {"min_deadline_ms": 0}),
    ("min_deadline", {"min_deadline_ms": -5}),
    ("min_deadline", {"min_deadline_ms": "60000"}),
    ("min_deadline", {"min_deadline_ms": 60000.0}),
    ("min_deadline", {"min_deadline_ms": True}),
    ("min_deadline", {"min_deadline_ms": 600_001}),
    ("min_deadline", {"min_deadline_ms": OMIT}),
]


async def test_invalid_and_off_pair_requests_are_counted_and_never_published(
    relay: ScriptedRelay, ingest: Ingest
) -> None:
    for i, (_reason, fields) in enumerate(INVALID_CASES):
        kw = {"quote_id": f"bad-{i}", **fields}
        await relay.push(quote_frame(relay, **kw))
    await relay.push(quote_frame(relay, "off-1", asset_out="nep141:usdc.near"))
    await relay.push(quote_frame(relay, "off-2", asset_in="nep141:wrap.near", asset_out=BTC))
    await relay.push(quote_frame(relay, "good", min_deadline_ms=600_000))  # the bound itself is accepted
    [good] = await ingest.wait_published(SWAP_REQUEST, 1)
    assert good.quote_id == "good" and good.min_deadline_ms == 600_000
    await asyncio.sleep(0.1)
    assert len(ingest.published) == 1
    _, state = await ingest.get("/state")
    expected: dict[str, int] = {}
    for reason, _ in INVALID_CASES:
        expected[reason] = expected.get(reason, 0) + 1
    assert state["quotes"]["invalid_by_reason"] == expected
    assert state["quotes"]["invalid"] == len(INVALID_CASES)
    assert state["quotes"]["off_pair"] == 2
    assert state["quotes"]["received"] == len(INVALID_CASES) + 3
    assert state["quotes"]["published"] == 1
    assert state["recent_rejections"][-1]["reason"] == "off_pair"
    assert state["recent_rejections"][-1]["quote_id"] == "off-2"


async def test_a_replayed_quote_is_published_once(relay: ScriptedRelay, ingest: Ingest) -> None:
    frame = quote_frame(relay, "q-replayed")
    await relay.push(frame)
    await relay.push(frame)
    await relay.disconnect_all()
    await relay.wait_subscribed(2, connections=2)
    await wait_until(lambda: ingest.service.client.connected)
    await relay.push(quote_frame(relay, "q-replayed"))
    await relay.push(quote_frame(relay, "q-new"))
    published = await ingest.wait_published(SWAP_REQUEST, 2)
    await asyncio.sleep(0.1)
    assert [p.quote_id for p in ingest.payloads(SWAP_REQUEST)] == ["q-replayed", "q-new"]
    assert ingest.service.quotes["duplicate"] == 2 and len(published) == 2


def test_age_shedder_sheds_beyond_the_bound_then_keeps_the_queue_short_while_overloaded() -> None:
    shedder = AgeShedder(50 * MS)
    t = 10**12
    assert not shedder.shed(49 * MS, t)  # a stall below the bound sheds nothing
    assert not shedder.shed(20 * MS, t) and shedder.episodes == 0
    assert shedder.shed(51 * MS, t) and shedder.episodes == 1 and shedder.overloaded(t)
    # in the episode: older than half the bound is shed, and each shed one extends it
    assert shedder.shed(26 * MS, t + 400 * MS)
    assert not shedder.shed(25 * MS, t + 450 * MS)
    assert shedder.overloaded(t + 400 * MS + OVERLOAD_HOLD_NS - 1)
    later = t + 400 * MS + OVERLOAD_HOLD_NS
    assert not shedder.overloaded(later) and not shedder.shed(30 * MS, later)
    assert shedder.shed(60 * MS, later) and shedder.episodes == 2
    off = AgeShedder(0)
    assert not off.shed(10**12, t) and off.episodes == 0


class RequestGateBus(MemoryBus):
    """A memory bus whose publishes of ``demand.swap_request`` wait for ``gate``: the ingest stalls, so
    the requests behind the one being published wait in the relay client's event queue."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> None:
        if subject == SWAP_REQUEST:
            await self.gate.wait()
        await super().publish(subject, data, msg_id=msg_id)


@pytest.mark.parametrize(
    ("extra", "reason", "other"),
    [
        ({"SHED_REQUEST_AGE_MS": "30"}, "shed_overload", "relay_window_passed"),
        # no age bound: only the relay window (300 ms, minus the time to sign and send) bounds the wait
        (
            {"SHED_REQUEST_AGE_MS": "0", "INGEST_RELAY_WINDOW_MS": "300"},
            "relay_window_passed",
            "shed_overload",
        ),
    ],
    ids=["age_bound", "window_only"],
)
async def test_requests_that_waited_too_long_are_shed_not_published(
    relay: ScriptedRelay, tmp_path: Path, extra: dict[str, str], reason: str, other: str
) -> None:
    bus = RequestGateBus()
    ingest = await Ingest.start(env(relay, **extra), bus=bus, tmp=tmp_path)
    try:
        bus.gate.clear()
        await relay.push(quote_frame(relay, "first"))  # taken off the queue at once, then its publish waits
        await wait_until(lambda: ingest.service.quotes["received"] == 1)
        for i in range(3):
            await relay.push(quote_frame(relay, f"stuck-{i}"))
        await wait_until(lambda: ingest.service.client.snapshot()["event_queue"] == 3)
        await asyncio.sleep(0.4)  # older than either bound by now
        bus.gate.set()
        await wait_until(lambda: ingest.service.quotes[reason] == 3)
        # an overload episode sheds anything but fresh requests for 0.5 s after the last one shed
        await wait_until(lambda: not ingest.service.shedder.overloaded(ingest.service.clock.now_ns()))
        await relay.push(quote_frame(relay, "fresh"))
        await ingest.wait_published(SWAP_REQUEST, 2)
        assert [p.quote_id for p in ingest.payloads(SWAP_REQUEST)] == ["first", "fresh"]
        _, state = await ingest.get("/state")
        quotes = state["quotes"]
        assert (quotes["received"], quotes["published"], quotes[reason], quotes[other]) == (5, 2, 3, 0)
        assert quotes["max_shed_age_ms"] >= 400
        assert quotes["overload_episodes"] == (1 if reason == "shed_overload" else 0)
    finally:
        await ingest.stop()


# ---------------------------------------------------------------------------- quote statuses


class GateBus(MemoryBus):
    """A memory bus whose publishes of ``demand.quote_status`` wait for ``gate`` (or fail when ``fail``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> None:
        if subject == QUOTE_STATUS:
            if self.fail:
                raise BusError("bus is down")
            await self.gate.wait()
        await super().publish(subject, data, msg_id=msg_id)


async def test_guaranteed_status_is_acknowledged_only_after_the_publish(
    relay: ScriptedRelay, tmp_path: Path
) -> None:
    bus = GateBus()
    ingest = await Ingest.start(env(relay, NEAR_INTENTS_INSTANCE_ID="prod-1"), bus=bus, tmp=tmp_path)
    try:
        assert relay.conns[0].query == {"instance_id": "prod-1"}
        assert ("subscribe", ["quote_status", None, True]) in relay.requests
        sub = relay.sub_id("quote_status")

        def acks() -> list[list[Any]]:
            return [p for m, p in relay.requests if m == "acknowledge"]

        bus.gate.clear()
        await relay.push(status_frame(relay, "QH1", seq=17))
        await wait_until(lambda: ingest.service.statuses["received"] == 1)
        await asyncio.sleep(0.1)
        assert acks() == [] and ingest.payloads(QUOTE_STATUS) == []  # publish still waiting: no ack
        bus.gate.set()
        [status] = await ingest.wait_published(QUOTE_STATUS, 1)
        assert isinstance(status, QuoteStatus)
        assert (status.quote_hash, status.intent_hash, status.tx_hash, status.seq) == (
            "QH1",
            "IH1",
            "TX1",
            17,
        )
        assert ingest.published[-1].msg_id == "status:QH1"
        await wait_until(lambda: acks() == [[sub, 17]])

        # a failed publish is not acknowledged (the relay redelivers after a reconnect)
        bus.fail = True
        await relay.push(status_frame(relay, "QH2", seq=18))
        await wait_until(lambda: ingest.service.statuses["publish_failed"] == 1)
        await asyncio.sleep(0.1)
        assert acks() == [[sub, 17]]
        _, state = await ingest.get("/state")
        assert "bus is down" in state["last_publish_error"]

        # the redelivery after the bus recovered: published and acknowledged once
        bus.fail = False
        await relay.push(status_frame(relay, "QH2", seq=18))
        await wait_until(lambda: acks() == [[sub, 17], [sub, 18]])
        # a duplicate and a malformed status are acknowledged without publishing
        await relay.push(status_frame(relay, "QH1", seq=19))
        await relay.push(status_frame(relay, None, seq=20))
        await wait_until(lambda: len(acks()) == 4)
        assert [p.quote_hash for p in ingest.payloads(QUOTE_STATUS)] == ["QH1", "QH2"]
        _, state = await ingest.get("/state")
        assert state["statuses"] == {
            "received": 5,
            "published": 2,
            "duplicate": 1,
            "invalid": 1,
            "acknowledged": 4,
            "ack_not_sent": 0,
            "publish_failed": 1,
        }
        assert state["guaranteed_status"] is True
    finally:
        await ingest.stop()


async def test_plain_status_is_published_and_not_acknowledged(relay: ScriptedRelay, ingest: Ingest) -> None:
    await relay.push(status_frame(relay, "QH9", seq=3))
    [status] = await ingest.wait_published(QUOTE_STATUS, 1)
    assert status.quote_hash == "QH9"
    await asyncio.sleep(0.1)
    assert all(m != "acknowledge" for m, _ in relay.requests)


# ---------------------------------------------------------------------------- health and state


async def test_healthz_fails_after_the_grace_period_when_disconnected(
    relay: ScriptedRelay, tmp_path: Path
) -> None:
    ingest = await Ingest.start(env(relay, INGEST_DISCONNECT_GRACE_MS="300"), tmp=tmp_path)
    try:
        status, body = await ingest.get("/healthz")
        assert status == 200 and body["ok"] is True
        await relay.stop()
        await asyncio.sleep(0.1)
        status, body = await ingest.get("/healthz")
        assert status == 200  # within the grace period
        await asyncio.sleep(0.4)
        status, body = await ingest.get("/healthz")
        assert status == 503 and "relay" in body["failing"]
        assert "Solver Relay" in body["failing"]["relay"]
        _, state = await ingest.get("/state")
        assert state["connection"] in ("disconnected", "connecting")
        assert state["relay"]["disconnected_for_ms"] >= 300
    finally:
        await ingest.stop()


async def test_wrong_key_shows_the_auth_problem_and_fails_healthz(tmp_path: Path) -> None:
    relay = ScriptedRelay(api_key="right-key")
    await relay.start()
    ingest = await Ingest.start(env(relay, NEAR_INTENTS_API_KEY="wrong-key"), tmp=tmp_path)
    try:
        status, body = await ingest.get("/healthz")
        assert status == 503
        assert "HTTP 403" in body["failing"]["relay"] and "NEAR_INTENTS_API_KEY" in body["failing"]["relay"]
        _, state = await ingest.get("/state")
        assert state["connection"] == "auth_failed" and "HTTP 403" in state["auth_problem"]
        assert "wrong-key" not in json.dumps(state) and "wrong-key" not in json.dumps(body)
        assert relay.refused == 1
    finally:
        await ingest.stop()
        await relay.stop()


async def test_refused_subscription_fails_healthz(relay: ScriptedRelay, tmp_path: Path) -> None:
    relay.replies["subscribe"] = lambda rid, params: json.dumps(
        {"jsonrpc": "2.0", "id": rid, "error": "token filter not supported"}
        if params[0] == "quote"
        else {"jsonrpc": "2.0", "id": rid, "result": "sub-status"}
    )
    ingest = await Ingest.start(env(relay), tmp=tmp_path)
    try:
        status, body = await ingest.get("/healthz")
        assert status == 503
        assert "quote subscription refused" in body["failing"]["relay_subscriptions"]
        assert "token filter not supported" in body["failing"]["relay_subscriptions"]
    finally:
        await ingest.stop()


def test_service_is_registered_under_its_runbook_name() -> None:
    from intents_mm.app import service_class

    assert service_class(INGEST).__name__ == "NearIntentsIngest"


async def test_metrics_expose_the_counters(relay: ScriptedRelay, ingest: Ingest) -> None:
    await relay.push(quote_frame(relay, "m-1"))
    await relay.push(quote_frame(relay, "m-2", exact_amount_in="1.5"))
    await ingest.wait_published(SWAP_REQUEST, 1)
    await wait_until(lambda: ingest.service.quotes["received"] == 2)
    async with ingest.session.get(ingest.running.url(INGEST) + "/metrics") as resp:
        text = await resp.text()
    assert 'ingest_quote_requests_total{outcome="published",reason=""} 1.0' in text
    assert 'ingest_quote_requests_total{outcome="invalid",reason="amount_not_digits"} 1.0' in text
    assert "ingest_relay_connected 1.0" in text


async def test_metadata_ids_and_status_hashes_are_checked_at_the_edge(
    relay: ScriptedRelay, ingest: Ingest
) -> None:
    def with_metadata(quote_id: str, metadata: dict[str, Any]) -> str:
        frame = json.loads(quote_frame(relay, quote_id))
        frame["params"]["metadata"] = metadata
        return json.dumps(frame)

    await relay.push(with_metadata("m-1", {"partner_id": "1cl\u0000ick"}))
    await relay.push(with_metadata("m-2", {"partner_id": "1click", "traceparent": "00-\u0007-01"}))
    await relay.push(with_metadata("m-3", {"partner_id": "x" * 201}))
    await relay.push(with_metadata("m-ok", {"partner_id": "router-solver"}))
    [ok] = await ingest.wait_published(SWAP_REQUEST, 1)
    assert ok.quote_id == "m-ok" and ok.partner_id == "router-solver"
    for bad in ("QH\u0000", "Q H", "\u00e9"):
        await relay.push(status_frame(relay, bad))
    await relay.push(status_frame(relay, "QHgood"))
    [status] = await ingest.wait_published(QUOTE_STATUS, 1)
    assert status.quote_hash == "QHgood"
    await asyncio.sleep(0.1)
    assert len(ingest.published) == 2
    _, state = await ingest.get("/state")
    assert state["quotes"]["invalid_by_reason"] == {"metadata": 3}
    assert state["statuses"]["invalid"] == 3
    details = [r["detail"] for r in state["recent_rejections"] if r["kind"] == "quote"]
    assert any("metadata.partner_id" in d and "\\x00" in d for d in details)
