"""Competitors worth beating: two solvers beside the fixed-spread :class:`CompetingSolver`.

Both speak the relay's real WebSocket exactly as :class:`~intents_mm.sim.participants.CompetingSolver`
(same subscribe, ``quote_response``, NEP-413 ``token_diff``, balance check); only the price and the
nonce differ. Amounts are exact ints in smallest units; spreads and markouts are ``Decimal`` bps.

* :class:`ConstantProductSolver`: the public reference design (``defuse-protocol/near-intents-amm-solver``,
  ``QuoterService``). It prices from its own reserves on the Verifier (``x*y=k``) with a fixed margin
  in bips taken from the input (``getAmountOut`` floored, ``getAmountIn`` ceiled), refuses a quote
  that would take its whole output reserve, and signs every quote of one reserve state with ONE legacy
  nonce: ``sha256("reserves:<base>:<quote>")`` of the reserves in smallest units (the reference's
  ``generateDeterministicNonce``). The nonce changes only when its balances change, so two requests
  quoted in the same state carry the same nonce: once one settles the other is dead, and the relay
  drops it at ranking (the user falls back to the next best quote).
* :class:`TightSolver`: a tight spread off a leading price (the true path ``lead_ms`` ahead, standing
  in for a faster feed) that learns from its own fills: ``markout_ms`` after each fill it marks the
  fill against the true path (bps in its favour), keeps an exponential average (``markout_alpha``)
  and quotes ``spread_bps + widen_factor * max(0, -average)``, at most ``max_spread_bps``.
  Adverse fills widen it; fills that held their value let it tighten back to ``spread_bps``.

Both are deterministic given the same reserves, price path and fill sequence.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

from intents_mm.errors import InputError
from intents_mm.near.nonce import VERSIONED_MAGIC
from intents_mm.sim.participants import CompetingSolver, quote_other_side, units_price_eur
from intents_mm.sim.scenario import SolverSpec

_NS_PER_MS = 1_000_000
_BIPS = 10_000
_BPS = Decimal(10_000)


def amm_amount_out(amount_in: int, reserve_in: int, reserve_out: int, margin_bips: int) -> int:
    """Output for an exact input: ``(a*(1-m)*R_out) // (R_in + a*(1-m))`` in integer bips (floored)."""
    if amount_in <= 0 or reserve_in <= 0 or reserve_out <= 0:
        return 0
    with_fee = amount_in * (_BIPS - margin_bips)
    return (with_fee * reserve_out) // (reserve_in * _BIPS + with_fee)


def amm_amount_in(amount_out: int, reserve_in: int, reserve_out: int, margin_bips: int) -> int | None:
    """Input for an exact output (ceiled); ``None`` when the pool cannot pay ``amount_out``."""
    if amount_out <= 0 or reserve_in <= 0 or reserve_out <= amount_out or margin_bips >= _BIPS:
        return None
    numerator = reserve_in * amount_out * _BIPS
    denominator = (reserve_out - amount_out) * (_BIPS - margin_bips)
    return -(-numerator // denominator)


def reserves_nonce(reserve_base: int, reserve_quote: int) -> bytes:
    """The reference solver's deterministic legacy nonce of one reserve state."""
    return hashlib.sha256(f"reserves:{reserve_base}:{reserve_quote}".encode()).digest()


class ConstantProductSolver(CompetingSolver):
    """A constant-product market maker on its own Verifier balances (see the module docstring)."""

    def __init__(self, *args: Any, margin_bps: int = 30, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= margin_bps < _BIPS:
            raise InputError("margin_bps must be in 0..9999")
        self.margin_bps = margin_bps
        self._state_nonce: bytes | None = None
        self.nonces_used: set[bytes] = set()  # distinct reserve-state nonces it has signed with

    def reserves(self) -> tuple[int, int]:
        """``(base, quote)`` balances on the Verifier: the pool."""
        v = self._verifier
        return v.balance_of(self.account_id, self.pair.base.token_id), v.balance_of(
            self.account_id, self.pair.quote.token_id
        )

    def quote_amount(self, asset_in: str, exact_in: bool, fixed: int) -> int | None:
        r_base, r_quote = self.reserves()
        self._state_nonce = reserves_nonce(r_base, r_quote)
        r_in, r_out = (r_base, r_quote) if asset_in == self.pair.base.token_id else (r_quote, r_base)
        if exact_in:
            out = amm_amount_out(fixed, r_in, r_out, self.margin_bps)
            return out if 0 < out < r_out else None
        return amm_amount_in(fixed, r_in, r_out, self.margin_bps)

    def quote_nonce(self, deadline_ns: int) -> bytes | None:
        del deadline_ns  # a legacy nonce: no deadline inside
        nonce = self._state_nonce
        if nonce is None or nonce.startswith(VERSIONED_MAGIC):  # would not read as a legacy nonce
            return None
        self.nonces_used.add(nonce)
        return nonce


@dataclass(frozen=True)
class Markout:
    """One fill marked ``markout_ms`` later against the true path."""

    fill_ns: int
    solver_buys_base: bool
    price_eur: Decimal
    later_eur: Decimal
    bps: Decimal  # in the solver's favour (negative = adverse)


class TightSolver(CompetingSolver):
    """A tight solver on a leading price that widens from its own fills' markouts."""

    def __init__(
        self,
        *args: Any,
        lead_ms: int = 300,
        markout_ms: int = 5000,
        widen_factor: Decimal = Decimal(1),
        markout_alpha: Decimal = Decimal("0.3"),
        max_spread_bps: Decimal = Decimal(200),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if lead_ms < 0 or markout_ms <= 0:
            raise InputError("lead_ms must be >= 0 and markout_ms > 0")
        if not 0 < markout_alpha <= 1 or widen_factor < 0 or max_spread_bps < self.config.spread_bps:
            raise InputError("markout_alpha in (0, 1], widen_factor >= 0, max_spread_bps >= spread_bps")
        self.lead_ms = lead_ms
        self.markout_ms = markout_ms
        self.widen_factor = widen_factor
        self.markout_alpha = markout_alpha
        self.max_spread_bps = max_spread_bps
        self.average_markout_bps: Decimal | None = None
        self.markouts: deque[Markout] = deque(maxlen=10_000)
        self._unmarked: deque[tuple[int, bool, Decimal]] = deque()  # fills not yet marked

    def spread_bps(self) -> Decimal:
        """The spread it quotes now (after marking every fill whose horizon has passed)."""
        self._mark(self._clock.now_ns())
        avg = self.average_markout_bps
        widen = Decimal(0) if avg is None or avg >= 0 else -avg * self.widen_factor
        return min(self.config.spread_bps + widen, self.max_spread_bps)

    def quote_amount(self, asset_in: str, exact_in: bool, fixed: int) -> int | None:
        spread = self.spread_bps()
        lead = self._price_at(self._clock.now_ns() + self.lead_ms * _NS_PER_MS)
        return quote_other_side(self.pair, lead, spread, asset_in=asset_in, exact_in=exact_in, fixed=fixed)

    def on_fill(self, data: Mapping[str, Any]) -> None:
        sent = self.sent.get(str(data.get("quote_hash")))
        if sent is None:
            return
        buys = sent.asset_in == self.pair.base.token_id
        base_units, quote_units = (
            (sent.amount_in, sent.amount_out) if buys else (sent.amount_out, sent.amount_in)
        )
        self.record_fill(self._clock.now_ns(), buys, units_price_eur(self.pair, base_units, quote_units))

    def record_fill(self, fill_ns: int, solver_buys_base: bool, price_eur: Decimal) -> None:
        """A fill of one of its quotes at ``price_eur`` (EUR per base token), to mark later."""
        self._unmarked.append((fill_ns, solver_buys_base, price_eur))

    def _mark(self, now_ns: int) -> None:
        horizon = self.markout_ms * _NS_PER_MS
        while self._unmarked and self._unmarked[0][0] + horizon <= now_ns:
            fill_ns, buys, price = self._unmarked.popleft()
            later = self._price_at(fill_ns + horizon)
            with localcontext() as ctx:
                ctx.prec = 40
                move = (later - price) / price * _BPS
                bps = move if buys else -move
                avg = self.average_markout_bps
                a = self.markout_alpha
                self.average_markout_bps = bps if avg is None else a * bps + (1 - a) * avg
            self.markouts.append(Markout(fill_ns, buys, price, later, bps))


def solver_class(spec: SolverSpec) -> type[CompetingSolver]:
    """The solver class for a scenario ``[[solvers]]`` entry's ``kind``."""
    return {"fixed": CompetingSolver, "amm": ConstantProductSolver, "tight": TightSolver}[spec.kind]


def solver_kwargs(spec: SolverSpec) -> dict[str, Any]:
    """The kind-specific constructor arguments of a ``[[solvers]]`` entry."""
    if spec.kind == "amm":
        return {"margin_bps": spec.margin_bps}
    if spec.kind == "tight":
        return {
            "lead_ms": spec.lead_ms,
            "markout_ms": spec.markout_ms,
            "widen_factor": spec.widen_factor,
            "markout_alpha": spec.markout_alpha,
            "max_spread_bps": spec.max_spread_bps,
        }
    return {}
