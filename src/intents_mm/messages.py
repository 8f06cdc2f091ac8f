"""Typed bus messages: one msgspec Struct per subject, carried in a versioned envelope.

Every message on the bus is an :class:`Envelope` encoded as JSON by :func:`encode`. The envelope names
its ``subject``, the payload ``type`` (the payload class name) and the payload schema ``version``;
:func:`decode` picks the payload type from the subject, validates it and raises :class:`InputError`
with a one-line reason when anything is wrong. Decoders are built once per subject.

Units everywhere: amounts are ``int`` in the asset's smallest unit (u128 / i128 fit), prices are
``Decimal``, timestamps are ``int`` nanoseconds since the Unix epoch (UTC), durations carry their unit
in the name (``_ms``, ``_us``, ``_ns``), assets are Verifier token ids (``nep141:btc.omft.near``).
Payloads ignore unknown fields, so producers may add optional fields without a version bump; any
change that removes or retypes a field bumps the subject's version.

See ``docs/messages.md`` for producers, consumers and every field.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

import msgspec

from intents_mm.bus import subjects as _subjects
from intents_mm.clock import Clock
from intents_mm.errors import InputError

U128_MAX: Final = 2**128 - 1
I128_MIN: Final = -(2**127)
I128_MAX: Final = 2**127 - 1
#: Prices and PnL figures must fit NUMERIC(38,18): fewer than 20 integer digits.
PRICE_ABS_LIMIT: Final = Decimal(10) ** 20

NonNegInt = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""A non-negative integer that fits a signed 64-bit column (counts, durations, timestamps)."""
I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""A signed 64-bit integer."""


def _check_u128(name: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= U128_MAX:
        raise InputError(f"{name} must be an amount between 0 and 2**128-1, got {value}")


def _check_i128(name: str, value: int | None) -> None:
    if value is not None and not I128_MIN <= value <= I128_MAX:
        raise InputError(f"{name} must be a signed amount within i128, got {value}")


def _check_amounts(name: str, values: dict[str, int], *, signed: bool) -> None:
    for asset, amount in values.items():
        if signed:
            _check_i128(f"{name}[{asset}]", amount)
        else:
            _check_u128(f"{name}[{asset}]", amount)


def _check_price(name: str, value: Decimal | None) -> None:
    if value is not None and (not value.is_finite() or abs(value) >= PRICE_ABS_LIMIT):
        raise InputError(f"{name} must be a finite decimal below 1e20 in magnitude, got {value}")


class Payload(msgspec.Struct, kw_only=True, frozen=True):
    """Base of every payload; subclasses are immutable and keyword-only."""


P = TypeVar("P", bound=Payload)


class Envelope(msgspec.Struct, Generic[P], kw_only=True, frozen=True):
    """The wire form of every bus message.

    - ``subject``: the bus subject (``demand.swap_request`` ...).
    - ``type``: payload class name (``SwapRequest`` ...), checked against the subject on decode.
    - ``version``: payload schema version for the subject.
    - ``msg_id``: unique message id; the bus deduplicates by it and the history store inserts each
      ``msg_id`` at most once, so producers pass deterministic ids where a retry must not duplicate.
    - ``ts_ns``: when the producer created the message (ns since epoch, UTC).
    - ``payload``: the subject's payload struct.
    """

    subject: str
    type: str
    version: int
    msg_id: str
    ts_ns: NonNegInt
    payload: P


# --------------------------------------------------------------------------------------- demand.*


class SwapRequest(Payload, kw_only=True, frozen=True):
    """A quote request from the Solver Relay (``demand.swap_request``).

    Exactly one of ``exact_amount_in`` / ``exact_amount_out`` is set. ``asset_in`` is what the user
    gives (we receive); ``asset_out`` is what the user gets (we give).
    """

    quote_id: str
    asset_in: str
    asset_out: str
    exact_amount_in: int | None = None
    exact_amount_out: int | None = None
    min_deadline_ms: NonNegInt
    partner_id: str | None = None
    traceparent: str | None = None
    received_ts_ns: NonNegInt
    relay_deadline_ns: NonNegInt

    def __post_init__(self) -> None:
        if (self.exact_amount_in is None) == (self.exact_amount_out is None):
            raise InputError("exactly one of exact_amount_in and exact_amount_out must be set")
        _check_u128("exact_amount_in", self.exact_amount_in)
        _check_u128("exact_amount_out", self.exact_amount_out)


class QuoteStatus(Payload, kw_only=True, frozen=True):
    """A relay ``quote_status`` notice: one of our quotes was used in a settled intent."""

    quote_hash: str
    intent_hash: str
    tx_hash: str
    received_ts_ns: NonNegInt
    seq: I64 | None = None


# --------------------------------------------------------------------------------------- market.*

QuoteQuality = Literal["ok", "degraded", "stale"]
SourceStatus = Literal["ok", "stale", "outlier", "crossed", "error"]


class SourceQuote(Payload, kw_only=True, frozen=True):
    """One exchange's contribution to the reference price. Prices in EUR per BTC."""

    source: str
    bid: Decimal | None = None
    ask: Decimal | None = None
    mid: Decimal | None = None
    exchange_ts_ns: NonNegInt | None = None
    received_ts_ns: NonNegInt
    status: SourceStatus
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_price("bid", self.bid)
        _check_price("ask", self.ask)
        _check_price("mid", self.mid)


class ReferencePrice(Payload, kw_only=True, frozen=True):
    """The aggregated reference price for one pair (``market.reference_price``)."""

    pair: str
    mid: Decimal | None = None
    quality: QuoteQuality
    sources: list[SourceQuote]
    fresh_sources: NonNegInt
    quorum: NonNegInt
    volatility_bps_per_sqrt_s: Decimal | None = None
    jump_detected: bool = False
    computed_ts_ns: NonNegInt

    def __post_init__(self) -> None:
        _check_price("mid", self.mid)
        _check_price("volatility_bps_per_sqrt_s", self.volatility_bps_per_sqrt_s)


# ------------------------------------------------------------------------------------ inventory.*


class UnexplainedChange(Payload, kw_only=True, frozen=True):
    """A balance change inventory-sync could not attribute to a fill, deposit or withdrawal."""

    asset: str
    delta: int
    detail: str

    def __post_init__(self) -> None:
        _check_i128("delta", self.delta)


class InventorySnapshot(Payload, kw_only=True, frozen=True):
    """Balances of our account on the Verifier (``inventory.snapshot``)."""

    account_id: str
    credited: dict[str, int]
    pending_deposits: dict[str, int]
    inflight_withdrawals: dict[str, int]
    block_height: NonNegInt
    read_ts_ns: NonNegInt
    stale: bool
    stale_reason: str | None = None
    unexplained_changes: list[UnexplainedChange] = msgspec.field(default_factory=list)
    fee_pips: int | None = None  # the Verifier's protocol fee read with the balances (fee() view)

    def __post_init__(self) -> None:
        _check_amounts("credited", self.credited, signed=False)
        _check_amounts("pending_deposits", self.pending_deposits, signed=False)
        _check_amounts("inflight_withdrawals", self.inflight_withdrawals, signed=False)


# ------------------------------------------------------------------------------------ liquidity.*

LiquidityActionKind = Literal[
    "deposit_address_refresh",
    "withdrawal_estimate",
    "withdraw",
    "track_withdrawal",
    "freeze_withdrawals",
    "deposit_credited",
    "withdrawal_status",
]
LiquidityActionStatus = Literal["requested", "submitted", "pending", "completed", "failed", "refused"]


class LiquidityAction(Payload, kw_only=True, frozen=True):
    """One step of a funding operation (``liquidity.action``).

    ``action_id`` is the request id and stays the same across the steps of one operation (requested →
    submitted → completed); each step is its own message with its own ``msg_id``.
    """

    action_id: str
    kind: LiquidityActionKind
    asset_id: str | None = None
    amount: int | None = None
    destination: str | None = None
    chain: str | None = None
    status: LiquidityActionStatus
    near_tx_hash: str | None = None
    detail: dict[str, Any] = msgspec.field(default_factory=dict)
    actor: str | None = None

    def __post_init__(self) -> None:
        _check_u128("amount", self.amount)


class PendingDeposit(Payload, kw_only=True, frozen=True):
    """A deposit seen by the bridge but not yet credited (not spendable)."""

    tx_hash: str
    chain: str
    asset_id: str
    amount: int
    status: str

    def __post_init__(self) -> None:
        _check_u128("amount", self.amount)


class TrackedWithdrawal(Payload, kw_only=True, frozen=True):
    """A withdrawal followed through bridge ``withdrawal_status``."""

    withdrawal_hash: str
    asset_id: str
    chain: str
    amount: int
    status: str
    transfer_tx_hash: str | None = None

    def __post_init__(self) -> None:
        _check_u128("amount", self.amount)


class LiquidityState(Payload, kw_only=True, frozen=True):
    """The liquidity manager's current view (``liquidity.state``)."""

    deposit_addresses: dict[str, str]
    pending_deposits: list[PendingDeposit]
    withdrawals: list[TrackedWithdrawal]
    withdrawals_frozen: bool


# ------------------------------------------------------------------------------------- decision.*

DecisionOutcome = Literal["quote", "decline"]


class LimitCheck(Payload, kw_only=True, frozen=True):
    """One risk limit evaluated for a decision; ``value`` and ``limit`` share the unit in ``name``."""

    name: str
    passed: bool
    value: Decimal
    limit: Decimal


class TradeDecision(Payload, kw_only=True, frozen=True):
    """The strategy's full reasoning for one quote request (``decision.trade_decision``)."""

    decision_id: str
    quote_id: str
    outcome: DecisionOutcome
    reason: str
    armed: bool
    asset_in: str
    asset_out: str
    exact_amount_in: int | None = None
    exact_amount_out: int | None = None
    amount_in: int | None = None
    amount_out: int | None = None
    reference_mid: Decimal | None = None
    price_terms: dict[str, Decimal] = msgspec.field(default_factory=dict)
    limit_checks: list[LimitCheck] = msgspec.field(default_factory=list)
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    deadline_ms: NonNegInt | None = None

    def __post_init__(self) -> None:
        _check_u128("exact_amount_in", self.exact_amount_in)
        _check_u128("exact_amount_out", self.exact_amount_out)
        _check_u128("amount_in", self.amount_in)
        _check_u128("amount_out", self.amount_out)
        _check_price("reference_mid", self.reference_mid)


# ------------------------------------------------------------------------------------------ cmd.*

ExactSide = Literal["in", "out"]


class ExecuteTrade(Payload, kw_only=True, frozen=True):
    """A command to the executor to sign and send one quote response (``cmd.execute_trade``)."""

    command_id: str
    decision_id: str
    quote_id: str
    asset_in: str
    asset_out: str
    amount_in: int
    amount_out: int
    exact_side: ExactSide
    min_deadline_ms: NonNegInt
    relay_deadline_ns: NonNegInt
    reference_mid: Decimal

    def __post_init__(self) -> None:
        _check_u128("amount_in", self.amount_in)
        _check_u128("amount_out", self.amount_out)
        _check_price("reference_mid", self.reference_mid)


# ----------------------------------------------------------------------------------------- exec.*

TradeOutcome = Literal["accepted", "rejected", "skipped_disarmed", "dropped_late", "error"]


class TradeResult(Payload, kw_only=True, frozen=True):
    """What happened to one execute command (``exec.trade_result``)."""

    command_id: str
    quote_id: str
    outcome: TradeOutcome
    relay_reply: str | None = None
    error: str | None = None
    quote_hash: str | None = None
    nonce_b64: str | None = None
    deadline_ns: NonNegInt | None = None
    latency_us: I64 | None = None
    amount_in: int
    amount_out: int
    asset_in: str
    asset_out: str

    def __post_init__(self) -> None:
        _check_u128("amount_in", self.amount_in)
        _check_u128("amount_out", self.amount_out)


# -------------------------------------------------------------------------------------- control.*

#: ``attempt``: the call passed every check and its action is about to run (written before it runs);
#: ``ok`` / ``refused``: the outcome.
OperatorResult = Literal["ok", "refused", "attempt"]


class OperatorAction(Payload, kw_only=True, frozen=True):
    """An operator call on a control endpoint, accepted or refused (``control.operator_action``)."""

    service: str
    action: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    actor: str
    remote: str
    result: OperatorResult
    detail: str | None = None


# ------------------------------------------------------------------------------------ portfolio.*


class PortfolioMetrics(Payload, kw_only=True, frozen=True):
    """Portfolio value and PnL derived by history-writer (``portfolio.metrics``). EUR figures in EURe."""

    computed_ts_ns: NonNegInt
    baseline_ts_ns: NonNegInt | None = None
    baseline_price: Decimal | None = None
    current_price: Decimal | None = None
    price_stale: bool
    baseline_inventory: dict[str, int]
    current_inventory: dict[str, int]
    baseline_value_eure: Decimal | None = None
    portfolio_value_eure: Decimal | None = None
    trade_pnl_eure: Decimal | None = None
    mark_to_market_pnl_eure: Decimal | None = None
    price_move_pnl_eure: Decimal | None = None
    flow_adjusted_trade_pnl_eure: Decimal | None = None
    flow_adjusted_mark_to_market_pnl_eure: Decimal | None = None
    flow_adjusted_price_move_pnl_eure: Decimal | None = None
    net_deposits: dict[str, int] = msgspec.field(default_factory=dict)
    fills: NonNegInt = 0
    volume_eure: Decimal = Decimal(0)
    avg_edge_bps: Decimal | None = None
    reason: str | None = None  # why figures are null or flagged (no baseline yet, stale price, ...)
    current_price_ts_ns: NonNegInt | None = None  # when the current price was computed

    def __post_init__(self) -> None:
        for name in (
            "baseline_price",
            "current_price",
            "baseline_value_eure",
            "portfolio_value_eure",
            "trade_pnl_eure",
            "mark_to_market_pnl_eure",
            "price_move_pnl_eure",
            "flow_adjusted_trade_pnl_eure",
            "flow_adjusted_mark_to_market_pnl_eure",
            "flow_adjusted_price_move_pnl_eure",
            "volume_eure",
            "avg_edge_bps",
        ):
            _check_price(name, getattr(self, name))
        _check_amounts("baseline_inventory", self.baseline_inventory, signed=False)
        _check_amounts("current_inventory", self.current_inventory, signed=False)
        _check_amounts("net_deposits", self.net_deposits, signed=True)


# ------------------------------------------------------------------------ settlements (no subject)


class Settlement(msgspec.Struct, kw_only=True, frozen=True):
    """A settled fill of one of our quotes, stored by history-writer in ``settlements``; not a subject.

    ``amount_in`` is what we received in ``asset_in``, ``amount_out`` what we gave in ``asset_out``.
    ``reference_mid_at_fill`` is the BTC/EUR reference mid at or before ``settled_ts_ns``; markouts are
    in bps, signed so that positive means the fill was profitable at that horizon, and stay ``None``
    until measured.
    """

    quote_hash: str
    intent_hash: str
    tx_hash: str
    command_id: str | None = None
    quote_id: str | None = None
    asset_in: str
    asset_out: str
    amount_in: int
    amount_out: int
    reference_mid_at_fill: Decimal | None = None
    markout_1s_bps: Decimal | None = None
    markout_10s_bps: Decimal | None = None
    markout_60s_bps: Decimal | None = None
    markout_300s_bps: Decimal | None = None
    settled_ts_ns: NonNegInt

    def __post_init__(self) -> None:
        _check_u128("amount_in", self.amount_in)
        _check_u128("amount_out", self.amount_out)
        for name in (
            "reference_mid_at_fill",
            "markout_1s_bps",
            "markout_10s_bps",
            "markout_60s_bps",
            "markout_300s_bps",
        ):
            _check_price(name, getattr(self, name))


# ------------------------------------------------------------------------------------- registry

# the subject names are defined once, in intents_mm.bus.subjects
SWAP_REQUEST: Final = _subjects.SWAP_REQUEST
QUOTE_STATUS: Final = _subjects.QUOTE_STATUS
REFERENCE_PRICE: Final = _subjects.REFERENCE_PRICE
INVENTORY_SNAPSHOT: Final = _subjects.INVENTORY_SNAPSHOT
LIQUIDITY_ACTION: Final = _subjects.LIQUIDITY_ACTION
LIQUIDITY_STATE: Final = _subjects.LIQUIDITY_STATE
TRADE_DECISION: Final = _subjects.TRADE_DECISION
EXECUTE_TRADE: Final = _subjects.EXECUTE_TRADE
TRADE_RESULT: Final = _subjects.TRADE_RESULT
OPERATOR_ACTION: Final = _subjects.OPERATOR_ACTION
PORTFOLIO_METRICS: Final = _subjects.PORTFOLIO_METRICS

#: subject → (payload type, current schema version).
SUBJECT_TYPES: Final[dict[str, tuple[type[Payload], int]]] = {
    SWAP_REQUEST: (SwapRequest, 1),
    QUOTE_STATUS: (QuoteStatus, 1),
    REFERENCE_PRICE: (ReferencePrice, 1),
    INVENTORY_SNAPSHOT: (InventorySnapshot, 1),
    LIQUIDITY_ACTION: (LiquidityAction, 1),
    LIQUIDITY_STATE: (LiquidityState, 1),
    TRADE_DECISION: (TradeDecision, 1),
    EXECUTE_TRADE: (ExecuteTrade, 1),
    TRADE_RESULT: (TradeResult, 1),
    OPERATOR_ACTION: (OperatorAction, 1),
    PORTFOLIO_METRICS: (PortfolioMetrics, 1),
}

#: Every subject, in a stable order.
ALL_SUBJECTS: Final[tuple[str, ...]] = tuple(SUBJECT_TYPES)


class _Header(msgspec.Struct, frozen=True):
    subject: str
    type: str
    version: int
    msg_id: str
    ts_ns: NonNegInt
    payload: msgspec.Raw


_ENCODER: Final = msgspec.json.Encoder()
_HEADER_DECODER: Final = msgspec.json.Decoder(_Header)
_ENVELOPE_DECODERS: Final[dict[str, msgspec.json.Decoder[Envelope[Any]]]] = {
    subject: msgspec.json.Decoder(Envelope[cls])  # type: ignore[valid-type]
    for subject, (cls, _version) in SUBJECT_TYPES.items()
}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _raise_if_misdelivered(data: bytes | memoryview, subject: str | None) -> None:
    """On the error path: name a subject mismatch rather than the payload errors it causes."""
    try:
        header = _HEADER_DECODER.decode(data)
    except msgspec.DecodeError:
        return
    if subject is not None and header.subject != subject:
        raise InputError(f"message for subject {header.subject!r} delivered on {subject!r}")


def encode(env: Envelope[Any]) -> bytes:
    """Encode an envelope as compact JSON bytes."""
    return _ENCODER.encode(env)


def encode_payload(payload: msgspec.Struct | dict[str, Any]) -> bytes:
    """Encode any payload or JSON-safe value with the message encoder (Decimal as string)."""
    return _ENCODER.encode(payload)


def decode(data: bytes | memoryview, *, subject: str | None = None) -> Envelope[Payload]:
    """Decode and validate an envelope.

    The payload type comes from the envelope's subject; when ``subject`` is given (the subject the bus
    delivered on) the envelope must name the same subject, and decoding takes a single pass.
    Raises :class:`InputError` (one line) for malformed JSON, an unknown subject, a type or version
    mismatch, or a payload that fails validation.
    """
    try:
        if subject is None:
            header = _HEADER_DECODER.decode(data)
            subject = header.subject
            if subject not in _ENVELOPE_DECODERS:
                raise InputError(f"unknown subject {subject!r}")
        elif subject not in _ENVELOPE_DECODERS:
            raise InputError(f"unknown subject {subject!r}")
        env: Envelope[Payload] = _ENVELOPE_DECODERS[subject].decode(data)
    except msgspec.DecodeError as exc:
        _raise_if_misdelivered(data, subject)
        raise InputError(f"malformed {subject or 'bus'} message: {_one_line(str(exc))}") from None
    if env.subject != subject:
        raise InputError(f"message for subject {env.subject!r} delivered on {subject!r}")
    cls, version = SUBJECT_TYPES[subject]
    if env.type != cls.__name__:
        raise InputError(f"{subject} message has type {env.type!r}, expected {cls.__name__!r}")
    if env.version != version:
        raise InputError(f"{subject} message has unsupported version {env.version} (supported: {version})")
    if not env.msg_id:
        raise InputError(f"{subject} message has an empty msg_id")
    return env


def new_envelope(subject: str, payload: P, *, clock: Clock, msg_id: str | None = None) -> Envelope[P]:
    """Wrap ``payload`` for ``subject``, stamped with ``clock.now_ns()``.

    ``msg_id`` defaults to a random uuid4 hex; pass a deterministic id when a retried publish must be
    recognised as the same message. Raises :class:`InputError` when the payload type does not belong
    to the subject.
    """
    entry = SUBJECT_TYPES.get(subject)
    if entry is None:
        raise InputError(f"unknown subject {subject!r}")
    cls, version = entry
    if type(payload) is not cls:
        raise InputError(f"{subject} carries {cls.__name__}, not {type(payload).__name__}")
    if msg_id is not None and not msg_id:
        raise InputError("msg_id must not be empty")
    return Envelope(
        subject=subject,
        type=cls.__name__,
        version=version,
        msg_id=msg_id if msg_id is not None else uuid.uuid4().hex,
        ts_ns=clock.now_ns(),
        payload=payload,
    )
