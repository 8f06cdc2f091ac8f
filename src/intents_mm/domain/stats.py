"""Latency summaries (pure): one nearest-rank percentile for every report that prints one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["ms_summary", "percentile"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def ms_summary(samples_ns: Iterable[int]) -> dict[str, float | int | None]:
    """``count``, ``p50``, ``p99`` and ``max`` of nanosecond samples, in ms rounded to the µs."""
    ms = [x / 1e6 for x in samples_ns]

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "count": len(ms),
        "p50": r(percentile(ms, 50)),
        "p99": r(percentile(ms, 99)),
        "max": r(max(ms) if ms else None),
    }
