"""What every exchange parser shares: the parse results, frame errors and field readers.

A parser turns one raw frame (``str`` or ``bytes``) into either a :class:`SourceTick` (a price) or a
:class:`Liveness` (heartbeat, subscribe ack, status, pong: the connection is alive but no price),
or raises :class:`FrameError` with a short ``reason`` used as a counter label. A
:class:`VenueRejected` is a ``FrameError`` the venue itself sent (subscribe refused, error event):
the feed treats it as the end of that connection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Literal

from intents_mm.domain.reference import SourceTick
from intents_mm.errors import InputError

LivenessKind = Literal["heartbeat", "subscribed", "status", "pong", "reconnect_requested", "info"]


@dataclass(frozen=True, slots=True)
class Liveness:
    """A frame that proves the connection is alive but carries no price."""

    source: str
    kind: LivenessKind
    received_ts_ns: int
    exchange_ts_ns: int | None = None
    detail: str = ""


WsEvent = SourceTick | Liveness


class FrameError(InputError):
    """A frame we cannot use. ``reason`` is a short, stable label for counters."""

    def __init__(self, source: str, reason: str, detail: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}: {detail}")


class VenueRejected(FrameError):
    """The venue answered with an error (subscribe refused, error event, REST error body)."""

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(source, "venue_error", detail)


def _reject_constant(name: str) -> object:
    raise ValueError(f"non-finite number {name}")


def load_json(source: str, raw: str | bytes) -> object:
    """Parse JSON with every non-integer number as an exact Decimal; NaN/Infinity are refused."""
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(source, "invalid_json", str(exc)[:120]) from None


def load_object(source: str, raw: str | bytes) -> dict[str, object]:
    doc = load_json(source, raw)
    if not isinstance(doc, dict):
        raise FrameError(source, "unexpected_message", f"expected a JSON object, got {type(doc).__name__}")
    return doc


def field(source: str, obj: object, name: str) -> object:
    if not isinstance(obj, dict):
        raise FrameError(source, "unexpected_message", f"expected an object holding {name!r}")
    if name not in obj:
        raise FrameError(source, "missing_field", f"no {name!r} field")
    return obj[name]


def price(source: str, value: object, name: str) -> Decimal:
    """A positive finite price from a JSON string or number (exact: never through float)."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise FrameError(source, "bad_price", f"{name} is {type(value).__name__}, not a number")
    try:
        dec = Decimal(value) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError):
        raise FrameError(source, "bad_price", f"{name} {str(value)[:40]!r} is not a number") from None
    if not dec.is_finite() or dec <= 0:
        raise FrameError(source, "bad_price", f"{name} {value!r} is not a positive price")
    return dec


def tick(
    source: str, bid: Decimal, ask: Decimal, exchange_ts_ns: int | None, received_ts_ns: int
) -> SourceTick:
    if bid > ask:
        raise FrameError(source, "crossed_book", f"bid {bid} > ask {ask}")
    return SourceTick(source, bid, ask, exchange_ts_ns, received_ts_ns)


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})\Z"
)
_NS_PER_S = 1_000_000_000


def rfc3339_ns(source: str, value: object, name: str) -> int:
    """Nanoseconds since the epoch from an RFC 3339 string with up to 9 fraction digits."""
    if not isinstance(value, str):
        raise FrameError(source, "bad_timestamp", f"{name} is not a string")
    m = _RFC3339.match(value)
    if m is None:
        raise FrameError(source, "bad_timestamp", f"{name} {value[:40]!r} is not RFC 3339")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC)
    except ValueError:
        raise FrameError(source, "bad_timestamp", f"{name} {value!r} is not a valid date") from None
    offset_s = 0
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset_s = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    whole = int(dt.timestamp()) - offset_s
    nanos = int((frac or "").ljust(9, "0")) if frac else 0
    return whole * _NS_PER_S + nanos


def integer_ts_ns(source: str, value: object, name: str, unit_ns: int) -> int:
    """An integer timestamp (JSON number or decimal string) in ``unit_ns`` units, as nanoseconds."""
    if isinstance(value, bool):
        raise FrameError(source, "bad_timestamp", f"{name} is a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isdigit():
        number = int(value)
    else:
        raise FrameError(source, "bad_timestamp", f"{name} {str(value)[:40]!r} is not an integer")
    return number * unit_ns


def compact(message: Mapping[str, object]) -> str:
    """A subscribe message as the venue's documentation writes it (compact JSON)."""
    return json.dumps(message, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class ExchangeUrls:
    """Where one venue lives: its WebSocket URL and its REST base URL (no trailing path)."""

    ws_url: str
    rest_url: str


@dataclass(frozen=True, slots=True)
class VenueSpec:
    """Everything the generic feed needs to know about one venue.

    ``subscribe(ws_url)`` gives the frames to send right after connecting (Binance needs none when
    the stream is in the URL); ``keepalive`` is an application-level ping sent every
    ``keepalive_s`` seconds when the venue has one; ``max_connection_age_s`` makes the feed
    reconnect proactively before the venue cuts the connection.
    """

    source: str
    live_ws_url: str
    live_rest_url: str
    rest_path: str
    subscribe: Callable[[str], list[str]]
    parse_ws: Callable[[str | bytes, int], WsEvent]
    parse_rest: Callable[[str | bytes, int], SourceTick]
    keepalive: str | None = None
    keepalive_s: float = 5.0
    max_connection_age_s: float | None = None
