"""Binance spot: ``btceur@bookTicker`` stream and REST ``/api/v3/ticker/bookTicker``.

The stream can be named in the URL (``/ws/btceur@bookTicker``, nothing to send), subscribed on a
bare ``/ws`` connection with ``SUBSCRIBE`` (answered ``{"result":null,"id":1}``), or taken from a
combined ``/stream?streams=...`` connection whose frames wrap the payload as ``{stream, data}``.
Spot book-ticker frames carry no timestamp. A connection lasts at most 24 h, so the feed
reconnects before that.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from intents_mm.domain.reference import SourceTick
from intents_mm.venues.exchanges.common import (
    FrameError,
    Liveness,
    VenueRejected,
    VenueSpec,
    WsEvent,
    compact,
    field,
    integer_ts_ns,
    load_object,
    price,
    tick,
)

SOURCE = "binance"
LIVE_WS_URL = "wss://stream.binance.com:9443/ws/btceur@bookTicker"
LIVE_REST_URL = "https://api.binance.com"
SYMBOL = "BTCEUR"
STREAM = "btceur@bookTicker"
REST_PATH = f"/api/v3/ticker/bookTicker?symbol={SYMBOL}"
SUBSCRIBE = {"method": "SUBSCRIBE", "params": [STREAM], "id": 1}
MAX_CONNECTION_AGE_S = 23.5 * 3600  # Binance closes every connection at 24 h


def subscribe_messages(ws_url: str) -> list[str]:
    """Nothing when the stream is already in the URL, ``SUBSCRIBE`` on a bare ``/ws`` connection."""
    parts = urlsplit(ws_url)
    if "@" in parts.path or "streams=" in parts.query:
        return []
    return [compact(SUBSCRIBE)]


def parse_ws(raw: str | bytes, received_ts_ns: int) -> WsEvent:
    msg = load_object(SOURCE, raw)
    if "error" in msg:
        error = msg["error"]
        detail = error.get("msg", error) if isinstance(error, dict) else error
        raise VenueRejected(SOURCE, str(detail)[:200])
    if "result" in msg and "id" in msg:
        if msg["result"] is not None:
            return Liveness(SOURCE, "info", received_ts_ns, detail=f"id {msg['id']}")
        return Liveness(SOURCE, "subscribed", received_ts_ns, detail=f"id {msg['id']}")
    if "stream" in msg and "data" in msg:
        if msg["stream"] != STREAM:
            raise FrameError(SOURCE, "wrong_symbol", f"stream {str(msg['stream'])[:40]!r}")
        inner = msg["data"]
        if not isinstance(inner, dict):
            raise FrameError(SOURCE, "unexpected_message", "combined stream data is not an object")
        msg = inner
    if "u" not in msg or "b" not in msg:
        raise FrameError(SOURCE, "unexpected_message", "not a book ticker")
    if msg.get("s") != SYMBOL:
        raise FrameError(SOURCE, "wrong_symbol", f"symbol {str(msg.get('s'))[:40]!r}")
    bid = price(SOURCE, field(SOURCE, msg, "b"), "b")
    ask = price(SOURCE, field(SOURCE, msg, "a"), "a")
    event_ms = msg.get("E")
    exchange_ts = integer_ts_ns(SOURCE, event_ms, "E", 1_000_000) if event_ms is not None else None
    return tick(SOURCE, bid, ask, exchange_ts, received_ts_ns)


def parse_rest(raw: str | bytes, received_ts_ns: int) -> SourceTick:
    msg = load_object(SOURCE, raw)
    if "code" in msg and "bidPrice" not in msg:
        raise VenueRejected(SOURCE, f"{msg.get('code')}: {msg.get('msg', '')}"[:200])
    if msg.get("symbol") != SYMBOL:
        raise FrameError(SOURCE, "wrong_symbol", f"symbol {str(msg.get('symbol'))[:40]!r}")
    bid = price(SOURCE, field(SOURCE, msg, "bidPrice"), "bidPrice")
    ask = price(SOURCE, field(SOURCE, msg, "askPrice"), "askPrice")
    return tick(SOURCE, bid, ask, None, received_ts_ns)


SPEC = VenueSpec(
    source=SOURCE,
    live_ws_url=LIVE_WS_URL,
    live_rest_url=LIVE_REST_URL,
    rest_path=REST_PATH,
    subscribe=subscribe_messages,
    parse_ws=parse_ws,
    parse_rest=parse_rest,
    max_connection_age_s=MAX_CONNECTION_AGE_S,
)
