"""Injected clocks. Domain and service logic never call ``time.time()`` directly."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Wall-clock time, nanoseconds since the Unix epoch (UTC)."""

    def monotonic_ns(self) -> int:
        """Monotonic time for measuring intervals."""


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, start_ns: int = 1_760_000_000_000_000_000) -> None:
        self._now = start_ns
        self._mono = 0

    def now_ns(self) -> int:
        return self._now

    def monotonic_ns(self) -> int:
        return self._mono

    def advance(self, ns: int) -> None:
        self._now += ns
        self._mono += ns


SYSTEM_CLOCK = SystemClock()
