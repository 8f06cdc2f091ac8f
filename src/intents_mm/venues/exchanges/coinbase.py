"""Coinbase Exchange: WebSocket feed ``ticker`` + ``heartbeat`` channels and REST product ticker.

The feed closes a connection that has not subscribed within 5 s, so the subscribe frame is sent
right after connecting. Prices are JSON strings; ``time`` is RFC 3339 with microseconds. The
``ticker`` channel is trade-driven: ``best_bid``/``best_ask`` are the book at the last trade, and
``time`` is that trade's time. (The Advanced Trade feed is a different API and is not used.)
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

SOURCE = "coinbase"
LIVE_WS_URL = "wss://ws-feed.exchange.coinbase.com"
LIVE_REST_URL = "https://api.exchange.coinbase.com"
PRODUCT = "BTC-EUR"
REST_PATH = f"/products/{PRODUCT}/ticker"
SUBSCRIBE = {"type": "subscribe", "product_ids": [PRODUCT], "channels": ["ticker", "heartbeat"]}


def subscribe_messages(ws_url: str) -> list[str]:
    return [compact(SUBSCRIBE)]


def _time(obj: dict[str, object]) -> int | None:
    value = obj.get("time")
    return rfc3339_ns(SOURCE, value, "time") if value is not None else None


def parse_ws(raw: str | bytes, received_ts_ns: int) -> WsEvent:
    msg = load_object(SOURCE, raw)
    kind = msg.get("type")
    if kind == "subscriptions":
        channels = msg.get("channels")
        names = []
        if isinstance(channels, list):
            names = [str(c.get("name")) if isinstance(c, dict) else str(c) for c in channels]
        return Liveness(SOURCE, "subscribed", received_ts_ns, detail=",".join(names))
    if kind == "error":
        detail = f"{msg.get('message', 'error')}: {msg.get('reason', '')}".rstrip(": ")
        raise VenueRejected(SOURCE, detail[:200])
    if kind not in ("heartbeat", "ticker"):
        raise FrameError(SOURCE, "unexpected_message", f"type {str(kind)[:40]!r}")
    if msg.get("product_id") != PRODUCT:
        raise FrameError(SOURCE, "wrong_symbol", f"product_id {str(msg.get('product_id'))[:40]!r}")
    if kind == "heartbeat":
        return Liveness(SOURCE, "heartbeat", received_ts_ns, exchange_ts_ns=_time(msg))
    bid = price(SOURCE, field(SOURCE, msg, "best_bid"), "best_bid")
    ask = price(SOURCE, field(SOURCE, msg, "best_ask"), "best_ask")
    return tick(SOURCE, bid, ask, _time(msg), received_ts_ns)


def parse_rest(raw: str | bytes, received_ts_ns: int) -> SourceTick:
    msg = load_object(SOURCE, raw)
    if "bid" not in msg and "message" in msg:
        raise VenueRejected(SOURCE, str(msg["message"])[:200])
    bid = price(SOURCE, field(SOURCE, msg, "bid"), "bid")
    ask = price(SOURCE, field(SOURCE, msg, "ask"), "ask")
    return tick(SOURCE, bid, ask, _time(msg), received_ts_ns)


SPEC = VenueSpec(
    source=SOURCE,
    live_ws_url=LIVE_WS_URL,
    live_rest_url=LIVE_REST_URL,
    rest_path=REST_PATH,
    subscribe=subscribe_messages,
    parse_ws=parse_ws,
    parse_rest=parse_rest,
)
