"""RFQ pricing (pure): one firm quote per request, as the sum of explicit, logged terms.

Every term is in basis points of the reference mid and widens the quote in our favour, except the
inventory skew, which moves the reservation price (Avellaneda-Stoikov style, size-aware: inventory is
taken halfway through the trade). For a request where we BUY the base asset (the user gives BTC) the
price is ``mid * (1 - edge)``; where we SELL it, ``mid * (1 + edge)``, with

    edge_bps = base_edge + volatility + free_option + size + protocol_fee + skew(side)

- ``volatility = vol_multiplier * sigma * sqrt(reaction_s)``: price risk between our answer and the
  user's decision (sigma in bps per sqrt(second), EWMA of the aggregated reference);
- ``free_option = option_multiplier * sigma * sqrt(deadline_s)``: a signed quote is an option the user
  holds until its deadline, with no last look (~0.4 * sigma * sqrt(tau) for an at-the-money option);
- ``size = size_bps_per_eure * notional_eure``;
- ``protocol_fee = fee_pips / 100`` when the Verifier fee is priced in (1 bps = 100 pips);
- ``skew = skew_bps * q`` for a buy and ``-skew_bps * q`` for a sell, where ``q`` in [-1, 1] is the
  base inventory halfway through the trade relative to the middle of its [min, max] band: long
  inventory bids lower and offers lower.

Amounts are exact integers and always rounded against us: what we give is floored, what we ask for is
ceiled. Prices use exact rational arithmetic (``Fraction``) so no binary float ever touches money.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction
from typing import Literal

from intents_mm.domain.assets import Pair

Side = Literal["buy", "sell"]  # from our point of view, on the pair's base asset
BPS = Fraction(1, 10_000)


@dataclass(frozen=True)
class PricingParams:
    base_edge_bps: Decimal = Decimal(20)
    vol_multiplier: Decimal = Decimal(1)
    option_multiplier: Decimal = Decimal("0.4")
    skew_bps: Decimal = Decimal(30)
    size_bps_per_eure: Decimal = Decimal("0.5")
    reaction_ms: int = 3000  # the relay's answer window: how long before the user decides
    fee_in_price: bool = True


@dataclass(frozen=True)
class QuoteRequest:
    """A relay request, phrased from the user's side: the user gives ``asset_in`` and gets ``asset_out``."""

    quote_id: str
    asset_in: str
    asset_out: str
    exact_amount_in: int | None
    exact_amount_out: int | None
    min_deadline_ms: int


@dataclass(frozen=True)
class Inventory:
    """Base-asset band used for the skew (smallest units)."""

    base_units: int  # credited minus what live quotes could still take out
    min_base_units: int
    max_base_units: int


@dataclass(frozen=True)
class PricedQuote:
    side: Side
    amount_in: int  # what we receive (the user's asset_in)
    amount_out: int  # what we give (the user's asset_out)
    price: Decimal  # quote-asset per base-asset, human units (e.g. EURe per BTC)
    mid: Decimal  # reference mid in quote-asset per base-asset (EUR mid * quote_per_fiat)
    edge_bps: Decimal  # total, from all terms
    terms_bps: dict[str, Decimal]
    notional_quote: Decimal  # size of the trade in quote-asset human units
    base_delta: int  # signed change of our base balance if it settles
    quote_delta: int  # signed change of our quote balance if it settles


def side_of(pair: Pair, request: QuoteRequest) -> Side:
    """We buy base when the user gives base; we sell base when the user takes it."""
    return "buy" if request.asset_in == pair.base.token_id else "sell"


def _sqrt_dec(value: Decimal) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 34
        return value.sqrt() if value > 0 else Decimal(0)


# Exact conversions memoised: parameters, deadlines, the reference mid and sigma repeat from one
# quote to the next, and Fraction(Decimal) with 28-34 digits is the costly part of a price. Every
# cached value is exact, so a quote is the same number with or without the caches.
@functools.lru_cache(maxsize=256)
def _frac(value: Decimal) -> Fraction:
    return Fraction(value)


@functools.lru_cache(maxsize=256)
def _sqrt_s(ms: int) -> Fraction:
    """sqrt(ms / 1000) as computed by ``_sqrt_dec`` (34 digits), exactly as a Fraction."""
    return Fraction(_sqrt_dec(Decimal(ms) / 1000))


def _q(value: Fraction, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    """A rational as a Decimal rounded to 6 places (logged terms; limits use ``ROUND_CEILING``)."""
    with localcontext() as ctx:
        ctx.prec = 50
        return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(
            Decimal("0.000001"), rounding=rounding
        )


def price_quote(
    pair: Pair,
    request: QuoteRequest,
    *,
    reference_mid_fiat: Decimal,
    sigma_bps_per_sqrt_s: Decimal,
    deadline_ms: int,
    inventory: Inventory,
    fee_pips: int,
    params: PricingParams,
) -> PricedQuote:
    """Price one request. Raises nothing for business reasons: limits are checked by the caller."""
    side = side_of(pair, request)
    quote_per_fiat = _frac(pair.quote_per_fiat)
    mid = _frac(reference_mid_fiat) * quote_per_fiat  # quote per base (human)
    base_unit = pair.base.unit
    quote_unit = pair.quote.unit
    # quote-asset units per base-asset unit, at the mid
    mid_units = mid * quote_unit / base_unit

    sigma = _frac(sigma_bps_per_sqrt_s)
    vol = _frac(params.vol_multiplier) * sigma * _sqrt_s(params.reaction_ms)
    option = _frac(params.option_multiplier) * sigma * _sqrt_s(deadline_ms)
    fee = Fraction(fee_pips, 100) if params.fee_in_price else Fraction(0)
    base = _frac(params.base_edge_bps)

    # notional at the mid (quote-asset units), to size the size term and the skew's half-trade
    fixed = request.exact_amount_in if request.exact_amount_in is not None else request.exact_amount_out
    assert fixed is not None
    fixed_is_base = (request.exact_amount_in is not None and request.asset_in == pair.base.token_id) or (
        request.exact_amount_out is not None and request.asset_out == pair.base.token_id
    )
    notional_units = Fraction(fixed) * mid_units if fixed_is_base else Fraction(fixed)
    base_trade_units = Fraction(fixed) if fixed_is_base else Fraction(fixed) / mid_units
    size = _frac(params.size_bps_per_eure) * notional_units / quote_unit / quote_per_fiat

    half_band = Fraction(inventory.max_base_units - inventory.min_base_units, 2)
    centre = Fraction(inventory.max_base_units + inventory.min_base_units, 2)
    signed_half_trade = base_trade_units / 2 if side == "buy" else -base_trade_units / 2
    if half_band > 0:
        q = (Fraction(inventory.base_units) + signed_half_trade - centre) / half_band
        q = max(Fraction(-1), min(Fraction(1), q))
    else:
        q = Fraction(0)
    skew = _frac(params.skew_bps) * q * (1 if side == "buy" else -1)

    edge = base + vol + option + size + fee + skew
    price_units = mid_units * (1 - edge * BPS) if side == "buy" else mid_units * (1 + edge * BPS)
    if price_units <= 0:
        price_units = Fraction(0)

    amount_in, amount_out = _amounts(pair, request, side, price_units)
    base_delta = amount_in if side == "buy" else -amount_out
    quote_delta = -amount_out if side == "buy" else amount_in
    notional_actual = Fraction(abs(quote_delta), quote_unit)
    terms = {
        "base_edge": _q(base),
        "volatility": _q(vol),
        "free_option": _q(option),
        "size": _q(size),
        "protocol_fee": _q(fee),
        "inventory_skew": _q(skew),
    }
    return PricedQuote(
        side=side,
        amount_in=amount_in,
        amount_out=amount_out,
        price=_q(price_units * base_unit / quote_unit),
        mid=_q(mid),
        edge_bps=_q(edge),
        terms_bps=terms,
        notional_quote=_q(notional_actual, ROUND_CEILING),  # checked against limits: round against us
        base_delta=base_delta,
        quote_delta=quote_delta,
    )


def _amounts(pair: Pair, request: QuoteRequest, side: Side, price_units: Fraction) -> tuple[int, int]:
    """(amount_in we receive, amount_out we give), rounded against us. ``price_units`` is quote/base units."""
    if request.exact_amount_in is not None:
        amount_in = request.exact_amount_in
        if side == "buy":  # user gives base, we give quote: floor(base * price)
            amount_out = math.floor(Fraction(amount_in) * price_units)
        else:  # user gives quote, we give base: floor(quote / price)
            amount_out = math.floor(Fraction(amount_in) / price_units) if price_units > 0 else 0
        return amount_in, amount_out
    assert request.exact_amount_out is not None
    amount_out = request.exact_amount_out
    if side == "buy":  # user wants quote from us, gives base: ceil(quote / price)
        amount_in = math.ceil(Fraction(amount_out) / price_units) if price_units > 0 else 0
    else:  # user wants base from us, gives quote: ceil(base * price)
        amount_in = math.ceil(Fraction(amount_out) * price_units)
    return amount_in, amount_out


def realised_edge_bps(quote: PricedQuote) -> Decimal:
    """Edge actually captured against the mid after rounding (positive = in our favour)."""
    if quote.mid <= 0 or quote.price <= 0:
        return Decimal(0)
    with localcontext() as ctx:
        ctx.prec = 40
        if quote.side == "buy":
            return ((quote.mid - quote.price) / quote.mid * 10_000).quantize(Decimal("0.0001"))
        return ((quote.price - quote.mid) / quote.mid * 10_000).quantize(Decimal("0.0001"))
