"""Checks the operator owes after a Startbeleg and a Jahresbeleg (rksv.md section 6).

One row per obligation: ``start`` (register the unit and the register in FinanzOnline and
check the Startbeleg with the BMF Belegcheck, within a week of commissioning) and
``yearly`` (check the Jahresbeleg by 15 February of the following year). ``alerts`` is the
JSON list of the reminders sent (``created``, ``approaching``, ``overdue``), as an
outage's ``escalations``.

Registers that exist before this upgrade: the migration only creates the table. Their
already-issued Startbeleg and Jahresbelege are adopted by the first tick of the check
timer (agent/checks.py, :meth:`CheckWatch.tick`), not here, because an obligation is
journaled (``check.due``) and a migration should neither write the journal's hash chain
with application code nor read the wall clock (the tick has the service's clock). The
tick adopts an obligation unless it is clearly past: its due date is before today in the
register's time zone. A register that has been selling for more than a week was
registered in FinanzOnline already (it could not have been operated otherwise), and a
Jahresbeleg whose 15 February is gone can no longer be checked in time; reminding of
either would raise an ERROR for something nobody can act on and that the agent never
tracked. An obligation still within its time is adopted and reminded as any other.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("register_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("receipt_number", sa.Integer(), nullable=False),
        sa.Column("due_date", sa.String(10), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("alerts", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("failed", sa.Boolean(), nullable=False),
        sa.Column("done_at", sa.String(32), nullable=True),
        sa.CheckConstraint("kind IN ('start', 'yearly')", name=op.f("ck_checks_kind")),
        sa.ForeignKeyConstraint(
            ["register_id"], ["registers.id"], name="fk_checks_register_id_registers"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_checks"),
        sa.UniqueConstraint("register_id", "kind", "year", name="uq_checks_register_id_kind_year"),
    )


def downgrade() -> None:
    op.drop_table("checks")
