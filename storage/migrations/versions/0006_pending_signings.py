"""Signings sent to a chain service, recorded before the request leaves.

A chain service keeps every receipt it signed. If the till process dies while such a
request is in flight (or after the answer, before the COMMIT), the receipt transaction
rolls back; the intent recorded here lets the next start store that receipt as
``unsigned`` instead of giving its number to another receipt. Append-only: an intent is
done when its receipt exists. The start looks only past each register's last number
(``ix_pending_signings_number``) and at the Startbelege of registers not created
(``ix_pending_signings_start``), so it never reads the history of done intents.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_signings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("register_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("intent", sa.Text(), nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pending_signings"),
    )
    op.create_index("ix_pending_signings_number", "pending_signings", ["register_id", "number"])
    op.create_index(
        "ix_pending_signings_start",
        "pending_signings",
        ["kind", "register_id"],
        sqlite_where=sa.text("kind = 'start'"),
    )
    for action in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER pending_signings_no_{action.lower()} BEFORE {action} ON "
            "pending_signings BEGIN SELECT RAISE(ABORT, 'pending_signings is "
            "append-only'); END"
        )


def downgrade() -> None:
    for action in ("update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS pending_signings_no_{action}")
    op.drop_index("ix_pending_signings_start", table_name="pending_signings")
    op.drop_index("ix_pending_signings_number", table_name="pending_signings")
    op.drop_table("pending_signings")
