"""The live feed adapters against the simulated exchanges over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal

import aiohttp
import pytest
from aiohttp import web

from intents_mm.clock import SystemClock
from intents_mm.domain.reference import ReferenceAggregator, ReferenceConfig, ReferenceResult, SourceTick
from intents_mm.errors import TransportError
from intents_mm.sim.exchanges import SimExchanges
from intents_mm.sim.pricepath import PricePath
from intents_mm.venues.exchanges import SOURCES, ExchangeFeed, ExchangeUrls, FeedStatus, FrameError

STALE_MS = 700
CLOCK = SystemClock()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Rig:
    sim: SimExchanges
    urls: dict[str, ExchangeUrls]
    session: aiohttp.ClientSession
    agg: ReferenceAggregator
    feeds: dict[str, ExchangeFeed] = field(default_factory=dict)
    statuses: list[FeedStatus] = field(default_factory=list)

    def on_status(self, status: FeedStatus) -> None:
        self.statuses.append(status)
        if status.state == "down":
            self.agg.mark_down(status.source, status.reason or "down")
        elif status.state == "alive":
            self.agg.note_heartbeat(status.source, status.ts_ns)

    def feed(self, source: str, ws_url: str | None = None, max_age_s: float | None = None) -> ExchangeFeed:
        feed = ExchangeFeed(
            source,
            ws_url or self.urls[source].ws_url,
            self.urls[source].rest_url,
            CLOCK,
            self.agg.update,
            self.on_status,
            self.session,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            idle_timeout_s=5.0,
            max_connection_age_s=max_age_s,
        )
        self.feeds[source] = feed
        feed.start()
        return feed

    def result(self) -> ReferenceResult:
        return self.agg.compute(CLOCK.now_ns())


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    path = PricePath(42, clock=CLOCK)
    sim = SimExchanges(path, CLOCK, 42, heartbeat_s=0.2, coinbase_subscribe_timeout_s=0.4)
    urls = await sim.start()
    session = aiohttp.ClientSession()
    agg = ReferenceAggregator(ReferenceConfig(stale_after_ms=STALE_MS))
    r = Rig(sim, urls, session, agg)
    try:
        yield r
    finally:
        for feed in r.feeds.values():
            await feed.stop()
        await session.close()
        await sim.stop()


async def all_four(rig: Rig) -> None:
    for source in SOURCES:
        rig.feed(source)
    await wait_until(lambda: rig.result().quality == "ok", what="all four sources fresh")


async def test_median_from_all_four_and_an_outlier_is_excluded(rig: Rig) -> None:
    await all_four(rig)
    res = rig.result()
    assert res.survivors == SOURCES
    assert res.mid is not None
    path_mid = rig.sim.path.mid_at(CLOCK.now_ns())
    assert abs(res.mid / path_mid - 1) < Decimal("0.001")
    assert min(res.fresh_mids.values()) <= res.mid <= max(res.fresh_mids.values())

    rig.sim.set_outlier("binance", 300)
    await wait_until(lambda: rig.result().source("binance").status == "outlier", what="binance outlier")
    res = rig.result()
    assert "binance" not in res.survivors
    assert res.quality == "degraded"
    assert res.mid is not None
    others = [res.fresh_mids[s] for s in ("kraken", "bitstamp", "coinbase") if s in res.fresh_mids]
    assert min(others) <= res.mid <= max(others)
    view = res.source("binance")
    assert view.deviation_bps is not None and view.deviation_bps > 100

    rig.sim.set_outlier("binance", 0)
    await wait_until(lambda: rig.result().quality == "ok", what="binance back in line")


async def test_three_stale_venues_leave_no_quorum_while_heartbeats_continue(rig: Rig) -> None:
    await all_four(rig)
    for venue in ("kraken", "bitstamp", "coinbase"):
        rig.sim.set_stale(venue, True)
    frozen = {v: rig.sim.quote(v) for v in ("kraken", "coinbase")}
    liveness_before = {s: rig.feeds[s].stats.liveness for s in ("kraken", "coinbase")}
    await wait_until(lambda: rig.result().quality == "stale", timeout_s=3.0, what="quality stale")
    res = rig.result()
    assert res.mid is None
    assert {v.source: v.status for v in res.sources} == {
        "kraken": "stale",
        "bitstamp": "stale",
        "coinbase": "stale",
        "binance": "fresh",
    }
    # The sockets stayed up and kept proving liveness.
    await wait_until(
        lambda: all(rig.feeds[s].stats.liveness >= liveness_before[s] + 2 for s in ("kraken", "coinbase")),
        what="heartbeats from stale venues",
    )
    assert all(f.stats.connects == 1 and f.stats.connected for f in rig.feeds.values())
    assert rig.result().source("kraken").last_heartbeat_ns is not None
    # REST answers the frozen book; Coinbase's carries its old timestamp, so it is stale too.
    kraken_rest = await rig.feeds["kraken"].poll_rest()
    assert (kraken_rest.bid, kraken_rest.ask) == (frozen["kraken"].bid, frozen["kraken"].ask)
    coinbase_rest = await rig.feeds["coinbase"].poll_rest()
    assert (coinbase_rest.bid, coinbase_rest.ask) == (frozen["coinbase"].bid, frozen["coinbase"].ask)
    rig.agg.update(coinbase_rest)
    assert rig.result().source("coinbase").status == "stale"

    for venue in ("kraken", "bitstamp", "coinbase"):
        rig.sim.set_stale(venue, False)
    await wait_until(lambda: rig.result().quality == "ok", what="recovery")


async def test_every_feed_reconnects_after_a_disconnect(rig: Rig) -> None:
    await all_four(rig)
    for venue in SOURCES:
        feed = rig.feeds[venue]
        ticks = feed.stats.ticks
        assert await rig.sim.disconnect(venue) == 1
        await wait_until(
            lambda f=feed, t=ticks: f.stats.connects == 2 and f.stats.ticks > t + 1,  # type: ignore[misc]
            what=f"{venue} resumed",
        )
        downs = [s for s in rig.statuses if s.source == venue and s.state == "down"]
        assert len(downs) == 1
        assert downs[0].reason is not None and "closed by venue" in downs[0].reason
        assert feed.stats.reconnects == 1
    await wait_until(lambda: rig.result().quality == "ok", what="all fresh again")


async def test_down_venue_refuses_rest_and_websocket_then_recovers(rig: Rig) -> None:
    await all_four(rig)
    await rig.sim.set_down("bitstamp", True)
    with pytest.raises(TransportError, match="HTTP 503"):
        await rig.feeds["bitstamp"].poll_rest()
    await wait_until(lambda: rig.result().source("bitstamp").status == "down", what="bitstamp down")
    res = rig.result()
    assert res.quality == "degraded"
    assert res.mid is not None
    await wait_until(
        lambda: any(s.source == "bitstamp" and "HTTP 503" in (s.reason or "") for s in rig.statuses),
        what="refused handshake reported",
    )
    await rig.sim.set_down("bitstamp", False)
    await wait_until(lambda: rig.result().quality == "ok", what="bitstamp back")
    assert rig.feeds["bitstamp"].stats.connects >= 2


async def test_rest_tickers_of_all_four(rig: Rig) -> None:
    path_mid = rig.sim.path.mid_at(CLOCK.now_ns())
    # Bitstamp's REST timestamp has whole-second resolution, so use the production staleness here.
    agg = ReferenceAggregator()
    for venue in SOURCES:
        urls = rig.urls[venue]
        feed = ExchangeFeed(venue, urls.ws_url, urls.rest_url, CLOCK, agg.update, rig.on_status, rig.session)
        tick = await feed.poll_rest()
        assert isinstance(tick, SourceTick)
        assert tick.source == venue
        assert tick.bid < tick.ask
        assert abs(tick.mid / path_mid - 1) < Decimal("0.002")
        if tick.exchange_ts_ns is not None:
            assert 0 <= tick.received_ts_ns - tick.exchange_ts_ns < 2_000_000_000
        agg.update(tick)
    assert agg.compute(CLOCK.now_ns()).quality == "ok"


async def test_rest_errors_are_translated(rig: Rig) -> None:
    url = rig.urls["binance"].rest_url
    feed = ExchangeFeed(
        "binance", "ws://unused", url + "/nowhere", CLOCK, rig.agg.update, rig.on_status, rig.session
    )
    with pytest.raises(TransportError, match="HTTP 404"):
        await feed.poll_rest()
    dead = ExchangeFeed(
        "kraken", "ws://unused", "http://127.0.0.1:9", CLOCK, rig.agg.update, rig.on_status, rig.session
    )
    with pytest.raises(TransportError, match="kraken REST ticker"):
        await dead.poll_rest()


async def test_binance_subscribe_and_combined_stream_variants(rig: Rig) -> None:
    base = rig.urls["binance"].ws_url.split("/ws/")[0]
    bare = rig.feed("binance", ws_url=base + "/ws")
    await wait_until(lambda: bare.stats.ticks >= 2, what="ticks after SUBSCRIBE")
    assert any(s.state == "subscribed" and s.source == "binance" for s in rig.statuses)
    await bare.stop()
    combined = rig.feed("binance", ws_url=base + "/stream?streams=btceur@bookTicker")
    await wait_until(lambda: combined.stats.ticks >= 2, what="ticks from the combined stream")
    assert not combined.stats.bad_frames


async def test_feed_reconnects_proactively_at_max_connection_age(rig: Rig) -> None:
    feed = rig.feed("binance", max_age_s=0.3)
    await wait_until(lambda: feed.stats.connects >= 3, what="two planned reconnects")
    assert not [s for s in rig.statuses if s.state == "down"]
    assert feed.stats.ticks > 0


async def test_coinbase_closes_a_connection_that_does_not_subscribe(rig: Rig) -> None:
    async with rig.session.ws_connect(rig.urls["coinbase"].ws_url) as ws:
        msg = await ws.receive(timeout=3)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_kraken_wire_format_on_the_socket(rig: Rig) -> None:
    async with rig.session.ws_connect(rig.urls["kraken"].ws_url) as ws:
        status = json.loads((await ws.receive(timeout=2)).data)
        assert status["channel"] == "status" and status["data"][0]["system"] == "online"
        await ws.send_str(
            '{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/EUR"],"event_trigger":"bbo"}}'
        )
        ack = json.loads((await ws.receive(timeout=2)).data)
        assert ack["method"] == "subscribe" and ack["success"] is True
        assert ack["result"] == {
            "channel": "ticker",
            "event_trigger": "bbo",
            "snapshot": True,
            "symbol": "BTC/EUR",
        }
        assert ack["time_in"].endswith("Z") and ack["time_out"] >= ack["time_in"]
        snap = json.loads((await ws.receive(timeout=2)).data, parse_float=Decimal)
        assert snap["channel"] == "ticker" and snap["type"] == "snapshot"
        entry = snap["data"][0]
        assert set(entry) >= {
            "symbol",
            "bid",
            "bid_qty",
            "ask",
            "ask_qty",
            "last",
            "volume",
            "vwap",
            "low",
            "high",
            "change",
            "change_pct",
            "timestamp",
        }
        assert isinstance(entry["bid"], Decimal | int) and isinstance(entry["ask"], Decimal | int)
        await ws.send_str('{"method":"subscribe","params":{"channel":"ticker","symbol":["XBT/EUR"]}}')
        kinds = set()
        for _ in range(20):
            frame = json.loads((await ws.receive(timeout=2)).data)
            kinds.add(frame.get("channel") or frame.get("method"))
            if frame.get("method") == "subscribe":
                assert frame["success"] is False and "XBT/EUR" in frame["error"]
            if {"heartbeat", "subscribe"} <= kinds:
                break
        assert {"heartbeat", "subscribe"} <= kinds


async def test_bad_frames_and_failing_callbacks_never_kill_the_feed() -> None:
    frames = [
        "not json at all",
        '{"channel":"ticker","type":"update","data":[{"symbol":"ETH/EUR","bid":1.0,"ask":1.1}]}',
        '{"channel":"ticker","type":"update","data":[{"symbol":"BTC/EUR","bid":60001.0,"ask":60000.0}]}',
        '{"channel":"heartbeat"}',
        '{"channel":"ticker","type":"update","data":[{"symbol":"BTC/EUR","bid":60000.1,"ask":60000.2}]}',
        '{"channel":"ticker","type":"update","data":[{"symbol":"BTC/EUR","bid":60000.3,"ask":60000.4}]}',
    ]
    subscribes: list[str] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        subscribes.append((await ws.receive(timeout=2)).data)
        for frame in frames:
            await ws.send_str(frame)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/v2", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    got: list[SourceTick] = []

    def on_tick(tick: SourceTick) -> None:
        got.append(tick)
        if len(got) == 1:
            raise RuntimeError("downstream hiccup")

    async with aiohttp.ClientSession() as session:
        feed = ExchangeFeed(
            "kraken", f"ws://127.0.0.1:{port}/v2", "http://unused", CLOCK, on_tick, lambda s: None, session
        )
        feed.start()
        try:
            await wait_until(lambda: len(got) == 2, what="two good ticks")
        finally:
            await feed.stop()
    await runner.cleanup()
    assert json.loads(subscribes[0]) == {
        "method": "subscribe",
        "params": {"channel": "ticker", "symbol": ["BTC/EUR"], "event_trigger": "bbo"},
    }
    assert [t.bid for t in got] == [Decimal("60000.1"), Decimal("60000.3")]
    assert dict(feed.stats.bad_frames) == {"invalid_json": 1, "wrong_symbol": 1, "crossed_book": 1}
    assert feed.stats.callback_errors == 1
    assert feed.stats.connects == 1 and feed.stats.reconnects == 0
    assert feed.stats.liveness == 1


async def test_venue_rejection_ends_the_connection_and_retries() -> None:
    connections = 0

    async def handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal connections
        connections += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive(timeout=2)
        await ws.send_str('{"type":"error","message":"Failed to subscribe","reason":"BTC-EUR is delisted"}')
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    statuses: list[FeedStatus] = []
    async with aiohttp.ClientSession() as session:
        feed = ExchangeFeed(
            "coinbase",
            f"ws://127.0.0.1:{port}",
            "http://unused",
            CLOCK,
            lambda t: None,
            statuses.append,
            session,
            backoff_initial_s=0.05,
            backoff_max_s=0.1,
        )
        feed.start()
        try:
            await wait_until(lambda: connections >= 3, what="retries after rejection")
        finally:
            await feed.stop()
    await runner.cleanup()
    downs = [s for s in statuses if s.state == "down"]
    assert downs and all("delisted" in (s.reason or "") for s in downs)
    assert feed.stats.bad_frames["venue_error"] >= 2


def test_backoff_is_exponential_capped_and_jittered() -> None:
    import random

    async def make() -> ExchangeFeed:
        async with aiohttp.ClientSession() as session:
            return ExchangeFeed(
                "kraken",
                "ws://x",
                "http://x",
                CLOCK,
                lambda t: None,
                lambda s: None,
                session,
                backoff_initial_s=0.25,
                backoff_max_s=4.0,
                rng=random.Random(1),
            )

    feed = asyncio.run(make())
    for attempt, base in [(0, 0.25), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0), (200, 4.0)]:
        delays = [feed.backoff_delay_s(attempt) for _ in range(50)]
        assert all(base / 2 <= d <= base for d in delays)
        assert len(set(delays)) > 1


def test_frame_error_is_an_input_error() -> None:
    from intents_mm.errors import InputError

    assert issubclass(FrameError, InputError)


async def test_bitstamp_coinbase_binance_wire_formats_on_the_socket(rig: Rig) -> None:
    async with rig.session.ws_connect(rig.urls["bitstamp"].ws_url) as ws:
        await ws.send_str('{"event":"bts:subscribe","data":{"channel":"order_book_btceur"}}')
        ack = json.loads((await ws.receive(timeout=2)).data)
        assert ack == {"event": "bts:subscription_succeeded", "channel": "order_book_btceur", "data": {}}
        book = json.loads((await ws.receive(timeout=2)).data)
        assert book["event"] == "data" and book["channel"] == "order_book_btceur"
        data = book["data"]
        assert isinstance(data["timestamp"], str) and isinstance(data["microtimestamp"], str)
        assert all(isinstance(x, str) for level in data["bids"] + data["asks"] for x in level)
        assert Decimal(data["bids"][0][0]) < Decimal(data["asks"][0][0])
        await ws.send_str('{"event":"bts:heartbeat"}')
        for _ in range(10):
            frame = json.loads((await ws.receive(timeout=2)).data)
            if frame["event"] == "bts:heartbeat":
                assert frame["data"] == {"status": "success"}
                break
        else:
            raise AssertionError("no bts:heartbeat answer")

    async with rig.session.ws_connect(rig.urls["coinbase"].ws_url) as ws:
        await ws.send_str('{"type":"subscribe","product_ids":["BTC-EUR"],"channels":["ticker","heartbeat"]}')
        subs = json.loads((await ws.receive(timeout=2)).data)
        assert subs["type"] == "subscriptions"
        assert [c["name"] for c in subs["channels"]] == ["ticker", "heartbeat"]
        seen: dict[str, dict[str, object]] = {}
        while len(seen) < 2:
            frame = json.loads((await ws.receive(timeout=2)).data)
            seen[frame["type"]] = frame
        assert set(seen["heartbeat"]) == {"type", "sequence", "last_trade_id", "product_id", "time"}
        ticker = seen["ticker"]
        assert ticker["product_id"] == "BTC-EUR"
        for name in (
            "price",
            "best_bid",
            "best_ask",
            "best_bid_size",
            "best_ask_size",
            "volume_24h",
            "last_size",
        ):
            assert isinstance(ticker[name], str), name
        assert isinstance(ticker["sequence"], int) and isinstance(ticker["trade_id"], int)

    base = rig.urls["binance"].ws_url.split("/ws/")[0]
    async with rig.session.ws_connect(base + "/ws") as ws:
        await ws.send_str('{"method":"SUBSCRIBE","params":["btceur@bookTicker"],"id":1}')
        assert json.loads((await ws.receive(timeout=2)).data) == {"result": None, "id": 1}
        frame = json.loads((await ws.receive(timeout=2)).data)
        assert set(frame) == {"u", "s", "b", "B", "a", "A"}
        assert frame["s"] == "BTCEUR" and all(isinstance(frame[k], str) for k in "bBaA")

    async with rig.session.get(
        rig.urls["binance"].rest_url + "/api/v3/ticker/bookTicker?symbol=ETHUSDT"
    ) as resp:
        assert resp.status == 400
        assert await resp.json() == {"code": -1121, "msg": "Invalid symbol."}
    async with rig.session.get(rig.urls["kraken"].rest_url + "/0/public/Ticker?pair=XBTEUR") as resp:
        body = await resp.json()
        assert body["error"] == [] and list(body["result"]) == ["XXBTZEUR"]
        assert all(isinstance(x, str) for x in body["result"]["XXBTZEUR"]["a"])


async def test_fault_controls_validate_venue_names(rig: Rig) -> None:
    from intents_mm.errors import InputError

    with pytest.raises(InputError, match="unknown simulated exchange"):
        rig.sim.set_stale("bitfinex", True)
    with pytest.raises(InputError):
        await rig.sim.disconnect("ftx")
    state = rig.sim.state()
    assert set(state) == set(SOURCES)
    assert state["kraken"]["stale"] is False and state["kraken"]["ws_url"] == rig.urls["kraken"].ws_url


async def test_same_seed_gives_the_same_venue_quotes() -> None:
    from intents_mm.clock import ManualClock

    clock = ManualClock()
    books = []
    for _ in range(2):
        sim = SimExchanges(PricePath(5, clock=clock), clock, 5)
        venue = sim.venue("coinbase")
        quotes = []
        for _ in range(20):
            venue.refresh(clock.now_ns())
            quotes.append(sim.quote("coinbase"))
        books.append(quotes)
    assert books[0] == books[1]
    other = SimExchanges(PricePath(5, clock=clock), clock, 6).venue("coinbase")
    other.refresh(clock.now_ns())
    assert other.quote != books[0][0]


async def test_bitstamp_reconnect_request_is_a_planned_reconnect() -> None:
    connections = 0
    book = (
        '{"data":{"timestamp":"1","microtimestamp":"%d","bids":[["60000","1"]],"asks":[["60001","1"]]},'
        '"channel":"order_book_btceur","event":"data"}'
    )

    async def handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal connections
        connections += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive(timeout=2)
        if connections == 1:
            await ws.send_str('{"event":"bts:request_reconnect","channel":"","data":""}')
        else:
            await ws.send_str(book % (CLOCK.now_ns() // 1000))
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    statuses: list[FeedStatus] = []
    ticks: list[SourceTick] = []
    async with aiohttp.ClientSession() as session:
        feed = ExchangeFeed(
            "bitstamp",
            f"ws://127.0.0.1:{port}",
            "http://unused",
            CLOCK,
            ticks.append,
            statuses.append,
            session,
        )
        feed.start()
        try:
            await wait_until(lambda: len(ticks) == 1, what="a tick on the second connection")
        finally:
            await feed.stop()
    await runner.cleanup()
    assert connections == 2
    assert feed.stats.connects == 2
    assert not [s for s in statuses if s.state == "down"]
    assert ticks[0].bid == Decimal("60000")
