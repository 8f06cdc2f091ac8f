"""Initial history store schema: event tables per bus subject, settlements, service state, signed commands.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Frozen copy of ``intents_mm.storage.schema`` at this revision; the migration test checks that the
two agree on PostgreSQL and SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from intents_mm.storage.types import Amount, Price, UtcDateTime

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "execute_trade_commands",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("command_id", sa.Text(), nullable=False),
        sa.Column("decision_id", sa.Text(), nullable=False),
        sa.Column("quote_id", sa.Text(), nullable=False),
        sa.Column("asset_in", sa.Text(), nullable=False),
        sa.Column("asset_out", sa.Text(), nullable=False),
        sa.Column("amount_in", Amount(), nullable=False),
        sa.Column("amount_out", Amount(), nullable=False),
        sa.Column("exact_side", sa.Text(), nullable=False),
        sa.Column("reference_mid", Price(), nullable=False),
        sa.Column("relay_deadline_ns", sa.BigInteger(), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execute_trade_commands")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_execute_trade_commands_msg_id")),
    )
    op.create_index(
        op.f("ix_execute_trade_commands_quote_id"), "execute_trade_commands", ["quote_id"], unique=False
    )
    op.create_index(op.f("ix_execute_trade_commands_ts"), "execute_trade_commands", ["ts"], unique=False)
    op.create_table(
        "intent_inventory_snapshots",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("block_height", sa.BigInteger(), nullable=False),
        sa.Column("read_ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("stale", sa.Boolean(), nullable=False),
        sa.Column("stale_reason", sa.Text(), nullable=True),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_intent_inventory_snapshots")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_intent_inventory_snapshots_msg_id")),
    )
    op.create_index(
        op.f("ix_intent_inventory_snapshots_ts"), "intent_inventory_snapshots", ["ts"], unique=False
    )
    op.create_table(
        "liquidity_actions",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("action_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("asset_id", sa.Text(), nullable=True),
        sa.Column("amount", Amount(), nullable=True),
        sa.Column("chain", sa.Text(), nullable=True),
        sa.Column("destination", sa.Text(), nullable=True),
        sa.Column("near_tx_hash", sa.Text(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_liquidity_actions")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_liquidity_actions_msg_id")),
    )
    op.create_index(op.f("ix_liquidity_actions_action_id"), "liquidity_actions", ["action_id"], unique=False)
    op.create_index(op.f("ix_liquidity_actions_ts"), "liquidity_actions", ["ts"], unique=False)
    op.create_table(
        "liquidity_state_snapshots",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("withdrawals_frozen", sa.Boolean(), nullable=False),
        sa.Column("pending_deposit_count", sa.BigInteger(), nullable=False),
        sa.Column("tracked_withdrawal_count", sa.BigInteger(), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_liquidity_state_snapshots")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_liquidity_state_snapshots_msg_id")),
    )
    op.create_index(
        op.f("ix_liquidity_state_snapshots_ts"), "liquidity_state_snapshots", ["ts"], unique=False
    )
    op.create_table(
        "market_price_events",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("pair", sa.Text(), nullable=False),
        sa.Column("mid", Price(), nullable=True),
        sa.Column("quality", sa.Text(), nullable=False),
        sa.Column("fresh_sources", sa.BigInteger(), nullable=False),
        sa.Column("quorum", sa.BigInteger(), nullable=False),
        sa.Column("volatility_bps_per_sqrt_s", Price(), nullable=True),
        sa.Column("jump_detected", sa.Boolean(), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_market_price_events")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_market_price_events_msg_id")),
    )
    op.create_index(op.f("ix_market_price_events_ts"), "market_price_events", ["ts"], unique=False)
    op.create_table(
        "operator_actions",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("service", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("remote", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_actions")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_operator_actions_msg_id")),
    )
    op.create_index(op.f("ix_operator_actions_ts"), "operator_actions", ["ts"], unique=False)
    op.create_table(
        "portfolio_metrics_snapshots",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("computed_ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("current_price", Price(), nullable=True),
        sa.Column("price_stale", sa.Boolean(), nullable=False),
        sa.Column("portfolio_value_eure", Price(), nullable=True),
        sa.Column("trade_pnl_eure", Price(), nullable=True),
        sa.Column("mark_to_market_pnl_eure", Price(), nullable=True),
        sa.Column("price_move_pnl_eure", Price(), nullable=True),
        sa.Column("fills", sa.BigInteger(), nullable=False),
        sa.Column("volume_eure", Price(), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portfolio_metrics_snapshots")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_portfolio_metrics_snapshots_msg_id")),
    )
    op.create_index(
        op.f("ix_portfolio_metrics_snapshots_ts"), "portfolio_metrics_snapshots", ["ts"], unique=False
    )
    op.create_table(
        "quote_status_events",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("quote_hash", sa.Text(), nullable=False),
        sa.Column("intent_hash", sa.Text(), nullable=False),
        sa.Column("tx_hash", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quote_status_events")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_quote_status_events_msg_id")),
    )
    op.create_index(
        op.f("ix_quote_status_events_quote_hash"), "quote_status_events", ["quote_hash"], unique=False
    )
    op.create_index(op.f("ix_quote_status_events_ts"), "quote_status_events", ["ts"], unique=False)
    op.create_table(
        "service_state",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", JSON_DOC, nullable=False),
        sa.Column("updated_ts", UtcDateTime(), nullable=False),
        sa.Column("updated_ts_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_service_state")),
    )
    op.create_index(op.f("ix_service_state_updated_ts"), "service_state", ["updated_ts"], unique=False)
    op.create_table(
        "settlements",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("quote_hash", sa.Text(), nullable=False),
        sa.Column("intent_hash", sa.Text(), nullable=False),
        sa.Column("tx_hash", sa.Text(), nullable=False),
        sa.Column("command_id", sa.Text(), nullable=True),
        sa.Column("quote_id", sa.Text(), nullable=True),
        sa.Column("asset_in", sa.Text(), nullable=False),
        sa.Column("asset_out", sa.Text(), nullable=False),
        sa.Column("amount_in", Amount(), nullable=False),
        sa.Column("amount_out", Amount(), nullable=False),
        sa.Column("reference_mid_at_fill", Price(), nullable=True),
        sa.Column("markout_1s_bps", Price(), nullable=True),
        sa.Column("markout_10s_bps", Price(), nullable=True),
        sa.Column("markout_60s_bps", Price(), nullable=True),
        sa.Column("markout_300s_bps", Price(), nullable=True),
        sa.Column("settled_ts", UtcDateTime(), nullable=False),
        sa.Column("settled_ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("updated_ts", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlements")),
        sa.UniqueConstraint("quote_hash", name=op.f("uq_settlements_quote_hash")),
    )
    op.create_index(op.f("ix_settlements_settled_ts"), "settlements", ["settled_ts"], unique=False)
    op.create_table(
        "signed_commands",
        sa.Column("command_id", sa.Text(), nullable=False),
        sa.Column("quote_hash", sa.Text(), nullable=False),
        sa.Column("nonce", sa.Text(), nullable=False),
        sa.Column("signed_ts", UtcDateTime(), nullable=False),
        sa.Column("signed_ts_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("command_id", name=op.f("pk_signed_commands")),
    )
    op.create_index(op.f("ix_signed_commands_signed_ts"), "signed_commands", ["signed_ts"], unique=False)
    op.create_table(
        "swap_demand_events",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("quote_id", sa.Text(), nullable=False),
        sa.Column("asset_in", sa.Text(), nullable=False),
        sa.Column("asset_out", sa.Text(), nullable=False),
        sa.Column("exact_amount_in", Amount(), nullable=True),
        sa.Column("exact_amount_out", Amount(), nullable=True),
        sa.Column("min_deadline_ms", sa.BigInteger(), nullable=False),
        sa.Column("partner_id", sa.Text(), nullable=True),
        sa.Column("relay_deadline_ns", sa.BigInteger(), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_swap_demand_events")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_swap_demand_events_msg_id")),
    )
    op.create_index(op.f("ix_swap_demand_events_quote_id"), "swap_demand_events", ["quote_id"], unique=False)
    op.create_index(op.f("ix_swap_demand_events_ts"), "swap_demand_events", ["ts"], unique=False)
    op.create_table(
        "trade_decisions",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("decision_id", sa.Text(), nullable=False),
        sa.Column("quote_id", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("armed", sa.Boolean(), nullable=False),
        sa.Column("asset_in", sa.Text(), nullable=False),
        sa.Column("asset_out", sa.Text(), nullable=False),
        sa.Column("amount_in", Amount(), nullable=True),
        sa.Column("amount_out", Amount(), nullable=True),
        sa.Column("reference_mid", Price(), nullable=True),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trade_decisions")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_trade_decisions_msg_id")),
    )
    op.create_index(op.f("ix_trade_decisions_quote_id"), "trade_decisions", ["quote_id"], unique=False)
    op.create_index(op.f("ix_trade_decisions_ts"), "trade_decisions", ["ts"], unique=False)
    op.create_table(
        "trade_execution_results",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("command_id", sa.Text(), nullable=False),
        sa.Column("quote_id", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("quote_hash", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_us", sa.BigInteger(), nullable=True),
        sa.Column("asset_in", sa.Text(), nullable=False),
        sa.Column("asset_out", sa.Text(), nullable=False),
        sa.Column("amount_in", Amount(), nullable=False),
        sa.Column("amount_out", Amount(), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trade_execution_results")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_trade_execution_results_msg_id")),
    )
    op.create_index(
        op.f("ix_trade_execution_results_quote_hash"), "trade_execution_results", ["quote_hash"], unique=False
    )
    op.create_index(
        op.f("ix_trade_execution_results_quote_id"), "trade_execution_results", ["quote_id"], unique=False
    )
    op.create_index(op.f("ix_trade_execution_results_ts"), "trade_execution_results", ["ts"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_trade_execution_results_ts"), table_name="trade_execution_results")
    op.drop_index(op.f("ix_trade_execution_results_quote_id"), table_name="trade_execution_results")
    op.drop_index(op.f("ix_trade_execution_results_quote_hash"), table_name="trade_execution_results")
    op.drop_table("trade_execution_results")
    op.drop_index(op.f("ix_trade_decisions_ts"), table_name="trade_decisions")
    op.drop_index(op.f("ix_trade_decisions_quote_id"), table_name="trade_decisions")
    op.drop_table("trade_decisions")
    op.drop_index(op.f("ix_swap_demand_events_ts"), table_name="swap_demand_events")
    op.drop_index(op.f("ix_swap_demand_events_quote_id"), table_name="swap_demand_events")
    op.drop_table("swap_demand_events")
    op.drop_index(op.f("ix_signed_commands_signed_ts"), table_name="signed_commands")
    op.drop_table("signed_commands")
    op.drop_index(op.f("ix_settlements_settled_ts"), table_name="settlements")
    op.drop_table("settlements")
    op.drop_index(op.f("ix_service_state_updated_ts"), table_name="service_state")
    op.drop_table("service_state")
    op.drop_index(op.f("ix_quote_status_events_ts"), table_name="quote_status_events")
    op.drop_index(op.f("ix_quote_status_events_quote_hash"), table_name="quote_status_events")
    op.drop_table("quote_status_events")
    op.drop_index(op.f("ix_portfolio_metrics_snapshots_ts"), table_name="portfolio_metrics_snapshots")
    op.drop_table("portfolio_metrics_snapshots")
    op.drop_index(op.f("ix_operator_actions_ts"), table_name="operator_actions")
    op.drop_table("operator_actions")
    op.drop_index(op.f("ix_market_price_events_ts"), table_name="market_price_events")
    op.drop_table("market_price_events")
    op.drop_index(op.f("ix_liquidity_state_snapshots_ts"), table_name="liquidity_state_snapshots")
    op.drop_table("liquidity_state_snapshots")
    op.drop_index(op.f("ix_liquidity_actions_ts"), table_name="liquidity_actions")
    op.drop_index(op.f("ix_liquidity_actions_action_id"), table_name="liquidity_actions")
    op.drop_table("liquidity_actions")
    op.drop_index(op.f("ix_intent_inventory_snapshots_ts"), table_name="intent_inventory_snapshots")
    op.drop_table("intent_inventory_snapshots")
    op.drop_index(op.f("ix_execute_trade_commands_ts"), table_name="execute_trade_commands")
    op.drop_index(op.f("ix_execute_trade_commands_quote_id"), table_name="execute_trade_commands")
    op.drop_table("execute_trade_commands")
