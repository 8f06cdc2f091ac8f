"""Risk limits, exposure reservations and loss limits (pure).

- :class:`Limits`: what a single quote may do. :func:`check_limits` returns every check with its value
  and limit, so the decision record carries the full reasoning chain; the first failing check is the
  decline reason.
- :class:`ReservationBook`: every quote we emit reserves what it could take out of our inventory until
  its deadline, and every withdrawal in flight holds its amount. Reservations are released on expiry
  or when the quote was never sent or was refused, and marked filled on settlement; a filled
  reservation keeps counting until an inventory snapshot whose balances (read at a block at or after
  the settlement) show it, so many quotes can be live at once without ever promising more than we
  hold. :func:`rebuild_book` restores the book after a restart from the store's records.
- :class:`LossGuard`: a daily (UTC day) loss limit and a drawdown-from-peak limit on the flow-adjusted
  mark-to-market PnL (both books at the latest price, net of deposits and withdrawals), plus an optional
  limit on the fall of the flow-adjusted portfolio value from its peak (inventory risk; 0 = off). When
  one is hit quoting pauses until an operator re-arms.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Context, Decimal

from intents_mm.domain.assets import Pair
from intents_mm.domain.pricing import PricedQuote

NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True)
class Limits:
    max_notional_eure: Decimal = Decimal(5)
    min_base_units: int = 0
    max_base_units: int = 10**8
    min_quote_units: int = 0
    max_quote_units: int = 100_000 * 10**18
    max_outstanding_eure: Decimal = Decimal(50)
    max_min_deadline_ms: int = 60_000
    min_edge_bps: Decimal = Decimal(5)
    price_band_bps: Decimal = Decimal(300)
    daily_loss_limit_eure: Decimal = Decimal(25)
    max_drawdown_eure: Decimal = Decimal(50)
    max_portfolio_drop_eure: Decimal = Decimal(0)  # 0 = off


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: Decimal
    limit: Decimal


@dataclass(frozen=True)
class Reservation:
    command_id: str
    quote_id: str
    asset_in: str
    amount_in: int
    asset_out: str
    amount_out: int
    notional_eure: Decimal
    expires_ns: int  # the signed deadline (until known: the latest it can be): then it cannot settle
    filled_ns: int | None = None  # when its settlement was reported (demand.quote_status)
    quote_hash: str | None = None  # known once the executor reports the quote signed


@dataclass(frozen=True)
class Hold:
    """Funds a withdrawal in flight takes out of ``asset``: held from its request until a snapshot
    shows the burn (or the withdrawal failed before burning)."""

    hold_id: str
    asset: str
    amount: int
    since_ns: int


_EXACT = Context(prec=80)  # sums of notionals (28 significant digits each) stay exact
EARLY_MEMORY = 10_000  # confirmations remembered for reservations/holds not yet known


@dataclass
class ReservationBook:
    """Live quotes' claims on inventory, keyed by command id, and withdrawal holds, keyed by request id.

    Life of a reservation: :meth:`reserve` when the command is issued (expiry: the latest deadline
    the quote can get); :meth:`bind` when the executor reports it signed (a *live signed quote*:
    expiry becomes the signed deadline); :meth:`release` when it was never sent or refused;
    :meth:`fill` when its settlement is reported; and only :meth:`confirm` (an inventory snapshot
    whose balances show the settlement, see ``InventorySnapshot.settled_quote_hashes``) drops a
    filled one, so a filled quote keeps counting until the balances it is checked against include
    it, however far the balance views lag the fill. :meth:`expire` drops unfilled reservations past
    their deadline (plus grace); :meth:`expire_filled` is the safety net for a fill no snapshot ever
    confirms (the caller logs and counts it).

    The totals the limit checks read (:meth:`reserved_out`, :meth:`held`, :meth:`potential_in`,
    :meth:`outstanding_eure`) are kept up to date by every change, so a decision costs O(1) however
    many quotes are live; ``live`` and ``holds`` are read-only for callers (change them through the
    methods). :meth:`available` is credited minus everything promised (reservations and holds).
    """

    live: dict[str, Reservation] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    _out: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _in: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _held: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _by_hash: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _early: OrderedDict[str, None] = field(default_factory=OrderedDict, init=False, repr=False)
    _unfilled_eure: Decimal = field(default=Decimal(0), init=False, repr=False)
    _filled: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        for res in self.live.values():
            self._count(res, 1)
        for hold in self.holds.values():
            self._held[hold.asset] = self._held.get(hold.asset, 0) + hold.amount

    def _count(self, res: Reservation, sign: int) -> None:
        self._out[res.asset_out] = self._out.get(res.asset_out, 0) + sign * res.amount_out
        self._in[res.asset_in] = self._in.get(res.asset_in, 0) + sign * res.amount_in
        if res.filled_ns is None:
            notional = res.notional_eure if sign > 0 else -res.notional_eure
            self._unfilled_eure = _EXACT.add(self._unfilled_eure, notional)
        else:
            self._filled += sign
        if res.quote_hash is not None:
            if sign > 0:
                self._by_hash[res.quote_hash] = res.command_id
            elif self._by_hash.get(res.quote_hash) == res.command_id:
                del self._by_hash[res.quote_hash]

    def _drop(self, command_id: str) -> Reservation | None:
        res = self.live.pop(command_id, None)
        if res is not None:
            self._count(res, -1)
        return res

    def _remember(self, key: str) -> None:
        self._early[key] = None
        while len(self._early) > EARLY_MEMORY:
            self._early.popitem(last=False)

    # -- quotes ----------------------------------------------------------------------------------
    def reserve(self, reservation: Reservation) -> None:
        self._drop(reservation.command_id)
        if reservation.quote_hash is not None and f"settle:{reservation.quote_hash}" in self._early:
            return  # a snapshot already showed its settlement: nothing left to promise
        self.live[reservation.command_id] = reservation
        self._count(reservation, 1)

    def release(self, command_id: str) -> Reservation | None:
        return self._drop(command_id)

    def bind(self, command_id: str, quote_hash: str, deadline_ns: int) -> Reservation | None:
        """The quote of ``command_id`` is signed (a live signed quote) with ``deadline_ns``: it keeps
        its reservation until that deadline, and a settlement report or confirmation by hash finds it."""
        res = self.live.get(command_id)
        if res is None:
            return None
        bound = replace(res, quote_hash=quote_hash, expires_ns=deadline_ns)
        self.reserve(bound)
        return self.live.get(command_id)

    def command_for(self, quote_hash: str) -> str | None:
        return self._by_hash.get(quote_hash)

    def fill(self, quote_hash: str, now_ns: int) -> Reservation | None:
        """A settlement of ``quote_hash`` was reported: its reservation keeps counting (as filled, no
        longer in the outstanding notional) until :meth:`confirm`."""
        command_id = self._by_hash.get(quote_hash)
        return None if command_id is None else self.mark_filled(command_id, now_ns)

    def mark_filled(self, command_id: str, now_ns: int) -> Reservation | None:
        res = self.live.get(command_id)
        if res is None:
            return None
        if res.filled_ns is not None:
            return res
        filled = replace(res, filled_ns=now_ns)
        self.reserve(filled)
        return filled

    def confirm(self, quote_hashes: Iterable[str]) -> list[Reservation]:
        """An inventory snapshot's balances include the settlements of ``quote_hashes``: drop them.

        A hash not (yet) in the book is remembered, so a reservation that learns it later is dropped
        at once (the result or the status may arrive after the snapshot)."""
        done: list[Reservation] = []
        for quote_hash in quote_hashes:
            command_id = self._by_hash.get(quote_hash)
            res = None if command_id is None else self._drop(command_id)
            if res is not None:
                done.append(res)
            else:
                self._remember(f"settle:{quote_hash}")
        return done

    def expire(
        self, now_ns: int, *, grace_ns: int = 0, seen_until_ns: int | None = None
    ) -> list[Reservation]:
        """Drop unfilled reservations whose deadline has passed (plus a grace for chain finality).

        ``seen_until_ns``: when the balances the caller checks against were read. A quote can settle
        up to its deadline and its settlement report may be late or lost, so an unfilled reservation
        goes only once those balances were read more than ``grace_ns`` after its deadline (the grace
        covers the final view's lag of a few blocks): they include any settlement it had."""
        horizon = now_ns if seen_until_ns is None else min(now_ns, seen_until_ns)
        gone = [r for r in self.live.values() if r.filled_ns is None and r.expires_ns + grace_ns < horizon]
        for r in gone:
            self._drop(r.command_id)
        return gone

    def expire_filled(self, now_ns: int, *, safety_ns: int) -> list[Reservation]:
        """Safety net: drop filled reservations no snapshot confirmed within ``safety_ns`` of the fill."""
        if not self._filled:
            return []
        gone = [r for r in self.live.values() if r.filled_ns is not None and r.filled_ns + safety_ns < now_ns]
        for r in gone:
            self._drop(r.command_id)
        return gone

    # -- withdrawals -----------------------------------------------------------------------------
    def hold(self, hold: Hold) -> bool:
        """Hold funds for a withdrawal in flight; False when a snapshot already showed its burn."""
        if hold.hold_id in self.holds:
            return True
        if f"withdraw:{hold.hold_id}" in self._early:
            return False
        self.holds[hold.hold_id] = hold
        self._held[hold.asset] = self._held.get(hold.asset, 0) + hold.amount
        return True

    def release_hold(self, hold_id: str) -> Hold | None:
        hold = self.holds.pop(hold_id, None)
        if hold is not None:
            self._held[hold.asset] -= hold.amount
        return hold

    def confirm_withdrawals(self, hold_ids: Iterable[str]) -> list[Hold]:
        """A snapshot's balances show these withdrawals' burns: release their holds."""
        done: list[Hold] = []
        for hold_id in hold_ids:
            hold = self.release_hold(hold_id)
            if hold is not None:
                done.append(hold)
            else:
                self._remember(f"withdraw:{hold_id}")
        return done

    def expire_holds(self, now_ns: int, *, safety_ns: int) -> list[Hold]:
        """Safety net: drop holds older than ``safety_ns`` that no snapshot or failure released."""
        gone = [h for h in self.holds.values() if h.since_ns + safety_ns < now_ns]
        for h in gone:
            self.release_hold(h.hold_id)
        return gone

    # -- totals ----------------------------------------------------------------------------------
    def reserved_out(self, asset: str) -> int:
        """What live quotes (filled ones not yet confirmed included) could take out of ``asset``."""
        return self._out.get(asset, 0)

    def held(self, asset: str) -> int:
        """What withdrawals in flight hold of ``asset``."""
        return self._held.get(asset, 0)

    def promised(self, asset: str) -> int:
        return self.reserved_out(asset) + self.held(asset)

    def potential_in(self, asset: str) -> int:
        return self._in.get(asset, 0)

    def outstanding_eure(self) -> Decimal:
        return +self._unfilled_eure  # rounded to the current context, like a sum of the notionals

    def filled_unconfirmed(self) -> int:
        """How many live reservations are filled and wait for a snapshot that shows the settlement."""
        return self._filled

    def available(self, asset: str, credited: int) -> int:
        """What a new quote (or withdrawal) may still promise to give out of ``credited``."""
        return credited - self.promised(asset)


@dataclass(frozen=True)
class RecordedQuote:
    """One quote as the history store recorded it, for :func:`rebuild_book` after a restart.

    ``latest_deadline_ns``: the latest deadline the quote can carry (command time plus the deadline
    the strategy asked for), used while no result is recorded. ``live_signed``: the result makes it a
    live signed quote (``messages.is_live_signed_quote``); ``released``: the result says it was never
    sent or was refused. ``settled_ns``: when its settlement was reported; ``confirmed``: a stored
    snapshot's balances already include that settlement.
    """

    command_id: str
    quote_id: str
    asset_in: str
    amount_in: int
    asset_out: str
    amount_out: int
    notional_eure: Decimal
    latest_deadline_ns: int
    has_result: bool = False
    live_signed: bool = False
    quote_hash: str | None = None
    deadline_ns: int | None = None
    settled_ns: int | None = None
    confirmed: bool = False


def rebuild_book(
    quotes: Iterable[RecordedQuote], holds: Iterable[Hold], now_ns: int, *, grace_ns: int
) -> ReservationBook:
    """The book as it stood, from the store's records (see :class:`RecordedQuote`).

    Kept: a settled quote no snapshot confirmed yet (filled); a live signed quote whose deadline plus
    ``grace_ns`` has not passed; a command without a result until its latest deadline plus grace (its
    outcome is unknown: it may be signed and at the relay). Dropped: confirmed settlements, results
    that never went out or were refused, and anything past its deadline unsettled. ``holds`` are the
    withdrawals still in flight.
    """
    book = ReservationBook()
    for q in quotes:
        if q.confirmed:
            if q.quote_hash is not None:
                book.confirm([q.quote_hash])
            continue
        if q.settled_ns is None:
            if q.has_result and not q.live_signed:
                continue
            deadline = q.deadline_ns if q.live_signed and q.deadline_ns is not None else q.latest_deadline_ns
            if deadline + grace_ns < now_ns:
                continue
        else:
            deadline = q.deadline_ns if q.deadline_ns is not None else q.latest_deadline_ns
        book.reserve(
            Reservation(
                command_id=q.command_id,
                quote_id=q.quote_id,
                asset_in=q.asset_in,
                amount_in=q.amount_in,
                asset_out=q.asset_out,
                amount_out=q.amount_out,
                notional_eure=q.notional_eure,
                expires_ns=deadline,
                filled_ns=q.settled_ns,
                quote_hash=q.quote_hash,
            )
        )
    for hold in holds:
        book.hold(hold)
    return book


def check_limits(
    pair: Pair,
    quote: PricedQuote,
    *,
    min_deadline_ms: int,
    credited: dict[str, int],
    book: ReservationBook,
    limits: Limits,
) -> list[Check]:
    """Every limit check for one priced quote, in a fixed order. All must pass to quote."""
    checks: list[Check] = []

    def add(name: str, passed: bool, value: Decimal | int, limit: Decimal | int) -> None:
        checks.append(Check(name, passed, Decimal(value), Decimal(limit)))

    add(
        "min_deadline_ms",
        min_deadline_ms <= limits.max_min_deadline_ms,
        min_deadline_ms,
        limits.max_min_deadline_ms,
    )
    smallest = min(quote.amount_in, quote.amount_out)
    add("amount_nonzero", smallest > 0, smallest, 1)
    add(
        "max_notional_eure",
        quote.notional_quote / pair.quote_per_fiat <= limits.max_notional_eure,
        quote.notional_quote,
        limits.max_notional_eure,
    )
    add("min_edge_bps", quote.edge_bps >= limits.min_edge_bps, quote.edge_bps, limits.min_edge_bps)
    add(
        "price_band_bps",
        abs(quote.edge_bps) <= limits.price_band_bps,
        abs(quote.edge_bps),
        limits.price_band_bps,
    )
    outstanding = book.outstanding_eure() + quote.notional_quote / pair.quote_per_fiat
    add(
        "max_outstanding_eure",
        outstanding <= limits.max_outstanding_eure,
        outstanding,
        limits.max_outstanding_eure,
    )

    base, quote_asset = pair.base.token_id, pair.quote.token_id
    bounds = {
        base: (limits.min_base_units, limits.max_base_units),
        quote_asset: (limits.min_quote_units, limits.max_quote_units),
    }
    # what we give: never promise more than credited minus every live quote's claim, nor go below min
    give_asset = quote_asset if quote.side == "buy" else base
    take_asset = base if quote.side == "buy" else quote_asset
    available = book.available(give_asset, credited.get(give_asset, 0))
    after_give = available - quote.amount_out
    add(f"inventory_available:{give_asset}", after_give >= 0, available, quote.amount_out)
    add(f"min_inventory:{give_asset}", after_give >= bounds[give_asset][0], after_give, bounds[give_asset][0])
    # what we take: worst case every live quote settles
    worst_in = credited.get(take_asset, 0) + book.potential_in(take_asset) + quote.amount_in
    add(f"max_inventory:{take_asset}", worst_in <= bounds[take_asset][1], worst_in, bounds[take_asset][1])
    return checks


def first_failure(checks: list[Check]) -> str | None:
    for check in checks:
        if not check.passed:
            return check.name.split(":", 1)[0]
    return None


def _text(value: Decimal) -> str:
    """``-92.500000000000000000`` -> ``-92.5``: exact, without trailing zeros or an exponent."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass
class LossGuard:
    """Loss limits on the flow-adjusted mark-to-market PnL and portfolio value (EURe).

    ``observe`` is fed each ``portfolio.metrics``: ``mtm_eure`` = flow-adjusted
    ``mark_to_market_pnl_eure`` (0 at the PnL baseline; a deposit or withdrawal never moves it) and
    ``value_eure`` = flow-adjusted ``portfolio_value_eure`` (moves with the BTC price: inventory risk).

    - daily: ``mtm - mtm at the first observation of the UTC day`` reaching ``-daily_limit_eure``;
      on the first day since start the day starts at 0 (the baseline), so losses before a restart
      still count (conservative);
    - drawdown: ``peak mtm - mtm`` reaching ``drawdown_limit_eure`` (the peak starts at
      ``max(0, first mtm)``);
    - portfolio drop (only when ``portfolio_drop_limit_eure > 0``): ``peak value - value`` reaching
      the limit (the peak starts at the first value seen).

    A limit of 0 for daily or drawdown trips on any loss at all. Once tripped, only ``reset()``
    clears it; ``reset`` measures afresh from the given figures.
    """

    daily_limit_eure: Decimal
    drawdown_limit_eure: Decimal
    portfolio_drop_limit_eure: Decimal = Decimal(0)
    day: int = -1
    day_start_pnl: Decimal = Decimal(0)
    peak_pnl: Decimal | None = None
    peak_value: Decimal | None = None
    last_pnl: Decimal | None = None
    last_value: Decimal | None = None
    tripped: str | None = None

    def observe(self, mtm_eure: Decimal | None, now_ns: int, value_eure: Decimal | None = None) -> str | None:
        """Feed the latest figures (either may be None: not known yet); returns the reason when
        quoting must pause."""
        if mtm_eure is not None:
            self.last_pnl = mtm_eure
            day = now_ns // NS_PER_DAY
            if self.day == -1:
                # First observation since start: mark-to-market PnL is 0 at its baseline, and without
                # history we cannot tell what it was at midnight, so measure from 0 (earlier losses count).
                self.day = day
                self.day_start_pnl = Decimal(0)
                self.peak_pnl = max(Decimal(0), mtm_eure)
            elif day != self.day:
                self.day = day
                self.day_start_pnl = mtm_eure
            if self.peak_pnl is None or mtm_eure > self.peak_pnl:
                self.peak_pnl = mtm_eure
        if value_eure is not None:
            self.last_value = value_eure
            if self.peak_value is None or value_eure > self.peak_value:
                self.peak_value = value_eure
        if self.tripped is None:
            self.tripped = self._check()
        return self.tripped

    def daily_pnl(self) -> Decimal | None:
        return None if self.last_pnl is None else self.last_pnl - self.day_start_pnl

    def drawdown(self) -> Decimal | None:
        if self.last_pnl is None or self.peak_pnl is None:
            return None
        return self.peak_pnl - self.last_pnl

    def portfolio_drop(self) -> Decimal | None:
        if self.last_value is None or self.peak_value is None:
            return None
        return self.peak_value - self.last_value

    def _check(self) -> str | None:
        daily, drawdown, drop = self.daily_pnl(), self.drawdown(), self.portfolio_drop()
        if daily is not None and daily < 0 and daily <= -self.daily_limit_eure:
            return (
                f"daily_loss_limit: {_text(daily)} EURe mark-to-market today "
                f"(limit -{_text(self.daily_limit_eure)})"
            )
        if drawdown is not None and drawdown > 0 and drawdown >= self.drawdown_limit_eure:
            return (
                f"drawdown_limit: {_text(drawdown)} EURe mark-to-market below peak "
                f"(limit {_text(self.drawdown_limit_eure)})"
            )
        if self.portfolio_drop_limit_eure > 0 and drop is not None and drop >= self.portfolio_drop_limit_eure:
            return (
                f"portfolio_drop_limit: portfolio value {_text(drop)} EURe below peak "
                f"(limit {_text(self.portfolio_drop_limit_eure)})"
            )
        return None

    def reset(self, mtm_eure: Decimal | None = None, value_eure: Decimal | None = None) -> None:
        """Operator re-arm: clear the trip and measure afresh from the current figures."""
        self.tripped = None
        if mtm_eure is not None:
            self.peak_pnl = mtm_eure
            self.day_start_pnl = mtm_eure
        if value_eure is not None:
            self.peak_value = value_eure
