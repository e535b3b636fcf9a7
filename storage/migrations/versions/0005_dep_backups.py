"""The quarterly DEP backups (§ 7 Abs 3 RKSV): one append-only record per register and
quarter, naming the file and its SHA-256 (its ``dep.backup`` journal event chains it).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dep_backups",
        sa.Column("register_id", sa.String(64), nullable=False),
        sa.Column("quarter", sa.String(7), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("receipts", sa.Integer(), nullable=False),
        sa.Column("last_number", sa.Integer(), nullable=False),
        sa.Column("written_at", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(
            ["register_id"], ["registers.id"], name="fk_dep_backups_register_id_registers"
        ),
        sa.PrimaryKeyConstraint("register_id", "quarter", name="pk_dep_backups"),
    )
    for action in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER dep_backups_no_{action.lower()} BEFORE {action} ON dep_backups"
            " BEGIN SELECT RAISE(ABORT, 'dep_backups is append-only'); END"
        )


def downgrade() -> None:
    for action in ("update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS dep_backups_no_{action}")
    op.drop_table("dep_backups")
