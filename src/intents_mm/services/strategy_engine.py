"""strategy-engine (8086): quote requests in, priced and risk-checked decisions out.

Every ``demand.swap_request`` gets a ``decision.trade_decision`` with the full reasoning chain (inputs,
each price term, each limit check, outcome). An actionable decision emits ``cmd.execute_trade`` only
while armed; the engine starts disarmed. Guards that stop quoting (each recorded as the decline reason):
the relay window (nearly) passed, a request that waited too long (``shed_overload``: load is shed,
never queued; :class:`~intents_mm.services.near_intents_ingest.AgeShedder`), a stale or below-quorum
reference, stale inventory, an unknown protocol fee, a recent price jump, consecutive venue errors
from the executor (our own lateness, a late rejection or ``dropped_late``, is never one), a tripped
loss limit, and partner filtering. Limits are changed with ``PUT /limits`` (validated, applied at
once, persisted in the store so a restart keeps them, audited as ``control.operator_action``).

Loss limits read ``portfolio.metrics``: the daily (UTC) and drawdown limits watch the flow-adjusted
``mark_to_market_pnl_eure`` (both books at the latest price, net of deposits and withdrawals, which
history-writer counts at the snapshot that shows them), the optional portfolio-drop limit the
flow-adjusted ``portfolio_value_eure`` (see :class:`~intents_mm.domain.risk.LossGuard`); a tripped
limit pauses quoting until ``POST /arm``, which measures afresh from the current figures.

Limit sources: each limit comes from its ``STRATEGY_*`` variable (``environment``, ``.env file`` or
``default``) unless an operator set it with ``PUT /limits`` (``stored PUT /limits``: the stored
value wins over the environment after a restart). Every start logs one INFO line listing each
limit with its source; ``/state`` shows them (``limit_sources``). A stored record written before
sources were recorded (no ``_set`` list) applies every stored limit, each shown as stored.

Reservations (:class:`ReservationKeeper` over ``domain.risk.ReservationBook``; see
docs/services/strategy-engine.md):

- every command reserves what it could take out; a *live signed quote*
  (``messages.is_live_signed_quote``: accepted, or an error carrying a quote hash and deadline) keeps
  it until its signed deadline; any other result releases it;
- a ``demand.quote_status`` marks it filled, and a filled reservation is released only by the
  ``inventory.snapshot`` that lists its quote hash in ``settled_quote_hashes`` (inventory-sync lists a
  settlement once the balance change between two reads, the later at ``block_height``, matched it:
  block order, never the wall clock); a fill no snapshot confirms within
  ``STRATEGY_FILL_CONFIRM_TIMEOUT_MS`` is released with a warning and counted;
- an unfilled reservation expires only once the snapshot in use was read more than the margin after
  its deadline; a snapshot from a lower block than the one in use never replaces it;
- a ``liquidity.action`` withdraw ``requested`` holds its amount until a snapshot lists it in
  ``landed_withdrawals`` (or it failed without a burn);
- at start the book is rebuilt from the store (:func:`book_from_records`); it refuses to start when the
  store cannot be read (an empty book could promise the same funds twice);
- ``risk.reservations`` (:class:`~intents_mm.messages.ReservationSummary`) is published on every
  change (coalesced) and every second, for liquidity-manager's withdrawal checks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from aiohttp import web

from intents_mm.bus.port import Delivery, redelivery_delay_s
from intents_mm.domain.amounts import Rounding, format_units, parse_plain_decimal, to_units
from intents_mm.domain.assets import Pair
from intents_mm.domain.pricing import Inventory, PricedQuote, PricingParams, QuoteRequest, price_quote
from intents_mm.domain.risk import (
    Hold,
    Limits,
    LossGuard,
    RecordedQuote,
    Reservation,
    ReservationBook,
    check_limits,
    first_failure,
    rebuild_book,
)
from intents_mm.errors import InputError, IntentsMMError
from intents_mm.messages import (
    RESERVATIONS,
    DecisionOutcome,
    ExecuteTrade,
    InventorySnapshot,
    LimitCheck,
    LiquidityAction,
    OperatorAction,
    PortfolioMetrics,
    QuoteStatus,
    ReferencePrice,
    ReservationSummary,
    SwapRequest,
    TradeDecision,
    TradeResult,
    decode,
    is_live_signed_quote,
)
from intents_mm.services.near_intents_ingest import SIGN_SEND_ALLOWANCE_NS, AgeShedder
from intents_mm.services.runtime import HttpError, Route, Service, json_response, read_json_object
from intents_mm.storage.store import ReservationRecords

log = logging.getLogger(__name__)

LIMITS_STATE_KEY = "strategy-engine.limits"
MS = 1_000_000
VENUE_ERROR_STREAK = 3
DECISION_PUBLISH_ATTEMPTS = 3
UNPUBLISHED_DECISIONS_KEPT = 10_000
VENUE_ERROR_COOLDOWN_NS = 30_000 * MS
#: Relay rejections that mean "our answer came too late" (the quote id's window had closed or is no
#: longer known; the executor's own note when the reply came after the window): our lateness, not a
#: venue error. What the live relay says is undocumented; these are the simulated relay's texts.
LATE_REJECTION_MARKERS = (
    "quote window closed",
    "unknown quote_id",
    "no longer accepts responses",
    "the relay window had passed before the reply",
)
JUMP_COOLDOWN_NS = 10_000 * MS
RESERVATION_MARGIN_NS = 5_000 * MS
SUMMARY_HEARTBEAT_S = 1.0  # risk.reservations at least this often
SUMMARY_COALESCE_S = 0.02  # and at most once per this on changes
EARLY_FILL_MEMORY = 10_000

# operator-facing limit names (human units) -> how they map onto domain Limits
LIMIT_FIELDS: dict[str, str] = {
    "max_notional_eure": "decimal",
    "max_outstanding_eure": "decimal",
    "min_btc": "base",
    "max_btc": "base",
    "min_eure": "quote",
    "max_eure": "quote",
    "max_min_deadline_ms": "int",
    "min_edge_bps": "decimal",
    "price_band_bps": "decimal",
    "daily_loss_limit_eure": "decimal",
    "max_drawdown_eure": "decimal",
    "max_portfolio_drop_eure": "decimal",
}
#: the configuration variable behind each limit (its default and source when no PUT /limits set it)
LIMIT_VARS: dict[str, str] = {
    "max_notional_eure": "STRATEGY_MAX_NOTIONAL_EURE",
    "max_outstanding_eure": "STRATEGY_MAX_OUTSTANDING_EURE",
    "min_btc": "STRATEGY_MIN_BTC",
    "max_btc": "STRATEGY_MAX_BTC",
    "min_eure": "STRATEGY_MIN_EURE",
    "max_eure": "STRATEGY_MAX_EURE",
    "max_min_deadline_ms": "STRATEGY_MAX_MIN_DEADLINE_MS",
    "min_edge_bps": "STRATEGY_MIN_EDGE_BPS",
    "price_band_bps": "STRATEGY_PRICE_BAND_BPS",
    "daily_loss_limit_eure": "STRATEGY_DAILY_LOSS_LIMIT_EURE",
    "max_drawdown_eure": "STRATEGY_MAX_DRAWDOWN_EURE",
    "max_portfolio_drop_eure": "STRATEGY_MAX_PORTFOLIO_DROP_EURE",
}
STORED_SOURCE = "stored PUT /limits"
_CONFIG_SOURCES = {"env": "environment", ".env": ".env file", "default": "default"}


def is_late_rejection(error: str | None) -> bool:
    """Whether a rejected ``quote_response`` was refused for coming after its relay window."""
    if not error:
        return False
    text = error.lower()
    return any(marker in text for marker in LATE_REJECTION_MARKERS)


@dataclass
class Counters:
    requests: int = 0
    quoted: int = 0
    commands: int = 0
    declined: int = 0
    fills: int = 0
    late_rejections: int = 0  # relay rejections caused by our own lateness (never a venue error)
    late_drops: int = 0  # executor ``dropped_late`` results (never a venue error)
    venue_error_pauses: int = 0  # times the venue-error streak paused quoting
    command_publish_failures: int = 0  # commands the bus refused (the decision says command_publish_failed)


class StrategyEngine(Service):
    name = "strategy-engine"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        c = self.config
        self.pair = self.ctx.assets.active_pair
        self.params = PricingParams(
            base_edge_bps=c["STRATEGY_BASE_EDGE_BPS"],
            vol_multiplier=c["STRATEGY_VOL_MULTIPLIER"],
            option_multiplier=c["STRATEGY_OPTION_MULTIPLIER"],
            skew_bps=c["STRATEGY_SKEW_BPS"],
            size_bps_per_eure=c["STRATEGY_SIZE_BPS_PER_EURE"],
            reaction_ms=c["INGEST_RELAY_WINDOW_MS"],
            fee_in_price=c["STRATEGY_FEE_IN_PRICE"],
        )
        self.human_limits: dict[str, Decimal] = {
            "max_notional_eure": c["STRATEGY_MAX_NOTIONAL_EURE"],
            "max_outstanding_eure": c["STRATEGY_MAX_OUTSTANDING_EURE"],
            "min_btc": c["STRATEGY_MIN_BTC"],
            "max_btc": c["STRATEGY_MAX_BTC"],
            "min_eure": c["STRATEGY_MIN_EURE"],
            "max_eure": c["STRATEGY_MAX_EURE"],
            "max_min_deadline_ms": Decimal(c["STRATEGY_MAX_MIN_DEADLINE_MS"]),
            "min_edge_bps": c["STRATEGY_MIN_EDGE_BPS"],
            "price_band_bps": c["STRATEGY_PRICE_BAND_BPS"],
            "daily_loss_limit_eure": c["STRATEGY_DAILY_LOSS_LIMIT_EURE"],
            "max_drawdown_eure": c["STRATEGY_MAX_DRAWDOWN_EURE"],
            "max_portfolio_drop_eure": c["STRATEGY_MAX_PORTFOLIO_DROP_EURE"],
        }
        self.limit_sources: dict[str, str] = {
            k: _CONFIG_SOURCES.get(c.sources.get(var, "default"), "default") for k, var in LIMIT_VARS.items()
        }
        self.limits = self._domain_limits(self.human_limits)
        self.buffer_ms: int = c["EXECUTOR_DEADLINE_BUFFER_MS"]
        self.shedder = AgeShedder(c["SHED_REQUEST_AGE_MS"] * MS)
        self.reference_stale_ns: int = c["REFERENCE_STALE_MS"] * MS
        self.inventory_stale_ns: int = c["STRATEGY_INVENTORY_STALE_MS"] * MS
        partners = c["STRATEGY_ALLOWED_PARTNER_IDS"]
        self.allowed_partners = {p.strip() for p in partners.split(",") if p.strip()} if partners else None
        self.armed = False
        self.disarmed_by: str | None = None
        self.reference: ReferencePrice | None = None
        self.reference_rx_ns = 0
        self.last_jump_ns: int | None = None
        self.fee_pips: int | None = None
        self.fill_confirm_timeout_ns: int = c["STRATEGY_FILL_CONFIRM_TIMEOUT_MS"] * MS
        self.keeper = ReservationKeeper(fill_confirm_timeout_ns=self.fill_confirm_timeout_ns)
        self.rebuilt: dict[str, Any] | None = None
        self.summary_seq = 0
        self._summary_changed = asyncio.Event()
        self._summary_changed.set()  # the first summary goes out as soon as the engine runs
        self.seen_quotes: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._unpublished: dict[str, TradeDecision] = {}  # quote id -> decision the bus refused
        self.venue_error_streak = 0
        self.venue_error_until_ns = 0
        self.loss_guard = LossGuard(
            self.limits.daily_loss_limit_eure,
            self.limits.max_drawdown_eure,
            self.limits.max_portfolio_drop_eure,
        )
        self.last_mtm_pnl: Decimal | None = None  # flow-adjusted mark-to-market PnL, EURe
        self.last_portfolio_value: Decimal | None = None  # flow-adjusted portfolio value, EURe
        self.last_metrics_ns: int | None = None
        self.counters = Counters()
        self.declines: collections.Counter[str] = collections.Counter()
        self.last_decisions: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self._subs: list[Any] = []
        # memory bus: publishing never waits, so a request is finished inline (no extra loop turn)
        self._pipelined = ctx.bus.describe().get("backend") != "memory"

    # -- limits ----------------------------------------------------------------------------------
    def _domain_limits(self, human: dict[str, Decimal]) -> Limits:
        base, quote = self.pair.base, self.pair.quote
        return Limits(
            max_notional_eure=human["max_notional_eure"],
            min_base_units=to_units(base, human["min_btc"], Rounding.CEIL),
            max_base_units=to_units(base, human["max_btc"], Rounding.FLOOR),
            min_quote_units=to_units(quote, human["min_eure"], Rounding.CEIL),
            max_quote_units=to_units(quote, human["max_eure"], Rounding.FLOOR),
            max_outstanding_eure=human["max_outstanding_eure"],
            max_min_deadline_ms=int(human["max_min_deadline_ms"]),
            min_edge_bps=human["min_edge_bps"],
            price_band_bps=human["price_band_bps"],
            daily_loss_limit_eure=human["daily_loss_limit_eure"],
            max_drawdown_eure=human["max_drawdown_eure"],
            max_portfolio_drop_eure=human["max_portfolio_drop_eure"],
        )

    def validate_limits(self, changes: dict[str, Any]) -> dict[str, Decimal]:
        if not changes:
            raise HttpError(400, "no limits given", known=sorted(LIMIT_FIELDS))
        unknown = sorted(set(changes) - set(LIMIT_FIELDS))
        if unknown:
            raise HttpError(400, f"unknown limit(s): {', '.join(unknown)}", known=sorted(LIMIT_FIELDS))
        merged = dict(self.human_limits)
        for key, raw in changes.items():
            try:
                value = parse_plain_decimal(raw, name=key)
            except InputError as exc:
                raise HttpError(400, str(exc)) from None
            if LIMIT_FIELDS[key] == "int" and value != value.to_integral_value():
                raise HttpError(400, f"{key} must be a whole number")
            if value > Decimal(10) ** 15:
                raise HttpError(400, f"{key} is too large")
            merged[key] = value
        if merged["min_btc"] > merged["max_btc"]:
            raise HttpError(400, "min_btc must not exceed max_btc")
        if merged["min_eure"] > merged["max_eure"]:
            raise HttpError(400, "min_eure must not exceed max_eure")
        if merged["max_min_deadline_ms"] < 1000:
            raise HttpError(400, "max_min_deadline_ms must be at least 1000")
        return merged

    def apply_limits(self, merged: dict[str, Decimal]) -> None:
        self.human_limits = merged
        self.limits = self._domain_limits(merged)
        self.loss_guard.daily_limit_eure = self.limits.daily_loss_limit_eure
        self.loss_guard.drawdown_limit_eure = self.limits.max_drawdown_eure
        self.loss_guard.portfolio_drop_limit_eure = self.limits.max_portfolio_drop_eure

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        store = self.ctx.store
        if store is not None:
            saved = await store.get_state(LIMITS_STATE_KEY)
            if isinstance(saved, dict):
                marked = saved.get("_set")
                stored = set(marked) & set(LIMIT_FIELDS) if isinstance(marked, list) else set(LIMIT_FIELDS)
                chosen = {k: v for k, v in saved.items() if k in stored}
                try:
                    if chosen:
                        self.apply_limits(self.validate_limits(chosen))
                        self.limit_sources.update(dict.fromkeys(chosen, STORED_SOURCE))
                except HttpError as exc:
                    log.warning("ignoring persisted limits: %s", exc)
        log.info(
            "%s limits at start: %s",
            self.name,
            ", ".join(f"{k}={self.human_limits[k]} ({self.limit_sources[k]})" for k in LIMIT_FIELDS),
        )
        await self._rebuild_reservations()
        self._subs = [
            await self.subscribe(["market.reference_price"], f"{self.name}-reference", self._on_reference),
            await self.subscribe(["inventory.snapshot"], f"{self.name}-inventory", self._on_inventory),
            await self.subscribe(["exec.trade_result"], f"{self.name}-results", self._on_result),
            await self.subscribe(["demand.quote_status"], f"{self.name}-status", self._on_status),
            await self.subscribe(["portfolio.metrics"], f"{self.name}-metrics", self._on_metrics),
            await self.subscribe(["liquidity.action"], f"{self.name}-liquidity", self._on_liquidity),
            await self.subscribe(["control.operator_action"], f"{self.name}-control", self._on_control),
            await self.subscribe(["demand.swap_request"], f"{self.name}-demand", self._on_request),
        ]

    async def run(self) -> None:
        self.spawn(self._publish_summaries(), "reservations")
        while True:
            await asyncio.sleep(0.5)
            self.expire_reservations()

    @property
    def book(self) -> ReservationBook:
        return self.keeper.book

    @property
    def inventory(self) -> InventorySnapshot | None:
        """The latest inventory snapshot in use (see :meth:`ReservationKeeper.on_snapshot`)."""
        return self.keeper.inventory

    def expire_reservations(self) -> None:
        """Unfilled reservations past their deadline (plus margin) go; filled ones and withdrawal holds
        no snapshot confirmed within ``STRATEGY_FILL_CONFIRM_TIMEOUT_MS`` go too, logged and counted."""
        expired, fills, holds = self.keeper.expire(self.clock.now_ns())
        for res in fills:
            log.warning(
                "%s: fill of quote %s (%s) not confirmed by any inventory snapshot within %d ms: "
                "reservation of %d %s released",
                self.name,
                res.quote_hash,
                res.command_id,
                self.fill_confirm_timeout_ns // MS,
                res.amount_out,
                res.asset_out,
            )
        for hold in holds:
            log.warning(
                "%s: withdrawal %s not shown by any inventory snapshot within %d ms: hold of %d %s released",
                self.name,
                hold.hold_id,
                self.fill_confirm_timeout_ns // MS,
                hold.amount,
                hold.asset,
            )
        if expired or fills or holds:
            self._summary_changed.set()

    # -- reservations: restart rebuild and the summary ---------------------------------------------
    async def _rebuild_reservations(self) -> None:
        """Rebuild the book from the store (see the module docstring); without a store it starts empty."""
        store = self.ctx.store
        if store is None:
            log.warning("%s: no history store: the reservation book starts empty", self.name)
            return
        now = self.clock.now_ns()
        max_deadline_ns = (int(self.human_limits["max_min_deadline_ms"]) + self.buffer_ms) * MS
        # a command older than any deadline it could carry (plus margin) can no longer settle
        commands_since = now - max_deadline_ns - 2 * RESERVATION_MARGIN_NS
        settled_since = now - self.fill_confirm_timeout_ns
        try:
            records = await store.reservation_records(
                commands_since_ns=commands_since, settled_since_ns=min(settled_since, commands_since)
            )
            signed = await store.live_signed_quotes(now - RESERVATION_MARGIN_NS)
        except IntentsMMError as exc:
            # Quoting with an empty book after a restart could promise the same funds twice.
            raise IntentsMMError(f"{self.name}: cannot rebuild the reservation book: {exc}") from None
        self.keeper.rebuild(records, signed, now, pair=self.pair, buffer_ms=self.buffer_ms)
        self.rebuilt = {
            "live": len(self.book.live),
            "filled_unconfirmed": self.book.filled_unconfirmed(),
            "holds": len(self.book.holds),
            "commands_read": len(records.commands),
            "at_ns": now,
        }
        log.info(
            "%s: reservation book rebuilt from the store: %d live (%d filled awaiting a snapshot), "
            "%d withdrawal holds; reserved out %s",
            self.name,
            len(self.book.live),
            self.book.filled_unconfirmed(),
            len(self.book.holds),
            {a.symbol: format_units(a, self.book.promised(a.token_id)) for a in self.pair.assets()},
        )

    def reservation_summary(self) -> ReservationSummary:
        assets = [a.token_id for a in self.pair.assets()]
        self.summary_seq += 1
        return ReservationSummary(
            reserved_out={a: self.book.reserved_out(a) for a in assets},
            held={a: self.book.held(a) for a in assets},
            hold_ids=sorted(self.book.holds),
            live=len(self.book.live),
            filled_unconfirmed=self.book.filled_unconfirmed(),
            balances_block_height=self.keeper.balances_block,
            seq=self.summary_seq,
            started_ns=self.started_ns,
            ts_ns=self.clock.now_ns(),
        )

    async def _publish_summaries(self) -> None:
        """``risk.reservations`` on every change (coalesced) and as a heartbeat."""
        while True:
            try:
                await asyncio.wait_for(self._summary_changed.wait(), timeout=SUMMARY_HEARTBEAT_S)
            except TimeoutError:
                pass
            self._summary_changed.clear()
            summary = self.reservation_summary()
            try:
                await self.publish(
                    RESERVATIONS, summary, msg_id=f"reservations:{self.started_ns}:{summary.seq}"
                )
            except IntentsMMError as exc:
                log.warning("%s: reservation summary not published: %s", self.name, exc)
            await asyncio.sleep(SUMMARY_COALESCE_S)

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.stop()

    # -- inputs ----------------------------------------------------------------------------------
    async def _on_reference(self, d: Delivery) -> None:
        payload = decode(d.data).payload
        if isinstance(payload, ReferencePrice):
            self.reference = payload
            self.reference_rx_ns = self.clock.now_ns()
            if payload.jump_detected:
                self.last_jump_ns = self.reference_rx_ns
        await d.ack()

    async def _on_inventory(self, d: Delivery) -> None:
        payload = decode(d.data).payload
        if isinstance(payload, InventorySnapshot):
            if not payload.stale and payload.fee_pips is not None:
                self.fee_pips = payload.fee_pips
            if self.keeper.on_snapshot(payload):
                self._summary_changed.set()
        await d.ack()

    async def _on_result(self, d: Delivery) -> None:
        payload = decode(d.data).payload
        if isinstance(payload, TradeResult):
            if self.keeper.on_result(payload):
                self.counters.fills += 1
            self._summary_changed.set()
            if payload.outcome == "accepted":
                self.venue_error_streak = 0
            elif payload.outcome == "dropped_late":
                self.counters.late_drops += 1  # our lateness: neither counts nor breaks the streak
            elif payload.outcome == "rejected" and is_late_rejection(payload.error):
                self.counters.late_rejections += 1
            elif payload.outcome in ("rejected", "error"):
                self.venue_error_streak += 1
                if self.venue_error_streak == VENUE_ERROR_STREAK:
                    self.counters.venue_error_pauses += 1
                if self.venue_error_streak >= VENUE_ERROR_STREAK:
                    self.venue_error_until_ns = self.clock.now_ns() + VENUE_ERROR_COOLDOWN_NS
        await d.ack()

    async def _on_status(self, d: Delivery) -> None:
        payload = decode(d.data).payload
        if isinstance(payload, QuoteStatus) and self.keeper.on_status(payload, self.clock.now_ns()):
            self.counters.fills += 1
            self._summary_changed.set()
        await d.ack()

    async def _on_liquidity(self, d: Delivery) -> None:
        """A withdrawal holds its amount from its request until a snapshot shows the burn."""
        payload = decode(d.data).payload  # InputError: a dead letter (Service.subscribe)
        if isinstance(payload, LiquidityAction) and self.keeper.on_liquidity(payload, self.clock.now_ns()):
            self._summary_changed.set()
        await d.ack()

    async def _on_metrics(self, d: Delivery) -> None:
        payload = decode(d.data).payload
        if isinstance(payload, PortfolioMetrics):
            # the runbook's mark-to-market figure, net of funding (history-writer counts a deposit or
            # withdrawal at the snapshot that shows it, so neither moves these figures)
            mtm = payload.flow_adjusted_mark_to_market_pnl_eure
            value = payload.flow_adjusted_portfolio_value_eure
            if mtm is not None or value is not None:
                now = self.clock.now_ns()
                self.last_metrics_ns = now
                if mtm is not None:
                    self.last_mtm_pnl = mtm
                if value is not None:
                    self.last_portfolio_value = value
                was = self.loss_guard.tripped
                if self.loss_guard.observe(mtm, now, value) is not None and was is None:
                    log.warning("%s paused: %s", self.name, self.loss_guard.tripped)
                    await self._announce_pause(self.loss_guard.tripped)
        await d.ack()

    async def _announce_pause(self, reason: str | None) -> None:
        """Tell the bus quoting paused (the executor cancels the live quotes: cancel-on-move)."""
        action = OperatorAction(
            service=self.name,
            action="pause",
            params={"reason": reason or "paused"},
            actor=f"{self.name}/loss_guard",
            remote="",
            result="ok",
            detail=reason,
        )
        try:
            await self.publish("control.operator_action", action)
        except IntentsMMError as exc:  # the pause itself holds; only the notice is lost
            log.warning("%s: pause notice not published: %s", self.name, exc)

    async def _on_control(self, d: Delivery) -> None:
        """The executor's emergency stop (``/kill``) disarms the strategy over the bus."""
        env = decode(d.data)  # InputError: a dead letter (Service.subscribe)
        payload = env.payload
        if (
            env.ts_ns >= self.started_ns  # a stop from before this process started is history, not an order
            and isinstance(payload, OperatorAction)
            and payload.service == self.name
            and payload.action == "disarm"
            and payload.result == "ok"
            and payload.actor != self.name
        ):
            self.disarm(f"{payload.actor}: {payload.detail or 'disarm'}")
        await d.ack()

    # -- the hot path ----------------------------------------------------------------------------
    async def _on_request(self, d: Delivery) -> None:
        payload = decode(d.data).payload  # InputError: a dead letter (Service.subscribe)
        if isinstance(payload, SwapRequest) and payload.quote_id in self._unpublished:
            # redelivered because its decision record could not be published: publish it now
            self.spawn(self._record_decision(self._unpublished.pop(payload.quote_id), d), "decision")
            return
        if isinstance(payload, SwapRequest) and payload.quote_id not in self.seen_quotes:
            self.seen_quotes[payload.quote_id] = None
            if len(self.seen_quotes) > 50_000:
                self.seen_quotes.popitem(last=False)
            finish = self._prepare(payload)  # decided and reserved: the next request sees it
            if self._pipelined:
                # A bus that waits for the broker's acknowledgement (NATS): the command's publish
                # must not hold up the next request either.
                self.spawn(self._finish_and_record(finish, d), "command")
                return
            decision = await finish()  # the memory bus publishes the command without waiting
            # The decision record is for history: publish it (and ack the request) off the hot path,
            # so the next request does not wait for it (on NATS, for its publish acknowledgement).
            # Unacked requests are bounded by the consumer's max_in_flight.
            self.spawn(self._record_decision(decision, d), "decision")
            return
        await d.ack()

    async def _finish_and_record(self, finish: Callable[[], Awaitable[TradeDecision]], d: Delivery) -> None:
        await self._record_decision(await finish(), d)  # finish() records a failed command publish

    async def _record_decision(self, decision: TradeDecision, d: Delivery) -> None:
        """Publish the decision record (retried a few times: every request gets one), then ack."""
        for attempt in range(DECISION_PUBLISH_ATTEMPTS):
            try:
                await self.publish("decision.trade_decision", decision, msg_id=decision.decision_id)
                break
            except IntentsMMError as exc:
                log.warning("%s: decision %s not published: %s", self.name, decision.decision_id, exc)
                await asyncio.sleep(redelivery_delay_s(attempt + 1))
        else:  # the bus is down: the record waits here for the request's redelivery
            self._unpublished[decision.quote_id] = decision
            while len(self._unpublished) > UNPUBLISHED_DECISIONS_KEPT:
                self._unpublished.pop(next(iter(self._unpublished)))
            with contextlib.suppress(IntentsMMError):
                await d.nak(redelivery_delay_s(d.num_delivered))
            return
        with contextlib.suppress(IntentsMMError):
            await d.ack()

    def guard_reason(self, req: SwapRequest, now: int) -> tuple[str | None, dict[str, Any]]:
        """The first guard that stops quoting, with the inputs it looked at.

        Lateness first, so that a backlog is shed at the cost of a decline: ``relay_window_passed``
        when the relay window ends before a quote could be signed and sent
        (:data:`SIGN_SEND_ALLOWANCE_NS`), ``shed_overload`` when the request waited longer than
        ``SHED_REQUEST_AGE_MS`` since its frame was read, or half of that during an overload
        episode (:class:`AgeShedder`; 0 = no such bound). ``age_ms`` is in the inputs either way.
        Only requests are judged: the ``/state`` probe never sheds (it has no age).
        """
        ref, inv = self.reference, self.inventory
        inputs: dict[str, Any] = {
            "age_ms": round((now - req.received_ts_ns) / MS, 3),
            "reference_quality": ref.quality if ref else None,
            "reference_age_ms": (now - self.reference_rx_ns) // MS if ref else None,
            "inventory_age_ms": (now - inv.read_ts_ns) // MS if inv else None,
            "fee_pips": self.fee_pips,
            "partner_id": req.partner_id,
        }
        if now > req.relay_deadline_ns - SIGN_SEND_ALLOWANCE_NS:
            return "relay_window_passed", inputs
        if self.shedder.shed(now - req.received_ts_ns, now):
            return "shed_overload", inputs
        if self.allowed_partners is not None and req.partner_id not in self.allowed_partners:
            return "partner_not_allowed", inputs
        if ref is None or ref.mid is None or ref.quality == "stale":
            return "reference_stale", inputs
        if (
            now - self.reference_rx_ns > self.reference_stale_ns
            or now - ref.computed_ts_ns > self.reference_stale_ns
        ):
            return "reference_stale", inputs
        if self.last_jump_ns is not None and now - self.last_jump_ns < JUMP_COOLDOWN_NS:
            return "price_jump", inputs
        if inv is None or now - inv.read_ts_ns > self.inventory_stale_ns:
            return "inventory_stale", inputs
        if self.fee_pips is None:
            return "fee_unknown", inputs
        if now < self.venue_error_until_ns:
            return "venue_errors", inputs
        if self.loss_guard.tripped is not None:
            return "loss_limit", inputs
        return None, inputs

    async def decide(self, req: SwapRequest) -> TradeDecision:
        """Decide on ``req``, publish the command (when armed and quoting), then the decision."""
        decision = await self._decide(req)
        await self.publish("decision.trade_decision", decision, msg_id=decision.decision_id)
        return decision

    async def _decide(self, req: SwapRequest) -> TradeDecision:
        """Everything of :meth:`decide` but publishing the decision record."""
        return await self._prepare(req)()

    def _prepare(self, req: SwapRequest) -> Callable[[], Awaitable[TradeDecision]]:
        """Decide and reserve now (synchronously); the returned coroutine function publishes the
        command, if any, and builds the decision record (from values read now)."""
        now = self.clock.now_ns()
        self.counters.requests += 1
        reason, inputs = self.guard_reason(req, now)
        deadline_ms = req.min_deadline_ms + self.buffer_ms
        quote: PricedQuote | None = None
        if reason is None:
            assert (
                self.reference is not None and self.reference.mid is not None and self.inventory is not None
            )
            credited = self.inventory.credited
            base_id = self.pair.base.token_id
            sigma = self.reference.volatility_bps_per_sqrt_s or Decimal(0)
            inv = Inventory(
                base_units=self.book.available(base_id, credited.get(base_id, 0)),
                min_base_units=self.limits.min_base_units,
                max_base_units=self.limits.max_base_units,
            )
            quote = price_quote(
                self.pair,
                QuoteRequest(
                    req.quote_id,
                    req.asset_in,
                    req.asset_out,
                    req.exact_amount_in,
                    req.exact_amount_out,
                    req.min_deadline_ms,
                ),
                reference_mid_fiat=self.reference.mid,
                sigma_bps_per_sqrt_s=sigma,
                deadline_ms=deadline_ms,
                inventory=inv,
                fee_pips=self.fee_pips or 0,
                params=self.params,
            )
            domain_checks = check_limits(
                self.pair,
                quote,
                min_deadline_ms=req.min_deadline_ms,
                credited=credited,
                book=self.book,
                limits=self.limits,
            )
            reason = first_failure(domain_checks)
            # what the record shows, read now (before this quote's reservation); formatted later
            reserved_before = {a: self.book.reserved_out(a) for a in credited}
        decision_id = f"decision:{req.quote_id}"
        outcome: DecisionOutcome = "quote" if reason is None else "decline"
        command: ExecuteTrade | None = None
        if outcome == "quote" and quote is not None and self.armed:
            command = ExecuteTrade(
                command_id=f"cmd:{req.quote_id}",
                decision_id=decision_id,
                quote_id=req.quote_id,
                asset_in=req.asset_in,
                asset_out=req.asset_out,
                amount_in=quote.amount_in,
                amount_out=quote.amount_out,
                exact_side="in" if req.exact_amount_in is not None else "out",
                min_deadline_ms=req.min_deadline_ms,
                relay_deadline_ns=req.relay_deadline_ns,
                reference_mid=quote.mid,
            )
            self.book.reserve(
                Reservation(
                    command_id=command.command_id,
                    quote_id=req.quote_id,
                    asset_in=req.asset_in,
                    amount_in=quote.amount_in,
                    asset_out=req.asset_out,
                    amount_out=quote.amount_out,
                    notional_eure=quote.notional_quote / self.pair.quote_per_fiat,
                    expires_ns=now + deadline_ms * MS,
                )
            )
            self._summary_changed.set()
        armed = self.armed
        reference_mid = self.reference.mid if self.reference else None

        async def finish() -> TradeDecision:
            nonlocal outcome, reason
            checks: list[LimitCheck] = []
            if command is not None:
                try:
                    await self.publish("cmd.execute_trade", command, msg_id=command.command_id)
                except IntentsMMError as exc:
                    # The decision is recorded all the same, with this outcome. The reservation stays
                    # until its deadline: the command may still have reached the bus.
                    outcome, reason = "decline", "command_publish_failed"
                    inputs["command_error"] = str(exc)[:300]
                    self.counters.command_publish_failures += 1
                    log.warning("%s: command %s not published: %s", self.name, command.command_id, exc)
                else:
                    self.counters.commands += 1
                    # Let the executor take the command now; the decision record below is for history.
                    await asyncio.sleep(0)
            if quote is not None:
                checks = [
                    LimitCheck(name=c.name, passed=c.passed, value=c.value, limit=c.limit)
                    for c in domain_checks
                ]
                inputs.update(
                    sigma_bps_per_sqrt_s=str(sigma),
                    credited={k: str(v) for k, v in credited.items()},
                    reserved_out={a: str(v) for a, v in reserved_before.items()},
                    mid_quote_per_base=str(quote.mid),
                    price=str(quote.price),
                    notional_eure=str(quote.notional_quote),
                    edge_bps=str(quote.edge_bps),
                )
            decision = TradeDecision(
                decision_id=decision_id,
                quote_id=req.quote_id,
                outcome=outcome,
                reason=reason or "ok",
                armed=armed,
                asset_in=req.asset_in,
                asset_out=req.asset_out,
                exact_amount_in=req.exact_amount_in,
                exact_amount_out=req.exact_amount_out,
                amount_in=quote.amount_in if quote else None,
                amount_out=quote.amount_out if quote else None,
                reference_mid=reference_mid,
                price_terms=dict(quote.terms_bps) if quote else {},
                limit_checks=checks,
                inputs=inputs,
                deadline_ms=deadline_ms,
            )
            if outcome == "quote":
                self.counters.quoted += 1
            else:
                self.counters.declined += 1
                self.declines[reason or "unknown"] += 1
            self.last_decisions.append(
                {
                    "quote_id": req.quote_id,
                    "outcome": outcome,
                    "reason": reason or "ok",
                    "armed": armed,
                    "command": command is not None,
                    "amount_in": quote.amount_in if quote else None,
                    "amount_out": quote.amount_out if quote else None,
                    "edge_bps": str(quote.edge_bps) if quote else None,
                }
            )
            return decision

        return finish

    # -- control ---------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [
            Route("POST", "/arm", self._arm, mutating=True, action="arm"),
            Route("POST", "/disarm", self._disarm, mutating=True, action="disarm"),
            Route("PUT", "/limits", self._put_limits, mutating=True, action="limits"),
            Route("GET", "/limits", self._get_limits),
        ]

    async def _arm(self, request: web.Request) -> web.Response:
        was_paused = self.loss_guard.tripped
        self.loss_guard.reset(self.last_mtm_pnl, self.last_portfolio_value)
        self.armed = True
        self.disarmed_by = None
        return json_response({"armed": True, "cleared_pause": was_paused})

    async def _disarm(self, request: web.Request) -> web.Response:
        self.armed = False
        return json_response({"armed": False})

    async def _put_limits(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        merged = self.validate_limits(body)
        set_by_put = sorted({k for k, src in self.limit_sources.items() if src == STORED_SOURCE} | set(body))
        if self.ctx.store is not None:
            record: dict[str, Any] = {k: str(v) for k, v in merged.items()}
            record["_set"] = set_by_put
            await self.ctx.store.put_state(LIMITS_STATE_KEY, record)
        self.apply_limits(merged)
        self.limit_sources.update(dict.fromkeys(set_by_put, STORED_SOURCE))
        return json_response({"limits": self.human_limits})

    async def _get_limits(self, request: web.Request) -> web.Response:
        return json_response({"limits": self.human_limits})

    def disarm(self, reason: str = "emergency stop") -> None:
        """Used by the executor's emergency stop: in-process directly, across processes over the bus."""
        if self.armed:
            log.warning("%s disarmed: %s", self.name, reason)
        self.armed = False
        self.disarmed_by = reason

    def _loss_guard_state(self) -> dict[str, Any]:
        g = self.loss_guard
        return {
            "tripped": g.tripped,
            "figure": "flow_adjusted_mark_to_market_pnl_eure",
            "last_mtm_pnl_eure": self.last_mtm_pnl,
            "last_portfolio_value_eure": self.last_portfolio_value,
            "last_metrics_ts_ns": self.last_metrics_ns,
            "daily_pnl_eure": g.daily_pnl(),
            "daily_limit_eure": g.daily_limit_eure,
            "drawdown_eure": g.drawdown(),
            "drawdown_limit_eure": g.drawdown_limit_eure,
            "peak_mtm_pnl_eure": g.peak_pnl,
            "portfolio_drop_eure": g.portfolio_drop(),
            "portfolio_drop_limit_eure": g.portfolio_drop_limit_eure,
            "peak_portfolio_value_eure": g.peak_value,
        }

    def state(self) -> dict[str, Any]:
        now = self.clock.now_ns()
        reasons = []
        probe = SwapRequest(
            quote_id="probe",
            asset_in=self.pair.base.token_id,
            asset_out=self.pair.quote.token_id,
            exact_amount_in=1,
            min_deadline_ms=0,
            received_ts_ns=now,
            relay_deadline_ns=now + SIGN_SEND_ALLOWANCE_NS + 1,
        )
        reason, inputs = self.guard_reason(probe, now)
        if reason is not None:
            reasons.append(reason)
        return {
            "armed": self.armed,
            "disarmed_by": self.disarmed_by,
            "quoting": self.armed and reason is None,
            "paused_reason": self.loss_guard.tripped or reason,
            "pause_reasons": reasons,
            "limits": self.human_limits,
            "pricing": asdict(self.params),
            "reference": {
                "mid": self.reference.mid if self.reference else None,
                "quality": self.reference.quality if self.reference else None,
                "age_ms": inputs["reference_age_ms"],
            },
            "inventory": {
                "credited": {
                    a.symbol: format_units(a, self.inventory.credited.get(a.token_id, 0))
                    for a in self.pair.assets()
                }
                if self.inventory
                else None,
                "age_ms": inputs["inventory_age_ms"],
            },
            "fee_pips": self.fee_pips,
            "reservations": {
                "live": len(self.book.live),
                "filled_unconfirmed": self.book.filled_unconfirmed(),
                "outstanding_eure": self.book.outstanding_eure(),
                "reserved_out": {
                    a.symbol: format_units(a, self.book.reserved_out(a.token_id)) for a in self.pair.assets()
                },
                "withdrawal_holds": {
                    h.hold_id: {"asset": h.asset, "amount": str(h.amount)} for h in self.book.holds.values()
                },
                "held": {a.symbol: format_units(a, self.book.held(a.token_id)) for a in self.pair.assets()},
                "fill_confirm_timeout_ms": self.fill_confirm_timeout_ns // MS,
                "fills_confirmed": self.keeper.fills_confirmed,
                "fill_confirm_timeouts": self.keeper.fill_confirm_timeouts,
                "hold_timeouts": self.keeper.hold_timeouts,
                "summary_seq": self.summary_seq,
                "rebuilt": self.rebuilt,
            },
            "limit_sources": dict(self.limit_sources),
            "loss_guard": self._loss_guard_state(),
            "venue_error_streak": self.venue_error_streak,
            "shedding": {
                "overload_episodes": self.shedder.episodes,
                "overloaded": self.shedder.overloaded(now),
            },
            "counters": asdict(self.counters),
            "declined_by_reason": dict(self.declines),
            "last_decisions": list(self.last_decisions),
        }


class ReservationKeeper:
    """The strategy's reservation state and how each bus input changes it (no I/O, no clock).

    - ``on_snapshot``: a non-stale snapshot from a block at or after the one in use (and after the
      rebuild's) becomes the inventory in use; its ``settled_quote_hashes`` / ``landed_withdrawals``
      release the filled reservations and withdrawal holds its balances now include, in the same
      step, so no decision sees the new balances with the old claims or the reverse.
    - ``on_result``: a live signed quote (``messages.is_live_signed_quote``) keeps its reservation
      until its signed deadline, anything else releases it.
    - ``on_status``: the reservation of the reported quote hash is marked filled; a report whose result
      has not arrived yet is remembered and applied when it does.
    - ``on_liquidity``: withdrawal holds (:func:`apply_withdrawal_action`).
    - ``expire``: unfilled reservations go once balances read past their deadline plus grace are in use;
      filled ones and holds no snapshot confirmed within ``fill_confirm_timeout_ns`` go (counted).
    - ``rebuild``: the book from the store after a restart (:func:`book_from_records`).
    """

    def __init__(self, *, fill_confirm_timeout_ns: int, grace_ns: int = RESERVATION_MARGIN_NS) -> None:
        self.book = ReservationBook()
        self.inventory: InventorySnapshot | None = None
        self.fill_confirm_timeout_ns = fill_confirm_timeout_ns
        self.grace_ns = grace_ns
        self.min_snapshot_block = 0  # after a rebuild: older snapshots predate confirmations applied
        self.early_fills: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.fills_confirmed = 0
        self.fill_confirm_timeouts = 0
        self.hold_timeouts = 0

    @property
    def balances_block(self) -> int:
        """The newest block whose balances released claims (``ReservationSummary.balances_block_height``)."""
        return max(self.min_snapshot_block, self.inventory.block_height if self.inventory else 0)

    def _remember_fill(self, quote_hash: str, ts_ns: int) -> None:
        self.early_fills[quote_hash] = ts_ns
        while len(self.early_fills) > EARLY_FILL_MEMORY:
            self.early_fills.popitem(last=False)

    def on_snapshot(self, snap: InventorySnapshot) -> bool:
        """Apply a snapshot; True when the claims changed."""
        if snap.stale:
            return False
        if snap.block_height >= self.balances_block:
            self.inventory = snap
        confirmed = self.book.confirm(snap.settled_quote_hashes)
        landed = self.book.confirm_withdrawals(snap.landed_withdrawals)
        self.fills_confirmed += len(confirmed)
        return bool(confirmed or landed)

    def on_result(self, result: TradeResult) -> bool:
        """Apply an executor result; True when it marked a reported settlement filled."""
        if is_live_signed_quote(result):
            assert result.quote_hash is not None and result.deadline_ns is not None
            self.book.bind(result.command_id, result.quote_hash, result.deadline_ns)
            filled_ns = self.early_fills.pop(result.quote_hash, None)
            return filled_ns is not None and self.book.fill(result.quote_hash, filled_ns) is not None
        self.book.release(result.command_id)
        return False

    def on_status(self, status: QuoteStatus, now_ns: int) -> bool:
        """Apply a settlement report; True when a reservation was marked filled."""
        if self.book.command_for(status.quote_hash) is None:
            self._remember_fill(status.quote_hash, now_ns)  # its result may still come
            return False
        return self.book.fill(status.quote_hash, now_ns) is not None

    def on_liquidity(self, action: LiquidityAction, now_ns: int) -> bool:
        return apply_withdrawal_action(self.book, action, now_ns)

    def expire(self, now_ns: int) -> tuple[list[Reservation], list[Reservation], list[Hold]]:
        """``(expired unfilled, fills never confirmed, holds never shown)``, all dropped."""
        seen_until = self.inventory.read_ts_ns if self.inventory is not None else 0
        expired = self.book.expire(now_ns, grace_ns=self.grace_ns, seen_until_ns=seen_until)
        fills = self.book.expire_filled(now_ns, safety_ns=self.fill_confirm_timeout_ns)
        holds = self.book.expire_holds(now_ns, safety_ns=self.fill_confirm_timeout_ns)
        self.fill_confirm_timeouts += len(fills)
        self.hold_timeouts += len(holds)
        return expired, fills, holds

    def rebuild(
        self,
        records: ReservationRecords,
        signed: list[tuple[str, str, str, int]],
        now_ns: int,
        *,
        pair: Pair,
        buffer_ms: int,
    ) -> None:
        self.book, unmatched, self.min_snapshot_block = book_from_records(
            records, signed, now_ns, pair=pair, buffer_ms=buffer_ms, grace_ns=self.grace_ns
        )
        self.early_fills.clear()
        for quote_hash, ts in unmatched.items():  # a status whose result comes later
            self._remember_fill(quote_hash, ts)


def apply_withdrawal_action(book: ReservationBook, action: LiquidityAction, now_ns: int) -> bool:
    """Hold or release for one ``liquidity.action`` of kind ``withdraw``; True when the book changed.

    ``requested`` holds the amount. ``failed``/``refused`` release it only when no burn can have
    happened (no ``near_tx_hash`` and the outcome is not unknown); otherwise the hold waits for the
    snapshot that shows the burn (``InventorySnapshot.landed_withdrawals``)."""
    if action.kind != "withdraw" or action.asset_id is None or action.amount is None:
        return False
    if action.status == "requested":
        if action.action_id in book.holds:
            return False
        return book.hold(Hold(action.action_id, action.asset_id, action.amount, now_ns))
    if (
        action.status in ("failed", "refused")
        and action.near_tx_hash is None
        and not action.detail.get("outcome_unknown")
    ):
        return book.release_hold(action.action_id) is not None
    return False


def withdrawal_holds(actions: list[tuple[int, LiquidityAction]], landed: set[str]) -> list[Hold]:
    """The holds still in force after replaying stored ``withdraw`` actions (oldest first)."""
    book = ReservationBook()
    for ts, action in actions:
        apply_withdrawal_action(book, action, ts)
    return [h for h in book.holds.values() if h.hold_id not in landed]


def book_from_records(
    records: ReservationRecords,
    signed: list[tuple[str, str, str, int]],
    now_ns: int,
    *,
    pair: Pair,
    buffer_ms: int,
    grace_ns: int,
) -> tuple[ReservationBook, dict[str, int], int]:
    """The reservation book from the store's records (see the module docstring), the settlement
    reports not matched to any quote (quote hash -> report time: the result may still come) and the
    highest block of the stored snapshots whose confirmations were applied.

    ``signed``: the executor ledger's live signed quotes ``(command_id, quote_hash, nonce, deadline)``;
    they name the quote hash of a command whose result was never stored."""
    results: dict[str, TradeResult] = {}
    for r in records.results:
        if r.command_id not in results or is_live_signed_quote(r):
            results[r.command_id] = r
    ledger = {command_id: (qh, deadline) for command_id, qh, _nonce, deadline in signed}
    status_ns = {st.quote_hash: ts for ts, st in records.statuses}
    confirmed = set(records.confirmed_settlements)
    quote_asset = pair.quote
    quotes: list[RecordedQuote] = []
    seen_hashes: set[str] = set()
    for ts, cmd in records.commands:
        result = results.get(cmd.command_id)
        live = result is not None and is_live_signed_quote(result)
        qh = result.quote_hash if live and result is not None else None
        deadline = result.deadline_ns if live and result is not None else None
        if qh is None and cmd.command_id in ledger:  # signed, but its result was never stored
            qh, deadline = ledger[cmd.command_id]
            live = True
        if qh is not None:
            seen_hashes.add(qh)
        units = cmd.amount_in if cmd.asset_in == quote_asset.token_id else cmd.amount_out
        quotes.append(
            RecordedQuote(
                command_id=cmd.command_id,
                quote_id=cmd.quote_id,
                asset_in=cmd.asset_in,
                amount_in=cmd.amount_in,
                asset_out=cmd.asset_out,
                amount_out=cmd.amount_out,
                notional_eure=Decimal(units).scaleb(-quote_asset.decimals) / pair.quote_per_fiat,
                latest_deadline_ns=ts + (cmd.min_deadline_ms + buffer_ms) * MS,
                has_result=result is not None or live,
                live_signed=live,
                quote_hash=qh,
                deadline_ns=deadline,
                settled_ns=status_ns.get(qh) if qh is not None else None,
                confirmed=qh is not None and qh in confirmed,
            )
        )
    # fills older than the command window, still waiting for a confirming snapshot
    for st in records.settlements:
        if st.quote_hash in seen_hashes or st.quote_hash in confirmed:
            continue
        seen_hashes.add(st.quote_hash)
        quotes.append(
            RecordedQuote(
                command_id=st.command_id or f"settlement:{st.quote_hash}",
                quote_id=st.quote_id or "",
                asset_in=st.asset_in,
                amount_in=st.amount_in,
                asset_out=st.asset_out,
                amount_out=st.amount_out,
                notional_eure=Decimal(0),
                latest_deadline_ns=st.settled_ts_ns,
                has_result=True,
                live_signed=True,
                quote_hash=st.quote_hash,
                settled_ns=st.settled_ts_ns,
            )
        )
    holds = withdrawal_holds(records.withdraw_actions, set(records.landed_withdrawals))
    book = rebuild_book(quotes, holds, now_ns, grace_ns=grace_ns)
    unmatched = {qh: ts for qh, ts in status_ns.items() if qh not in seen_hashes and qh not in confirmed}
    return book, unmatched, records.latest_snapshot_block
