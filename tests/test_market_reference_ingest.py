"""market-reference-ingest over real loopback sockets against the simulated exchanges."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import free_port
from intents_mm.app import Running, start_services, stop_services
from intents_mm.bus import make_bus
from intents_mm.bus.port import Bus, Delivery
from intents_mm.clock import SystemClock
from intents_mm.config import load_config
from intents_mm.domain.reference import SourceTick, median
from intents_mm.messages import OperatorAction, ReferencePrice, decode
from intents_mm.services.market_reference_ingest import (
    MarketReferenceIngest,
    data_ts_ns,
    rest_tick_usable,
)
from intents_mm.sim.exchanges import SimExchanges
from intents_mm.sim.pricepath import PricePath
from intents_mm.venues.exchanges import SOURCES, ExchangeUrls

NAME = "market-reference-ingest"
STALE_MS = 700
CLOCK = SystemClock()
FAST_FEEDS = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "idle_timeout_s": 5.0}


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Harness:
    sim: SimExchanges
    running: Running
    bus: Bus
    http: aiohttp.ClientSession
    refs: list[ReferencePrice] = field(default_factory=list)
    actions: list[OperatorAction] = field(default_factory=list)

    @property
    def svc(self) -> MarketReferenceIngest:
        svc = self.running.service(NAME)
        assert isinstance(svc, MarketReferenceIngest)
        return svc

    @property
    def url(self) -> str:
        return self.running.url(NAME)

    async def handle(self, delivery: Delivery) -> None:
        payload = decode(delivery.data).payload
        if isinstance(payload, ReferencePrice):
            self.refs.append(payload)
        elif isinstance(payload, OperatorAction) and payload.result != "attempt":  # outcomes only
            self.actions.append(payload)
        await delivery.ack()

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path) as resp:
            return resp.status, await resp.json()

    async def post(self, path: str, data: str | None = None) -> tuple[int, Any]:
        headers = {} if data is None else {"content-type": "application/json"}
        async with self.http.post(self.url + path, data=data, headers=headers) as resp:
            return resp.status, await resp.json()

    async def published(self, predicate: Callable[[ReferencePrice], bool], what: str) -> ReferencePrice:
        """The first reference published from now on that matches ``predicate``."""
        start = len(self.refs)

        def match() -> ReferencePrice | None:
            return next((r for r in self.refs[start:] if predicate(r)), None)

        await wait_until(lambda: match() is not None, what=what)
        found = match()
        assert found is not None
        return found


def config_for(urls: dict[str, ExchangeUrls], **extra: str) -> dict[str, str]:
    env = {
        "REFERENCE_STALE_MS": str(STALE_MS),
        "REFERENCE_PUBLISH_MS": "50",
        "REFERENCE_REST_POLL_MS": "500",
    }
    for source, u in urls.items():
        env[f"{source.upper()}_WS_URL"] = u.ws_url
        env[f"{source.upper()}_REST_URL"] = u.rest_url
    env.update(extra)
    return env


@pytest.fixture
async def sim() -> AsyncIterator[SimExchanges]:
    path = PricePath(11, clock=CLOCK)
    exchanges = SimExchanges(path, CLOCK, 11, heartbeat_s=0.2, coinbase_subscribe_timeout_s=1.0)
    await exchanges.start()
    try:
        yield exchanges
    finally:
        await exchanges.stop()


@asynccontextmanager
async def harness(
    sim: SimExchanges, tmp_path: Path, env: dict[str, str], feed_options: dict[str, float] | None = None
) -> AsyncIterator[Harness]:
    config = load_config(env, dotenv=None)
    bus = make_bus(None)
    await bus.start()
    from intents_mm.storage.store import HistoryStore

    store = HistoryStore(f"sqlite+aiosqlite:///{tmp_path}/unused.sqlite3")
    http = aiohttp.ClientSession()
    running: Running | None = None
    try:
        holder: list[Harness] = []

        async def handler(delivery: Delivery) -> None:
            await holder[0].handle(delivery)

        running = await start_services(
            [NAME],
            config,
            bus=bus,
            store=store,
            ports={NAME: 0},
            overrides={"reference_feed_options": feed_options or FAST_FEEDS},
        )
        h = Harness(sim, running, bus, http)
        holder.append(h)
        await bus.subscribe(["market.reference_price", "control.operator_action"], "test-observer", handler)
        yield h
    finally:
        await http.close()
        if running is not None:
            await stop_services(running)
        else:
            await bus.close()


def ok_mids(ref: ReferencePrice) -> list[Decimal]:
    return [s.mid for s in ref.sources if s.status == "ok" and s.mid is not None]


def statuses(ref: ReferencePrice) -> dict[str, str]:
    return {s.source: s.status for s in ref.sources}


# ------------------------------------------------------------------------------------ pure rules


def tick(exchange_ts_ns: int | None, received_ts_ns: int, source: str = "bitstamp") -> SourceTick:
    return SourceTick(source, Decimal("60000"), Decimal("60001"), exchange_ts_ns, received_ts_ns)


def test_rest_tick_without_exchange_timestamp_is_never_fed() -> None:
    rest = tick(None, 10_000, source="kraken")
    assert rest_tick_usable(rest, None, marked_down=False) is not None
    assert rest_tick_usable(rest, None, marked_down=True) is not None
    assert rest_tick_usable(rest, tick(None, 1, source="kraken"), marked_down=True) is not None


def test_timestamped_rest_tick_is_fed_only_when_newer_or_the_websocket_is_down() -> None:
    held = tick(5_000, 6_000)  # data from 5_000 (the earlier of the two)
    assert data_ts_ns(held) == 5_000
    assert rest_tick_usable(tick(4_000, 9_000), None, marked_down=False) is None  # nothing held yet
    assert rest_tick_usable(tick(5_000, 9_000), held, marked_down=False) is not None  # not newer
    assert rest_tick_usable(tick(5_001, 9_000), held, marked_down=False) is None
    # The WebSocket is gone: the held book is excluded, the REST book is aged by its own timestamp.
    assert rest_tick_usable(tick(4_000, 9_000), held, marked_down=True) is None


# ------------------------------------------------------------------------------- over sockets


async def test_median_of_four_is_published_and_state_shows_every_source(
    sim: SimExchanges, tmp_path: Path
) -> None:
    async with harness(sim, tmp_path, config_for(sim.urls)) as h:
        ref = await h.published(
            lambda r: r.quality == "ok" and r.volatility_bps_per_sqrt_s is not None, "an ok reference"
        )
        assert ref.pair == "BTC/EUR"
        assert [s.source for s in ref.sources] == list(SOURCES)
        assert set(statuses(ref).values()) == {"ok"}
        assert ref.fresh_sources == 4 and ref.quorum == 2
        assert ref.mid is not None
        assert ref.mid == median(ok_mids(ref))
        assert min(ok_mids(ref)) <= ref.mid <= max(ok_mids(ref))
        assert abs(ref.mid / sim.path.mid_at(ref.computed_ts_ns) - 1) < Decimal("0.001")
        assert ref.computed_ts_ns <= CLOCK.now_ns()

        status, body = await h.get("/healthz")
        assert status == 200, body
        status, state = await h.get("/state")
        assert status == 200
        assert state["sources_enabled"] == list(SOURCES)
        for source in SOURCES:
            s = state["sources"][source]
            assert Decimal(s["bid"]) <= Decimal(s["mid"]) <= Decimal(s["ask"])
            assert 0 <= s["age_ms"] <= STALE_MS + 500
            assert s["websocket"]["state"] in ("connected", "subscribed", "alive")
            assert s["counters"]["ticks"] >= 1
            assert s["counters"]["reconnects"] == 0
            assert s["counters"]["bad_frames"] == {}
        assert state["aggregate"]["quality"] in ("ok", "degraded")
        assert state["aggregate"]["mid"] is not None
        assert state["publishing"]["published"] >= 2


async def test_outlier_venue_is_flagged_and_excluded(sim: SimExchanges, tmp_path: Path) -> None:
    async with harness(sim, tmp_path, config_for(sim.urls)) as h:
        await h.published(lambda r: r.quality == "ok", "an ok reference")
        sim.set_outlier("binance", 300)
        ref = await h.published(lambda r: statuses(r)["binance"] == "outlier", "binance flagged outlier")
        assert ref.quality == "degraded"
        binance = next(s for s in ref.sources if s.source == "binance")
        assert binance.reason is not None and "bps from median" in binance.reason
        others = ok_mids(ref)
        assert len(others) == 3 and ref.fresh_sources == 3
        assert ref.mid == median(others)
        assert binance.mid is not None and binance.mid > max(others)

        sim.set_outlier("binance", 0)
        await h.published(lambda r: r.quality == "ok", "binance back in line")


async def test_three_stale_venues_make_the_reference_stale_and_healthz_fail(
    sim: SimExchanges, tmp_path: Path
) -> None:
    async with harness(sim, tmp_path, config_for(sim.urls)) as h:
        await h.published(lambda r: r.quality == "ok", "an ok reference")
        applied_before = {s: h.svc.rest[s].applied for s in SOURCES}
        polls_before = h.svc.rest["kraken"].polls
        for venue in ("kraken", "bitstamp", "coinbase"):
            sim.set_stale(venue, True)
        frozen_at = CLOCK.now_ns()
        ref = await h.published(lambda r: r.quality == "stale", "stale reference")
        assert ref.computed_ts_ns - frozen_at >= (STALE_MS - 300) * 1_000_000  # only after the cut-off
        assert ref.mid is None
        assert statuses(ref) == {"kraken": "stale", "bitstamp": "stale", "coinbase": "stale", "binance": "ok"}
        assert ref.fresh_sources == 1

        status, body = await h.get("/healthz")
        assert status == 503
        assert "reference_price" in body["failing"]
        assert "stale" in body["failing"]["reference_price"]

        # REST polls go on, but the frozen books (old or no timestamps) never revive the sources.
        await wait_until(lambda: h.svc.rest["kraken"].polls >= polls_before + 2, what="two more REST polls")
        assert h.refs[-1].quality == "stale"
        assert {s: h.svc.rest[s].applied for s in SOURCES} == applied_before
        assert h.svc.rest["kraken"].applied == 0

        for venue in ("kraken", "bitstamp", "coinbase"):
            sim.set_stale(venue, False)
        await h.published(lambda r: r.quality == "ok", "recovered reference")
        status, _ = await h.get("/healthz")
        assert status == 200


async def test_a_disabled_source_gets_no_feed(sim: SimExchanges, tmp_path: Path) -> None:
    env = config_for(sim.urls, REFERENCE_SOURCES="kraken,bitstamp,coinbase")
    async with harness(sim, tmp_path, env) as h:
        ref = await h.published(lambda r: r.quality == "ok", "an ok reference from three")
        assert [s.source for s in ref.sources] == ["kraken", "bitstamp", "coinbase"]
        assert ref.fresh_sources == 3
        assert set(h.svc.feeds) == {"kraken", "bitstamp", "coinbase"}
        assert sim.state()["binance"]["connections"] == 0
        assert sim.state()["kraken"]["connections"] == 1
        _, state = await h.get("/state")
        assert state["sources_enabled"] == ["kraken", "bitstamp", "coinbase"]
        assert "binance" not in state["sources"]


async def test_refresh_as_the_runbook_curl(sim: SimExchanges, tmp_path: Path) -> None:
    async with harness(sim, tmp_path, config_for(sim.urls)) as h:
        await h.published(lambda r: r.quality == "ok", "an ok reference")
        # curl -s -X POST http://127.0.0.1:8082/refresh
        status, body = await h.post("/refresh")
        assert status == 200, body
        assert body["published"] is True
        reference = body["reference"]
        assert reference["pair"] == "BTC/EUR"
        assert reference["quality"] in ("ok", "degraded")
        assert set(body["rest"]) == set(SOURCES)
        for source in SOURCES:
            outcome = body["rest"][source]
            assert outcome["outcome"] == "checked", outcome
            assert Decimal(outcome["bid"]) <= Decimal(outcome["ask"])
        for source in ("kraken", "binance"):  # no exchange timestamp: compared, never fed
            assert body["rest"][source]["applied"] is False
            assert "no exchange timestamp" in body["rest"][source]["not_applied_reason"]
        await wait_until(
            lambda: any(r.computed_ts_ns == int(reference["computed_ts_ns"]) for r in h.refs),
            what="the refreshed reference on the bus",
        )
        await wait_until(lambda: any(a.action == "refresh" for a in h.actions), what="audit record")
        audit = next(a for a in h.actions if a.action == "refresh")
        assert audit.service == NAME and audit.result == "ok"

        for bad in ("[1]", "{not json", '{"sources":["kraken"]}'):
            status, body = await h.post("/refresh", bad)
            assert status == 400, bad
            assert "error" in body


async def test_rest_fallback_keeps_a_timestamped_source_but_not_an_untimestamped_one(
    sim: SimExchanges, tmp_path: Path
) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    env = config_for(
        sim.urls,
        KRAKEN_WS_URL=dead + "/v2",
        BITSTAMP_WS_URL=dead + "/",
        REFERENCE_STALE_MS="3000",
        REFERENCE_REST_POLL_MS="3600000",
    )
    slow_retry = {"backoff_initial_s": 5.0, "backoff_max_s": 5.0}
    async with harness(sim, tmp_path, env, feed_options=slow_retry) as h:
        await wait_until(lambda: h.svc.ws["kraken"].state == "down", what="kraken websocket down")
        await wait_until(lambda: h.svc.ws["bitstamp"].state == "down", what="bitstamp websocket down")
        status, body = await h.post("/refresh")
        assert status == 200, body
        states = {s["source"]: s["status"] for s in body["reference"]["sources"]}
        assert states["bitstamp"] == "ok"  # fed from its timestamped REST ticker
        assert states["kraken"] == "error"  # its REST answer cannot prove freshness
        assert body["rest"]["kraken"]["applied"] is False
        assert body["reference"]["quality"] == "degraded"
        _, state = await h.get("/state")
        assert state["sources"]["bitstamp"]["from"] == "rest"
        assert state["sources"]["bitstamp"]["rest"]["applied"] >= 1
        assert state["sources"]["kraken"]["rest"]["applied"] == 0
        assert state["sources"]["kraken"]["bid"] is None
        assert "cannot connect" in (state["sources"]["kraken"]["websocket"]["reason"] or "")


async def test_rest_disagreeing_with_the_websocket_is_counted(sim: SimExchanges, tmp_path: Path) -> None:
    other = SimExchanges(PricePath(5, start_price=Decimal(62000), clock=CLOCK), CLOCK, 5)
    other_urls = await other.start()
    try:
        env = config_for(sim.urls, KRAKEN_REST_URL=other_urls["kraken"].rest_url)
        async with harness(sim, tmp_path, env) as h:
            await h.published(lambda r: r.quality == "ok", "an ok reference")
            await wait_until(lambda: h.svc.rest["kraken"].disagreements >= 1, what="a REST disagreement")
            status, body = await h.post("/refresh")
            assert status == 200
            kraken = body["rest"]["kraken"]
            assert kraken["outcome"] == "disagrees"
            assert Decimal(kraken["deviation_from_ws_bps"]) > 200
            assert kraken["applied"] is False
            assert body["rest"]["coinbase"]["outcome"] == "checked"
            assert h.svc.rest["coinbase"].disagreements == 0
            # The REST book never reached the aggregator: kraken still quotes its WebSocket price.
            assert {s["source"]: s["status"] for s in body["reference"]["sources"]}["kraken"] == "ok"
            _, state = await h.get("/state")
            assert state["sources"]["kraken"]["from"] == "websocket"
            assert state["sources"]["kraken"]["rest"]["disagreements"] >= 2
    finally:
        await other.stop()


async def test_quality_changes_are_published_at_once_between_cadence_ticks(
    sim: SimExchanges, tmp_path: Path
) -> None:
    env = config_for(sim.urls, REFERENCE_PUBLISH_MS="60000")  # the cadence never fires during the test
    async with harness(sim, tmp_path, env) as h:
        await h.published(lambda r: r.quality == "ok", "an ok reference")
        sim.set_outlier("binance", 300)  # a tick far from the median
        await h.published(lambda r: statuses(r)["binance"] == "outlier", "outlier published")
        for venue in ("kraken", "bitstamp", "coinbase"):  # no tick at all: the stale deadline
            sim.set_stale(venue, True)
        await h.published(lambda r: r.quality == "stale", "stale published")
        sim.set_outlier("binance", 0)
        for venue in ("kraken", "bitstamp", "coinbase"):  # ticks from sources that were not fresh
            sim.set_stale(venue, False)
        await h.published(lambda r: r.quality == "ok", "recovery published")
        # Only changes were published: one per distinct step, not one per tick or per poll.
        changes = sum(1 for a, b in zip(h.refs, h.refs[1:], strict=False) if a.quality != b.quality)
        assert len(h.refs) == changes + 1


async def test_refresh_needs_the_bearer_token_when_one_is_configured(
    sim: SimExchanges, tmp_path: Path
) -> None:
    env = config_for(sim.urls, CONTROL_API_TOKEN="s3cret-token")
    async with harness(sim, tmp_path, env) as h:
        status, body = await h.post("/refresh")
        assert status == 401, body
        async with h.http.post(h.url + "/refresh", headers={"Authorization": "Bearer s3cret-token"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["reference"]["pair"] == "BTC/EUR"
        _, state = await h.get("/state")
        assert "s3cret-token" not in str(state)
        await wait_until(lambda: len(h.actions) >= 2, what="both calls audited")
        assert sorted(a.result for a in h.actions) == ["ok", "refused"]
