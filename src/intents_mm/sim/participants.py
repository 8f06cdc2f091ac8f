"""Simulated market participants around the simulated Solver Relay.

* :class:`SimUser`: one user account asking for quotes, both directions, exact-in and exact-out.
  Arrivals are Poisson, or bursty (a Hawkes self-exciting process, or a Markov-modulated Poisson
  process with calm and burst states), always with the configured long-run mean rate. Notionals in
  EUR are lognormal or Pareto (heavy-tailed), clamped to ``[min, max]``. Each request has one kind,
  drawn with its share (``PlannedRequest.kind``):

  - ``uninformed``: accepts the best quote when it beats a limit (mid -/+ ``tolerance_bps``), or,
    with ``acceptance = "logistic"``, with probability ``1 / (1 + exp((d - mid_bps) / scale_bps))``
    where ``d`` is the best quote's distance from the true mid in bps against the user (a price
    comparer: the worse the quote, the less likely the trade);
  - ``informed``: looks ``informed_horizon_ms`` ahead on the true path and trades only quotes stale
    by more than ``informed_edge_bps``; with ``informed_by_size`` the informed probability is a
    piecewise-linear curve of the notional (larger requests more often informed);
  - ``latency_arb``: sees the true path ``latency_arb_lead_ms`` ahead (the leading price) and takes
    only quotes stale against it by more than ``latency_arb_threshold_bps``; fresh quotes are left;
  - ``option``: takes the best quote without publishing (the signed quote is a free option until its
    deadline: the relay keeps a candidate publishable until then), watches the true mid every
    ``option_poll_ms`` and publishes only once the quote beats the mid by ``option_threshold_bps``
    in the user's favour, else lets it lapse ``option_exercise_margin_ms`` before the deadline.

  Accepting means signing the user's own side (``counterparty_diff``, versioned nonce with the
  current salt) and calling ``publish_intent``, in-process (fast) or over HTTP ``/rpc``. Every
  random draw comes from RNGs seeded by the user's seed, so the same seed gives the same flow; the
  defaults (Poisson, lognormal, limit acceptance, no latency-arb or option flow) draw exactly what
  they drew before these kinds existed.
  When the publish fails with ``nonce was already used`` (a one-nonce-per-state solver's quote that
  another batch settled first) the user tries the next best quote it still accepts (``fallbacks``).
* :class:`CompetingSolver`: a plain solver on the real WebSocket (API key, subscribe, answer every
  request of its pair at reference mid +/- its spread with a correct NEP-413 ``token_diff``). Its
  hooks ``quote_amount``, ``quote_nonce`` and ``on_fill`` are what ``sim/competitors.py`` overrides.

Both run as tasks with ``start()`` / ``stop()``. Prices are ``Decimal`` EUR per base token from a
``price_at(ns)`` callable (e.g. ``PricePath.mid_at``); amounts are ints in smallest units.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from typing import Any, Literal, cast

import aiohttp
import msgspec

from intents_mm.clock import Clock
from intents_mm.domain.amounts import Rounding, parse_u128, to_units
from intents_mm.domain.assets import BTC_EURE, Pair
from intents_mm.errors import InputError, IntentsMMError, RpcError, TransportError
from intents_mm.near.keys import SigningKey
from intents_mm.near.nonce import random_versioned_nonce
from intents_mm.near.payload import build_intent_message, sign_nep413, token_diff_intent
from intents_mm.near.timefmt import parse_deadline
from intents_mm.sim.relay import SimRelay
from intents_mm.sim.verifier import ERR_NONCE_USED, Verifier, counterparty_diff

log = logging.getLogger(__name__)

PriceAt = Callable[[int], Decimal]

_NS_PER_MS = 1_000_000
_BPS = Decimal(10_000)
_SENT_KEPT = 10_000
_json_encoder = msgspec.json.Encoder()


def _key_from_seed(label: str, seed: int) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(f"intents-mm-sim:{label}:{seed}".encode()).digest())


def _scale(pair: Pair) -> Decimal:
    """Quote-asset units per base-asset unit for a price of 1 quote token per base token."""
    return Decimal(10) ** (pair.quote.decimals - pair.base.decimals)


def units_price_eur(pair: Pair, base_units: int, quote_units: int) -> Decimal:
    """EUR per base token implied by a swap of ``base_units`` against ``quote_units``."""
    with localcontext() as ctx:
        ctx.prec = 60
        return Decimal(quote_units) / (Decimal(base_units) * _scale(pair)) / pair.quote_per_fiat


def quote_other_side(
    pair: Pair, mid_eur: Decimal, spread_bps: Decimal, *, asset_in: str, exact_in: bool, fixed: int
) -> int:
    """The solver's non-fixed amount at mid +/- spread, rounded against the solver.

    The solver buys the base at ``mid*(1-s)`` (request ``asset_in`` = base) and sells it at
    ``mid*(1+s)``. Exact-in: what the solver gives (floored). Exact-out: what it asks (ceiled).
    """
    with localcontext() as ctx:
        ctx.prec = 80
        sells_base = asset_in == pair.quote.token_id
        price_eur = mid_eur * (1 + spread_bps / _BPS) if sells_base else mid_eur * (1 - spread_bps / _BPS)
        rate = price_eur * pair.quote_per_fiat * _scale(pair)  # quote units per base unit
        if asset_in == pair.base.token_id:  # solver receives base, gives quote
            value = Decimal(fixed) * rate if exact_in else Decimal(fixed) / rate
        else:  # solver receives quote, gives base
            value = Decimal(fixed) / rate if exact_in else Decimal(fixed) * rate
        mode = ROUND_FLOOR if exact_in else ROUND_CEILING
        return int(value.to_integral_value(rounding=mode))


# ====================================================================== users


@dataclass(frozen=True)
class UserFlowConfig:
    """Flow parameters of one :class:`SimUser`."""

    rate_per_s: float = 0.5  # Poisson arrival rate of quote requests
    median_notional_eur: Decimal = Decimal(3)
    notional_sigma: float = 1.0  # lognormal shape (of ln notional)
    min_notional_eur: Decimal = Decimal("0.5")
    max_notional_eur: Decimal = Decimal(1000)
    sell_base_share: float = 0.5  # share of requests that sell the base (asset_in = BTC)
    exact_out_share: float = 0.3
    min_deadline_ms: int = 60000
    alt_min_deadline_ms: int = 30000
    alt_deadline_share: float = 0.1
    informed_share: float = 0.1
    informed_horizon_ms: int = 5000
    informed_edge_bps: Decimal = Decimal(5)  # informed trade only if the quote beats the future by this
    tolerance_bps: Decimal = Decimal(100)  # uninformed limit: mid -/+ tolerance
    intent_ttl_ms: int = 60000  # validity of the user's own signed intent
    wait_ms: int | None = None  # forwarded to the relay's quote window when set
    max_in_flight: int = 32  # open requests, held options included
    # --- flow that knows things (shares of all requests, summing with the informed share to <= 1)
    informed_by_size: tuple[tuple[Decimal, float], ...] = ()  # (notional EUR, P(informed)), linear
    latency_arb_share: float = 0.0
    latency_arb_lead_ms: int = 500  # sees the true path this far ahead
    latency_arb_threshold_bps: Decimal = Decimal(5)  # takes only quotes stale by more than this
    option_share: float = 0.0
    option_threshold_bps: Decimal = Decimal(10)  # exercises once the quote beats the mid by this
    option_poll_ms: int = 200
    option_exercise_margin_ms: int = 2000  # lapses this long before the quote's deadline
    option_max_hold_ms: int | None = None  # holds at most this long (None: until the margin)
    # --- uninformed users who compare prices
    acceptance: Literal["limit", "logistic"] = "limit"
    logistic_mid_bps: Decimal = Decimal(50)  # distance from fair value accepted half the time
    logistic_scale_bps: Decimal = Decimal(15)
    size_dist: Literal["lognormal", "pareto"] = "lognormal"
    pareto_alpha: float = 1.5  # tail index; the median stays median_notional_eur
    arrivals: Literal["poisson", "hawkes", "mmpp"] = "poisson"
    hawkes_branching: float = 0.5  # expected arrivals triggered by one arrival (< 1)
    hawkes_decay_s: float = 2.0  # mean life of the excitation
    mmpp_burst_multiplier: float = 5.0  # burst rate / calm rate
    mmpp_burst_share: float = 0.1  # long-run share of time in the burst state
    mmpp_mean_burst_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0:
            raise InputError("user rate_per_s must be positive")
        if self.median_notional_eur <= 0 or self.min_notional_eur <= 0:
            raise InputError("user notionals must be positive")
        if self.max_notional_eur < self.min_notional_eur:
            raise InputError("user max_notional_eur must be >= min_notional_eur")
        for name in ("sell_base_share", "exact_out_share", "alt_deadline_share", "informed_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise InputError(f"user {name} must be within [0, 1]")
        for name in ("latency_arb_share", "option_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"user {name} must be within [0, 1]")
        notionals = [n for n, _ in self.informed_by_size]
        if any(b <= a for a, b in itertools.pairwise(notionals)):
            raise InputError("user informed_by_size notionals must be strictly increasing")
        if any(not 0 <= p <= 1 for _, p in self.informed_by_size):
            raise InputError("user informed_by_size probabilities must be within [0, 1]")
        top = max((p for _, p in self.informed_by_size), default=self.informed_share)
        if top + self.latency_arb_share + self.option_share > 1 + 1e-12:
            raise InputError("user informed, latency_arb and option shares must sum to <= 1")
        if self.latency_arb_lead_ms < 0 or self.option_exercise_margin_ms < 0:
            raise InputError("user latency_arb_lead_ms and option_exercise_margin_ms must be >= 0")
        if self.option_poll_ms < 1 or (self.option_max_hold_ms is not None and self.option_max_hold_ms < 0):
            raise InputError("user option_poll_ms must be >= 1 and option_max_hold_ms >= 0")
        if self.latency_arb_threshold_bps < 0 or self.option_threshold_bps < 0:
            raise InputError("user thresholds must not be negative")
        if not self.logistic_scale_bps > 0:
            raise InputError("user logistic_scale_bps must be positive")
        if not self.pareto_alpha > 0:
            raise InputError("user pareto_alpha must be positive")
        if not (0 <= self.hawkes_branching < 1 and self.hawkes_decay_s > 0):
            raise InputError("user hawkes_branching must be within [0, 1) and hawkes_decay_s positive")
        if not (
            self.mmpp_burst_multiplier >= 1 and 0 < self.mmpp_burst_share < 1 and self.mmpp_mean_burst_s > 0
        ):
            raise InputError("user mmpp: burst_multiplier >= 1, burst_share in (0, 1), mean_burst_s > 0")

    def informed_probability(self, notional_eur: Decimal) -> float:
        """P(informed) of a request of ``notional_eur``: ``informed_share``, or the size curve
        (linear between its points, flat beyond its ends)."""
        curve = self.informed_by_size
        if not curve:
            return self.informed_share
        if notional_eur <= curve[0][0]:
            return curve[0][1]
        for (n0, p0), (n1, p1) in itertools.pairwise(curve):
            if notional_eur <= n1:
                return p0 + (p1 - p0) * float((notional_eur - n0) / (n1 - n0))
        return curve[-1][1]


FlowKind = Literal["uninformed", "informed", "latency_arb", "option"]
# The UserFlowConfig fields of the issue-16 flow kinds and shapes, named alike in the scenario's [flow].
FLOW_KIND_KEYS: tuple[str, ...] = (
    "informed_by_size",
    "latency_arb_share",
    "latency_arb_lead_ms",
    "latency_arb_threshold_bps",
    "option_share",
    "option_threshold_bps",
    "option_poll_ms",
    "option_exercise_margin_ms",
    "option_max_hold_ms",
    "acceptance",
    "logistic_mid_bps",
    "logistic_scale_bps",
    "size_dist",
    "pareto_alpha",
    "arrivals",
    "hawkes_branching",
    "hawkes_decay_s",
    "mmpp_burst_multiplier",
    "mmpp_burst_share",
    "mmpp_mean_burst_s",
)


@dataclass(frozen=True)
class PlannedRequest:
    """One request drawn from the user's RNG; independent of prices, quotes and timing."""

    seq: int
    delay_s: float  # wait before sending, after the previous arrival
    sell_base: bool
    exact_in: bool
    notional_eur: Decimal
    informed: bool  # kind == "informed" (look-ahead flow)
    min_deadline_ms: int
    kind: FlowKind = "uninformed"
    accept_u: float = 0.0  # the uniform a logistic acceptance compares with

    def __post_init__(self) -> None:  # ``informed`` and ``kind == "informed"`` always agree
        if self.informed and self.kind == "uninformed":
            object.__setattr__(self, "kind", "informed")
        elif self.kind == "informed" and not self.informed:
            object.__setattr__(self, "informed", True)
        elif self.informed and self.kind != "informed":
            raise InputError(f"a planned request of kind {self.kind!r} is not informed")


@dataclass
class UserOutcome:
    planned: PlannedRequest
    request: dict[str, Any]
    quotes: int = 0
    decision: Literal["no_quote", "declined", "held", "accepted", "lapsed", "error"] = "no_quote"
    best_price_eur: Decimal | None = None
    publish: dict[str, Any] | None = None
    error: str | None = None
    best_quote: dict[str, Any] | None = None  # the ranked best quote item (the one taken or declined)
    decided_ns: int | None = None  # when the quotes arrived
    published_ns: int | None = None  # when the user published (an option: when exercised)


def _subrng(seed: int, label: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"sim-user:{label}:{seed}".encode()).digest()[:8]))


class SimUser:
    """One simulated user (implicit account, own key) with a Poisson stream of quote requests.

    ``transport="inprocess"`` calls ``relay.request_quote`` / ``relay.publish_intent`` directly;
    ``"http"`` posts JSON-RPC to ``rpc_url`` with ``api_key`` (``Authorization: Bearer``). The
    request sequence (:meth:`next_request`) depends only on ``seed`` and the config.
    """

    def __init__(
        self,
        clock: Clock,
        relay: SimRelay,
        verifier: Verifier,
        price_at: PriceAt,
        *,
        seed: int,
        config: UserFlowConfig | None = None,
        pair: Pair = BTC_EURE,
        key: SigningKey | None = None,
        initial_balances: Mapping[str, int] | None = None,
        transport: Literal["inprocess", "http"] = "inprocess",
        rpc_url: str | None = None,
        api_key: str | None = None,
        outcomes_kept: int = 10_000,
    ) -> None:
        if transport == "http" and rpc_url is None:
            raise InputError("SimUser over http needs rpc_url")
        self._clock = clock
        self._relay = relay
        self._verifier = verifier
        self._price_at = price_at
        self.config = config or UserFlowConfig()
        self.pair = pair
        self.seed = seed
        self._rng = random.Random(seed)
        self._aux_rng = _subrng(seed, "accept")  # one draw per request, whatever the kind
        self._arrival_rng = _subrng(seed, "arrivals")  # hawkes / mmpp only
        self._hawkes_excess = 0.0  # excitation just after the last arrival (per second)
        self._mmpp_burst = False
        self._mmpp_left_s = (
            self._arrival_rng.expovariate(1.0 / self._mmpp_sojourn_s(burst=False))
            if self.config.arrivals == "mmpp"
            else 0.0
        )
        self._seq = itertools.count(1)
        self.key = key or _key_from_seed("user", seed)
        self.account_id = self.key.public_key.implicit_account_id()
        self._initial_balances = dict(initial_balances or {})
        self._funded = False
        self.transport = transport
        self._rpc_url = rpc_url
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None
        self._rpc_ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[UserOutcome]] = set()
        self.counts: Counter[str] = Counter()
        self.outcomes: deque[UserOutcome] = deque(maxlen=outcomes_kept)

    # ------------------------------------------------------------------ request plan

    def next_request(self) -> PlannedRequest:
        """Draw the next request. Always consumes the same RNG draws in the same order."""
        cfg = self.config
        delay = self._rng.expovariate(cfg.rate_per_s) if cfg.arrivals == "poisson" else self._next_delay()
        sell_base = self._rng.random() < cfg.sell_base_share
        exact_in = self._rng.random() >= cfg.exact_out_share
        if cfg.size_dist == "pareto":  # scale chosen so the median is median_notional_eur
            scale = float(cfg.median_notional_eur) / 2.0 ** (1.0 / cfg.pareto_alpha)
            raw = scale * self._rng.paretovariate(cfg.pareto_alpha)
        else:
            raw = self._rng.lognormvariate(math.log(float(cfg.median_notional_eur)), cfg.notional_sigma)
        u_kind = self._rng.random()
        alt = self._rng.random() < cfg.alt_deadline_share
        notional = min(max(Decimal(f"{raw:.6f}"), cfg.min_notional_eur), cfg.max_notional_eur)
        p_informed = cfg.informed_probability(notional)
        kind: FlowKind
        if u_kind < p_informed:
            kind = "informed"
        elif u_kind < p_informed + cfg.latency_arb_share:
            kind = "latency_arb"
        elif u_kind < p_informed + cfg.latency_arb_share + cfg.option_share:
            kind = "option"
        else:
            kind = "uninformed"
        return PlannedRequest(
            seq=next(self._seq),
            delay_s=delay,
            sell_base=sell_base,
            exact_in=exact_in,
            notional_eur=notional,
            informed=kind == "informed",
            min_deadline_ms=cfg.alt_min_deadline_ms if alt else cfg.min_deadline_ms,
            kind=kind,
            accept_u=self._aux_rng.random(),
        )

    def _mmpp_rate(self, *, burst: bool) -> float:
        cfg = self.config
        calm = cfg.rate_per_s / (1 - cfg.mmpp_burst_share + cfg.mmpp_burst_share * cfg.mmpp_burst_multiplier)
        return calm * cfg.mmpp_burst_multiplier if burst else calm

    def _mmpp_sojourn_s(self, *, burst: bool) -> float:
        cfg = self.config
        return (
            cfg.mmpp_mean_burst_s
            if burst
            else cfg.mmpp_mean_burst_s * (1 - cfg.mmpp_burst_share) / cfg.mmpp_burst_share
        )

    def _next_delay(self) -> float:
        """Seconds to the next arrival of a Hawkes (Ogata thinning) or two-state MMPP process whose
        long-run mean rate is ``rate_per_s``."""
        cfg, rng = self.config, self._arrival_rng
        if cfg.arrivals == "hawkes":
            beta = 1.0 / cfg.hawkes_decay_s
            mu = cfg.rate_per_s * (1.0 - cfg.hawkes_branching)
            excess, t = self._hawkes_excess, 0.0
            while True:
                bound = mu + excess * math.exp(-beta * t)  # the intensity only decays until an arrival
                t += rng.expovariate(bound)
                lam = mu + excess * math.exp(-beta * t)
                if rng.random() * bound <= lam:
                    break
            self._hawkes_excess = excess * math.exp(-beta * t) + cfg.hawkes_branching * beta
            return t
        t = 0.0
        while True:
            wait = rng.expovariate(self._mmpp_rate(burst=self._mmpp_burst))
            if wait <= self._mmpp_left_s:
                self._mmpp_left_s -= wait
                return t + wait
            t += self._mmpp_left_s
            self._mmpp_burst = not self._mmpp_burst
            self._mmpp_left_s = rng.expovariate(1.0 / self._mmpp_sojourn_s(burst=self._mmpp_burst))

    def build_request(self, planned: PlannedRequest, mid_eur: Decimal) -> dict[str, Any]:
        """The relay ``quote`` params for a planned request at the given mid (fixed side floored, >= 1)."""
        base, quote = self.pair.base, self.pair.quote
        asset_in, asset_out = (base, quote) if planned.sell_base else (quote, base)
        fixed_asset = asset_in if planned.exact_in else asset_out
        with localcontext() as ctx:
            ctx.prec = 60
            if fixed_asset == base:
                human = planned.notional_eur / mid_eur
            else:
                human = planned.notional_eur * self.pair.quote_per_fiat
        fixed = max(1, to_units(fixed_asset, human, Rounding.FLOOR))
        req: dict[str, Any] = {
            "defuse_asset_identifier_in": asset_in.token_id,
            "defuse_asset_identifier_out": asset_out.token_id,
            ("exact_amount_in" if planned.exact_in else "exact_amount_out"): str(fixed),
            "min_deadline_ms": planned.min_deadline_ms,
        }
        if self.config.wait_ms is not None:
            req["wait_ms"] = self.config.wait_ms
        return req

    def quote_price_eur(self, quote: Mapping[str, Any]) -> Decimal:
        """EUR per base token of a relay quote item."""
        amount_in = parse_u128(quote["amount_in"], name="amount_in")
        amount_out = parse_u128(quote["amount_out"], name="amount_out")
        if quote["defuse_asset_identifier_in"] == self.pair.base.token_id:
            return units_price_eur(self.pair, amount_in, amount_out)
        return units_price_eur(self.pair, amount_out, amount_in)

    def accepts(self, planned: PlannedRequest, price_eur: Decimal, now_ns: int) -> bool:
        """The user's decision on the best quote's price (for an option holder: whether to take it).

        Uninformed, ``limit``: selling the base needs ``price >= mid*(1-tol)``; buying needs
        ``price <= mid*(1+tol)``. Uninformed, ``logistic``: ``accept_u < acceptance_probability``.
        Informed: compares with the price ``informed_horizon_ms`` ahead and trades only when the quote
        is stale by more than ``informed_edge_bps`` in the user's favour. Latency arbitrageur: the
        same against the leading price ``latency_arb_lead_ms`` ahead and ``latency_arb_threshold_bps``
        (strictly more). Option holder: always takes the quote; :meth:`exercisable` decides later.
        """
        cfg = self.config
        if planned.kind == "option":
            return True
        if planned.kind == "latency_arb":
            lead = self._price_at(now_ns + cfg.latency_arb_lead_ms * _NS_PER_MS)
            thr = cfg.latency_arb_threshold_bps / _BPS
            return price_eur > lead * (1 + thr) if planned.sell_base else price_eur < lead * (1 - thr)
        if planned.informed:
            ref = self._price_at(now_ns + cfg.informed_horizon_ms * _NS_PER_MS)
            edge = cfg.informed_edge_bps / _BPS
            return price_eur >= ref * (1 + edge) if planned.sell_base else price_eur <= ref * (1 - edge)
        mid = self._price_at(now_ns)
        if cfg.acceptance == "logistic":
            return planned.accept_u < self.acceptance_probability(planned, price_eur, mid)
        tol = cfg.tolerance_bps / _BPS
        return price_eur >= mid * (1 - tol) if planned.sell_base else price_eur <= mid * (1 + tol)

    @staticmethod
    def distance_bps(sell_base: bool, price_eur: Decimal, mid_eur: Decimal) -> Decimal:
        """How far ``price_eur`` is from ``mid_eur`` against the user, in bps (negative: in favour)."""
        diff = mid_eur - price_eur if sell_base else price_eur - mid_eur
        return diff * _BPS / mid_eur

    def acceptance_probability(self, planned: PlannedRequest, price_eur: Decimal, mid_eur: Decimal) -> float:
        """Logistic acceptance of a price comparer: ``1 / (1 + exp((d - mid_bps) / scale_bps))``."""
        cfg = self.config
        d = self.distance_bps(planned.sell_base, price_eur, mid_eur)
        z = float((d - cfg.logistic_mid_bps) / cfg.logistic_scale_bps)
        return 0.0 if z > 700 else 1.0 / (1.0 + math.exp(z))

    def exercisable(self, planned: PlannedRequest, price_eur: Decimal, now_ns: int) -> bool:
        """An option holder's exercise rule: the held quote beats the true mid now by at least
        ``option_threshold_bps`` in the user's favour (the mid moved the user's way)."""
        return (
            -self.distance_bps(planned.sell_base, price_eur, self._price_at(now_ns))
            >= self.config.option_threshold_bps
        )

    def sign_acceptance(self, quote: Mapping[str, Any]) -> dict[str, Any]:
        """The user's signed side of ``quote``: the counterparty of the solver's diff, NEP-413, with a
        versioned nonce under the Verifier's current salt."""
        mm_diff = {
            quote["defuse_asset_identifier_in"]: parse_u128(quote["amount_in"], name="amount_in"),
            quote["defuse_asset_identifier_out"]: -parse_u128(quote["amount_out"], name="amount_out"),
        }
        user_diff = counterparty_diff(mm_diff, self._verifier.fee_pips)
        now = self._clock.now_ns()
        deadline_ns = (now + self.config.intent_ttl_ms * _NS_PER_MS) // _NS_PER_MS * _NS_PER_MS
        message = build_intent_message(self.account_id, deadline_ns, [token_diff_intent(user_diff)])
        nonce = random_versioned_nonce(self._verifier.current_salt(), deadline_ns)
        return sign_nep413(self.key, message, nonce, self._verifier.contract_id).to_json_obj()

    # ------------------------------------------------------------------ lifecycle

    def fund(self) -> None:
        """Credit ``initial_balances`` on the Verifier (once)."""
        if self._funded:
            return
        for token, amount in self._initial_balances.items():
            self._verifier.credit(self.account_id, token, amount)
        self._funded = True

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("user already started")
        self.fund()
        self._task = asyncio.create_task(self._run(), name=f"sim-user-{self.seed}")

    async def stop(self) -> None:
        """Cancel the arrival loop and in-flight requests; close the HTTP session (if one was opened)."""
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        self._inflight.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            planned = self.next_request()
            await asyncio.sleep(planned.delay_s)
            if len(self._inflight) >= self.config.max_in_flight:
                self.counts["skipped_busy"] += 1
                continue
            task = asyncio.create_task(self.handle(planned), name=f"sim-user-{self.seed}-req-{planned.seq}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    # ------------------------------------------------------------------ one request

    async def handle(self, planned: PlannedRequest) -> UserOutcome:
        """Ask, decide, and publish when accepted. Never raises (errors are counted and recorded)."""
        mid = self._price_at(self._clock.now_ns())
        outcome = UserOutcome(planned=planned, request=self.build_request(planned, mid))
        self.outcomes.append(outcome)
        self.counts["requests"] += 1
        if planned.informed:
            self.counts["informed_requests"] += 1
        elif planned.kind != "uninformed":
            self.counts[f"{planned.kind}_requests"] += 1
        try:
            quotes = await self._quote(outcome.request)
            if not quotes:
                self.counts["no_quote"] += 1
                return outcome
            outcome.quotes = len(quotes)
            best = quotes[0]
            outcome.best_quote = best
            outcome.best_price_eur = self.quote_price_eur(best)
            outcome.decided_ns = self._clock.now_ns()
            if not self.accepts(planned, outcome.best_price_eur, outcome.decided_ns):
                outcome.decision = "declined"
                self.counts["declined"] += 1
                return outcome
            if planned.kind == "option" and not await self._hold_option(planned, outcome, best):
                return outcome
            outcome.decision = "accepted"
            self.counts["accepted"] += 1
            if planned.kind != "uninformed":
                self.counts[f"{planned.kind}_accepted"] += 1
            outcome.published_ns = self._clock.now_ns()
            result = await self._publish([best["quote_hash"]], self.sign_acceptance(best))
            # a quote whose nonce another batch used meanwhile (one nonce per reserve state) is dead:
            # fall back to the next best one the user still accepts
            for nxt in quotes[1:]:
                if result.get("status") == "OK" or ERR_NONCE_USED not in str(result.get("reason")):
                    break
                if not self.accepts(planned, self.quote_price_eur(nxt), self._clock.now_ns()):
                    break
                self.counts["fallbacks"] += 1
                result = await self._publish([nxt["quote_hash"]], self.sign_acceptance(nxt))
            outcome.publish = result
            self.counts["published_ok" if result.get("status") == "OK" else "published_failed"] += 1
        except (InputError, RpcError, TransportError) as exc:
            outcome.decision = "error"
            outcome.error = str(exc)
            self.counts["errors"] += 1
            log.debug("sim user %s: %s", self.account_id[:8], exc)
        return outcome

    async def _hold_option(
        self, planned: PlannedRequest, outcome: UserOutcome, best: Mapping[str, Any]
    ) -> bool:
        """Hold the best quote as an option: True once :meth:`exercisable` (publish now), False when
        it lapsed (``option_exercise_margin_ms`` before its deadline, or after ``option_max_hold_ms``)."""
        cfg = self.config
        outcome.decision = "held"
        self.counts["option_taken"] += 1
        assert outcome.best_price_eur is not None
        start = self._clock.now_ns()
        stop_ns = parse_deadline(best["expiration_time"]) - cfg.option_exercise_margin_ms * _NS_PER_MS
        if cfg.option_max_hold_ms is not None:
            stop_ns = min(stop_ns, start + cfg.option_max_hold_ms * _NS_PER_MS)
        while True:
            now = self._clock.now_ns()
            if self.exercisable(planned, outcome.best_price_eur, now):
                self.counts["option_exercised"] += 1
                return True
            if now >= stop_ns:
                outcome.decision = "lapsed"
                self.counts["option_lapsed"] += 1
                return False
            await asyncio.sleep(min(cfg.option_poll_ms * _NS_PER_MS, stop_ns - now) / 1e9)

    async def _quote(self, req: dict[str, Any]) -> list[dict[str, Any]] | None:
        if self.transport == "inprocess":
            return await self._relay.request_quote(req)
        result = await self._rpc("quote", [req])
        if result is None:
            return None
        if not isinstance(result, list):
            raise RpcError("relay quote result is not a list")
        return [q for q in result if isinstance(q, dict) and "quote_hash" in q]

    async def _publish(self, quote_hashes: list[str], signed: dict[str, Any]) -> dict[str, Any]:
        if self.transport == "inprocess":
            return await self._relay.publish_intent(quote_hashes, signed)
        result = await self._rpc("publish_intent", [{"quote_hashes": quote_hashes, "signed_data": signed}])
        if not isinstance(result, dict):
            raise RpcError("relay publish_intent result is not an object")
        return cast(dict[str, Any], result)

    async def _rpc(self, method: str, params: list[Any]) -> Any:
        assert self._rpc_url is not None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        body = {"jsonrpc": "2.0", "id": next(self._rpc_ids), "method": method, "params": params}
        try:
            async with self._session.post(
                f"{self._rpc_url}?method={method}", data=_json_encoder.encode(body), headers=headers
            ) as resp:
                doc = msgspec.json.decode(await resp.read())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransportError(f"relay rpc {method} failed: {type(exc).__name__}") from None
        except msgspec.DecodeError:
            raise RpcError(f"relay rpc {method}: response is not JSON") from None
        if not isinstance(doc, dict):
            raise RpcError(f"relay rpc {method}: response is not an object")
        if doc.get("error") is not None:
            err = doc["error"]
            message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            raise RpcError(
                f"relay rpc {method}: {message}", code=err.get("code") if isinstance(err, dict) else None
            )
        return doc.get("result")


# ====================================================================== competing solver


@dataclass(frozen=True)
class SolverConfig:
    spread_bps: Decimal = Decimal(40)
    response_delay_ms: int = 0
    deadline_margin_ms: int = 10000  # signed deadline = now + min_deadline_ms + margin (reference solver)
    max_min_deadline_ms: int = 60000  # refuse requests that need longer validity (reference solver)
    reconnect_delay_s: float = 0.5
    use_token_filter: bool = True
    instance_id: str | None = None  # guaranteed quote_status delivery when set


@dataclass
class _SentQuote:
    quote_id: str
    quote_hash: str
    amount_in: int
    amount_out: int
    status: Literal["pending", "ok", "rejected"] = "pending"
    reason: str | None = None
    asset_in: str = ""  # what the solver receives
    nonce: bytes = b""


@dataclass
class SolverStats:
    connects: int = 0
    quotes_seen: int = 0
    responses_sent: int = 0
    responses_ok: int = 0
    responses_rejected: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    rejections: deque[str] = field(default_factory=lambda: deque(maxlen=100))


class CompetingSolver:
    """A simple solver on the relay's real WebSocket that quotes its pair at mid +/- ``spread_bps``.

    Signs ``{asset_in: +in, asset_out: -out}`` as NEP-413 with a versioned nonce under the
    Verifier's current salt. ``statuses`` collects the ``quote_status`` data it receives.
    """

    def __init__(
        self,
        clock: Clock,
        verifier: Verifier,
        ws_url: str,
        price_at: PriceAt,
        *,
        api_key: str | None,
        seed: int = 0,
        key: SigningKey | None = None,
        account_id: str | None = None,
        config: SolverConfig | None = None,
        pair: Pair = BTC_EURE,
        initial_balances: Mapping[str, int] | None = None,
    ) -> None:
        self._clock = clock
        self._verifier = verifier
        self._ws_url = ws_url
        self._price_at = price_at
        self._api_key = api_key
        self.config = config or SolverConfig()
        self.pair = pair
        self.key = key or _key_from_seed("solver", seed)
        self.account_id = account_id or self.key.public_key.implicit_account_id()
        self._initial_balances = dict(initial_balances or {})
        self._funded = False
        self.stats = SolverStats()
        self.statuses: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.statuses_received = 0
        self.sent: OrderedDict[str, _SentQuote] = OrderedDict()  # by quote hash, most recent kept
        self._ids = itertools.count(1)
        self._pending: dict[int, str] = {}  # request id -> "subscribe:<kind>" or quote hash
        self._subs: dict[str, str] = {}  # subscription id -> kind
        self._ready = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._responders: set[asyncio.Task[None]] = set()
        self._status_event = asyncio.Event()

    def fund(self) -> None:
        """Credit ``initial_balances`` and register the key for a named account (once)."""
        if self._funded:
            return
        for token, amount in self._initial_balances.items():
            self._verifier.credit(self.account_id, token, amount)
        pk = self.key.public_key.to_string()
        if not self._verifier.has_public_key(self.account_id, pk):
            self._verifier.add_public_key(self.account_id, pk)
        self._funded = True

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("solver already started")
        self.fund()
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run(), name=f"competing-solver-{self.account_id[:8]}")

    @property
    def ready(self) -> bool:
        """Connected with both subscriptions confirmed."""
        return self._ready.is_set()

    async def wait_ready(self, timeout_s: float = 5.0) -> None:
        """Wait until both subscriptions (quote, quote_status) are confirmed."""
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    async def wait_status(self, count: int = 1, timeout_s: float = 5.0) -> None:
        """Wait until at least ``count`` quote_status events have arrived."""
        async with asyncio.timeout(timeout_s):
            while self.statuses_received < count:
                self._status_event.clear()
                await self._status_event.wait()

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._responders) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        self._responders.clear()
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ socket loop

    async def _run(self) -> None:
        assert self._session is not None
        url = self._ws_url
        if self.config.instance_id:
            url += ("&" if "?" in url else "?") + f"instance_id={self.config.instance_id}"
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        while True:
            try:
                async with self._session.ws_connect(url, headers=headers, autoping=True) as ws:
                    self._ws = ws
                    self.stats.connects += 1
                    self._subs.clear()
                    await self._subscribe(ws)
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            await self._on_frame(cast(str, msg.data))
                        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                            break
            except (aiohttp.ClientError, OSError, IntentsMMError) as exc:
                log.debug("competing solver: connection lost: %s", type(exc).__name__)
            self._ws = None
            self._ready.clear()
            await asyncio.sleep(self.config.reconnect_delay_s)

    async def _send(self, obj: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        async with self._send_lock:
            await ws.send_str(_json_encoder.encode(obj).decode())

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        del ws
        quote_params: list[Any] = ["quote"]
        if self.config.use_token_filter:
            tokens = [self.pair.base.token_id, self.pair.quote.token_id]
            quote_params.append({"tokens_in": tokens, "tokens_out": tokens})
        status_params: list[Any] = ["quote_status"]
        if self.config.instance_id:
            status_params += [None, True]
        for kind, params in (("quote", quote_params), ("quote_status", status_params)):
            req_id = next(self._ids)
            self._pending[req_id] = f"subscribe:{kind}"
            await self._send({"jsonrpc": "2.0", "id": req_id, "method": "subscribe", "params": params})

    async def _on_frame(self, text: str) -> None:
        try:
            msg = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return
        if not isinstance(msg, dict):
            return
        if "id" in msg and msg.get("id") is not None:
            self._on_reply(msg)
            return
        params = msg.get("params")
        if not isinstance(params, dict) or not isinstance(params.get("subscription"), str):
            return
        kind = self._subs.get(params["subscription"])
        data = params.get("data")
        if not isinstance(data, dict):  # docs envelope: fields flattened into params
            data = {k: v for k, v in params.items() if k not in ("subscription", "metadata", "seq")}
        if kind == "quote":
            self.stats.quotes_seen += 1
            if self.config.response_delay_ms > 0:
                task = asyncio.create_task(self._answer_later(data))
                self._responders.add(task)
                task.add_done_callback(self._responders.discard)
            else:
                await self._answer(data)
        elif kind == "quote_status":
            self.statuses.append(data)
            self.statuses_received += 1
            self.on_fill(data)
            self._status_event.set()
            seq = params.get("seq")
            if self.config.instance_id and isinstance(seq, int):
                await self._send(
                    {
                        "jsonrpc": "2.0",
                        "id": next(self._ids),
                        "method": "acknowledge",
                        "params": [params["subscription"], seq],
                    }
                )

    def _on_reply(self, msg: dict[str, Any]) -> None:
        req_id = msg.get("id")
        what = self._pending.pop(req_id, None) if isinstance(req_id, int) else None
        if what is None:
            return
        error = msg.get("error")
        if what.startswith("subscribe:"):
            if error is None and isinstance(msg.get("result"), str):
                self._subs[msg["result"]] = what.split(":", 1)[1]
                if set(self._subs.values()) >= {"quote", "quote_status"}:
                    self._ready.set()
            return
        sent = self.sent.get(what)
        if error is None:
            self.stats.responses_ok += 1
            if sent is not None:
                sent.status = "ok"
        else:
            reason = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            self.stats.responses_rejected += 1
            self.stats.rejections.append(reason)
            if sent is not None:
                sent.status, sent.reason = "rejected", reason

    async def _answer_later(self, data: dict[str, Any]) -> None:
        await asyncio.sleep(self.config.response_delay_ms / 1000)
        await self._answer(data)

    # ------------------------------------------------------------------ quoting (hooks for subclasses)

    def quote_amount(self, asset_in: str, exact_in: bool, fixed: int) -> int | None:
        """The non-fixed amount (what the solver gives for exact-in, asks for exact-out), or ``None``
        when not quoting. Here: the true mid now +/- ``spread_bps``, rounded against the solver."""
        mid = self._price_at(self._clock.now_ns())
        return quote_other_side(
            self.pair, mid, self.config.spread_bps, asset_in=asset_in, exact_in=exact_in, fixed=fixed
        )

    def quote_nonce(self, deadline_ns: int) -> bytes | None:
        """The nonce to sign with (``None``: do not quote). Here: a fresh versioned nonce."""
        return random_versioned_nonce(self._verifier.current_salt(), deadline_ns)

    def on_fill(self, data: Mapping[str, Any]) -> None:
        """Called for every ``quote_status`` received (one of this solver's quotes settled)."""

    def make_response(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """The ``quote_response`` params object for a quote event, or ``None`` when not quoting it."""
        built = self._build_response(data)
        return None if built is None else built[0]

    def _build_response(self, data: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
        asset_in = data.get("defuse_asset_identifier_in")
        asset_out = data.get("defuse_asset_identifier_out")
        if not (isinstance(asset_in, str) and isinstance(asset_out, str)) or {asset_in, asset_out} != {
            self.pair.base.token_id,
            self.pair.quote.token_id,
        }:
            self.stats.skipped["pair"] += 1
            return None
        min_deadline_ms = data.get("min_deadline_ms", 60000)
        if not isinstance(min_deadline_ms, int) or min_deadline_ms > self.config.max_min_deadline_ms:
            self.stats.skipped["deadline"] += 1
            return None
        exact_in = data.get("exact_amount_in") is not None
        try:
            fixed = parse_u128(data["exact_amount_in" if exact_in else "exact_amount_out"], name="amount")
        except (InputError, KeyError):
            self.stats.skipped["malformed"] += 1
            return None
        other = self.quote_amount(asset_in, exact_in, fixed)
        if other is None:
            self.stats.skipped["pricing"] += 1
            return None
        amount_in, amount_out = (fixed, other) if exact_in else (other, fixed)
        if amount_in <= 0 or amount_out <= 0:
            self.stats.skipped["dust"] += 1
            return None
        if self._verifier.balance_of(self.account_id, asset_out) < amount_out:
            self.stats.skipped["balance"] += 1
            return None
        deadline_ns = self._clock.now_ns() + (min_deadline_ms + self.config.deadline_margin_ms) * _NS_PER_MS
        deadline_ns = deadline_ns // _NS_PER_MS * _NS_PER_MS
        message = build_intent_message(
            self.account_id, deadline_ns, [token_diff_intent({asset_in: amount_in, asset_out: -amount_out})]
        )
        nonce = self.quote_nonce(deadline_ns)
        if nonce is None:
            self.stats.skipped["nonce"] += 1
            return None
        signed = sign_nep413(self.key, message, nonce, self._verifier.contract_id)
        output = {"amount_out": str(amount_out)} if exact_in else {"amount_in": str(amount_in)}
        quote_hash = signed.hash_b58()
        self.sent[quote_hash] = _SentQuote(
            str(data.get("quote_id")), quote_hash, amount_in, amount_out, asset_in=asset_in, nonce=nonce
        )
        while len(self.sent) > _SENT_KEPT:
            self.sent.popitem(last=False)
        response = {
            "quote_id": data.get("quote_id"),
            "quote_output": output,
            "signed_data": signed.to_json_obj(),
        }
        return response, quote_hash

    async def _answer(self, data: dict[str, Any]) -> None:
        try:
            built = self._build_response(data)
        except IntentsMMError as exc:
            self.stats.skipped["error"] += 1
            log.debug("competing solver: cannot quote: %s", exc)
            return
        if built is None:
            return
        response, quote_hash = built
        req_id = next(self._ids)
        self._pending[req_id] = quote_hash
        self.stats.responses_sent += 1
        await self._send({"jsonrpc": "2.0", "id": req_id, "method": "quote_response", "params": [response]})
