"""Initial till schema: units, registers, receipts and the append-only journal.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = ("receipts", "journal")


def upgrade() -> None:
    op.create_table(
        "units",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("zda", sa.String(16), nullable=False),
        sa.Column("serial", sa.String(128), nullable=False),
        sa.Column("public_key_der", sa.LargeBinary(), nullable=False),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_units"),
    )
    op.create_table(
        "registers",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("closed_system", sa.Boolean(), nullable=False),
        sa.Column("counter_bytes", sa.Integer(), nullable=False),
        sa.Column("aes_key", sa.String(64), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("receipt_id_format", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("active_unit", sa.String(64), nullable=False),
        sa.Column("last_number", sa.Integer(), nullable=False),
        sa.Column("turnover_cents", sa.Integer(), nullable=False),
        sa.Column("last_jws", sa.Text(), nullable=True),
        sa.Column("last_issued_at", sa.String(32), nullable=True),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.CheckConstraint("state IN ('active', 'closed')", name=op.f("ck_registers_state")),
        sa.CheckConstraint(
            "counter_bytes BETWEEN 5 AND 16", name=op.f("ck_registers_counter_bytes")
        ),
        sa.ForeignKeyConstraint(
            ["active_unit"], ["units.id"], name="fk_registers_active_unit_units"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_registers"),
    )
    op.create_table(
        "register_units",
        sa.Column("register_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["register_id"], ["registers.id"], name="fk_register_units_register_id_registers"
        ),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name="fk_register_units_unit_id_units"),
        sa.PrimaryKeyConstraint("register_id", "position", name="pk_register_units"),
    )
    op.create_table(
        "receipts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("register_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("receipt_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("sale_hash", sa.String(64), nullable=True),
        sa.Column("issued_at", sa.String(19), nullable=False),
        sa.Column("amount_normal", sa.Integer(), nullable=False),
        sa.Column("amount_reduced1", sa.Integer(), nullable=False),
        sa.Column("amount_reduced2", sa.Integer(), nullable=False),
        sa.Column("amount_zero", sa.Integer(), nullable=False),
        sa.Column("amount_special", sa.Integer(), nullable=False),
        sa.Column("turnover_cents", sa.Integer(), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.Column("signature_state", sa.String(16), nullable=False),
        sa.Column("unit_id", sa.String(64), nullable=False),
        sa.Column("voids_number", sa.Integer(), nullable=True),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("journal_seq", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "signature_state IN ('signed', 'fallback', 'unsigned')",
            name=op.f("ck_receipts_signature_state"),
        ),
        sa.ForeignKeyConstraint(
            ["register_id"], ["registers.id"], name="fk_receipts_register_id_registers"
        ),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name="fk_receipts_unit_id_units"),
        sa.PrimaryKeyConstraint("id", name="pk_receipts"),
        sa.UniqueConstraint("register_id", "number", name="uq_receipts_register_id_number"),
        sa.UniqueConstraint("register_id", "receipt_id", name="uq_receipts_register_id_receipt_id"),
        sa.UniqueConstraint("register_id", "request_id", name="uq_receipts_register_id_request_id"),
    )
    op.create_table(
        "journal",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("register_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_journal"),
    )
    op.create_index("ix_journal_register_id", "journal", ["register_id"])
    for table in APPEND_ONLY:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


def downgrade() -> None:
    for table in APPEND_ONLY:
        for action in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{action}")
    op.drop_index("ix_journal_register_id", table_name="journal")
    for table in ("journal", "receipts", "register_units", "registers", "units"):
        op.drop_table(table)
