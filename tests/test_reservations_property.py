"""Property: whatever the interleaving, the reservation book never promises what is not there.

A hypothesis state machine drives strategy-engine's :class:`ReservationKeeper` (the code the service
runs for every reservation input) against a model of the venue: a chain of 1 s blocks holding our
balances, quotes that reserve on request, an executor that signs, refuses, skips or loses results,
settlements in new blocks, balance snapshots read at ``final`` (0-3 blocks behind the head, never
going backwards) that list the confirmed settlements and burns their balances show (as inventory-sync
does), restarts that rebuild the book from the recorded events (:func:`book_from_records`, the same
records the store query returns), and withdrawals that pass liquidity-manager's two checks (credited
minus reserved and held, then again once the hold is acknowledged). Each consumer (results,
statuses, snapshots, actions) delivers in order but at its own pace.

Below the machine, the measured failures step by step (a final view behind the fill, a lost
settlement report, an older snapshot in the backlog after a restart): each fails if its rule in
:class:`ReservationKeeper` is removed.

Invariant after every step, per asset: the balance at the chain head covers every claim that can
still be taken out: commands the executor may still handle (inside their relay window) and signed
quotes not settled whose deadline has not passed. Every settlement and burn also asserts it finds the funds.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from intents_mm.domain.assets import BTC, BTC_EURE, EURE
from intents_mm.domain.risk import Reservation
from intents_mm.messages import (
    ExecuteTrade,
    InventorySnapshot,
    LiquidityAction,
    QuoteStatus,
    Settlement,
    TradeResult,
)
from intents_mm.services.strategy_engine import RESERVATION_MARGIN_NS, ReservationKeeper
from intents_mm.storage.store import ReservationRecords

S = 10**9
MS = 10**6
T0 = 1_700_000_000 * S
BUFFER_MS = 10_000
MIN_DEADLINE_MS = 50_000
MAX_MIN_DEADLINE_MS = 60_000
DEADLINE_NS = (MIN_DEADLINE_MS + BUFFER_MS) * MS
SAFETY_NS = 600 * S
INVENTORY_STALE_NS = 60 * S
ASSETS = (BTC.token_id, EURE.token_id)
OUTCOMES = ("accepted", "error_signed", "rejected", "error_unsigned", "skipped", "lost_signed")


@dataclass
class Quote:
    cmd: ExecuteTrade
    ts: int
    executed: bool = False
    signed: bool = False
    result_logged: bool = False
    quote_hash: str | None = None
    deadline: int | None = None
    settled_block: int | None = None
    status_known: bool = False


@dataclass
class Withdrawal:
    action_id: str
    asset: str
    amount: int
    credited: int  # the balance liquidity-manager read for its first check
    state: str = "awaiting_hold"  # -> burned | failed
    burn_block: int | None = None


class ReservationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.t = T0
        self.blocks: list[dict[str, int]] = []
        self.keeper = ReservationKeeper(fill_confirm_timeout_ns=SAFETY_NS)
        self.queues: dict[str, collections.deque[tuple[int, Any]]] = {
            name: collections.deque() for name in ("results", "statuses", "snapshots", "actions")
        }
        self.quotes: dict[str, Quote] = {}
        self.withdrawals: dict[str, Withdrawal] = {}
        self.ledger: list[tuple[str, str, str, int]] = []
        self.log_commands: list[tuple[int, ExecuteTrade]] = []
        self.log_results: list[tuple[int, TradeResult]] = []
        self.log_statuses: list[tuple[int, QuoteStatus]] = []
        self.log_snapshots: list[tuple[int, InventorySnapshot]] = []
        self.log_actions: list[tuple[int, LiquidityAction]] = []
        self.log_settlements: list[Settlement] = []
        self.last_read_block = 0
        self.shown: set[str] = set()
        self.n = 0

    # -- the chain ---------------------------------------------------------------------------
    @property
    def head(self) -> int:
        return len(self.blocks) - 1

    def _grow(self) -> None:
        while self.head < (self.t - T0) // S:
            self.blocks.append(dict(self.blocks[-1]))

    def _new_block(self) -> int:
        """Move to the next block (a settlement or burn is in a block of its own)."""
        self.t = T0 + (self.head + 1) * S
        self._grow()
        return self.head

    def _send(self, queue: str, log: list[tuple[int, Any]], payload: Any) -> None:
        self.queues[queue].append((self.t, payload))
        log.append((self.t, payload))

    @initialize(btc=st.integers(1_000, 200_000), eure=st.integers(1_000, 200_000))
    def fund(self, btc: int, eure: int) -> None:
        self.blocks = [{BTC.token_id: btc, EURE.token_id: eure}]
        self.read_snapshot(0)  # inventory-sync's first read, already delivered
        self.deliver("snapshots")

    @rule(seconds=st.integers(0, 12))
    def advance(self, seconds: int) -> None:
        self.t += seconds * S
        self._grow()

    # -- quoting -----------------------------------------------------------------------------
    @rule(give_btc=st.booleans(), percent=st.integers(1, 100), amount_in=st.integers(1, 60_000))
    def request(self, give_btc: bool, percent: int, amount_in: int) -> None:
        """A quote for ``percent`` of what the book says is still available (the strategy's
        inventory_available check), so the book's errors turn into promises the chain cannot keep."""
        inv = self.keeper.inventory
        if inv is None or self.t - inv.read_ts_ns > INVENTORY_STALE_NS:
            return  # the inventory_stale guard declines
        give, take = ASSETS if give_btc else ASSETS[::-1]
        available = self.keeper.book.available(give, inv.credited.get(give, 0))
        amount_out = available * percent // 100
        if amount_out <= 0:
            return  # inventory_available declines
        self.n += 1
        cmd = ExecuteTrade(
            command_id=f"cmd:{self.n}",
            decision_id=f"decision:{self.n}",
            quote_id=str(self.n),
            asset_in=take,
            asset_out=give,
            amount_in=amount_in,
            amount_out=amount_out,
            exact_side="in",
            min_deadline_ms=MIN_DEADLINE_MS,
            relay_deadline_ns=self.t + 3 * S,
            reference_mid=Decimal(60_000),
        )
        self.keeper.book.reserve(
            Reservation(
                cmd.command_id,
                cmd.quote_id,
                take,
                amount_in,
                give,
                amount_out,
                Decimal(1),
                self.t + DEADLINE_NS,
            )
        )
        self.quotes[cmd.command_id] = Quote(cmd, self.t)
        self.log_commands.append((self.t, cmd))

    def _pending(self) -> list[Quote]:
        # the executor drops a command it cannot answer inside the relay window (dropped_late)
        return [q for q in self.quotes.values() if not q.executed and self.t <= q.cmd.relay_deadline_ns]

    @precondition(lambda self: bool(self._pending()))
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def execute(self, data: st.DataObject, outcome: str) -> None:
        q = data.draw(st.sampled_from(self._pending()))
        q.executed = True
        cmd = q.cmd
        signed = outcome in ("accepted", "error_signed", "lost_signed")
        if signed:
            q.signed = True
            q.quote_hash = f"h-{cmd.command_id}"
            q.deadline = self.t + DEADLINE_NS + 500 * MS  # signed a little after the decision
            self.ledger.append((cmd.command_id, q.quote_hash, "nonce", q.deadline))
        if outcome == "lost_signed":
            return  # signed and sent, then the executor died before publishing the result
        wire = {"error_signed": "error", "error_unsigned": "error"}.get(outcome, outcome)
        result = TradeResult(
            command_id=cmd.command_id,
            quote_id=cmd.quote_id,
            outcome=wire,  # type: ignore[arg-type]
            quote_hash=q.quote_hash if signed else None,
            deadline_ns=q.deadline if signed else None,
            nonce_b64="nonce" if signed else None,
            amount_in=cmd.amount_in,
            amount_out=cmd.amount_out,
            asset_in=cmd.asset_in,
            asset_out=cmd.asset_out,
        )
        q.result_logged = True
        self._send("results", self.log_results, result)

    def _settleable(self) -> list[Quote]:
        return [
            q
            for q in self.quotes.values()
            if q.signed and q.settled_block is None and q.deadline is not None and self.t + S <= q.deadline
        ]

    @precondition(lambda self: bool(self._settleable()))
    @rule(data=st.data(), status_lost=st.booleans())
    def settle(self, data: st.DataObject, status_lost: bool) -> None:
        q = data.draw(st.sampled_from(self._settleable()))
        height = self._new_block()
        cmd, block = q.cmd, self.blocks[height]
        assert block[cmd.asset_out] >= cmd.amount_out, f"settlement of {cmd.command_id} overdraws"
        block[cmd.asset_out] -= cmd.amount_out
        block[cmd.asset_in] += cmd.amount_in
        q.settled_block = height
        if status_lost:
            return
        assert q.quote_hash is not None
        q.status_known = True
        status = QuoteStatus(quote_hash=q.quote_hash, intent_hash="i", tx_hash="t", received_ts_ns=self.t)
        self._send("statuses", self.log_statuses, status)
        if q.result_logged:  # history-writer matched it to our result
            self.log_settlements.append(
                Settlement(
                    quote_hash=q.quote_hash,
                    intent_hash="i",
                    tx_hash="t",
                    command_id=cmd.command_id,
                    quote_id=cmd.quote_id,
                    asset_in=cmd.asset_in,
                    asset_out=cmd.asset_out,
                    amount_in=cmd.amount_in,
                    amount_out=cmd.amount_out,
                    settled_ts_ns=self.t,
                )
            )

    # -- inventory-sync ------------------------------------------------------------------------
    @rule(lag=st.integers(0, 3))
    def read_snapshot(self, lag: int) -> None:
        height = max(self.last_read_block, self.head - lag)
        self.last_read_block = height
        settled = []
        for q in self.quotes.values():
            key = f"settle:{q.quote_hash}"
            shown = q.settled_block is not None and q.settled_block <= height
            if shown and q.status_known and q.result_logged and key not in self.shown:
                self.shown.add(key)
                settled.append(q.quote_hash or "")
        landed = []
        for w in self.withdrawals.values():
            key = f"withdraw:{w.action_id}"
            if w.burn_block is not None and w.burn_block <= height and key not in self.shown:
                self.shown.add(key)
                landed.append(w.action_id)
        snap = InventorySnapshot(
            account_id="mm.near",
            credited=dict(self.blocks[height]),
            pending_deposits={},
            inflight_withdrawals={},
            block_height=height,
            read_ts_ns=self.t,
            stale=False,
            settled_quote_hashes=settled,
            landed_withdrawals=landed,
        )
        self._send("snapshots", self.log_snapshots, snap)

    # -- liquidity-manager ---------------------------------------------------------------------
    def _problem(self, asset: str, amount: int, credited: int, own: str | None = None) -> bool:
        book = self.keeper.book
        held = book.held(asset) - (amount if own is not None and own in book.holds else 0)
        return amount > credited - book.reserved_out(asset) - held

    @rule(btc=st.booleans(), amount=st.integers(1, 80_000), lag=st.integers(0, 3))
    def withdraw(self, btc: bool, amount: int, lag: int) -> None:
        asset = ASSETS[0] if btc else ASSETS[1]
        # its own final read; one from behind the summary's balances block is refused and retried
        credited = self.blocks[max(self.head - lag, self.keeper.balances_block)][asset]
        if amount > credited or self._problem(asset, amount, credited):
            return  # 409
        self.n += 1
        w = Withdrawal(f"wd-{self.n}", asset, amount, credited)
        self.withdrawals[w.action_id] = w
        self._send("actions", self.log_actions, self._action(w, "requested"))

    def _action(self, w: Withdrawal, status: str, tx: str | None = None) -> LiquidityAction:
        return LiquidityAction(
            action_id=w.action_id,
            kind="withdraw",
            asset_id=w.asset,
            amount=w.amount,
            status=status,  # type: ignore[arg-type]
            near_tx_hash=tx,
        )

    def _awaiting(self) -> list[Withdrawal]:
        return [w for w in self.withdrawals.values() if w.state == "awaiting_hold"]

    @precondition(lambda self: bool(self._awaiting()))
    @rule(data=st.data(), give_up=st.booleans(), lag=st.integers(0, 3))
    def withdraw_continue(self, data: st.DataObject, give_up: bool, lag: int) -> None:
        w = data.draw(st.sampled_from(self._awaiting()))
        acknowledged = w.action_id in self.keeper.book.holds
        # the second check reads the balance again (at or after the summary's balances block)
        credited = self.blocks[max(self.head - lag, self.keeper.balances_block)][w.asset]
        ok = w.amount <= credited and not self._problem(w.asset, w.amount, credited, own=w.action_id)
        if acknowledged and ok:
            height = self._new_block()
            block = self.blocks[height]
            assert block[w.asset] >= w.amount, f"withdrawal {w.action_id} overdraws"
            block[w.asset] -= w.amount
            w.state, w.burn_block = "burned", height
            self._send("actions", self.log_actions, self._action(w, "submitted", tx=f"tx-{w.action_id}"))
        elif acknowledged or give_up:
            w.state = "failed"
            self._send("actions", self.log_actions, self._action(w, "failed"))

    # -- strategy-engine's consumers -------------------------------------------------------------
    @rule(queue=st.sampled_from(("results", "statuses", "snapshots", "actions")))
    def deliver(self, queue: str) -> None:
        if not self.queues[queue]:
            return
        _ts, payload = self.queues[queue].popleft()
        if isinstance(payload, InventorySnapshot):
            self.keeper.on_snapshot(payload)
        elif isinstance(payload, TradeResult):
            self.keeper.on_result(payload)
        elif isinstance(payload, QuoteStatus):
            self.keeper.on_status(payload, self.t)
        elif isinstance(payload, LiquidityAction):
            self.keeper.on_liquidity(payload, self.t)

    @rule()
    def catch_up(self) -> None:
        """Every consumer drains its backlog (results and statuses first, then snapshots)."""
        for queue in ("results", "statuses", "actions", "snapshots"):
            while self.queues[queue]:
                self.deliver(queue)

    @rule()
    def expire(self) -> None:
        self.keeper.expire(self.t)

    @rule()
    def restart(self) -> None:
        """strategy-engine restarts: the book is rebuilt from the records, undelivered messages wait."""
        commands_since = self.t - (MAX_MIN_DEADLINE_MS + BUFFER_MS) * MS - 2 * RESERVATION_MARGIN_NS
        settled_since = min(self.t - SAFETY_NS, commands_since)
        snaps = [s for ts, s in self.log_snapshots if ts >= settled_since]
        records = ReservationRecords(
            commands=[(ts, c) for ts, c in self.log_commands if ts >= commands_since],
            results=[r for ts, r in self.log_results if ts >= commands_since],
            statuses=[(ts, s) for ts, s in self.log_statuses if ts >= settled_since],
            settlements=[s for s in self.log_settlements if s.settled_ts_ns >= settled_since],
            confirmed_settlements=[h for s in snaps for h in s.settled_quote_hashes],
            landed_withdrawals=[a for s in snaps for a in s.landed_withdrawals],
            withdraw_actions=[(ts, a) for ts, a in self.log_actions if ts >= settled_since],
            latest_snapshot_block=max((s.block_height for s in snaps), default=0),
        )
        signed = [e for e in self.ledger if e[3] >= self.t - RESERVATION_MARGIN_NS]
        self.keeper = ReservationKeeper(fill_confirm_timeout_ns=SAFETY_NS)
        self.keeper.rebuild(records, signed, self.t, pair=BTC_EURE, buffer_ms=BUFFER_MS)

    # -- the property --------------------------------------------------------------------------
    @invariant()
    def promised_never_exceeds_credited(self) -> None:
        if not self.blocks:
            return
        head = self.blocks[-1]
        for asset in ASSETS:
            claims = sum(
                q.cmd.amount_out
                for q in self.quotes.values()
                if q.cmd.asset_out == asset
                and (
                    (not q.executed and self.t <= q.cmd.relay_deadline_ns)
                    or (
                        q.signed
                        and q.settled_block is None
                        and q.deadline is not None
                        and self.t <= q.deadline
                    )
                )
            )
            assert head[asset] >= claims, f"{asset}: {claims} promised, {head[asset]} credited at the head"
            # the running totals the O(1) checks read equal the sums over the book
            book = self.keeper.book
            assert book.reserved_out(asset) == sum(
                r.amount_out for r in book.live.values() if r.asset_out == asset
            )
            assert book.held(asset) == sum(h.amount for h in book.holds.values() if h.asset == asset)
        book = self.keeper.book
        assert book.filled_unconfirmed() == sum(1 for r in book.live.values() if r.filled_ns is not None)


ReservationMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=80, deadline=None)
TestReservationProperty = ReservationMachine.TestCase


# -- the measured failures, step by step (the machine's rules called directly) ---------------------


class _Pick:
    """Stands in for ``st.data()``: draws the given item."""

    def __init__(self, item: Any) -> None:
        self.item = item

    def draw(self, _strategy: Any) -> Any:
        return self.item


def _machine(btc: int) -> ReservationMachine:
    machine = ReservationMachine()
    machine.fund(btc=btc, eure=1_000)
    return machine


def _only_quote(machine: ReservationMachine) -> Quote:
    (q,) = [q for q in machine.quotes.values() if not q.executed]
    return q


def test_a_final_view_behind_the_fill_does_not_release_it() -> None:
    """Issue 13 (a): 19,884 of 20,000 sat sold; a snapshot read after the fill but at a block before it
    must not free them (the old rule compared read time with fill time)."""
    m = _machine(btc=20_000)
    m.request(give_btc=True, percent=100, amount_in=1)
    q = _only_quote(m)
    m.execute(_Pick(q), "accepted")
    m.deliver("results")
    m.settle(_Pick(q), status_lost=False)
    m.deliver("statuses")
    m.advance(2)
    m.read_snapshot(lag=3)  # read now, at a block before the settlement
    m.deliver("snapshots")
    book = m.keeper.book
    assert book.live[q.cmd.command_id].filled_ns is not None and book.reserved_out(BTC.token_id) == 20_000
    m.request(give_btc=True, percent=100, amount_in=1)  # nothing left to promise: declined
    assert len(m.quotes) == 1
    m.read_snapshot(lag=0)  # the block with the settlement: listed, released, balances show 0
    m.deliver("snapshots")
    assert book.live == {} and m.keeper.inventory is not None
    assert m.keeper.inventory.credited[BTC.token_id] == 0


def test_a_lost_settlement_report_keeps_the_reservation_until_balances_after_the_deadline() -> None:
    m = _machine(btc=10_000)
    m.request(give_btc=True, percent=100, amount_in=1)
    q = _only_quote(m)
    m.execute(_Pick(q), "lost_signed")  # signed and sent, no result ever published
    m.settle(_Pick(q), status_lost=True)  # and the relay's quote_status never arrives
    m.advance(70)
    m.expire()
    assert q.cmd.command_id in m.keeper.book.live  # the balances in use were read before the deadline
    m.read_snapshot(lag=0)
    m.deliver("snapshots")
    m.expire()
    assert m.keeper.book.live == {}
    assert m.keeper.inventory is not None and m.keeper.inventory.credited[BTC.token_id] == 0
    m.promised_never_exceeds_credited()


def test_after_a_restart_an_older_snapshot_in_the_backlog_is_not_used() -> None:
    m = _machine(btc=10_000)
    m.request(give_btc=True, percent=100, amount_in=1)
    q = _only_quote(m)
    m.execute(_Pick(q), "accepted")
    m.settle(_Pick(q), status_lost=False)
    m.advance(1)
    m.read_snapshot(lag=3)  # before the settlement (still in the backlog at the restart)
    m.read_snapshot(lag=0)  # shows and lists it (stored, also still in the backlog)
    m.restart()
    assert m.keeper.book.live == {} and m.keeper.min_snapshot_block == m.head
    m.deliver("snapshots")  # the older one: its 10,000 sat are gone
    assert m.keeper.inventory is None
    m.deliver("snapshots")
    assert m.keeper.inventory is not None and m.keeper.inventory.credited[BTC.token_id] == 0
