"""Portfolio value and PnL, exactly as the operator runbook defines them (pure).

With base B (BTC, smallest units), quote E (EURe, smallest units) and P the reference price in quote per
base (EUR mid times the EURe/EUR rate), baseline ``0`` = the last credited snapshot before the first live
``cmd.execute_trade`` and current ``t`` = the latest snapshot and latest price:

- ``portfolio_value_eure = B_t*P_t + E_t``
- ``trade_pnl_eure = (B_t - B_0)*P_0 + (E_t - E_0)``        (baseline BTC price held fixed)
- ``mark_to_market_pnl_eure = (B_t - B_0)*P_t + (E_t - E_0)`` (both books at the latest price)
- ``price_move_pnl_eure = mark_to_market - trade = (B_t - B_0)*(P_t - P_0)``

Each figure is quantised to the quote asset's smallest unit (1e-18 EURe), and the price-move figure is
derived from the two quantised figures, so ``trade + price_move == mark_to_market`` holds exactly.
The flow-adjusted variants subtract net external deposits minus withdrawals from the current books
first, so funding never looks like trading profit.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, localcontext

from intents_mm.domain.assets import Pair


@dataclass(frozen=True)
class PnL:
    portfolio_value_eure: Decimal
    trade_pnl_eure: Decimal
    mark_to_market_pnl_eure: Decimal
    price_move_pnl_eure: Decimal


def _exact(value: Decimal, quantum: Decimal) -> Decimal:
    return value.quantize(quantum, rounding=ROUND_FLOOR)


def compute_pnl(
    pair: Pair,
    *,
    base0: int,
    quote0: int,
    price0: Decimal,
    base_t: int,
    quote_t: int,
    price_t: Decimal,
) -> PnL:
    """The runbook's figures in quote-asset human units (EURe). Prices are quote per base, human."""
    quantum = Decimal(1).scaleb(-pair.quote.decimals)
    with localcontext() as ctx:
        ctx.prec = 100
        b0 = Decimal(base0).scaleb(-pair.base.decimals)
        bt = Decimal(base_t).scaleb(-pair.base.decimals)
        e0 = Decimal(quote0).scaleb(-pair.quote.decimals)
        et = Decimal(quote_t).scaleb(-pair.quote.decimals)
        value = _exact(bt * price_t + et, quantum)
        trade = _exact((bt - b0) * price0 + (et - e0), quantum)
        mtm = _exact((bt - b0) * price_t + (et - e0), quantum)
        move = mtm - trade
    return PnL(value, trade, mtm, move)


def markout_bps(side: str, fill_price: Decimal, later_mid: Decimal) -> Decimal:
    """``side*(mid_{t+h} - p_fill)/p_fill`` in bps, signed so that profit is positive.

    ``side`` is ours on the base asset: a buy profits when the mid rises above our fill price.
    """
    if fill_price <= 0:
        return Decimal(0)
    sign = 1 if side == "buy" else -1
    with localcontext() as ctx:
        ctx.prec = 40
        return (sign * (later_mid - fill_price) / fill_price * 10_000).quantize(Decimal("0.01"))
