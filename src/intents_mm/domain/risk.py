"""Risk limits, exposure reservations and loss limits (pure).

- :class:`Limits`: what a single quote may do. :func:`check_limits` returns every check with its value
  and limit, so the decision record carries the full reasoning chain; the first failing check is the
  decline reason.
- :class:`ReservationBook`: every quote we emit reserves what it could take out of our inventory until
  its deadline. Reservations are released on expiry or a failed submission and marked filled on
  settlement (a filled reservation keeps counting until an inventory snapshot read after the fill
  shows the settlement), so many quotes can be live at once without ever promising more than we hold.
- :class:`LossGuard`: a daily (UTC day) loss limit and a drawdown-from-peak limit on trade PnL; when
  either is hit quoting pauses until an operator re-arms.
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


@dataclass
class LossGuard:
    """Daily (UTC) loss and drawdown-from-peak on trade PnL. Once tripped, only ``reset()`` clears it."""

    daily_limit_eure: Decimal
    drawdown_limit_eure: Decimal
    day: int = -1
    day_start_pnl: Decimal = Decimal(0)
    peak_pnl: Decimal | None = None
    tripped: str | None = None

    def observe(self, trade_pnl_eure: Decimal, now_ns: int) -> str | None:
        """Feed the latest trade PnL; returns the reason when quoting must pause."""
        day = now_ns // NS_PER_DAY
        if self.day == -1:
            # First observation since start: trade PnL is 0 at its baseline, and without history we
            # cannot tell what it was at midnight, so measure from 0 (conservative: earlier losses count).
            self.day = day
            self.day_start_pnl = Decimal(0)
            self.peak_pnl = max(Decimal(0), trade_pnl_eure)
        elif day != self.day:
            self.day = day
            self.day_start_pnl = trade_pnl_eure
        if self.peak_pnl is None or trade_pnl_eure > self.peak_pnl:
            self.peak_pnl = trade_pnl_eure
        if self.tripped is None:
            daily = trade_pnl_eure - self.day_start_pnl
            drawdown = self.peak_pnl - trade_pnl_eure
            if daily <= -self.daily_limit_eure:
                self.tripped = f"daily_loss_limit: {daily} EURe today (limit -{self.daily_limit_eure})"
            elif drawdown >= self.drawdown_limit_eure:
                self.tripped = (
                    f"drawdown_limit: {drawdown} EURe below peak (limit {self.drawdown_limit_eure})"
                )
        return self.tripped

    def reset(self, trade_pnl_eure: Decimal | None = None) -> None:
        """Operator re-arm: clear the trip and measure afresh from the current PnL."""
        self.tripped = None
        if trade_pnl_eure is not None:
            self.peak_pnl = trade_pnl_eure
            self.day_start_pnl = trade_pnl_eure
