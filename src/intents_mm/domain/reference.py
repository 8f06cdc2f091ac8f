"""The BTC/EUR reference price: a pure aggregation of exchange top-of-book ticks.

Stdlib only, no I/O, time only through the ``now_ns`` the caller passes in. The venue adapters
(``intents_mm.venues.exchanges``) turn each exchange's wire format into :class:`SourceTick`; the
market-reference service feeds them to :class:`ReferenceAggregator` and calls
:meth:`ReferenceAggregator.compute` on its own cadence.

Rules (``docs/reference-price.md`` has the rationale):

1. Per source, keep the latest top of book; its mid is ``(bid + ask) / 2`` (exact).
2. A source is *down* after :meth:`ReferenceAggregator.mark_down` until its next tick, *stale*
   when its data is older than ``stale_after_ms`` (age measured from the earlier of the exchange
   timestamp and the receive timestamp; exactly ``stale_after_ms`` old is still fresh), and
   *down* ("no data yet") when it never ticked.
3. The median of the fresh mids is taken; every source more than ``outlier_bps`` from it is an
   *outlier* and dropped (never averaged in); the median of the survivors is the reference mid.
4. Quality: ``ok`` with at least ``quorum`` survivors and every configured source fresh and not an
   outlier; ``degraded`` with at least ``quorum`` survivors otherwise; ``stale`` below quorum, and
   then the mid is ``None``.
5. Jump guard: ``jump_detected`` while the new mid differs by more than ``jump_bps`` from any
   reference mid published within the last ``jump_window_ms``.
6. Realised volatility: a time-weighted, bias-corrected EWMA of squared log returns of the
   reference mid per second, in bps per sqrt(second) (see :meth:`ReferenceAggregator.compute`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import Literal

from intents_mm.errors import InputError

SourceStatus = Literal["fresh", "stale", "outlier", "down"]
Quality = Literal["ok", "degraded", "stale"]

DEFAULT_SOURCES: tuple[str, ...] = ("kraken", "bitstamp", "coinbase", "binance")

_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000
_BPS = Decimal(10_000)
_TWO = Decimal(2)
# A fixed context so results never depend on the caller's thread-local decimal context.
_CTX = Context(prec=34)
_LN2 = _CTX.ln(_TWO)


@dataclass(frozen=True, slots=True)
class SourceTick:
    """One normalised top-of-book observation from one exchange.

    ``bid`` and ``ask`` are positive finite Decimals with ``bid <= ask`` (a locked book is allowed,
    a crossed one is not). ``exchange_ts_ns`` is the venue's own timestamp when its message carries
    one; ``received_ts_ns`` is when we read the frame, from the injected clock.
    """

    source: str
    bid: Decimal
    ask: Decimal
    exchange_ts_ns: int | None
    received_ts_ns: int

    def __post_init__(self) -> None:
        if not self.source:
            raise InputError("source tick needs a source name")
        for name, value in (("bid", self.bid), ("ask", self.ask)):
            if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
                raise InputError(f"{self.source} {name} must be a positive finite Decimal, got {value!r}")
        if self.bid > self.ask:
            raise InputError(f"{self.source} book is crossed: bid {self.bid} > ask {self.ask}")

    @property
    def mid(self) -> Decimal:
        return _CTX.divide(_CTX.add(self.bid, self.ask), _TWO)

    @property
    def spread_bps(self) -> Decimal:
        return _CTX.multiply(_CTX.divide(_CTX.subtract(self.ask, self.bid), self.mid), _BPS)


@dataclass(frozen=True, slots=True)
class ReferenceConfig:
    """Aggregation parameters. ``sources`` are the enabled sources that ``ok`` quality requires."""

    stale_after_ms: int = 3000
    quorum: int = 2
    outlier_bps: Decimal = Decimal(50)
    jump_bps: Decimal = Decimal(150)
    jump_window_ms: int = 5000
    ewma_halflife_s: Decimal = Decimal(60)
    sources: tuple[str, ...] = DEFAULT_SOURCES
    age_from_exchange_ts: bool = True
    """Measure a tick's age from the earlier of exchange and receive timestamps (an old quote
    delivered late is old); ``False`` measures from the receive timestamp only."""

    def __post_init__(self) -> None:
        # Accept ints/strings for the Decimal fields so callers can write ReferenceConfig(outlier_bps=30).
        for name in ("outlier_bps", "jump_bps", "ewma_halflife_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
                raise InputError(f"reference config {name} must be a number, got {value!r}")
            try:
                dec = Decimal(value)
            except ArithmeticError:
                raise InputError(f"reference config {name} must be a number, got {value!r}") from None
            if not dec.is_finite() or dec <= 0:
                raise InputError(f"reference config {name} must be positive, got {value!r}")
            object.__setattr__(self, name, dec)
        if self.stale_after_ms <= 0 or self.jump_window_ms <= 0:
            raise InputError("reference config stale_after_ms and jump_window_ms must be positive")
        if not self.sources or len(set(self.sources)) != len(self.sources):
            raise InputError("reference config sources must be a non-empty list of distinct names")
        if not 1 <= self.quorum <= len(self.sources):
            raise InputError(f"reference config quorum {self.quorum} must be within 1..{len(self.sources)}")


@dataclass(frozen=True, slots=True)
class SourceView:
    """What the aggregator thinks of one source at ``compute`` time."""

    source: str
    status: SourceStatus
    reason: str | None
    bid: Decimal | None
    ask: Decimal | None
    mid: Decimal | None
    age_ms: int | None
    deviation_bps: Decimal | None
    """Signed distance of this source's mid from the median of the fresh mids."""
    exchange_ts_ns: int | None
    received_ts_ns: int | None
    last_heartbeat_ns: int | None


@dataclass(frozen=True, slots=True)
class ReferenceResult:
    """One aggregate. ``mid`` is ``None`` exactly when ``quality == "stale"``."""

    ts_ns: int
    mid: Decimal | None
    quality: Quality
    reason: str | None
    sources: tuple[SourceView, ...]
    fresh_mids: dict[str, Decimal]
    fresh_median: Decimal | None
    survivors: tuple[str, ...]
    spread_bps: Decimal | None
    """Median top-of-book spread of the survivors."""
    jump_detected: bool
    jump_bps: Decimal
    """Largest move of the mid against any reference mid within the jump window."""
    vol_bps_per_sqrt_s: Decimal | None
    """EWMA realised volatility; ``None`` until two reference mids have been observed."""

    def source(self, name: str) -> SourceView:
        for view in self.sources:
            if view.source == name:
                return view
        raise KeyError(name)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form: Decimals as strings, timestamps as integers."""

        def dec(value: Decimal | None) -> str | None:
            return None if value is None else str(value)

        return {
            "ts_ns": self.ts_ns,
            "mid": dec(self.mid),
            "quality": self.quality,
            "reason": self.reason,
            "fresh_median": dec(self.fresh_median),
            "survivors": list(self.survivors),
            "spread_bps": dec(self.spread_bps),
            "jump_detected": self.jump_detected,
            "jump_bps": str(self.jump_bps),
            "vol_bps_per_sqrt_s": dec(self.vol_bps_per_sqrt_s),
            "sources": [
                {
                    "source": v.source,
                    "status": v.status,
                    "reason": v.reason,
                    "bid": dec(v.bid),
                    "ask": dec(v.ask),
                    "mid": dec(v.mid),
                    "age_ms": v.age_ms,
                    "deviation_bps": dec(v.deviation_bps),
                    "exchange_ts_ns": v.exchange_ts_ns,
                    "received_ts_ns": v.received_ts_ns,
                    "last_heartbeat_ns": v.last_heartbeat_ns,
                }
                for v in self.sources
            ],
        }


def median(values: list[Decimal]) -> Decimal:
    """Exact median; the mean of the two middle values for an even count."""
    if not values:
        raise InputError("median of no values")
    ordered = sorted(values)
    n = len(ordered)
    if n % 2:
        return ordered[n // 2]
    return _CTX.divide(_CTX.add(ordered[n // 2 - 1], ordered[n // 2]), _TWO)


def _bps(value: Decimal, base: Decimal) -> Decimal:
    """``(value - base) / base`` in bps."""
    return _CTX.multiply(_CTX.divide(_CTX.subtract(value, base), base), _BPS)


@dataclass(slots=True)
class _SourceState:
    tick: SourceTick | None = None
    down_reason: str | None = None
    last_heartbeat_ns: int | None = None


@dataclass(slots=True)
class _VolState:
    last_ts_ns: int | None = None
    last_mid: Decimal | None = None
    weighted_sum: Decimal = Decimal(0)
    weight: Decimal = Decimal(0)


@dataclass(slots=True)
class _History:
    points: deque[tuple[int, Decimal]] = field(default_factory=deque)


class ReferenceAggregator:
    """Holds the latest tick per source and computes the reference on demand.

    Not thread-safe; one owner task calls ``update``/``mark_down``/``compute``. ``compute`` also
    advances the jump-guard history and the volatility estimate, so call it with non-decreasing
    ``now_ns`` (an earlier ``now_ns`` is answered but does not move either).
    """

    def __init__(self, config: ReferenceConfig | None = None) -> None:
        self.config = config or ReferenceConfig()
        self._sources: dict[str, _SourceState] = {name: _SourceState() for name in self.config.sources}
        self._history = _History()
        self._vol = _VolState()

    def _state(self, source: str) -> _SourceState:
        state = self._sources.get(source)
        if state is None:
            enabled = ", ".join(self.config.sources)
            raise InputError(f"unknown reference source {source!r}; enabled: {enabled}")
        return state

    def update(self, tick: SourceTick) -> None:
        """Record ``tick`` as the source's latest book; clears a down mark.

        A tick older (by receive time) than the one held is ignored, so a late REST answer cannot
        overwrite a newer WebSocket book.
        """
        state = self._state(tick.source)
        if state.tick is not None and tick.received_ts_ns < state.tick.received_ts_ns:
            return
        state.tick = tick
        state.down_reason = None

    def mark_down(self, source: str, reason: str) -> None:
        """The source's connection is gone: exclude it until its next tick."""
        self._state(source).down_reason = reason or "down"

    def note_heartbeat(self, source: str, ts_ns: int) -> None:
        """Record connection liveness (heartbeat, ack). It does not make an old price fresh."""
        state = self._state(source)
        if state.last_heartbeat_ns is None or ts_ns > state.last_heartbeat_ns:
            state.last_heartbeat_ns = ts_ns

    def _age_ns(self, tick: SourceTick, now_ns: int) -> int:
        data_ts = tick.received_ts_ns
        if self.config.age_from_exchange_ts and tick.exchange_ts_ns is not None:
            data_ts = min(data_ts, tick.exchange_ts_ns)
        return now_ns - data_ts

    def compute(self, now_ns: int) -> ReferenceResult:
        """Aggregate as of ``now_ns``.

        Volatility formula: for consecutive reference mids ``m0`` at ``t0`` and ``m1`` at ``t1``
        (``dt = t1 - t0`` seconds > 0, ``r = ln(m1 / m0)``), with the decay ``d = 2^(-dt / H)``
        (``H = ewma_halflife_s``) the sums ``S <- d*S + (1 - d) * r^2/dt`` and ``W <- d*W + (1 - d)``
        (both starting at 0) give the variance rate ``v = S / W`` per second: an exponentially
        time-weighted mean of the squared return per second, bias-corrected by ``W`` so the first
        samples are not pulled towards an arbitrary initial value (``W -> 1`` after a few half-lives,
        where it is the textbook EWMA). The reported volatility is ``sqrt(v) * 10_000`` bps/sqrt(s);
        for a horizon of ``tau`` seconds multiply by ``sqrt(tau)``. Each sample is weighted by the
        time it covers, so the estimate does not depend on how often ``compute`` is called.
        """
        cfg = self.config
        stale_ns = cfg.stale_after_ms * _NS_PER_MS

        # 1. Classify by liveness and age.
        fresh: dict[str, SourceTick] = {}
        pre: dict[str, tuple[SourceStatus, str | None]] = {}
        for name, state in self._sources.items():
            tick = state.tick
            if tick is None:
                pre[name] = ("down", state.down_reason or "no data yet")
            elif state.down_reason is not None:
                pre[name] = ("down", state.down_reason)
            elif self._age_ns(tick, now_ns) > stale_ns:
                age_ms = self._age_ns(tick, now_ns) // _NS_PER_MS
                pre[name] = ("stale", f"last price {age_ms} ms old > {cfg.stale_after_ms} ms")
            else:
                fresh[name] = tick
                pre[name] = ("fresh", None)

        # 2. Median of fresh mids, outlier rejection, median of survivors.
        fresh_mids = {name: tick.mid for name, tick in fresh.items()}
        fresh_median = median(list(fresh_mids.values())) if fresh_mids else None
        deviations: dict[str, Decimal] = {}
        survivors: list[str] = []
        if fresh_median is not None:
            for name, source_mid in fresh_mids.items():
                deviations[name] = _bps(source_mid, fresh_median)
                if abs(deviations[name]) > cfg.outlier_bps:
                    pre[name] = (
                        "outlier",
                        f"{deviations[name].quantize(Decimal('0.01'))} bps from median "
                        f"(limit {cfg.outlier_bps})",
                    )
                else:
                    survivors.append(name)

        mid: Decimal | None = None
        spread: Decimal | None = None
        reason: str | None = None
        if len(survivors) >= cfg.quorum:
            mid = median([fresh_mids[name] for name in survivors])
            spread = median([fresh[name].spread_bps for name in survivors])
            quality: Quality = "ok" if len(survivors) == len(cfg.sources) else "degraded"
        else:
            quality = "stale"
            reason = (
                f"{len(survivors)} of {len(cfg.sources)} sources usable, quorum is {cfg.quorum}"
                f" (fresh: {len(fresh)})"
            )

        # 3. Jump guard and volatility; both only move forward in time and only on a published mid.
        jump_bps = self._advance_history(now_ns, mid)
        vol = self._advance_vol(now_ns, mid)

        views = []
        for name, state in self._sources.items():
            status, why = pre[name]
            tick = state.tick
            views.append(
                SourceView(
                    source=name,
                    status=status,
                    reason=why,
                    bid=tick.bid if tick else None,
                    ask=tick.ask if tick else None,
                    mid=tick.mid if tick else None,
                    age_ms=self._age_ns(tick, now_ns) // _NS_PER_MS if tick else None,
                    deviation_bps=deviations.get(name),
                    exchange_ts_ns=tick.exchange_ts_ns if tick else None,
                    received_ts_ns=tick.received_ts_ns if tick else None,
                    last_heartbeat_ns=state.last_heartbeat_ns,
                )
            )
        return ReferenceResult(
            ts_ns=now_ns,
            mid=mid,
            quality=quality,
            reason=reason,
            sources=tuple(views),
            fresh_mids=fresh_mids,
            fresh_median=fresh_median,
            survivors=tuple(survivors),
            spread_bps=spread,
            jump_detected=jump_bps > cfg.jump_bps,
            jump_bps=jump_bps,
            vol_bps_per_sqrt_s=vol,
        )

    def _advance_history(self, now_ns: int, mid: Decimal | None) -> Decimal:
        points = self._history.points
        window_ns = self.config.jump_window_ms * _NS_PER_MS
        last_ts = points[-1][0] if points else None
        forward = last_ts is None or now_ns >= last_ts
        if forward:
            while points and points[0][0] < now_ns - window_ns:
                points.popleft()
        if mid is None:
            return Decimal(0)
        move = Decimal(0)
        for ts, past in points:
            if ts >= now_ns - window_ns:
                move = max(move, abs(_bps(mid, past)))
        if forward:
            points.append((now_ns, mid))
        return move

    def _advance_vol(self, now_ns: int, mid: Decimal | None) -> Decimal | None:
        vol = self._vol
        if mid is not None:
            if vol.last_ts_ns is None or vol.last_mid is None:
                vol.last_ts_ns, vol.last_mid = now_ns, mid
            elif now_ns > vol.last_ts_ns:
                dt = _CTX.divide(Decimal(now_ns - vol.last_ts_ns), Decimal(_NS_PER_S))
                r = _CTX.ln(_CTX.divide(mid, vol.last_mid))
                sample = _CTX.divide(_CTX.multiply(r, r), dt)
                halflives = _CTX.divide(dt, self.config.ewma_halflife_s)
                decay = _CTX.exp(_CTX.minus(_CTX.multiply(halflives, _LN2)))
                alpha = _CTX.subtract(Decimal(1), decay)
                carried = _CTX.multiply(decay, vol.weighted_sum)
                vol.weighted_sum = _CTX.add(carried, _CTX.multiply(alpha, sample))
                vol.weight = _CTX.add(_CTX.multiply(decay, vol.weight), alpha)
                vol.last_ts_ns, vol.last_mid = now_ns, mid
        if vol.weight == 0:
            return None
        variance_per_s = _CTX.divide(vol.weighted_sum, vol.weight)
        return _CTX.multiply(_CTX.sqrt(variance_per_s), _BPS)
