"""The simulated venue's scoreboard: how every solver did, from the venue's own records (pure accounting).

One row per solver account: ours (relay partner ``market-maker``), each competing solver
(``sim-solver-<i>``) and each configured ``[[accounts]]`` account (an outside solver, whichever relay
key or anonymous connection it quotes on). :func:`build_scoreboard` is a pure function of what it
is given, so the same inputs give the same board; :class:`~intents_mm.sim.venue.SimVenue` feeds it
from the relay, the Verifier, the price path and the simulated users.

The contract of each field (also in ``docs/sim-venue.md``, "Reading the scoreboard"):

* ``requests_seen``: quote requests the relay sent to the row's relay partners (once per request
  and partner, however many sockets it has); ``quotes`` / ``quotes_rejected``: the partners' valid
  and refused ``quote_response`` frames; ``wins``: requests whose best-ranked quote was theirs
  (offered first to the user, taken or not); ``fills``: the account's quotes settled on chain.
  ``requests_seen``, ``quotes``, ``wins`` and latency are per partner: an outside account is tied
  to the partners whose valid quotes it signed.
* ``volume``: the sum of both sides of the fills, in whole tokens (exact).
* ``pnl_eur``: the account's balance change on the simulated Verifier between ``start`` (when the
  flow started) and the mark, valued at the true price at the mark: ``sum over tokens of (end -
  start) x price``, BTC at the path's mid, EURe at ``1 / quote_per_fiat`` EUR. Computed with
  :class:`~fractions.Fraction` and printed exactly (``"p/q"`` only if it has no finite decimal form).
  Tokens without a price are listed under ``unvalued`` and left out of the sum.
* ``markouts_bps``: per fill, ``side x (mid(t + h) - fill price) / fill price x 10^4`` from the
  solver's side (a buy of BTC profits when the mid rises), averaged per horizon (1 s, 10 s, 60 s),
  on the true path. A horizon beyond the mark reads the seeded path ahead (``n_matured`` says how
  many had really passed).
* ``fills_by_kind`` / ``informed_fills`` / ``informed_share``: the counterparties of the fills as
  the simulated users classify their requests (a ``kind`` name and an ``informed`` flag); fills
  against anyone else count under ``unknown``.
* ``quote_latency_ms``: from quote event sent to first response, per partner socket, p50 / p99
  (nearest rank) on the relay clock: the only field that depends on wall-clock timing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

from intents_mm.domain.amounts import format_units
from intents_mm.domain.assets import BTC_EURE, Pair
from intents_mm.domain.pnl import markout_bps
from intents_mm.domain.stats import percentile
from intents_mm.sim.relay import FillRecord

MARKOUT_HORIZONS_S: tuple[int, ...] = (1, 10, 60)
_NS_PER_S = 1_000_000_000

#: what a simulated user says about the request behind a fill: ``(kind, informed)``; None = unknown
FlowOf = Callable[[str], tuple[str, bool] | None]


@dataclass(frozen=True)
class SolverEntry:
    """One row: ``role`` is ``ours``, ``competitor`` or ``external``; ``partners`` its relay partner ids."""

    label: str
    role: str
    account_id: str
    partners: tuple[str, ...]


def exact_text(value: Fraction) -> str:
    """``value`` as an exact decimal string, or ``"p/q"`` when it has no finite decimal expansion."""
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    k = max(twos, fives)
    scaled = value * 10**k  # an integer now
    assert scaled.denominator == 1
    digits = Decimal(scaled.numerator).scaleb(-k)
    return format(digits.normalize(), "f") if digits != 0 else "0"


def token_prices(pair: Pair, mid_eur: Decimal) -> dict[str, Fraction]:
    """EUR per smallest unit of each token of ``pair`` at a BTC/EUR mid ``mid_eur``."""
    return {
        pair.base.token_id: Fraction(mid_eur) / 10**pair.base.decimals,
        pair.quote.token_id: 1 / (Fraction(pair.quote_per_fiat) * 10**pair.quote.decimals),
    }


def balance_pnl(
    start: Mapping[str, int], end: Mapping[str, int], prices: Mapping[str, Fraction]
) -> tuple[Fraction, dict[str, int], list[str]]:
    """``(sum of (end - start) x price, the change per token, tokens changed but without a price)``."""
    change = {t: end.get(t, 0) - start.get(t, 0) for t in sorted(set(start) | set(end))}
    change = {t: d for t, d in change.items() if d != 0}
    unvalued = [t for t in change if t not in prices]
    total = sum((Fraction(d) * prices[t] for t, d in change.items() if t in prices), Fraction(0))
    return total, change, unvalued


def fill_side_price(pair: Pair, fill: FillRecord) -> tuple[str, Decimal, int, int] | None:
    """``(solver side on the base, EUR per BTC, base units, quote units)``; None for another pair."""
    base, quote = pair.base.token_id, pair.quote.token_id
    if (fill.asset_in, fill.asset_out) == (base, quote):
        side, base_units, quote_units = "buy", fill.amount_in, fill.amount_out
    elif (fill.asset_in, fill.asset_out) == (quote, base):
        side, base_units, quote_units = "sell", fill.amount_out, fill.amount_in
    else:
        return None
    if base_units <= 0:
        return None
    with localcontext() as ctx:
        ctx.prec = 60
        scale = Decimal(10) ** (pair.quote.decimals - pair.base.decimals)
        price = Decimal(quote_units) / (Decimal(base_units) * scale) / pair.quote_per_fiat
    return side, price, base_units, quote_units


def build_scoreboard(
    entries: Sequence[SolverEntry],
    *,
    start_balances: Mapping[str, Mapping[str, int]],
    end_balances: Mapping[str, Mapping[str, int]],
    fills: Iterable[FillRecord],
    partner_stats: Mapping[str, Mapping[str, Any]],
    latency_ms: Mapping[str, Sequence[float]],
    price_at: Callable[[int], Decimal],
    mark_ns: int,
    flow_of: FlowOf,
    start_ns: int | None = None,
    pair: Pair = BTC_EURE,
) -> dict[str, Any]:
    """The JSON-ready board: ``{"mark": {...}, "solvers": [row per entry, in order]}`` (see module doc)."""
    mark_price = price_at(mark_ns)
    prices = token_prices(pair, mark_price)
    by_account: dict[str, list[FillRecord]] = {}
    for fill in fills:
        by_account.setdefault(fill.signer_id, []).append(fill)
    rows = []
    for entry in entries:
        rows.append(
            _row(
                entry,
                start_balances.get(entry.account_id, {}),
                end_balances.get(entry.account_id, {}),
                by_account.get(entry.account_id, []),
                partner_stats,
                latency_ms,
                prices,
                price_at,
                mark_ns,
                flow_of,
                pair,
            )
        )
    return {
        "mark": {"ns": mark_ns, "start_ns": start_ns, "price_eur": str(mark_price), "pair": pair.name},
        "solvers": rows,
    }


def _row(  # noqa: PLR0917 (one row from the board's inputs)
    entry: SolverEntry,
    start: Mapping[str, int],
    end: Mapping[str, int],
    fills: list[FillRecord],
    partner_stats: Mapping[str, Mapping[str, Any]],
    latency_ms: Mapping[str, Sequence[float]],
    prices: Mapping[str, Fraction],
    price_at: Callable[[int], Decimal],
    mark_ns: int,
    flow_of: FlowOf,
    pair: Pair,
) -> dict[str, Any]:
    counts = Counter[str]()
    for partner in entry.partners:
        stats = partner_stats.get(partner, {})
        for key in ("requests_seen", "quotes", "quotes_rejected", "wins"):
            counts[key] += int(stats.get(key, 0))
    latencies = [ms for partner in entry.partners for ms in latency_ms.get(partner, ())]
    pnl, change, unvalued = balance_pnl(start, end, prices)

    volume_base = volume_quote = 0
    sums: dict[int, Decimal] = dict.fromkeys(MARKOUT_HORIZONS_S, Decimal(0))
    counted = Counter[int]()
    matured = Counter[int]()
    kinds = Counter[str]()
    informed = 0
    for fill in fills:
        flow = flow_of(fill.intent_hash)
        kind, is_informed = flow if flow is not None else ("unknown", False)
        kinds[kind] += 1
        informed += bool(is_informed)
        priced = fill_side_price(pair, fill)
        if priced is None:
            continue
        side, price, base_units, quote_units = priced
        volume_base += base_units
        volume_quote += quote_units
        for h in MARKOUT_HORIZONS_S:
            at = fill.at_ns + h * _NS_PER_S
            sums[h] += markout_bps(side, price, price_at(at))
            counted[h] += 1
            matured[h] += at <= mark_ns
    markouts: dict[str, Any] = {}
    for h in MARKOUT_HORIZONS_S:
        mean = (sums[h] / counted[h]).quantize(Decimal("0.01")) if counted[h] else None
        markouts[f"{h}s"] = None if mean is None else str(mean)
    n_fills = len(fills)
    share = None if not n_fills else str((Decimal(informed) / n_fills).quantize(Decimal("0.0001")))
    return {
        "label": entry.label,
        "role": entry.role,
        "account_id": entry.account_id,
        "partners": list(entry.partners),
        "requests_seen": counts["requests_seen"],
        "quotes": counts["quotes"],
        "quotes_rejected": counts["quotes_rejected"],
        "wins": counts["wins"],
        "fills": n_fills,
        "volume": {
            pair.base.symbol: format_units(pair.base, volume_base),
            pair.quote.symbol: format_units(pair.quote, volume_quote),
        },
        "balances_start": {t: str(v) for t, v in sorted(start.items())},
        "balances_end": {t: str(v) for t, v in sorted(end.items())},
        "balance_change": {t: str(v) for t, v in change.items()},
        "pnl_eur": exact_text(pnl),
        "unvalued": unvalued,
        "markouts_bps": markouts,
        "markouts_n": {f"{h}s": counted[h] for h in MARKOUT_HORIZONS_S},
        "markouts_n_matured": {f"{h}s": matured[h] for h in MARKOUT_HORIZONS_S},
        "fills_by_kind": dict(sorted(kinds.items())),
        "informed_fills": informed,
        "informed_share": share,
        "quote_latency_ms": {
            "n": len(latencies),
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
        },
    }


def render_scoreboard(board: Mapping[str, Any]) -> str:
    """A fixed-width text table of the board (what ``sim-venue`` prints at exit)."""
    mark = board["mark"]
    lines = [
        f"scoreboard (PLAY MONEY; PnL = Verifier balance change marked at {mark['price_eur']} EUR/BTC)",
        f"  {'solver':<14} {'role':<10} {'seen':>6} {'quotes':>6} {'wins':>5} {'fills':>5} "
        f"{'PnL EUR':>14} {'mk1s':>7} {'mk10s':>7} {'mk60s':>7} {'inf%':>6} {'p50ms':>7} {'p99ms':>7}",
    ]

    def num(value: Any, width: int, digits: int = 2) -> str:
        if value is None:
            return f"{'-':>{width}}"
        return f"{float(Fraction(value)):>{width}.{digits}f}"

    for row in board["solvers"]:
        mk, lat = row["markouts_bps"], row["quote_latency_ms"]
        share = None if row["informed_share"] is None else Decimal(row["informed_share"]) * 100
        lines.append(
            f"  {row['label'][:14]:<14} {row['role']:<10} {row['requests_seen']:>6} {row['quotes']:>6} "
            f"{row['wins']:>5} {row['fills']:>5} {num(row['pnl_eur'], 14, 4)} {num(mk['1s'], 7)} "
            f"{num(mk['10s'], 7)} {num(mk['60s'], 7)} {num(share, 6, 1)} {num(lat['p50'], 7)} "
            f"{num(lat['p99'], 7)}"
        )
    return "\n".join(lines)
