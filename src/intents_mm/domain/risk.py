"""Risk limits, exposure reservations and loss limits (pure).

- :class:`Limits`: what a single quote may do. :func:`check_limits` returns every check with its value
  and limit, so the decision record carries the full reasoning chain; the first failing check is the
  decline reason.
- :class:`ReservationBook`: every quote we emit reserves what it could take out of our inventory until
  its deadline. Reservations are released on expiry or a failed submission and marked filled on
  settlement (a filled reservation keeps counting until an inventory snapshot read after the fill
  shows the settlement), so many quotes can be live at once without ever promising more than we hold.
- :class:`LossGuard`: a daily (UTC day) loss limit and a drawdown-from-peak limit on the flow-adjusted
  mark-to-market PnL (both books at the latest price, net of deposits and withdrawals), plus an optional
  limit on the fall of the flow-adjusted portfolio value from its peak (inventory risk; 0 = off). When
  one is hit quoting pauses until an operator re-arms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    expires_ns: int  # the signed deadline: after it the quote can no longer settle
    filled_ns: int | None = None


_EXACT = Context(prec=80)  # sums of notionals (28 significant digits each) stay exact


@dataclass
class ReservationBook:
    """Live quotes' claims on inventory, keyed by command id.

    The totals the limit checks read (:meth:`reserved_out`, :meth:`potential_in`,
    :meth:`outstanding_eure`) are kept up to date by every change, so a decision costs O(1) however
    many quotes are live; ``live`` is read-only for callers (change it through the methods).
    """

    live: dict[str, Reservation] = field(default_factory=dict)
    _out: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _in: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _unfilled_eure: Decimal = field(default=Decimal(0), init=False, repr=False)

    def __post_init__(self) -> None:
        for res in self.live.values():
            self._count(res, 1)

    def _count(self, res: Reservation, sign: int) -> None:
        self._out[res.asset_out] = self._out.get(res.asset_out, 0) + sign * res.amount_out
        self._in[res.asset_in] = self._in.get(res.asset_in, 0) + sign * res.amount_in
        if res.filled_ns is None:
            notional = res.notional_eure if sign > 0 else -res.notional_eure
            self._unfilled_eure = _EXACT.add(self._unfilled_eure, notional)

    def _drop(self, command_id: str) -> Reservation | None:
        res = self.live.pop(command_id, None)
        if res is not None:
            self._count(res, -1)
        return res

    def reserve(self, reservation: Reservation) -> None:
        self._drop(reservation.command_id)
        self.live[reservation.command_id] = reservation
        self._count(reservation, 1)

    def release(self, command_id: str) -> Reservation | None:
        return self._drop(command_id)

    def mark_filled(self, command_id: str, now_ns: int) -> Reservation | None:
        res = self.live.get(command_id)
        if res is None:
            return None
        filled = Reservation(**{**res.__dict__, "filled_ns": now_ns})
        self.reserve(filled)
        return filled

    def expire(self, now_ns: int, *, grace_ns: int = 0) -> list[Reservation]:
        """Drop unfilled reservations whose deadline has passed (plus a grace for chain finality)."""
        gone = [r for r in self.live.values() if r.filled_ns is None and r.expires_ns + grace_ns < now_ns]
        for r in gone:
            self._drop(r.command_id)
        return gone

    def on_inventory(self, read_ts_ns: int) -> list[Reservation]:
        """An inventory snapshot read at ``read_ts_ns`` includes every fill before it: drop those."""
        done = [r for r in self.live.values() if r.filled_ns is not None and r.filled_ns < read_ts_ns]
        for r in done:
            self._drop(r.command_id)
        return done

    def reserved_out(self, asset: str) -> int:
        return self._out.get(asset, 0)

    def potential_in(self, asset: str) -> int:
        return self._in.get(asset, 0)

    def outstanding_eure(self) -> Decimal:
        return +self._unfilled_eure  # rounded to the current context, like a sum of the notionals

    def available(self, asset: str, credited: int) -> int:
        """What a new quote may still promise to give out of ``credited``."""
        return credited - self.reserved_out(asset)


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
