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

Regimes, all off by default (then the path is bit-for-bit the one above, because the extra
features draw from their own seeded streams, never from the main one):

* **Volatility regimes** (``regime_vol_multiplier > 1``): a two-state Markov chain, calm and
  turbulent, switching per step with probabilities ``dt / regime_calm_mean_s`` and
  ``dt / regime_turbulent_mean_s`` drawn from ``random.Random(f"{seed}:regime")``. In the turbulent
  regime the diffusion's sigma is multiplied by ``regime_vol_multiplier``, so squared returns are
  autocorrelated (volatility clusters) while the price stays a martingale.
* **Clustered jumps** (``jump_branching > 0``): a discretised Hawkes process. The jump intensity
  per second is ``jump_rate_per_hour / 3600 + e``; every jump adds ``jump_branching /
  jump_decay_s`` to ``e``, which decays by ``exp(-dt / jump_decay_s)`` per step, so each jump
  begets ``jump_branching`` further jumps on average (the branching ratio, < 1).
* **A crash** (``crash_at_s`` set): from ``crash_at_s`` after the origin the log price is moved
  linearly over ``crash_duration_s`` by ``log1p(crash_bps / 10000)`` in total (default -10 %), and
  stays there; the random walk underneath is unchanged.

A second seeded path, EUR/USD, runs on the same grid from ``random.Random(f"{seed}:eurusd")`` (one
normal per step, ``eurusd_vol_annual``, no jumps). BTC/USD is *defined* as BTC/EUR x EUR/USD (same
step, in log space), so the cross BTC/USD / EUR/USD equals the BTC/EUR path exactly up to the
quantisation of the numbers handed out (:meth:`PricePath.pair_mid_at`).

Floats live only inside the generator; prices handed out are Decimals quantised to 0.01 EUR (or
USD) for BTC and to 1e-8 USD for EUR/USD.
"""

from __future__ import annotations

import bisect
import math
import random
from array import array
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING

from intents_mm.clock import Clock
from intents_mm.errors import InputError

if TYPE_CHECKING:
    from intents_mm.sim.scenario import PriceConfig

PAIRS: tuple[str, ...] = ("btceur", "btcusd", "eurusd")
_CENT = Decimal("0.01")
_FX_UNIT = Decimal("0.00000001")
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
        regime_vol_multiplier: float = 1.0,
        regime_calm_mean_s: float = 600.0,
        regime_turbulent_mean_s: float = 120.0,
        jump_branching: float = 0.0,
        jump_decay_s: float = 30.0,
        crash_at_s: float | None = None,
        crash_bps: float = -1000.0,
        crash_duration_s: float = 120.0,
        eurusd_start: Decimal = Decimal("1.08"),
        eurusd_vol_annual: float = 0.07,
    ) -> None:
        if not isinstance(start_price, Decimal) or not start_price.is_finite() or start_price <= 0:
            raise InputError(f"start price must be a positive Decimal, got {start_price!r}")
        if not (vol_annual >= 0 and jump_rate_per_hour >= 0 and jump_size_bps >= 0):
            raise InputError("volatility, jump rate and jump size must not be negative")
        if not tick_s > 0:
            raise InputError(f"tick_s must be positive, got {tick_s}")
        if not (regime_vol_multiplier >= 1 and regime_calm_mean_s > 0 and regime_turbulent_mean_s > 0):
            raise InputError("regime_vol_multiplier must be >= 1 and the regime means positive")
        if not (0 <= jump_branching < 1 and jump_decay_s > 0):
            raise InputError("jump_branching must be in [0, 1) and jump_decay_s positive")
        if not (math.isfinite(crash_bps) and crash_bps > -10_000 and crash_duration_s >= 0):
            raise InputError("crash_bps must be above -10000 and crash_duration_s not negative")
        if not isinstance(eurusd_start, Decimal) or not eurusd_start.is_finite() or eurusd_start <= 0:
            raise InputError(f"eurusd_start must be a positive Decimal, got {eurusd_start!r}")
        if not eurusd_vol_annual >= 0:
            raise InputError("eurusd_vol_annual must not be negative")
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
        # Volatility regimes (own stream, drawn only when enabled).
        self.regime_vol_multiplier = regime_vol_multiplier
        self._regimes_on = regime_vol_multiplier > 1.0
        self._regime_rng = random.Random(f"{seed}:regime")
        self._p_to_turbulent = min(1.0, dt / regime_calm_mean_s)
        self._p_to_calm = min(1.0, dt / regime_turbulent_mean_s)
        self._turbulent = False
        self._regimes = bytearray(b"\x00")  # _regimes[k] == 1: step k is turbulent
        # Hawkes excitation of the jump intensity (per second), and the jump steps seen.
        self.jump_branching = jump_branching
        self._excite = 0.0
        self._excite_decay = math.exp(-dt / jump_decay_s)
        self._excite_kick = jump_branching / jump_decay_s
        self._base_rate_s = jump_rate_per_hour / 3600.0
        self._jump_steps: list[int] = []
        # The crash ramp, in steps from the origin.
        self._crash: tuple[int, int, float] | None = None
        if crash_at_s is not None:
            first = max(0, round(crash_at_s / tick_s))
            self._crash = (first, max(1, round(crash_duration_s / tick_s)), math.log1p(crash_bps / 10_000))
        # EUR/USD on the same grid (own stream).
        self.eurusd_start = eurusd_start
        self._fx_rng = random.Random(f"{seed}:eurusd")
        fx_sigma = eurusd_vol_annual * math.sqrt(dt / _SECONDS_PER_YEAR)
        self._fx_sigma_step = fx_sigma
        self._fx_drift_step = -0.5 * fx_sigma * fx_sigma
        self._fx_logs = array("d", [math.log(float(eurusd_start))])

    @classmethod
    def from_config(
        cls, seed: int, config: PriceConfig, *, clock: Clock | None = None, start_ns: int | None = None
    ) -> PricePath:
        """The path a scenario's ``[price]`` section describes."""
        c = config
        return cls(
            seed,
            c.start_price,
            c.vol_annual,
            c.jump_rate_per_hour,
            c.jump_size_bps,
            c.tick_s,
            clock=clock,
            start_ns=start_ns,
            regime_vol_multiplier=c.regime_vol_multiplier,
            regime_calm_mean_s=c.regime_calm_mean_s,
            regime_turbulent_mean_s=c.regime_turbulent_mean_s,
            jump_branching=c.jump_branching,
            jump_decay_s=c.jump_decay_s,
            crash_at_s=c.crash_at_s,
            crash_bps=c.crash_bps,
            crash_duration_s=c.crash_duration_s,
            eurusd_start=c.eurusd_start,
            eurusd_vol_annual=c.eurusd_vol_annual,
        )

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
        hawkes = self.jump_branching > 0
        dt = self.tick_s
        for index in range(len(logs), k + 1):
            z = rng.normalvariate(0.0, 1.0)
            u_jump = rng.random()
            u_size = rng.random()
            sigma, drift = self._sigma_step, self._drift_step
            if self._regimes_on:
                u_regime = self._regime_rng.random()
                if self._turbulent:
                    self._turbulent = u_regime >= self._p_to_calm
                else:
                    self._turbulent = u_regime < self._p_to_turbulent
                self._regimes.append(1 if self._turbulent else 0)
                if self._turbulent:
                    sigma *= self.regime_vol_multiplier
                    drift = -0.5 * sigma * sigma
            step = drift + sigma * z
            if hawkes:
                jump_prob = 1.0 - math.exp(-(self._base_rate_s + self._excite) * dt)
                self._excite *= self._excite_decay
            else:
                jump_prob = self._jump_prob
            if u_jump < jump_prob:
                # u_size in [0, 0.5) -> down, [0.5, 1) -> up; magnitude uniform in [0.5, 1.5] x size.
                sign = 1.0 if u_size >= 0.5 else -1.0
                magnitude = 0.5 + 2.0 * (u_size if u_size < 0.5 else u_size - 0.5)
                step += sign * magnitude * self._jump_log
                self._jump_steps.append(index)
                if hawkes:
                    self._excite += self._excite_kick
            last += step
            logs.append(last)
        fx = self._fx_logs
        fx_last = fx[-1]
        for _ in range(len(fx), k + 1):
            fx_last += self._fx_drift_step + self._fx_sigma_step * self._fx_rng.normalvariate(0.0, 1.0)
            fx.append(fx_last)

    def _shock_offset(self, k: int) -> float:
        i = bisect.bisect_right(self._shock_steps, k)
        offset = self._shock_cum[i - 1] if i else 0.0
        if self._crash is not None:
            first, steps, total = self._crash
            if k >= first:
                offset += total * min(1.0, (k - first + 1) / steps)
        return offset

    def _log_btceur(self, k: int) -> float:
        if k >= len(self._logs):
            self._extend_to(k)
        return self._logs[k] + self._shock_offset(k)

    def mid_at(self, ns: int) -> Decimal:
        """The mid at wall-clock ``ns``, quantised to 0.01 EUR (half-even)."""
        k = self.step_index(ns)
        if k < 0:
            return self.start_price
        return Decimal(math.exp(self._log_btceur(k))).quantize(_CENT, rounding=ROUND_HALF_EVEN)

    def eurusd_at(self, ns: int) -> Decimal:
        """The EUR/USD mid (USD per EUR) at ``ns``, quantised to 1e-8 (half-even)."""
        k = self.step_index(ns)
        if k < 0:
            return self.eurusd_start
        if k >= len(self._fx_logs):
            self._extend_to(k)
        return Decimal(math.exp(self._fx_logs[k])).quantize(_FX_UNIT, rounding=ROUND_HALF_EVEN)

    def btcusd_at(self, ns: int) -> Decimal:
        """The BTC/USD mid at ``ns``: BTC/EUR x EUR/USD of the same step, quantised to 0.01 USD."""
        k = self.step_index(ns)
        if k < 0:
            return (self.start_price * self.eurusd_start).quantize(_CENT, rounding=ROUND_HALF_EVEN)
        log = self._log_btceur(k) + self._fx_logs[k]
        return Decimal(math.exp(log)).quantize(_CENT, rounding=ROUND_HALF_EVEN)

    def pair_mid_at(self, pair: str, ns: int) -> Decimal:
        """The mid of ``pair`` (``btceur``, ``btcusd`` or ``eurusd``) at ``ns``."""
        if pair == "btceur":
            return self.mid_at(ns)
        if pair == "btcusd":
            return self.btcusd_at(ns)
        if pair == "eurusd":
            return self.eurusd_at(ns)
        raise InputError(f"unknown pair {pair!r}; known: {', '.join(PAIRS)}")

    def turbulent_at(self, ns: int) -> bool:
        """Whether the step covering ``ns`` is in the turbulent volatility regime."""
        k = self.step_index(ns)
        if k < 0 or not self._regimes_on:
            return False
        if k >= len(self._logs):
            self._extend_to(k)
        return bool(self._regimes[k])

    def jump_steps(self, until_ns: int) -> list[int]:
        """The step indices, up to the step covering ``until_ns``, that carried a random jump."""
        k = self.step_index(until_ns)
        if k >= len(self._logs):
            self._extend_to(k)
        return self._jump_steps[: bisect.bisect_right(self._jump_steps, k)]

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
