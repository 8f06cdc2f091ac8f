"""Kraken spot: WebSocket v2 ``ticker`` channel (BBO trigger) and REST ``/0/public/Ticker``.

WebSocket v2 numbers are JSON numbers; they are read exactly (``parse_float=Decimal``), never
through float. The REST answer's ``result`` key is Kraken's internal pair name (``XXBTZEUR``), not
the requested one, so the single entry is read by position.
"""

from __future__ import annotations

from intents_mm.domain.reference import SourceTick
from intents_mm.venues.exchanges.common import (
    FrameError,
    Liveness,
    VenueRejected,
    VenueSpec,
    WsEvent,
    compact,
    field,
    load_object,
    price,
    rfc3339_ns,
    tick,
)

SOURCE = "kraken"
LIVE_WS_URL = "wss://ws.kraken.com/v2"
LIVE_REST_URL = "https://api.kraken.com"
WS_SYMBOL = "BTC/EUR"
REST_PAIR = "XBTEUR"
REST_PATH = f"/0/public/Ticker?pair={REST_PAIR}"
SUBSCRIBE = {
    "method": "subscribe",
    "params": {"channel": "ticker", "symbol": [WS_SYMBOL], "event_trigger": "bbo"},
}
PING = {"method": "ping"}


def subscribe_messages(ws_url: str) -> list[str]:
    return [compact(SUBSCRIBE)]


def parse_ws(raw: str | bytes, received_ts_ns: int) -> WsEvent:
    msg = load_object(SOURCE, raw)
    method = msg.get("method")
    if method is not None:
        if method in ("subscribe", "unsubscribe"):
            if msg.get("success") is not True:
                raise VenueRejected(SOURCE, f"{method} refused: {str(msg.get('error', 'no reason'))[:200]}")
            result = msg.get("result")
            channel = result.get("channel", "?") if isinstance(result, dict) else "?"
            if method == "subscribe":
                return Liveness(SOURCE, "subscribed", received_ts_ns, detail=f"subscribe {channel}")
            return Liveness(SOURCE, "info", received_ts_ns, detail=f"unsubscribe {channel}")
        if method == "pong":
            return Liveness(SOURCE, "pong", received_ts_ns)
        raise FrameError(SOURCE, "unexpected_message", f"method {str(method)[:40]!r}")
    channel = msg.get("channel")
    if channel == "heartbeat":
        return Liveness(SOURCE, "heartbeat", received_ts_ns)
    if channel == "status":
        data = msg.get("data")
        system = "?"
        if isinstance(data, list) and data and isinstance(data[0], dict):
            system = str(data[0].get("system", "?"))
        return Liveness(SOURCE, "status", received_ts_ns, detail=f"system {system}")
    if channel != "ticker":
        raise FrameError(SOURCE, "unexpected_message", f"channel {str(channel)[:40]!r}")
    if msg.get("type") not in ("snapshot", "update"):
        raise FrameError(SOURCE, "unexpected_message", f"ticker type {str(msg.get('type'))[:40]!r}")
    data = field(SOURCE, msg, "data")
    if not isinstance(data, list) or not data:
        raise FrameError(SOURCE, "unexpected_message", "ticker data is not a non-empty list")
    for entry in data:
        if isinstance(entry, dict) and entry.get("symbol") == WS_SYMBOL:
            bid = price(SOURCE, field(SOURCE, entry, "bid"), "bid")
            ask = price(SOURCE, field(SOURCE, entry, "ask"), "ask")
            ts = entry.get("timestamp")
            exchange_ts = rfc3339_ns(SOURCE, ts, "timestamp") if ts is not None else None
            return tick(SOURCE, bid, ask, exchange_ts, received_ts_ns)
    raise FrameError(SOURCE, "wrong_symbol", f"no {WS_SYMBOL} entry in ticker data")


def parse_rest(raw: str | bytes, received_ts_ns: int) -> SourceTick:
    msg = load_object(SOURCE, raw)
    errors = msg.get("error")
    if isinstance(errors, list) and errors:
        raise VenueRejected(SOURCE, "; ".join(str(e) for e in errors)[:200])
    result = field(SOURCE, msg, "result")
    if not isinstance(result, dict) or len(result) != 1:
        raise FrameError(SOURCE, "unexpected_message", "result must hold exactly one pair")
    entry = next(iter(result.values()))
    ask_row, bid_row = field(SOURCE, entry, "a"), field(SOURCE, entry, "b")
    if not isinstance(ask_row, list) or not ask_row or not isinstance(bid_row, list) or not bid_row:
        raise FrameError(SOURCE, "unexpected_message", "a and b must be non-empty arrays")
    bid = price(SOURCE, bid_row[0], "b[0]")
    ask = price(SOURCE, ask_row[0], "a[0]")
    return tick(SOURCE, bid, ask, None, received_ts_ns)


SPEC = VenueSpec(
    source=SOURCE,
    live_ws_url=LIVE_WS_URL,
    live_rest_url=LIVE_REST_URL,
    rest_path=REST_PATH,
    subscribe=subscribe_messages,
    parse_ws=parse_ws,
    parse_rest=parse_rest,
    keepalive=compact(PING),
    keepalive_s=10.0,
)
