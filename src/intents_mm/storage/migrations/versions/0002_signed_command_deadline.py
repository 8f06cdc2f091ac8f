"""Signed commands keep their quote's deadline, so a new executor can rebuild the list of live quotes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

The trade executor used to snapshot its whole list of live signed quotes into ``service_state``
every 2 s (a ~1 MB upsert at 8000 live quotes); it now rebuilds the list at start from its ledger
file and, on a new machine, from ``signed_commands`` rows whose ``deadline_ns`` has not passed.
Rows written before this revision have no deadline (NULL) and are never taken as live.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("signed_commands") as batch:
        batch.add_column(sa.Column("deadline_ns", sa.BigInteger(), nullable=True))
    op.create_index(op.f("ix_signed_commands_deadline_ns"), "signed_commands", ["deadline_ns"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_signed_commands_deadline_ns"), table_name="signed_commands")
    with op.batch_alter_table("signed_commands") as batch:
        batch.drop_column("deadline_ns")
