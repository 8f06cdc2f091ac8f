"""The history store's tables: one schema for PostgreSQL and SQLite.

Every bus subject has an event table (see :data:`SUBJECT_TABLES`) with the same base columns:

- ``id``: autoincrement primary key (insertion order);
- ``msg_id``: the envelope's message id, UNIQUE, so replays insert nothing;
- ``ts`` / ``ts_ns``: the envelope timestamp as UTC ``TIMESTAMPTZ`` and as integer nanoseconds;
- ``payload``: the full envelope as JSON (JSONB on PostgreSQL), from which rows are read back;

plus the payload's key fields flattened for querying. Amount columns use :class:`Amount`, price and
EUR columns :class:`Price`. Three more tables hold non-event state: ``settlements``,
``service_state`` and ``signed_commands``. Changing anything here needs a new Alembic revision in
``storage/migrations/versions`` (the migration test compares the two).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from intents_mm import messages as m
from intents_mm.storage.types import Amount, Price, UtcDateTime

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

#: JSON document column: JSONB on PostgreSQL, JSON text on SQLite.
JsonDoc: Final = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

_T = sa.Text


def _event_table(name: str, *columns: sa.Column[Any], indexed: tuple[str, ...] = ()) -> sa.Table:
    table = sa.Table(
        name,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("msg_id", _T, nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger, nullable=False),
        *columns,
        sa.Column("payload", JsonDoc, nullable=False),
        sa.UniqueConstraint("msg_id"),
    )
    sa.Index(None, table.c.ts)
    for column in indexed:
        sa.Index(None, table.c[column])
    return table


swap_demand_events = _event_table(
    "swap_demand_events",
    sa.Column("quote_id", _T, nullable=False),
    sa.Column("asset_in", _T, nullable=False),
    sa.Column("asset_out", _T, nullable=False),
    sa.Column("exact_amount_in", Amount()),
    sa.Column("exact_amount_out", Amount()),
    sa.Column("min_deadline_ms", sa.BigInteger, nullable=False),
    sa.Column("partner_id", _T),
    sa.Column("relay_deadline_ns", sa.BigInteger, nullable=False),
    indexed=("quote_id",),
)

quote_status_events = _event_table(
    "quote_status_events",
    sa.Column("quote_hash", _T, nullable=False),
    sa.Column("intent_hash", _T, nullable=False),
    sa.Column("tx_hash", _T, nullable=False),
    sa.Column("seq", sa.BigInteger),
    indexed=("quote_hash",),
)

market_price_events = _event_table(
    "market_price_events",
    sa.Column("pair", _T, nullable=False),
    sa.Column("mid", Price()),
    sa.Column("quality", _T, nullable=False),
    sa.Column("fresh_sources", sa.BigInteger, nullable=False),
    sa.Column("quorum", sa.BigInteger, nullable=False),
    sa.Column("volatility_bps_per_sqrt_s", Price()),
    sa.Column("jump_detected", sa.Boolean, nullable=False),
)

intent_inventory_snapshots = _event_table(
    "intent_inventory_snapshots",
    sa.Column("account_id", _T, nullable=False),
    sa.Column("block_height", sa.BigInteger, nullable=False),
    sa.Column("read_ts_ns", sa.BigInteger, nullable=False),
    sa.Column("stale", sa.Boolean, nullable=False),
    sa.Column("stale_reason", _T),
)

liquidity_actions = _event_table(
    "liquidity_actions",
    sa.Column("action_id", _T, nullable=False),
    sa.Column("kind", _T, nullable=False),
    sa.Column("status", _T, nullable=False),
    sa.Column("asset_id", _T),
    sa.Column("amount", Amount()),
    sa.Column("chain", _T),
    sa.Column("destination", _T),
    sa.Column("near_tx_hash", _T),
    sa.Column("actor", _T),
    indexed=("action_id",),
)

liquidity_state_snapshots = _event_table(
    "liquidity_state_snapshots",
    sa.Column("withdrawals_frozen", sa.Boolean, nullable=False),
    sa.Column("pending_deposit_count", sa.BigInteger, nullable=False),
    sa.Column("tracked_withdrawal_count", sa.BigInteger, nullable=False),
)

trade_decisions = _event_table(
    "trade_decisions",
    sa.Column("decision_id", _T, nullable=False),
    sa.Column("quote_id", _T, nullable=False),
    sa.Column("outcome", _T, nullable=False),
    sa.Column("reason", _T, nullable=False),
    sa.Column("armed", sa.Boolean, nullable=False),
    sa.Column("asset_in", _T, nullable=False),
    sa.Column("asset_out", _T, nullable=False),
    sa.Column("amount_in", Amount()),
    sa.Column("amount_out", Amount()),
    sa.Column("reference_mid", Price()),
    indexed=("quote_id",),
)

execute_trade_commands = _event_table(
    "execute_trade_commands",
    sa.Column("command_id", _T, nullable=False),
    sa.Column("decision_id", _T, nullable=False),
    sa.Column("quote_id", _T, nullable=False),
    sa.Column("asset_in", _T, nullable=False),
    sa.Column("asset_out", _T, nullable=False),
    sa.Column("amount_in", Amount(), nullable=False),
    sa.Column("amount_out", Amount(), nullable=False),
    sa.Column("exact_side", _T, nullable=False),
    sa.Column("reference_mid", Price(), nullable=False),
    sa.Column("relay_deadline_ns", sa.BigInteger, nullable=False),
    indexed=("quote_id",),
)

trade_execution_results = _event_table(
    "trade_execution_results",
    sa.Column("command_id", _T, nullable=False),
    sa.Column("quote_id", _T, nullable=False),
    sa.Column("outcome", _T, nullable=False),
    sa.Column("quote_hash", _T),
    sa.Column("error", _T),
    sa.Column("latency_us", sa.BigInteger),
    sa.Column("asset_in", _T, nullable=False),
    sa.Column("asset_out", _T, nullable=False),
    sa.Column("amount_in", Amount(), nullable=False),
    sa.Column("amount_out", Amount(), nullable=False),
    indexed=("quote_id", "quote_hash"),
)

operator_actions = _event_table(
    "operator_actions",
    sa.Column("service", _T, nullable=False),
    sa.Column("action", _T, nullable=False),
    sa.Column("actor", _T, nullable=False),
    sa.Column("remote", _T, nullable=False),
    sa.Column("result", _T, nullable=False),
    sa.Column("detail", _T),
)

dead_letters = _event_table(
    "dead_letters",
    sa.Column("consumer", _T, nullable=False),
    sa.Column("subject", _T, nullable=False),
    sa.Column("original_msg_id", _T, nullable=False),
    sa.Column("deliveries", sa.Integer, nullable=False),
    sa.Column("error", _T, nullable=False),
    indexed=("consumer",),
)

portfolio_metrics_snapshots = _event_table(
    "portfolio_metrics_snapshots",
    sa.Column("computed_ts_ns", sa.BigInteger, nullable=False),
    sa.Column("current_price", Price()),
    sa.Column("price_stale", sa.Boolean, nullable=False),
    sa.Column("portfolio_value_eure", Price()),
    sa.Column("trade_pnl_eure", Price()),
    sa.Column("mark_to_market_pnl_eure", Price()),
    sa.Column("price_move_pnl_eure", Price()),
    sa.Column("fills", sa.BigInteger, nullable=False),
    sa.Column("volume_eure", Price(), nullable=False),
)

settlements = sa.Table(
    "settlements",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("quote_hash", _T, nullable=False),
    sa.Column("intent_hash", _T, nullable=False),
    sa.Column("tx_hash", _T, nullable=False),
    sa.Column("command_id", _T),
    sa.Column("quote_id", _T),
    sa.Column("asset_in", _T, nullable=False),
    sa.Column("asset_out", _T, nullable=False),
    sa.Column("amount_in", Amount(), nullable=False),
    sa.Column("amount_out", Amount(), nullable=False),
    sa.Column("reference_mid_at_fill", Price()),
    sa.Column("markout_1s_bps", Price()),
    sa.Column("markout_10s_bps", Price()),
    sa.Column("markout_60s_bps", Price()),
    sa.Column("markout_300s_bps", Price()),
    sa.Column("settled_ts", UtcDateTime(), nullable=False),
    sa.Column("settled_ts_ns", sa.BigInteger, nullable=False),
    sa.Column("updated_ts", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("quote_hash"),
)
sa.Index(None, settlements.c.settled_ts)

service_state = sa.Table(
    "service_state",
    metadata,
    sa.Column("key", _T, primary_key=True),
    sa.Column("value", JsonDoc, nullable=False),
    sa.Column("updated_ts", UtcDateTime(), nullable=False),
    sa.Column("updated_ts_ns", sa.BigInteger, nullable=False),
)
sa.Index(None, service_state.c.updated_ts)

signed_commands = sa.Table(
    "signed_commands",
    metadata,
    sa.Column("command_id", _T, primary_key=True),
    sa.Column("quote_hash", _T, nullable=False),
    sa.Column("nonce", _T, nullable=False),
    sa.Column("signed_ts", UtcDateTime(), nullable=False),
    sa.Column("signed_ts_ns", sa.BigInteger, nullable=False),
    sa.Column("deadline_ns", sa.BigInteger, nullable=True),  # the quote's deadline (revision 0002)
)
sa.Index(None, signed_commands.c.signed_ts)
sa.Index(None, signed_commands.c.deadline_ns)

#: One row per quote a cancel was attempted for (``/kill`` or cancel-on-move; revision 0003).
quote_cancels = sa.Table(
    "quote_cancels",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("cancel_id", _T, nullable=False),  # one id per cancel run (all quotes of one trigger)
    sa.Column("trigger", _T, nullable=False),  # kill | move | reference_stale | jump | disarm | restart
    sa.Column("command_id", _T, nullable=False),
    sa.Column("quote_hash", _T, nullable=False),
    sa.Column("nonce", _T, nullable=False),
    sa.Column("deadline_ns", sa.BigInteger, nullable=False),
    sa.Column("outcome", _T, nullable=False),  # cancelled | already_settled | expired | voided | failed
    sa.Column("reason", _T),
    sa.Column("relay", _T),
    sa.Column("chain", _T),
    sa.Column("chain_tx_hash", _T),
    sa.Column("ts", UtcDateTime(), nullable=False),
    sa.Column("ts_ns", sa.BigInteger, nullable=False),
)
sa.Index(None, quote_cancels.c.ts)
sa.Index(None, quote_cancels.c.nonce)

BASE_EVENT_COLUMNS: Final = frozenset({"id", "msg_id", "ts", "ts_ns", "payload"})

RowExtras = Callable[[Any], dict[str, Any]]


def _liquidity_state_extras(p: m.LiquidityState) -> dict[str, Any]:
    return {
        "pending_deposit_count": len(p.pending_deposits),
        "tracked_withdrawal_count": len(p.withdrawals),
    }


#: subject → (event table, function giving the flattened columns that are not payload attributes).
SUBJECT_TABLES: Final[dict[str, tuple[sa.Table, RowExtras | None]]] = {
    m.SWAP_REQUEST: (swap_demand_events, None),
    m.QUOTE_STATUS: (quote_status_events, None),
    m.REFERENCE_PRICE: (market_price_events, None),
    m.INVENTORY_SNAPSHOT: (intent_inventory_snapshots, None),
    m.LIQUIDITY_ACTION: (liquidity_actions, None),
    m.LIQUIDITY_STATE: (liquidity_state_snapshots, _liquidity_state_extras),
    m.TRADE_DECISION: (trade_decisions, None),
    m.EXECUTE_TRADE: (execute_trade_commands, None),
    m.TRADE_RESULT: (trade_execution_results, None),
    m.OPERATOR_ACTION: (operator_actions, None),
    m.PORTFOLIO_METRICS: (portfolio_metrics_snapshots, None),
    m.DEAD_LETTER: (dead_letters, None),
}

#: event table name → subject.
TABLE_SUBJECTS: Final[dict[str, str]] = {
    table.name: subject for subject, (table, _) in SUBJECT_TABLES.items()
}

EVENT_TABLES: Final[dict[str, sa.Table]] = {table.name: table for table, _ in SUBJECT_TABLES.values()}

ALL_TABLES: Final[tuple[str, ...]] = tuple(metadata.tables)
