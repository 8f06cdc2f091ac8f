"""inventory-sync (8083): our spendable balances on the ``intents.near`` Verifier, read and explained.

What it does:

- Reads ``mt_batch_balance_of`` for the active pair's assets of the trading account
  (``NEAR_INTENTS_ACCOUNT_ID``, else the implicit account of ``NEAR_INTENTS_SIGNER_PRIVATE_KEY``) every
  ``INVENTORY_POLL_MS``, soon after each ``demand.quote_status`` (bursts within ``DEBOUNCE_S`` are one
  read) and on ``POST /refresh`` (answers the fresh snapshot). The Verifier protocol fee (``fee()``, pips)
  is read with the first balances and then every ``FEE_REFRESH_NS``.
- Publishes ``inventory.snapshot`` after every successful read: credited balances, pending deposits and
  in-flight withdrawals (from ``liquidity.state``, kept apart from credited inventory), block height,
  read time, ``fee_pips``, the changes it could not explain, and which confirmed settlements and
  withdrawal burns its balances show for the first time (``settled_quote_hashes``,
  ``landed_withdrawals``; see below).
- A failed read never publishes a balance it did not read. The inventory is marked stale in ``/state``;
  on the transition into stale ONE snapshot with ``stale=True`` is published that carries the LAST GOOD
  balances, block height and read time (so consumers learn at once; no zeros, no invented numbers),
  nothing if there never was a good read. ``/healthz`` fails after ``INVENTORY_MAX_READ_FAILURES``
  consecutive failures. A read from a node behind the last good block is ignored (not published).
- Reconciliation: each balance change between two reads is explained by expected changes: our
  settlements (``exec.trade_result`` accepted, confirmed by ``demand.quote_status`` with the same quote
  hash), credited deposits (``liquidity.action`` ``deposit_credited``) and withdrawals (``liquidity.action``
  ``withdraw`` submitted). Events that may have happened but are not confirmed (an accepted quote without
  a status yet, a deposit the bridge still lists as pending, a withdrawal requested but not yet
  acknowledged) are candidates: they explain a change that matches them but are never missed. See
  :func:`explain_change`. What cannot be explained goes into ``unexplained_changes`` of the snapshot (and
  so into the history store) and is flagged in ``/state``; a confirmed change still unseen after
  ``grace`` is reported too, as a negative unexplained delta.
- Which balances include a settlement (strategy-engine releases a filled reservation on it): the
  balance change between two reads is block-ordered evidence. When a change is matched to a
  confirmed settlement (``demand.quote_status`` seen) or a confirmed withdrawal burn, the read's
  balances, taken at its ``block_height``, include it, so the settlement's block is at or before
  that height; the snapshot lists it once. A settlement matched while still a candidate (balances
  first, status later) is listed in the first snapshot after its status arrives. A confirmed change
  taken as landed only because it is overdue is NOT listed (the balances may not show it), nor are
  those folded into the baseline of the first read after a start; their reservations wait for the
  strategy's safety expiry. (Looking the settlement transaction up instead, ``tx`` by hash, needs
  the sender account, which the relay's ``quote_status`` does not give, and returns a block hash,
  not a height.)
- Live signed quotes (``messages.is_live_signed_quote``: accepted, or an error carrying a quote hash
  and deadline such as a reply timeout or "already signed") are settlement candidates.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from intents_mm.config import Config
from intents_mm.domain.amounts import format_units
from intents_mm.domain.assets import Asset
from intents_mm.errors import IntentsMMError
from intents_mm.messages import (
    INVENTORY_SNAPSHOT,
    LIQUIDITY_ACTION,
    LIQUIDITY_STATE,
    QUOTE_STATUS,
    TRADE_RESULT,
    InventorySnapshot,
    LiquidityAction,
    LiquidityState,
    QuoteStatus,
    TradeResult,
    UnexplainedChange,
    decode,
    is_live_signed_quote,
)
from intents_mm.near.keys import SigningKey
from intents_mm.near.rpc import NearRpcClient
from intents_mm.near.verifier import VerifierClient
from intents_mm.services.runtime import Check, HttpError, Route, Service, json_response
from intents_mm.venues.bridge import WithdrawalState

if TYPE_CHECKING:
    from intents_mm.bus.port import Delivery, Subscription

log = logging.getLogger(__name__)

MS = 1_000_000
S = 1_000_000_000
DEBOUNCE_S = 0.2  # quote_status bursts within this window cause one read
FEE_REFRESH_NS = 60 * S
MIN_GRACE_NS = 30 * S  # a confirmed change must show up in the balances within max(this, 3 polls)
WITHDRAW_CANDIDATE_TTL_NS = 10 * 60 * S
MAX_SEARCH = 12  # expectations considered by the exact subset search
RECENT_UNEXPLAINED = 20
CONSUMED_MEMORY = 10_000

#: Withdrawal statuses (``TrackedWithdrawal.status``) after which nothing is in flight any more.
FINAL_WITHDRAWAL_STATUSES = frozenset(s.value for s in WithdrawalState if s.is_final)


def trading_account(config: Config) -> str | None:
    """The account that holds inventory: ``NEAR_INTENTS_ACCOUNT_ID``, else the implicit account of
    ``NEAR_INTENTS_SIGNER_PRIVATE_KEY``, else ``None``."""
    account: str | None = config["NEAR_INTENTS_ACCOUNT_ID"]
    if account:
        return account
    secret: str | None = config["NEAR_INTENTS_SIGNER_PRIVATE_KEY"]
    if secret:
        return SigningKey.from_string(secret).public_key.implicit_account_id()
    return None


# ------------------------------------------------------------------------------ reconciliation (pure)


@dataclass
class Expectation:
    """A balance change we know of (``confirmed``) or that may happen (a candidate).

    ``deltas`` are signed smallest units per asset; ``seen_ns`` is when it became known (or confirmed);
    a candidate is forgotten after ``expires_ns`` (``None``: kept until its source withdraws it).
    """

    key: str
    label: str
    deltas: dict[str, int]
    seen_ns: int
    confirmed: bool
    expires_ns: int | None = None


def _sum(items: Iterable[Expectation]) -> dict[str, int]:
    total: dict[str, int] = {}
    for item in items:
        for asset, delta in item.deltas.items():
            total[asset] = total.get(asset, 0) + delta
    return {a: d for a, d in total.items() if d}


def explain_change(
    delta: dict[str, int], expectations: Sequence[Expectation], *, max_search: int = MAX_SEARCH
) -> list[Expectation] | None:
    """The subset of ``expectations`` whose summed deltas equal ``delta`` exactly (zero entries ignored).

    Preference among matching subsets: most confirmed expectations, then fewest candidates, then the
    earliest. The search is exhaustive over at most ``max_search`` expectations (confirmed ones first,
    oldest first, then the newest candidates); with more confirmed ones than that only the confirmed
    prefixes in time order are tried. ``None`` when nothing matches (an empty ``delta`` always matches
    the empty subset at least).
    """
    target = {a: d for a, d in delta.items() if d}
    confirmed = sorted((e for e in expectations if e.confirmed), key=lambda e: e.seen_ns)
    if len(confirmed) > max_search:
        for n in range(len(confirmed), -1, -1):
            if _sum(confirmed[:n]) == target:
                return confirmed[:n]
        return None
    candidates = heapq.nsmallest(
        max_search - len(confirmed), (e for e in expectations if not e.confirmed), key=lambda e: -e.seen_ns
    )
    # Best first: most confirmed, then fewest candidates; within one (confirmed, candidates) count the
    # subsets come in the order of the pool (confirmed, then candidates), so the first match is the
    # earliest. The usual cases (nothing changed, one or two settlements) end after a few subsets.
    for n_confirmed in range(len(confirmed), -1, -1):
        for n_candidates in range(len(candidates) + 1):
            for chosen in itertools.combinations(confirmed, n_confirmed):
                for extra in itertools.combinations(candidates, n_candidates):
                    subset = chosen + extra
                    if _sum(subset) == target:
                        return list(subset)
    return None


def _landed(delta: dict[str, int], pending: Sequence[Expectation], overdue_ns: int) -> list[Expectation]:
    """When nothing explains ``delta`` exactly: the confirmed expectations taken as landed anyway.

    Those seen before ``overdue_ns`` (they must have landed), then, oldest first, each younger one that
    fits inside what is still unexplained (same sign and no larger, on every asset it touches).
    """
    confirmed = sorted((e for e in pending if e.confirmed), key=lambda e: e.seen_ns)
    landed = [e for e in confirmed if e.seen_ns < overdue_ns]
    rest = dict(delta)
    for asset, d in _sum(landed).items():
        rest[asset] = rest.get(asset, 0) - d
    for exp in confirmed:
        if exp.seen_ns >= overdue_ns and all(
            (d > 0 and 0 < d <= rest.get(a, 0)) or (d < 0 and 0 > d >= rest.get(a, 0))
            for a, d in exp.deltas.items()
        ):
            landed.append(exp)
            for asset, d in exp.deltas.items():
                rest[asset] -= d
    return landed


@dataclass(frozen=True)
class Reconciliation:
    """The outcome of explaining one balance change."""

    deltas: dict[str, int]
    explained_by: list[str]
    unexplained: list[UnexplainedChange]


class Reconciler:
    """Keeps the expectations and explains each change between two good reads (see module docstring)."""

    def __init__(self, assets: Sequence[str], grace_ns: int) -> None:
        self.assets = list(assets)
        self.grace_ns = grace_ns
        self.expectations: dict[str, Expectation] = {}
        self._consumed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._early_status: collections.OrderedDict[str, int] = collections.OrderedDict()
        # settle:<hash> keys a balance change matched while still unconfirmed candidates
        self._matched_candidates: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.baseline_ns: int | None = None
        #: Keys of confirmed changes the balances showed since the last :meth:`take_shown`.
        self.shown: list[str] = []

    # -- inputs ----------------------------------------------------------------------------------
    def consumed(self, key: str) -> bool:
        return key in self._consumed

    def _consume(self, key: str) -> None:
        self.expectations.pop(key, None)
        self._consumed[key] = None
        while len(self._consumed) > CONSUMED_MEMORY:
            self._consumed.popitem(last=False)

    def _filter(self, deltas: dict[str, int]) -> dict[str, int]:
        return {a: d for a, d in deltas.items() if a in self.assets and d}

    def expect(
        self,
        key: str,
        label: str,
        deltas: dict[str, int],
        now_ns: int,
        *,
        confirmed: bool,
        expires_ns: int | None = None,
    ) -> None:
        """Add (or confirm) an expectation; ignored once its key was consumed by a match, and a confirmed
        change from before the baseline read is part of that baseline (consumed at once)."""
        if self.consumed(key):
            return
        if confirmed and self.baseline_ns is not None and now_ns < self.baseline_ns:
            self._consume(key)
            return
        relevant = self._filter(deltas)
        if not relevant:
            return
        known = self.expectations.get(key)
        if known is not None and known.confirmed:
            return  # a candidate may be confirmed, never the reverse
        self.expectations[key] = Expectation(
            key, label, relevant, now_ns, confirmed, None if confirmed else expires_ns
        )

    def withdraw(self, key: str) -> None:
        """Forget an unconfirmed expectation whose event will not happen."""
        known = self.expectations.get(key)
        if known is not None and not known.confirmed:
            del self.expectations[key]

    def on_trade_result(self, result: TradeResult, now_ns: int) -> None:
        if not is_live_signed_quote(result) or result.quote_hash is None or result.deadline_ns is None:
            return
        key = f"settle:{result.quote_hash}"
        deltas = {result.asset_in: result.amount_in}
        deltas[result.asset_out] = deltas.get(result.asset_out, 0) - result.amount_out
        confirmed = self._early_status.pop(result.quote_hash, None) is not None
        expires = result.deadline_ns + self.grace_ns
        label = f"settlement of quote {result.quote_hash}"
        self.expect(key, label, deltas, now_ns, confirmed=confirmed, expires_ns=expires)

    def on_quote_status(self, status: QuoteStatus, now_ns: int) -> None:
        key = f"settle:{status.quote_hash}"
        if self.consumed(key):
            if key in self._matched_candidates:  # the balances showed it before it was confirmed
                del self._matched_candidates[key]
                self.shown.append(key)
            return
        known = self.expectations.get(key)
        if known is None:  # the trade result may still come
            self._early_status[status.quote_hash] = now_ns
            while len(self._early_status) > CONSUMED_MEMORY:
                self._early_status.popitem(last=False)
            return
        self.expect(key, known.label, known.deltas, now_ns, confirmed=True)

    def on_liquidity_action(self, action: LiquidityAction, now_ns: int) -> None:
        if action.asset_id is None or action.amount is None:
            return
        if action.kind == "deposit_credited" and action.status == "completed":
            tx_hash = str(action.detail.get("tx_hash") or action.action_id)
            key = f"deposit:{tx_hash}"
            self.expect(key, f"deposit {tx_hash}", {action.asset_id: action.amount}, now_ns, confirmed=True)
        elif action.kind in ("withdraw", "track_withdrawal"):
            key = f"withdraw:{action.action_id}"
            label = f"withdrawal {action.near_tx_hash or action.action_id}"
            deltas = {action.asset_id: -action.amount}
            if action.status == "requested":
                expires = now_ns + WITHDRAW_CANDIDATE_TTL_NS
                self.expect(key, label, deltas, now_ns, confirmed=False, expires_ns=expires)
            elif action.status == "submitted" and action.kind == "withdraw":
                self.expect(key, label, deltas, now_ns, confirmed=True)
            elif (
                action.status in ("failed", "refused")
                and action.near_tx_hash is None
                and not action.detail.get("outcome_unknown")  # an unanswered burn may still land
            ):
                self.withdraw(key)

    def on_liquidity_state(self, state: LiquidityState, now_ns: int) -> None:
        """Deposits the bridge lists as pending are candidates for as long as they are listed."""
        listed = set()
        for deposit in state.pending_deposits:
            key = f"deposit:{deposit.tx_hash}"
            listed.add(key)
            if key not in self.expectations:
                label = f"deposit {deposit.tx_hash} (pending on the bridge)"
                self.expect(key, label, {deposit.asset_id: deposit.amount}, now_ns, confirmed=False)
        for key, exp in list(self.expectations.items()):
            if key.startswith("deposit:") and not exp.confirmed and key not in listed:
                del self.expectations[key]

    def forget_before(self, ts_ns: int) -> None:
        """The first read started at ``ts_ns``: confirmed changes from before it are in its balances."""
        self.baseline_ns = ts_ns
        for key, exp in list(self.expectations.items()):
            if exp.confirmed and exp.seen_ns < ts_ns:
                self._consume(key)

    # -- explaining ------------------------------------------------------------------------------
    def _mark_shown(self, exp: Expectation) -> None:
        if exp.confirmed:
            self.shown.append(exp.key)
        elif exp.key.startswith("settle:"):
            self._matched_candidates[exp.key] = None
            while len(self._matched_candidates) > CONSUMED_MEMORY:
                self._matched_candidates.popitem(last=False)

    def take_shown(self) -> tuple[list[str], list[str]]:
        """``(quote hashes, withdrawal action ids)`` of confirmed settlements and burns the balances
        showed since the last call (for ``InventorySnapshot.settled_quote_hashes`` /
        ``landed_withdrawals``); clears the list."""
        shown, self.shown = self.shown, []
        hashes = [k.removeprefix("settle:") for k in shown if k.startswith("settle:")]
        withdrawals = [k.removeprefix("withdraw:") for k in shown if k.startswith("withdraw:")]
        return hashes, withdrawals

    def reconcile(self, before: dict[str, int], after: dict[str, int], now_ns: int) -> Reconciliation:
        """Explain ``after - before``; consumes what explained it. See the module docstring."""
        for key, exp in list(self.expectations.items()):
            if not exp.confirmed and exp.expires_ns is not None and exp.expires_ns < now_ns:
                del self.expectations[key]
        delta = {a: after.get(a, 0) - before.get(a, 0) for a in self.assets}
        delta = {a: d for a, d in delta.items() if d}
        pending = list(self.expectations.values())
        match = explain_change(delta, pending)
        unexplained: dict[str, int] = {}
        details: dict[str, list[str]] = {}
        explained: list[Expectation]
        if match is not None:
            explained = match
            for exp in match:
                self._consume(exp.key)
                self._mark_shown(exp)
            overdue = [
                e for e in self.expectations.values() if e.confirmed and now_ns - e.seen_ns > self.grace_ns
            ]
            for exp in overdue:
                for asset, d in exp.deltas.items():
                    unexplained[asset] = unexplained.get(asset, 0) - d
                    details.setdefault(asset, []).append(f"expected {d:+d} from {exp.label}, not seen")
                self._consume(exp.key)
        else:
            explained = _landed(delta, pending, now_ns - self.grace_ns)
            landed = _sum(explained)
            for exp in explained:
                self._consume(exp.key)
                if exp.seen_ns >= now_ns - self.grace_ns:  # it fits the change; an overdue one may not
                    self._mark_shown(exp)
            for asset in set(delta) | set(landed):
                rest = delta.get(asset, 0) - landed.get(asset, 0)
                if rest:
                    unexplained[asset] = rest
            for asset, rest in unexplained.items():
                base = f"balance moved {delta.get(asset, 0):+d}"
                if landed.get(asset):
                    base += f", {landed[asset]:+d} of it expected"
                details.setdefault(asset, []).append(f"{base}: {rest:+d} not explained by any known event")
        changes = [
            UnexplainedChange(asset=a, delta=d, detail="; ".join(details.get(a, [])))
            for a, d in sorted(unexplained.items())
            if d
        ]
        return Reconciliation(delta, [e.label for e in explained], changes)


# ------------------------------------------------------------------------------------------ service


def _amounts_view(asset: Asset, units: int) -> dict[str, str]:
    return {"units": str(units), "human": format_units(asset, units)}


class InventorySync(Service):
    name = "inventory-sync"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pair = self.ctx.assets.active_pair
        self.assets: list[Asset] = list(pair.assets())
        self.token_ids = [a.token_id for a in self.assets]
        self.poll_s = self.config["INVENTORY_POLL_MS"] / 1000
        self.max_failures: int = self.config["INVENTORY_MAX_READ_FAILURES"]
        self.account: str | None = trading_account(self.config)
        self.contract_id: str = self.config["NEAR_INTENTS_CONTRACT_ID"]
        grace_ns = max(MIN_GRACE_NS, 3 * self.config["INVENTORY_POLL_MS"] * MS)
        self.reconciler = Reconciler(self.token_ids, grace_ns)
        self.rpc: NearRpcClient | None = None
        self.verifier: VerifierClient | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._subs: list[Subscription] = []
        # last good read
        self.credited: dict[str, int] | None = None
        self.block_height = 0
        self.read_ts_ns = 0
        self.fee_pips: int | None = None
        self._fee_read_mono_ns: int | None = None
        self.fee_error: str | None = None
        # liquidity view
        self.pending_deposits: dict[str, int] = {}
        self.inflight_withdrawals: dict[str, int] = {}
        self.liquidity_seen = False
        # health
        self.stale = True
        self.stale_reason: str | None = "no balance read yet"
        self.consecutive_failures = 0
        self.reads_ok = 0
        self.reads_failed = 0
        self.publish_error: str | None = None
        self.behind_reads = 0
        self.last_reconciliation: Reconciliation | None = None
        self.recent_unexplained: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=RECENT_UNEXPLAINED
        )
        self.unexplained_total = 0
        if self.account is None:
            self.stale_reason = "no account: set NEAR_INTENTS_ACCOUNT_ID or NEAR_INTENTS_SIGNER_PRIVATE_KEY"

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.rpc = NearRpcClient(list(self.config["NEAR_RPC_URLS"]))
        self.verifier = VerifierClient(self.rpc, self.contract_id)
        self._subs = [
            await self.subscribe(
                [TRADE_RESULT, QUOTE_STATUS, LIQUIDITY_ACTION, LIQUIDITY_STATE],
                f"{self.name}-events",
                self._on_event,
            )
        ]

    async def run(self) -> None:
        if self.account is None:
            log.error("%s: %s", self.name, self.stale_reason)
            await asyncio.Event().wait()
        while True:
            try:
                await self.read()
            except IntentsMMError:
                pass  # recorded by read(): stale flag, counters, /healthz
            except Exception:  # a defect must not stop the cadence; it is logged with its trace
                log.exception("%s: inventory read failed unexpectedly", self.name)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
                await asyncio.sleep(DEBOUNCE_S)
            except TimeoutError:
                pass
            self._wake.clear()

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.stop()
        self._subs = []
        if self.rpc is not None:
            await self.rpc.close()
            self.rpc = None

    # -- bus inputs ------------------------------------------------------------------------------
    async def _on_event(self, delivery: Delivery) -> None:
        env = decode(delivery.data)  # InputError: a dead letter (Service.subscribe)
        payload, now = env.payload, env.ts_ns  # event time: a replayed message keeps its own
        if isinstance(payload, TradeResult):
            self.reconciler.on_trade_result(payload, now)
        elif isinstance(payload, QuoteStatus):
            self.reconciler.on_quote_status(payload, now)
            self._wake.set()
        elif isinstance(payload, LiquidityAction):
            self.reconciler.on_liquidity_action(payload, now)
            if payload.kind == "deposit_credited" or payload.status == "submitted":
                self._wake.set()
        elif isinstance(payload, LiquidityState):
            self._on_liquidity_state(payload)
            self.reconciler.on_liquidity_state(payload, now)
        await delivery.ack()

    def _on_liquidity_state(self, state: LiquidityState) -> None:
        pending: dict[str, int] = {}
        for deposit in state.pending_deposits:
            if deposit.status == "PENDING":
                pending[deposit.asset_id] = pending.get(deposit.asset_id, 0) + deposit.amount
        inflight: dict[str, int] = {}
        for w in state.withdrawals:
            if w.status not in FINAL_WITHDRAWAL_STATUSES:
                inflight[w.asset_id] = inflight.get(w.asset_id, 0) + w.amount
        self.pending_deposits, self.inflight_withdrawals = pending, inflight
        self.liquidity_seen = True

    # -- reading ---------------------------------------------------------------------------------
    async def read(self) -> InventorySnapshot:
        """Read balances (and the fee when due), reconcile and publish; raises on a failed read."""
        async with self._lock:
            return await self._read_locked()

    async def _read_locked(self) -> InventorySnapshot:
        if self.account is None or self.verifier is None:
            raise HttpError(503, self.stale_reason or "inventory-sync is not started")
        started_ns = self.clock.now_ns()
        try:
            balances, height = await self.verifier.mt_batch_balance_of(self.account, self.token_ids)
        except IntentsMMError as exc:
            await self._on_read_failure(exc)
            raise
        await self._refresh_fee()
        now = self.clock.now_ns()
        if self.credited is not None and height < self.block_height:
            self.behind_reads += 1
            raise HttpError(
                503, f"NEAR RPC answered from block {height}, behind the last read at {self.block_height}"
            )
        if self.credited is None:
            self.reconciler.forget_before(started_ns)
            changes: list[UnexplainedChange] = []
        else:
            rec = self.reconciler.reconcile(self.credited, balances, now)
            self.last_reconciliation = rec
            changes = rec.unexplained
            if changes:
                self.unexplained_total += len(changes)
                self.recent_unexplained.extend(
                    {
                        "ts_ns": now,
                        "block_height": height,
                        "asset": c.asset,
                        "delta": str(c.delta),
                        "detail": c.detail,
                    }
                    for c in changes
                )
                for c in changes:
                    log.warning("%s: unexplained change %+d %s: %s", self.name, c.delta, c.asset, c.detail)
        self.credited, self.block_height, self.read_ts_ns = balances, height, now
        self.stale, self.stale_reason, self.consecutive_failures = False, None, 0
        self.reads_ok += 1
        settled, landed = self.reconciler.take_shown()
        snapshot = self._snapshot(stale=False, unexplained=changes, settled=settled, landed=landed)
        await self._publish(snapshot)
        return snapshot

    async def _refresh_fee(self) -> None:
        assert self.verifier is not None
        mono = self.clock.monotonic_ns()
        if self._fee_read_mono_ns is not None and mono - self._fee_read_mono_ns < FEE_REFRESH_NS:
            return
        try:
            self.fee_pips = await self.verifier.fee()
            self._fee_read_mono_ns, self.fee_error = mono, None
        except IntentsMMError as exc:  # keep the last fee; unknown stays None (consumers then decline)
            self.fee_error = str(exc)
            log.warning("%s: fee() read failed: %s", self.name, exc)

    async def _on_read_failure(self, exc: Exception) -> None:
        self.consecutive_failures += 1
        self.reads_failed += 1
        was_stale = self.stale
        self.stale, self.stale_reason = True, f"balance read failed: {exc}"
        log.warning("%s: %s (%d in a row)", self.name, self.stale_reason, self.consecutive_failures)
        if not was_stale and self.credited is not None:
            await self._publish(self._snapshot(stale=True, unexplained=[]))

    def _snapshot(
        self,
        *,
        stale: bool,
        unexplained: list[UnexplainedChange],
        settled: list[str] | None = None,
        landed: list[str] | None = None,
    ) -> InventorySnapshot:
        assert self.account is not None and self.credited is not None
        return InventorySnapshot(
            account_id=self.account,
            credited=dict(self.credited),
            pending_deposits=dict(self.pending_deposits),
            inflight_withdrawals=dict(self.inflight_withdrawals),
            block_height=self.block_height,
            read_ts_ns=self.read_ts_ns,
            stale=stale,
            stale_reason=self.stale_reason if stale else None,
            unexplained_changes=unexplained,
            fee_pips=self.fee_pips,
            settled_quote_hashes=settled or [],
            landed_withdrawals=landed or [],
        )

    async def _publish(self, snapshot: InventorySnapshot) -> None:
        msg_id = (
            f"inventory:{snapshot.account_id}:{snapshot.read_ts_ns}:{'stale' if snapshot.stale else 'ok'}"
        )
        try:
            await self.publish(INVENTORY_SNAPSHOT, snapshot, msg_id=msg_id)
            self.publish_error = None
        except IntentsMMError as exc:
            self.publish_error = str(exc)
            log.error("%s: could not publish the snapshot: %s", self.name, exc)

    # -- control API -----------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [Route("POST", "/refresh", self._refresh)]

    async def _refresh(self, request: web.Request) -> web.Response:
        try:
            snapshot = await self.read()
        except HttpError:
            raise
        except IntentsMMError as exc:
            raise HttpError(502, f"inventory read failed: {exc}", stale=True) from None
        return json_response(snapshot)

    def checks(self) -> dict[str, Check]:
        checks = super().checks()
        if self.account is None:
            checks["inventory"] = Check(False, self.stale_reason or "no account")
        elif self.consecutive_failures >= self.max_failures:
            checks["inventory"] = Check(
                False, f"{self.consecutive_failures} balance reads failed in a row: {self.stale_reason}"
            )
        else:
            checks["inventory"] = Check(True, "stale" if self.stale else "")
        return checks

    def state(self) -> dict[str, Any]:
        now = self.clock.now_ns()
        per_asset: dict[str, Any] = {}
        for asset in self.assets:
            tid = asset.token_id
            per_asset[asset.symbol] = {
                "asset_id": tid,
                "credited": None
                if self.credited is None
                else _amounts_view(asset, self.credited.get(tid, 0)),
                "pending_deposits": _amounts_view(asset, self.pending_deposits.get(tid, 0)),
                "inflight_withdrawals": _amounts_view(asset, self.inflight_withdrawals.get(tid, 0)),
            }
        rec = self.last_reconciliation
        return {
            "account_id": self.account,
            "contract_id": self.contract_id,
            "assets": per_asset,
            "credited": None if self.credited is None else {k: str(v) for k, v in self.credited.items()},
            "pending_deposits": {k: str(v) for k, v in self.pending_deposits.items()},
            "inflight_withdrawals": {k: str(v) for k, v in self.inflight_withdrawals.items()},
            "liquidity_state_seen": self.liquidity_seen,
            "block_height": self.block_height or None,
            "read_ts_ns": self.read_ts_ns or None,
            "age_ms": (now - self.read_ts_ns) // MS if self.read_ts_ns else None,
            "stale": self.stale,
            "stale_reason": self.stale_reason,
            "consecutive_failures": self.consecutive_failures,
            "max_read_failures": self.max_failures,
            "reads_ok": self.reads_ok,
            "reads_failed": self.reads_failed,
            "reads_behind_ignored": self.behind_reads,
            "poll_ms": self.config["INVENTORY_POLL_MS"],
            "fee_pips": self.fee_pips,
            "fee_error": self.fee_error,
            "publish_error": self.publish_error,
            "reconciliation": {
                "status": "unexplained" if rec is not None and rec.unexplained else "ok",
                "last_deltas": None if rec is None else {k: str(v) for k, v in rec.deltas.items()},
                "last_explained_by": None if rec is None else rec.explained_by,
                "last_unexplained": None
                if rec is None
                else [{"asset": c.asset, "delta": str(c.delta), "detail": c.detail} for c in rec.unexplained],
                "unexplained_total": self.unexplained_total,
                "recent_unexplained": list(self.recent_unexplained),
                "expectations": [
                    {
                        "label": e.label,
                        "deltas": {k: str(v) for k, v in e.deltas.items()},
                        "confirmed": e.confirmed,
                        "age_ms": (now - e.seen_ns) // MS,
                    }
                    for e in self.reconciler.expectations.values()
                ],
            },
        }
