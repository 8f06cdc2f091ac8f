"""The quote_cancels table: one row per quote a cancel was attempted for (emergency stop, cancel-on-move).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

``intents.near::invalidate_nonces`` no longer exists; the executor cancels a signed quote by getting an
empty-intents payload with the same nonce executed first (relay ``publish_intents`` and/or
``execute_intents``). Each attempt's outcome per quote is kept here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from intents_mm.storage.types import UtcDateTime

BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "quote_cancels",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("cancel_id", sa.Text(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("command_id", sa.Text(), nullable=False),
        sa.Column("quote_hash", sa.Text(), nullable=False),
        sa.Column("nonce", sa.Text(), nullable=False),
        sa.Column("deadline_ns", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("relay", sa.Text(), nullable=True),
        sa.Column("chain", sa.Text(), nullable=True),
        sa.Column("chain_tx_hash", sa.Text(), nullable=True),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quote_cancels")),
    )
    op.create_index(op.f("ix_quote_cancels_ts"), "quote_cancels", ["ts"], unique=False)
    op.create_index(op.f("ix_quote_cancels_nonce"), "quote_cancels", ["nonce"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_quote_cancels_nonce"), table_name="quote_cancels")
    op.drop_index(op.f("ix_quote_cancels_ts"), table_name="quote_cancels")
    op.drop_table("quote_cancels")
