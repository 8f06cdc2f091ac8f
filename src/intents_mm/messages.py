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

Identifiers that enter from outside (relay quote ids, partner ids and hashes, operator-given ids) are
checked once where they enter with :func:`check_id`: 1 to :data:`MAX_ID_CHARS` characters of printable
ASCII without spaces (``!`` to ``~``), so no NUL, control character, space or non-ASCII text ever
reaches the bus or the history store (PostgreSQL text cannot hold NUL).

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


#: Longest identifier accepted at the edge (relay quote ids are 36-character UUIDs).
MAX_ID_CHARS: Final = 200


def is_valid_id(value: object, *, max_chars: int = MAX_ID_CHARS) -> bool:
    """True when ``value`` is a str of 1..``max_chars`` printable ASCII characters, space excluded."""
    if type(value) is not str or not 0 < len(value) <= max_chars:
        return False
    return value.isascii() and value.isprintable() and " " not in value


def check_id(name: str, value: object, *, max_chars: int = MAX_ID_CHARS) -> str:
    """``value`` when it is a valid identifier (see :func:`is_valid_id`), else :class:`InputError`
    naming ``name`` and showing the value escaped (``repr``, cut to 60 characters)."""
    if not is_valid_id(value, max_chars=max_chars):
        raise InputError(
            f"{name} must be 1 to {max_chars} printable ASCII characters without spaces, got {value!r:.60}"
        )
    assert isinstance(value, str)
    return value


def safe_text(text: str) -> str:
    """``text`` with every character that is not printable escaped: whitespace becomes a space, any
    other control character, NUL or lone surrogate becomes ``\\xNN`` / ``\\uNNNN``. For free text from
    outside (relay error messages) that is stored and shown, so storage never meets NUL."""
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch.isspace():
            out.append(" ")
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


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
    #: Quote hashes of confirmed settlements (``demand.quote_status`` seen) that THIS read's balances
    #: show for the first time: the balance change between the previous read and this one (at
    #: ``block_height``) matched them. From this snapshot on the credited balances include them.
    settled_quote_hashes: list[str] = msgspec.field(default_factory=list)
    #: Action ids of confirmed withdrawals (``liquidity.action`` withdraw ``submitted``) whose burn
    #: this read's balances show for the first time (same rule as ``settled_quote_hashes``).
    landed_withdrawals: list[str] = msgspec.field(default_factory=list)

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


def is_live_signed_quote(result: TradeResult) -> bool:
    """True when ``result`` stands for a quote that is (or may be) signed and at the relay.

    The one definition every service uses (strategy-engine reservations, inventory-sync settlement
    candidates, history-writer settlement matching): ``quote_hash`` and ``deadline_ns`` are set and the
    outcome is ``accepted`` or ``error`` (an error that carries a quote hash was signed and sent or
    maybe sent: a relay reply timeout, "already signed" after an executor restart). Such a quote can
    settle until its deadline. ``rejected`` (the relay refused it), ``skipped_disarmed`` and
    ``dropped_late`` (never sent), and an error without a quote hash (never signed) cannot.
    """
    return (
        result.quote_hash is not None
        and result.deadline_ns is not None
        and result.outcome in ("accepted", "error")
    )


# --------------------------------------------------------------------------------------- risk.*


class ReservationSummary(Payload, kw_only=True, frozen=True):
    """What the strategy has promised out of our inventory (``risk.reservations``).

    Published by strategy-engine on every change (coalesced) and as a heartbeat; not persisted.
    ``reserved_out`` is what live quotes could still take out per asset (filled ones not yet visible
    in a snapshot included); ``held`` is what withdrawals in flight hold per asset, ``hold_ids`` their
    request ids. ``seq`` grows by one per summary of one strategy process (``started_ns``).
    """

    reserved_out: dict[str, int]
    held: dict[str, int] = msgspec.field(default_factory=dict)
    hold_ids: list[str] = msgspec.field(default_factory=list)
    live: NonNegInt
    filled_unconfirmed: NonNegInt = 0
    #: The block of the balances the strategy checks against: every claim released so far was
    #: released because balances at or before this block show it. A balance read older than this
    #: would count the released funds as still there.
    balances_block_height: NonNegInt = 0
    seq: NonNegInt
    started_ns: NonNegInt
    ts_ns: NonNegInt

    def __post_init__(self) -> None:
        _check_amounts("reserved_out", self.reserved_out, signed=False)
        _check_amounts("held", self.held, signed=False)


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
    # (B_t - net BTC flows)*P_t + (E_t - net EURe flows): the portfolio value a deposit or withdrawal
    # does not move (None without a baseline, since flows are counted from the baseline on)
    flow_adjusted_portfolio_value_eure: Decimal | None = None

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
            "flow_adjusted_portfolio_value_eure",
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


# ------------------------------------------------------------------------------------------ bus.*

DEAD_LETTER_DATA_MAX: Final = 65_536


def _printable(text: str) -> str:
    """``text`` with control characters (NUL included; tab and newlines kept) as ``\\xNN`` escapes, so any
    store can hold it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\t\n\r" else f"\\x{ord(c):02x}" for c in text)


class DeadLetter(Payload, kw_only=True, frozen=True):
    """A message a consumer gave up on (``bus.dead_letter``): undecodable, or its handler kept failing.

    ``data`` is the message as it travelled, as text (bytes that are not UTF-8 and control characters are
    backslash-escaped),
    at most :data:`DEAD_LETTER_DATA_MAX` characters (``data_truncated`` says when it was cut)."""

    consumer: str
    subject: str
    original_msg_id: str
    deliveries: NonNegInt
    error: str
    data: str
    data_truncated: bool = False

    @classmethod
    def of(  # noqa: PLR0917 - the delivery's fields, in order
        cls, consumer: str, subject: str, msg_id: str, deliveries: int, error: str, raw: bytes
    ) -> DeadLetter:
        text = _printable(bytes(raw).decode("utf-8", "backslashreplace"))
        return cls(
            consumer=consumer,
            subject=subject,
            original_msg_id=_printable(msg_id),
            deliveries=deliveries,
            error=_printable(error[:1000]),
            data=text[:DEAD_LETTER_DATA_MAX],
            data_truncated=len(text) > DEAD_LETTER_DATA_MAX,
        )


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
DEAD_LETTER: Final = _subjects.DEAD_LETTER
RESERVATIONS: Final = _subjects.RESERVATIONS

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
    DEAD_LETTER: (DeadLetter, 1),
    RESERVATIONS: (ReservationSummary, 1),
}

#: Subjects that are state broadcasts without a history table (see ``bus.subjects``).
EPHEMERAL_SUBJECTS: Final[tuple[str, ...]] = _subjects.EPHEMERAL_SUBJECTS
#: Every persisted subject (each has a history table), in a stable order.
ALL_SUBJECTS: Final[tuple[str, ...]] = tuple(s for s in SUBJECT_TYPES if s not in EPHEMERAL_SUBJECTS)


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
