"""Four simulated BTC/EUR exchanges on loopback, each speaking its venue's own wire format.

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

Each venue quotes around the shared :class:`~intents_mm.sim.pricepath.PricePath` with its own
seeded basis, mean-reverting noise and spread, on its own tick size, and pushes an update every
100-250 ms (only when its top of book changed). Faults on demand: :meth:`SimExchanges.set_stale`
(no more WebSocket updates, heartbeats continue, REST answers the frozen book with its old
timestamps), :meth:`SimExchanges.set_outlier` (prices offset by ``bps``),
:meth:`SimExchanges.disconnect` (close every WebSocket of the venue) and
:meth:`SimExchanges.set_down` (REST 503, WebSocket handshakes refused, open sockets closed).

Frame timestamps come from the injected clock; pacing uses the event loop's timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from intents_mm.clock import Clock
from intents_mm.errors import InputError
from intents_mm.sim.pricepath import PricePath
from intents_mm.venues.exchanges.common import ExchangeUrls

log = logging.getLogger(__name__)

VENUES: tuple[str, ...] = ("kraken", "bitstamp", "coinbase", "binance")

_NS_PER_S = 1_000_000_000
_BTC_QTY = Decimal("0.00000001")
_QUEUE_LIMIT = 1024
_numbers = msgspec.json.Encoder(decimal_format="number")  # Kraken v2: prices are JSON numbers
_strings = msgspec.json.Encoder()  # everyone else: Decimals as strings
_decoder = msgspec.json.Decoder()

__all__ = ["VENUES", "ExchangeUrls", "SimExchanges", "VenueQuote"]


def _rfc3339(ns: int) -> str:
    secs, rem = divmod(ns, _NS_PER_S)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rem // 1000:06d}Z"


@dataclass(frozen=True, slots=True)
class _Profile:
    tick: Decimal
    half_spread_bps: tuple[float, float]
    basis_bps: float
    noise_bps: float = 0.6  # std-dev of each step of the venue's mean-reverting (AR(1), 0.8) mid noise


_PROFILES: dict[str, _Profile] = {
    "kraken": _Profile(Decimal("0.1"), (0.1, 0.8), 0.0),
    "bitstamp": _Profile(Decimal("1"), (0.2, 1.5), 1.0),
    "coinbase": _Profile(Decimal("0.01"), (0.05, 0.6), -0.5),
    "binance": _Profile(Decimal("0.01"), (0.05, 0.5), 0.5),
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
    subscribed: bool = False
    heartbeats: bool = False
    combined: bool = False
    subscribe_seen: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class _Venue:
    """State and wire format of one simulated venue."""

    name: str = ""

    def __init__(self, sim: SimExchanges) -> None:
        self.sim = sim
        self.profile = _PROFILES[self.name]
        self.rng = random.Random(f"{sim.seed}:{self.name}")
        self.noise_bps = 0.0
        self.quote: VenueQuote | None = None
        self.stale = False
        self.down = False
        self.outlier_bps = 0.0
        self.conns: set[_Conn] = set()
        self.sequence = self.rng.randrange(10**9, 10**10)
        self.trade_id = self.rng.randrange(10**7, 10**8)
        self.volume = Decimal(self.rng.randrange(200, 900))
        self.high: Decimal | None = None
        self.low: Decimal | None = None
        self.open: Decimal | None = None

    # --- quoting ------------------------------------------------------------------------------

    def refresh(self, now_ns: int) -> bool:
        """Requote from the path; True when the top of book changed."""
        p = self.profile
        self.noise_bps = 0.8 * self.noise_bps + self.rng.gauss(0.0, p.noise_bps)
        half = self.rng.uniform(*p.half_spread_bps)
        offset = (p.basis_bps + self.noise_bps + self.outlier_bps) / 10_000
        mid = self.sim.path.mid_at(now_ns) * Decimal(repr(1 + offset))
        bid = (mid * Decimal(repr(1 - half / 10_000)) / p.tick).to_integral_value(ROUND_FLOOR) * p.tick
        ask = (mid * Decimal(repr(1 + half / 10_000)) / p.tick).to_integral_value(ROUND_CEILING) * p.tick
        if ask <= bid:
            ask = bid + p.tick
        old = self.quote
        if old is not None and old.bid == bid and old.ask == ask:
            return False
        side = "buy" if self.rng.random() < 0.5 else "sell"
        last_qty = Decimal(repr(round(self.rng.uniform(0.0001, 0.2), 8))).quantize(_BTC_QTY)
        self.quote = VenueQuote(
            bid=bid,
            ask=ask,
            bid_qty=Decimal(repr(round(self.rng.uniform(0.01, 2.0), 8))).quantize(_BTC_QTY),
            ask_qty=Decimal(repr(round(self.rng.uniform(0.01, 2.0), 8))).quantize(_BTC_QTY),
            ts_ns=now_ns,
            last=ask if side == "buy" else bid,
            last_qty=last_qty,
            side=side,
        )
        self.sequence += 1
        self.trade_id += 1
        self.volume += last_qty
        self.open = self.open or self.quote.last
        self.high = max(self.high or bid, ask)
        self.low = min(self.low or bid, bid)
        return True

    def current(self) -> VenueQuote:
        if self.quote is None:
            self.refresh(self.sim.clock.now_ns())
        assert self.quote is not None
        return self.quote

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

    def broadcast_update(self) -> None:
        quote = self.current()
        for conn in list(self.conns):
            if conn.subscribed:
                self.send(conn, self.update_frame(conn, quote, snapshot=False))

    def broadcast_heartbeat(self) -> None:
        for conn in list(self.conns):
            frame = self.heartbeat_frame(conn)
            if frame is not None:
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

    def update_frame(self, conn: _Conn, quote: VenueQuote, *, snapshot: bool) -> str:
        raise NotImplementedError

    def heartbeat_frame(self, conn: _Conn) -> str | None:
        return None

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
    SYMBOL = "BTC/EUR"

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
            if symbol != self.SYMBOL:
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
            conn.subscribed = True
            conn.heartbeats = True
            self.send(conn, self.update_frame(conn, self.current(), snapshot=True))

    def _reply(self, conn: _Conn, body: dict[str, object], time_in: str) -> None:
        body = {**body, "time_in": time_in, "time_out": _rfc3339(self.sim.clock.now_ns())}
        self.send(conn, _numbers.encode(body).decode())

    def update_frame(self, conn: _Conn, quote: VenueQuote, *, snapshot: bool) -> str:
        open_ = self.open or quote.last
        change = quote.last - open_
        entry = {
            "symbol": self.SYMBOL,
            "bid": quote.bid,
            "bid_qty": quote.bid_qty,
            "ask": quote.ask,
            "ask_qty": quote.ask_qty,
            "last": quote.last,
            "volume": self.volume,
            "vwap": open_,
            "low": self.low,
            "high": self.high,
            "change": change,
            "change_pct": (change / open_ * 100).quantize(Decimal("0.01")),
            "timestamp": _rfc3339(quote.ts_ns),
        }
        frame = {"channel": "ticker", "type": "snapshot" if snapshot else "update", "data": [entry]}
        return _numbers.encode(frame).decode()

    def heartbeat_frame(self, conn: _Conn) -> str | None:
        return '{"channel":"heartbeat"}' if conn.heartbeats else None

    async def rest_ticker(self, request: web.Request) -> web.Response:
        if (down := self.rest_unavailable()) is not None:
            return down
        if request.query.get("pair", "").upper() not in ("XBTEUR", "XXBTZEUR", "BTCEUR", "BTC/EUR"):
            return web.json_response({"error": ["EQuery:Unknown asset pair"]})
        q = self.current()

        def px(value: Decimal | None) -> str:
            return f"{(value or q.last):.5f}"

        body = {
            "error": [],
            "result": {
                "XXBTZEUR": {
                    "a": [px(q.ask), str(int(q.ask_qty) or 1), f"{q.ask_qty:.3f}"],
                    "b": [px(q.bid), str(int(q.bid_qty) or 1), f"{q.bid_qty:.3f}"],
                    "c": [px(q.last), f"{q.last_qty:.8f}"],
                    "v": [f"{self.volume / 3:.8f}", f"{self.volume:.8f}"],
                    "p": [px(self.open), px(self.open)],
                    "t": [self.trade_id % 10_000, self.trade_id % 100_000],
                    "l": [px(self.low), px(self.low)],
                    "h": [px(self.high), px(self.high)],
                    "o": px(self.open),
                }
            },
        }
        return web.Response(body=_strings.encode(body), content_type="application/json")


class _Bitstamp(_Venue):
    name = "bitstamp"
    CHANNEL = "order_book_btceur"

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
        if event == "bts:heartbeat":
            self.send_json(conn, {"event": "bts:heartbeat", "channel": "", "data": {"status": "success"}})
        elif event == "bts:subscribe" and channel == self.CHANNEL:
            self.send_json(conn, {"event": "bts:subscription_succeeded", "channel": channel, "data": {}})
            conn.subscribed = True
            self.send(conn, self.update_frame(conn, self.current(), snapshot=True))
        elif event == "bts:unsubscribe" and channel == self.CHANNEL:
            conn.subscribed = False
            self.send_json(conn, {"event": "bts:unsubscription_succeeded", "channel": channel, "data": {}})
        else:
            error = {
                "event": "bts:error",
                "channel": "",
                "data": {"code": None, "message": "Bad subscription string."},
            }
            self.send_json(conn, error)

    def update_frame(self, conn: _Conn, quote: VenueQuote, *, snapshot: bool) -> str:
        bids, asks = [], []
        for level in range(10):
            step = self.profile.tick * (level * 3 + level * level)
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
            "channel": self.CHANNEL,
            "event": "data",
        }
        return _strings.encode(frame).decode()

    async def rest_ticker(self, request: web.Request) -> web.Response:
        if (down := self.rest_unavailable()) is not None:
            return down
        if request.match_info["pair"] != "btceur":
            return web.json_response({"status": "error", "reason": "Invalid currency pair"}, status=404)
        q = self.current()
        open_ = self.open or q.last
        body = {
            "timestamp": str(q.ts_ns // _NS_PER_S),
            "open": f"{open_:f}",
            "high": f"{self.high or q.ask:f}",
            "low": f"{self.low or q.bid:f}",
            "last": f"{q.last:f}",
            "volume": f"{self.volume:.8f}",
            "vwap": f"{open_:f}",
            "bid": f"{q.bid:f}",
            "ask": f"{q.ask:f}",
            "side": "0" if q.side == "buy" else "1",
            "open_24": f"{open_:f}",
            "percent_change_24": f"{(q.last - open_) / open_ * 100:.2f}",
        }
        return web.json_response(body)


class _Coinbase(_Venue):
    name = "coinbase"
    PRODUCT = "BTC-EUR"

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
        for product in products:
            if product != self.PRODUCT:
                self._error(conn, "Failed to subscribe", f"{product} is not a valid product")
                return
        unknown = [n for n in names if n not in ("ticker", "heartbeat")]
        if not names or unknown:
            self._error(
                conn, "Failed to subscribe", f"{','.join(unknown) or 'no channel'} is not a valid channel"
            )
            return
        channels = [{"name": n, "product_ids": [self.PRODUCT], "account_ids": None} for n in names]
        self.send_json(conn, {"type": "subscriptions", "channels": channels})
        conn.subscribe_seen = True
        conn.heartbeats = "heartbeat" in names
        if "ticker" in names:
            conn.subscribed = True
            self.send(conn, self.update_frame(conn, self.current(), snapshot=True))

    def _error(self, conn: _Conn, message: str, reason: str) -> None:
        self.send_json(conn, {"type": "error", "message": message, "reason": reason})

    def update_frame(self, conn: _Conn, quote: VenueQuote, *, snapshot: bool) -> str:
        open_ = self.open or quote.last
        frame = {
            "type": "ticker",
            "sequence": self.sequence,
            "product_id": self.PRODUCT,
            "price": f"{quote.last:.2f}",
            "open_24h": f"{open_:.2f}",
            "volume_24h": f"{self.volume:.8f}",
            "low_24h": f"{self.low or quote.bid:.2f}",
            "high_24h": f"{self.high or quote.ask:.2f}",
            "volume_30d": f"{self.volume * 30:.8f}",
            "best_bid": f"{quote.bid:.2f}",
            "best_bid_size": f"{quote.bid_qty:.8f}",
            "best_ask": f"{quote.ask:.2f}",
            "best_ask_size": f"{quote.ask_qty:.8f}",
            "side": quote.side,
            "time": _rfc3339(quote.ts_ns),
            "trade_id": self.trade_id,
            "last_size": f"{quote.last_qty:.8f}",
        }
        return _strings.encode(frame).decode()

    def heartbeat_frame(self, conn: _Conn) -> str | None:
        if not conn.heartbeats:
            return None
        self.sequence += 1
        frame = {
            "type": "heartbeat",
            "last_trade_id": self.trade_id,
            "product_id": self.PRODUCT,
            "sequence": self.sequence,
            "time": _rfc3339(self.sim.clock.now_ns()),
        }
        return _strings.encode(frame).decode()

    async def rest_ticker(self, request: web.Request) -> web.Response:
        if (down := self.rest_unavailable()) is not None:
            return down
        if request.match_info["product"] != self.PRODUCT:
            return web.json_response({"message": "NotFound"}, status=404)
        q = self.current()
        body = {
            "ask": f"{q.ask:.2f}",
            "bid": f"{q.bid:.2f}",
            "volume": f"{self.volume:.8f}",
            "trade_id": self.trade_id,
            "price": f"{q.last:.2f}",
            "size": f"{q.last_qty:.8f}",
            "time": _rfc3339(q.ts_ns),
            "rfq_volume": "0.000000",
            "conversions_volume": "0",
        }
        return web.json_response(body)


class _Binance(_Venue):
    name = "binance"
    SYMBOL = "BTCEUR"
    STREAM = "btceur@bookTicker"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/ws/{streams}", self.websocket)
        app.router.add_get("/stream", self.websocket)
        app.router.add_get("/api/v3/ticker/bookTicker", self.rest_ticker)

    def ws_url(self, base: str) -> str:
        return f"ws://{base}/ws/{self.STREAM}"

    async def on_open(self, conn: _Conn, request: web.Request) -> None:
        if request.path == "/stream":
            conn.combined = True
            streams = request.query.get("streams", "").split("/")
        else:
            streams = request.match_info.get("streams", "").split("/")
        # Like the real stream, nothing is sent until the book next changes.
        conn.subscribed = self.STREAM in streams

    async def on_text(self, conn: _Conn, text: str) -> None:
        msg = _decode(text)
        if not isinstance(msg, dict):
            self.send_json(conn, {"error": {"code": 3, "msg": "Invalid JSON"}})
            return
        method, req_id, params = msg.get("method"), msg.get("id"), msg.get("params")
        if method in ("SUBSCRIBE", "UNSUBSCRIBE") and isinstance(params, list):
            if self.STREAM in params:
                conn.subscribed = method == "SUBSCRIBE"
            self.send_json(conn, {"result": None, "id": req_id})
        elif method == "LIST_SUBSCRIPTIONS":
            self.send_json(conn, {"result": [self.STREAM] if conn.subscribed else [], "id": req_id})
        else:
            error = {"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": req_id}
            self.send_json(conn, error)

    def update_frame(self, conn: _Conn, quote: VenueQuote, *, snapshot: bool) -> str:
        data = {
            "u": self.sequence,
            "s": self.SYMBOL,
            "b": f"{quote.bid:.8f}",
            "B": f"{quote.bid_qty:.8f}",
            "a": f"{quote.ask:.8f}",
            "A": f"{quote.ask_qty:.8f}",
        }
        frame: dict[str, object] = {"stream": self.STREAM, "data": data} if conn.combined else data
        return _strings.encode(frame).decode()

    async def rest_ticker(self, request: web.Request) -> web.Response:
        if (down := self.rest_unavailable()) is not None:
            return down
        if request.query.get("symbol") != self.SYMBOL:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        q = self.current()
        body = {
            "symbol": self.SYMBOL,
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
                venue.refresh(self.clock.now_ns())
                self._tasks.append(asyncio.create_task(self._pump(venue), name=f"sim-{name}-pump"))
                self._tasks.append(asyncio.create_task(self._heartbeats(venue), name=f"sim-{name}-heartbeat"))
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

    async def _pump(self, venue: _Venue) -> None:
        lo, hi = self.update_interval_s
        while True:
            await asyncio.sleep(venue.rng.uniform(lo, hi))
            if venue.down or venue.stale:
                continue
            if venue.refresh(self.clock.now_ns()):
                venue.broadcast_update()

    async def _heartbeats(self, venue: _Venue) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if not venue.down:
                venue.broadcast_heartbeat()

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

    def quote(self, venue: str) -> VenueQuote:
        return self.venue(venue).current()

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
            }
        return out
