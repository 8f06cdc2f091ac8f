"""Exchange parsers against recorded-shape payloads (tests/fixtures/exchanges/cases.json)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from intents_mm.domain.reference import SourceTick
from intents_mm.venues.exchanges import (
    LIVE_URLS,
    SOURCES,
    VENUES,
    FrameError,
    Liveness,
    VenueRejected,
    binance,
    bitstamp,
    coinbase,
    kraken,
)
from intents_mm.venues.exchanges.common import rfc3339_ns

FIXTURES = Path(__file__).parent / "fixtures" / "exchanges"
CASES: list[dict[str, Any]] = json.loads((FIXTURES / "cases.json").read_text())
RECEIVED = 1_760_000_001_000_000_000


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_fixture(case: dict[str, Any]) -> None:
    raw = (FIXTURES / case["file"]).read_bytes()
    spec = VENUES[case["venue"]]
    expect = case["expect"]
    parse = spec.parse_ws if case["channel"] == "ws" else spec.parse_rest
    if expect["type"] == "error":
        with pytest.raises(FrameError) as info:
            parse(raw, RECEIVED)
        assert info.value.reason == expect["reason"]
        assert info.value.source == case["venue"]
        assert isinstance(info.value, VenueRejected) == (expect["reason"] == "venue_error")
        assert "\n" not in str(info.value)
        return
    event = parse(raw, RECEIVED)
    if expect["type"] == "liveness":
        assert isinstance(event, Liveness)
        assert event.kind == expect["kind"]
        assert event.source == case["venue"]
        assert event.received_ts_ns == RECEIVED
        return
    assert isinstance(event, SourceTick)
    assert event.source == case["venue"]
    # Exact Decimals, including the venue's own trailing zeros: nothing went through a float.
    assert str(event.bid) == expect["bid"]
    assert str(event.ask) == expect["ask"]
    assert event.exchange_ts_ns == expect["exchange_ts_ns"]
    assert event.received_ts_ns == RECEIVED


def test_every_venue_has_fixtures_for_every_shape() -> None:
    for venue in SOURCES:
        mine = [c for c in CASES if c["venue"] == venue]
        kinds = {(c["channel"], c["expect"]["type"]) for c in mine}
        assert ("ws", "tick") in kinds, venue
        assert ("ws", "liveness") in kinds, venue
        assert ("ws", "error") in kinds, venue
        assert ("rest", "tick") in kinds, venue
        assert ("rest", "error") in kinds, venue
        assert any(c["expect"] == {"type": "liveness", "kind": "subscribed"} for c in mine), venue
    assert len({c["file"] for c in CASES}) == len(CASES)
    on_disk = {str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*.*")}
    assert on_disk == {c["file"] for c in CASES}


def test_kraken_numbers_are_exact_not_float() -> None:
    raw = (
        '{"channel":"ticker","type":"update","data":[{"symbol":"BTC/EUR",'
        '"bid":104321.10000000000001,"ask":104321.2,"bid_qty":1,"ask_qty":1}]}'
    )
    event = kraken.parse_ws(raw, RECEIVED)
    assert isinstance(event, SourceTick)
    assert event.bid == Decimal("104321.10000000000001")  # a float would have rounded this away


def test_parsers_accept_str_and_bytes() -> None:
    raw = (FIXTURES / "binance" / "ws_book_ticker.json").read_text()
    assert binance.parse_ws(raw, RECEIVED) == binance.parse_ws(raw.encode(), RECEIVED)


def test_binance_event_time_when_present() -> None:
    raw = '{"e":"bookTicker","u":1,"E":1760000000123,"s":"BTCEUR","b":"1.00","B":"1","a":"1.01","A":"1"}'
    event = binance.parse_ws(raw, RECEIVED)
    assert isinstance(event, SourceTick)
    assert event.exchange_ts_ns == 1_760_000_000_123_000_000


def test_subscribe_frames_are_the_documented_ones() -> None:
    assert json.loads(kraken.subscribe_messages(kraken.LIVE_WS_URL)[0]) == {
        "method": "subscribe",
        "params": {"channel": "ticker", "symbol": ["BTC/EUR"], "event_trigger": "bbo"},
    }
    assert json.loads(bitstamp.subscribe_messages(bitstamp.LIVE_WS_URL)[0]) == {
        "event": "bts:subscribe",
        "data": {"channel": "order_book_btceur"},
    }
    assert json.loads(coinbase.subscribe_messages(coinbase.LIVE_WS_URL)[0]) == {
        "type": "subscribe",
        "product_ids": ["BTC-EUR"],
        "channels": ["ticker", "heartbeat"],
    }
    # Stream in the URL: nothing to send. Bare /ws: SUBSCRIBE with id 1.
    assert binance.subscribe_messages(binance.LIVE_WS_URL) == []
    assert binance.subscribe_messages("wss://stream.binance.com:9443/stream?streams=btceur@bookTicker") == []
    assert json.loads(binance.subscribe_messages("ws://127.0.0.1:9/ws")[0]) == {
        "method": "SUBSCRIBE",
        "params": ["btceur@bookTicker"],
        "id": 1,
    }


def test_live_urls_and_rest_paths() -> None:
    assert SOURCES == ("kraken", "bitstamp", "coinbase", "binance")
    assert LIVE_URLS["kraken"].ws_url == "wss://ws.kraken.com/v2"
    assert LIVE_URLS["kraken"].rest_url == "https://api.kraken.com"
    assert LIVE_URLS["bitstamp"].ws_url == "wss://ws.bitstamp.net"
    assert LIVE_URLS["bitstamp"].rest_url == "https://www.bitstamp.net"
    assert LIVE_URLS["coinbase"].ws_url == "wss://ws-feed.exchange.coinbase.com"
    assert LIVE_URLS["coinbase"].rest_url == "https://api.exchange.coinbase.com"
    assert LIVE_URLS["binance"].ws_url == "wss://stream.binance.com:9443/ws/btceur@bookTicker"
    assert LIVE_URLS["binance"].rest_url == "https://api.binance.com"
    assert VENUES["kraken"].rest_path == "/0/public/Ticker?pair=XBTEUR"
    assert VENUES["bitstamp"].rest_path == "/api/v2/ticker/btceur/"
    assert VENUES["coinbase"].rest_path == "/products/BTC-EUR/ticker"
    assert VENUES["binance"].rest_path == "/api/v3/ticker/bookTicker?symbol=BTCEUR"
    assert VENUES["binance"].max_connection_age_s is not None
    assert VENUES["binance"].max_connection_age_s < 24 * 3600


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-10-09T08:50:12.401234Z", 1_759_999_812_401_234_000),
        ("2025-10-09T08:50:12Z", 1_759_999_812_000_000_000),
        ("2025-10-09T08:50:12.123456789Z", 1_759_999_812_123_456_789),
        ("2025-10-09T10:50:12.5+02:00", 1_759_999_812_500_000_000),
    ],
)
def test_rfc3339(text: str, expected: int) -> None:
    assert rfc3339_ns("x", text, "t") == expected


@pytest.mark.parametrize("text", ["2025-13-09T08:50:12Z", "2025-10-09 08:50", "1760000000", ""])
def test_rfc3339_rejects(text: str) -> None:
    with pytest.raises(FrameError) as info:
        rfc3339_ns("x", text, "t")
    assert info.value.reason == "bad_timestamp"


def test_garbage_never_escapes_as_anything_but_frame_error() -> None:
    samples: list[str | bytes] = [
        b"\xff\xfe",
        "null",
        "42",
        '"text"',
        "{}",
        '{"channel":"ticker","type":"update","data":{}}',
        '{"channel":"ticker","type":"update","data":[1,2]}',
        '{"event":"data","channel":"order_book_btceur","data":[]}',
        '{"event":"data","channel":"order_book_btceur","data":{"bids":[["1"]],"asks":[["2","1"]]}}',
        '{"type":"ticker","product_id":"BTC-EUR","best_bid":1e400,"best_ask":"1"}',
        '{"u":1,"s":"BTCEUR","b":true,"a":"1"}',
        '{"stream":"btceur@bookTicker","data":"x"}',
    ]
    for spec in VENUES.values():
        for raw in samples:
            for parse in (spec.parse_ws, spec.parse_rest):
                try:
                    parse(raw, RECEIVED)
                except FrameError:
                    pass
