"""near-intents-ingest: the Solver Relay's quote requests and quote statuses, validated, onto the bus.

The service owns one :class:`~intents_mm.venues.relay.SolverRelayClient` (or uses the unstarted one
injected as ``ctx.overrides["relay_client"]``; an injected client is configured and started here but not
closed). It subscribes ``quote`` with the active pair's token filter (both assets in ``tokens_in`` and in
``tokens_out``) and ``quote_status`` (guaranteed delivery when ``NEAR_INTENTS_INSTANCE_ID`` is set).

Quote requests (``quote`` events) are validated once, then published as ``demand.swap_request`` with
``msg_id = "swap:<quote_id>"``:

- ``quote_id`` an identifier (:func:`intents_mm.messages.is_valid_id`: 1 to 200 printable ASCII
  characters, no space, so no NUL or control character ever reaches the bus or the store);
- ``metadata.partner_id`` and ``metadata.traceparent``, when they are strings, identifiers too (else
  the request is rejected as ``metadata``);
- both assets present, different, and both in the active pair (else ``off_pair``);
- exactly one of ``exact_amount_in`` / ``exact_amount_out``, a string of ASCII digits, > 0, <= u128;
- ``min_deadline_ms`` an integer with 0 < value <= ``INGEST_MAX_MIN_DEADLINE_MS`` (the strategy applies
  its own, tighter limit).

A rejected request is counted by reason and never published. ``received_ts_ns`` is when the relay frame
was read; ``relay_deadline_ns`` = received + ``INGEST_RELAY_WINDOW_MS`` (how long the relay waits for
answers). A quote id already published (a replay after a reconnect) is counted as ``duplicate`` and
not published again; the bus also drops a repeated ``msg_id``.

Shedding (load is shed, never queued into an outage; :class:`AgeShedder`): a request taken off the
client's event queue after it waited longer than ``SHED_REQUEST_AGE_MS`` since its frame was read is
not published and counted as ``shed_overload``; that starts an overload episode, in which any request
older than half the bound is shed too, until none was for :data:`OVERLOAD_HOLD_NS` (so a
standing queue is drained and kept short instead of hovering at the bound). One whose relay window
ends within :data:`SIGN_SEND_ALLOWANCE_NS` (too late to sign and send) is ``relay_window_passed``.
Both are checked before validation (the cheapest decline); ``/state`` shows the counts, the episodes
and the largest age shed. The strategy applies the same bounds to what reaches it (its decision
record then names the reason and the age), and the executor drops (``dropped_late``) a command whose
request waited longer than the bound by the time it is taken up.

Quote statuses are published as ``demand.quote_status`` with ``msg_id = "status:<quote_hash>"``; the
three hashes must be identifiers (as above), else the status is counted as invalid. On a
guaranteed subscription an event is acknowledged only after the bus publish returned (or when it is a
duplicate or malformed, so that it is not redelivered for ever); when publishing fails it stays
unacknowledged and the relay redelivers it after the next reconnect.

The hot path (relay frame → bus publish) parses each frame once, logs nothing per message and copies
nothing. ``GET /state`` shows the connection, subscriptions, counts by outcome, the age of the last event
and any auth problem; ``GET /healthz`` fails (503) while the relay has refused the API key, while a
subscription is refused, or while disconnected for longer than ``INGEST_DISCONNECT_GRACE_MS``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from intents_mm.domain.amounts import parse_u128
from intents_mm.errors import InputError, IntentsMMError
from intents_mm.messages import (
    MAX_ID_CHARS,
    QUOTE_STATUS,
    SWAP_REQUEST,
    QuoteStatus,
    SwapRequest,
    is_valid_id,
    safe_text,
)
from intents_mm.services.runtime import Check, Service, ServiceContext
from intents_mm.venues.relay import QuoteRequestEvent, QuoteStatusEvent, SolverRelayClient

log = logging.getLogger("intents_mm.services.near_intents_ingest")

NS_PER_MS: Final = 1_000_000
START_WAIT_S: Final = 5.0  # start() waits this long for the first subscription, then goes on
SEEN_KEPT: Final = 100_000  # quote ids / quote hashes remembered against replays
RECENT_REJECTIONS: Final = 20
MAX_PUBLISHING: Final = 256  # quote requests being published at once (bus acknowledgement pending)
#: What signing and sending a quote_response is expected to take: a request whose relay window ends
#: sooner than this is declined (``relay_window_passed``), in ingest and in strategy.
SIGN_SEND_ALLOWANCE_NS: Final = 100 * NS_PER_MS
#: An overload episode lasts until no request was shed for this long.
OVERLOAD_HOLD_NS: Final = 500 * NS_PER_MS

#: Reasons an invalid quote request is counted under (``off_pair`` is counted apart).
INVALID_REASONS: Final = (
    "quote_id",
    "asset_missing",
    "same_asset",
    "amount_both",
    "amount_none",
    "amount_not_digits",
    "amount_zero",
    "amount_over_u128",
    "min_deadline",
    "metadata",
)


class AgeShedder:
    """Sheds quote requests by how long they waited (``age_ns``: now − ``received_ts_ns``).

    A request older than ``bound_ns`` is shed and starts (or extends) an overload episode; during an
    episode a request older than ``bound_ns // 2`` is shed as well, and each one shed extends the
    episode by :data:`OVERLOAD_HOLD_NS`. Out of an episode a short stall below the bound sheds nothing.
    ``bound_ns == 0`` sheds nothing. Used by near-intents-ingest and strategy-engine, each its own.
    """

    __slots__ = ("bound_ns", "episodes", "overloaded_until_ns", "tight_ns")

    def __init__(self, bound_ns: int) -> None:
        self.bound_ns = bound_ns
        self.tight_ns = bound_ns // 2
        self.overloaded_until_ns = 0
        self.episodes = 0

    def shed(self, age_ns: int, now_ns: int) -> bool:
        """Whether to shed a request that waited ``age_ns``; updates the overload episode."""
        if not self.bound_ns:
            return False
        overloaded = now_ns < self.overloaded_until_ns
        if age_ns > self.bound_ns or (overloaded and age_ns > self.tight_ns):
            if not overloaded:
                self.episodes += 1
            self.overloaded_until_ns = now_ns + OVERLOAD_HOLD_NS
            return True
        return False

    def overloaded(self, now_ns: int) -> bool:
        return now_ns < self.overloaded_until_ns


class RequestRejected(InputError):
    """A quote request that is not published; ``reason`` is ``off_pair`` or one of INVALID_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _amount(raw: object, name: str) -> int:
    if type(raw) is not str or not raw.isascii() or not raw.isdigit():
        raise RequestRejected("amount_not_digits", f"{name} must be a string of digits, got {raw!r:.60}")
    try:
        return parse_u128(raw, name=name)
    except InputError as exc:
        reason = "amount_zero" if raw.strip("0") == "" else "amount_over_u128"
        raise RequestRejected(reason, str(exc)) from None


def swap_request_from_event(
    event: QuoteRequestEvent,
    *,
    pair_tokens: frozenset[str],
    max_min_deadline_ms: int,
    window_ns: int,
) -> SwapRequest:
    """The ``demand.swap_request`` payload for a relay quote request, or :class:`RequestRejected`."""
    quote_id = event.quote_id
    if not is_valid_id(quote_id):
        raise RequestRejected(
            "quote_id",
            f"quote_id must be 1 to {MAX_ID_CHARS} printable ASCII characters without spaces, "
            f"got {quote_id!r:.60}",
        )
    assert isinstance(quote_id, str)
    for name, value in (("partner_id", event.partner_id), ("traceparent", event.traceparent)):
        if value is not None and not is_valid_id(value):
            raise RequestRejected(
                "metadata",
                f"metadata.{name} must be 1 to {MAX_ID_CHARS} printable ASCII characters without spaces, "
                f"got {value!r:.60}",
            )
    asset_in, asset_out = event.asset_in, event.asset_out
    if type(asset_in) is not str or type(asset_out) is not str or not asset_in or not asset_out:
        raise RequestRejected(
            "asset_missing", "defuse_asset_identifier_in and _out must be non-empty strings"
        )
    if asset_in == asset_out:
        raise RequestRejected("same_asset", f"asset in and out are both {asset_in:.80}")
    if asset_in not in pair_tokens or asset_out not in pair_tokens:
        raise RequestRejected("off_pair", f"{asset_in:.80} -> {asset_out:.80} is not the active pair")
    raw_in, raw_out = event.exact_amount_in, event.exact_amount_out
    if raw_in is not None and raw_out is not None:
        raise RequestRejected("amount_both", "both exact_amount_in and exact_amount_out are set")
    if raw_in is None and raw_out is None:
        raise RequestRejected("amount_none", "neither exact_amount_in nor exact_amount_out is set")
    amount_in = _amount(raw_in, "exact_amount_in") if raw_in is not None else None
    amount_out = _amount(raw_out, "exact_amount_out") if raw_out is not None else None
    min_deadline_ms = event.min_deadline_ms
    if type(min_deadline_ms) is not int or not 0 < min_deadline_ms <= max_min_deadline_ms:
        raise RequestRejected(
            "min_deadline",
            f"min_deadline_ms must be an integer in 1..{max_min_deadline_ms}, got {min_deadline_ms!r:.40}",
        )
    received = event.received_ts_ns
    return SwapRequest(
        quote_id=quote_id,
        asset_in=asset_in,
        asset_out=asset_out,
        exact_amount_in=amount_in,
        exact_amount_out=amount_out,
        min_deadline_ms=min_deadline_ms,
        partner_id=event.partner_id,
        traceparent=event.traceparent,
        received_ts_ns=received,
        relay_deadline_ns=received + window_ns,
    )


def quote_status_from_event(event: QuoteStatusEvent) -> QuoteStatus:
    """The ``demand.quote_status`` payload, or :class:`InputError` when a hash is missing or malformed."""
    hashes = (event.quote_hash, event.intent_hash, event.tx_hash)
    for name, value in zip(("quote_hash", "intent_hash", "tx_hash"), hashes, strict=True):
        if not is_valid_id(value):
            raise InputError(
                f"quote_status {name} must be 1 to {MAX_ID_CHARS} printable ASCII characters "
                f"without spaces, got {value!r:.60}"
            )
    quote_hash, intent_hash, tx_hash = hashes
    assert isinstance(quote_hash, str) and isinstance(intent_hash, str) and isinstance(tx_hash, str)
    return QuoteStatus(
        quote_hash=quote_hash,
        intent_hash=intent_hash,
        tx_hash=tx_hash,
        received_ts_ns=event.received_ts_ns,
        seq=event.seq,
    )


def _remember(seen: OrderedDict[str, None], key: str) -> None:
    seen[key] = None
    if len(seen) > SEEN_KEPT:
        seen.popitem(last=False)


class _Metrics:
    """Prometheus view of the service's counters, read at scrape time (nothing on the hot path)."""

    def __init__(self, service: NearIntentsIngest) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        quotes = CounterMetricFamily(
            "ingest_quote_requests", "Relay quote requests by outcome", labels=["outcome", "reason"]
        )
        for outcome in (
            "received",
            "published",
            "duplicate",
            "off_pair",
            "publish_failed",
            "shed_overload",
            "relay_window_passed",
        ):
            quotes.add_metric([outcome, ""], svc.quotes[outcome])
        for reason, count in svc.invalid.items():
            quotes.add_metric(["invalid", reason], count)
        yield quotes
        statuses = CounterMetricFamily(
            "ingest_quote_statuses", "Relay quote statuses by outcome", labels=["outcome"]
        )
        for outcome in ("received", "published", "duplicate", "invalid", "acknowledged", "publish_failed"):
            statuses.add_metric([outcome], svc.statuses[outcome])
        yield statuses
        connected = GaugeMetricFamily("ingest_relay_connected", "1 while subscribed on the Solver Relay")
        connected.add_metric([], 1 if svc.client.connected else 0)
        yield connected
        reconnects = CounterMetricFamily("ingest_relay_reconnects", "Solver Relay connection losses")
        reconnects.add_metric([], svc.client.reconnects)
        yield reconnects


class NearIntentsIngest(Service):
    name = "near-intents-ingest"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        config = ctx.config
        pair = ctx.assets.active_pair
        self.pair_name = pair.name
        self.tokens: tuple[str, str] = (pair.base.token_id, pair.quote.token_id)
        self._pair_tokens = frozenset(self.tokens)
        self.window_ns: int = config["INGEST_RELAY_WINDOW_MS"] * NS_PER_MS
        self.max_min_deadline_ms: int = config["INGEST_MAX_MIN_DEADLINE_MS"]
        self.grace_ns: int = config["INGEST_DISCONNECT_GRACE_MS"] * NS_PER_MS
        self.shedder = AgeShedder(config["SHED_REQUEST_AGE_MS"] * NS_PER_MS)
        self.max_shed_age_ns = 0  # the oldest request shed so far (its wait since the frame was read)
        injected = ctx.overrides.get("relay_client")
        self._owns_client = injected is None
        self.client: SolverRelayClient = (
            injected
            if injected is not None
            else SolverRelayClient(
                config["NEAR_INTENTS_RELAY_WS_URL"],
                api_key=config["NEAR_INTENTS_API_KEY"],
                instance_id=config["NEAR_INTENTS_INSTANCE_ID"],
                clock=ctx.clock,
            )
        )
        self.guaranteed_status = self.client.instance_id is not None

        self.quotes: Counter[str] = Counter()  # received, published, duplicate, off_pair, publish_failed
        self.invalid: Counter[str] = Counter()  # by reason
        self.statuses: Counter[str] = Counter()  # received, published, duplicate, invalid, acked, ...
        self.recent_rejections: deque[dict[str, Any]] = deque(maxlen=RECENT_REJECTIONS)
        self.last_publish_error: str | None = None
        self._seen_quotes: OrderedDict[str, None] = OrderedDict()
        self._seen_statuses: OrderedDict[str, None] = OrderedDict()
        # A publish that waits for a broker acknowledgement (NATS JetStream) must not hold up the next
        # quote request: such publishes run concurrently (bounded). The memory bus never waits, so
        # there the request is published inline (a task would only add an event-loop turn).
        self._pipelined = ctx.bus.describe().get("backend") != "memory"
        self._publishing: set[str] = set()
        self._publish_slots = asyncio.Semaphore(MAX_PUBLISHING)
        self.metrics.register(_Metrics(self))

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        await self.client.subscribe_quotes(self.tokens, self.tokens)
        await self.client.subscribe_status(guaranteed=self.guaranteed_status)
        await self.client.start()
        if not await self.client.wait_connected(START_WAIT_S):
            log.warning(
                "near-intents-ingest: not connected to the Solver Relay yet (%s); retrying in the background",
                self.client.auth_problem or self.client.last_error or self.client.state.value,
            )

    async def run(self) -> None:
        client = self.client
        while True:
            event = await client.next_event()
            try:
                if type(event) is QuoteRequestEvent:
                    await self._on_quote(event)
                else:
                    assert isinstance(event, QuoteStatusEvent)
                    await self._on_status(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad event never stops the ingest
                self.quotes["internal_errors"] += 1
                log.exception("near-intents-ingest: event handling failed")

    async def stop(self) -> None:
        if self._owns_client:
            await self.client.close()

    # ------------------------------------------------------------------ hot path

    async def _on_quote(self, event: QuoteRequestEvent) -> None:
        quotes = self.quotes
        quotes["received"] += 1
        now_ns = self.clock.now_ns()
        age_ns = now_ns - event.received_ts_ns
        if age_ns > self.window_ns - SIGN_SEND_ALLOWANCE_NS:
            self._shed("relay_window_passed", age_ns)
            return
        if self.shedder.shed(age_ns, now_ns):
            self._shed("shed_overload", age_ns)
            return
        try:
            request = swap_request_from_event(
                event,
                pair_tokens=self._pair_tokens,
                max_min_deadline_ms=self.max_min_deadline_ms,
                window_ns=self.window_ns,
            )
        except RequestRejected as exc:
            self._reject(event, exc)
            return
        except InputError as exc:  # the payload's own checks (cannot happen after validation)
            self._reject(event, RequestRejected("payload", str(exc)))
            return
        quote_id = request.quote_id
        if quote_id in self._seen_quotes or quote_id in self._publishing:
            quotes["duplicate"] += 1
            return
        if self._pipelined:
            await self._publish_slots.acquire()  # back-pressure once MAX_PUBLISHING are pending
            self._publishing.add(quote_id)
            self.spawn(self._publish_request(request), "publish")
            return
        await self._publish_request(request)

    def _shed(self, reason: str, age_ns: int) -> None:
        self.quotes[reason] += 1
        self.max_shed_age_ns = max(self.max_shed_age_ns, age_ns)

    async def _publish_request(self, request: SwapRequest) -> None:
        quote_id = request.quote_id
        try:
            await self.publish(SWAP_REQUEST, request, msg_id=f"swap:{quote_id}")
        except IntentsMMError as exc:
            self.quotes["publish_failed"] += 1
            self.last_publish_error = f"demand.swap_request: {exc}"
            return
        finally:
            if self._pipelined:
                self._publishing.discard(quote_id)
                self._publish_slots.release()
        _remember(self._seen_quotes, quote_id)
        self.quotes["published"] += 1

    async def _on_status(self, event: QuoteStatusEvent) -> None:
        statuses = self.statuses
        statuses["received"] += 1
        try:
            status = quote_status_from_event(event)
        except InputError as exc:
            statuses["invalid"] += 1
            self.recent_rejections.append({"kind": "quote_status", "reason": "invalid", "detail": str(exc)})
            await self._ack(event)
            return
        quote_hash = status.quote_hash
        if quote_hash in self._seen_statuses:
            statuses["duplicate"] += 1
            await self._ack(event)
            return
        try:
            await self.publish(QUOTE_STATUS, status, msg_id=f"status:{quote_hash}")
        except IntentsMMError as exc:
            statuses["publish_failed"] += 1
            self.last_publish_error = f"demand.quote_status: {exc}"
            return  # not acknowledged: redelivered after the next reconnect
        _remember(self._seen_statuses, quote_hash)
        statuses["published"] += 1
        await self._ack(event)

    async def _ack(self, event: QuoteStatusEvent) -> None:
        if event.guaranteed and event.seq is not None and event.subscription is not None:
            if await self.client.acknowledge(event.subscription, event.seq):
                self.statuses["acknowledged"] += 1
            else:
                self.statuses["ack_not_sent"] += 1

    def _reject(self, event: QuoteRequestEvent, exc: RequestRejected) -> None:
        if exc.reason == "off_pair":
            self.quotes["off_pair"] += 1
        else:
            self.quotes["invalid"] += 1
            self.invalid[exc.reason] += 1
        quote_id = event.quote_id if isinstance(event.quote_id, str) else None
        self.recent_rejections.append(
            {
                "kind": "quote",
                "quote_id": quote_id and safe_text(quote_id[:MAX_ID_CHARS]),
                "reason": exc.reason,
                "detail": str(exc),
            }
        )

    # ------------------------------------------------------------------ introspection

    def state(self) -> dict[str, Any]:
        client = self.client
        last = client.last_event_ts_ns
        return {
            "relay": client.snapshot(),
            "connection": client.state.value,
            "subscriptions": client.subscription_ids,
            "auth_problem": client.auth_problem,
            "pair": self.pair_name,
            "token_filter": list(self.tokens),
            "guaranteed_status": self.guaranteed_status,
            "last_event_age_ms": None if last is None else max(0, self.clock.now_ns() - last) // NS_PER_MS,
            "quotes": {
                "received": self.quotes["received"],
                "published": self.quotes["published"],
                "duplicate": self.quotes["duplicate"],
                "off_pair": self.quotes["off_pair"],
                "invalid": self.quotes["invalid"],
                "invalid_by_reason": dict(self.invalid),
                "publish_failed": self.quotes["publish_failed"],
                "internal_errors": self.quotes["internal_errors"],
                "shed_overload": self.quotes["shed_overload"],
                "relay_window_passed": self.quotes["relay_window_passed"],
                "max_shed_age_ms": round(self.max_shed_age_ns / NS_PER_MS, 3),
                "overload_episodes": self.shedder.episodes,
                "overloaded": self.shedder.overloaded(self.clock.now_ns()),
            },
            "statuses": {
                "received": self.statuses["received"],
                "published": self.statuses["published"],
                "duplicate": self.statuses["duplicate"],
                "invalid": self.statuses["invalid"],
                "acknowledged": self.statuses["acknowledged"],
                "ack_not_sent": self.statuses["ack_not_sent"],
                "publish_failed": self.statuses["publish_failed"],
            },
            "recent_rejections": list(self.recent_rejections),
            "last_publish_error": self.last_publish_error,
            "settings": {
                "relay_window_ms": self.window_ns // NS_PER_MS,
                "max_min_deadline_ms": self.max_min_deadline_ms,
                "disconnect_grace_ms": self.grace_ns // NS_PER_MS,
                "shed_request_age_ms": self.shedder.bound_ns // NS_PER_MS,
            },
        }

    def checks(self) -> dict[str, Check]:
        checks = super().checks()
        client = self.client
        if client.auth_problem is not None:
            checks["relay"] = Check(False, client.auth_problem)
        elif client.connected:
            checks["relay"] = Check(True)
        else:
            down_ns = client.disconnected_for_ns()
            detail = f"Solver Relay {client.state.value} for {down_ns / 1e9:.1f} s" + (
                f" (last error: {client.last_error})" if client.last_error else ""
            )
            checks["relay"] = Check(down_ns <= self.grace_ns, detail)
        refused = client.subscription_errors()
        if refused:
            checks["relay_subscriptions"] = Check(
                False, "; ".join(f"{kind} subscription refused: {err}" for kind, err in refused.items())
            )
        return checks
