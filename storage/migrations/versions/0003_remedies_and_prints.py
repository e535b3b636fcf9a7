"""Remedies of unsigned receipts, waiting special receipts, month closings, print jobs.

Also drops the journal's register index: nothing looks events up by register on the
till, and every index is one more page written per receipt.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_journal_register_id", table_name="journal")
    op.add_column("registers", sa.Column("last_closing", sa.String(7), nullable=True))
    op.create_table(
        "receipt_resolutions",
        sa.Column("register_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("resolution", sa.String(16), nullable=False),
        sa.Column("signed_jws", sa.Text(), nullable=True),
        sa.Column("replacement_number", sa.Integer(), nullable=True),
        sa.Column("at", sa.String(32), nullable=False),
        sa.CheckConstraint(
            "resolution IN ('adopted', 'superseded')",
            name=op.f("ck_receipt_resolutions_resolution"),
        ),
        sa.ForeignKeyConstraint(
            ["register_id"], ["registers.id"], name="fk_receipt_resolutions_register_id_registers"
        ),
        sa.PrimaryKeyConstraint("register_id", "number", name="pk_receipt_resolutions"),
    )
    for action in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER receipt_resolutions_no_{action.lower()} BEFORE {action} ON "
            "receipt_resolutions BEGIN SELECT RAISE(ABORT, 'receipt_resolutions is "
            "append-only'); END"
        )
    op.create_table(
        "waiting_specials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("register_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("period", sa.String(7), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("setup", sa.Text(), nullable=True),
        sa.Column("requested_at", sa.String(32), nullable=False),
        sa.Column("done_at", sa.String(32), nullable=True),
        sa.Column("number", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_waiting_specials"),
    )
    op.create_index(
        "ix_waiting_specials_one_open",
        "waiting_specials",
        ["register_id", "kind", "period"],
        unique=True,
        sqlite_where=sa.text("done_at IS NULL"),
    )
    op.create_table(
        "print_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("register_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("copy", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("done_at", sa.String(32), nullable=True),
        sa.CheckConstraint(
            "state IN ('queued', 'printed', 'failed', 'skipped')", name=op.f("ck_print_jobs_state")
        ),
        sa.PrimaryKeyConstraint("id", name="pk_print_jobs"),
        sa.UniqueConstraint(
            "register_id", "number", "copy", name="uq_print_jobs_register_id_number_copy"
        ),
    )


def downgrade() -> None:
    op.drop_table("print_jobs")
    op.drop_index("ix_waiting_specials_one_open", table_name="waiting_specials")
    op.drop_table("waiting_specials")
    for action in ("update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS receipt_resolutions_no_{action}")
    op.drop_table("receipt_resolutions")
    with op.batch_alter_table("registers") as batch:
        batch.drop_column("last_closing")
    op.create_index("ix_journal_register_id", "journal", ["register_id"])
