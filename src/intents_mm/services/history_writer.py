"""history-writer (8085): persistence, settlement follow-up with markouts, portfolio value and PnL.

Three jobs, one service:

- **Persistence.** :class:`~intents_mm.storage.persistence.HistoryPersister` stores every bus subject in
  its table (batches, idempotent by ``msg_id``, acked only after commit or a durable spill).
  While the store cannot be written the persister spills what it received to the local journal
  ``<INTENTS_MM_VAR_DIR>/history-writer/journal/`` (fsynced, then acked) and replays it
  into the store at the next start (before the start-up read-back below, waiting at most
  :data:`STARTUP_REPLAY_WAIT_S`) and once the store is back, so a crash during an outage loses
  nothing (:mod:`intents_mm.storage.journal`). ``/healthz`` fails (503) while the store does not answer
  (a ping every few seconds, and the persister's own write failures), saying why and how many rows
  the journal holds; ``/state`` shows the journal (``persister.journal``) and the messages the store
  refused, which are put aside in ``journal/rejected.jsonl``.
- **Settlement follow-up.** Each ``demand.quote_status`` is matched by ``quote_hash`` to our
  ``exec.trade_result`` that makes it a live signed quote (:func:`~intents_mm.messages.is_live_signed_quote`:
  ``accepted``, or ``error`` carrying a quote hash and deadline, e.g. a reply timeout or "already
  signed": the quote may be at the relay) (either may arrive first; on start the recent rows
  of both tables are read back from the store, and a status whose result is not in memory is looked
  up in the store by its quote hash, so a restart loses nothing however many quotes were live) and
  recorded as a
  :class:`~intents_mm.messages.Settlement` with the BTC/EUR reference mid at fill. Markouts at 1 s,
  10 s, 60 s and 5 min are filled in once each horizon has passed (price from the in-memory history,
  else ``market_price_events``). A quote status that matches none of our accepted results within
  :data:`STATUS_MATCH_WINDOW_NS` is counted (``unknown_quote_hashes``) and dropped.
- **Portfolio metrics**, exactly as the runbook defines them (see :func:`portfolio_metrics`): baseline
  = the last credited snapshot before the first ``cmd.execute_trade`` with the reference price at
  that time; current = the latest snapshot and the latest reference price; the three PnL figures via
  :func:`intents_mm.domain.pnl.compute_pnl`, also net of deposits and withdrawals (the flow-adjusted
  figures, and ``flow_adjusted_portfolio_value_eure``); fills, volume and average edge from the
  settlements. Published as ``portfolio.metrics`` every ``HISTORY_METRICS_MS`` and served on
  ``GET /portfolio-metrics`` (every number a string). strategy-engine's loss guards read the
  flow-adjusted mark-to-market PnL and portfolio value.
- **Funding is counted at the snapshot that shows it** (see :class:`FundingLedger`), so no PnL figure
  moves, even for one snapshot, on a deposit or a withdrawal. Each non-stale ``inventory.snapshot``
  that becomes the current one is reconciled against the previous one with inventory-sync's own
  :class:`~intents_mm.services.inventory_sync.Reconciler`, fed the same messages: settlements
  (``exec.trade_result`` accepted: candidate; its ``demand.quote_status``: confirmed), withdrawals
  (``liquidity.action`` ``withdraw``/``track_withdrawal`` ``requested``: candidate; ``withdraw``
  ``submitted``, i.e. the ``ft_withdraw`` burn sent: confirmed; ``failed``/``refused`` with no burn
  sent: forgotten) and deposits (a ``liquidity.state`` pending deposit: candidate;
  ``deposit_credited`` ``completed``: confirmed). A withdrawal or deposit that explains the balance
  change of a snapshot (an exact match, else a confirmed one overdue or fitting inside the change)
  is counted as a flow from that snapshot on (its ``read_ts_ns``), never earlier and never later;
  the bridge's ``completed`` for a withdrawal changes nothing. A confirmed flow never seen in the
  balances within the reconciler's grace is not counted (the balance did not move). The flows
  counted are kept in the store (``history-writer.funding``) so a restart neither loses nor
  repeats them; flows still pending are read back from ``liquidity_actions`` and reconciled against
  the last stored snapshot (with the settlements read back on start). A later step of a withdrawal
  (``pending``/``completed``) confirms its burn like ``submitted``. A store written before this rule
  (no saved state) counts each confirmed flow from before the last stored snapshot as already in it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal, localcontext
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
from aiohttp import web

from intents_mm import messages as m
from intents_mm.bus.port import Delivery, Subscription
from intents_mm.domain.amounts import format_units
from intents_mm.domain.assets import Pair
from intents_mm.domain.pnl import compute_pnl, markout_bps
from intents_mm.errors import BusError, IntentsMMError, StoreError
from intents_mm.services.inventory_sync import MIN_GRACE_NS, Reconciler
from intents_mm.services.runtime import Check, Route, Service, ServiceContext, json_response
from intents_mm.storage.journal import SpillJournal
from intents_mm.storage.persistence import HistoryPersister
from intents_mm.storage.store import MARKOUT_HORIZONS_S, HistoryStore

log = logging.getLogger("intents_mm.services.history_writer")

SECOND_NS: Final = 1_000_000_000
MS_NS: Final = 1_000_000

#: Subjects the follow-up consumer reads (the persister reads every subject on its own durable).
FOLLOW_SUBJECTS: Final = (
    m.QUOTE_STATUS,
    m.TRADE_RESULT,
    m.EXECUTE_TRADE,
    m.INVENTORY_SNAPSHOT,
    m.REFERENCE_PRICE,
    m.LIQUIDITY_ACTION,
    m.LIQUIDITY_STATE,
)
FOLLOW_DURABLE: Final = "history-writer-follow"
#: A quote status with no accepted result of ours after this long (from its receipt) is not ours.
STATUS_MATCH_WINDOW_NS: Final = 300 * SECOND_NS
#: An accepted result waits this long past its deadline for its quote status (then it expired unused).
RESULT_GRACE_NS: Final = 600 * SECOND_NS
#: Reference prices kept in memory (covers the longest markout horizon with room to spare).
PRICE_RETENTION_NS: Final = 900 * SECOND_NS
#: A markout whose horizon has passed by this much with no price at all is given up (stays NULL).
MARKOUT_GIVE_UP_NS: Final = 600 * SECOND_NS
#: Credited inventory snapshots kept in memory to find the baseline without the store.
SNAPSHOT_KEEP: Final = 512
#: Rows of trade_execution_results / quote_status_events read back on start.
SEED_ROWS: Final = 5000
PAGE: Final = 1000
STORE_PING_S: Final = 5.0
STORE_COUNTS_S: Final = 15.0
STEP_S: Final = 1.0
PUBLISH_TIMEOUT_S: Final = 10.0
#: start() waits at most this long for the spill journal's replay before reading the store back.
STARTUP_REPLAY_WAIT_S: Final = 15.0
#: ``ctx.overrides`` key: the spill journal's directory
#: (default ``<INTENTS_MM_VAR_DIR>/history-writer/journal``).
JOURNAL_DIR_OVERRIDE: Final = "history_journal_dir"

#: Where the counted funding flows are kept (store key-value state).
FUNDING_STATE_KEY: Final = "history-writer.funding"


# ============================================================================ pure building blocks


@dataclass(frozen=True, slots=True)
class PricePoint:
    """One reference price message: envelope time, EUR mid (None when the aggregate had none)."""

    ts_ns: int
    mid: Decimal | None
    quality: str
    computed_ts_ns: int


class PriceHistory:
    """Reference prices ordered by envelope time, pruned to ``retention_ns`` behind the newest.

    The newest point with a mid is always kept, however old, so a stale feed is still visible.
    """

    def __init__(self, retention_ns: int = PRICE_RETENTION_NS) -> None:
        self._retention_ns = retention_ns
        self._ts: list[int] = []
        self._points: list[PricePoint] = []
        self._latest_mid: PricePoint | None = None

    def __len__(self) -> int:
        return len(self._points)

    def add(self, point: PricePoint) -> None:
        i = bisect.bisect_right(self._ts, point.ts_ns)
        self._ts.insert(i, point.ts_ns)
        self._points.insert(i, point)
        if point.mid is not None and (self._latest_mid is None or point.ts_ns >= self._latest_mid.ts_ns):
            self._latest_mid = point
        cut = bisect.bisect_left(self._ts, self._ts[-1] - self._retention_ns)
        if cut:
            del self._ts[:cut]
            del self._points[:cut]

    def latest(self) -> PricePoint | None:
        """The newest message (with or without a mid)."""
        newest = self._points[-1] if self._points else None
        if newest is None or (self._latest_mid is not None and self._latest_mid.ts_ns > newest.ts_ns):
            return self._latest_mid
        return newest

    def latest_mid(self) -> PricePoint | None:
        """The newest message that carried a mid."""
        return self._latest_mid

    def mid_at(self, ts_ns: int) -> PricePoint | None:
        """The newest point with a mid at or before ``ts_ns`` held in memory, else ``None``."""
        i = bisect.bisect_right(self._ts, ts_ns)
        while i > 0:
            i -= 1
            if self._points[i].mid is not None:
                return self._points[i]
        held = self._latest_mid
        if held is not None and held.ts_ns <= ts_ns and (not self._ts or held.ts_ns < self._ts[0]):
            return held
        return None


@dataclass(frozen=True, slots=True)
class Baseline:
    """The PnL baseline: credited balances before the first command and the EUR mid at that time."""

    command_ts_ns: int
    snapshot_ts_ns: int
    inventory: dict[str, int]
    price: Decimal  # EUR per BTC


@dataclass(frozen=True, slots=True)
class Flow:
    """An external deposit (positive) or withdrawal (negative) of one asset, counted from the
    inventory snapshot read at ``ts_ns`` (the first one whose balances show it)."""

    ts_ns: int
    asset_id: str
    amount: int


def flow_key(action: m.LiquidityAction) -> str | None:
    """The reconciler's key of a funding action (``deposit:<tx>``, ``withdraw:<action id>``), or None."""
    if action.kind == "deposit_credited":
        return f"deposit:{action.detail.get('tx_hash') or action.action_id}"
    if action.kind in ("withdraw", "track_withdrawal"):
        return f"withdraw:{action.action_id}"
    return None


def balance_moved(action: m.LiquidityAction) -> bool:
    """True when the action says the Verifier balance has moved (or been sent to move): a credited
    deposit, a withdrawal's burn submitted, a tracked withdrawal (its burn exists already)."""
    if action.kind == "deposit_credited":
        return action.status == "completed"
    if action.kind == "withdraw":
        return action.status in ("submitted", "pending", "completed")
    if action.kind == "track_withdrawal":
        return action.status not in ("failed", "refused")
    return False


class FundingLedger:
    """Deposits and withdrawals counted at the inventory snapshot that shows them (see the module
    docstring). ``observe_*`` feed the reconciler; :meth:`on_snapshot` reconciles one snapshot and
    returns the flows it showed; :attr:`landed` holds every flow counted, by reconciler key."""

    def __init__(self, assets: list[str], grace_ns: int) -> None:
        self.reconciler = Reconciler(assets, grace_ns)
        self.landed: dict[str, Flow] = {}
        self.last_credited: dict[str, int] | None = None
        self.snapshots = 0
        self.unexplained = 0

    def on_action(self, action: m.LiquidityAction, ts_ns: int) -> None:
        key = flow_key(action)
        if key is None or key in self.landed:
            return
        if action.kind == "withdraw" and action.status in ("pending", "completed"):
            # a later step of a withdrawal says its burn was sent (its ``submitted`` may be missing)
            action = msgspec.structs.replace(action, status="submitted")
        self.reconciler.on_liquidity_action(action, ts_ns)

    def on_snapshot(self, snap: m.InventorySnapshot, ts_ns: int) -> list[Flow]:
        """Reconcile ``snap`` (the new current, non-stale snapshot) against the previous one."""
        before, self.last_credited = self.last_credited, dict(snap.credited)
        if before is None:
            return []
        self.snapshots += 1
        pending = dict(self.reconciler.expectations)
        rec = self.reconciler.reconcile(before, snap.credited, ts_ns)
        if rec.unexplained:
            self.unexplained += 1
        explained = set(rec.explained_by)
        flows: list[Flow] = []
        for key, exp in pending.items():
            if key in self.reconciler.expectations or exp.label not in explained:
                continue  # still pending, expired, or consumed as overdue without being seen
            if not key.startswith(("deposit:", "withdraw:")) or key in self.landed:
                continue
            for asset, delta in exp.deltas.items():
                flow = Flow(snap.read_ts_ns, asset, delta)
                self.landed[key] = flow
                flows.append(flow)
        return flows

    def net_flows(self, since_ts_ns: int) -> dict[str, int]:
        """Deposits minus withdrawals per asset counted at snapshots read after ``since_ts_ns``."""
        out: dict[str, int] = {}
        for flow in self.landed.values():
            if flow.ts_ns > since_ts_ns:
                out[flow.asset_id] = out.get(flow.asset_id, 0) + flow.amount
        return out

    def pending(self) -> int:
        return sum(1 for k in self.reconciler.expectations if k.startswith(("deposit:", "withdraw:")))

    def to_state(self) -> dict[str, Any]:
        return {
            "landed": {
                k: {"ts_ns": f.ts_ns, "asset_id": f.asset_id, "amount": str(f.amount)}
                for k, f in self.landed.items()
            }
        }

    def load_state(self, state: Any) -> bool:
        """Restore the counted flows; False when ``state`` is not a saved ledger (nothing restored)."""
        if not isinstance(state, dict) or not isinstance(state.get("landed"), dict):
            return False
        for key, raw in state["landed"].items():
            try:
                self.landed[str(key)] = Flow(int(raw["ts_ns"]), str(raw["asset_id"]), int(raw["amount"]))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("history-writer: ignoring a stored funding flow %s: %s", key, exc)
        return True


@dataclass(slots=True)
class FillTotals:
    """Running totals over settled fills: count, EURe volume, and edge where the mid at fill is known."""

    count: int = 0
    volume_eure: Decimal = Decimal(0)
    edge_eure: Decimal = Decimal(0)
    edge_notional_eure: Decimal = Decimal(0)

    def avg_edge_bps(self) -> Decimal | None:
        if self.edge_notional_eure <= 0:
            return None
        with localcontext() as ctx:
            ctx.prec = 60
            return (self.edge_eure / self.edge_notional_eure * 10_000).quantize(Decimal("0.01"))


@dataclass(frozen=True, slots=True)
class Fill:
    """One fill from our side: ``buy`` = we received the base asset."""

    side: Literal["buy", "sell"]
    base_units: int
    quote_units: int

    def price(self, pair: Pair) -> Decimal:
        """Quote (EURe) per base (BTC), human units, exact enough for bps (40 digits)."""
        with localcontext() as ctx:
            ctx.prec = 40
            return Decimal(self.quote_units).scaleb(-pair.quote.decimals) / Decimal(self.base_units).scaleb(
                -pair.base.decimals
            )

    def notional_eure(self, pair: Pair) -> Decimal:
        return Decimal(self.quote_units).scaleb(-pair.quote.decimals)

    def edge_eure(self, pair: Pair, mid_quote: Decimal) -> Decimal:
        """``Δb·P + Δe`` at the mid (quote per base): what the fill earned against the reference."""
        quantum = Decimal(1).scaleb(-pair.quote.decimals)
        with localcontext() as ctx:
            ctx.prec = 100
            b = Decimal(self.base_units).scaleb(-pair.base.decimals)
            e = Decimal(self.quote_units).scaleb(-pair.quote.decimals)
            edge = b * mid_quote - e if self.side == "buy" else e - b * mid_quote
            return edge.quantize(quantum, rounding=ROUND_FLOOR)


def fill_of(pair: Pair, asset_in: str, asset_out: str, amount_in: int, amount_out: int) -> Fill | None:
    """The fill of a settlement (``amount_in`` received in ``asset_in``), or None if not the pair."""
    if asset_in == pair.base.token_id and asset_out == pair.quote.token_id:
        fill = Fill("buy", amount_in, amount_out)
    elif asset_in == pair.quote.token_id and asset_out == pair.base.token_id:
        fill = Fill("sell", amount_out, amount_in)
    else:
        return None
    return fill if fill.base_units > 0 and fill.quote_units > 0 else None


def _amounts(credited: Mapping[str, int], pair: Pair) -> tuple[int, int]:
    return credited.get(pair.base.token_id, 0), credited.get(pair.quote.token_id, 0)


def portfolio_metrics(
    pair: Pair,
    *,
    now_ns: int,
    stale_after_ns: int,
    baseline: Baseline | None,
    no_baseline_reason: str | None,
    current: m.InventorySnapshot | None,
    latest_price: PricePoint | None,
    latest_mid: PricePoint | None,
    net_flows: Mapping[str, int],
    fills: FillTotals,
) -> m.PortfolioMetrics:
    """The runbook's portfolio metrics from the baseline, the current book and the reference price.

    Prices are EUR per BTC; valuation uses EURe per BTC = EUR mid × ``pair.quote_per_fiat``. A missing
    or stale price (latest quality ``stale``, no mid, or a mid older than ``stale_after_ns``) sets
    ``price_stale`` and is named in ``reason``; the last known mid still values the book. Figures that
    cannot be computed are None and ``reason`` says why. The flow-adjusted figures (and
    ``flow_adjusted_portfolio_value_eure``) subtract ``net_flows`` (deposits minus withdrawals counted
    since the baseline) from the current book first.
    """
    notes: list[str] = []
    price_stale = False
    mid_point = latest_mid
    if latest_price is None or mid_point is None:
        price_stale = True
        notes.append("no reference price yet")
        mid_point = None
    else:
        if latest_price.mid is None or latest_price.quality == "stale":
            price_stale = True
            notes.append(f"latest reference price is {latest_price.quality} (valued at the last mid)")
        age_ns = now_ns - mid_point.computed_ts_ns
        if age_ns > stale_after_ns:
            price_stale = True
            notes.append(
                f"reference mid is {age_ns // MS_NS} ms old (stale after {stale_after_ns // MS_NS} ms)"
            )
    if current is None:
        notes.append("no inventory snapshot yet")
    elif current.stale:
        notes.append(f"latest inventory snapshot is stale: {current.stale_reason or 'no reason given'}")
    if baseline is None:
        notes.append(no_baseline_reason or "no PnL baseline")

    rate = pair.quote_per_fiat
    value = trade = mtm = move = fa_trade = fa_mtm = fa_move = fa_value = baseline_value = None
    if mid_point is not None and mid_point.mid is not None and current is not None:
        price_t = mid_point.mid * rate
        base_t, quote_t = _amounts(current.credited, pair)
        if baseline is None:
            value = compute_pnl(
                pair,
                base0=base_t,
                quote0=quote_t,
                price0=price_t,
                base_t=base_t,
                quote_t=quote_t,
                price_t=price_t,
            ).portfolio_value_eure
        else:
            price_0 = baseline.price * rate
            base_0, quote_0 = _amounts(baseline.inventory, pair)
            pnl = compute_pnl(
                pair,
                base0=base_0,
                quote0=quote_0,
                price0=price_0,
                base_t=base_t,
                quote_t=quote_t,
                price_t=price_t,
            )
            value, trade, mtm, move = (
                pnl.portfolio_value_eure,
                pnl.trade_pnl_eure,
                pnl.mark_to_market_pnl_eure,
                pnl.price_move_pnl_eure,
            )
            adjusted = compute_pnl(
                pair,
                base0=base_0,
                quote0=quote_0,
                price0=price_0,
                base_t=base_t - net_flows.get(pair.base.token_id, 0),
                quote_t=quote_t - net_flows.get(pair.quote.token_id, 0),
                price_t=price_t,
            )
            fa_trade, fa_mtm, fa_move, fa_value = (
                adjusted.trade_pnl_eure,
                adjusted.mark_to_market_pnl_eure,
                adjusted.price_move_pnl_eure,
                adjusted.portfolio_value_eure,
            )
    if baseline is not None:
        price_0 = baseline.price * rate
        base_0, quote_0 = _amounts(baseline.inventory, pair)
        baseline_value = compute_pnl(
            pair,
            base0=base_0,
            quote0=quote_0,
            price0=price_0,
            base_t=base_0,
            quote_t=quote_0,
            price_t=price_0,
        ).portfolio_value_eure
    return m.PortfolioMetrics(
        computed_ts_ns=now_ns,
        baseline_ts_ns=baseline.snapshot_ts_ns if baseline else None,
        baseline_price=baseline.price if baseline else None,
        current_price=mid_point.mid if mid_point else None,
        price_stale=price_stale,
        baseline_inventory=dict(baseline.inventory) if baseline else {},
        current_inventory=dict(current.credited) if current else {},
        baseline_value_eure=baseline_value,
        portfolio_value_eure=value,
        trade_pnl_eure=trade,
        mark_to_market_pnl_eure=mtm,
        price_move_pnl_eure=move,
        flow_adjusted_trade_pnl_eure=fa_trade,
        flow_adjusted_mark_to_market_pnl_eure=fa_mtm,
        flow_adjusted_price_move_pnl_eure=fa_move,
        net_deposits={k: v for k, v in net_flows.items() if v},
        fills=fills.count,
        volume_eure=fills.volume_eure,
        avg_edge_bps=fills.avg_edge_bps(),
        reason="; ".join(notes) or None,
        current_price_ts_ns=mid_point.computed_ts_ns if mid_point else None,
        flow_adjusted_portfolio_value_eure=fa_value,
    )


def metrics_view(pm: m.PortfolioMetrics, pair: Pair, *, now_ns: int) -> dict[str, Any]:
    """The JSON of ``GET /portfolio-metrics``: every number as a string, plus human balances."""

    def num(value: int | Decimal | None) -> str | None:
        return None if value is None else str(value)

    def human(amounts: Mapping[str, int]) -> dict[str, str]:
        out: dict[str, str] = {}
        for asset in pair.assets():
            if asset.token_id in amounts:
                out[asset.symbol] = format_units(asset, amounts[asset.token_id])
        return out

    if pm.baseline_ts_ns is None:
        status = "no_baseline"
    elif pm.trade_pnl_eure is None:
        status = "incomplete"
    elif pm.price_stale:
        status = "price_stale"
    else:
        status = "ok"
    return {
        "status": status,
        "reason": pm.reason,
        "pair": pair.name,
        "eure_per_eur": str(pair.quote_per_fiat),
        "computed_ts_ns": num(pm.computed_ts_ns),
        "baseline_ts_ns": num(pm.baseline_ts_ns),
        "baseline_price": num(pm.baseline_price),
        "current_price": num(pm.current_price),
        "current_price_ts_ns": num(pm.current_price_ts_ns),
        "price_age_ms": num((now_ns - pm.current_price_ts_ns) // MS_NS) if pm.current_price_ts_ns else None,
        "price_stale": pm.price_stale,
        "baseline_inventory": {k: str(v) for k, v in pm.baseline_inventory.items()},
        "current_inventory": {k: str(v) for k, v in pm.current_inventory.items()},
        "baseline_balances": human(pm.baseline_inventory),
        "current_balances": human(pm.current_inventory),
        "baseline_value_eure": num(pm.baseline_value_eure),
        "portfolio_value_eure": num(pm.portfolio_value_eure),
        "trade_pnl_eure": num(pm.trade_pnl_eure),
        "mark_to_market_pnl_eure": num(pm.mark_to_market_pnl_eure),
        "price_move_pnl_eure": num(pm.price_move_pnl_eure),
        "flow_adjusted_trade_pnl_eure": num(pm.flow_adjusted_trade_pnl_eure),
        "flow_adjusted_mark_to_market_pnl_eure": num(pm.flow_adjusted_mark_to_market_pnl_eure),
        "flow_adjusted_price_move_pnl_eure": num(pm.flow_adjusted_price_move_pnl_eure),
        "flow_adjusted_portfolio_value_eure": num(pm.flow_adjusted_portfolio_value_eure),
        "net_deposits": {k: str(v) for k, v in pm.net_deposits.items()},
        "fills": num(pm.fills),
        "volume_eure": num(pm.volume_eure),
        "avg_edge_bps": num(pm.avg_edge_bps),
    }


# ============================================================================ the service


@dataclass(slots=True)
class _PendingMarkouts:
    settlement: m.Settlement
    fill: Fill
    horizons: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _FollowStats:
    statuses: int = 0
    results_accepted: int = 0
    matched: int = 0
    settlements_written: int = 0
    unknown_quote_hashes: int = 0
    expired_results: int = 0
    results_from_store: int = 0
    markouts_written: int = 0
    markouts_given_up: int = 0


class HistoryWriter(Service):
    """The ``history-writer`` service; see the module docstring for the contract."""

    name = "history-writer"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.pair: Pair = self.ctx.assets.active_pair
        self.store: HistoryStore | None = self.ctx.store
        self.metrics_interval_s = self.config["HISTORY_METRICS_MS"] / 1000
        self.stale_after_ns = int(self.config["REFERENCE_STALE_MS"]) * MS_NS
        journal_dir = self.ctx.overrides.get(JOURNAL_DIR_OVERRIDE)
        self.journal = SpillJournal(
            Path(journal_dir)
            if journal_dir is not None
            else Path(self.config["INTENTS_MM_VAR_DIR"]) / "history-writer" / "journal",
            clock=self.clock,
            store=self.store.url if self.store is not None else None,
        )
        self.persister: HistoryPersister | None = (
            HistoryPersister(self.bus, self.store, journal=self.journal) if self.store is not None else None
        )
        self._subscription: Subscription | None = None
        self._lock = asyncio.Lock()  # one step() at a time
        self._write_lock = asyncio.Lock()  # one writer of settlements and markouts at a time
        self._writes = asyncio.Event()
        # follow-up state
        self.prices = PriceHistory()
        self._credited: list[tuple[int, m.InventorySnapshot]] = []  # credited snapshots by envelope ts
        self._current: tuple[int, m.InventorySnapshot] | None = None
        self._first_cmd_ts: int | None = None
        self._baseline: Baseline | None = None
        self._baseline_error: str | None = None
        grace_ns = max(MIN_GRACE_NS, 3 * int(self.config["INVENTORY_POLL_MS"]) * MS_NS)
        self.funding = FundingLedger([a.token_id for a in self.pair.assets()], grace_ns)
        self._funding_saved = 0  # len(self.funding.landed) last written to the store
        self._results: dict[str, tuple[m.TradeResult, int]] = {}  # quote_hash -> (result, expiry ns)
        self._statuses: dict[str, m.QuoteStatus] = {}  # waiting for their result
        self._looked_up: set[str] = set()  # statuses whose result the store did not have (yet)
        self._settled: OrderedDict[str, None] = OrderedDict()
        self._to_write: dict[str, m.Settlement] = {}
        self._markouts: dict[str, _PendingMarkouts] = {}
        self.fills = FillTotals()
        self._counted: set[str] = set()
        self.follow = _FollowStats()
        # store health
        self.store_ok: bool | None = None
        self.store_error: str | None = None
        self.last_error: str | None = None
        self.counts: dict[str, int] = {}
        self.counts_ts_ns: int | None = None
        self.seeded = False
        self.last_metrics: m.PortfolioMetrics | None = None
        self.metrics_published = 0
        self._next_metrics_ns = 0

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.store is not None:
            await self._ping()
        if self.persister is not None:
            # subscribed before start() returns, so nothing published after readiness is missed
            self.spawn(self.persister.run(), "persister")
            async with asyncio.timeout(30):
                await self.persister.subscribed.wait()
            with contextlib.suppress(TimeoutError):  # what a crash left in the journal, stored first
                async with asyncio.timeout(STARTUP_REPLAY_WAIT_S):
                    await self.persister.startup_replayed.wait()
            await self.seed()  # before the follow-up consumer, so replays find what is settled
        self._subscription = await self.subscribe(
            list(FOLLOW_SUBJECTS), FOLLOW_DURABLE, self._on_delivery, max_in_flight=64
        )

    async def run(self) -> None:
        if self.store is not None:
            self.spawn(self._store_watch(), "store-watch")
            self.spawn(self._settlement_writer(), "settlement-writer")
        while True:
            if not self.seeded and self.store is not None:
                await self.seed()
            try:
                await self.step()
            except IntentsMMError as exc:  # the store or the bus: noted, retried next round
                self._note_error(str(exc))
            await asyncio.sleep(STEP_S)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.stop()
            self._subscription = None

    # -- bus input -------------------------------------------------------------------------------
    async def _on_delivery(self, d: Delivery) -> None:
        env = m.decode(d.data, subject=d.subject)  # InputError: a dead letter (Service.subscribe)
        self.observe(env)
        await d.ack()

    def observe(self, env: m.Envelope[m.Payload]) -> None:
        """Fold one message into the in-memory state (idempotent; any order)."""
        p = env.payload
        if isinstance(p, m.ReferencePrice):
            if p.pair in (self.pair.reference_symbol, self.pair.name, ""):
                self.prices.add(PricePoint(env.ts_ns, p.mid, p.quality, p.computed_ts_ns))
        elif isinstance(p, m.InventorySnapshot):
            self._on_snapshot(env.ts_ns, p)
        elif isinstance(p, m.ExecuteTrade):
            if self._first_cmd_ts is None or env.ts_ns < self._first_cmd_ts:
                self._first_cmd_ts = env.ts_ns
                self._baseline = None
        elif isinstance(p, m.LiquidityAction):
            self.funding.on_action(p, env.ts_ns)
        elif isinstance(p, m.LiquidityState):
            self.funding.reconciler.on_liquidity_state(p, env.ts_ns)
        elif isinstance(p, m.TradeResult):
            self.funding.reconciler.on_trade_result(p, env.ts_ns)
            self._on_result(p)
        elif isinstance(p, m.QuoteStatus):
            self.funding.reconciler.on_quote_status(p, env.ts_ns)
            self._on_status(p)

    def _on_snapshot(self, ts_ns: int, snap: m.InventorySnapshot) -> None:
        if self._current is None or ts_ns >= self._current[0]:
            if not snap.stale:
                # flows it shows are counted in the same step as its balances become current
                for flow in self.funding.on_snapshot(snap, ts_ns):
                    log.info(
                        "history-writer: funding %+d %s counted at the snapshot read at %d",
                        flow.amount,
                        flow.asset_id,
                        flow.ts_ns,
                    )
            self._current = (ts_ns, snap)
        if not snap.stale:
            keys = [t for t, _ in self._credited]
            self._credited.insert(bisect.bisect_right(keys, ts_ns), (ts_ns, snap))
            if len(self._credited) > SNAPSHOT_KEEP:
                del self._credited[0]  # older ones are found in the store when needed

    def _on_result(self, result: m.TradeResult) -> None:
        if not m.is_live_signed_quote(result) or result.quote_hash is None:
            return
        qh = result.quote_hash
        if qh in self._settled or qh in self._results:
            return
        self.follow.results_accepted += 1
        base = result.deadline_ns if result.deadline_ns is not None else self.clock.now_ns()
        self._results[qh] = (result, base + RESULT_GRACE_NS)
        status = self._statuses.pop(qh, None)
        if status is not None:
            self._match(result, status)

    def _on_status(self, status: m.QuoteStatus) -> None:
        qh = status.quote_hash
        if qh in self._settled:
            return
        self.follow.statuses += 1
        entry = self._results.get(qh)
        if entry is None:
            self._statuses.setdefault(qh, status)
            return
        self._match(entry[0], status)

    def _match(self, result: m.TradeResult, status: m.QuoteStatus) -> None:
        qh = status.quote_hash
        self._results.pop(qh, None)
        self._looked_up.discard(qh)
        self._remember_settled(qh)
        self.follow.matched += 1
        self._to_write[qh] = m.Settlement(
            quote_hash=qh,
            intent_hash=status.intent_hash,
            tx_hash=status.tx_hash,
            command_id=result.command_id,
            quote_id=result.quote_id,
            asset_in=result.asset_in,
            asset_out=result.asset_out,
            amount_in=result.amount_in,
            amount_out=result.amount_out,
            settled_ts_ns=status.received_ts_ns,
        )
        self._writes.set()

    def _remember_settled(self, quote_hash: str) -> None:
        self._settled[quote_hash] = None
        if len(self._settled) > 200_000:
            self._settled.popitem(last=False)

    # -- prices from memory, else the store ----------------------------------------------------
    async def mid_at(self, ts_ns: int) -> Decimal | None:
        """The EUR mid at or before ``ts_ns``: in-memory history first, then ``market_price_events``."""
        point = self.prices.mid_at(ts_ns)
        if point is not None:
            return point.mid
        if self.store is None:
            return None
        price = await self.store.reference_price_at(ts_ns)
        return price.mid if price is not None else None

    # -- settlements -----------------------------------------------------------------------------
    async def _settlement_writer(self) -> None:
        delay = 0.05
        while True:
            await self._writes.wait()
            self._writes.clear()
            try:
                await self.write_settlements()
                delay = 0.05
            except StoreError as exc:
                self._note_error(f"settlement write failed, will retry: {exc}")
                self._writes.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def write_settlements(self) -> int:
        """Write every matched settlement not yet stored (mid at fill resolved); returns how many."""
        written = 0
        async with self._write_lock:
            for qh in list(self._to_write):
                settlement = self._to_write.get(qh)
                if self.store is None or settlement is None:
                    continue
                mid = await self.mid_at(settlement.settled_ts_ns)
                record = m.Settlement(**{**_fields(settlement), "reference_mid_at_fill": mid})
                await self.store.upsert_settlement(record)
                del self._to_write[qh]
                self.follow.settlements_written += 1
                written += 1
                self._count_fill(record)
                fill = fill_of(
                    self.pair, record.asset_in, record.asset_out, record.amount_in, record.amount_out
                )
                if fill is not None:
                    self._markouts[qh] = _PendingMarkouts(record, fill, set(MARKOUT_HORIZONS_S))
        return written

    def _count_fill(self, s: m.Settlement) -> None:
        if s.quote_hash in self._counted:
            return
        fill = fill_of(self.pair, s.asset_in, s.asset_out, s.amount_in, s.amount_out)
        if fill is None:
            return
        self._counted.add(s.quote_hash)
        with localcontext() as ctx:
            ctx.prec = 80
            self.fills.count += 1
            notional = fill.notional_eure(self.pair)
            self.fills.volume_eure += notional
            if s.reference_mid_at_fill is not None:
                self.fills.edge_eure += fill.edge_eure(
                    self.pair, s.reference_mid_at_fill * self.pair.quote_per_fiat
                )
                self.fills.edge_notional_eure += notional

    async def update_markouts(self) -> int:
        """Measure every markout whose horizon has passed and store it; returns how many were stored."""
        if self.store is None:
            return 0
        async with self._write_lock:
            return await self._update_markouts(self.store)

    async def _update_markouts(self, store: HistoryStore) -> int:
        now = self.clock.now_ns()
        stored = 0
        rate = self.pair.quote_per_fiat
        for qh, pending in list(self._markouts.items()):
            s = pending.settlement
            values: dict[str, Decimal] = {}
            for h in sorted(pending.horizons):
                at = s.settled_ts_ns + h * SECOND_NS
                if now < at:
                    continue
                mid = await self.mid_at(at)
                if mid is None:
                    if now - at > MARKOUT_GIVE_UP_NS:
                        pending.horizons.discard(h)
                        self.follow.markouts_given_up += 1
                    continue
                values[f"markout_{h}s_bps"] = markout_bps(
                    pending.fill.side, pending.fill.price(self.pair), mid * rate
                )
            if values:
                base = {**_fields(s)}
                for h in MARKOUT_HORIZONS_S:
                    base[f"markout_{h}s_bps"] = None
                base["reference_mid_at_fill"] = None
                base.update(values)
                await store.upsert_settlement(m.Settlement(**base))
                for key in values:
                    pending.horizons.discard(int(key.split("_")[1].rstrip("s")))
                stored += len(values)
                self.follow.markouts_written += len(values)
            if not pending.horizons:
                del self._markouts[qh]
        return stored

    async def _find_results(self) -> None:
        """Look up in the store the live signed result of each status still waiting for one (once per
        status: a result published later arrives on the bus). Results older than what was read back
        on start, or consumed before a restart, are found this way."""
        store = self.store
        if store is None:
            return
        for qh in [qh for qh in self._statuses if qh not in self._looked_up]:
            result = await store.live_signed_trade_result(qh)  # StoreError: tried again next step
            self._looked_up.add(qh)
            if result is not None and qh in self._statuses:
                self.follow.results_from_store += 1
                self._on_result(result)

    def _expire(self) -> None:
        now = self.clock.now_ns()
        for qh, status in list(self._statuses.items()):
            if now - status.received_ts_ns > STATUS_MATCH_WINDOW_NS:
                del self._statuses[qh]
                self._looked_up.discard(qh)
                self.follow.unknown_quote_hashes += 1
        for qh, (_result, expiry) in list(self._results.items()):
            if now > expiry:
                del self._results[qh]
                self.follow.expired_results += 1

    # -- baseline and metrics ------------------------------------------------------------------
    async def baseline(self) -> tuple[Baseline | None, str | None]:
        """The PnL baseline, or None and the reason it is not known yet."""
        first = self._first_cmd_ts
        if first is None:
            return None, "no cmd.execute_trade yet, so no PnL baseline"
        if self._baseline is not None and self._baseline.command_ts_ns == first:
            return self._baseline, None
        snap: m.InventorySnapshot | None = None
        keys = [t for t, _ in self._credited]
        i = bisect.bisect_left(keys, first)
        if i > 0:
            snap = self._credited[i - 1][1]
        elif self.store is not None:
            snap = await self.store.last_credited_snapshot_before(first)
        if snap is None:
            return None, "no credited inventory snapshot before the first cmd.execute_trade"
        price = await self.mid_at(first)
        if price is None:
            return None, "no reference price before the first cmd.execute_trade"
        self._baseline = Baseline(first, snap.read_ts_ns, dict(snap.credited), price)
        return self._baseline, None

    def net_flows(self, since_ts_ns: int) -> dict[str, int]:
        """Deposits minus withdrawals per asset counted at snapshots read after ``since_ts_ns``."""
        return self.funding.net_flows(since_ts_ns)

    async def save_funding(self) -> None:
        """Write the counted flows to the store when new ones were counted since the last write."""
        if self.store is None or not self.seeded or len(self.funding.landed) == self._funding_saved:
            return
        count = len(self.funding.landed)
        await self.store.put_state(FUNDING_STATE_KEY, self.funding.to_state())
        self._funding_saved = count

    async def compute_metrics(self) -> m.PortfolioMetrics:
        """The portfolio metrics now (store lookups only for the baseline, once)."""
        try:
            baseline, reason = await self.baseline()
        except StoreError as exc:
            baseline, reason = None, f"baseline lookup failed: {exc}"
        pm = portfolio_metrics(
            self.pair,
            now_ns=self.clock.now_ns(),
            stale_after_ns=self.stale_after_ns,
            baseline=baseline,
            no_baseline_reason=reason,
            current=self._current[1] if self._current else None,
            latest_price=self.prices.latest(),
            latest_mid=self.prices.latest_mid(),
            net_flows=self.net_flows(baseline.snapshot_ts_ns) if baseline else {},
            fills=self.fills,
        )
        self.last_metrics = pm
        return pm

    async def publish_metrics(self) -> m.PortfolioMetrics:
        pm = await self.compute_metrics()
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self.publish(m.PORTFOLIO_METRICS, pm, msg_id=f"portfolio-metrics:{pm.computed_ts_ns}")
        except TimeoutError:
            raise BusError(f"portfolio.metrics publish took longer than {PUBLISH_TIMEOUT_S:g} s") from None
        self.metrics_published += 1
        return pm

    async def step(self) -> None:
        """One round of periodic work: expiries, pending settlement writes, due markouts, and the
        ``portfolio.metrics`` publication when its interval has passed."""
        async with self._lock:
            self._expire()
            try:
                await self._find_results()
                if self._to_write:
                    await self.write_settlements()
                await self.update_markouts()
                await self.save_funding()
            except StoreError as exc:
                self._note_error(str(exc))
            now = self.clock.monotonic_ns()
            if now >= self._next_metrics_ns:
                self._next_metrics_ns = now + int(self.metrics_interval_s * SECOND_NS)
                await self.publish_metrics()

    # -- start-up seeding from the store -------------------------------------------------------
    async def seed(self) -> bool:
        """Read back what a restart must not forget; True once done (retried while the store is down)."""
        store = self.store
        if store is None or self.seeded:
            return self.seeded
        try:
            first = await store.first_execute_command_ts()
            if first is not None and (self._first_cmd_ts is None or first < self._first_cmd_ts):
                self._first_cmd_ts = first
                self._baseline = None
            latest = await store.latest_inventory()
            if latest is not None and self._current is None:
                self._current = (latest.read_ts_ns, latest)
                self.funding.last_credited = dict(latest.credited)
            price = await store.latest_reference_price()
            if price is not None and self.prices.latest() is None:
                self.prices.add(
                    PricePoint(price.computed_ts_ns, price.mid, price.quality, price.computed_ts_ns)
                )
            await self._seed_flows(store, latest)
            await self._seed_settlements(store)
            await self._seed_follow_up(store)
        except StoreError as exc:
            self._note_error(f"start-up read of the store failed, will retry: {exc}")
            return False
        self.seeded = True
        return True

    async def _seed_flows(self, store: HistoryStore, latest: m.InventorySnapshot | None) -> None:
        """The counted flows from the store; the others are read back from ``liquidity_actions`` to
        be reconciled against the next snapshots (see the module docstring)."""
        saved = self.funding.load_state(await store.get_state(FUNDING_STATE_KEY))
        self._funding_saved = len(self.funding.landed) if saved else -1
        since = 0
        while True:
            rows = await store.recent("liquidity_actions", limit=PAGE, since_id=since)
            for row in rows:
                action, ts = row.envelope.payload, row.envelope.ts_ns
                if not isinstance(action, m.LiquidityAction):
                    continue
                key = flow_key(action)
                if (
                    not saved
                    and key is not None
                    and latest is not None
                    and ts <= latest.read_ts_ns
                    and balance_moved(action)
                    and action.asset_id is not None
                    and action.amount is not None
                    and key not in self.funding.landed
                ):
                    # written before flows were counted at their snapshot: taken as in the last one
                    sign = 1 if action.kind == "deposit_credited" else -1
                    self.funding.landed[key] = Flow(ts, action.asset_id, sign * action.amount)
                    continue
                self.funding.on_action(action, ts)
            if len(rows) < PAGE:
                return
            since = rows[-1].id

    async def _seed_settlements(self, store: HistoryStore) -> None:
        since: int | None = None
        while True:
            page = await store.settlements(limit=PAGE, since_ts_ns=since)
            for s in page:
                self._remember_settled(s.quote_hash)
                self._count_fill(s)
                missing = {h for h in MARKOUT_HORIZONS_S if getattr(s, f"markout_{h}s_bps") is None}
                fill = fill_of(self.pair, s.asset_in, s.asset_out, s.amount_in, s.amount_out)
                if missing and fill is not None and s.quote_hash not in self._markouts:
                    self._markouts[s.quote_hash] = _PendingMarkouts(s, fill, missing)
            if len(page) < PAGE or page[-1].settled_ts_ns == since:
                return
            since = page[-1].settled_ts_ns

    async def _seed_follow_up(self, store: HistoryStore) -> None:
        for row in await store.recent("trade_execution_results", limit=SEED_ROWS):
            if isinstance(row.envelope.payload, m.TradeResult):
                self.funding.reconciler.on_trade_result(row.envelope.payload, row.envelope.ts_ns)
                self._on_result(row.envelope.payload)
        for row in await store.recent("quote_status_events", limit=SEED_ROWS):
            if isinstance(row.envelope.payload, m.QuoteStatus):
                self.funding.reconciler.on_quote_status(row.envelope.payload, row.envelope.ts_ns)
                self._on_status(row.envelope.payload)
        if self._to_write:
            self._writes.set()

    # -- store health ----------------------------------------------------------------------------
    async def _ping(self) -> None:
        if self.store is None:
            return
        try:
            async with asyncio.timeout(STORE_PING_S):
                ok = await self.store.ping()
        except (TimeoutError, StoreError) as exc:
            ok, detail = False, str(exc) or "ping timed out"
        else:
            detail = "" if ok else "the database does not answer"
        self.store_ok = ok
        self.store_error = None if ok else detail

    async def _store_watch(self) -> None:
        next_counts = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await self._ping()
            if self.store is not None and self.store_ok and loop.time() >= next_counts:
                next_counts = loop.time() + STORE_COUNTS_S
                try:
                    self.counts = await self.store.counts()
                    self.counts_ts_ns = self.clock.now_ns()
                except StoreError as exc:
                    self._note_error(str(exc))
            await asyncio.sleep(STORE_PING_S)

    def _note_error(self, message: str) -> None:
        self.last_error = message
        log.warning("history-writer: %s", message)

    def _store_label(self) -> str:
        if self.store is None:
            return "none"
        kind = "PostgreSQL" if self.store.dialect == "postgresql" else "SQLite"
        return f"{kind} {self.store.url}"

    # -- control API -----------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [Route("GET", "/portfolio-metrics", self._get_metrics)]

    async def _get_metrics(self, request: web.Request) -> web.Response:
        pm = await self.compute_metrics()
        return json_response(metrics_view(pm, self.pair, now_ns=self.clock.now_ns()))

    def checks(self) -> dict[str, Check]:
        checks = super().checks()
        if self.store is None:
            checks["store"] = Check(False, "no history store configured")
            return checks
        persister_ok = self.persister is None or self.persister.healthy
        if self.store_ok is False or not persister_ok:
            error = self.store_error or (self.persister.last_error if self.persister else None)
            held = self.persister.backlog if self.persister else 0
            journal = self.persister.journal if self.persister else None
            spilled = f", {journal.rows_pending} in the spill journal" if journal is not None else ""
            checks["store"] = Check(
                False,
                f"history store unreachable ({self._store_label()}): {error or 'unknown error'}; "
                f"{held} messages held{spilled}",
            )
        else:
            checks["store"] = Check(True, f"connected to {self._store_label()}")
        return checks

    def state(self) -> dict[str, Any]:
        stats = self.persister.stats() if self.persister else None
        pm = self.last_metrics
        return {
            "store": {
                "url": self.store.url if self.store else None,
                "dialect": self.store.dialect if self.store else None,
                "reachable": self.store_ok,
                "error": self.store_error,
                "rows": self.counts,
                "rows_ts_ns": self.counts_ts_ns,
            },
            "persister": {
                "healthy": stats.healthy,
                "backlog": stats.backlog,
                "received": stats.received,
                "stored": stats.stored,
                "duplicates": stats.duplicates,
                "poison": stats.poison,
                "write_failures": stats.write_failures,
                "batches": stats.batches,
                "last_error": stats.last_error,
                "last_poison": stats.last_poison,
                "rejected": stats.rejected,
                "last_rejected": stats.last_rejected,
                "spilled": stats.spilled,
                "spill_failures": stats.spill_failures,
                "failing_since_ns": stats.failing_since_ns,
                "journal": msgspec.to_builtins(stats.journal) if stats.journal is not None else None,
            }
            if stats
            else None,
            "backlog": stats.backlog if stats else 0,
            "last_error": self.last_error or (stats.last_error if stats else None),
            "seeded": self.seeded,
            "settlements": {
                "recorded": self.follow.settlements_written,
                "statuses_seen": self.follow.statuses,
                "accepted_results_seen": self.follow.results_accepted,
                "matched": self.follow.matched,
                "awaiting_status": len(self._results),
                "awaiting_result": len(self._statuses),
                "awaiting_write": len(self._to_write),
                "unknown_quote_hashes": self.follow.unknown_quote_hashes,
                "expired_results": self.follow.expired_results,
                "results_from_store": self.follow.results_from_store,
                "markouts_pending": sum(len(p.horizons) for p in self._markouts.values()),
                "markouts_written": self.follow.markouts_written,
                "markouts_given_up": self.follow.markouts_given_up,
            },
            "portfolio": {
                "first_command_ts_ns": self._first_cmd_ts,
                "baseline_ts_ns": self._baseline.snapshot_ts_ns if self._baseline else None,
                "metrics_published": self.metrics_published,
                "metrics_interval_ms": int(self.metrics_interval_s * 1000),
            },
            "funding": {
                "counted_flows": len(self.funding.landed),
                "pending_flows": self.funding.pending(),
                "snapshots_reconciled": self.funding.snapshots,
                "snapshots_unexplained": self.funding.unexplained,
                "net_flows": {k: str(v) for k, v in self.funding.net_flows(-1).items()},
            },
            "metrics": metrics_view(pm, self.pair, now_ns=self.clock.now_ns()) if pm else None,
        }


def _fields(s: m.Settlement) -> dict[str, Any]:
    return {name: getattr(s, name) for name in s.__struct_fields__}
