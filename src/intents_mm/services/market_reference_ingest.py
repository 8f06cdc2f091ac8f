"""market-reference-ingest: the BTC/EUR reference price from four exchanges onto ``market.reference_price``.

The service is a thin shell around :class:`~intents_mm.domain.reference.ReferenceAggregator` (the
aggregation rules, see ``docs/reference-price.md``) and one
:class:`~intents_mm.venues.exchanges.ExchangeFeed` per source enabled in ``REFERENCE_SOURCES`` (the
venue wire formats). It adds three things:

- **Wiring**: every WebSocket tick goes to ``ReferenceAggregator.update``; a feed status ``down``
  to ``mark_down`` and ``alive`` (heartbeat, pong, status frame) to ``note_heartbeat``.
- **Publishing**: the aggregate is computed and published as ``ReferencePrice`` every
  ``REFERENCE_PUBLISH_MS``, and at once when the quality or the jump flag changes. Changes are
  caught without computing on every tick: the loop wakes early when a source that was not fresh
  ticks, when a tick lands more than half the outlier band from the last fresh median, when a feed
  goes down, and at the moment the oldest fresh source turns stale. Other changes (rare: a median
  drifting under a source) are caught on the next cadence.
- **REST**: every ``REFERENCE_REST_POLL_MS`` (and on ``POST /refresh``) each source's REST ticker is
  polled. As a sanity check the REST mid is compared with the source's latest WebSocket mid (when
  that is fresh); a gap beyond ``REFERENCE_OUTLIER_BPS`` is logged and counted as a disagreement.
  As a fallback a REST tick is fed to the aggregator only when :func:`rest_tick_usable` allows it:
  it must carry the venue's own timestamp (so it is aged by the venue's clock), and be newer than
  the book held unless the source's WebSocket is marked down. A REST ticker without a timestamp
  (Kraken, Binance) could be a frozen book, so it never makes a dead or stale WebSocket look fresh.

``POST /refresh`` polls every source at once, applies the usable answers, computes, publishes and
answers the published reference with the per-source REST outcome. ``GET /state`` shows each source's
book, age, status and reason, WebSocket state and counters, REST checks and the aggregate;
``GET /healthz`` fails (503, check ``reference_price``) while the quality is ``stale``.

Test hooks (``ctx.overrides``): ``reference_feed_options`` (extra keyword arguments for every
``ExchangeFeed``, e.g. shorter backoffs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import Any, Final

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Gauge

from intents_mm.domain.reference import ReferenceAggregator, ReferenceConfig, ReferenceResult, SourceTick
from intents_mm.errors import IntentsMMError, TransportError
from intents_mm.messages import REFERENCE_PRICE, ReferencePrice, SourceQuote
from intents_mm.messages import SourceStatus as BusSourceStatus
from intents_mm.services.runtime import (
    Check,
    HttpError,
    Route,
    Service,
    ServiceContext,
    json_response,
    read_json_object,
)
from intents_mm.venues.exchanges import ExchangeFeed, FeedStatus, FrameError

log = logging.getLogger("intents_mm.services.market_reference_ingest")

PAIR: Final = "BTC/EUR"
NS_PER_MS: Final = 1_000_000
NS_PER_S: Final = 1_000_000_000
REST_TIMEOUT_S: Final = 3.0
PUBLISH_TIMEOUT_S: Final = 2.0
VOL_QUANTUM: Final = Decimal("0.000001")
_BPS: Final = Decimal(10_000)
_CTX: Final = Context(prec=34)

#: Aggregator source status -> ``SourceQuote.status`` on the bus.
BUS_STATUS: Final[dict[str, BusSourceStatus]] = {
    "fresh": "ok",
    "stale": "stale",
    "outlier": "outlier",
    "down": "error",
}
QUALITY_LEVEL: Final[dict[str, int]] = {"ok": 0, "degraded": 1, "stale": 2}


def data_ts_ns(tick: SourceTick) -> int:
    """When the tick's data is from, as the aggregator ages it: the earlier of exchange and receive time."""
    if tick.exchange_ts_ns is None:
        return tick.received_ts_ns
    return min(tick.received_ts_ns, tick.exchange_ts_ns)


def rest_tick_usable(rest: SourceTick, held: SourceTick | None, *, marked_down: bool) -> str | None:
    """``None`` when a REST tick may be fed to the aggregator, else the reason it may not.

    A REST ticker is usable only with the venue's own timestamp: the aggregator then ages it by that
    timestamp, so it can never look fresher than it is. A ticker without one (Kraken, Binance) may be
    a frozen book served from a cache: it is only compared, never fed. A timestamped ticker is fed when
    the source is marked down (its WebSocket is gone, so the held book is excluded anyway) or has no
    book yet; otherwise only when its timestamp is newer than the data held, so a REST answer never
    replaces a newer WebSocket book.
    """
    if rest.exchange_ts_ns is None:
        return "no exchange timestamp: a REST book cannot prove it is fresh"
    if not marked_down and held is not None and rest.exchange_ts_ns <= data_ts_ns(held):
        return "not newer than the book already held"
    return None


def deviation_bps(value: Decimal, base: Decimal) -> Decimal:
    """``(value - base) / base`` in bps."""
    return _CTX.multiply(_CTX.divide(_CTX.subtract(value, base), base), _BPS)


def reference_payload(result: ReferenceResult, quorum: int) -> ReferencePrice:
    """The ``market.reference_price`` payload for one aggregate.

    ``fresh_sources`` counts the sources that entered the mid (fresh and within the outlier band),
    the number compared against ``quorum``. A source that never ticked has ``received_ts_ns`` 0.
    """
    vol = result.vol_bps_per_sqrt_s
    return ReferencePrice(
        pair=PAIR,
        mid=result.mid,
        quality=result.quality,
        sources=[
            SourceQuote(
                source=view.source,
                bid=view.bid,
                ask=view.ask,
                mid=view.mid,
                exchange_ts_ns=view.exchange_ts_ns,
                received_ts_ns=view.received_ts_ns or 0,
                status=BUS_STATUS[view.status],
                reason=view.reason,
            )
            for view in result.sources
        ],
        fresh_sources=len(result.survivors),
        quorum=quorum,
        volatility_bps_per_sqrt_s=None if vol is None else vol.quantize(VOL_QUANTUM),
        jump_detected=result.jump_detected,
        computed_ts_ns=result.ts_ns,
    )


@dataclass
class WsState:
    """The latest connection news of one feed."""

    state: str = "idle"
    since_ns: int | None = None
    reason: str | None = None
    last_down_reason: str | None = None
    last_down_ns: int | None = None


@dataclass
class RestState:
    """The REST checks of one source."""

    polls: int = 0
    errors: int = 0
    applied: int = 0
    disagreements: int = 0
    last_ts_ns: int | None = None
    last_outcome: str | None = None
    last_detail: str | None = None
    last_tick: SourceTick | None = None
    last_deviation_bps: Decimal | None = None
    error_reasons: dict[str, int] = field(default_factory=dict)


class MarketReferenceIngest(Service):
    name = "market-reference-ingest"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        c = ctx.config
        self.sources: tuple[str, ...] = tuple(dict.fromkeys(c["REFERENCE_SOURCES"]))
        self.ref_config = ReferenceConfig(
            stale_after_ms=c["REFERENCE_STALE_MS"],
            quorum=c["REFERENCE_QUORUM"],
            outlier_bps=c["REFERENCE_OUTLIER_BPS"],
            jump_bps=c["REFERENCE_JUMP_BPS"],
            jump_window_ms=c["REFERENCE_JUMP_WINDOW_MS"],
            sources=self.sources,
        )
        self.aggregator = ReferenceAggregator(self.ref_config)
        self.publish_ns: int = c["REFERENCE_PUBLISH_MS"] * NS_PER_MS
        self.rest_poll_s: float = c["REFERENCE_REST_POLL_MS"] / 1000
        self.stale_ns = self.ref_config.stale_after_ms * NS_PER_MS
        self.urls: dict[str, tuple[str, str]] = {
            s: (c[f"{s.upper()}_WS_URL"], c[f"{s.upper()}_REST_URL"]) for s in self.sources
        }
        self.feeds: dict[str, ExchangeFeed] = {}
        self.ws: dict[str, WsState] = {s: WsState() for s in self.sources}
        self.rest: dict[str, RestState] = {s: RestState() for s in self.sources}
        self._ws_tick: dict[str, SourceTick] = {}  # latest WebSocket tick per source
        self._held: dict[str, SourceTick] = {}  # latest tick the aggregator holds (WS or REST)
        self._marked_down: set[str] = set()  # mirrors the aggregator's down marks
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._next_stale_ns: int | None = None
        self.result: ReferenceResult = self.aggregator.compute(self.clock.now_ns())
        self._last_status: dict[str, str] = {v.source: v.status for v in self.result.sources}
        self._calm_band: tuple[Decimal, Decimal] | None = None  # mids that cannot change a status
        self.published: ReferencePrice | None = None
        self.publish_count = 0
        self.publish_errors = 0
        self.last_publish_error: str | None = None
        self.quality_changes = 0
        self._m_ticks = Counter("reference_ticks", "WebSocket ticks", ["source"], registry=self.metrics)
        self._m_publish = Counter(
            "reference_publishes", "market.reference_price publishes", ["outcome"], registry=self.metrics
        )
        self._m_rest = Counter(
            "reference_rest_polls",
            "REST ticker polls by outcome",
            ["source", "outcome"],
            registry=self.metrics,
        )
        self._m_disagree = Counter(
            "reference_rest_disagreements",
            "REST mid beyond the outlier band from the WebSocket mid",
            ["source"],
            registry=self.metrics,
        )
        self._m_quality = Gauge("reference_quality_level", "0 ok, 1 degraded, 2 stale", registry=self.metrics)
        self._m_fresh = Gauge("reference_fresh_sources", "sources in the mid", registry=self.metrics)
        self._m_quality.set(QUALITY_LEVEL[self.result.quality])

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        options: dict[str, Any] = {"rest_timeout_s": REST_TIMEOUT_S}
        options.update(self.ctx.overrides.get("reference_feed_options") or {})
        for source in self.sources:
            ws_url, rest_url = self.urls[source]
            feed = ExchangeFeed(
                source,
                ws_url,
                rest_url,
                self.clock,
                self._on_tick,
                self._on_status,
                self._session,
                **options,
            )
            self.feeds[source] = feed
            self.spawn(feed.run(), f"feed-{source}")
        self.spawn(self._rest_loop(), "rest-poll")

    async def run(self) -> None:
        """Compute on the publish cadence and on quality-relevant events; publish on cadence or change."""
        next_publish = self.clock.now_ns()
        while True:
            now = self.clock.now_ns()
            wake_at = next_publish
            if self._next_stale_ns is not None:
                wake_at = min(wake_at, self._next_stale_ns)
            if now < wake_at and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout((wake_at - now) / NS_PER_S):
                        await self._wake.wait()
            self._wake.clear()
            due = self.clock.now_ns() >= next_publish
            try:
                await self._compute_and_publish(force=due)
            except Exception:  # a defect must not end publishing; /healthz shows a stalled compute
                log.exception("reference computation failed")
                await asyncio.sleep(self.publish_ns / NS_PER_S)
            if due:
                next_publish += self.publish_ns
                now = self.clock.now_ns()
                if next_publish <= now:  # fell behind (slow bus): keep the cadence from now
                    next_publish = now + self.publish_ns

    async def stop(self) -> None:
        await self.cancel_tasks()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- feed callbacks (plain functions: cheap, no awaits) ----------------------------------------
    def _apply(self, tick: SourceTick) -> None:
        held = self._held.get(tick.source)
        if held is not None and tick.received_ts_ns < held.received_ts_ns:
            return  # older than the book held: the aggregator would ignore it too
        self._held[tick.source] = tick
        self.aggregator.update(tick)
        self._marked_down.discard(tick.source)
        band = self._calm_band
        if (
            self._last_status.get(tick.source) != "fresh"
            or band is None
            or not band[0] <= tick.mid <= band[1]
        ):
            self._wake.set()  # a source coming back or moving far from the median may change the quality

    def _on_tick(self, tick: SourceTick) -> None:
        self._ws_tick[tick.source] = tick
        self._m_ticks.labels(tick.source).inc()
        self._apply(tick)

    def _on_status(self, status: FeedStatus) -> None:
        ws = self.ws[status.source]
        ws.state, ws.since_ns, ws.reason = status.state, status.ts_ns, status.reason
        if status.state == "down":
            ws.last_down_reason, ws.last_down_ns = status.reason, status.ts_ns
            self.aggregator.mark_down(status.source, status.reason or "down")
            self._marked_down.add(status.source)
            self._wake.set()
        elif status.state == "alive":
            self.aggregator.note_heartbeat(status.source, status.ts_ns)

    # -- compute and publish ---------------------------------------------------------------------
    def _compute(self) -> ReferenceResult:
        result = self.aggregator.compute(self.clock.now_ns())
        self.result = result
        self._last_status = {v.source: v.status for v in result.sources}
        median = result.fresh_median
        if median is None:
            self._calm_band = None
        else:
            half = _CTX.divide(_CTX.multiply(median, self.ref_config.outlier_bps), 2 * _BPS)
            self._calm_band = (_CTX.subtract(median, half), _CTX.add(median, half))
        next_stale: int | None = None
        for view in result.sources:
            if view.status == "fresh" and view.received_ts_ns is not None:
                data_ts = view.received_ts_ns
                if view.exchange_ts_ns is not None:
                    data_ts = min(data_ts, view.exchange_ts_ns)
                at = data_ts + self.stale_ns + 1
                next_stale = at if next_stale is None else min(next_stale, at)
        self._next_stale_ns = next_stale
        self._m_quality.set(QUALITY_LEVEL[result.quality])
        self._m_fresh.set(len(result.survivors))
        return result

    async def _compute_and_publish(self, *, force: bool) -> tuple[ReferencePrice | None, str | None]:
        """Compute; publish when ``force`` or when quality or jump flag changed since the last publish.

        Returns the published payload (None when nothing was published) and a publish error, if any.
        """
        async with self._lock:
            result = self._compute()
            last = self.published
            changed = last is None or (last.quality, last.jump_detected) != (
                result.quality,
                result.jump_detected,
            )
            if not (force or changed):
                return None, None
            if last is not None and last.quality != result.quality:
                self.quality_changes += 1
                log.info(
                    "reference quality %s -> %s%s",
                    last.quality,
                    result.quality,
                    f": {result.reason}" if result.reason else "",
                )
            payload = reference_payload(result, self.ref_config.quorum)
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    await self.publish(REFERENCE_PRICE, payload)
            except (IntentsMMError, TimeoutError) as exc:
                self.publish_errors += 1
                self.last_publish_error = str(exc) or "bus publish timed out"
                self._m_publish.labels("error").inc()
                log.warning("reference price not published: %s", self.last_publish_error)
                return None, self.last_publish_error
            self.published = payload
            self.publish_count += 1
            self._m_publish.labels("ok").inc()
            return payload, None

    # -- REST --------------------------------------------------------------------------------------
    async def _rest_loop(self) -> None:
        while True:
            await self.poll_rest_all()
            await asyncio.sleep(self.rest_poll_s)

    async def poll_rest_all(self) -> dict[str, dict[str, Any]]:
        """Poll every source's REST ticker concurrently; the outcome per source."""
        outcomes = await asyncio.gather(*(self._poll_one(s) for s in self.sources))
        return dict(zip(self.sources, outcomes, strict=True))

    async def _poll_one(self, source: str) -> dict[str, Any]:
        rest = self.rest[source]
        rest.polls += 1
        try:
            tick = await self.feeds[source].poll_rest()
        except (TransportError, FrameError) as exc:
            return self._rest_error(source, getattr(exc, "reason", "unreachable"), str(exc))
        except Exception as exc:  # a parser defect must not end the poll loop
            log.exception("%s REST ticker poll failed", source)
            return self._rest_error(source, "internal", f"{source} REST ticker: {type(exc).__name__}")
        now = self.clock.now_ns()
        out: dict[str, Any] = {
            "outcome": "checked",
            "bid": tick.bid,
            "ask": tick.ask,
            "mid": tick.mid,
            "exchange_ts_ns": tick.exchange_ts_ns,
            "received_ts_ns": tick.received_ts_ns,
        }
        rest.last_tick, rest.last_ts_ns = tick, now
        # Sanity check against the WebSocket, when the WebSocket price is fresh.
        ws_tick = self._ws_tick.get(source)
        rest.last_deviation_bps = None
        if ws_tick is not None and now - data_ts_ns(ws_tick) <= self.stale_ns:
            dev = deviation_bps(tick.mid, ws_tick.mid)
            rest.last_deviation_bps = dev
            out["deviation_from_ws_bps"] = dev.quantize(Decimal("0.01"))
            if abs(dev) > self.ref_config.outlier_bps:
                rest.disagreements += 1
                self._m_disagree.labels(source).inc()
                out["outcome"] = "disagrees"
                log.warning(
                    "%s REST mid %s is %s bps from its WebSocket mid %s (band %s bps)",
                    source,
                    tick.mid,
                    dev.quantize(Decimal("0.01")),
                    ws_tick.mid,
                    self.ref_config.outlier_bps,
                )
        else:
            out["deviation_from_ws_bps"] = None
        # Fallback: feed it to the aggregator only when it cannot make stale data look fresh.
        why_not = rest_tick_usable(tick, self._held.get(source), marked_down=source in self._marked_down)
        out["applied"] = why_not is None
        out["not_applied_reason"] = why_not
        if why_not is None:
            self._apply(tick)
            rest.applied += 1
        rest.last_outcome = out["outcome"]
        rest.last_detail = why_not
        self._m_rest.labels(source, out["outcome"]).inc()
        return out

    def _rest_error(self, source: str, reason: str, detail: str) -> dict[str, Any]:
        rest = self.rest[source]
        rest.errors += 1
        rest.error_reasons[reason] = rest.error_reasons.get(reason, 0) + 1
        rest.last_ts_ns = self.clock.now_ns()
        rest.last_outcome, rest.last_detail = "error", detail
        self._m_rest.labels(source, "error").inc()
        log.info("%s", detail)
        return {"outcome": "error", "reason": reason, "error": detail, "applied": False}

    # -- control API -------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [Route("POST", "/refresh", self._refresh, mutating=True, rate_limited=True)]

    async def _refresh(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, allow_empty=True)
        if body:
            raise HttpError(400, f"/refresh takes no parameters, got {', '.join(sorted(body))[:200]}")
        outcomes = await self.poll_rest_all()
        payload, error = await self._compute_and_publish(force=True)
        reference = payload if payload is not None else reference_payload(self.result, self.ref_config.quorum)
        return json_response(
            {
                "reference": reference,
                "published": payload is not None,
                "publish_error": error,
                "rest": outcomes,
            }
        )

    def checks(self) -> dict[str, Check]:
        checks = super().checks()
        result = self.result
        idle_ms = (self.clock.now_ns() - result.ts_ns) // NS_PER_MS
        if self.ready and idle_ms > 2 * self.publish_ns // NS_PER_MS + 1000:
            checks["reference_price"] = Check(False, f"reference price not computed for {idle_ms} ms")
        elif result.quality == "stale":
            checks["reference_price"] = Check(False, f"reference price stale: {result.reason}")
        else:
            checks["reference_price"] = Check(True, result.quality)
        return checks

    def state(self) -> dict[str, Any]:
        now = self.clock.now_ns()
        result = self.result
        sources: dict[str, Any] = {}
        for view in result.sources:
            name = view.source
            held = self._held.get(name)
            feed = self.feeds.get(name)
            ws, rest = self.ws[name], self.rest[name]
            last_rest = rest.last_tick
            sources[name] = {
                "bid": held.bid if held else None,
                "ask": held.ask if held else None,
                "mid": held.mid if held else None,
                "age_ms": (now - data_ts_ns(held)) // NS_PER_MS if held else None,
                "exchange_ts_ns": held.exchange_ts_ns if held else None,
                "received_ts_ns": held.received_ts_ns if held else None,
                "from": None
                if held is None
                else ("websocket" if held is self._ws_tick.get(name) else "rest"),
                "status": view.status,
                "reason": view.reason,
                "deviation_bps": view.deviation_bps,
                "last_heartbeat_ns": view.last_heartbeat_ns,
                "websocket": {
                    "url": self.urls[name][0],
                    "state": ws.state,
                    "since_ns": ws.since_ns,
                    "reason": ws.reason,
                    "last_down_reason": ws.last_down_reason,
                    "last_down_ns": ws.last_down_ns,
                },
                "counters": feed.stats.as_dict() if feed else None,
                "rest": {
                    "url": self.urls[name][1],
                    "polls": rest.polls,
                    "errors": rest.errors,
                    "error_reasons": dict(rest.error_reasons),
                    "applied": rest.applied,
                    "disagreements": rest.disagreements,
                    "last_ts_ns": rest.last_ts_ns,
                    "last_outcome": rest.last_outcome,
                    "last_detail": rest.last_detail,
                    "last_mid": last_rest.mid if last_rest else None,
                    "last_deviation_from_ws_bps": rest.last_deviation_bps,
                },
            }
        published = self.published
        return {
            "pair": PAIR,
            "sources_enabled": list(self.sources),
            "settings": {
                "stale_after_ms": self.ref_config.stale_after_ms,
                "quorum": self.ref_config.quorum,
                "outlier_bps": self.ref_config.outlier_bps,
                "jump_bps": self.ref_config.jump_bps,
                "jump_window_ms": self.ref_config.jump_window_ms,
                "publish_ms": self.publish_ns // NS_PER_MS,
                "rest_poll_ms": int(self.rest_poll_s * 1000),
            },
            "aggregate": {
                "mid": result.mid,
                "quality": result.quality,
                "reason": result.reason,
                "fresh_sources": len(result.survivors),
                "survivors": list(result.survivors),
                "fresh_median": result.fresh_median,
                "spread_bps": result.spread_bps,
                "volatility_bps_per_sqrt_s": result.vol_bps_per_sqrt_s,
                "jump_detected": result.jump_detected,
                "jump_bps": result.jump_bps,
                "computed_ts_ns": result.ts_ns,
                "age_ms": (now - result.ts_ns) // NS_PER_MS,
            },
            "sources": sources,
            "publishing": {
                "subject": REFERENCE_PRICE,
                "published": self.publish_count,
                "errors": self.publish_errors,
                "last_error": self.last_publish_error,
                "quality_changes": self.quality_changes,
                "last_computed_ts_ns": published.computed_ts_ns if published else None,
                "last_quality": published.quality if published else None,
                "last_mid": published.mid if published else None,
            },
        }
