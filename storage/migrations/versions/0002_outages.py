"""Outage records: one open outage per register, every change also journaled.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("register_id", sa.String(64), nullable=False),
        sa.Column("unit_id", sa.String(64), nullable=False),
        sa.Column("started_at", sa.String(32), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("first_number", sa.Integer(), nullable=True),
        sa.Column("last_number", sa.Integer(), nullable=True),
        sa.Column("affected", sa.Integer(), nullable=False),
        sa.Column("probe_attempts", sa.Integer(), nullable=False),
        sa.Column("age_seconds", sa.Float(), nullable=False),
        sa.Column("checked_at", sa.String(32), nullable=False),
        sa.Column("escalations", sa.Text(), nullable=False),
        sa.Column("report_due", sa.String(32), nullable=True),
        sa.Column("report_reference", sa.Text(), nullable=True),
        sa.Column("end_report_reference", sa.Text(), nullable=True),
        sa.Column("ended_at", sa.String(32), nullable=True),
        sa.Column("sammelbeleg_number", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["register_id"], ["registers.id"], name="fk_outages_register_id_registers"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_outages"),
    )
    op.create_index(
        "ix_outages_one_open",
        "outages",
        ["register_id"],
        unique=True,
        sqlite_where=sa.text("ended_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_outages_one_open", table_name="outages")
    op.drop_table("outages")
