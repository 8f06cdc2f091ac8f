"""Bitstamp: WebSocket v2 ``order_book_btceur`` (top-of-book from each full snapshot) and REST ticker.

All prices are JSON strings. Order book frames carry ``microtimestamp`` (microseconds, string);
the REST ticker carries ``timestamp`` (whole seconds, string). Bitstamp has no server heartbeat:
the feed sends ``bts:heartbeat`` and the venue answers it. ``bts:request_reconnect`` asks the
client to reconnect (maintenance).
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
    integer_ts_ns,
    load_object,
    price,
    tick,
)

SOURCE = "bitstamp"
LIVE_WS_URL = "wss://ws.bitstamp.net"
LIVE_REST_URL = "https://www.bitstamp.net"
PAIR = "btceur"
CHANNEL = f"order_book_{PAIR}"
REST_PATH = f"/api/v2/ticker/{PAIR}/"
SUBSCRIBE = {"event": "bts:subscribe", "data": {"channel": CHANNEL}}
HEARTBEAT = {"event": "bts:heartbeat"}


def subscribe_messages(ws_url: str) -> list[str]:
    return [compact(SUBSCRIBE)]


def _top(levels: object, side: str) -> object:
    if not isinstance(levels, list):
        raise FrameError(SOURCE, "unexpected_message", f"{side} is not an array")
    if not levels:
        raise FrameError(SOURCE, "empty_book", f"no {side}")
    level = levels[0]
    if not isinstance(level, list) or len(level) < 2:
        raise FrameError(SOURCE, "unexpected_message", f"{side}[0] is not a [price, amount] pair")
    return level[0]


def parse_ws(raw: str | bytes, received_ts_ns: int) -> WsEvent:
    msg = load_object(SOURCE, raw)
    event = msg.get("event")
    if event == "bts:subscription_succeeded":
        return Liveness(SOURCE, "subscribed", received_ts_ns, detail=str(msg.get("channel", "")))
    if event == "bts:unsubscription_succeeded":
        return Liveness(SOURCE, "info", received_ts_ns, detail="unsubscribed")
    if event == "bts:heartbeat":
        return Liveness(SOURCE, "heartbeat", received_ts_ns)
    if event == "bts:request_reconnect":
        return Liveness(SOURCE, "reconnect_requested", received_ts_ns)
    if event == "bts:error":
        data = msg.get("data")
        detail = data.get("message") if isinstance(data, dict) else None
        raise VenueRejected(SOURCE, str(detail or "bts:error")[:200])
    if event != "data":
        raise FrameError(SOURCE, "unexpected_message", f"event {str(event)[:40]!r}")
    if msg.get("channel") != CHANNEL:
        raise FrameError(SOURCE, "wrong_symbol", f"channel {str(msg.get('channel'))[:40]!r}")
    data = field(SOURCE, msg, "data")
    bid = price(SOURCE, _top(field(SOURCE, data, "bids"), "bids"), "bids[0][0]")
    ask = price(SOURCE, _top(field(SOURCE, data, "asks"), "asks"), "asks[0][0]")
    assert isinstance(data, dict)  # field() checked it
    if "microtimestamp" in data:
        exchange_ts = integer_ts_ns(SOURCE, data["microtimestamp"], "microtimestamp", 1_000)
    elif "timestamp" in data:
        exchange_ts = integer_ts_ns(SOURCE, data["timestamp"], "timestamp", 1_000_000_000)
    else:
        exchange_ts = None
    return tick(SOURCE, bid, ask, exchange_ts, received_ts_ns)


def parse_rest(raw: str | bytes, received_ts_ns: int) -> SourceTick:
    msg = load_object(SOURCE, raw)
    if "bid" not in msg and ("error" in msg or "errors" in msg or msg.get("status") == "error"):
        raise VenueRejected(SOURCE, str(msg.get("reason") or msg.get("error") or msg.get("errors"))[:200])
    bid = price(SOURCE, field(SOURCE, msg, "bid"), "bid")
    ask = price(SOURCE, field(SOURCE, msg, "ask"), "ask")
    ts = msg.get("timestamp")
    exchange_ts = integer_ts_ns(SOURCE, ts, "timestamp", 1_000_000_000) if ts is not None else None
    return tick(SOURCE, bid, ask, exchange_ts, received_ts_ns)


SPEC = VenueSpec(
    source=SOURCE,
    live_ws_url=LIVE_WS_URL,
    live_rest_url=LIVE_REST_URL,
    rest_path=REST_PATH,
    subscribe=subscribe_messages,
    parse_ws=parse_ws,
    parse_rest=parse_rest,
    keepalive=compact(HEARTBEAT),
    keepalive_s=5.0,
)
