"""BTC/USD(T) and EUR/USD(T) books on the simulated exchanges (issue 16): real symbols and wire
formats over real sockets, their cross against the BTC/EUR true price, configured lead/lag,
microstructure noise, and stale / dead / disconnecting books."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from types import MappingProxyType

import aiohttp
import pytest

from intents_mm.clock import ManualClock, SystemClock
from intents_mm.domain.reference import SourceTick
from intents_mm.errors import InputError
from intents_mm.sim.exchanges import MARKETS, SimExchanges
from intents_mm.sim.pricepath import PricePath
from intents_mm.sim.scenario import ExchangesConfig, Scenario, VenueConfig
from intents_mm.sim.venue import SimVenue
from intents_mm.venues.exchanges import VENUES as SPECS

CLOCK = SystemClock()
S = 1_000_000_000
MS = 1_000_000


def config(**per_venue: VenueConfig) -> ExchangesConfig:
    return ExchangesConfig(per_venue=MappingProxyType(per_venue))


async def started(sim: SimExchanges, cfg: ExchangesConfig) -> None:
    """Configure and start ``sim`` with no venue noise or basis: what is left is spread and tick."""
    sim.configure(cfg)
    for venue in sim.venues.values():
        venue.profile = dataclasses.replace(venue.profile, noise_bps=0.0, basis_bps=0.0)
    await sim.start()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def as_btceur(venue: str, pair: str, raw: str) -> str:
    """The frame with the pair's wire symbol swapped for the venue's BTC/EUR one.

    The product's adapters are BTC/EUR-only by design (they refuse other symbols as
    ``wrong_symbol``); a USD frame that parses after the swap is in exactly the BTC/EUR wire format.
    """
    ours, eur = MARKETS[venue][pair].symbol, MARKETS[venue]["btceur"].symbol
    return raw.replace(ours, eur).replace(ours.lower(), eur.lower())


SUBSCRIBE = {
    "kraken": lambda syms: [
        json.dumps(
            {"method": "subscribe", "params": {"channel": "ticker", "symbol": syms, "event_trigger": "bbo"}}
        )
    ],
    "bitstamp": lambda syms: [
        json.dumps({"event": "bts:subscribe", "data": {"channel": f"order_book_{s}"}}) for s in syms
    ],
    "coinbase": lambda syms: [json.dumps({"type": "subscribe", "product_ids": syms, "channels": ["ticker"]})],
    "binance": lambda syms: [],  # streams named in the URL of a combined connection
}


def symbol_of(venue: str, frame: dict[str, object]) -> str | None:
    if venue == "kraken" and frame.get("channel") == "ticker":
        data = frame["data"]
        assert isinstance(data, list)
        return str(data[0]["symbol"])
    if venue == "bitstamp" and frame.get("event") == "data":
        return str(frame["channel"]).removeprefix("order_book_")
    if venue == "coinbase" and frame.get("type") == "ticker":
        return str(frame["product_id"])
    if venue == "binance" and "stream" in frame:
        data = frame["data"]
        assert isinstance(data, dict)
        return str(data["s"])
    return None


async def first_ticks(
    session: aiohttp.ClientSession, sim: SimExchanges, venue: str, pairs: tuple[str, ...]
) -> dict[str, SourceTick]:
    """Subscribe to ``pairs`` on ``venue`` in its own protocol; the first tick of each, parsed by
    the product's adapter."""
    syms = [MARKETS[venue][p].symbol for p in pairs]
    url = sim.urls[venue].ws_url
    if venue == "binance":
        base = url.split("/ws/")[0]
        url = base + "/stream?streams=" + "/".join(f"{s.lower()}@bookTicker" for s in syms)
    by_symbol = dict(zip(syms, pairs, strict=True))
    out: dict[str, SourceTick] = {}
    async with session.ws_connect(url) as ws:
        for message in SUBSCRIBE[venue](syms):
            await ws.send_str(message)
        deadline = time.monotonic() + 5
        while len(out) < len(pairs):
            assert time.monotonic() < deadline, f"{venue}: only {sorted(out)} arrived"
            raw = (await ws.receive(timeout=2)).data
            symbol = symbol_of(venue, json.loads(raw))
            if symbol is None or symbol not in by_symbol or by_symbol[symbol] in out:
                continue
            pair = by_symbol[symbol]
            event = SPECS[venue].parse_ws(as_btceur(venue, pair, raw), CLOCK.now_ns())
            assert isinstance(event, SourceTick), event
            out[pair] = event
    return out


def bps(a: Decimal, b: Decimal) -> Decimal:
    return abs(a / b - 1) * 10_000


async def test_usd_books_arrive_in_each_venues_wire_format_and_cross_to_btc_eur(
    session: aiohttp.ClientSession,
) -> None:
    path = PricePath(21, clock=CLOCK)
    sim = SimExchanges(path, CLOCK, 21, update_interval_s=(0.05, 0.1))
    await started(sim, config())
    try:
        for venue in SPECS:
            ticks = await first_ticks(session, sim, venue, ("btcusd", "eurusd"))
            now = CLOCK.now_ns()
            usd, fx = ticks["btcusd"], ticks["eurusd"]
            usd_mid, fx_mid = (usd.bid + usd.ask) / 2, (fx.bid + fx.ask) / 2
            assert usd.bid < usd.ask and fx.bid < fx.ask
            # Each feed is its own true path (no venue noise here: spread + tick only) ...
            assert bps(usd_mid, path.btcusd_at(now)) < 3, venue
            assert bps(fx_mid, path.eurusd_at(now)) < 3, venue
            assert Decimal("0.5") < fx_mid < Decimal(2) and usd_mid > 10_000
            # ... and their cross is the BTC/EUR true price.
            assert bps(usd_mid / fx_mid, path.mid_at(now)) < 5, venue

            # REST: the venue's ticker path with the USD symbol, parsed the same way.
            for pair in ("btcusd", "eurusd"):
                symbol = MARKETS[venue][pair].symbol
                rest_path = {
                    "kraken": f"/0/public/Ticker?pair={'XBTUSD' if pair == 'btcusd' else 'EURUSD'}",
                    "bitstamp": f"/api/v2/ticker/{symbol}/",
                    "coinbase": f"/products/{symbol}/ticker",
                    "binance": f"/api/v3/ticker/bookTicker?symbol={symbol}",
                }[venue]
                async with session.get(sim.urls[venue].rest_url + rest_path) as resp:
                    assert resp.status == 200, (venue, pair)
                    raw = await resp.text()
                tick = SPECS[venue].parse_rest(as_btceur(venue, pair, raw), CLOCK.now_ns())
                assert bps((tick.bid + tick.ask) / 2, path.pair_mid_at(pair, CLOCK.now_ns())) < 3
        async with session.get(sim.urls["kraken"].rest_url + "/0/public/Ticker?pair=XBTUSD") as resp:
            body = await resp.json()
        assert list(body["result"]) == ["XXBTZUSD"]  # Kraken's internal name, as live
        # Kraken's REST adapter reads the entry by position, so it parses XBTUSD untouched.
        SPECS["kraken"].parse_rest(json.dumps(body), CLOCK.now_ns())
        state = sim.state()["binance"]["books"]
        assert isinstance(state, dict) and set(state) == {"BTCEUR", "BTCUSDT", "EURUSDT"}
    finally:
        await sim.stop()


async def kraken_frames(
    session: aiohttp.ClientSession, sim: SimExchanges, symbols: list[str], seconds: float
) -> dict[str, list[SourceTick]]:
    got: dict[str, list[SourceTick]] = {s: [] for s in symbols}
    async with session.ws_connect(sim.urls["kraken"].ws_url) as ws:
        await ws.send_str(SUBSCRIBE["kraken"](symbols)[0])
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                raw = (await ws.receive(timeout=0.5)).data
            except TimeoutError:
                continue
            symbol = symbol_of("kraken", json.loads(raw))
            if symbol in got:
                pair = "btcusd" if symbol == "BTC/USD" else "btceur"
                event = SPECS["kraken"].parse_ws(as_btceur("kraken", pair, raw), CLOCK.now_ns())
                assert isinstance(event, SourceTick)
                got[symbol].append(event)
    return got


async def test_lead_and_lag_are_what_was_configured(session: aiohttp.ClientSession) -> None:
    # A very volatile path so 1.5 s of lag is tens of bps, far above spread and tick.
    now = CLOCK.now_ns()
    path = PricePath(8, vol_annual=25.0, jump_rate_per_hour=0.0, clock=CLOCK, start_ns=now - 60 * S)
    sim = SimExchanges(path, CLOCK, 8, update_interval_s=(0.05, 0.1))
    lags = MappingProxyType({"btceur": 1500, "btcusd": -1500})
    await started(sim, dataclasses.replace(config(), lag_ms=lags))
    try:
        frames = await kraken_frames(session, sim, ["BTC/EUR", "BTC/USD"], 2.0)
        for symbol, pair, lag_ms in (("BTC/EUR", "btceur", 1500), ("BTC/USD", "btcusd", -1500)):
            ticks = frames[symbol]
            assert len(ticks) >= 8, symbol

            # Recover the lag from the wire: the lag that fits the frames best is the configured one.
            def misfit(lag: int, ticks: list[SourceTick] = ticks, pair: str = pair) -> float:
                errors = []
                for t in ticks:
                    assert t.exchange_ts_ns is not None
                    true = path.pair_mid_at(pair, t.exchange_ts_ns - lag * MS)
                    errors.append(float(bps((t.bid + t.ask) / 2, true)))
                return statistics.fmean(errors)

            candidates = range(-3000, 3001, 250)
            best = min(candidates, key=misfit)
            assert best == lag_ms, (symbol, best)
            assert misfit(lag_ms) < 2 and misfit(0) > 8, (symbol, misfit(lag_ms), misfit(0))
        assert sim.state()["kraken"]["books"]["BTC/USD"]["lag_ms"] == -1500  # type: ignore[index]
    finally:
        await sim.stop()


async def test_a_dead_book_stops_updating_while_heartbeats_go_on_and_disconnects_happen(
    session: aiohttp.ClientSession,
) -> None:
    path = PricePath(3, vol_annual=5.0, clock=CLOCK)
    sim = SimExchanges(path, CLOCK, 3, update_interval_s=(0.05, 0.1), heartbeat_s=0.1)
    await started(
        sim,
        config(kraken=VenueConfig(dead_at_s=0.8), coinbase=VenueConfig(disconnect_at_s=(0.8,))),
    )
    try:
        async with session.ws_connect(sim.urls["coinbase"].ws_url) as cb:
            await cb.send_str(SUBSCRIBE["coinbase"](["BTC-EUR"])[0])
            kraken_ticks: list[int] = []  # the frames' exchange timestamps
            heartbeats: list[float] = []
            async with session.ws_connect(sim.urls["kraken"].ws_url) as ws:
                await ws.send_str(SUBSCRIBE["kraken"](["BTC/EUR", "EUR/USD"])[0])
                t0 = time.monotonic()
                while time.monotonic() - t0 < 2.2:
                    try:
                        msg = await ws.receive(timeout=0.5)
                    except TimeoutError:
                        continue
                    frame = json.loads(msg.data)
                    if frame.get("channel") == "ticker" and frame.get("type") == "update":
                        pair = "eurusd" if symbol_of("kraken", frame) == "EUR/USD" else "btceur"
                        raw = as_btceur("kraken", pair, msg.data)
                        event = SPECS["kraken"].parse_ws(raw, CLOCK.now_ns())
                        assert isinstance(event, SourceTick) and event.exchange_ts_ns is not None
                        kraken_ticks.append(event.exchange_ts_ns)
                    elif frame.get("channel") == "heartbeat":
                        heartbeats.append(time.monotonic() - t0)
            closed = await asyncio.wait_for(cb.receive(), 2)
            while closed.type == aiohttp.WSMsgType.TEXT:
                closed = await asyncio.wait_for(cb.receive(), 2)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert sim.state()["coinbase"]["disconnects"] == 1
        assert sim.started_ns is not None
        died = sim.started_ns + 800 * MS
        assert kraken_ticks and min(kraken_ticks) < died
        assert max(kraken_ticks) < died + 1 * MS  # nothing quoted after the book died at 0.8 s
        assert sum(1 for h in heartbeats if h > 1.0) >= 5  # ... while the connection looks alive
        assert sim.state()["kraken"]["frozen"] is True
        frozen = sim.quote("kraken", "eurusd")
        await asyncio.sleep(0.3)
        assert sim.quote("kraken", "eurusd") == frozen  # every book of the venue is dead
        assert sim.state()["bitstamp"]["frozen"] is False
    finally:
        await sim.stop()


def test_stale_windows_and_random_episodes_are_seeded() -> None:
    clock = ManualClock(1_000 * S)
    vc = VenueConfig(stale=((10.0, 5.0),), stale_per_hour=60.0, stale_s=(1.0, 3.0), disconnect_per_hour=30.0)

    def plan(seed: int) -> tuple[list[tuple[int, int]], list[int]]:
        sim = SimExchanges(PricePath(1, clock=clock), clock, seed)
        sim.configure(config(bitstamp=vc))
        v = sim.venue("bitstamp")
        return v.stale_windows, v.disconnect_at

    a, b, c = plan(4), plan(4), plan(5)
    assert a == b and a != c
    windows, disconnects = a
    assert (10 * S, 15 * S) in windows
    assert 1_300 < len(windows) < 1_600  # ~60 an hour over the 24 h horizon, plus the scheduled one
    assert 600 < len(disconnects) < 850  # ~30 an hour
    assert all(S <= hi - lo <= 3 * S for lo, hi in windows if (lo, hi) != (10 * S, 15 * S))
    sim = SimExchanges(PricePath(1, clock=clock), clock, 4)
    sim.configure(config(bitstamp=VenueConfig(stale=((10.0, 5.0),))))
    sim.started_ns = clock.now_ns()
    venue = sim.venue("bitstamp")
    states = []
    for t in (9, 10, 14, 15):
        states.append(venue.frozen(sim.started_ns + t * S))
    assert states == [False, True, True, False]


def test_microstructure_noise_is_per_venue_and_configurable() -> None:
    clock = ManualClock(1_000 * S)
    path = PricePath(2, vol_annual=0.0, jump_rate_per_hour=0.0, clock=clock)

    def deviations(vc: VenueConfig, noise_bps: float) -> list[float]:
        sim = SimExchanges(path, clock, 6)
        sim.configure(config(coinbase=vc))
        venue = sim.venue("coinbase")
        venue.profile = dataclasses.replace(
            venue.profile, noise_bps=noise_bps, basis_bps=0.0, half_spread_bps=(0.01, 0.01)
        )
        out = []
        for k in range(3000):
            venue.books["btceur"].refresh(clock.now_ns() + k * 100 * MS)
            q = venue.books["btceur"].current()
            out.append(float(((q.bid + q.ask) / 2 / path.mid_at(0) - 1) * 10_000))
        return out

    def ac(xs: list[float]) -> float:
        return statistics.correlation(xs[:-1], xs[1:])

    white = deviations(VenueConfig(jitter_bps=5.0), 0.0)
    sticky = deviations(VenueConfig(noise_ar=0.97), 2.0)
    none = deviations(VenueConfig(), 0.0)
    assert 4 < statistics.pstdev(white) < 6 and abs(ac(white)) < 0.1
    assert ac(sticky) > 0.9 and statistics.pstdev(sticky) > 4  # 2 / sqrt(1 - 0.97^2) ~ 8
    assert statistics.pstdev(none) < 0.1


def test_served_pairs_and_scenario_wiring() -> None:
    clock = ManualClock(1_000 * S)
    sim = SimExchanges(PricePath(1, clock=clock), clock, 1)
    sim.configure(ExchangesConfig(pairs=("btceur",)))
    assert sim.venue("kraken").book("BTC/USD") is None
    assert sim.venue("kraken").book("BTC/EUR") is not None
    with pytest.raises(InputError):
        sim.quote("kraken", "btcusd")
    with pytest.raises(InputError):
        sim.configure(ExchangesConfig(pairs=("btcusd",)))

    scenario = Scenario.from_toml(
        """
        [price]
        crash_at_s = 30
        [exchanges]
        lag_ms = { btceur = 250 }
        [exchanges.binance]
        lag_ms = { btceur = 0, eurusd = -100 }
        dead_at_s = 40
        """
    )
    venue = SimVenue(scenario, seed=3, clock=clock)
    books = venue.exchanges.venue("binance").books
    assert (books["btceur"].lag_ns, books["eurusd"].lag_ns) == (0, -100 * MS)
    assert venue.exchanges.venue("kraken").books["btceur"].lag_ns == 250 * MS
    assert venue.exchanges.venue("binance").stale_windows == [(40 * S, -1)]
    before = venue.path.mid_at(clock.now_ns() + 29 * S)
    assert venue.path.mid_at(clock.now_ns() + 200 * S) < before * Decimal("0.93")  # the crash is on


def test_extra_books_leave_the_btc_eur_quotes_as_they_were() -> None:
    # Golden values from the exchanges before the USD books existed: BTC/EUR keeps drawing from the
    # venue's own stream, the new books from theirs, so a seed's BTC/EUR quotes are unchanged.
    clock = ManualClock(1_760_000_000 * S)
    sim = SimExchanges(PricePath(3, clock=clock), clock, 42)
    sim.configure(ExchangesConfig())
    for _ in range(50):
        clock.advance(S)
        for venue in sim.venues.values():
            for book in venue.books.values():
                book.refresh(clock.now_ns())
    got = {}
    for name in SPECS:
        q, seq = sim.quote(name), sim.venue(name).books["btceur"].sequence
        got[name] = (str(q.bid), str(q.ask), str(q.bid_qty), seq)
    assert got == {
        "kraken": ("59991.2", "60000.2", "0.13688760", 7905730169),
        "bitstamp": ("59991", "59999", "1.17789747", 5763426314),
        "coinbase": ("59986.74", "59988.88", "0.98677568", 5695859006),
        "binance": ("59995.92", "59998.54", "0.83910843", 6334468696),
    }


def test_the_usd_cross_leads_lagging_btc_eur_books_by_the_lag() -> None:
    # BTC/EUR books 1 s late, USD books on time: BTC/USD / EUR/USD now predicts where the BTC/EUR
    # books will be in 1 s, the lead a latency arbitrageur (or a smarter solver) can exploit.
    clock = ManualClock(1_760_000_000 * S)
    path = PricePath(
        13, vol_annual=10.0, jump_rate_per_hour=0.0, clock=clock, start_ns=clock.now_ns() - 60 * S
    )
    sim = SimExchanges(path, clock, 13)
    sim.configure(dataclasses.replace(config(), lag_ms=MappingProxyType({"btceur": 1000})))
    venue = sim.venue("coinbase")
    venue.profile = dataclasses.replace(venue.profile, noise_bps=0.0, basis_bps=0.0)

    def mid(pair: str) -> Decimal:
        venue.books[pair].refresh(clock.now_ns())
        q = venue.books[pair].current()
        return (q.bid + q.ask) / 2

    lead_errors, naive_errors = [], []
    for _ in range(200):
        cross = mid("btcusd") / mid("eurusd")
        book_now = mid("btceur")
        clock.advance(S)
        book_later = mid("btceur")
        lead_errors.append(float(bps(cross, book_later)))
        naive_errors.append(float(bps(book_now, book_later)))
    assert statistics.fmean(lead_errors) < 2  # the cross is the BTC/EUR book 1 s ahead
    assert statistics.fmean(naive_errors) > 5 * statistics.fmean(lead_errors)
