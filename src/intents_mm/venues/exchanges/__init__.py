"""BTC/EUR exchange market-data adapters: the only place the exchanges' wire formats live.

Per venue (``kraken``, ``bitstamp``, ``coinbase``, ``binance``): live URLs, the exact subscribe
frame, and parsers from WebSocket frames and REST tickers to the domain's ``SourceTick`` (or a
``Liveness`` for heartbeats and acks). ``ExchangeFeed`` runs one venue's WebSocket with reconnects
and polls its REST ticker on demand.
"""

from __future__ import annotations

from intents_mm.domain.reference import SourceTick
from intents_mm.venues.exchanges import binance, bitstamp, coinbase, kraken
from intents_mm.venues.exchanges.common import (
    ExchangeUrls,
    FrameError,
    Liveness,
    VenueRejected,
    VenueSpec,
    WsEvent,
)
from intents_mm.venues.exchanges.feed import VENUES, ExchangeFeed, FeedState, FeedStats, FeedStatus

KRAKEN_WS_URL = kraken.LIVE_WS_URL
KRAKEN_REST_URL = kraken.LIVE_REST_URL
BITSTAMP_WS_URL = bitstamp.LIVE_WS_URL
BITSTAMP_REST_URL = bitstamp.LIVE_REST_URL
COINBASE_WS_URL = coinbase.LIVE_WS_URL
COINBASE_REST_URL = coinbase.LIVE_REST_URL
BINANCE_WS_URL = binance.LIVE_WS_URL
BINANCE_REST_URL = binance.LIVE_REST_URL

SOURCES: tuple[str, ...] = tuple(VENUES)
"""All supported sources, in the order used everywhere: kraken, bitstamp, coinbase, binance."""

LIVE_URLS: dict[str, ExchangeUrls] = {
    name: ExchangeUrls(ws_url=spec.live_ws_url, rest_url=spec.live_rest_url) for name, spec in VENUES.items()
}

__all__ = [
    "BINANCE_REST_URL",
    "BINANCE_WS_URL",
    "BITSTAMP_REST_URL",
    "BITSTAMP_WS_URL",
    "COINBASE_REST_URL",
    "COINBASE_WS_URL",
    "KRAKEN_REST_URL",
    "KRAKEN_WS_URL",
    "LIVE_URLS",
    "SOURCES",
    "VENUES",
    "ExchangeFeed",
    "ExchangeUrls",
    "FeedState",
    "FeedStats",
    "FeedStatus",
    "FrameError",
    "Liveness",
    "SourceTick",
    "VenueRejected",
    "VenueSpec",
    "WsEvent",
    "binance",
    "bitstamp",
    "coinbase",
    "kraken",
]
