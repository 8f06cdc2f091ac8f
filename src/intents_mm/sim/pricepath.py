"""One seeded BTC/EUR price path shared by every simulated venue.

A geometric random walk with Poisson jumps on a fixed time grid of ``tick_s`` seconds, starting at
``origin_ns``. Step ``k`` covers ``[origin + k*tick, origin + (k+1)*tick)``; steps are generated
lazily and kept, so ``mid_at(ns)`` is a pure function of (seed, parameters, origin, shocks, ns):
the same seed gives the same path however and in whatever order it is queried.

Each step draws exactly three numbers from a private ``random.Random(seed)`` — a normal for the
diffusion, a uniform for "is there a jump" and a uniform for the jump's sign and size — so the
stream never drifts out of alignment. The diffusion is ``sigma*sqrt(dt)*Z - sigma^2*dt/2`` in log
price (a martingale in price), ``sigma = vol_annual`` per sqrt(365-day year). A jump happens with
probability ``1 - exp(-jump_rate_per_hour * dt / 3600)`` per step, of a size uniform in
``[0.5, 1.5] * jump_size_bps`` and a random sign.

Floats live only inside the generator; prices handed out are Decimals quantised to 0.01 EUR.
"""

from __future__ import annotations

import bisect
import math
import random
from array import array
from decimal import ROUND_HALF_EVEN, Decimal

from intents_mm.clock import Clock
from intents_mm.errors import InputError

_CENT = Decimal("0.01")
_SECONDS_PER_YEAR = 365 * 24 * 3600
_NS_PER_S = 1_000_000_000


class PricePath:
    """A deterministic BTC/EUR mid-price path addressed by time.

    The path's origin (its step 0) is ``start_ns`` when given, else ``clock.now_ns()`` when the path
    is made, else the first ``mid_at`` argument. Times before the origin answer ``start_price``.
    """

    def __init__(  # noqa: PLR0917 (the documented positional signature)
        self,
        seed: int,
        start_price: Decimal = Decimal("60000"),
        vol_annual: float = 0.6,
        jump_rate_per_hour: float = 2.0,
        jump_size_bps: float = 40.0,
        tick_s: float = 0.1,
        *,
        clock: Clock | None = None,
        start_ns: int | None = None,
    ) -> None:
        if not isinstance(start_price, Decimal) or not start_price.is_finite() or start_price <= 0:
            raise InputError(f"start price must be a positive Decimal, got {start_price!r}")
        if not (vol_annual >= 0 and jump_rate_per_hour >= 0 and jump_size_bps >= 0):
            raise InputError("volatility, jump rate and jump size must not be negative")
        if not tick_s > 0:
            raise InputError(f"tick_s must be positive, got {tick_s}")
        self.seed = seed
        self.start_price = start_price
        self.vol_annual = vol_annual
        self.jump_rate_per_hour = jump_rate_per_hour
        self.jump_size_bps = jump_size_bps
        self.tick_s = tick_s
        self._clock = clock
        self._tick_ns = max(1, round(tick_s * _NS_PER_S))
        self._origin_ns: int | None = (
            start_ns if start_ns is not None else (clock.now_ns() if clock else None)
        )
        self._rng = random.Random(seed)
        self._log0 = math.log(float(start_price))
        # _logs[k] is the log price during step k, before scripted shocks.
        self._logs = array("d", [self._log0])
        dt = tick_s
        sigma = vol_annual * math.sqrt(dt / _SECONDS_PER_YEAR)
        self._sigma_step = sigma
        self._drift_step = -0.5 * sigma * sigma
        self._jump_prob = 1.0 - math.exp(-jump_rate_per_hour * dt / 3600.0)
        self._jump_log = jump_size_bps / 10_000.0
        # Scripted shocks: sorted step indices and the cumulative log offset from that step on.
        self._shock_steps: list[int] = []
        self._shock_cum: list[float] = []

    @property
    def origin_ns(self) -> int | None:
        return self._origin_ns

    def step_index(self, ns: int) -> int:
        """The grid step that covers ``ns`` (negative before the origin)."""
        origin = self._ensure_origin(ns)
        return (ns - origin) // self._tick_ns

    def _ensure_origin(self, ns: int) -> int:
        if self._origin_ns is None:
            self._origin_ns = ns
        return self._origin_ns

    def _extend_to(self, k: int) -> None:
        logs = self._logs
        rng = self._rng
        last = logs[-1]
        for _ in range(len(logs), k + 1):
            z = rng.normalvariate(0.0, 1.0)
            u_jump = rng.random()
            u_size = rng.random()
            step = self._drift_step + self._sigma_step * z
            if u_jump < self._jump_prob:
                # u_size in [0, 0.5) -> down, [0.5, 1) -> up; magnitude uniform in [0.5, 1.5] x size.
                sign = 1.0 if u_size >= 0.5 else -1.0
                magnitude = 0.5 + 2.0 * (u_size if u_size < 0.5 else u_size - 0.5)
                step += sign * magnitude * self._jump_log
            last += step
            logs.append(last)

    def _shock_offset(self, k: int) -> float:
        i = bisect.bisect_right(self._shock_steps, k)
        return self._shock_cum[i - 1] if i else 0.0

    def mid_at(self, ns: int) -> Decimal:
        """The mid at wall-clock ``ns``, quantised to 0.01 EUR (half-even)."""
        k = self.step_index(ns)
        if k < 0:
            return self.start_price
        if k >= len(self._logs):
            self._extend_to(k)
        price = math.exp(self._logs[k] + self._shock_offset(k))
        return Decimal(price).quantize(_CENT, rounding=ROUND_HALF_EVEN)

    def mid_now(self) -> Decimal:
        """The mid at the injected clock's ``now_ns``."""
        if self._clock is None:
            raise InputError("this price path has no clock; use mid_at(ns)")
        return self.mid_at(self._clock.now_ns())

    def shock(self, bps: float, at_ns: int | None = None) -> None:
        """Move the path by ``bps`` from ``at_ns`` (default: the clock's now) onwards, for scripted jumps.

        The random walk underneath is unchanged, so the same seed and the same shocks give the same
        prices.
        """
        if not math.isfinite(bps) or bps <= -10_000:
            raise InputError(f"shock must be a finite move above -10000 bps, got {bps}")
        if at_ns is None:
            if self._clock is None:
                raise InputError("shock needs at_ns when the price path has no clock")
            at_ns = self._clock.now_ns()
        k = max(0, self.step_index(at_ns))
        delta = math.log1p(bps / 10_000.0)
        i = bisect.bisect_right(self._shock_steps, k)
        if i and self._shock_steps[i - 1] == k:
            i -= 1
        else:
            before = self._shock_cum[i - 1] if i else 0.0
            self._shock_steps.insert(i, k)
            self._shock_cum.insert(i, before)
        for j in range(i, len(self._shock_cum)):
            self._shock_cum[j] += delta
