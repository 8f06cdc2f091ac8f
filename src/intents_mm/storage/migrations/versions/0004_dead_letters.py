"""The dead_letters table: messages a consumer gave up on (``bus.dead_letter``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

One message policy for every consumer on both buses: an undecodable message, or one whose handler kept
failing for a bounded number of deliveries, is published on ``bus.dead_letter`` (with the error and the
message text) and acked; history-writer stores it here like every subject.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from intents_mm.storage.types import UtcDateTime

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("consumer", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("original_msg_id", sa.Text(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_dead_letters_msg_id")),
    )
    op.create_index(op.f("ix_dead_letters_ts"), "dead_letters", ["ts"], unique=False)
    op.create_index(op.f("ix_dead_letters_consumer"), "dead_letters", ["consumer"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_dead_letters_consumer"), table_name="dead_letters")
    op.drop_index(op.f("ix_dead_letters_ts"), table_name="dead_letters")
    op.drop_table("dead_letters")
