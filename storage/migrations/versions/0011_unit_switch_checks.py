"""A register switched to another signature unit owes the FinanzOnline steps of that unit.

``checks.kind`` takes ``unit`` (agent/checks.py): after ``till-agent unit switch`` the new
unit is registered in FinanzOnline within one week, as a new register's unit is, the
failure of the unit it replaces is reported there, and a receipt the new unit signed is
checked with the Belegcheck. A register may switch more than once a year, so the
uniqueness of an obligation is split: once a year of each kind as before
(``ix_checks_once_a_year``, for every kind but ``unit``), and once per switch for a unit
switch's (``ix_checks_unit_switch``: its receipt number is the first receipt after the
switch). No row changes: there were no switches before this revision.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_UNIQUE = "uq_checks_register_id_kind_year"


def upgrade() -> None:
    # SQLite cannot alter a constraint in place: batch mode copies the table
    with op.batch_alter_table("checks", recreate="always") as batch:
        batch.drop_constraint(_UNIQUE, type_="unique")
        batch.drop_constraint(op.f("ck_checks_kind"), type_="check")
        batch.create_check_constraint(
            op.f("ck_checks_kind"), "kind IN ('start', 'yearly', 'closing', 'unit')"
        )
    op.create_index(
        "ix_checks_once_a_year",
        "checks",
        ["register_id", "kind", "year"],
        unique=True,
        sqlite_where=sa.text("kind != 'unit'"),
    )
    op.create_index(
        "ix_checks_unit_switch",
        "checks",
        ["register_id", "receipt_number"],
        unique=True,
        sqlite_where=sa.text("kind = 'unit'"),
    )


def downgrade() -> None:
    op.drop_index("ix_checks_unit_switch", table_name="checks")
    op.drop_index("ix_checks_once_a_year", table_name="checks")
    op.execute("DELETE FROM checks WHERE kind = 'unit'")
    with op.batch_alter_table("checks", recreate="always") as batch:
        batch.drop_constraint(op.f("ck_checks_kind"), type_="check")
        batch.create_check_constraint(
            op.f("ck_checks_kind"), "kind IN ('start', 'yearly', 'closing')"
        )
        batch.create_unique_constraint(_UNIQUE, ["register_id", "kind", "year"])
