"""Four simulated exchanges on loopback, each speaking its venue's own wire format, each serving
BTC/EUR and (by default) BTC/USD(T) and EUR/USD(T) books under the venue's real symbols.

One aiohttp app per venue, each on its own port, with the live URL paths, so the live adapters in
``intents_mm.venues.exchanges`` run against them with only a base-URL change:

* Kraken: REST ``GET /0/public/Ticker?pair=XBTEUR``; WebSocket v2 at ``/v2`` (status frame on
  connect, ``subscribe`` ack with ``time_in``/``time_out``, ``ticker`` snapshot then BBO-triggered
  updates with JSON numbers, ``{"channel":"heartbeat"}`` every second, ``ping``/``pong``).
* Bitstamp: REST ``GET /api/v2/ticker/btceur/``; WebSocket at ``/`` (``bts:subscribe`` to
  ``order_book_btceur`` -> ``bts:subscription_succeeded`` -> ``data`` snapshots; ``bts:heartbeat``
  answered).
* Coinbase Exchange: REST ``GET /products/BTC-EUR/ticker``; WebSocket at ``/`` (closed unless a
  subscribe arrives within 5 s; ``subscriptions``, then ``ticker`` frames and one ``heartbeat`` per
  second when subscribed to that channel).
* Binance: REST ``GET /api/v3/ticker/bookTicker?symbol=BTCEUR``; WebSocket ``/ws/btceur@bookTicker``
  (stream in the URL), ``/ws`` with ``SUBSCRIBE`` (-> ``{"result":null,"id":1}``) and
  ``/stream?streams=...`` (frames wrapped as ``{stream, data}``); server pings every 20 s.

Books (``pair``: wire symbol and tick per venue):

* ``btceur``: Kraken ``BTC/EUR`` (REST ``XBTEUR``, answered as ``XXBTZEUR``) 0.1, Bitstamp
  ``btceur`` 1, Coinbase ``BTC-EUR`` 0.01, Binance ``BTCEUR`` 0.01;
* ``btcusd``: Kraken ``BTC/USD`` (``XBTUSD`` / ``XXBTZUSD``) 0.1, Bitstamp ``btcusd`` 1, Coinbase
  ``BTC-USD`` 0.01, Binance ``BTCUSDT`` 0.01;
* ``eurusd``: Kraken ``EUR/USD`` (``EURUSD`` / ``ZEURZUSD``) 0.00001, Bitstamp ``eurusd`` 0.00001,
  Coinbase ``EUR-USD`` 0.00001, Binance ``EURUSDT`` 0.0001.

Binance's USDT is taken at par with USD. The frames of the
extra books are exactly the BTC/EUR frames with the other symbol, so anything that parses one
parses the others. Each book quotes around the shared
:class:`~intents_mm.sim.pricepath.PricePath` (``pair_mid_at``) as it was ``lag_ms`` ago
(negative: ahead of the true path, a leading market) with the venue's seeded basis,
mean-reverting AR(1) noise (``noise_bps``, persistence ``noise_ar``), optional white
microstructure jitter (``jitter_bps``) and spread, on its own tick size, and pushes an update
every 100-250 ms (only when its top of book changed). The BTC/EUR book draws from the venue's
own stream exactly as before the extra books existed (each extra book has its own stream), so
adding books does not change a seed's BTC/EUR quotes.

Scheduled and random outages (:meth:`SimExchanges.configure`, times in seconds after
:meth:`SimExchanges.start`): ``stale`` windows and random stale episodes freeze every book of the
venue (heartbeats go on, REST answers the frozen book), ``dead_at_s`` freezes them for good (a
dead book behind a live connection), and scheduled or random disconnects close every WebSocket
of the venue (clients may reconnect at once). Faults on demand: :meth:`SimExchanges.set_stale`
(no more WebSocket updates, heartbeats continue, REST answers the frozen book with its old
timestamps), :meth:`SimExchanges.set_outlier` (prices offset by ``bps``),
:meth:`SimExchanges.disconnect` (close every WebSocket of the venue) and
:meth:`SimExchanges.set_down` (REST 503, WebSocket handshakes refused, open sockets closed).

Frame timestamps come from the injected clock; pacing uses the event loop's timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from intents_mm.clock import Clock
from intents_mm.errors import InputError
from intents_mm.sim.pricepath import PAIRS, PricePath
from intents_mm.venues.exchanges.common import ExchangeUrls

if TYPE_CHECKING:
    from intents_mm.sim.scenario import ExchangesConfig

log = logging.getLogger(__name__)

VENUES: tuple[str, ...] = ("kraken", "bitstamp", "coinbase", "binance")

_NS_PER_S = 1_000_000_000
_BTC_QTY = Decimal("0.00000001")
_QUEUE_LIMIT = 1024
_numbers = msgspec.json.Encoder(decimal_format="number")  # Kraken v2: prices are JSON numbers
_strings = msgspec.json.Encoder()  # everyone else: Decimals as strings
_decoder = msgspec.json.Decoder()

__all__ = ["MARKETS", "PAIRS", "VENUES", "ExchangeUrls", "Market", "SimExchanges", "VenueQuote"]


def _rfc3339(ns: int) -> str:
    secs, rem = divmod(ns, _NS_PER_S)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rem // 1000:06d}Z"


@dataclass(frozen=True, slots=True)
class _Profile:
    half_spread_bps: tuple[float, float]
    basis_bps: float
    noise_bps: float = 0.6  # std-dev of each step of the venue's mean-reverting (AR(1)) mid noise
    noise_ar: float = 0.8  # persistence of that noise per requote
    jitter_bps: float = 0.0  # std-dev of white microstructure noise per requote (0 = none, no draw)


_PROFILES: dict[str, _Profile] = {
    "kraken": _Profile((0.1, 0.8), 0.0),
    "bitstamp": _Profile((0.2, 1.5), 1.0),
    "coinbase": _Profile((0.05, 0.6), -0.5),
    "binance": _Profile((0.05, 0.5), 0.5),
}


@dataclass(frozen=True, slots=True)
class Market:
    """One pair as one venue lists it: wire symbol, price tick, size scale (units of the base)."""

    symbol: str
    tick: Decimal
    size_scale: Decimal = Decimal(1)  # sizes are the BTC-sized draws times this
    size_unit: Decimal = _BTC_QTY


_FX_SIZE = Decimal(20_000)
_FX_QTY = Decimal("0.01")
MARKETS: dict[str, dict[str, Market]] = {
    "kraken": {
        "btceur": Market("BTC/EUR", Decimal("0.1")),
        "btcusd": Market("BTC/USD", Decimal("0.1")),
        "eurusd": Market("EUR/USD", Decimal("0.00001"), _FX_SIZE, _FX_QTY),
    },
    "bitstamp": {
        "btceur": Market("btceur", Decimal("1")),
        "btcusd": Market("btcusd", Decimal("1")),
        "eurusd": Market("eurusd", Decimal("0.00001"), _FX_SIZE, _FX_QTY),
    },
    "coinbase": {
        "btceur": Market("BTC-EUR", Decimal("0.01")),
        "btcusd": Market("BTC-USD", Decimal("0.01")),
        "eurusd": Market("EUR-USD", Decimal("0.00001"), _FX_SIZE, _FX_QTY),
    },
    "binance": {
        "btceur": Market("BTCEUR", Decimal("0.01")),
        "btcusd": Market("BTCUSDT", Decimal("0.01")),
        "eurusd": Market("EURUSDT", Decimal("0.0001"), _FX_SIZE, _FX_QTY),
    },
}
# Kraken's REST names: what a request may say, and the internal name the answer is keyed by.
_KRAKEN_REST: dict[str, tuple[tuple[str, ...], str]] = {
    "btceur": (("XBTEUR", "XXBTZEUR", "BTCEUR", "BTC/EUR"), "XXBTZEUR"),
    "btcusd": (("XBTUSD", "XXBTZUSD", "BTCUSD", "BTC/USD"), "XXBTZUSD"),
    "eurusd": (("EURUSD", "ZEURZUSD", "EUR/USD"), "ZEURZUSD"),
}


@dataclass(frozen=True, slots=True)
class VenueQuote:
    """A venue's current top of book and when it was made (clock ns)."""

    bid: Decimal
    ask: Decimal
    bid_qty: Decimal
    ask_qty: Decimal
    ts_ns: int
    last: Decimal
    last_qty: Decimal
    side: str


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(_QUEUE_LIMIT))
    books: set[str] = field(default_factory=set)  # the pairs this connection is subscribed to
    heartbeats: bool = False
    combined: bool = False
    subscribe_seen: bool = False
    heartbeat_books: list[str] = field(default_factory=list)  # Coinbase: one heartbeat per product
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class _Book:
    """One pair's top of book on one venue, with its own seeded stream, noise and lag."""

    def __init__(self, venue: _Venue, pair: str, rng: random.Random) -> None:
        self.venue = venue
        self.pair = pair
        self.market = MARKETS[venue.name][pair]
        self.rng = rng
        self.lag_ns = 0  # quote the path as it was this long ago (negative: ahead of it)
        self.noise_bps = 0.0
        self.quote: VenueQuote | None = None
        self.sequence = rng.randrange(10**9, 10**10)
        self.trade_id = rng.randrange(10**7, 10**8)
        self.volume = Decimal(rng.randrange(200, 900)) * self.market.size_scale
        self.high: Decimal | None = None
        self.low: Decimal | None = None
        self.open: Decimal | None = None
        self.updates = 0

    @property
    def symbol(self) -> str:
        return self.market.symbol

    def _size(self, lo: float, hi: float) -> Decimal:
        draw = Decimal(repr(round(self.rng.uniform(lo, hi), 8))).quantize(_BTC_QTY)
        return (draw * self.market.size_scale).quantize(self.market.size_unit)

    def refresh(self, now_ns: int) -> bool:
        """Requote from the path; True when the top of book changed."""
        p = self.venue.profile
        tick = self.market.tick
        self.noise_bps = p.noise_ar * self.noise_bps + self.rng.gauss(0.0, p.noise_bps)
        half = self.rng.uniform(*p.half_spread_bps)
        jitter = self.rng.gauss(0.0, p.jitter_bps) if p.jitter_bps > 0 else 0.0
        offset = (p.basis_bps + self.noise_bps + jitter + self.venue.outlier_bps) / 10_000
        true_mid = self.venue.sim.path.pair_mid_at(self.pair, now_ns - self.lag_ns)
        mid = true_mid * Decimal(repr(1 + offset))
        bid = (mid * Decimal(repr(1 - half / 10_000)) / tick).to_integral_value(ROUND_FLOOR) * tick
        ask = (mid * Decimal(repr(1 + half / 10_000)) / tick).to_integral_value(ROUND_CEILING) * tick
        if ask <= bid:
            ask = bid + tick
        old = self.quote
        if old is not None and old.bid == bid and old.ask == ask:
            return False
        side = "buy" if self.rng.random() < 0.5 else "sell"
        last_qty = self._size(0.0001, 0.2)
        self.quote = VenueQuote(
            bid=bid,
            ask=ask,
            bid_qty=self._size(0.01, 2.0),
            ask_qty=self._size(0.01, 2.0),
            ts_ns=now_ns,
            last=ask if side == "buy" else bid,
            last_qty=last_qty,
            side=side,
        )
        self.sequence += 1
        self.trade_id += 1
        self.updates += 1
        self.volume += last_qty
        self.open = self.open or self.quote.last
        self.high = max(self.high or bid, ask)
        self.low = min(self.low or bid, bid)
        return True

    def current(self) -> VenueQuote:
        if self.quote is None:
            self.refresh(self.venue.sim.clock.now_ns())
        assert self.quote is not None
        return self.quote


class _Venue:
    """State and wire format of one simulated venue."""

    name: str = ""

    def __init__(self, sim: SimExchanges) -> None:
        self.sim = sim
        self.profile = _PROFILES[self.name]
        self.rng = random.Random(f"{sim.seed}:{self.name}")
        self.stale = False
        self.down = False
        self.outlier_bps = 0.0
        self.conns: set[_Conn] = set()
        # BTC/EUR draws from the venue's own stream (as it always has); the others from their own.
        self.books: dict[str, _Book] = {"btceur": _Book(self, "btceur", self.rng)}
        for pair in PAIRS[1:]:
            self.books[pair] = _Book(self, pair, random.Random(f"{sim.seed}:{self.name}:{pair}"))
        self.stale_windows: list[tuple[int, int]] = []  # [start, end) ns after start(); end -1 = for good
        self.disconnect_at: list[int] = []  # ns after start()
        self.disconnects = 0

    # --- quoting ------------------------------------------------------------------------------

    @property
    def quote(self) -> VenueQuote | None:
        """The BTC/EUR top of book (``None`` before the first quote)."""
        return self.books["btceur"].quote

    def refresh(self, now_ns: int) -> bool:
        """Requote BTC/EUR from the path; True when its top of book changed."""
        return self.books["btceur"].refresh(now_ns)

    def current(self) -> VenueQuote:
        return self.books["btceur"].current()

    def book(self, symbol: str) -> _Book | None:
        """The served book listed as ``symbol`` on this venue's wire (None if not served)."""
        for pair in self.sim.pairs:
            if self.books[pair].symbol == symbol:
                return self.books[pair]
        return None

    def frozen(self, now_ns: int) -> bool:
        """Whether the venue's books are not updating now (a stale flag or a stale/dead window)."""
        if self.stale:
            return True
        started = self.sim.started_ns
        if started is None or not self.stale_windows:
            return False
        t = now_ns - started
        return any(lo <= t and (hi < 0 or t < hi) for lo, hi in self.stale_windows)

    # --- connections -------------------------------------------------------------------------

    def send(self, conn: _Conn, frame: str) -> None:
        if conn.ws.closed:
            return
        try:
            conn.queue.put_nowait(frame)
        except asyncio.QueueFull:
            # A consumer this slow is cut off, as real venues do.
            self.sim.spawn(conn.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"slow consumer"))

    def send_json(self, conn: _Conn, body: object) -> None:
        self.send(conn, _strings.encode(body).decode())

    def broadcast_update(self, pair: str = "btceur") -> None:
        book = self.books[pair]
        book.current()
        for conn in list(self.conns):
            if pair in conn.books:
                self.send(conn, self.update_frame(conn, book, snapshot=False))

    def broadcast_heartbeat(self) -> None:
        for conn in list(self.conns):
            for frame in self.heartbeat_frames(conn):
                self.send(conn, frame)

    async def close_all(self, code: int = WSCloseCode.GOING_AWAY) -> int:
        conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.ws.close(code=code, message=b"simulated disconnect")
        return len(conns)

    # --- per-venue wire format (overridden) --------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def on_open(self, conn: _Conn, request: web.Request) -> None:
        """Called once the WebSocket is open."""

    async def on_text(self, conn: _Conn, text: str) -> None:
        raise NotImplementedError

    def update_frame(self, conn: _Conn, book: _Book, *, snapshot: bool) -> str:
        raise NotImplementedError

    def heartbeat_frames(self, conn: _Conn) -> list[str]:
        return []

    def ws_url(self, base: str) -> str:
        raise NotImplementedError

    # --- shared plumbing --------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse(
            timeout=2.0, heartbeat=self.sim.ws_ping_s if self.name == "binance" else None
        )
        await ws.prepare(request)
        conn = _Conn(ws)
        conn.tasks.append(asyncio.create_task(self._writer(conn)))
        self.conns.add(conn)
        try:
            await self.on_open(conn, request)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self.on_text(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self.on_text(conn, msg.data.decode("utf-8", "replace"))
        finally:
            self.conns.discard(conn)
            for task in conn.tasks:
                task.cancel()
            for task in conn.tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    async def _writer(self, conn: _Conn) -> None:
        while True:
            frame = await conn.queue.get()
            try:
                await conn.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                return

    def rest_unavailable(self) -> web.Response | None:
        if self.down:
            return web.Response(status=503, text="Service Unavailable")
        return None


def _decode(text: str) -> object:
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError:
        return None


class _Kraken(_Venue):
    name = "kraken"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v2", self.websocket)
        app.router.add_get("/0/public/Ticker", self.rest_ticker)

    def ws_url(self, base: str) -> str:
        return f"ws://{base}/v2"

    async def on_open(self, conn: _Conn, request: web.Request) -> None:
        status = {
            "channel": "status",
            "type": "update",
            "data": [
                {
                    "version": "2.0.10",
                    "system": "online",
                    "api_version": "v2",
                    "connection_id": self.rng.randrange(10**18, 10**19),
                }
            ],
        }
        self.send(conn, _numbers.encode(status).decode())

    async def on_text(self, conn: _Conn, text: str) -> None:
        time_in = _rfc3339(self.sim.clock.now_ns())
        msg = _decode(text)
        if not isinstance(msg, dict) or not isinstance(msg.get("method"), str):
            self._reply(conn, {"error": "Malformed request", "success": False}, time_in)
            return
        method = msg["method"]
        req = {"req_id": msg["req_id"]} if "req_id" in msg else {}
        if method == "ping":
            self._reply(conn, {"method": "pong", **req}, time_in)
            return
        if method != "subscribe":
            self._reply(
                conn,
                {"error": f"Method not supported: {method}", "method": method, "success": False},
                time_in,
            )
            return
        params = msg.get("params")
        if not isinstance(params, dict) or params.get("channel") != "ticker":
            channel = params.get("channel") if isinstance(params, dict) else None
            self._reply(
                conn,
                {
                    "error": f"Channel not supported: {channel}",
                    "method": "subscribe",
                    "success": False,
                    **req,
                },
                time_in,
            )
            return
        symbols = params.get("symbol")
        if not isinstance(symbols, list) or not symbols:
            self._reply(
                conn, {"error": "Missing symbol", "method": "subscribe", "success": False, **req}, time_in
            )
            return
        trigger = params.get("event_trigger", "trades")
        for symbol in symbols:
            book = self.book(symbol) if isinstance(symbol, str) else None
            if book is None:
                self._reply(
                    conn,
                    {
                        "error": f"Currency pair not supported {symbol}",
                        "method": "subscribe",
                        "success": False,
                        "symbol": symbol,
                        **req,
                    },
                    time_in,
                )
                continue
            result = {"channel": "ticker", "event_trigger": trigger, "snapshot": True, "symbol": symbol}
            self._reply(conn, {"method": "subscribe", "result": result, "success": True, **req}, time_in)
            conn.books.add(book.pair)
            conn.heartbeats = True
            self.send(conn, self.update_frame(conn, book, snapshot=True))

    def _reply(self, conn: _Conn, body: dict[str, object], time_in: str) -> None:
        body = {**body, "time_in": time_in, "time_out": _rfc3339(self.sim.clock.now_ns())}
        self.send(conn, _numbers.encode(body).decode())

    def update_frame(self, conn: _Conn, book: _Book, *, snapshot: bool) -> str:
        quote = book.current()
        open_ = book.open or quote.last
        change = quote.last - open_
        entry = {
            "symbol": book.symbol,
            "bid": quote.bid,
            "bid_qty": quote.bid_qty,
            "ask": quote.ask,
            "ask_qty": quote.ask_qty,
            "last": quote.last,
            "volume": book.volume,
            "vwap": open_,
            "low": book.low,
            "high": book.high,
            "change": change,
            "change_pct": (change / open_ * 100).quantize(Decimal("0.01")),
            "timestamp": _rfc3339(quote.ts_ns),
        }
        frame = {"channel": "ticker", "type": "snapshot" if snapshot else "update", "data": [entry]}
        return _numbers.encode(frame).decode()

    def heartbeat_frames(self, conn: _Conn) -> list[str]:
        return ['{"channel":"heartbeat"}'] if conn.heartbeats else []

    async def rest_ticker(self, request: web.Request) -> web.Response:
        if (down := self.rest_unavailable()) is not None:
            return down
        asked = request.query.get("pair", "").upper()
        found = next(
            (pair for pair in self.sim.pairs if asked in _KRAKEN_REST[pair][0]),
            None,
        )
        if found is None:
            return web.json_response({"error": ["EQuery:Unknown asset pair"]})
        book = self.books[found]
        q = book.current()

        def px(value: Decimal | None) -> str:
            return f"{(value or q.last):.5f}"

        body = {
            "error": [],
            "result": {
                _KRAKEN_REST[found][1]: {
                    "a": [px(q.ask), str(int(q.ask_qty) or 1), f"{q.ask_qty:.3f}"],
                    "b": [px(q.bid), str(int(q.bid_qty) or 1), f"{q.bid_qty:.3f}"],
                    "c": [px(q.last), f"{q.last_qty:.8f}"],
                    "v": [f"{book.volume / 3:.8f}", f"{book.volume:.8f}"],
                    "p": [px(book.open), px(book.open)],
                    "t": [book.trade_id % 10_000, book.trade_id % 100_000],
                    "l": [px(book.low), px(book.low)],
                    "h": [px(book.high), px(book.high)],
                    "o": px(book.open),
                }
            },
        }
        return web.Response(body=_strings.encode(body), content_type="application/json")


class _Bitstamp(_Venue):
    name = "bitstamp"
    PREFIX = "order_book_"

    def _channel_book(self, channel: object) -> _Book | None:
        if not isinstance(channel, str) or not channel.startswith(self.PREFIX):
            return None
        return self.book(channel.removeprefix(self.PREFIX))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.websocket)
        app.router.add_get("/api/v2/ticker/{pair}/", self.rest_ticker)

    def ws_url(self, base: str) -> str:
        return f"ws://{base}"

    async def on_text(self, conn: _Conn, text: str) -> None:
        msg = _decode(text)
        event = msg.get("event") if isinstance(msg, dict) else None
        data = msg.get("data") if isinstance(msg, dict) else None
        channel = data.get("channel") if isinstance(data, dict) else None
        book = self._channel_book(channel)
        if event == "bts:heartbeat":
            self.send_json(conn, {"event": "bts:heartbeat", "channel": "", "data": {"status": "success"}})
        elif event == "bts:subscribe" and book is not None:
            self.send_json(conn, {"event": "bts:subscription_succeeded", "channel": channel, "data": {}})
            conn.books.add(book.pair)
            self.send(conn, self.update_frame(conn, book, snapshot=True))
        elif event == "bts:unsubscribe" and book is not None:
            conn.books.discard(book.pair)
            self.send_json(conn, {"event": "bts:unsubscription_succeeded", "channel": channel, "data": {}})
        else:
            error = {
                "event": "bts:error",
                "channel": "",
                "data": {"code": None, "message": "Bad subscription string."},
            }
            self.send_json(conn, error)

    def update_frame(self, conn: _Conn, book: _Book, *, snapshot: bool) -> str:
        quote = book.current()
        bids, asks = [], []
        for level in range(10):
            step = book.market.tick * (level * 3 + level * level)
            size = (quote.bid_qty * (level + 1)).quantize(_BTC_QTY)
            bids.append([f"{quote.bid - step:f}", f"{size:.8f}"])
            asks.append([f"{quote.ask + step:f}", f"{(quote.ask_qty * (level + 1)).quantize(_BTC_QTY):.8f}"])
        frame = {
            "data": {
                "timestamp": str(quote.ts_ns // _NS_PER_S),
                "microtimestamp": str(quote.ts_ns // 1000),
                "bids": bids,
                "asks": asks,
            },
            "channel": self.PREFIX + book.symbol,
            "event": "data",
        }
        return _strings.encode(frame).decode()

    async def rest_ticker(self, request: web.Request) -> web.Response:
        if (down := self.rest_unavailable()) is not None:
            return down
        book = self.book(request.match_info["pair"])
        if book is None:
            return web.json_response({"status": "error", "reason": "Invalid currency pair"}, status=404)
        q = book.current()
        open_ = book.open or q.last
        body = {
            "timestamp": str(q.ts_ns // _NS_PER_S),
            "open": f"{open_:f}",
            "high": f"{book.high or q.ask:f}",
            "low": f"{book.low or q.bid:f}",
            "last": f"{q.last:f}",
            "volume": f"{book.volume:.8f}",
            "vwap": f"{open_:f}",
            "bid": f"{q.bid:f}",
            "ask": f"{q.ask:f}",
            "side": "0" if q.side == "buy" else "1",
            "open_24": f"{open_:f}",
            "percent_change_24": f"{(q.last - open_) / open_ * 100:.2f}",
        }
        return web.json_response(body)


def _places(tick: Decimal) -> int:
    exponent = tick.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


class _Coinbase(_Venue):
    name = "coinbase"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.websocket)
        app.router.add_get("/products/{product}/ticker", self.rest_ticker)

    def ws_url(self, base: str) -> str:
        return f"ws://{base}"

    async def on_open(self, conn: _Conn, request: web.Request) -> None:
        conn.tasks.append(asyncio.create_task(self._subscribe_deadline(conn)))

    async def _subscribe_deadline(self, conn: _Conn) -> None:
        await asyncio.sleep(self.sim.coinbase_subscribe_timeout_s)
        if not conn.subscribe_seen and not conn.ws.closed:
            await conn.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"subscribe timeout")

    async def on_text(self, conn: _Conn, text: str) -> None:
        msg = _decode(text)
        if not isinstance(msg, dict) or msg.get("type") != "subscribe":
            self._error(conn, "Failed to subscribe", "message type must be subscribe")
            return
        products = msg.get("product_ids") or []
        names: list[str] = []
        for channel in msg.get("channels") or []:
            if isinstance(channel, str):
                names.append(channel)
            elif isinstance(channel, dict) and isinstance(channel.get("name"), str):
                names.append(channel["name"])
                products = products or channel.get("product_ids") or []
        if not isinstance(products, list) or not products:
            self._error(conn, "Failed to subscribe", "No product ids provided")
            return
        books: list[_Book] = []
        for product in products:
            book = self.book(product) if isinstance(product, str) else None
            if book is None:
                self._error(conn, "Failed to subscribe", f"{product} is not a valid product")
                return
            books.append(book)
        unknown = [n for n in names if n not in ("ticker", "heartbeat")]
        if not names or unknown:
            self._error(
                conn, "Failed to subscribe", f"{','.join(unknown) or 'no channel'} is not a valid channel"
            )
            return
        ids = [b.symbol for b in books]
        channels = [{"name": n, "product_ids": ids, "account_ids": None} for n in names]
        self.send_json(conn, {"type": "subscriptions", "channels": channels})
        conn.subscribe_seen = True
        conn.heartbeats = "heartbeat" in names
        conn.heartbeat_books = [b.pair for b in books] if conn.heartbeats else []
        if "ticker" in names:
            for book in books:
                conn.books.add(book.pair)
                self.send(conn, self.update_frame(conn, book, snapshot=True))

    def _error(self, conn: _Conn, message: str, reason: str) -> None:
        self.send_json(conn, {"type": "error", "message": message, "reason": reason})

    def update_frame(self, conn: _Conn, book: _Book, *, snapshot: bool) -> str:
        quote = book.current()
        open_ = book.open or quote.last
        n = _places(book.market.tick)
        frame = {
            "type": "ticker",
            "sequence": book.sequence,
            "product_id": book.symbol,
            "price": f"{quote.last:.{n}f}",
            "open_24h": f"{open_:.{n}f}",
            "volume_24h": f"{book.volume:.8f}",
            "low_24h": f"{book.low or quote.bid:.{n}f}",
            "high_24h": f"{book.high or quote.ask:.{n}f}",
            "volume_30d": f"{book.volume * 30:.8f}",
            "best_bid": f"{quote.bid:.{n}f}",
            "best_bid_size": f"{quote.bid_qty:.8f}",
            "best_ask": f"{quote.ask:.{n}f}",
            "best_ask_size": f"{quote.ask_qty:.8f}",
            "side": quote.side,
            "time": _rfc3339(quote.ts_ns),
            "trade_id": book.trade_id,
            "last_size": f"{quote.last_qty:.8f}",
        }
        return _strings.encode(frame).decode()

    def heartbeat_frames(self, conn: _Conn) -> list[str]:
        frames = []
        for pair in conn.heartbeat_books:
            book = self.books[pair]
            book.sequence += 1
            frame = {
                "type": "heartbeat",
                "last_trade_id": book.trade_id,
                "product_id": book.symbol,
                "sequence": book.sequence,
                "time": _rfc3339(self.sim.clock.now_ns()),
            }
            frames.append(_strings.encode(frame).decode())
        return frames

    async def rest_ticker(self, request: web.Request) -> web.Response:
        if (down := self.rest_unavailable()) is not None:
            return down
        book = self.book(request.match_info["product"])
        if book is None:
            return web.json_response({"message": "NotFound"}, status=404)
        q = book.current()
        n = _places(book.market.tick)
        body = {
            "ask": f"{q.ask:.{n}f}",
            "bid": f"{q.bid:.{n}f}",
            "volume": f"{book.volume:.8f}",
            "trade_id": book.trade_id,
            "price": f"{q.last:.{n}f}",
            "size": f"{q.last_qty:.8f}",
            "time": _rfc3339(q.ts_ns),
            "rfq_volume": "0.000000",
            "conversions_volume": "0",
        }
        return web.json_response(body)


class _Binance(_Venue):
    name = "binance"

    def _stream_book(self, stream: object) -> _Book | None:
        if not isinstance(stream, str) or not stream.endswith("@bookTicker"):
            return None
        return self.book(stream.removesuffix("@bookTicker").upper())

    @staticmethod
    def _stream(book: _Book) -> str:
        return f"{book.symbol.lower()}@bookTicker"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/ws/{streams}", self.websocket)
        app.router.add_get("/stream", self.websocket)
        app.router.add_get("/api/v3/ticker/bookTicker", self.rest_ticker)

    def ws_url(self, base: str) -> str:
        return f"ws://{base}/ws/btceur@bookTicker"

    async def on_open(self, conn: _Conn, request: web.Request) -> None:
        if request.path == "/stream":
            conn.combined = True
            streams = request.query.get("streams", "").split("/")
        else:
            streams = request.match_info.get("streams", "").split("/")
        # Like the real stream, nothing is sent until the book next changes.
        for stream in streams:
            book = self._stream_book(stream)
            if book is not None:
                conn.books.add(book.pair)

    async def on_text(self, conn: _Conn, text: str) -> None:
        msg = _decode(text)
        if not isinstance(msg, dict):
            self.send_json(conn, {"error": {"code": 3, "msg": "Invalid JSON"}})
            return
        method, req_id, params = msg.get("method"), msg.get("id"), msg.get("params")
        if method in ("SUBSCRIBE", "UNSUBSCRIBE") and isinstance(params, list):
            for stream in params:
                book = self._stream_book(stream)
                if book is not None and method == "SUBSCRIBE":
                    conn.books.add(book.pair)
                elif book is not None:
                    conn.books.discard(book.pair)
            self.send_json(conn, {"result": None, "id": req_id})
        elif method == "LIST_SUBSCRIPTIONS":
            streams = [self._stream(self.books[p]) for p in self.sim.pairs if p in conn.books]
            self.send_json(conn, {"result": streams, "id": req_id})
        else:
            error = {"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": req_id}
            self.send_json(conn, error)

    def update_frame(self, conn: _Conn, book: _Book, *, snapshot: bool) -> str:
        quote = book.current()
        data = {
            "u": book.sequence,
            "s": book.symbol,
            "b": f"{quote.bid:.8f}",
            "B": f"{quote.bid_qty:.8f}",
            "a": f"{quote.ask:.8f}",
            "A": f"{quote.ask_qty:.8f}",
        }
        frame: dict[str, object] = {"stream": self._stream(book), "data": data} if conn.combined else data
        return _strings.encode(frame).decode()

    async def rest_ticker(self, request: web.Request) -> web.Response:
        if (down := self.rest_unavailable()) is not None:
            return down
        book = self.book(request.query.get("symbol", ""))
        if book is None:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        q = book.current()
        body = {
            "symbol": book.symbol,
            "bidPrice": f"{q.bid:.8f}",
            "bidQty": f"{q.bid_qty:.8f}",
            "askPrice": f"{q.ask:.8f}",
            "askQty": f"{q.ask_qty:.8f}",
        }
        return web.json_response(body)


_VENUE_CLASSES: dict[str, type[_Venue]] = {cls.name: cls for cls in (_Kraken, _Bitstamp, _Coinbase, _Binance)}


class SimExchanges:
    """The four simulated exchanges. ``await start()`` binds them; ``await stop()`` ends everything."""

    def __init__(
        self,
        path: PricePath,
        clock: Clock,
        seed: int,
        *,
        ports: Mapping[str, int] | None = None,
        update_interval_s: tuple[float, float] = (0.1, 0.25),
        heartbeat_s: float = 1.0,
        coinbase_subscribe_timeout_s: float = 5.0,
        ws_ping_s: float = 20.0,
    ) -> None:
        if ports is not None and set(ports) - set(VENUES):
            raise InputError(f"unknown venue in ports: {', '.join(sorted(set(ports) - set(VENUES)))}")
        if not 0 < update_interval_s[0] <= update_interval_s[1]:
            raise InputError("update_interval_s must be (min, max) with 0 < min <= max")
        self.path = path
        self.clock = clock
        self.seed = seed
        self.ports = dict(ports or {})
        self.update_interval_s = update_interval_s
        self.heartbeat_s = heartbeat_s
        self.coinbase_subscribe_timeout_s = coinbase_subscribe_timeout_s
        self.ws_ping_s = ws_ping_s
        self.pairs: tuple[str, ...] = PAIRS  # the books served (btceur always)
        self.started_ns: int | None = None
        self.venues: dict[str, _Venue] = {name: _VENUE_CLASSES[name](self) for name in VENUES}
        self.urls: dict[str, ExchangeUrls] = {}
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._spawned: set[asyncio.Task[object]] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1") -> dict[str, ExchangeUrls]:
        if self._runners:
            raise InputError("simulated exchanges already started")
        shown_host = f"[{host}]" if ":" in host else host
        self.started_ns = self.clock.now_ns()
        try:
            for name, venue in self.venues.items():
                app = web.Application()
                venue.add_routes(app)
                runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
                await runner.setup()
                self._runners.append(runner)
                site = web.TCPSite(runner, host, self.ports.get(name, 0))
                await site.start()
                port = int(runner.addresses[0][1])
                self.ports[name] = port
                base = f"{shown_host}:{port}"
                self.urls[name] = ExchangeUrls(ws_url=venue.ws_url(base), rest_url=f"http://{base}")
                for pair in self.pairs:
                    venue.books[pair].refresh(self.clock.now_ns())
                    self._tasks.append(
                        asyncio.create_task(self._pump(venue, pair), name=f"sim-{name}-{pair}-pump")
                    )
                self._tasks.append(asyncio.create_task(self._heartbeats(venue), name=f"sim-{name}-heartbeat"))
                if venue.disconnect_at:
                    self._tasks.append(
                        asyncio.create_task(self._disconnects(venue), name=f"sim-{name}-disconnects")
                    )
        except BaseException:
            await self.stop()
            raise
        return dict(self.urls)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for venue in self.venues.values():
            await venue.close_all()
        for task in list(self._spawned):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def _pump(self, venue: _Venue, pair: str = "btceur") -> None:
        lo, hi = self.update_interval_s
        book = venue.books[pair]
        while True:
            await asyncio.sleep(book.rng.uniform(lo, hi))
            now = self.clock.now_ns()
            if venue.down or venue.frozen(now):
                continue
            if book.refresh(now):
                venue.broadcast_update(pair)

    async def _disconnects(self, venue: _Venue) -> None:
        assert self.started_ns is not None
        for at in venue.disconnect_at:
            wait_ns = self.started_ns + at - self.clock.now_ns()
            if wait_ns > 0:
                await asyncio.sleep(wait_ns / _NS_PER_S)
            if not venue.down:
                venue.disconnects += 1
                await venue.close_all()

    async def _heartbeats(self, venue: _Venue) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if not venue.down:
                venue.broadcast_heartbeat()

    # --- configuration ------------------------------------------------------------------------

    def configure(self, config: ExchangesConfig, *, horizon_s: float = 86_400.0) -> None:
        """Apply a scenario's ``[exchanges]`` market settings (before :meth:`start`).

        Served pairs, per-pair lags (the venue's own ``lag_ms`` wins over the section's), the
        microstructure settings ``noise_ar`` / ``jitter_bps``, and the outage plan: scheduled
        ``stale`` windows, ``dead_at_s``, scheduled ``disconnect_at_s``, and random stale episodes
        and disconnects (Poisson, ``stale_per_hour`` / ``disconnect_per_hour``) drawn up to
        ``horizon_s`` from ``random.Random(f"{seed}:{venue}:outages")``. The quoting overrides
        (spread, basis, noise) are applied by the caller on ``venue.profile``.
        """
        if self._runners:
            raise InputError("configure the simulated exchanges before starting them")
        if "btceur" not in config.pairs or set(config.pairs) - set(PAIRS):
            raise InputError(f"pairs must include btceur and be among {', '.join(PAIRS)}")
        self.pairs = tuple(p for p in PAIRS if p in config.pairs)
        for name, venue in self.venues.items():
            vc = config.per_venue.get(name)
            lags = {**config.lag_ms, **(vc.lag_ms if vc is not None else {})}
            for pair, book in venue.books.items():
                book.lag_ns = int(lags.get(pair, 0)) * 1_000_000
            if vc is None:
                continue
            if vc.noise_ar is not None:
                venue.profile = dataclasses.replace(venue.profile, noise_ar=vc.noise_ar)
            if vc.jitter_bps is not None:
                venue.profile = dataclasses.replace(venue.profile, jitter_bps=vc.jitter_bps)
            rng = random.Random(f"{self.seed}:{name}:outages")
            windows = [(_ns(at), _ns(at) + _ns(dur)) for at, dur in vc.stale]
            if vc.dead_at_s is not None:
                windows.append((_ns(vc.dead_at_s), -1))
            windows += _episodes(rng, vc.stale_per_hour, horizon_s, vc.stale_s)
            venue.stale_windows = sorted(windows)
            disconnects = [_ns(at) for at in vc.disconnect_at_s]
            disconnects += [lo for lo, _ in _episodes(rng, vc.disconnect_per_hour, horizon_s, (0.0, 0.0))]
            venue.disconnect_at = sorted(disconnects)

    # --- faults (also driven by the admin endpoint and scenario files) ------------------------

    def venue(self, name: str) -> _Venue:
        venue = self.venues.get(name)
        if venue is None:
            raise InputError(f"unknown simulated exchange {name!r}; known: {', '.join(VENUES)}")
        return venue

    def set_stale(self, venue: str, stale: bool = True) -> None:
        """Freeze the venue's book: no WebSocket updates (heartbeats go on), REST answers the old book."""
        self.venue(venue).stale = stale

    def set_outlier(self, venue: str, bps: float) -> None:
        """Offset the venue's prices by ``bps`` from the next requote on (0 ends it)."""
        v = self.venue(venue)
        v.outlier_bps = float(bps)
        if not v.stale and not v.down and v.refresh(self.clock.now_ns()):
            v.broadcast_update()

    async def disconnect(self, venue: str) -> int:
        """Close every WebSocket of the venue (clients may reconnect at once); the count closed."""
        return await self.venue(venue).close_all()

    async def set_down(self, venue: str, down: bool = True) -> None:
        """Take the venue down (REST 503, handshakes refused, sockets closed) or bring it back."""
        v = self.venue(venue)
        v.down = down
        if down:
            await v.close_all(code=WSCloseCode.TRY_AGAIN_LATER)

    def quote(self, venue: str, pair: str = "btceur") -> VenueQuote:
        v = self.venue(venue)
        if pair not in self.pairs:
            raise InputError(f"pair {pair!r} is not served; served: {', '.join(self.pairs)}")
        return v.books[pair].current()

    def state(self) -> dict[str, dict[str, object]]:
        """Per-venue fault flags, connections and book, JSON-ready."""
        out: dict[str, dict[str, object]] = {}
        for name, v in self.venues.items():
            q = v.quote
            out[name] = {
                "ws_url": self.urls[name].ws_url if name in self.urls else None,
                "rest_url": self.urls[name].rest_url if name in self.urls else None,
                "stale": v.stale,
                "down": v.down,
                "outlier_bps": v.outlier_bps,
                "connections": len(v.conns),
                "bid": str(q.bid) if q else None,
                "ask": str(q.ask) if q else None,
                "ts_ns": q.ts_ns if q else None,
                "frozen": v.frozen(self.clock.now_ns()),
                "disconnects": v.disconnects,
                "books": {
                    v.books[p].symbol: {
                        "pair": p,
                        "lag_ms": v.books[p].lag_ns // 1_000_000,
                        "bid": str(b.quote.bid) if b.quote else None,
                        "ask": str(b.quote.ask) if b.quote else None,
                        "ts_ns": b.quote.ts_ns if b.quote else None,
                    }
                    for p in self.pairs
                    if (b := v.books[p]) is not None
                },
            }
        return out


def _ns(seconds: float) -> int:
    return round(seconds * _NS_PER_S)


def _episodes(
    rng: random.Random, per_hour: float, horizon_s: float, duration_s: tuple[float, float]
) -> list[tuple[int, int]]:
    """Poisson episode ``(start, end)`` ns offsets up to ``horizon_s``, durations uniform in the range."""
    out: list[tuple[int, int]] = []
    if per_hour <= 0:
        return out
    t = 0.0
    while True:
        t += rng.expovariate(per_hour / 3600.0)
        if t >= horizon_s:
            return out
        out.append((_ns(t), _ns(t + rng.uniform(*duration_s))))
