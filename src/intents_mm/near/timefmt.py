"""Intent deadlines: RFC 3339 strings with millisecond precision, as nanoseconds since the epoch.

``format_deadline`` floors to the millisecond, so the written deadline is never later than asked
(important: the intent deadline must not exceed the nonce deadline).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from intents_mm.errors import InputError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_S = 1_000_000_000
_NS_PER_MS = 1_000_000
_NS_PER_US = 1_000
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})\Z"
)


def format_deadline(ns: int) -> str:
    """``ns`` since the epoch as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (floored to the millisecond)."""
    if isinstance(ns, bool) or not isinstance(ns, int):
        raise InputError("deadline must be an int number of nanoseconds")
    if ns < 0:
        raise InputError(f"deadline {ns} ns is before the Unix epoch")
    secs, rem = divmod(ns, _NS_PER_S)
    try:
        dt = _EPOCH + timedelta(seconds=secs)
    except OverflowError:
        raise InputError(f"deadline {ns} ns is out of range") from None
    if dt.year > 9999:
        raise InputError(f"deadline {ns} ns is out of range")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{rem // _NS_PER_MS:03d}Z"


def parse_deadline(value: str | dict[str, object]) -> int:
    """Nanoseconds since the epoch from an RFC 3339 string (``Z`` or offset, any fraction digits;
    digits beyond nanoseconds are truncated) or the legacy ``{"timestamp": <int seconds>}``."""
    if isinstance(value, dict):
        if set(value) != {"timestamp"}:
            raise InputError('legacy deadline must be {"timestamp": <seconds>}')
        secs = value["timestamp"]
        if isinstance(secs, bool) or not isinstance(secs, int):
            raise InputError("legacy deadline timestamp must be an integer number of seconds")
        return secs * _NS_PER_S
    if not isinstance(value, str):
        raise InputError(f"deadline must be an RFC 3339 string, got {type(value).__name__}")
    m = _RFC3339.match(value)
    if m is None:
        raise InputError(f"deadline {value[:64]!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7) or "", m.group(8)
    try:
        if zone in ("Z", "z"):
            tz = UTC
        else:
            sign = 1 if zone[0] == "+" else -1
            tz_delta = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            if tz_delta >= timedelta(hours=24):
                raise ValueError("offset out of range")
            tz = timezone(sign * tz_delta)
        dt = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:
        raise InputError(f"deadline {value[:64]!r} is not a valid date/time") from None
    delta = dt - _EPOCH
    whole_ns = (delta.days * 86_400 + delta.seconds) * _NS_PER_S + delta.microseconds * _NS_PER_US
    frac_ns = int((frac + "000000000")[:9])
    return whole_ns + frac_ns
