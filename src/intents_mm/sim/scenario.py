"""Scenario files for the simulated venue: one validated, frozen :class:`Scenario`.

A scenario is a TOML file (read with the stdlib ``tomllib``; TOML floats are read as exact
``Decimal``). Every section is optional and every key has a default, so an empty file is the
default market. Unknown sections or keys and bad values raise :class:`InputError` with one line
naming the key, e.g. ``faults.toml: [relay] window_ms: must be an integer >= 1, got 'x'``.

Sections (documented with their defaults in ``docs/sim-venue.md``): ``[price]``, ``[exchanges]``
(+ ``[exchanges.<venue>]``), ``[relay]``, ``[verifier]``, ``[near]``, ``[bridge]``, ``[flow]``,
``[[solvers]]``, ``[[accounts]]``, ``[market_maker]`` and ``[[faults]]``.

Balances are tables of asset (symbol ``BTC`` / ``EURe``, case-insensitive, or a Verifier token id)
to a human amount (``0.05``, ``"5000"``), converted exactly to smallest units. :func:`parse_fault`
is shared with the venue's admin endpoint, so a fault reads the same in a file and over HTTP.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from intents_mm.domain.amounts import Rounding, format_units, to_units
from intents_mm.domain.assets import BTC, EURE, Asset
from intents_mm.errors import InputError
from intents_mm.near.keys import PublicKey, SigningKey, is_implicit_account, validate_account_id

VENUES: tuple[str, ...] = ("kraken", "bitstamp", "coinbase", "binance")
PAIRS: tuple[str, ...] = ("btceur", "btcusd", "eurusd")  # = intents_mm.sim.pricepath.PAIRS
BUILTIN_SCENARIOS: tuple[str, ...] = (
    "calm",
    "default",
    "toxic",
    "latency-arb",
    "option-exercise",
    "crash",
    "outage",
    "faults",
)  # the catalogue (sim/scenarios/<name>.toml; docs/sim-venue.md "The scenario catalogue")
FAULT_KINDS: tuple[str, ...] = (
    "relay_disconnect",
    "relay_error_replies",
    "rpc_timeouts",
    "rpc_5xx",
    "exchange_stale",
    "exchange_outlier",
    "exchange_down",
    "bridge_withdrawal_failure",
    "price_shock",
)
_ASSETS: dict[str, Asset] = {BTC.symbol.lower(): BTC, EURE.symbol.lower(): EURE}


# ====================================================================== value readers


def _show(value: object) -> str:
    text = repr(str(value)) if isinstance(value, (str, Decimal)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Table:
    """Reads typed values out of one TOML table, remembering which keys were used.

    Every error is an :class:`InputError` ``"<where> <key>: <problem>, got <value>"``; :meth:`done`
    refuses the keys nobody asked for.
    """

    def __init__(self, obj: object, where: str) -> None:
        if not isinstance(obj, Mapping):
            raise InputError(f"{where}: must be a table, got {_show(obj)}")
        self.obj: Mapping[str, Any] = obj
        self.where = where
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> InputError:
        return InputError(f"{self.where} {key}: {problem}, got {_show(self.obj.get(key))}")

    def has(self, key: str) -> bool:
        return key in self.obj

    def raw(self, key: str) -> object:
        self.used.add(key)
        return self.obj.get(key)

    def done(self) -> None:
        unknown = sorted(set(self.obj) - self.used)
        if unknown:
            raise InputError(f"{self.where.rstrip(':')}: unknown key {unknown[0]!r}")

    def dec(
        self, key: str, default: Decimal, *, lo: Decimal | None = None, hi: Decimal | None = None
    ) -> Decimal:
        if not self.has(key):
            self.used.add(key)
            return default
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
            raise self.fail(key, "must be a number")
        try:
            dec = Decimal(value)
        except ArithmeticError:
            raise self.fail(key, "must be a number") from None
        if not dec.is_finite():
            raise self.fail(key, "must be finite")
        if lo is not None and dec < lo:
            raise self.fail(key, f"must be >= {lo}")
        if hi is not None and dec > hi:
            raise self.fail(key, f"must be <= {hi}")
        return dec

    def num(self, key: str, default: float, *, lo: float | None = None, hi: float | None = None) -> float:
        if not self.has(key):
            self.used.add(key)
            return default
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
            raise self.fail(key, "must be a number")
        out = float(value)
        if not math.isfinite(out):
            raise self.fail(key, "must be finite")
        if lo is not None and out < lo:
            raise self.fail(key, f"must be >= {lo:g}")
        if hi is not None and out > hi:
            raise self.fail(key, f"must be <= {hi:g}")
        return out

    def pos(self, key: str, default: float) -> float:
        value = self.num(key, default, lo=0.0)
        if value <= 0:
            raise self.fail(key, "must be positive")
        return value

    def opt_pos(self, key: str) -> float | None:
        if not self.has(key):
            self.used.add(key)
            return None
        return self.pos(key, 0.0)

    def share(self, key: str, default: float) -> float:
        return self.num(key, default, lo=0.0, hi=1.0)

    def int_(self, key: str, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
        if not self.has(key):
            self.used.add(key)
            return default
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "must be an integer" + (f" >= {lo}" if lo is not None else ""))
        if lo is not None and value < lo:
            raise self.fail(key, f"must be an integer >= {lo}")
        if hi is not None and value > hi:
            raise self.fail(key, f"must be an integer <= {hi}")
        return value

    def bool_(self, key: str, default: bool) -> bool:
        if not self.has(key):
            self.used.add(key)
            return default
        value = self.raw(key)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def str_(self, key: str, default: str, *, choices: tuple[str, ...] | None = None) -> str:
        if not self.has(key):
            self.used.add(key)
            return default
        value = self.raw(key)
        if not isinstance(value, str):
            raise self.fail(key, "must be a string")
        if choices is not None and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}")
        return value

    def opt_str(self, key: str) -> str | None:
        if not self.has(key):
            self.used.add(key)
            return None
        value = self.raw(key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a non-empty string")
        return value.strip()

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        if not self.has(key):
            self.used.add(key)
            return default
        value = self.raw(key)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "must be a list of non-empty strings")
        return tuple(value)

    def range_(self, key: str, default: tuple[float, float]) -> tuple[float, float]:
        """A ``[low, high]`` pair with ``0 <= low <= high``."""
        if not self.has(key):
            self.used.add(key)
            return default
        value = self.raw(key)
        if not (isinstance(value, list) and len(value) == 2):
            raise self.fail(key, "must be a [low, high] pair of numbers")
        if not all(isinstance(v, (int, Decimal)) and not isinstance(v, bool) for v in value):
            raise self.fail(key, "must be a [low, high] pair of numbers")
        low, high = float(value[0]), float(value[1])
        if not 0 <= low <= high:
            raise self.fail(key, "must satisfy 0 <= low <= high")
        return (low, high)

    def table(self, key: str) -> _Table:
        """The sub-table ``key`` (empty when absent), named ``[key]`` or ``[parent.key]`` in errors."""
        if self.where.endswith("]"):
            where = f"{self.where[:-1]}.{key}]"
        else:
            where = f"{self.where.rstrip(':')}: [{key}]"
        return _Table(self.raw(key) if self.has(key) else {}, where)

    def balances(self, key: str, default: Mapping[str, int]) -> Mapping[str, int]:
        """``{asset: human amount}`` -> ``{token_id: units}``, exact (extra decimals are an error)."""
        if not self.has(key):
            self.used.add(key)
            return MappingProxyType(dict(default))
        value = self.raw(key)
        if not isinstance(value, Mapping):
            raise self.fail(key, "must be a table of asset = amount")
        out: dict[str, int] = {}
        for name, amount in value.items():
            asset = _ASSETS.get(name.lower()) or next(
                (a for a in _ASSETS.values() if a.token_id == name), None
            )
            if asset is None:
                raise InputError(f"{self.where} {key}.{name}: unknown asset (use BTC, EURe or a token id)")
            if isinstance(amount, bool) or not isinstance(amount, (int, Decimal, str)):
                raise InputError(f"{self.where} {key}.{name}: must be an amount, got {_show(amount)}")
            try:
                out[asset.token_id] = to_units(asset, amount, Rounding.EXACT, name="amount")
            except InputError as exc:
                raise InputError(f"{self.where} {key}.{name}: {exc}") from None
        return MappingProxyType(out)


def human_balances(balances: Mapping[str, int]) -> dict[str, str]:
    """``{token_id: units}`` -> ``{symbol: human amount}`` for the assets scenarios know."""
    by_id = {a.token_id: a for a in _ASSETS.values()}
    return {by_id[t].symbol: format_units(by_id[t], units) for t, units in balances.items()}


def _units(asset: Asset, human: str) -> int:
    return to_units(asset, human, Rounding.EXACT)


# ====================================================================== sections


@dataclass(frozen=True)
class PriceConfig:
    """The seeded BTC/EUR path (:class:`~intents_mm.sim.pricepath.PricePath`)."""

    start_price: Decimal = Decimal(60000)
    vol_annual: float = 0.6
    jump_rate_per_hour: float = 2.0
    jump_size_bps: float = 40.0
    tick_s: float = 0.1
    # Market regimes (issue 16); the defaults leave them off and the path as before.
    regime_vol_multiplier: float = 1.0  # sigma x this in the turbulent regime (1 = no regimes)
    regime_calm_mean_s: float = 600.0
    regime_turbulent_mean_s: float = 120.0
    jump_branching: float = 0.0  # Hawkes: jumps begotten per jump (0 = Poisson jumps)
    jump_decay_s: float = 30.0
    crash_at_s: float | None = None  # seconds after the path's origin (None = no crash)
    crash_bps: float = -1000.0
    crash_duration_s: float = 120.0
    eurusd_start: Decimal = Decimal("1.08")  # USD per EUR; BTC/USD = BTC/EUR x EUR/USD
    eurusd_vol_annual: float = 0.07


@dataclass(frozen=True)
class VenueConfig:
    """Per-venue overrides of the simulated exchange's quoting profile (``None`` = its built-in value)."""

    half_spread_bps: tuple[float, float] | None = None  # drawn uniformly per requote
    basis_bps: float | None = None  # constant offset of the venue's mid from the path
    noise_bps: float | None = None  # std-dev of each step of the venue's mean-reverting mid noise
    # Market regimes (issue 16): microstructure, lags and outages of this venue.
    noise_ar: float | None = None  # persistence of that noise per requote (built-in 0.8)
    jitter_bps: float | None = None  # white microstructure noise per requote (built-in 0)
    lag_ms: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # per pair
    stale: tuple[tuple[float, float], ...] = ()  # [at_s, duration_s] windows: book frozen
    dead_at_s: float | None = None  # the book freezes for good (connection and heartbeats live on)
    disconnect_at_s: tuple[float, ...] = ()  # every WebSocket of the venue is closed then
    stale_per_hour: float = 0.0  # random stale episodes (Poisson)
    stale_s: tuple[float, float] = (2.0, 10.0)  # their duration, uniform
    disconnect_per_hour: float = 0.0  # random disconnects (Poisson)


@dataclass(frozen=True)
class ExchangesConfig:
    """``venues`` quote; the others are held down (REST 503, WebSocket refused) for the whole run."""

    venues: tuple[str, ...] = VENUES
    update_interval_s: tuple[float, float] = (0.1, 0.25)
    heartbeat_s: float = 1.0
    per_venue: Mapping[str, VenueConfig] = field(default_factory=lambda: MappingProxyType({}))
    pairs: tuple[str, ...] = PAIRS  # books served on every venue (btceur always)
    lag_ms: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # per pair, signed


@dataclass(frozen=True)
class RelayConfig:
    window_ms: int = 3000
    min_deadline_ms: int = 60000
    envelope: str = "event"  # "event" (what clients read) or "docs" (the documented flat form)
    allow_anonymous: bool = False
    accept_legacy_nonces: bool = True
    early_close: bool = True
    api_keys: tuple[str, ...] = ()  # extra accepted keys (external solvers), besides the generated ones


@dataclass(frozen=True)
class VerifierConfig:
    fee_pips: int = 1
    salt_rotation_s: float | None = None  # rotate the Verifier's salt this often (None = never)
    salt_grace_s: float | None = None  # a rotated-out salt stays valid this long (None = until invalidated)


@dataclass(frozen=True)
class NearConfig:
    block_time_ms: int = 600
    timeout_fault_hold_s: float = 10.0  # how long an rpc_timeouts fault holds a request
    contract_error_shape: str = "result_error"  # or "rpc_error" (newer nodes)
    final_lag_blocks: int = 2  # `final` views read the state this many blocks behind the latest
    lagged_views: bool = True  # false: every view reads the latest state (the pre-issue-16 venue)
    history_blocks: int = 600  # blocks of state kept for views by block_id
    settlement_delay_ms: int = 0  # from a publish until its execute_intents lands in a block


@dataclass(frozen=True)
class BridgeConfig:
    deposit_pending_s: float = 2.0
    deposit_credit_s: float = 4.0
    withdrawal_complete_s: float = 3.0
    withdrawal_visible_s: float = 0.0
    withdrawal_status_shape: str = "sdk"  # or "docs"


_USER_BALANCES = MappingProxyType({BTC.token_id: _units(BTC, "10"), EURE.token_id: _units(EURE, "1000000")})
_SOLVER_BALANCES = MappingProxyType({BTC.token_id: _units(BTC, "1"), EURE.token_id: _units(EURE, "100000")})
_MM_BALANCES = MappingProxyType({BTC.token_id: _units(BTC, "0.05"), EURE.token_id: _units(EURE, "5000")})


@dataclass(frozen=True)
class FlowConfig:
    """Quote-request flow: ``rate_per_s`` in total, split evenly over ``users`` simulated users."""

    rate_per_s: float = 4.0
    users: int = 4
    median_notional_eur: Decimal = Decimal(3)
    notional_sigma: float = 0.8
    min_notional_eur: Decimal = Decimal("0.5")
    max_notional_eur: Decimal = Decimal(250)
    sell_base_share: float = 0.5
    exact_in_share: float = 0.7
    informed_share: float = 0.1
    informed_horizon_ms: int = 5000
    informed_edge_bps: Decimal = Decimal(5)
    tolerance_bps: Decimal = Decimal(100)
    min_deadline_ms: int = 60000
    alt_min_deadline_ms: int = 30000
    alt_deadline_share: float = 0.1
    intent_ttl_ms: int = 60000
    wait_ms: int | None = None
    max_in_flight: int = 32
    transport: str = "inprocess"  # or "http" (the users post to the relay's /rpc)
    balances: Mapping[str, int] = field(default_factory=lambda: _USER_BALANCES)  # per user
    # issue 16 flow kinds and shapes: see UserFlowConfig (participants.py) and docs/sim-venue.md
    informed_by_size: tuple[tuple[Decimal, float], ...] = ()
    latency_arb_share: float = 0.0
    latency_arb_lead_ms: int = 500
    latency_arb_threshold_bps: Decimal = Decimal(5)
    option_share: float = 0.0
    option_threshold_bps: Decimal = Decimal(10)
    option_poll_ms: int = 200
    option_exercise_margin_ms: int = 2000
    option_max_hold_ms: int | None = None
    acceptance: str = "limit"  # or "logistic"
    logistic_mid_bps: Decimal = Decimal(50)
    logistic_scale_bps: Decimal = Decimal(15)
    size_dist: str = "lognormal"  # or "pareto"
    pareto_alpha: float = 1.5
    arrivals: str = "poisson"  # or "hawkes", "mmpp"
    hawkes_branching: float = 0.5
    hawkes_decay_s: float = 2.0
    mmpp_burst_multiplier: float = 5.0
    mmpp_burst_share: float = 0.1
    mmpp_mean_burst_s: float = 5.0

    def mix(self) -> dict[str, Any]:
        """The flow's kinds and shapes, JSON-ready (for ``describe``)."""
        return {
            "informed": "by_size" if self.informed_by_size else self.informed_share,
            "latency_arb": self.latency_arb_share,
            "option": self.option_share,
            "acceptance": self.acceptance,
            "size_dist": self.size_dist,
            "arrivals": self.arrivals,
        }


@dataclass(frozen=True)
class SolverSpec:
    """A competing solver on the relay's real WebSocket."""

    spread_bps: Decimal = Decimal(40)
    response_delay_ms: int = 0
    deadline_margin_ms: int = 10000
    max_min_deadline_ms: int = 60000
    instance_id: str | None = None
    balances: Mapping[str, int] = field(default_factory=lambda: _SOLVER_BALANCES)
    # "fixed" (true mid +/- spread_bps), "amm" (constant product on its reserves, one nonce per reserve
    # state; default balances 1 BTC + start_price EURe) or "tight" (leading price, widens on markouts)
    kind: str = "fixed"
    margin_bps: int = 30  # amm: margin in bips taken from the input
    lead_ms: int = 300  # tight: prices off the true path this far ahead
    markout_ms: int = 5000  # tight: marks each fill this long after it
    widen_factor: Decimal = Decimal(1)  # tight: bps of spread per bps of adverse average markout
    markout_alpha: Decimal = Decimal("0.3")  # tight: weight of the newest markout in the average
    max_spread_bps: Decimal = Decimal(200)  # tight: widening stops here


SOLVER_KINDS: tuple[str, ...] = ("fixed", "amm", "tight")


@dataclass(frozen=True)
class AccountSpec:
    """An extra solver account: funded and its key registered on the Verifier and the chain."""

    account_id: str
    public_key: str
    secret_seed: str | None  # set when the key was derived from ``seed`` (then the venue knows the secret)
    balances: Mapping[str, int]


@dataclass(frozen=True)
class MarketMakerConfig:
    """The account our market maker uses: the implicit account of a key derived from ``key_seed``
    (or ``account_id``, a named account with that key registered), funded with ``balances``."""

    key_seed: str = "market-maker"
    account_id: str | None = None
    balances: Mapping[str, int] = field(default_factory=lambda: _MM_BALANCES)

    def signing_key(self) -> SigningKey:
        return key_from_label(f"market-maker:{self.key_seed}")


@dataclass(frozen=True)
class Fault:
    """One fault, scheduled (``at_s`` seconds after the flow starts) or applied on demand.

    Parameters by kind: ``relay_error_replies`` (``n``, ``message``), ``rpc_timeouts`` / ``rpc_5xx``
    (``n``, ``method``), ``exchange_stale`` / ``exchange_down`` (``venue``, ``duration_s``),
    ``exchange_outlier`` (``venue``, ``bps``, ``duration_s``), ``bridge_withdrawal_failure``
    (``reason``), ``price_shock`` (``bps``), ``relay_disconnect`` (none).
    """

    kind: str
    at_s: float | None = None
    n: int = 1
    message: str = "relay unavailable"
    method: str | None = None
    venue: str = ""
    bps: float = 0.0
    duration_s: float = 10.0
    reason: str = "destination transfer failed"

    def to_json(self) -> dict[str, Any]:
        """The fault's kind and the parameters its kind uses (JSON-ready)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.at_s is not None:
            out["at_s"] = self.at_s
        for name in _FAULT_PARAMS[self.kind]:
            out[name] = getattr(self, name)
        return out


_FAULT_PARAMS: dict[str, tuple[str, ...]] = {
    "relay_disconnect": (),
    "relay_error_replies": ("n", "message"),
    "rpc_timeouts": ("n", "method"),
    "rpc_5xx": ("n", "method"),
    "exchange_stale": ("venue", "duration_s"),
    "exchange_outlier": ("venue", "bps", "duration_s"),
    "exchange_down": ("venue", "duration_s"),
    "bridge_withdrawal_failure": ("reason",),
    "price_shock": ("bps",),
}


def parse_fault(obj: object, where: str, *, scheduled: bool) -> Fault:
    """Validate one fault table (scenario ``[[faults]]`` entry or admin ``POST /admin/fault`` body).

    ``scheduled`` faults need ``at_s``; on-demand faults must not carry one.
    """
    t = _Table(obj, where)
    kind = t.str_("kind", "", choices=FAULT_KINDS) if t.has("kind") else None
    if kind is None:
        raise InputError(f"{where} kind: missing (one of {', '.join(FAULT_KINDS)})")
    at_s: float | None = None
    if scheduled:
        if not t.has("at_s"):
            raise InputError(f"{where} at_s: missing (seconds after the flow starts)")
        at_s = t.num("at_s", 0.0, lo=0.0)
    params = _FAULT_PARAMS[kind]
    values: dict[str, Any] = {}
    if "n" in params:
        values["n"] = t.int_("n", 1, lo=1, hi=1_000_000)
    if "message" in params:
        values["message"] = t.str_("message", Fault.message)
    if "method" in params:
        values["method"] = t.opt_str("method")
    if "venue" in params:
        if not t.has("venue"):
            raise InputError(f"{where} venue: missing (one of {', '.join(VENUES)})")
        values["venue"] = t.str_("venue", "", choices=VENUES)
    if "bps" in params:
        if not t.has("bps"):
            raise InputError(f"{where} bps: missing")
        bps = t.num("bps", 0.0, lo=-9999.0, hi=100_000.0)
        if bps == 0:
            raise t.fail("bps", "must not be zero")
        values["bps"] = bps
    if "duration_s" in params:
        values["duration_s"] = t.pos("duration_s", Fault.duration_s)
    if "reason" in params:
        values["reason"] = t.str_("reason", Fault.reason)
    t.done()
    return Fault(kind=kind, at_s=at_s, **values)


# ====================================================================== the scenario


def key_from_label(label: str) -> SigningKey:
    """The deterministic simulation key for ``label`` (play money only)."""
    return SigningKey.from_seed(hashlib.sha256(f"intents-mm-sim:{label}".encode()).digest())


@dataclass(frozen=True)
class Scenario:
    """A whole simulated market. ``Scenario()`` is the default market (no faults)."""

    name: str = "default"
    description: str = ""
    price: PriceConfig = PriceConfig()
    exchanges: ExchangesConfig = ExchangesConfig()
    relay: RelayConfig = RelayConfig()
    verifier: VerifierConfig = VerifierConfig()
    near: NearConfig = NearConfig()
    bridge: BridgeConfig = BridgeConfig()
    flow: FlowConfig = FlowConfig()
    solvers: tuple[SolverSpec, ...] = ()
    accounts: tuple[AccountSpec, ...] = ()
    market_maker: MarketMakerConfig = MarketMakerConfig()
    faults: tuple[Fault, ...] = ()

    def with_allow_anonymous(self, allow: bool = True) -> Scenario:
        return dataclasses.replace(self, relay=dataclasses.replace(self.relay, allow_anonymous=allow))

    # ------------------------------------------------------------------ parsing

    @classmethod
    def from_toml(cls, text: str, source: str = "scenario") -> Scenario:
        try:
            doc = tomllib.loads(text, parse_float=Decimal)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{source}: not valid TOML: {exc}") from None
        return cls.from_dict(doc, source)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "scenario") -> Scenario:
        """Validate a parsed scenario document. Errors name ``source``, the section and the key."""
        top = _Table(doc, f"{source}:")
        name = top.str_("name", "custom")
        description = top.str_("description", "")
        price = _price(top.table("price"))
        exchanges = _exchanges(top.table("exchanges"))
        relay = _relay(top.table("relay"))
        verifier = _verifier(top.table("verifier"))
        near = _near(top.table("near"))
        bridge = _bridge(top.table("bridge"))
        flow = _flow(top.table("flow"))
        solvers = tuple(
            _solver(_Table(item, f"{source}: [[solvers]] #{i + 1}"), price.start_price)
            for i, item in enumerate(_array(top, "solvers"))
        )
        accounts = tuple(
            _account(_Table(item, f"{source}: [[accounts]] #{i + 1}"))
            for i, item in enumerate(_array(top, "accounts"))
        )
        market_maker = _market_maker(top.table("market_maker"))
        faults = tuple(
            parse_fault(item, f"{source}: [[faults]] #{i + 1}", scheduled=True)
            for i, item in enumerate(_array(top, "faults"))
        )
        top.done()
        scenario = cls(
            name=name,
            description=description,
            price=price,
            exchanges=exchanges,
            relay=relay,
            verifier=verifier,
            near=near,
            bridge=bridge,
            flow=flow,
            solvers=solvers,
            accounts=accounts,
            market_maker=market_maker,
            faults=tuple(sorted(faults, key=lambda f: f.at_s or 0.0)),
        )
        _cross_checks(scenario, source)
        return scenario

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (human amounts) for logs and the admin state."""
        return {
            "name": self.name,
            "description": self.description,
            "flow_rate_per_s": self.flow.rate_per_s,
            "users": self.flow.users,
            "flow_mix": self.flow.mix(),
            "solvers": [{"kind": s.kind, "spread_bps": str(s.spread_bps)} for s in self.solvers],
            "accounts": [a.account_id for a in self.accounts],
            "market_maker_balances": human_balances(self.market_maker.balances),
            "venues": list(self.exchanges.venues),
            "faults": [f.to_json() for f in self.faults],
        }


def _array(top: _Table, key: str) -> list[Any]:
    if not top.has(key):
        top.used.add(key)
        return []
    value = top.raw(key)
    if not isinstance(value, list):
        raise InputError(f"{top.where} {key}: must be an array of tables ([[{key}]]), got {_show(value)}")
    return value


def _price(t: _Table) -> PriceConfig:
    d = PriceConfig()
    out = PriceConfig(
        start_price=t.dec("start_price", d.start_price, lo=Decimal("0.01")),
        vol_annual=t.num("vol_annual", d.vol_annual, lo=0.0, hi=20.0),
        jump_rate_per_hour=t.num("jump_rate_per_hour", d.jump_rate_per_hour, lo=0.0, hi=3600.0),
        jump_size_bps=t.num("jump_size_bps", d.jump_size_bps, lo=0.0, hi=5000.0),
        tick_s=t.num("tick_s", d.tick_s, lo=0.001, hi=60.0),
        regime_vol_multiplier=t.num("regime_vol_multiplier", d.regime_vol_multiplier, lo=1.0, hi=100.0),
        regime_calm_mean_s=t.pos("regime_calm_mean_s", d.regime_calm_mean_s),
        regime_turbulent_mean_s=t.pos("regime_turbulent_mean_s", d.regime_turbulent_mean_s),
        jump_branching=t.num("jump_branching", d.jump_branching, lo=0.0, hi=0.95),
        jump_decay_s=t.pos("jump_decay_s", d.jump_decay_s),
        crash_at_s=t.num("crash_at_s", 0.0, lo=0.0) if t.has("crash_at_s") else None,
        crash_bps=t.num("crash_bps", d.crash_bps, lo=-9000.0, hi=9000.0),
        crash_duration_s=t.num("crash_duration_s", d.crash_duration_s, lo=0.0, hi=86_400.0),
        eurusd_start=t.dec("eurusd_start", d.eurusd_start, lo=Decimal("0.0001")),
        eurusd_vol_annual=t.num("eurusd_vol_annual", d.eurusd_vol_annual, lo=0.0, hi=5.0),
    )
    t.done()
    return out


def _exchanges(t: _Table) -> ExchangesConfig:
    d = ExchangesConfig()
    venues = t.str_list("venues", d.venues)
    for v in venues:
        if v not in VENUES:
            raise InputError(f"{t.where} venues: unknown venue {v!r} (known: {', '.join(VENUES)})")
    if len(set(venues)) != len(venues):
        raise t.fail("venues", "must not repeat a venue")
    if not venues:
        raise t.fail("venues", "must name at least one venue")
    interval = t.range_("update_interval_s", d.update_interval_s)
    if interval[0] <= 0:
        raise t.fail("update_interval_s", "must be positive")
    heartbeat = t.pos("heartbeat_s", d.heartbeat_s)
    per_venue: dict[str, VenueConfig] = {}
    for name in VENUES:
        if not t.has(name):
            t.used.add(name)
            continue
        vt = t.table(name)
        spread = vt.range_("half_spread_bps", (0.0, 0.0)) if vt.has("half_spread_bps") else None
        if spread is not None and spread[1] <= 0:
            raise vt.fail("half_spread_bps", "must be positive")
        basis = vt.num("basis_bps", 0.0, lo=-1000.0, hi=1000.0) if vt.has("basis_bps") else None
        noise = vt.num("noise_bps", 0.0, lo=0.0, hi=100.0) if vt.has("noise_bps") else None
        regimes = _venue_market(vt)
        vt.done()
        per_venue[name] = VenueConfig(half_spread_bps=spread, basis_bps=basis, noise_bps=noise, **regimes)
    pairs = t.str_list("pairs", PAIRS)
    if "btceur" not in pairs or set(pairs) - set(PAIRS) or len(set(pairs)) != len(pairs):
        raise t.fail("pairs", f"must list btceur and others of {', '.join(PAIRS)} once each")
    lag_ms = _lags(t, "lag_ms")
    t.done()
    return ExchangesConfig(
        venues=tuple(venues),
        update_interval_s=interval,
        heartbeat_s=heartbeat,
        per_venue=MappingProxyType(per_venue),
        pairs=tuple(p for p in PAIRS if p in pairs),
        lag_ms=lag_ms,
    )


def _lags(t: _Table, key: str) -> Mapping[str, int]:
    """``{pair = lag_ms}``: signed integer milliseconds (negative = ahead of the true path)."""
    if not t.has(key):
        t.used.add(key)
        return MappingProxyType({})
    value = t.raw(key)
    if not isinstance(value, Mapping):
        raise t.fail(key, f"must be a table of pair = milliseconds ({', '.join(PAIRS)})")
    out: dict[str, int] = {}
    for pair, ms in value.items():
        if pair not in PAIRS:
            raise InputError(f"{t.where} {key}.{pair}: unknown pair (known: {', '.join(PAIRS)})")
        if isinstance(ms, bool) or not isinstance(ms, int) or abs(ms) > 600_000:
            raise InputError(
                f"{t.where} {key}.{pair}: must be an integer in -600000..600000, got {_show(ms)}"
            )
        out[pair] = ms
    return MappingProxyType(out)


def _venue_market(vt: _Table) -> dict[str, Any]:
    """The issue-16 keys of ``[exchanges.<venue>]``: microstructure, lags, outages."""
    stale: list[tuple[float, float]] = []
    if vt.has("stale"):
        raw = vt.raw("stale")
        if not isinstance(raw, list):
            raise vt.fail("stale", "must be a list of [at_s, duration_s] pairs")
        for item in raw:
            ok = isinstance(item, list) and len(item) == 2
            ok = ok and all(
                isinstance(v, (int, Decimal)) and not isinstance(v, bool) and v >= 0 for v in item
            )
            if not ok:
                raise vt.fail("stale", "must be a list of [at_s, duration_s] pairs of numbers >= 0")
            stale.append((float(item[0]), float(item[1])))
    else:
        vt.used.add("stale")
    disconnects: list[float] = []
    if vt.has("disconnect_at_s"):
        raw = vt.raw("disconnect_at_s")
        ok = isinstance(raw, list) and all(
            isinstance(v, (int, Decimal)) and not isinstance(v, bool) and v >= 0 for v in raw
        )
        if not ok or not isinstance(raw, list):
            raise vt.fail("disconnect_at_s", "must be a list of seconds >= 0")
        disconnects = sorted(float(v) for v in raw)
    else:
        vt.used.add("disconnect_at_s")
    d = VenueConfig()
    return {
        "noise_ar": vt.num("noise_ar", 0.0, lo=0.0, hi=0.999) if vt.has("noise_ar") else None,
        "jitter_bps": vt.num("jitter_bps", 0.0, lo=0.0, hi=100.0) if vt.has("jitter_bps") else None,
        "lag_ms": _lags(vt, "lag_ms"),
        "stale": tuple(stale),
        "dead_at_s": vt.num("dead_at_s", 0.0, lo=0.0) if vt.has("dead_at_s") else None,
        "disconnect_at_s": tuple(disconnects),
        "stale_per_hour": vt.num("stale_per_hour", d.stale_per_hour, lo=0.0, hi=3600.0),
        "stale_s": vt.range_("stale_s", d.stale_s),
        "disconnect_per_hour": vt.num("disconnect_per_hour", d.disconnect_per_hour, lo=0.0, hi=3600.0),
    }


def _relay(t: _Table) -> RelayConfig:
    d = RelayConfig()
    keys = t.str_list("api_keys", d.api_keys)
    if len(set(keys)) != len(keys):
        raise t.fail("api_keys", "must not repeat a key")
    out = RelayConfig(
        window_ms=t.int_("window_ms", d.window_ms, lo=1, hi=600_000),
        min_deadline_ms=t.int_("min_deadline_ms", d.min_deadline_ms, lo=0, hi=86_400_000),
        envelope=t.str_("envelope", d.envelope, choices=("event", "docs")),
        allow_anonymous=t.bool_("allow_anonymous", d.allow_anonymous),
        accept_legacy_nonces=t.bool_("accept_legacy_nonces", d.accept_legacy_nonces),
        early_close=t.bool_("early_close", d.early_close),
        api_keys=keys,
    )
    t.done()
    return out


def _verifier(t: _Table) -> VerifierConfig:
    d = VerifierConfig()
    out = VerifierConfig(
        fee_pips=t.int_("fee_pips", d.fee_pips, lo=0, hi=1_000_000),
        salt_rotation_s=t.opt_pos("salt_rotation_s"),
        salt_grace_s=t.opt_pos("salt_grace_s"),
    )
    t.done()
    return out


def _near(t: _Table) -> NearConfig:
    d = NearConfig()
    out = NearConfig(
        block_time_ms=t.int_("block_time_ms", d.block_time_ms, lo=1, hi=60_000),
        timeout_fault_hold_s=t.pos("timeout_fault_hold_s", d.timeout_fault_hold_s),
        contract_error_shape=t.str_(
            "contract_error_shape", d.contract_error_shape, choices=("result_error", "rpc_error")
        ),
        final_lag_blocks=t.int_("final_lag_blocks", d.final_lag_blocks, lo=0, hi=1000),
        lagged_views=t.bool_("lagged_views", d.lagged_views),
        history_blocks=t.int_("history_blocks", d.history_blocks, lo=1, hi=1_000_000),
        settlement_delay_ms=t.int_("settlement_delay_ms", d.settlement_delay_ms, lo=0, hi=600_000),
    )
    if out.history_blocks <= out.final_lag_blocks:
        raise t.fail("history_blocks", f"must be > final_lag_blocks ({out.final_lag_blocks})")
    t.done()
    return out


def _bridge(t: _Table) -> BridgeConfig:
    d = BridgeConfig()
    out = BridgeConfig(
        deposit_pending_s=t.num("deposit_pending_s", d.deposit_pending_s, lo=0.0),
        deposit_credit_s=t.num("deposit_credit_s", d.deposit_credit_s, lo=0.0),
        withdrawal_complete_s=t.num("withdrawal_complete_s", d.withdrawal_complete_s, lo=0.0),
        withdrawal_visible_s=t.num("withdrawal_visible_s", d.withdrawal_visible_s, lo=0.0),
        withdrawal_status_shape=t.str_(
            "withdrawal_status_shape", d.withdrawal_status_shape, choices=("sdk", "docs")
        ),
    )
    t.done()
    return out


def _flow(t: _Table) -> FlowConfig:
    d = FlowConfig()
    wait_ms = t.int_("wait_ms", 0, lo=1, hi=600_000) if t.has("wait_ms") else None
    out = FlowConfig(
        rate_per_s=t.pos("rate_per_s", d.rate_per_s),
        users=t.int_("users", d.users, lo=1, hi=1000),
        median_notional_eur=t.dec("median_notional_eur", d.median_notional_eur, lo=Decimal("0.000001")),
        notional_sigma=t.num("notional_sigma", d.notional_sigma, lo=0.0, hi=5.0),
        min_notional_eur=t.dec("min_notional_eur", d.min_notional_eur, lo=Decimal("0.000001")),
        max_notional_eur=t.dec("max_notional_eur", d.max_notional_eur, lo=Decimal("0.000001")),
        sell_base_share=t.share("sell_base_share", d.sell_base_share),
        exact_in_share=t.share("exact_in_share", d.exact_in_share),
        informed_share=t.share("informed_share", d.informed_share),
        informed_horizon_ms=t.int_("informed_horizon_ms", d.informed_horizon_ms, lo=0),
        informed_edge_bps=t.dec("informed_edge_bps", d.informed_edge_bps, lo=Decimal(0)),
        tolerance_bps=t.dec("tolerance_bps", d.tolerance_bps, lo=Decimal(0), hi=Decimal(10_000)),
        min_deadline_ms=t.int_("min_deadline_ms", d.min_deadline_ms, lo=0, hi=86_400_000),
        alt_min_deadline_ms=t.int_("alt_min_deadline_ms", d.alt_min_deadline_ms, lo=0, hi=86_400_000),
        alt_deadline_share=t.share("alt_deadline_share", d.alt_deadline_share),
        intent_ttl_ms=t.int_("intent_ttl_ms", d.intent_ttl_ms, lo=1000, hi=86_400_000),
        wait_ms=wait_ms,
        max_in_flight=t.int_("max_in_flight", d.max_in_flight, lo=1, hi=10_000),
        transport=t.str_("transport", d.transport, choices=("inprocess", "http")),
        balances=t.balances("balances", d.balances),
        **_flow_kinds(t, d),
    )
    if out.max_notional_eur < out.min_notional_eur:
        raise t.fail("max_notional_eur", f"must be >= min_notional_eur ({out.min_notional_eur})")
    top = max((p for _, p in out.informed_by_size), default=out.informed_share)
    if top + out.latency_arb_share + out.option_share > 1:
        raise t.fail("option_share", "informed (or informed_by_size), latency_arb and option shares exceed 1")
    t.done()
    return out


def _flow_kinds(t: _Table, d: FlowConfig) -> dict[str, Any]:
    """The ``[flow]`` keys of the issue-16 flow kinds (latency arbitrage, options, size-informed) and
    shapes (logistic acceptance, Pareto sizes, Hawkes / MMPP arrivals)."""
    hold = t.int_("option_max_hold_ms", 0, lo=0, hi=86_400_000) if t.has("option_max_hold_ms") else None
    return {
        "informed_by_size": _size_curve(t, "informed_by_size"),
        "latency_arb_share": t.share("latency_arb_share", d.latency_arb_share),
        "latency_arb_lead_ms": t.int_("latency_arb_lead_ms", d.latency_arb_lead_ms, lo=0, hi=600_000),
        "latency_arb_threshold_bps": t.dec(
            "latency_arb_threshold_bps", d.latency_arb_threshold_bps, lo=Decimal(0)
        ),
        "option_share": t.share("option_share", d.option_share),
        "option_threshold_bps": t.dec("option_threshold_bps", d.option_threshold_bps, lo=Decimal(0)),
        "option_poll_ms": t.int_("option_poll_ms", d.option_poll_ms, lo=1, hi=600_000),
        "option_exercise_margin_ms": t.int_(
            "option_exercise_margin_ms", d.option_exercise_margin_ms, lo=0, hi=86_400_000
        ),
        "option_max_hold_ms": hold,
        "acceptance": t.str_("acceptance", d.acceptance, choices=("limit", "logistic")),
        "logistic_mid_bps": t.dec(
            "logistic_mid_bps", d.logistic_mid_bps, lo=Decimal(-10_000), hi=Decimal(10_000)
        ),
        "logistic_scale_bps": t.dec("logistic_scale_bps", d.logistic_scale_bps, lo=Decimal("0.001")),
        "size_dist": t.str_("size_dist", d.size_dist, choices=("lognormal", "pareto")),
        "pareto_alpha": t.num("pareto_alpha", d.pareto_alpha, lo=0.1, hi=100.0),
        "arrivals": t.str_("arrivals", d.arrivals, choices=("poisson", "hawkes", "mmpp")),
        "hawkes_branching": t.num("hawkes_branching", d.hawkes_branching, lo=0.0, hi=0.99),
        "hawkes_decay_s": t.pos("hawkes_decay_s", d.hawkes_decay_s),
        "mmpp_burst_multiplier": t.num("mmpp_burst_multiplier", d.mmpp_burst_multiplier, lo=1.0, hi=1000.0),
        "mmpp_burst_share": t.num("mmpp_burst_share", d.mmpp_burst_share, lo=0.001, hi=0.999),
        "mmpp_mean_burst_s": t.pos("mmpp_mean_burst_s", d.mmpp_mean_burst_s),
    }


def _size_curve(t: _Table, key: str) -> tuple[tuple[Decimal, float], ...]:
    """``[[notional_eur, probability], ...]`` with strictly increasing positive notionals."""
    if not t.has(key):
        t.used.add(key)
        return ()
    value = t.raw(key)
    problem = (
        "must be a list of [notional_eur, probability] pairs, notionals increasing, probabilities in [0, 1]"
    )
    if not isinstance(value, list) or not value:
        raise t.fail(key, problem)
    out: list[tuple[Decimal, float]] = []
    for item in value:
        ok = isinstance(item, list) and len(item) == 2
        ok = ok and all(isinstance(v, (int, Decimal)) and not isinstance(v, bool) for v in item)
        if (
            not ok
            or not (Decimal(item[0]) > 0 and 0 <= item[1] <= 1)
            or (out and Decimal(item[0]) <= out[-1][0])
        ):
            raise t.fail(key, problem)
        out.append((Decimal(item[0]), float(item[1])))
    return tuple(out)


def _solver(t: _Table, start_price: Decimal = PriceConfig.start_price) -> SolverSpec:
    d = SolverSpec()
    kind = t.str_("kind", d.kind, choices=SOLVER_KINDS)
    default_balances = d.balances
    if kind == "amm":  # a pool priced at the path's start
        eure = to_units(EURE, start_price, Rounding.FLOOR)
        default_balances = MappingProxyType({BTC.token_id: _units(BTC, "1"), EURE.token_id: eure})
    out = SolverSpec(
        kind=kind,
        margin_bps=t.int_("margin_bps", d.margin_bps, lo=0, hi=9999),
        lead_ms=t.int_("lead_ms", d.lead_ms, lo=0, hi=600_000),
        markout_ms=t.int_("markout_ms", d.markout_ms, lo=1, hi=3_600_000),
        widen_factor=t.dec("widen_factor", d.widen_factor, lo=Decimal(0), hi=Decimal(100)),
        markout_alpha=t.dec("markout_alpha", d.markout_alpha, lo=Decimal("0.000001"), hi=Decimal(1)),
        max_spread_bps=t.dec("max_spread_bps", d.max_spread_bps, lo=Decimal(0), hi=Decimal(5000)),
        spread_bps=t.dec("spread_bps", d.spread_bps, lo=Decimal(0), hi=Decimal(5000)),
        response_delay_ms=t.int_("response_delay_ms", d.response_delay_ms, lo=0, hi=600_000),
        deadline_margin_ms=t.int_("deadline_margin_ms", d.deadline_margin_ms, lo=0, hi=3_600_000),
        max_min_deadline_ms=t.int_("max_min_deadline_ms", d.max_min_deadline_ms, lo=0, hi=86_400_000),
        instance_id=t.opt_str("instance_id"),
        balances=t.balances("balances", default_balances),
    )
    if out.kind == "tight" and out.max_spread_bps < out.spread_bps:
        raise t.fail("max_spread_bps", f"must be >= spread_bps ({out.spread_bps})")
    t.done()
    return out


def _account(t: _Table) -> AccountSpec:
    public_key = t.opt_str("public_key")
    seed = t.opt_str("seed")
    account_id = t.opt_str("account_id")
    balances = t.balances("balances", {})
    if (public_key is None) == (seed is None):
        raise InputError(f"{t.where}: give exactly one of public_key or seed")
    if public_key is not None:
        try:
            pk = PublicKey.from_string(public_key)
        except InputError as exc:
            raise InputError(f"{t.where} public_key: {exc}") from None
    else:
        pk = key_from_label(f"account:{seed}").public_key
    if account_id is None:
        account_id = pk.implicit_account_id()
    else:
        try:
            validate_account_id(account_id)
        except InputError as exc:
            raise InputError(f"{t.where} account_id: {exc}") from None
        if is_implicit_account(account_id) and account_id != pk.implicit_account_id():
            raise t.fail("account_id", "is an implicit account of another key")
    t.done()
    return AccountSpec(account_id, pk.to_string(), seed, balances)


def _market_maker(t: _Table) -> MarketMakerConfig:
    d = MarketMakerConfig()
    key_seed = t.str_("key_seed", d.key_seed)
    if not key_seed:
        raise t.fail("key_seed", "must not be empty")
    account_id = t.opt_str("account_id")
    if account_id is not None:
        try:
            validate_account_id(account_id)
        except InputError as exc:
            raise InputError(f"{t.where} account_id: {exc}") from None
    out = MarketMakerConfig(
        key_seed=key_seed, account_id=account_id, balances=t.balances("balances", d.balances)
    )
    implicit = out.signing_key().public_key.implicit_account_id()
    if account_id is not None and is_implicit_account(account_id) and account_id != implicit:
        raise t.fail("account_id", "is an implicit account of another key (leave it out to use the key's)")
    t.done()
    return out


def _cross_checks(s: Scenario, source: str) -> None:
    ids = [a.account_id for a in s.accounts]
    dup = next((a for a in ids if ids.count(a) > 1), None)
    if dup is not None:
        raise InputError(f"{source}: [[accounts]] account {dup} is listed twice")
    mm = s.market_maker.account_id or s.market_maker.signing_key().public_key.implicit_account_id()
    if mm in ids:
        raise InputError(f"{source}: [[accounts]] account {mm} is the market maker's account")
    for f in s.faults:
        if f.venue and f.venue not in s.exchanges.venues:
            raise InputError(
                f"{source}: [[faults]] {f.kind} at {f.at_s or 0:g} s: venue {f.venue} is not enabled"
            )


# ====================================================================== loading


def load_scenario(spec: str | Path | None = None) -> Scenario:
    """A scenario from a file path, or a built-in by name (:data:`BUILTIN_SCENARIOS`); ``None`` = default."""
    if spec is None:
        return builtin_scenario("default")
    text_spec = str(spec)
    if text_spec in BUILTIN_SCENARIOS and not Path(text_spec).exists():
        return builtin_scenario(text_spec)
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        known = ", ".join(BUILTIN_SCENARIOS)
        raise InputError(f"scenario {text_spec}: no such file (built-in scenarios: {known})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"scenario {text_spec}: cannot read ({type(exc).__name__})") from None
    return Scenario.from_toml(text, path.name)


def builtin_scenario(name: str) -> Scenario:
    """One of the packaged scenarios in ``intents_mm/sim/scenarios/``."""
    if name not in BUILTIN_SCENARIOS:
        raise InputError(f"unknown built-in scenario {name!r} (known: {', '.join(BUILTIN_SCENARIOS)})")
    text = resources.files("intents_mm.sim").joinpath("scenarios", f"{name}.toml").read_text(encoding="utf-8")
    return Scenario.from_toml(text, f"{name}.toml")
